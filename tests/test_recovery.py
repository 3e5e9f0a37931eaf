"""Warm start: a restarted monitor rebuilds its state from its own durable log."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.drivers.clock import SystemClock
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition, Description

from calguard.recovery import warm_start
from tests.live import LiveBay, admission

TEN = "Calcium gluconate 10%"
SECOND = 1_000_000


#: when the monitor received the first run's reading (its clock, not the event's ``t``)
RECEIVED: dict[str, int] = {}


async def first_run(url: str, start: int) -> list[dict[str, object]]:
    """A live session: an infant, a PIV, 10% calcium at 1 ml/h (too concentrated there)."""
    feed = "virtual://recovery"
    VirtualDriver.forget(feed)
    t = format_ts(start)
    async with AlertLog(url) as log:
        await log.start_session("live", "first run", load_library())
        async with LiveBay([VirtualDriver(feed)], log=log) as bay:
            for event in (
                *admission(t, weight="1.2 kg", age="3 day"),
                {"t": t, "type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": TEN, "seq": 1},
            ):
                VirtualDriver.put(feed, event)
            await bay.until(lambda: len(bay.records) == 5)
    (reading,) = bay.accepted("reading")
    assert reading.t_us is not None
    RECEIVED[url] = reading.t_us
    return bay.alerts


async def test_a_restart_keeps_the_ward_the_dose_and_the_open_alerts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    start = SystemClock().now_us() - 30 * SECOND
    before = await first_run(url, start)
    opened = {a["rule"]: a["alert"] for a in before if a["state"] == "raised"}
    assert "concentration-peripheral" in opened
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), SystemClock().now_us())
    engine = warm.engine
    assert warm.replayed == 5 and warm.transitions == []  # nothing changed while it was down
    assert engine.ward.beds["B1"].weight_kg == 1.2 and engine.ward.lines["L1"].documented
    assert engine.ward.beds["B1"].ledger.rate_mmol_min > 0  # the dose keeps counting
    assert {a.rule: a.alert for a in engine.active.values()} == opened  # same alerts, same ids
    assert engine.book.next_id > max(int(i[2:]) for i in opened.values())


async def test_a_timer_that_ran_out_while_down_fires_at_its_exact_expiry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    start = SystemClock().now_us()
    await first_run(url, start)  # the pump's last reading; then CalGuard is down for 200 s
    restart = start + 200 * SECOND
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), restart)
    stale = [tr for tr in warm.engine.tick(restart) if tr.rule == "telemetry-stale"]
    # 60 s after the monitor received the last reading, to the microsecond
    assert [(tr.state, tr.t) for tr in stale] == [("raised", RECEIVED[url] + 60 * SECOND)]


async def test_an_alert_left_open_whose_condition_is_gone_is_cleared(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    start = SystemClock().now_us() - 30 * SECOND
    await first_run(url, start)
    async with AlertLog(url) as log:  # a run that crashed after raising this, before clearing it
        await log.start_session("live", "crashed run", load_library())
        ghost = AlertTransition(
            start,
            "raised",
            "a-000099",
            "occlusion",
            "medium",
            Description("P2/A reports an occlusion", "B1", "L1", "P2", "A"),
            "x",
        )
        log.add_transition(ghost)
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), SystemClock().now_us())
    (cleared,) = warm.transitions
    assert (cleared.state, cleared.alert, cleared.rule) == ("cleared", "a-000099", "occlusion")
    assert orjson.loads(cleared.to_json())["pump"] == "P2"
    assert warm.engine.book.next_id == 100


async def test_replay_and_demo_sessions_do_not_feed_a_warm_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    async with AlertLog(url) as log:
        await log.start_session("demo", "demo", load_library())
        event = {
            "t": format_ts(SystemClock().now_us()),
            "type": "patient",
            "bed": "B9",
            "weight": "1 kg",
        }
        log.add_input(
            InputRecord.from_raw(orjson.dumps(event), "demo", "accepted", event_type="patient")
        )
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), SystemClock().now_us())
    assert warm.replayed == 0 and "B9" not in warm.engine.ward.beds


async def test_people_s_alarm_actions_are_left_to_the_alarm_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An acknowledgement in the log is not fed to the warm start's engine (which has no
    alarm layer, and would reject it with a warning at every restart): the alarm layer
    rebuilds itself from its own lines."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    start = SystemClock().now_us() - 30 * SECOND
    before = await first_run(url, start)
    ack = {"t": format_ts(start), "type": "ack", "alert": before[0]["alert"], "by": "rn42"}
    async with AlertLog(url) as log:
        await log.start_session("live", "a nurse acknowledged", load_library())
        log.add_input(
            InputRecord.from_raw(
                orjson.dumps(ack), "commands", "accepted", t_us=start, event_type="ack"
            )
        )
    caplog.set_level(logging.INFO, logger="calguard")
    caplog.clear()  # what the first run said (a new audit key) is not the warm start's
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), SystemClock().now_us())
    assert warm.replayed == 6  # the ack is among the inputs read back
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_poisoned_inputs_in_the_log_are_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Inputs logged before timestamps were range-checked and stamped with the monitor's
    clock: year 10000 in UTC, a pump clock in 2099. A restart must survive them and keep
    its clock where it is."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    start = SystemClock().now_us() - 30 * SECOND
    await first_run(url, start)
    future = 4_070_908_800 * SECOND  # 2099-01-01
    poison = [
        ({"t": "9999-12-31T23:59:59-23:59", "type": "reading", "pump": "P1", "rate": "1 ml/h"},
         start),
        ({"t": format_ts(future), "type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": TEN},
         future),
    ]  # fmt: skip
    async with AlertLog(url) as log:
        await log.start_session("live", "an older monitor", load_library())
        for event, t_us in poison:
            log.add_input(
                InputRecord.from_raw(
                    orjson.dumps(event), "mqtt", "accepted", t_us=t_us, event_type="reading"
                )
            )
    caplog.set_level(logging.INFO, logger="calguard")
    now = SystemClock().now_us()
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), now)
    assert warm.engine.now is not None and warm.engine.now <= now
    assert any("skipped an input dated 2099" in r.getMessage() for r in caplog.records)
    assert warm.engine.ward.beds["B1"].weight_kg == 1.2  # the rest came back
