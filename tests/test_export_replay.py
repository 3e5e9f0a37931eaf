"""A live session's log, exported and replayed, gives the live alert lines, wire problems
included (bytes a driver could not use, naming a pump, raised telemetry-invalid live)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.drivers.base import Inbound
from calguard.drivers.clock import SystemClock
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.timeutil import format_ts, parse_ts

from calguard.app import Monitor
from calguard.live import _monitor
from tests.live import admission

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


class OffsetClock:
    """The system clock moved by a fixed offset: a monitor that ran hours ago, in real time."""

    speed = 1.0

    def __init__(self, offset_us: int) -> None:
        self.offset_us = offset_us

    def now_us(self) -> int:
        return SystemClock().now_us() + self.offset_us

    async def sleep_until(self, us: int) -> None:
        await asyncio.sleep(max(0.0, (us - self.now_us()) / 1e6))


async def _live_session(url: str, clock: OffsetClock, events: list[dict[str, object]]) -> list[str]:
    """One ``calguard run``-like live session of site NICU (warm start included) that takes
    ``events`` from a virtual driver and stops once they are processed."""
    feed = "virtual://export-later"
    VirtualDriver.forget(feed)
    out = io.StringIO()

    async def feed_then_stop(monitor: Monitor) -> AsyncIterator[None]:
        for event in events:
            VirtualDriver.put(feed, {"t": format_ts(clock.now_us()), **event})
        async with asyncio.timeout(30):
            while monitor.processed < len(events):  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        monitor.stop()
        yield None

    await _monitor(
        load_library(),
        [VirtualDriver(feed, clock=clock)],
        clock,
        url,
        "test",
        title="NICU",
        view=False,
        out=out,
        body=feed_then_stop,
        site="NICU",
    )
    return out.getvalue().splitlines()


async def test_the_export_of_a_later_session_replays_to_its_live_alert_lines(
    tmp_path: Path,
) -> None:
    """The second live session warm-starts from the first (an infant, a PIV, calcium
    running) three hours later: timers that ran out meanwhile are announced at their exact
    expiry, and new readings alarm with ids after the first session's. Its export, replayed
    on its own, gives exactly those alert lines."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    hours = 3 * 3600 * 1_000_000
    first = await _live_session(
        url,
        OffsetClock(-hours),
        [
            *(
                {k: v for k, v in e.items() if k != "t"}
                for e in admission("2026-01-01T00:00:00Z", weight="1.2 kg")
            ),
            {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": CA, "seq": 1},
        ],
    )
    assert first, "the first session raised nothing"
    second = await _live_session(
        url,
        OffsetClock(0),
        [{"type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA, "seq": 2}],
    )
    rules = {(orjson.loads(x)["rule"], orjson.loads(x)["state"]) for x in second}
    assert ("site-check-overdue", "raised") in rules  # ran out while the monitor was down
    assert ("rate-volume", "raised") in rules
    first_ids = {orjson.loads(x)["alert"] for x in first}
    assert not first_ids & {orjson.loads(x)["alert"] for x in second if "raised" in x}

    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path)}

    def calguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard", *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    exported = calguard("export", "--db", url, "--session", "2")
    assert exported.returncode == 0, exported.stderr
    head = orjson.loads(exported.stdout.splitlines()[0])
    assert head["type"] == "warm_start" and head["site"] == "NICU"
    replayed = calguard("replay", "-", "--no-db", stdin=exported.stdout)
    assert replayed.returncode == 0, replayed.stderr
    logged = calguard("export", "--db", url, "--session", "2", "--alerts")
    assert replayed.stdout.splitlines() == logged.stdout.splitlines() == second
    # the context is what makes it so: the same session's inputs alone give other lines
    alone = [x for x in exported.stdout.splitlines() if '"type":"context"' not in x][1:]
    bare = calguard("replay", "-", "--no-db", stdin="\n".join(alone) + "\n")
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.splitlines() != second
