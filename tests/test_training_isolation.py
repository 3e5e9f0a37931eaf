"""Training never touches the ward: a live monitor warm-starts only from its own site's
live sessions, and the log's commands can tell the sessions apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.report import load_report
from calguard.alerts.sessions import SessionFilter, list_sessions
from calguard.config import load_library
from calguard.drivers.clock import SystemClock
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition, Description

from calguard.pipeline import Pipeline
from calguard.recovery import warm_start
from tests.live import admission

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 10%"
HOUR = 3_600_000_000


async def _session(log: AlertLog, mode: str, site: str, events: list[dict[str, object]]) -> int:
    session = await log.start_session(mode, f"{mode} run", load_library(), site=site)
    for event in events:
        log.add_input(
            InputRecord.from_raw(
                orjson.dumps(event),
                "test",
                "accepted",
                t_us=_t(event),
                event_type=str(event["type"]),
            )
        )
    return session


def _t(event: dict[str, object]) -> int:
    from calguard.monitor.timeutil import parse_ts

    return parse_ts(event["t"])


async def test_a_live_monitor_never_warm_starts_from_training_and_alarms_on_the_real_reading(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    now = SystemClock().now_us()
    # a training clock runs ahead: its pump P1 "read" 1 ml/h an hour from now
    training_t = format_ts(now + HOUR)
    trained = [*admission(training_t), {"t": training_t, "type": "reading", "pump": "P1",
               "rate": "1 ml/h", "drug": CA, "seq": 99}]  # fmt: skip
    ward_t = format_ts(now - 60_000_000)
    documented = admission(ward_t, bed="B7", line="L7", pump="P7")
    async with AlertLog(url) as log:
        await _session(log, "training", "training: demo", trained)
        await _session(log, "live", "other unit", admission(ward_t, bed="B9", pump="P9"))
        await _session(log, "live", "NICU North", documented)
    async with AlertLog(url) as log:
        warm = await warm_start(log, load_library(), now, site="NICU North")
    assert warm.replayed == len(documented)  # neither training nor the other unit
    engine = warm.engine
    assert engine.now is not None and engine.now <= now  # no training clock carried over
    assert set(engine.ward.beds) == {"B7"}
    # the real reading: accepted, and it alarms (with the training session it was dropped)
    pipeline = Pipeline(engine)
    real = {"t": format_ts(now), "type": "reading", "pump": "P1", "rate": "180 ml/h",
            "drug": CA, "received": format_ts(now)}  # fmt: skip
    pipeline.feed_object(real, raw=orjson.dumps(real), source="mqtt")
    assert pipeline.counts["accepted"] == 1 and pipeline.counts["out_of_order"] == 0


async def test_sessions_export_and_report_tell_training_from_the_ward(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    t = format_ts(SystemClock().now_us())
    async with AlertLog(url) as log:
        for mode, site in (("training", "training: demo"), ("live", "NICU North")):
            await _session(log, mode, site, admission(t))
            log.add_transition(
                AlertTransition(
                    SystemClock().now_us(),
                    "raised",
                    f"a-{mode[:4]}",
                    "rate-volume",
                    "high",
                    Description("m", "B1"),
                    "v",
                )
            )
    found = await list_sessions(url)
    assert [(s.mode, s.site, s.inputs, s.alerts) for s in found] == [
        ("training", "training: demo", 4, 1),
        ("live", "NICU North", 4, 1),
    ]
    ward_only = await load_report(normalise_db_url(url), None)
    assert len(ward_only.alarms) == 1
    both = await load_report(normalise_db_url(url), None, sessions_of=SessionFilter(mode=None))
    assert len(both.alarms) == 2

    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path)}

    def calguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard", *args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    listed = calguard("sessions", "--db", url)
    assert listed.returncode == 0, listed.stderr
    assert "training" in listed.stdout and "NICU North" in listed.stdout
    exported = calguard("export", "--db", url, "--mode", "training")
    assert exported.returncode == 0, exported.stderr
    assert "session 1:" in exported.stderr
    none = calguard("export", "--db", url, "--site", "nowhere", "--mode", "live")
    assert none.returncode == 1 and "no session" in none.stderr
