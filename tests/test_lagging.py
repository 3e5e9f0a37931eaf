"""A monitor that falls behind its inputs says so, and does not call queued pumps silent.

Twenty pumps each run calcium and report every 5 s. The monitor falls behind (it takes
half a second of readings a second for a minute), then its feed stalls for 90 s (the
readings wait in the broker), then it drains the backlog at three times real time. It
must raise ``monitor-lagging``, hold ``telemetry-stale`` for the pumps whose readings are
queued, still raise it for the one pump that really went silent, clear once caught up,
and a replay of what it logged must give the very same lines.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import orjson
from calguard.config import load_library
from calguard.config.loader import builtin_text, parse_library
from calguard.drivers.base import Inbound
from calguard.drivers.mqtt import MqttDriver
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.lag import InputLag
from calguard.monitor.library import Library
from calguard.monitor.model import ChannelState
from calguard.monitor.timeutil import format_ts, parse_ts

from calguard.lag import LagReporter
from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts
from tests.support import Bedside, us

CA = "Calcium gluconate 20 mg/ml"
START = us("08:00")
PUMPS = 20
SILENT = "P20"  # really stops reporting at 08:01:00 (taken on time)


def at(second: float) -> str:
    return format_ts(START + round(second * 1e6))


class Recorded(Bedside):
    """A bedside whose every input is kept, as the log keeps it, for a replay."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, Any]] = []

    def feed(self, obj: dict[str, Any]) -> None:
        self.inputs.append(obj)
        transitions = self.pipeline.feed_object(obj, raw=json.dumps(obj), source="test")
        self.alerts += [tr.to_dict() for tr in transitions]


def stalled_ward(*, outage: bool = False) -> Recorded:
    """The scenario of the module docstring, simulated second by second as the live monitor
    runs it: the readings taken in a second, then the lag task's report, then a clock tick."""
    bay = Recorded()
    for k in range(1, PUMPS + 1):
        for event in admission(at(0), bed=f"B{k}", line=f"L{k}", pump=f"P{k}"):
            bay.feed(event)
    reporter = LagReporter(bay.engine.input_lag)
    library = bay.engine.library
    next_device, budget = 0, 0.0
    for s in range(360):
        budget += 1 if s < 60 else 0.5 if s < 120 else 0 if s < 210 else 3
        while budget >= 1 and next_device <= s:  # on time, behind, stalled, draining
            for k in range(1, PUMPS + 1):
                silent = f"P{k}" == SILENT and next_device > 60
                if next_device % 5 == k % 5 and not silent:
                    bay.feed(reading(f"P{k}", at(next_device), at(s), next_device))
            next_device, budget = next_device + 1, budget - 1
        if next_device > s:
            budget = 0.0  # caught up: on time from now on
        connected = not (outage and 120 <= s < 210)  # the stall is a broker outage
        said = reporter.update(START + (s + 1) * 1_000_000, connected, library)
        if said is not None:
            bay.feed(said)
        bay.feed({"t": at(s + 1), "type": "clock"})
    return bay


def reading(pump: str, t: str, received: str, seq: int) -> dict[str, Any]:
    return {"t": t, "type": "reading", "pump": pump, "rate": "1 ml/h", "drug": CA,
            "seq": seq, "received": received}  # fmt: skip


def lines(alerts: list[dict[str, Any]], rule: str) -> list[tuple[str, str, str | None]]:
    return [(a["t"][11:19], a["state"], a.get("pump")) for a in alerts if a["rule"] == rule]


def test_a_stalled_feed_raises_monitor_lagging_and_no_stale_storm() -> None:
    bay = stalled_ward()
    lagging = lines(bay.alerts, "monitor-lagging")
    assert [state for _, state, _ in lagging] == ["raised", "cleared"]
    raised, cleared = lagging[0][0], lagging[1][0]
    assert "08:01:25" <= raised <= "08:01:35"  # 15 s behind after 30 s at half speed
    assert "08:04:30" <= cleared <= "08:05:30"  # caught up at ~08:04:15, then 10 s below
    stale = lines(bay.alerts, "telemetry-stale")
    assert [pump for _, state, pump in stale if state == "raised"] == [SILENT]
    assert not lines(bay.alerts, "clock-skew")  # late delivery is not nineteen clock faults


