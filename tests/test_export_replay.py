"""A live session's log, exported and replayed, gives the live alert lines, wire problems
included (bytes a driver could not use, naming a pump, raised telemetry-invalid live)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.drivers.base import Inbound
from calguard.monitor.timeutil import format_ts, parse_ts

from calguard.app import Monitor

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 20 mg/ml"


class StepClock:
    """A monitor clock the test moves: the live decisions at chosen times."""

    speed = 1.0

    def __init__(self, us: int) -> None:
        self.us = us

    def now_us(self) -> int:
        return self.us

    async def sleep_until(self, us: int) -> None:  # pragma: no cover - not used here
        raise NotImplementedError


async def test_export_and_replay_of_a_live_session_with_a_wire_problem(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    clock = StepClock(parse_ts("2026-11-21T08:00:00Z"))
    live: list[str] = []
    async with AlertLog(url) as log:
        await log.start_session("live", "test", load_library(), site="NICU")
        monitor = Monitor(
            load_library(), [], clock=clock, log=log, outputs=[lambda _, line: live.append(line)]
        )

        def arrive(event: dict[str, object], after_s: int = 1) -> None:
            clock.us += after_s * 1_000_000
            event = {"t": format_ts(clock.us), **event}
            monitor._process(Inbound("mqtt://b/w#pumps/P1/telemetry", orjson.dumps(event), event))

        for event in (
            {"type": "patient", "bed": "B1", "weight": "1 kg", "postnatal_age": "5 day"},
            {"type": "line", "line": "L1", "bed": "B1", "kind": "picc", "tip_confirmed": True},
            {"type": "connect", "pump": "P1", "line": "L1"},
            {"type": "patency_check", "line": "L1", "result": "blood_return"},
            {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": CA, "seq": 1},
        ):
            arrive(event)
        clock.us += 1_000_000  # a corrupted frame from P1: a wire problem
        monitor._process(
            Inbound(
                "mqtt://b/w#pumps/P1/telemetry", b"{garbage", problem="not valid JSON",
                pump=("P1", "A"),
            )
        )  # fmt: skip
        arrive({"type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA, "seq": 2}, 5)
        await log.flush()
    assert ("telemetry-invalid", "raised") in [
        (orjson.loads(x)["rule"], orjson.loads(x)["state"]) for x in live
    ]

    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path)}

    def calguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard", *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    exported = calguard("export", "--db", url)
    assert exported.returncode == 0, exported.stderr
    assert '"type":"wire"' in exported.stdout
    replayed = calguard("replay", "-", "--no-db", stdin=exported.stdout)
    assert replayed.returncode == 0, replayed.stderr
    logged = calguard("export", "--db", url, "--alerts")
    assert replayed.stdout.splitlines() == logged.stdout.splitlines() == live
