"""``calguard run`` killed with SIGKILL mid-stream restarts from its latest snapshot: the
alarm it had raised keeps its id and is not raised again, and no reading is lost."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from tests.brokers import Broker
from tests.durability import Monitor, Surge, Ward, site_file, wait_for

TOTAL, RATE = 3000, 200.0


def latest_snapshot(db: Path) -> int:
    """The id of the latest snapshot (each replaces the session's earlier ones)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0])
        except sqlite3.OperationalError:  # the monitor has not made its tables yet
            return 0


def accepted_readings(db: Path) -> int:
    """Readings accepted, in either form of the log (rows, or blocks of them)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        single = conn.execute(
            "SELECT count(*) FROM inputs WHERE event_type = 'reading' AND status = 'accepted'"
        ).fetchone()[0]
        try:
            blocks = conn.execute("SELECT coalesce(sum(rows), 0) FROM input_blocks").fetchone()[0]
        except sqlite3.OperationalError:
            blocks = 0
    return int(single) + int(blocks)


def test_kill_9_then_a_restart_from_the_snapshot_keeps_the_alarm_and_its_id(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "calguard.sqlite3"
    monitor = Monitor(
        site_file(tmp_path / "site.toml", f"sqlite:///{db}", broker.port),
        # a snapshot every 0.6 s of monitoring, so that one is taken well before the kill
        {"CALGUARD_DATA_DIR": str(tmp_path / "data"), "CALGUARD_SNAPSHOT_MINUTES": "0.01"},
        tmp_path / "monitor",
    )
    # P03 runs calcium at 180 ml/h from its 50th reading to the end: one alarm all along
    ward = Ward(broker.port, total=TOTAL, rate=RATE, surge=Surge("P03", range(50, TOTAL)))
    try:
        monitor.start()
        ward.connect().wait_for_monitor()
        ward.admit()
        ward.start()
        wait_for(lambda: monitor.of("rate-volume", "raised"), 60, "the surge alarmed")
        taken = latest_snapshot(db)
        wait_for(lambda: latest_snapshot(db) > taken and ward.sent >= TOTAL // 2, 60, "a snapshot")
        monitor.kill()  # no clean stop, no last snapshot
        killed = time.monotonic()
        monitor.start()
        wait_for(ward.finished, 120, "all readings published")
        wait_for(lambda: accepted_readings(db) >= TOTAL, 120, "every reading logged")
        assert monitor.stop() == 0, monitor.errors()
    finally:
        ward.disconnect()
        if monitor.alive:
            monitor.stop()
    errors = monitor.errors()
    assert "warm start: from snapshot" in errors, errors
    (raised,) = monitor.of("rate-volume", "raised")  # raised once, before the kill
    assert raised.at < killed
    alert = raised.alert["alert"]
    after = [line.alert for line in monitor.lines if line.at > killed]
    assert not [a for a in after if a["state"] == "raised" and a["rule"] == "rate-volume"]
    # the second run still has it: its clear (the surge ran to the end) is not it either
    assert all(a["alert"] == alert for a in after if a["rule"] == "rate-volume")