def test_a_pump_really_silent_among_queued_ones_is_still_raised_within_the_bound() -> None:
    """P20's last reading is 08:01:00 (taken at 08:01:01): it is raised after at most the
    stale timeout plus max_hold (60 s + 60 s), whatever the lag, and stays raised through
    the drain."""
    bay = stalled_ward()
    (raised,) = [a for a in bay.alerts if a["rule"] == "telemetry-stale"]
    assert raised["pump"] == SILENT and raised["state"] == "raised"
    taken = [o["received"] for o in bay.inputs if o.get("pump") == SILENT and "received" in o]
    last = parse_ts(taken[-1])
    assert last + 60_000_000 < parse_ts(raised["t"]) <= last + 120_000_000
    assert ("telemetry-stale", (SILENT, "A")) in bay.engine.active


def test_a_replay_of_the_logged_session_gives_identical_lines() -> None:
    """The replay has no lag sensor of its own: the logged monitor events decide."""
    live = stalled_ward()
    replay = Recorded()
    for obj in live.inputs:
        replay.feed(obj)
    assert replay.alerts == live.alerts
    assert any(a["rule"] == "monitor-lagging" for a in replay.alerts)


def test_an_outage_is_not_a_lag_every_silent_pump_is_stale_on_time() -> None:
    """The drivers lost the broker during the stall: that silence is an outage, not a lag,
    and telemetry-stale speaks 60 s after each pump's last reading."""
    bay = stalled_ward(outage=True)
    stale = [a for a in bay.alerts if a["rule"] == "telemetry-stale" and a["state"] == "raised"]
    assert len(stale) == PUMPS
    assert all(a["t"] <= at(120 + 60) for a in stale)  # 60 s after each pump's last


def test_pump_clocks_off_by_a_constant_are_not_a_lag() -> None:
    """Half the pumps run 4 s behind, one 40 s behind, one 30 s ahead: nothing lags."""
    bay = Recorded()
    reporter = LagReporter(bay.engine.input_lag)
    offsets = {f"P{k}": (-4 if k % 2 else 0) for k in range(1, PUMPS + 1)}
    offsets |= {"P3": -40, "P4": 30}
    for s in range(120):
        for pump, offset in offsets.items():
            bay.feed(reading(pump, at(s + offset), at(s), s))
        event = reporter.update(START + (s + 1) * 1_000_000, True, bay.engine.library)
        assert event is None, event


def test_a_lag_hovering_at_the_threshold_does_not_flap() -> None:
    """Raised once 15 s behind for 2 s; a lag wavering between 9 and 16 s, or dipping below
    half the threshold for less than 10 s, keeps it raised; 10 s below 7.5 s clears it."""
    sensor = InputLag(5_000_000)
    reporter = LagReporter(sensor)
    library = load_library()
    channels = [ChannelState(f"P{k}", "A") for k in range(5)]
    for ch in channels:
        sensor.note(ch, 0, START)  # every pump's baseline: on time
    sensor.take()
    lags = [16] * 3 + [16, 9] * 20 + [5] * 10 + [12] + [5] * 11
    states: list[object] = []
    for s, lag in enumerate(lags, start=1):
        now = START + s * 1_000_000
        for ch in channels:
            sensor.note(ch, lag * 1_000_000, now)
        event = reporter.update(now, True, library)
        if event is not None and event["active"] != (states[-1] if states else False):
            states.append(event["active"])
    assert states == [True, False]
    assert not reporter.active


def one_pump_bay(speed: float) -> tuple[InputLag, LagReporter, ChannelState, Library]:
    """The training bay of ``calguard simulate``: one pump reporting every second of ward
    time, on time for two minutes (its baseline learned)."""
    sensor = InputLag(5_000_000)
    reporter = LagReporter(sensor, speed=speed)
    ch = ChannelState("P1", "A")
    library = load_library()
    for s in range(1, 121):
        sensor.note(ch, 30_000, START + s * 1_000_000)
        assert reporter.update(START + s * 1_000_000, True, library) is None
    return sensor, reporter, ch, library


