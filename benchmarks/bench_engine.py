"""Readings per second through CalGuard, against a naive pint checker, in one run.

    python benchmarks/bench_engine.py [--pumps 200] [--minutes 10] [--repeat 5]

Workload: ``simulators.shift.load_shift`` - a unit of PUMPS pump channels reporting at 1 Hz
(half calcium), rates changing every 1-6 minutes, some past a limit, with bedside events.

Measured, each REPEAT times (median printed):
  naive      json.loads + pint ``Quantity(rate).to("ml/min")`` and concentration per reading,
             checking only the two simplest limits: the baseline the design compares against
  engine     raw JSON lines -> validation -> every rule and timer of CalGuard (no log)
  engine+log the same, replayed through the durable log into a fresh SQLite file
  events     pre-validated events -> engine only (the rule engine's own cost)
Memory: a separate process feeds 5,000 pump channels and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.monitor.engine import Engine
from calguard.monitor.events import decode_json, parse_event
from calguard.monitor.units import ureg
from calguard.simulators.shift import load_shift

from calguard.pipeline import Pipeline
from calguard.replay import replay


def naive(lines: list[bytes]) -> int:
    """What a first attempt looks like: pint on every reading."""
    alarms = 0
    limit_rate = ureg.Quantity(2, "ml/min")
    limit_mass = ureg.Quantity(100, "mg/min")
    conc = ureg.Quantity(20, "mg/ml")
    for line in lines:
        event = json.loads(line)
        if event.get("type") != "reading":
            continue
        rate = ureg.Quantity(event["rate"]).to("ml/min")
        if rate > limit_rate or rate * conc > limit_mass:
            alarms += 1
    return alarms


def engine_only(lines: list[bytes]) -> int:
    pipeline = Pipeline(Engine(load_library()))
    transitions = 0
    for number, line in enumerate(lines, 1):
        transitions += len(pipeline.feed_line(line, source="bench", line_no=number))
    return transitions + len(pipeline.finish())


def events_only(events: list[object]) -> int:
    engine = Engine(load_library())
    return sum(len(engine.handle(e)) for e in events)  # type: ignore[arg-type]


def with_log(data: bytes, directory: str, run: int) -> int:
    async def go() -> int:
        url = f"sqlite:///{directory}/bench-{run}.sqlite3"
        async with AlertLog(url) as log:
            summary = await replay(
                io.BytesIO(data), source="bench", library=load_library(), out=io.StringIO(), log=log
            )
        return summary.transitions

    return asyncio.run(go())


def timed(fn, *args):  # type: ignore[no-untyped-def]
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def memory_probe(channels: int, seconds: int) -> None:
    """Run in a fresh process: a ward of ``channels`` pump channels at 1 Hz; print peak RSS."""
    pipeline = Pipeline(Engine(load_library()))
    gc.collect()
    gc.freeze()
    beds, start = channels // 2, "2026-11-21T08:00:00Z"

    def feed(event: dict[str, object]) -> None:
        pipeline.feed_line(json.dumps(event), source="memory")

    for b in range(beds):
        feed({"t": start, "type": "patient", "bed": f"B{b}", "weight": "1.2 kg"})
        feed({"t": start, "type": "line", "line": f"L{b}", "bed": f"B{b}", "kind": "piv"})
    for c in range(channels):
        feed({"t": start, "type": "connect", "pump": f"P{c}", "line": f"L{c % beds}"})
    for second in range(seconds):
        t = f"2026-11-21T08:{1 + second // 60:02d}:{second % 60:02d}Z"
        for c in range(channels):
            feed(
                {
                    "t": t,
                    "type": "reading",
                    "pump": f"P{c}",
                    "seq": second,
                    "rate": "1.2 ml/h" if (c + second // 30) % 7 else "2.4 ml/h",
                    "drug": "Calcium gluconate 20 mg/ml" if c % 2 == 0 else "Dextrose 10%",
                    "pressure": f"{20 + c % 9} mmHg",
                }
            )
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM"))
    print(int(hwm.split()[1]) // 1024, len(pipeline.engine.ward.channels))


def memory(channels: int, seconds: int) -> tuple[int, int]:
    command = [sys.executable, __file__, "--memory-probe", str(channels), str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pumps", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--naive-sample", type=int, default=20_000, help="lines timed for the naive baseline"
    )
    parser.add_argument("--memory-channels", type=int, default=5000)
    parser.add_argument("--memory-seconds", type=int, default=120)
    parser.add_argument("--memory-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return 0

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    events = load_shift(args.pumps, args.minutes)
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    data = b"\n".join(lines) + b"\n"
    readings = sum(1 for e in events if e["type"] == "reading")
    parsed = [parse_event(decode_json(line)) for line in lines]
    sample = lines[: args.naive_sample]
    print(
        f"workload: {args.pumps} pumps x {args.minutes:g} min at 1 Hz = {len(lines)} lines "
        f"({readings} readings)"
    )
    gc.collect()
    gc.freeze()  # as the CLI does after startup: long-lived objects out of the collector's way

    rates: dict[str, list[float]] = {"naive": [], "engine": [], "engine+log": [], "events": []}
    with tempfile.TemporaryDirectory() as directory:
        for run in range(args.repeat):
            dt, _ = timed(naive, sample)
            rates["naive"].append(len(sample) / dt)
            dt, n_engine = timed(engine_only, lines)
            rates["engine"].append(len(lines) / dt)
            dt, n_log = timed(with_log, data, directory, run)
            rates["engine+log"].append(len(lines) / dt)
            dt, _ = timed(events_only, parsed)
            rates["events"].append(len(lines) / dt)
            assert n_engine == n_log, (n_engine, n_log)  # same alerts with and without the log
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"alert transitions in the workload: {n_engine}")
    print(f"{'path':<12}{'median lines/s':>16}{'min':>12}{'max':>12}{'x naive':>10}")
    for key in ("naive", "engine", "engine+log", "events"):
        print(
            f"{key:<12}{med[key]:>16,.0f}{min(rates[key]):>12,.0f}{max(rates[key]):>12,.0f}"
            f"{med[key] / med['naive']:>10.1f}"
        )
    peak, channels = memory(args.memory_channels, args.memory_seconds)
    print(
        f"peak RSS with {channels} pump channels after {args.memory_seconds} s at 1 Hz: {peak} MB"
    )
    targets = [
        ("engine >= 50,000/s", med["engine"] >= 50_000),
        ("engine+log >= 20,000/s", med["engine+log"] >= 20_000),
        ("peak memory < 150 MB", peak < 150),
    ]
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
