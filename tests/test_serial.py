"""The NE-1000 serial driver against simulated pumps on a pseudo-terminal pair: the bytes
on the wire, safe mode, alarms, line noise, a silent pump, an unplugged cable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from calguard.drivers.base import Inbound
from calguard.drivers.ne1000 import max_rate_ml_h
from calguard.drivers.serial import PumpMapping, SerialDriver
from calguard.monitor.errors import DriverError
from calguard.simulators.ne1000 import PumpBus, SimulatedPump
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Bedside

MAPPING = [
    {"address": 0, "pump": "P1", "drug": "Calcium gluconate 20 mg/ml", "concentration": "20 mg/ml"},
    {"address": 1, "pump": "P2", "channel": "B", "drug": "Dextrose 10%"},
]


def driver(bus: PumpBus, *, safe: bool = False, **options: Any) -> SerialDriver:
    options = {"pumps": MAPPING, "poll_interval": 0.05, "response_timeout": 0.2, **options}
    return SerialDriver(
        f"serial://{bus.path}?baud=19200&mode={'safe' if safe else 'basic'}", **options
    )


def two_pumps() -> list[SimulatedPump]:
    return [SimulatedPump(0, 2.5, "MH", "I"), SimulatedPump(1, 5.0, "MH", "S")]


def readings(items: list[Inbound]) -> dict[str, dict[str, Any]]:
    return {item.obj["pump"]: item.obj for item in items if isinstance(item.obj, dict)}


async def test_a_poll_is_byte_exact_and_becomes_one_reading_per_pump() -> None:
    async with PumpBus(two_pumps()) as bus, driver(bus) as d:
        got = readings(await d.read())
    assert bus.received == [b"0", b"0RAT", b"0DIS", b"1", b"1RAT", b"1DIS"]
    p1 = got["P1"]
    assert {
        k: p1[k]
        for k in ("type", "pump", "channel", "rate", "status", "drug", "concentration", "seq")
    } == {
        "type": "reading",
        "pump": "P1",
        "channel": "A",
        "rate": "2.500 ml/h",
        "status": "infusing",
        "drug": "Calcium gluconate 20 mg/ml",
        "concentration": "20 mg/ml",
        "seq": 1,
    }
    assert p1["volume_infused"].endswith(" ml") and "alarm" not in p1
    assert (got["P2"]["channel"], got["P2"]["status"], got["P2"]["drug"]) == (
        "B",
        "stopped",
        "Dextrose 10%",
    )


async def test_safe_mode_speaks_crc_packets_both_ways() -> None:
    async with PumpBus(two_pumps(), safe=True) as bus, driver(bus, safe=True) as d:
        got = readings(await d.read())
    # the simulated pump only acts on packets whose CRC checks: these arrived intact
    assert bus.received == [b"0", b"0RAT", b"0DIS", b"1", b"1RAT", b"1DIS"]
    assert got["P1"]["rate"] == "2.500 ml/h"
    assert bus.safe  # still in safe mode: no command fell back to basic framing


async def test_an_unprompted_safe_mode_alarm_is_reported_before_the_next_poll() -> None:
    async with (
        PumpBus(two_pumps(), safe=True) as bus,
        driver(bus, safe=True, poll_interval=30) as d,
    ):
        await d.read()
        bus.stall(0)  # the pump sends its Auto-Alarm packet now
        items = await asyncio.wait_for(d.read(), 5)  # long before the 30 s poll
    (alarm,) = items
    assert (alarm.obj["pump"], alarm.obj["status"], alarm.obj["alarm"]) == (
        "P1",
        "alarm",
        "occlusion",
    )


async def test_a_stall_stays_an_occlusion_until_the_pump_runs_again() -> None:
    async with PumpBus(two_pumps()) as bus, driver(bus) as d:
        await d.read()
        bus.stall(0)
        first = readings(await d.read())["P1"]  # the alarm, reported once by the pump
        second = readings(await d.read())["P1"]  # the pump says "stopped" now
        bus.pumps[0].status = "I"
        third = readings(await d.read())["P1"]
    assert (first["status"], first["alarm"]) == ("alarm", "occlusion")
    assert (second["status"], second["alarm"]) == ("alarm", "occlusion")
    assert third["status"] == "infusing" and "alarm" not in third


class StallsWhenAskedItsRate(SimulatedPump):
    """A pump whose motor stalls in the middle of a poll, just before the rate query."""

    def answer(self, command: str) -> str:
        if command == "RAT" and self.status == "I":
            self.raise_alarm("occlusion")
        return super().answer(command)


async def test_a_stall_in_the_middle_of_a_poll_is_still_an_occlusion() -> None:
    """The alarm takes the place of the status in the answer to whatever command comes
    next, which still carries its data (``00A?S2.500MH``): it is never lost."""
    pumps = [StallsWhenAskedItsRate(0, 2.5, "MH", "I"), SimulatedPump(1, 5.0, "MH", "S")]
    async with PumpBus(pumps) as bus, driver(bus) as d:
        first = readings(await d.read())["P1"]
        second = readings(await d.read())["P1"]
    assert (first["status"], first["alarm"], first["rate"]) == ("alarm", "occlusion", "2.500 ml/h")
    assert (second["status"], second["alarm"]) == ("alarm", "occlusion")


class AlarmsWithoutData(SimulatedPump):
    """A firmware that answers the rate query of a stalled pump with the bare alarm."""

    def answer(self, command: str) -> str:
        if command == "RAT" and self.status == "I":
            self.status = "S"
            return f"{self.address:02d}A?S"
        return super().answer(command)


async def test_an_alarm_in_place_of_the_rate_is_still_an_occlusion() -> None:
    pumps = [AlarmsWithoutData(0, 2.5, "MH", "I"), SimulatedPump(1, 5.0, "MH", "S")]
    async with PumpBus(pumps) as bus, driver(bus) as d:
        first = readings(await d.read())["P1"]
    assert (first["status"], first["alarm"], first["rate"]) == ("alarm", "occlusion", "0 ml/h")


async def test_a_power_cycle_is_reported_as_a_reset() -> None:
    async with PumpBus(two_pumps()) as bus, driver(bus) as d:
        bus.power_cycle(0)
        p1 = readings(await d.read())["P1"]
    assert (p1["status"], p1["alarm"]) == ("stopped", "reset")


async def test_noise_split_frames_and_crc_errors_are_counted_and_recovered() -> None:
    async with PumpBus(two_pumps(), safe=True) as bus, driver(bus, safe=True) as d:
        bus.inject(b"\x00\xffnoise\x03")
        bus.split(0.001)
        bus.corrupt(2)
        got = [readings(await d.read()) for _ in range(4)]
    assert all(g["P1"]["rate"] == "2.500 ml/h" for g in got if "P1" in g)
    assert sum("P1" in g for g in got) >= 3
    counters = d.stats.counters
    assert (
        counters.get("crc_errors", 0) >= 1
        and counters.get("garbage", 0) >= 1
        and counters["retries"] >= 1
    )


async def test_a_pump_that_does_not_answer_gives_no_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with PumpBus(two_pumps()) as bus, driver(bus) as d:
        bus.silence(0)
        silent = readings(await d.read())
        bus.silence(0, False)
        back = readings(await d.read())
    assert set(silent) == {"P2"} and set(back) == {"P1", "P2"}
    assert "pump 00 (P1) does not answer" in caplog.text and "answers again" in caplog.text


async def test_a_pump_already_silent_is_asked_once_per_poll_not_twice() -> None:
    """A dead pump costs one time-out per poll, so it cannot delay the live pumps' readings
    into staleness (a line of many pumps with several unplugged)."""
    async with PumpBus(two_pumps()) as bus, driver(bus) as d:
        bus.silence(0)
        first = readings(await d.read())
        after_first = d.stats.counters["retries"]
        second = readings(await d.read())
        third = readings(await d.read())
    assert set(first) == set(second) == set(third) == {"P2"}
    assert after_first == 2  # the first poll: two unanswered attempts
    assert d.stats.counters["retries"] == after_first + 2  # then one attempt per poll


async def test_an_unplugged_cable_is_reconnected_with_backoff() -> None:
    async with PumpBus(two_pumps()) as bus:
        d = driver(bus)
        seen: list[Inbound] = []

        async def collect() -> None:
            async for item in d.inputs():
                seen.append(item)

        task = asyncio.create_task(collect())
        try:
            await _until(lambda: len(seen) >= 2)
            bus.unplug()
            await _until(lambda: d.stats.reconnects >= 1)
            before = len(seen)
            bus.replug()
            await _until(lambda: len(seen) >= before + 4, within=15)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert d.stats.opened >= 2 and not d.is_open


async def test_safe_mode_time_out_is_armed_at_open_and_left_on_a_clean_stop() -> None:
    async with PumpBus(two_pumps()) as bus:
        async with driver(bus, safe=True, safe_timeout=10) as d:
            await d.read()
            assert bus.safe and bus.safe_timeout_s == 10
        assert not bus.safe  # SAF0 on close: the pumps must not alarm and stop because we left
    assert b"0SAF10" in bus.received and b"0SAF0" in bus.received


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noise=st.binary(min_size=1, max_size=64), safe=st.booleans())
async def test_random_line_noise_never_breaks_the_driver(noise: bytes, safe: bool) -> None:
    async with PumpBus(two_pumps(), safe=safe) as bus, driver(bus, safe=safe) as d:
        bus.inject(noise)
        got = [readings(await d.read()) for _ in range(3)]
    # noise may cost a retry or one reading, never the pumps: the last poll is clean
    assert got[-1]["P1"]["rate"] == "2.500 ml/h" and got[-1]["P2"]["rate"] == "5.000 ml/h"


@pytest.mark.parametrize(
    ("url", "options", "words"),
    [
        ("serial:///dev/ttyUSB0?mode=safer", {}, ["url: mode=safer", "basic, safe"]),
        ("serial:///dev/ttyUSB0?baud=19201", {}, ["url: baud=19201", "9600, 19200"]),
        ("serial:///dev/ttyUSB0?speed=1", {}, ['unknown URL parameter "speed"']),
        ("serial://dev/ttyUSB0", {}, ["three slashes"]),
        ("serial:///dev/ttyUSB0", {"pumps": []}, ["no pump on this line"]),
        (
            "serial:///dev/ttyUSB0",
            {"pumps": [*MAPPING, {"address": 0, "pump": "P3"}]},
            ["pumps[2].address: 0 is also the address of pumps[0]"],
        ),
        ("serial:///dev/ttyUSB0", {"pumps": [{"pump": "P1"}]}, ["pumps[0].address: is missing"]),
        ("serial:///dev/ttyUSB0", {"pumps": [{"address": 100}]}, ["from 0 to 99"]),
        ("serial:///dev/ttyUSB0", {"safe_timeout": 30}, ["add mode=safe to the URL"]),
        ("serial:///dev/ttyUSB0?baud=300", {}, ["at 300 baud", "1.07 s"]),
    ],
)
def test_a_driver_that_cannot_work_is_refused_when_made(
    url: str, options: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(DriverError) as caught:
        SerialDriver(url, **{"pumps": MAPPING, **options})
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_the_url_and_the_pump_tables_are_read_with_their_defaults() -> None:
    d = SerialDriver("serial:///dev/ttyUSB3?baud=9600&mode=safe", pumps=[{"address": 7}])
    assert (d.path, d.baud, d.safe) == ("/dev/ttyUSB3", 9600, True)
    assert d.pumps == [PumpMapping(7, "NE07", "A", None, None)]
    plain = SerialDriver("serial:///dev/ttyUSB3", pumps=MAPPING)
    assert (plain.baud, plain.safe) == (19200, False)
    assert plain.pumps[1] == PumpMapping(1, "P2", "B", "Dextrose 10%", None)


async def _until(condition: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_a_purge_is_reported_at_the_syringes_full_speed_not_the_programmed_rate() -> None:
    """Status X: the plunger runs at full speed whatever rate is programmed (2.5 ml/h)."""
    pumps = [SimulatedPump(0, 2.5, "MH", "I"), SimulatedPump(1, 5.0, "MH", "S")]
    async with PumpBus(pumps) as bus, driver(bus) as d:
        bus.pumps[0].answer("PUR")
        purge = readings(await d.read())["P1"]
    fastest = max_rate_ml_h(pumps[0].diameter_mm)  # 14.43 mm: about 20,800 ml/h
    assert purge["status"] == "infusing" and purge["mode"] == "bolus"
    assert purge["alarm"] == "purging"
    assert purge["rate"] == f"{fastest:.0f} ml/h" and fastest > 10_000


def test_a_purge_on_calcium_is_a_high_rate_volume_alarm() -> None:
    bay = Bedside()
    bay.admit()
    out = bay.reading(
        "08:05", rate=f"{max_rate_ml_h(14.43):.0f} ml/h", drug="Calcium gluconate 20 mg/ml",
        mode="bolus", alarm="purging",
    )  # fmt: skip
    assert {(a["rule"], a["priority"]) for a in out} >= {("rate-volume", "high")}