def test_a_loaded_machine_at_60x_is_not_a_lag_a_real_backlog_is() -> None:
    """At 60x a machine's hiccup of 0.3, 2 or 10 s is 18 s, 2 or 10 min of ward time: none
    is the monitor 15 s behind. 20 s of real time behind, for a minute, is: raised once, a
    figure that jitters by a few ward seconds is not reported again every period, the drop
    is reported when it caught up, and it clears 10 s of real time after that."""
    sensor, reporter, ch, library = one_pump_bay(60.0)
    s, said = 120, []
    for hiccup_s in (0.3, 2.0, 10.0):  # one late reading each, the way a stall ends
        s += 1
        sensor.note(ch, round(hiccup_s * 60e6), START + s * 1_000_000)
        assert reporter.update(START + s * 1_000_000, True, library) is None
        s += 1  # the next period: on time again
        sensor.note(ch, 30_000, START + s * 1_000_000)
        assert reporter.update(START + s * 1_000_000, True, library) is None
    for k in range(3600 + 1200):  # a minute of real time 20 s behind, then on time
        s += 1
        behind = 1_200_000_000 + (k % 7) * 1_000_000 if k < 3600 else 30_000
        sensor.note(ch, behind, START + s * 1_000_000)
        event = reporter.update(START + s * 1_000_000, True, library)
        if event is not None:
            said.append((k, event["active"]))
    assert [active for _, active in said] == [True, True, False]  # its drop is reported
    (raised, _), (caught_up, _), (cleared, _) = said
    assert caught_up == 3600
    assert 120 <= raised <= 130  # 15 min of ward time behind for 2 s of real time
    assert 3600 + 600 <= cleared <= 3600 + 610  # 10 s of real time below 7.5 s


def test_a_monitor_that_stood_still_says_so_however_fast_it_drains() -> None:
    """At 60x the process is frozen for 25 s of real time (its lag task too), then takes
    what waited in one burst: raised at once, cleared 10 s of real time after."""
    sensor, reporter, ch, library = one_pump_bay(60.0)
    s, said = 120 + 1500, []
    assert reporter.update(START + s * 1_000_000, True, library) is None  # nothing taken yet
    for k in range(1, 700):
        s += 1
        behind = 1_500_000_000 if k == 1 else 30_000
        sensor.note(ch, behind, START + s * 1_000_000)
        event = reporter.update(START + s * 1_000_000, True, library)
        if event is not None:
            said.append((k, event["active"]))
    assert said[0] == (1, True)
    assert said[-1][1] is False and 600 <= said[-1][0] <= 610


def test_a_pump_sending_what_it_kept_is_not_a_lag() -> None:
    """A bay's pumps lose the broker for 90 s (the monitor does not) and then send what
    they kept, oldest first, in a burst that ends with a reading of now: the monitor was
    never behind. Whether the burst falls in one period or across two, nothing is said."""
    for split in (91, 45):  # where the lag period ends within each pump's burst
        sensor = InputLag(5_000_000)
        reporter = LagReporter(sensor)
        library = load_library()
        pumps = [ChannelState(f"P{k}", "A") for k in range(3)]
        for s in range(1, 61):
            for ch in pumps:
                sensor.note(ch, 0, START + s * 1_000_000)
            assert reporter.update(START + s * 1_000_000, True, library) is None
        back = START + 151 * 1_000_000
        for s in range(61, 151):  # the pumps away: nothing comes
            assert reporter.update(START + s * 1_000_000, True, library) is None
        for kept in range(91):
            for ch in pumps:
                sensor.note(ch, (90 - kept) * 1_000_000, back)
            if kept == split:
                assert reporter.update(back, True, library) is None
        for s in range(152, 200):
            for ch in pumps:
                sensor.note(ch, 0, START + s * 1_000_000)
            assert reporter.update(START + s * 1_000_000, True, library) is None


# -- live, through a real Mosquitto ---------------------------------------------------------


