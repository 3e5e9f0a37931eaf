"""HL7 v2 over a real MLLP socket: pump gateways (PCD-01, PCD-04) and the ADT feed.

The ward situations of the issue, each through the listener into a live monitor: a ward of
14 pumps behind one gateway, a paused pump, a piggyback, B. Braun's current firmware, an
occlusion reported as a PCD-04 alarm, and an infant admitted by ADT whose weight the
weight-based rules use. Real captures are in tests/conformance/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from calguard.config import load_library
from calguard.drivers.adt import AdtView
from calguard.drivers.clock import ScaledClock, SystemClock
from calguard.drivers.hl7 import MllpDriver, acknowledgement, translate_message
from calguard.drivers.hl7v2 import HL7Problem, Message, birth_time, hl7_time, unit_of
from calguard.drivers.pcd04_in import AlarmBoard
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.clock import Clock
from calguard.monitor.timeutil import format_ts
from calguard.simulators.hl7_gateway import (
    STYLES,
    Hl7Gateway,
    adt_message,
    pcd01_message,
    pcd04_message,
)
from calguard.simulators.runner import BedsideQueue, play
from calguard.simulators.scenario import load_scenario
from hl7.mllp import open_hl7_connection
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.live import LiveBay

SHARED_EXAMPLE = (Path(__file__).parent / "data" / "pcd01-example.hl7").read_bytes()
CA = "Calcium gluconate 20 mg/ml"


def calcium(rate: str, status: str = "infusing") -> dict[str, Any]:
    return {"rate": rate, "status": status, "drug": CA, "concentration": "20 mg/ml"}


async def send(port: int, *messages: str | bytes) -> list[str]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    acks = []
    try:
        for message in messages:
            writer.writeblock(message.encode() if isinstance(message, str) else message)
            await writer.drain()
            acks.append((await asyncio.wait_for(reader.readblock(), 20)).decode())
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def readings(bay: LiveBay) -> list[dict[str, Any]]:
    return [orjson.loads(r.raw) for r in bay.accepted("reading")]


def document(bay: LiveBay, *, with_patient: bool = True) -> None:
    """A line of bed B1 with pump P1 connected; the infant only when ``with_patient``."""
    t = format_ts(SystemClock().now_us())
    for event in load_scenario("programming-error").opening(SystemClock().now_us()):
        if event["type"] != "patient" or with_patient:
            bay.monitor.pipeline.feed_object(event, raw=str(event), source="test")
    bay.monitor.pipeline.feed_object(
        {"t": t, "type": "patency_check", "line": "L1", "result": "blood_return"},
        raw="patency",
        source="test",
    )


def now() -> int:
    return SystemClock().now_us()


# -- the ward situations, through the listener ------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_a_ward_of_14_pumps_behind_one_gateway_stays_14_pumps(style: str) -> None:
    pumps = {f"P{n:02d}": {"A": calcium(f"{n / 10:g} ml/h")} for n in range(1, 15)}
    if style == "bbraun":  # a SpaceStation: one message per pump, all with one MSH-3
        messages = [
            pcd01_message(p, None, c, now(), f"W{p}", style=style) for p, c in pumps.items()
        ]
    else:  # one gateway message, each pump its own MDS
        first, *rest = pumps
        messages = [
            pcd01_message(first, None, pumps[first], now(), "W1", more={p: pumps[p] for p in rest})
        ]
    assert len({m.split("|")[2] for m in messages}) == 1, "one sending application"
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        acks = await send(driver.port, *messages)
    assert all("MSA|AA|" in a for a in acks)
    got = {(r["pump"], r["channel"]): r["rate"] for r in readings(bay)}
    assert got == {(p, "A"): c["A"]["rate"] for p, c in pumps.items()}
    assert set(bay.monitor.engine.ward.pumps) >= set(pumps)


async def test_a_paused_pump_is_paused_and_raises_no_rate_alarm_until_it_runs() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        document(bay)
        paused = pcd01_message("P1", "B1", {"A": calcium("9 ml/h", "paused")}, now(), "C1")
        (ack,) = await send(driver.port, paused)
        assert "MSA|AA|C1" in ack
        assert readings(bay)[-1]["status"] == "paused"
        await asyncio.sleep(0.2)
        assert not bay.of("rate-weight", "raised"), "a paused pump delivers nothing"
        running = pcd01_message("P1", "B1", {"A": calcium("9 ml/h")}, now(), "C2")
        await send(driver.port, running)
        await bay.until(lambda: bay.of("rate-weight", "raised"))
    assert bay.of("rate-weight")[0]["priority"] == "high"


async def test_a_secondary_piggyback_is_its_own_channel() -> None:
    channels = {
        "A": calcium("1 ml/h", "paused"),
        "A-secondary": {"rate": "5 ml/h", "status": "infusing", "drug": "Sodium bicarbonate 4.2%"},
    }
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        await send(driver.port, pcd01_message("P1", "B1", channels, now(), "C1", style="bbraun"))
    got = {r["channel"]: (r["rate"], r["status"], r["drug"]) for r in readings(bay)}
    assert got == {
        "A": ("1 ml/h", "paused", CA),
        "A-secondary": ("5 ml/h", "infusing", "Sodium bicarbonate 4.2%"),
    }


async def test_the_current_bbraun_style_gives_its_rate() -> None:
    message = pcd01_message(
        "P2449", None, {"A": calcium("41.67 ml/h")}, now(), "C1", style="bbraun"
    )
    # current firmware: what flows is MDC_FLOW_FLUID_PUMP_CURRENT in the delivery information
    assert "158014^MDC_FLOW_FLUID_PUMP_CURRENT^MDC|1.1.1.2|41.67|" in message
    message = "\r".join(s for s in message.split("\r") if "157784^" not in s)  # no setting at all
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        (ack,) = await send(driver.port, message)
    assert "MSA|AA|C1" in ack
    (reading,) = readings(bay)
    assert (reading["pump"], reading["rate"], reading["status"]) == (
        "P2449",
        "41.67 ml/h",
        "infusing",
    )


@pytest.mark.parametrize("style", STYLES)
async def test_a_pcd04_occlusion_reaches_the_right_channel_and_ends_with_its_alert_id(
    style: str,
) -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        document(bay)
        (ack,) = await send(
            driver.port,
            pcd01_message("P1", "B1", {"A": calcium("0.9 ml/h")}, now(), "C1", style=style),
        )
        start = pcd04_message("P1", "A", "occlusion", "AL-1", True, now(), "C2", style=style)
        end = pcd04_message("P1", "A", "occlusion", "AL-1", False, now(), "C3", style=style)
        (ack_start,) = await send(driver.port, start)
        await bay.until(lambda: bay.of("occlusion", "raised"))
        assert readings(bay)[-1]["alarm"] == "occlusion"
        # the next telemetry keeps the alarm: it has not ended
        await send(
            driver.port,
            pcd01_message(
                "P1", "B1", {"A": calcium("0.9 ml/h", "alarm")}, now(), "C4", style=style
            ),
        )
        assert readings(bay)[-1]["alarm"] == "occlusion"
        (ack_end,) = await send(driver.port, end)
        await bay.until(lambda: bay.of("occlusion", "cleared"))
    assert all("MSA|AA|" in a for a in (ack, ack_start, ack_end))
    (raised,) = bay.of("occlusion", "raised")
    assert (raised["pump"], raised["channel"], raised["bed"]) == ("P1", "A", "B1")
    assert "alarm" not in readings(bay)[-1]


async def test_an_adt_admit_with_a_weight_makes_the_weight_based_rules_work() -> None:
    """No bedside ``patient`` event: the infant and her weight come from ADT^A01 (the line
    and the pump's connection to it are bedside documentation, which HL7 does not carry)."""
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        document(bay, with_patient=False)
        birth = now() - 2 * 86_400_000_000
        admit = adt_message("A01", "B1", "NICU-42", now(), "A1", weight="0.9 kg", birth_us=birth)
        reading = pcd01_message("P1", "B1", {"A": calcium("9 ml/h")}, now(), "C1", style="bbraun")
        acks = await send(driver.port, admit, reading)
        await bay.until(lambda: bay.of("rate-weight", "raised"))
    assert all("MSA|AA|" in a for a in acks)
    (patient,) = [orjson.loads(r.raw) for r in bay.accepted("patient")]
    assert (patient["bed"], patient["patient"], patient["weight"]) == ("B1", "NICU-42", "0.9 kg")
    assert bay.monitor.engine.ward.beds["B1"].weight_kg == pytest.approx(0.9)
    (alert,) = bay.of("rate-weight", "raised")
    assert (alert["pump"], alert["bed"], alert["priority"]) == ("P1", "B1", "high")


async def test_a_discharge_clears_the_infant_of_the_bed() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        admit = adt_message("A01", "B4", "NICU-7", now(), "A1", weight="1.4 kg")
        leave = adt_message("A03", "B4", "NICU-7", now(), "A2")
        acks = await send(driver.port, admit, leave)
    assert all("MSA|AA|" in a for a in acks)
    bed = bay.monitor.engine.ward.beds["B4"]
    assert (bed.patient, bed.weight_kg) == ("discharged:NICU-7", None)


# -- answers ---------------------------------------------------------------------------------


async def test_answers_aa_only_for_what_the_monitor_accepted() -> None:
    good = pcd01_message("P1", None, {"A": calcium("1 ml/h")}, now(), "G1")
    negative = pcd01_message("P2", None, {"A": calcium("-1 ml/h")}, now(), "N1")
    unknown_unit = good.replace("265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM", "999^X^MDC")
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        acks = await send(
            driver.port, good, negative, unknown_unit, b"not hl7 at all", SHARED_EXAMPLE
        )
        await bay.until(lambda: bay.of("telemetry-invalid", "raised"))
    ok, refused, unit, garbage, anonymous = acks
    assert "MSA|AA|G1" in ok
    # read by the driver, refused by the monitor: the gateway is told so
    assert "MSA|AE|N1|" in refused and "negative" in refused and "ERR|" in refused
    assert "MSA|AE|G1|" in unit and "a unit CalGuard does not know" in unit
    assert "MSA|AE||not an HL7 v2 message" in garbage
    assert "MSA|AE|1|" in anonymous and "names itself nowhere" in anonymous
    assert [(r.status, r.event_type) for r in bay.records if r.source.startswith("mllp")] == [
        ("accepted", "reading"),
        ("rejected", "reading"),
        ("rejected", "wire"),
        ("rejected", "wire"),
        ("rejected", "wire"),
    ]


def test_the_acknowledgement_is_python_hl7s_with_escaped_reasons() -> None:
    message = Message(pcd01_message("P1", None, {"A": calcium("1 ml/h")}, now(), "C7"))
    ack = acknowledgement(message, "AE", 0, ["unit ^ & ~ | \\ — é"])
    msh, msa, err = ack.rstrip("\r").split("\r")
    assert msh.startswith("MSH|^~\\&|CALGUARD|CALGUARD|CALGUARD_SIM_GW^") and "|ACK^R01^ACK|" in msh
    assert "|19700101000000+0000|" in msh
    assert msa == "MSA|AE|C7|unit \\S\\ \\T\\ \\R\\ \\F\\ \\E\\ - \\Xe9\\"
    assert err.startswith("ERR|||207^Application internal error^HL70357|E||||unit \\S\\")


async def test_no_verdict_in_time_is_an_ae_never_an_aa() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0", ack_timeout=0.2)
    async with driver:  # nobody reads the driver: no monitor gives a verdict
        (ack,) = await send(
            driver.port, pcd01_message("P1", None, {"A": calcium("1 ml/h")}, now(), "T1")
        )
    assert "MSA|AE|T1|" in ack and "did not confirm" in ack


async def test_the_listener_port_is_released_on_close() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with driver:
        port = driver.port
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)  # free again
    server.close()
    await server.wait_closed()


