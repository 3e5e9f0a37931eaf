"""One contract, every driver: the same behavioural checks over each real wire."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import orjson
import pytest
from calguard.drivers.base import Driver
from calguard.drivers.clock import SystemClock
from calguard.drivers.hl7 import MllpDriver
from calguard.drivers.mqtt import MqttDriver
from calguard.drivers.replay import ReplayDriver
from calguard.drivers.serial import SerialDriver
from calguard.drivers.virtual import VirtualDriver
from calguard.simulators.hl7_gateway import pcd01_message
from calguard.simulators.ne1000 import PumpBus, SimulatedPump
from hl7.mllp import open_hl7_connection

from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts

CA = "Calcium gluconate 20 mg/ml"


class Wire(Protocol):
    driver: Driver
    names_pump_in_garbage: bool

    async def calcium(self, rate_ml_h: float) -> None: ...

    async def garbage(self) -> None: ...


def reading(rate_ml_h: float) -> dict[str, Any]:
    return {"t": now_ts(), "type": "reading", "pump": "P1", "rate": f"{rate_ml_h} ml/h", "drug": CA}


class SerialWire:
    names_pump_in_garbage = True
    polls_before_garbage = True  # the configured pump has answered before the noise

    def __init__(self, bus: PumpBus) -> None:
        self.bus = bus
        mapping = [{"address": 0, "pump": "P1", "drug": CA, "concentration": "20 mg/ml"}]
        self.driver = SerialDriver(
            f"serial://{bus.path}?mode=safe",
            pumps=mapping,
            poll_interval=0.05,
            response_timeout=0.1,
        )

    async def calcium(self, rate_ml_h: float) -> None:
        self.bus.pumps[0].rate, self.bus.pumps[0].status = rate_ml_h, "I"

    async def garbage(self) -> None:
        self.bus.corrupt(6)  # every answer of a poll damaged, retries included


class MqttWire:
    names_pump_in_garbage = True

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.driver = MqttDriver(
            f"mqtt://127.0.0.1:{broker.port}/calguard/contract", client_id="contract"
        )

    async def _publish(self, payload: bytes) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.broker.port, identifier="contract-pub", timeout=5
        ) as c:
            await c.publish("calguard/contract/pumps/P1/telemetry", payload, qos=1)

    async def calcium(self, rate_ml_h: float) -> None:
        await self._publish(orjson.dumps(reading(rate_ml_h)))

    async def garbage(self) -> None:
        await self._publish(b"\x00\xff{{{")


class Hl7Wire:
    names_pump_in_garbage = False  # an unparseable message names no device

    def __init__(self) -> None:
        self.driver = MllpDriver("mllp://127.0.0.1:0")

    async def _send(self, data: bytes) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", self.driver.port)  # type: ignore[attr-defined]
        writer.writeblock(data)
        await writer.drain()
        await reader.readblock()
        writer.close()
        await writer.wait_closed()

    async def calcium(self, rate_ml_h: float) -> None:
        settings = {
            "rate": f"{rate_ml_h} ml/h",
            "status": "infusing",
            "drug": CA,
            "concentration": "20 mg/ml",
        }
        await self._send(
            pcd01_message("P1", "B1", {"A": settings}, SystemClock().now_us(), "K1").encode()
        )

    async def garbage(self) -> None:
        await self._send(b"MSH|this is not|a message")


class VirtualWire:
    names_pump_in_garbage = True

    def __init__(self) -> None:
        VirtualDriver.forget("virtual://contract")
        self.driver = VirtualDriver("virtual://contract")

    async def calcium(self, rate_ml_h: float) -> None:
        VirtualDriver.put("virtual://contract", reading(rate_ml_h))

    async def garbage(self) -> None:
        VirtualDriver.put_problem("virtual://contract", b"\x00", "unreadable", ("P1", "A"))


class ReplayWire:
    names_pump_in_garbage = False

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")
        self.driver = ReplayDriver(f"replay://{path}", poll=0.02)

    def _append(self, line: bytes) -> None:
        with self.path.open("ab") as out:
            out.write(line + b"\n")

    async def calcium(self, rate_ml_h: float) -> None:
        self._append(orjson.dumps(reading(rate_ml_h)))

    async def garbage(self) -> None:
        self._append(b"{truncated")


@contextlib.asynccontextmanager
async def wire(kind: str, tmp_path: Path) -> AsyncIterator[Wire]:
    if kind == "serial":
        async with PumpBus([SimulatedPump(0, 1.0, "MH", "S")], safe=True) as bus:
            yield SerialWire(bus)
    elif kind == "mqtt":
        broker = Broker(tmp_path / "broker").start()
        try:
            yield MqttWire(broker)
        finally:
            broker.stop()
    elif kind == "hl7":
        yield Hl7Wire()
    elif kind == "virtual":
        yield VirtualWire()
    else:
        yield ReplayWire(tmp_path / "events.jsonl")


KINDS = ["serial", "mqtt", "hl7", "virtual", "replay"]


def document(bay: LiveBay) -> None:
    t = now_ts()
    for event in admission(t, age=None):
        bay.monitor.pipeline.feed_object(event, raw=orjson.dumps(event), source="bedside")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_calcium_rate_above_the_limit_raises_rate_volume(kind: str, tmp_path: Path) -> None:
    async with wire(kind, tmp_path) as w:
        assert w.driver.state == "connecting"
        async with LiveBay([w.driver]) as bay:
            await bay.until(lambda: w.driver.is_open)
            assert w.driver.state == "connected"
            document(bay)
            await w.calcium(180.0)
            await bay.until(lambda: bay.of("rate-volume", "raised"))
        assert w.driver.state == "stopped"  # what the live view shows after a stop
    alert = bay.of("rate-volume")[0]
    assert (alert["pump"], alert["bed"], alert["value"], alert["limit"]) == (
        "P1",
        "B1",
        "3 ml/min",
        "2 ml/min",
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_garbage_is_logged_with_a_reason_and_the_wire_keeps_working(
    kind: str, tmp_path: Path
) -> None:
    async with wire(kind, tmp_path) as w, LiveBay([w.driver]) as bay:
        await bay.until(lambda: w.driver.is_open)
        await w.garbage()
        await bay.until(lambda: any(r.status == "rejected" for r in bay.records))
        await w.calcium(1.0)
        await bay.until(lambda: bay.records[-1].status == "accepted")
        if w.names_pump_in_garbage:  # now the pump is known: its garbage is its own alarm
            await w.garbage()
            await bay.until(lambda: bay.of("telemetry-invalid", "raised"))
            await w.calcium(1.0)  # and its next valid reading clears it
            await bay.until(lambda: bay.of("telemetry-invalid", "cleared"))
    rejected = [r for r in bay.records if r.status == "rejected"]
    assert rejected[0].reason
    if w.names_pump_in_garbage:
        if not getattr(w, "polls_before_garbage", False):
            # before the pump was known, its garbage counted for the driver, not a channel
            assert bay.of("input-unknown", "raised")[0]["message"].startswith("Inputs from ")
        assert bay.of("telemetry-invalid", "raised")[0]["pump"] == "P1"


@pytest.mark.parametrize("kind", KINDS)
async def test_close_is_idempotent_and_a_driver_is_not_re_entrant(
    kind: str, tmp_path: Path
) -> None:
    async with wire(kind, tmp_path) as w:
        async with w.driver:
            with pytest.raises(RuntimeError, match="not re-entrant"):
                await w.driver.__aenter__()
        await w.driver.close()
        await w.driver.close()
        assert not w.driver.is_open
        async with w.driver:  # reusable
            assert w.driver.is_open