class StallingMqtt(MqttDriver):
    """The MQTT driver with a feed that can be stalled: while ``flowing`` is clear the
    monitor takes nothing, and what the pumps publish waits (the connection stays up)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def _read(self) -> list[Inbound]:
        await self.flowing.wait()
        return await super()._read()


def quick_library(max_hold: str) -> Library:
    """Stale after 5 s and lagging from 2 s, so that a stall of 8 s tells them apart."""
    text = builtin_text().replace('timeout = "60 s"', 'timeout = "5 s"')
    text = text.replace('threshold = "15 s"', 'threshold = "2 s"')
    found = parse_library(text.replace('max_hold = "60 s"', f'max_hold = "{max_hold}"'), "t")
    assert found.library is not None
    return found.library


class Pumps:
    """Ten pumps on Mosquitto, each publishing a reading a second (``late``: stamped that
    long ago, as if held back on the way)."""

    names = tuple(f"P{k}" for k in range(1, 11))

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client, self.seq = client, 0

    async def report(self, seconds: int, late_us: int = 0) -> None:
        for _ in range(seconds):
            self.seq += 1
            t = format_ts(parse_ts(now_ts()) - late_us)
            for pump in self.names:
                obj = {"t": t, "type": "reading", "pump": pump, "rate": "1 ml/h", "drug": CA,
                       "seq": self.seq}  # fmt: skip
                topic = f"calguard/lag/pumps/{pump}/telemetry"
                await self.client.publish(topic, orjson.dumps(obj), qos=1)
            await asyncio.sleep(1.0)


async def stalled_live_ward(broker: Broker, max_hold: str) -> LiveBay:
    """Readings come 3 s late for a while (the monitor measures a lag), then the monitor's
    feed stalls for 8 s while the pumps keep reporting, then it drains what waited and the
    pumps report on time until the alarm clears."""
    url = f"mqtt://{broker.host}:{broker.port}/calguard/lag"
    driver = StallingMqtt(url, client_id=f"lagging-{max_hold.replace(' ', '')}")
    async with LiveBay([driver], library=quick_library(max_hold)) as bay:
        await bay.until(lambda: driver.is_open)
        t0 = now_ts()
        docs = [e for k, p in enumerate(Pumps.names) for e in admission(t0, bed=f"B{k}",
                line=f"L{k}", pump=p)]  # fmt: skip
        async with aiomqtt.Client(broker.host, broker.port, identifier="lag-pumps") as client:
            await client.publish("calguard/lag/events", orjson.dumps(docs), qos=1)
            pumps = Pumps(client)
            await pumps.report(3)  # on time: every pump's clock offset is learned
            await bay.until(lambda: len(bay.accepted("reading")) >= 3 * len(Pumps.names))
            await pumps.report(4, late_us=3_000_000)
            driver.flowing.clear()
            await pumps.report(8)
            driver.flowing.set()
            for _ in range(30):  # on time, until the alarm clears
                await pumps.report(1)
                if bay.of("monitor-lagging", "cleared"):
                    break
    return bay


async def test_live_a_stalled_feed_raises_monitor_lagging_and_no_stale_storm(
    broker: Broker,
) -> None:
    bay = await stalled_live_ward(broker, "60 s")
    (raised,) = bay.of("monitor-lagging", "raised")
    assert "behind its inputs" in raised["message"]
    assert len(bay.of("monitor-lagging", "cleared")) == 1
    assert not bay.of("telemetry-stale", "raised")  # ten pumps reported all along
    assert not bay.of("clock-skew", "raised")
    logged = [r for r in bay.records if r.event_type == "monitor"]
    assert len(logged) >= 3  # raised, its figure as the stall grew, cleared: all logged


async def test_live_without_the_hold_the_same_stall_is_a_stale_storm(broker: Broker) -> None:
    """The control: max_hold = 0 s, as the monitor was before; every pump is called silent."""
    bay = await stalled_live_ward(broker, "0 s")
    assert bay.of("monitor-lagging", "raised")
    assert {a["pump"] for a in bay.of("telemetry-stale", "raised")} == {
        f"P{k}" for k in range(1, 11)
    }


async def test_a_lag_no_monitor_measured_is_refused_from_the_wire() -> None:
    """A device, an app or a file saying the monitor lags would hold every telemetry-stale
    for up to max_hold (and one saying the log is back would end log-unavailable): a
    monitor event from outside is refused with its reason, and changes nothing."""
    feed = "virtual://forged-lag"
    async with LiveBay([VirtualDriver(feed)], file_actions=True) as bay:
        for event in admission(now_ts(), bed="B1", line="L1", pump="P1"):
            VirtualDriver.put(feed, event)
        forged = {"t": now_ts(), "type": "monitor", "condition": "monitor-lagging",
                  "active": True, "lag": "60 s"}  # fmt: skip
        VirtualDriver.put(feed, forged)
        await bay.until(lambda: any("own condition" in (r.reason or "") for r in bay.records))
    (refused,) = [r for r in bay.records if "own condition" in (r.reason or "")]
    assert refused.status == "rejected" and refused.event_type == "wire"
    assert not bay.of("monitor-lagging")
    assert bay.monitor.engine.rules.ctx.input_lag_us == 0  # no hold was taken