def test_a_time_zone_that_does_not_exist_is_refused_at_once() -> None:
    with pytest.raises(Exception, match="not an IANA time zone"):
        MllpDriver("mllp://127.0.0.1:0", time_zone="Mars/Olympus")


# -- the vendor styles of `calguard simulate hl7` ------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_the_simulated_gateway_plays_its_style_with_adt_and_pcd04(style: str) -> None:
    """The occlusion scenario at 120x: infants admitted by ADT, telemetry in the vendor's
    style, the stall as a PCD-04 occlusion that ends when the pump runs again."""
    clock: Clock = ScaledClock(120.0, anchor_us=now())
    url = f"virtual://bedside-{style}"
    VirtualDriver.forget(url)
    driver = MllpDriver("mllp://127.0.0.1:0", clock=clock)
    async with LiveBay([driver, VirtualDriver(url, clock=clock)], clock=clock) as bay:
        await bay.until(lambda: driver.is_open)
        gateway = Hl7Gateway(
            "127.0.0.1", driver.port, clock, BedsideQueue(url), interval_s=10, style=style
        )
        try:
            await asyncio.wait_for(play(load_scenario("occlusion"), gateway, clock), 30)
            await bay.until(lambda: bay.of("occlusion", "cleared"))
        finally:
            await gateway.stop()
    assert gateway.acks and all("MSA|AA|" in a for a in gateway.acks), gateway.acks
    assert [orjson.loads(r.raw)["weight"] for r in bay.accepted("patient")] == ["1.3 kg"]
    assert {(r["pump"], r["channel"]) for r in readings(bay)} == {("P1", "A")}
    assert bay.of("occlusion", "raised")[0]["bed"] == "B1"


