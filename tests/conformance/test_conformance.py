"""Real gateway and hospital HL7 traffic through the MLLP listener into a live monitor.

Every file of this folder names its source and, for each message, the answer CalGuard must
give (AA, or AE with the reason) and what the monitor must have been given: the device,
channel, rate, unit, status, drug, concentration and alarm of each reading, and each
patient event (see README.md).
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import hl7
import orjson
import pytest
from calguard.drivers.clock import SystemClock
from calguard.drivers.hl7 import MllpDriver
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import parse_ts
from hl7.mllp import open_hl7_connection

from tests.live import LiveBay

FILES = sorted(Path(__file__).parent.glob("*.toml"))
#: keys of a reading the files always state: one left out must be absent
CORE = ("pump", "channel", "rate", "status", "drug", "concentration", "alarm")
PATIENT_CORE = ("bed", "patient", "weight", "birth")


class ShiftedClock:
    """The wall clock moved to the day a file's traffic was captured: bedside documentation
    (ADT) is judged against the monitor's clock, so old captures need their own day."""

    speed = 1.0

    def __init__(self, at: str) -> None:
        self.offset = parse_ts(at) - SystemClock().now_us()

    def now_us(self) -> int:
        return SystemClock().now_us() + self.offset

    async def sleep_until(self, us: int) -> None:
        delay = (us - self.now_us()) / 1e6
        if delay > 0:
            await asyncio.sleep(delay)


def load(path: Path) -> dict[str, Any]:
    spec = tomllib.loads(path.read_text("utf-8"))
    assert spec.get("source"), f"{path.name}: every file names its source"
    for message in spec["message"]:
        assert "written_here" in message, f"{path.name}: {message['name']}: written_here?"
    return spec


def frame(text: str) -> bytes:
    segments = [line for line in text.strip("\n").split("\n") if line]
    return ("\r".join(segments) + "\r").encode("utf-8")


def answer(ack: str) -> tuple[str, str]:
    """MSA-1 and every reason (MSA-3 and ERR-8), unescaped."""
    parsed = hl7.parse(ack)
    code = str(parsed.segment("MSA")(1))
    texts = [str(parsed.segment("MSA")(3)) if len(parsed.segment("MSA")) > 3 else ""]
    for segment in parsed:
        if str(segment(0)) == "ERR" and len(segment) > 8:
            texts.append(str(segment(8)))
    return code, " | ".join(parsed.unescape(t) for t in texts)


def given(records: list[InputRecord], event_type: str) -> list[dict[str, Any]]:
    """The events of this type the monitor was given and used (accepted, or kept as an
    older or repeated reading), without the monitor's stamp."""
    out = []
    for record in records:
        if record.event_type == event_type and record.status != "rejected":
            obj = orjson.loads(record.raw)
            obj.pop("received", None)
            out.append(obj)
    return out


def same(expected: dict[str, Any], got: dict[str, Any], core: tuple[str, ...]) -> bool:
    keys = set(expected) | {k for k in core if k in got}
    return all(expected.get(k) == got.get(k) for k in keys)


async def play(spec: dict[str, Any]) -> list[tuple[str, list[InputRecord]]]:
    clock = ShiftedClock(spec["clock"]) if "clock" in spec else SystemClock()
    driver = MllpDriver("mllp://127.0.0.1:0", clock=clock, **spec.get("options", {}))
    out = []
    async with LiveBay([driver], clock=clock) as bay:
        await bay.until(lambda: driver.is_open)
        reader, writer = await open_hl7_connection("127.0.0.1", driver.port, encoding="utf-8")
        try:
            for message in spec["message"]:
                before = len(bay.records)
                writer.writeblock(frame(message["hl7"]))
                await writer.drain()
                ack = (await asyncio.wait_for(reader.readblock(), 20)).decode("utf-8")
                # the answer comes after the monitor's verdicts: the records are all there
                out.append((ack, [r for r in bay.records[before:] if r.source.startswith("mllp")]))
        finally:
            writer.close()
            await writer.wait_closed()
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
async def test_every_message_gives_what_its_file_says(path: Path) -> None:
    spec = load(path)
    results = await play(spec)
    for message, (ack, records) in zip(spec["message"], results, strict=True):
        name = f"{path.name}: {message['name']}"
        code, reasons = answer(ack)
        assert code == message["ack"], f"{name}: answered {code} ({reasons})"
        if "reason" in message:
            assert message["reason"] in reasons, f"{name}: the reason is {reasons!r}"
        readings = given(records, "reading")
        expected = message.get("readings", [])
        assert len(readings) == len(expected), f"{name}: readings {readings}"
        for want, got in zip(expected, readings, strict=True):
            assert same(want, got, CORE), f"{name}: expected {want}, got {got}"
        patients = given(records, "patient")
        expected = message.get("patients", [])
        assert len(patients) == len(expected), f"{name}: patient events {patients}"
        for want, got in zip(expected, patients, strict=True):
            assert same(want, got, PATIENT_CORE), f"{name}: expected {want}, got {got}"
