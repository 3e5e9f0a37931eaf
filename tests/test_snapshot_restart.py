"""A monitor that dies mid-shift restarts from its latest snapshot and the inputs after it:
the same alert ids, no alarm lost, an acknowledged one not annunciated again - and the
same state a full replay of the log would have rebuilt."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from calguard.alerts.alarms import AlarmManager
from calguard.alerts.log import AlertLog
from calguard.alerts.schema import snapshots
from calguard.alerts.snapshots import latest_snapshot, save_snapshot
from calguard.config import load_library
from calguard.drivers.base import Inbound
from calguard.drivers.clock import SystemClock
from calguard.monitor.snapshot import to_snapshot
from calguard.monitor.timeutil import format_ts
from sqlalchemy import delete, update

from calguard.app import Monitor
from calguard.recovery import WarmStart, restore_alarms, warm_start
from tests.live import admission

CA = "Calcium gluconate 20 mg/ml"
TEN = "Calcium gluconate 10%"
SECOND = 1_000_000
LIBRARY = load_library()


class StepClock:
    """A monitor clock the test moves."""

    speed = 1.0

    def __init__(self, us: int) -> None:
        self.us = us

    def now_us(self) -> int:
        return self.us

    async def sleep_until(self, us: int) -> None:  # pragma: no cover - not used here
        raise NotImplementedError


class Shift:
    """A live session fed input by input (``Monitor._process``, as its drivers do)."""

    def __init__(self, log: AlertLog, clock: StepClock) -> None:
        self.clock = clock
        self.lines: list[dict[str, Any]] = []
        self.monitor = Monitor(
            LIBRARY, [], clock=clock, log=log, outputs=[self._out], file_actions=True
        )

    def _out(self, _tr: Any, line: str) -> None:
        self.lines.append(orjson.loads(line))

    def arrive(self, event: dict[str, Any], after_s: int = 1) -> None:
        self.clock.us += after_s * SECOND
        event = {"t": format_ts(self.clock.us), **event}
        self.monitor._process(Inbound("virtual://bay#P", orjson.dumps(event), event))

    def raised(self, rule: str) -> str:
        return str(
            next(x["alert"] for x in self.lines if x["rule"] == rule and x["state"] == "raised")
        )


async def killed_mid_shift(url: str, start: int) -> tuple[Shift, int]:
    """An infant, a PIV, 10% calcium (too concentrated there: alarmed, then acknowledged);
    a snapshot; then bicarbonate on the same line (alarmed) - and the process dies, with
    no clean stop and no last snapshot. Returns the shift and its inputs after the snapshot."""
    async with AlertLog(url) as log:
        await log.start_session("live", "first run", LIBRARY, site="NICU")
        shift = Shift(log, StepClock(start))
        for event in (
            {"type": "patient", "bed": "B1", "weight": "1 kg", "postnatal_age": "5 day"},
            {"type": "line", "line": "L1", "bed": "B1", "kind": "piv"},
            {"type": "connect", "pump": "P1", "line": "L1"},
            {"type": "connect", "pump": "P2", "line": "L1"},
            {"type": "patency_check", "line": "L1", "result": "blood_return"},
            {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": TEN, "seq": 1},
        ):
            shift.arrive(event)
        conc = shift.raised("concentration-peripheral")
        shift.arrive({"type": "ack", "alert": conc, "by": "rn7"})
        await log.flush()
        await save_snapshot(log, shift.monitor.take_snapshot)
        after = [
            {
                "type": "reading",
                "pump": "P2",
                "rate": "2 ml/h",
                "seq": 1,
                "drug": "Sodium bicarbonate 4.2%",
            },
            {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": TEN, "seq": 2},
        ]
        for event in after:
            shift.arrive(event)
        assert shift.raised("incompatible-coinfusion")
        await log.flush()  # what was acknowledged to the pumps is durable; then kill -9
    return shift, len(after)


async def restart(url: str, now: int) -> tuple[WarmStart, AlarmManager, list[dict[str, Any]]]:
    """What ``calguard run`` does before its drivers connect (calguard.live._monitor)."""
    async with AlertLog(url) as log:
        warm = await warm_start(log, LIBRARY, now, site="NICU")
    alarms = AlarmManager(LIBRARY.alarms, LIBRARY.version)
    missed = restore_alarms(alarms, warm.alarm_lines, warm.engine, warm.transitions, now)
    return warm, alarms, [tr.to_dict() for tr in missed]


async def test_a_monitor_killed_mid_shift_restarts_from_its_snapshot(db_url: str) -> None:
    url = db_url
    start = SystemClock().now_us() - 600 * SECOND
    shift, after = await killed_mid_shift(url, start)
    now = shift.clock.us + 5 * SECOND
    warm, alarms, announced = await restart(url, now)
    assert warm.marker["snapshot"]["id"] == 1  # it began from the snapshot ...
    assert warm.replayed == after  # ... and replayed only what came after it
    live = {a.rule: a.alert for a in shift.monitor.engine.active.values()}
    assert {a.rule: a.alert for a in warm.engine.active.values()} == live  # same ids
    conc, coinfusion = live["concentration-peripheral"], live["incompatible-coinfusion"]
    assert alarms.alarms[conc].state == "acknowledged"  # not annunciated again
    assert alarms.alarms[coinfusion].state == "active"  # raised after the snapshot: kept
    assert not [x for x in announced if x["state"] == "raised"]  # nothing raised twice
    assert warm.engine.book.next_id == shift.monitor.engine.book.next_id

    # the very state a full replay of the log rebuilds (and the same alarms)
    async with AlertLog(url) as log, log._engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(delete(snapshots))
    full, full_alarms, full_announced = await restart(url, now)
    assert "snapshot" not in full.marker and full.replayed > warm.replayed
    ours, theirs = to_snapshot(warm.engine), to_snapshot(full.engine)
    for part in ("beds", "lines", "channels", "book"):
        assert ours[part] == theirs[part], part
    assert {k: a.state for k, a in alarms.alarms.items()} == {
        k: a.state for k, a in full_alarms.alarms.items()
    }
    assert announced == full_announced


async def test_a_snapshot_it_cannot_read_is_passed_over_for_the_full_replay(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = db_url
    shift, _ = await killed_mid_shift(url, SystemClock().now_us() - 600 * SECOND)
    async with AlertLog(url) as log, log._engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(update(snapshots).values(payload=b"\x78\x9c damaged"))
    with caplog.at_level(logging.WARNING, logger="calguard.recovery"):
        warm, alarms, _ = await restart(url, shift.clock.us + 5 * SECOND)
    assert "snapshot 1 not used (an unreadable snapshot payload" in caplog.text
    assert "snapshot" not in warm.marker  # its export carries the full context
    live = {a.rule: a.alert for a in shift.monitor.engine.active.values()}
    assert {a.rule: a.alert for a in warm.engine.active.values()} == live
    assert alarms.alarms[live["concentration-peripheral"]].state == "acknowledged"


async def test_only_the_sites_own_live_snapshots_are_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await killed_mid_shift(url, SystemClock().now_us() - 600 * SECOND)
    async with AlertLog(url) as log:
        assert await latest_snapshot(log, site="NICU") is not None
        assert await latest_snapshot(log, site="PICU") is None
        assert await latest_snapshot(log, site="NICU", before_session=1) is None


async def test_the_export_of_a_session_begun_from_a_snapshot_replays_to_its_lines(
    tmp_path: Path,
) -> None:
    """``calguard run`` logs a snapshot at a clean stop; the next session begins from it.
    Its export carries that snapshot and the inputs after it: replayed, the same lines."""
    from tests.test_export_replay import ROOT, OffsetClock, _live_session

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    hours = 3 * 3600 * SECOND
    docs = admission("2026-01-01T00:00:00Z", weight="1.2 kg")
    first = await _live_session(
        url,
        OffsetClock(-hours),
        [
            *({k: v for k, v in e.items() if k != "t"} for e in docs),
            {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": CA, "seq": 1},
        ],
    )
    assert first
    second = await _live_session(
        url,
        OffsetClock(0),
        [{"type": "reading", "pump": "P1", "rate": "180 ml/h", "seq": 2, "drug": CA}],
    )
    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path)}

    def calguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard", *args],
            cwd=ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    exported = calguard("export", "--db", url, "--session", "2")
    assert exported.returncode == 0, exported.stderr
    head = orjson.loads(exported.stdout.splitlines()[0])
    assert head["snapshot"]["session"] == 1  # the first session's last snapshot
    assert '"snapshot_part":0' in exported.stdout
    replayed = calguard("replay", "-", "--no-db", stdin=exported.stdout)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == second
    assert ("rate-volume", "raised") in [
        (orjson.loads(x)["rule"], orjson.loads(x)["state"]) for x in second
    ]