# -- the pieces --------------------------------------------------------------------------------


def test_hl7_times() -> None:
    assert hl7_time("20261121080310+0100") == "2026-11-21T08:03:10+01:00"
    assert hl7_time("202611210803-0500") == "2026-11-21T08:03:00-05:00"
    assert hl7_time("20120109175417-0000") == "2012-01-09T17:54:17-00:00"  # UTC, local unknown
    from zoneinfo import ZoneInfo

    amsterdam = ZoneInfo("Europe/Amsterdam")
    assert hl7_time("20260509143000", zone=amsterdam) == "2026-05-09T14:30:00+02:00"
    with pytest.raises(HL7Problem, match="daylight-saving"):
        hl7_time("20261025023000", zone=amsterdam)  # that hour happens twice
    for bad, reason in (
        ("20261121080310", "no UTC offset"),
        ("100001121080310+0000", "not an HL7 date/time"),
        ("30001121080310+0000", "outside the years 1900 to 2999"),
        ("20261340080310+0000", "not a date/time"),
        ("20261121", "not precise to the minute"),
    ):
        with pytest.raises(HL7Problem, match=re.escape(reason)):
            hl7_time(bad)


def test_a_birth_date_alone_is_the_latest_moment_it_could_be() -> None:
    t = "2026-11-21T08:00:00+00:00"
    assert birth_time("20261118", zone=None, not_after=t) == "2026-11-18T23:59:59-12:00"
    assert birth_time("20261121", zone=None, not_after=t) == t  # never after the event
    assert birth_time("202611180432+0100", zone=None, not_after=t) == "2026-11-18T04:32:00+01:00"


