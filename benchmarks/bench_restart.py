"""Restart to live: the full replay of the log against the latest snapshot (#12, part 4).

    python benchmarks/bench_restart.py [--channels 5000] [--minutes 10] [--runs 3]
                                       [--snapshot-inputs 100000] [--dir DIR]
                                       [--postgres postgresql://postgres@127.0.0.1:5432/test]

Workload, written once through the live path (inputs stamped on arrival, the engine and the
log as ``calguard run`` has them, snapshots as its snapshot task takes them): CHANNELS pump
channels (four a bed: calcium gluconate 20 mg/ml on a PICC, three neutral infusions), a
week of bedside documentation (each line's site check hourly, patency every 4 h), then
MINUTES of readings from every channel at 1 Hz. A snapshot every SNAPSHOT_INPUTS inputs
(the live monitor's default: every 5 minutes or 100,000 inputs, whichever comes first); the
log then ends just before the next would have been taken - the worst case for a restart.

Each run is a fresh copy of that log (SQLite; or PostgreSQL, a database made from the
generated one as its template) and a process of its own: the time from process
start (interpreter included) to live - ``calguard.live._monitor`` has warm-started, opened
its session and its drivers are running - and its peak RSS. ``full``: the snapshots deleted,
the warm start replays the week (what main did); ``snapshot``: it restores the latest one and
replays what follows. The restart happens 10 s (monitor clock) after the log's last input.
Medians of RUNS; the goal is live within 10 s at 5,000 channels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECOND = 1_000_000
WEEK = 7 * 86_400 * SECOND
SITE = "BENCH"
DRUGS = ("Calcium gluconate 20 mg/ml", "Dextrose 10%", "Amino acids 6%", "Lipid 20%")
RATES = ("0.5 ml/h", "2 ml/h", "1.5 ml/h", "0.6 ml/h")


def _documentation(beds: int, start: int, end: int) -> list[tuple[int, dict[str, Any]]]:
    """A week of charting: admissions at ``start``, then site checks and patency."""
    out: list[tuple[int, dict[str, Any]]] = []
    for b in range(beds):
        bed, t = f"B{b:04d}", start + b * 1000
        out.append(
            (t, {"type": "patient", "bed": bed, "weight": "1.5 kg", "postnatal_age": "9 day"})
        )
        for side, kind in (("a", "picc"), ("b", "uvc")):
            line = f"L{b:04d}{side}"
            out.append(
                (t, {"type": "line", "line": line, "bed": bed, "kind": kind, "tip_confirmed": True})
            )
            out.append((t, {"type": "patency_check", "line": line, "result": "blood_return"}))
        for c in range(4):
            line = f"L{b:04d}{'ab'[c // 2]}"
            out.append((t, {"type": "connect", "pump": f"P{4 * b + c:05d}", "line": line}))
    hour = 3600 * SECOND
    for h in range(1, (end - start) // hour + 1):
        for b in range(beds):
            t = start + h * hour + b * (hour // beds)
            if t >= end:
                continue
            for side in "ab":
                line = f"L{b:04d}{side}"
                out.append((t, {"type": "site_check", "line": line, "grade": 0}))
                if h % 4 == 0:
                    out.append(
                        (t, {"type": "patency_check", "line": line, "result": "blood_return"})
                    )
    for b in range(beds):  # backflow checked before the calcium starts, as it should be
        for side in "ab":
            check = {"type": "patency_check", "line": f"L{b:04d}{side}", "result": "blood_return"}
            out.append((end - 300 * SECOND + b * 1000, check))
    out.sort(key=lambda x: x[0])
    return out


async def generate(url: str, channels: int, minutes: int, every: int) -> dict[str, Any]:
    """The log, through the live path; returns what it holds and the time it ends."""
    from calguard.alerts.log import AlertLog
    from calguard.alerts.snapshots import PendingSnapshot, write_snapshot
    from calguard.config import load_library
    from calguard.monitor.engine import Engine
    from calguard.monitor.snapshot import to_snapshot
    from calguard.monitor.timeutil import format_ts

    from calguard.pipeline import Pipeline

    library = load_library()
    end = time.time_ns() // 1000
    readings_from = end - minutes * 60 * SECOND
    beds = channels // 4
    docs = _documentation(beds, readings_from - WEEK, readings_from)
    # the snapshots' phase such that the log ends just before the next one: the worst case
    phase = (len(docs) + channels * minutes * 60 - (every - 1)) % every
    last = 0
    n = snaps = 0
    async with AlertLog(url) as log:
        session = await log.start_session("live", "bench", library, site=SITE)
        pipeline = Pipeline(Engine(library), log)
        assert pipeline.alarms is not None

        async def arrive(t: int, event: dict[str, Any]) -> None:
            nonlocal n, snaps, last
            obj = {"t": format_ts(t), **event, "received": format_ts(t)}
            raw = json.dumps(obj)
            for tr in pipeline.feed_object(obj, raw=raw, source="mqtt://bench", received_us=t):
                log.add_transition(tr, tr.to_json())  # as the monitor's emit logs them
            n += 1
            if n % 5000 == 0:
                await log.checkpoint()
            if n % every == phase:
                alarms = pipeline.alarms.state() if pipeline.alarms else None
                snap = to_snapshot(pipeline.engine, alarms)
                await write_snapshot(log, PendingSnapshot(snap, session, log.input_seq))
                snaps, last = snaps + 1, n

        for t, event in docs:
            await arrive(t, event)
        seq = 0
        t = readings_from
        while t < end:
            seq += 1
            for c in range(channels):
                reading = {
                    "type": "reading",
                    "pump": f"P{c:05d}",
                    "channel": "A",
                    "seq": seq,
                    "rate": RATES[c % 4],
                    "drug": DRUGS[c % 4],
                    "status": "infusing",
                }
                await arrive(t + c * (SECOND // channels), reading)
            t += SECOND
        await log.flush()
    return {
        "end_us": t,
        "docs": len(docs),
        "inputs": n,
        "snapshots": snaps,
        "after_last_snapshot": n - last,
    }


def child(url: str, offset_us: int) -> None:
    """One restart, as ``calguard run`` makes it: prints when it is live, and its peak RSS."""
    from calguard.config import load_library
    from calguard.drivers.virtual import VirtualDriver

    from calguard.live import _monitor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    class Clock:
        speed = 1.0

        def now_us(self) -> int:
            return time.time_ns() // 1000 + offset_us

        async def sleep_until(self, us: int) -> None:
            await asyncio.sleep(max(0.0, (us - self.now_us()) / 1e6))

    async def body(monitor: Any) -> Any:
        while not monitor._running:  # noqa: ASYNC110 - a flag of the monitor's, no event
            await asyncio.sleep(0.001)
        live = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        print(json.dumps({"live": live, "rss_kb": usage.ru_maxrss, "cpu": cpu}), flush=True)
        monitor.stop()
        yield None

    clock = Clock()
    asyncio.run(
        _monitor(
            load_library(),
            [VirtualDriver("virtual://bench", clock=clock)],
            clock,
            url,
            "bench",
            title=SITE,
            view=False,
            out=io.StringIO(),
            body=body,
            site=SITE,
        )
    )


class SqliteLog:
    """The generated log in a file; each run gets a copy of it."""

    name = "SQLite"

    def __init__(self, work: Path) -> None:
        self.work, self.db = work, work / "log.sqlite3"
        self.url = f"sqlite:///{self.db}"

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.work.glob("log.sqlite3*")) / 1e6

    def copy(self, snapshots: bool) -> str:
        copy = self.work / "run.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
            if Path(f"{self.db}{suffix}").exists():
                shutil.copy(f"{self.db}{suffix}", f"{copy}{suffix}")
        if not snapshots:
            with contextlib.closing(sqlite3.connect(copy)) as conn, conn:
                conn.execute("DELETE FROM snapshots")
        return f"sqlite:///{copy}"


class PostgresLog:
    """The generated log in a database of its own; each run gets a copy (its template)."""

    name = "PostgreSQL"

    def __init__(self, admin_url: str) -> None:
        self.admin = admin_url
        self.base = admin_url.rsplit("/", 1)[0]
        self.url = f"{self.base}/calguard_bench_restart"

    def _sql(self, sql: str, url: str | None = None) -> Any:
        import asyncpg

        async def run() -> Any:
            conn = await asyncpg.connect(url or self.admin, timeout=10)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        return asyncio.run(run())

    def create(self) -> None:
        self._sql("DROP DATABASE IF EXISTS calguard_bench_restart WITH (FORCE)")
        self._sql("CREATE DATABASE calguard_bench_restart")

    def size_mb(self) -> float:
        size = "SELECT pg_database_size('calguard_bench_restart')"
        return float(self._sql(size)) / 1e6

    def copy(self, snapshots: bool) -> str:
        self._sql("DROP DATABASE IF EXISTS calguard_bench_restart_run WITH (FORCE)")
        self._sql("CREATE DATABASE calguard_bench_restart_run TEMPLATE calguard_bench_restart")
        url = f"{self.base}/calguard_bench_restart_run"
        if not snapshots:
            self._sql("DELETE FROM snapshots", url)
        return url


def restart(
    store: SqliteLog | PostgresLog, work: Path, end_us: int, snapshots: bool
) -> dict[str, Any]:
    url = store.copy(snapshots)
    offset = end_us + 10 * SECOND - time.time_ns() // 1000
    env = {**os.environ, "CALGUARD_DATA_DIR": str(work)}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", url, "--offset-us", str(offset)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    progress = [x for x in proc.stderr.splitlines() if "inputs replayed" in x]
    return {
        "s": out["live"] - started,
        "cpu": out["cpu"],
        "rss_mb": out["rss_kb"] / 1024,
        "progress": progress,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, default=5000)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--snapshot-inputs", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, help="keep the generated log here (reused if present)")
    ap.add_argument("--postgres", metavar="URL", help="on PostgreSQL (an admin URL) not SQLite")
    ap.add_argument("--modes", nargs="+", default=["full", "snapshot"], help="full, snapshot")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--offset-us", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.offset_us)
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-restart-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CALGUARD_DATA_DIR"] = str(work)
    store = PostgresLog(args.postgres) if args.postgres else SqliteLog(work)
    meta_file = work / f"meta-{store.name}.json"
    if not meta_file.exists():
        if isinstance(store, PostgresLog):
            store.create()
        started = time.perf_counter()
        every = args.snapshot_inputs
        meta = asyncio.run(generate(store.url, args.channels, args.minutes, every))
        meta["generated_s"] = time.perf_counter() - started
        meta_file.write_text(json.dumps(meta))
    meta = json.loads(meta_file.read_text())
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"log: {args.channels} channels, a week of documentation ({meta['docs']:,} inputs) and "
        f"{args.minutes} min of 1 Hz readings: {meta['inputs']:,} inputs, "
        f"{store.size_mb():,.0f} MB on {store.name}, {meta['snapshots']} snapshots taken; "
        f"{meta['after_last_snapshot']:,} inputs after the latest "
        f"(generated in {meta['generated_s']:.0f} s)"
    )
    for mode in args.modes:
        runs = [restart(store, work, meta["end_us"], mode == "snapshot") for _ in range(args.runs)]
        s = statistics.median(r["s"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = statistics.median(r["rss_mb"] for r in runs)
        shown = ", ".join(f"{r['s']:.1f}" for r in runs)
        print(
            f"{mode:9s} live in {s:6.1f} s (runs: {shown}), {cpu:.1f} s of CPU; "
            f"peak RSS {rss:,.0f} MB; {len(runs[-1]['progress'])} progress lines",
            flush=True,
        )
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