@pytest.mark.parametrize(
    ("obx6", "unit"),
    [
        ("265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM", "ml/h"),
        ("mL/h^mL/h^UCUM", "mL/h"),  # UCUM in the first triplet
        ("^^^mL/h^mL/h^UCUM", "mL/h"),  # in the second
        ("999999^MDC_DIM_X^MDC^mL/min^mL/min^UCUM", "mL/min"),  # MDC unknown, UCUM known
        ("3122^mL/h^UCUM^265266^MDC_DIM_MILLI_L_PER_HR^MDC", "mL/h"),  # PCD-03 style
        ("kg^kilogram", "kg"),
        ("[lb_av]^pound^UCUM", "lb"),
        ("mm[Hg]^mm[Hg]^UCUM", "mmHg"),
        ("999999^MDC_DIM_X^MDC", None),
        ("%^%^UCUM", None),
        ("{beat}/min^{beat}/min^UCUM", None),
    ],
)
def test_units_from_mdc_or_ucum_in_either_triplet(obx6: str, unit: str | None) -> None:
    assert unit_of(obx6.split("^")) == unit


def test_a_pcd04_end_under_another_id_ends_the_same_condition() -> None:
    """B. Braun's captured alarm sequence ends under a new parent id (tests/conformance), and
    names the pump without the letter its PCD-01 gives it (P7 / 7)."""
    board, view = AlarmBoard(), AdtView()

    def given_(text: str) -> list[Any]:
        inputs = translate_message(Message(text), board, view).inputs
        for item in inputs:
            if item.accepted is not None:
                item.accepted()
        return inputs

    given_(pcd01_message("P7", None, {"A": calcium("1 ml/h")}, now(), "1", style="bbraun"))
    (alarmed,) = given_(
        pcd04_message("P7", "A", "occlusion", "X-1", True, now(), "2", style="bbraun")
    )
    assert alarmed.obj is not None and alarmed.obj["alarm"] == "occlusion"
    assert alarmed.obj["pump"] == "P7"
    (ended,) = given_(
        pcd04_message("P7", "A", "occlusion", "X-1", False, now(), "3", style="bbraun")
    )
    assert ended.obj is not None and "alarm" not in ended.obj


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_text_is_read_or_refused_with_a_reason_never_a_crash(text: str) -> None:
    with contextlib.suppress(HL7Problem):
        translate_message(Message("MSH|^~\\&|" + text), AlarmBoard(), AdtView())


_REAL = pcd01_message(
    "P1", "B1", {"A": calcium("1 ml/h"), "A-secondary": calcium("2 ml/h")}, 0, "R1"
)


@given(st.integers(0, len(_REAL) - 1), st.text(max_size=8))
@settings(max_examples=300, deadline=None)
def test_a_damaged_gateway_message_is_read_or_refused_never_a_crash(at: int, junk: str) -> None:
    damaged = _REAL[:at] + junk + _REAL[at + len(junk) :]
    with contextlib.suppress(HL7Problem):
        translate_message(Message(damaged), AlarmBoard(), AdtView())


def test_an_alarm_kept_for_a_pump_not_yet_heard_of_reaches_its_readings_and_ends() -> None:
    board, view = AlarmBoard(), AdtView()

    def given_(text: str) -> list[Any]:
        inputs = translate_message(Message(text), board, view).inputs
        for item in inputs:
            if item.accepted is not None:
                item.accepted()
        return inputs

    (early,) = given_(
        pcd04_message("P9", "A", "occlusion", "Y-1", True, now(), "1", style="bbraun")
    )
    assert early.problem is not None and early.pump == ("9", "A")  # PCD-04 says 9, not P9
    (first,) = given_(
        pcd01_message("P9", None, {"A": calcium("1 ml/h", "alarm")}, now(), "2", style="bbraun")
    )
    assert first.obj is not None and first.obj["alarm"] == "occlusion"
    (ended,) = given_(
        pcd04_message("P9", "A", "occlusion", "Y-1", False, now(), "3", style="bbraun")
    )
    assert ended.obj is not None and ended.obj["pump"] == "P9" and "alarm" not in ended.obj


async def test_aa_is_sent_only_once_the_reading_is_in_the_durable_log(tmp_path: Path) -> None:
    """After an AA the gateway forgets the message: by then the input must be in the log
    (another connection to the database sees it), not only in the monitor's memory."""
    from calguard.alerts.log import AlertLog, session_rows

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    message = pcd01_message("P2449", None, {"A": calcium("2.5 ml/h")}, now(), "C9", style="bbraun")
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with AlertLog(url) as log:
        await log.start_session("live", "aa after durable", load_library())
        async with LiveBay([driver], log=log) as bay:
            await bay.until(lambda: driver.is_open)
            (ack,) = await send(driver.port, message)
            _, rows, _ = await session_rows(url)  # read back at once, over its own connection
    assert "MSA|AA|C9" in ack
    assert [r.event_type for r in rows if r.status == "accepted"] == ["reading"]
