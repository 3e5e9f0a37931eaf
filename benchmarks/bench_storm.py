"""An alarm storm: every calcium channel of a large unit goes silent at once.

    python benchmarks/bench_storm.py [--channels 5000] [--repeat 3]

Workload: CHANNELS pump channels on CHANNELS/2 beds (one calcium and one other infusion
each), every one documented and reading; then the broker goes away and, 60 s later, one
clock tick finds every calcium channel silent: CHANNELS/2 `telemetry-stale` alarms raised in
one tick, each an alarm line for the sinks with its bed's state.

Measured, each REPEAT times (median printed): the time of that tick through the live
monitor (engine, alarm layer, the per-bed state of every line, a sink's buffer), with the
per-bed index of the alarm layer against the scan of every alarm it replaced (the baseline,
in the same run, with the 1,000-line sink buffer it had); and the lines the sink holds
against the lines emitted - a storm must lose none (the buffer keeps them until the station
takes them; the default is now 20,000).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.alerts.alarms import AlarmManager, _urgency
from calguard.alerts.sinks.base import Delivery, Sink
from calguard.config import load_library
from calguard.drivers.base import Inbound
from calguard.monitor.timeutil import format_ts, parse_ts

from calguard.app import Monitor

START = parse_ts("2026-11-29T08:00:00Z")
CA = "Calcium gluconate 20 mg/ml"


class StepClock:
    speed = 1.0

    def __init__(self, us: int) -> None:
        self.us = us

    def now_us(self) -> int:
        return self.us

    async def sleep_until(self, us: int) -> None:  # pragma: no cover - never runs here
        raise NotImplementedError


class Held(Sink):
    """A station that is not taking lines now: what the monitor hands it stays buffered."""

    scheme = "bench"

    async def _deliver(self, item: Delivery) -> None:  # pragma: no cover - never runs here
        raise NotImplementedError


def scan_of_bed(self: AlarmManager, bed: str | None) -> list[Any]:
    """The alarm layer before the per-bed index: every alarm of the unit, for every line."""
    return sorted((a for a in self.alarms.values() if a.last.description.bed == bed), key=_urgency)


def unit(monitor: Monitor, clock: StepClock, channels: int) -> None:
    t = format_ts(clock.us)
    for b in range(channels // 2):
        bed, line = f"B{b}", f"L{b}"
        events: list[dict[str, Any]] = [
            {"type": "patient", "bed": bed, "weight": "1.5 kg", "postnatal_age": "5 day"},
            {"type": "line", "line": line, "bed": bed, "kind": "picc", "tip_confirmed": True},
            {"type": "patency_check", "line": line, "result": "blood_return"},
        ]
        for pump, drug in ((f"P{b}c", CA), (f"P{b}o", "Dextrose 10%")):
            events += [
                {"type": "connect", "pump": pump, "line": line},
                {"type": "reading", "pump": pump, "rate": "1 ml/h", "drug": drug, "seq": 1},
            ]
        for event in events:
            obj = {"t": t, **event}
            monitor._process(Inbound("bench", orjson.dumps(obj), obj))


def storm(channels: int, baseline: bool) -> tuple[float, int, int, int]:
    """(seconds of the silent tick, alarms raised, lines emitted, lines the sink holds)."""
    library = load_library()
    clock = StepClock(START)
    # the baseline is the alarm layer and the sink buffer (1,000 lines) before the fix
    sink = Held("bench://station", capacity=1000) if baseline else Held("bench://station")
    emitted: list[str] = []
    monitor = Monitor(
        library, [], clock=clock, sinks=[sink], outputs=[lambda _, line: emitted.append(line)]
    )
    if baseline:
        monitor.pipeline.alarms.of_bed = scan_of_bed.__get__(monitor.pipeline.alarms)  # type: ignore[union-attr,method-assign]
    unit(monitor, clock, channels)
    before = len(emitted)
    sink._buffer.clear()  # the station took the lines of the set-up
    sink.on_undelivered = lambda *_: None  # counted below, not printed line by line
    clock.us += 61_000_000  # the stale timeout has passed for every channel
    tick = {"t": format_ts(clock.us), "type": "clock"}
    started = time.perf_counter()
    monitor.emit(monitor.pipeline.feed_object(tick, raw=orjson.dumps(tick), source="clock"))
    took = time.perf_counter() - started
    lines = emitted[before:]
    raised = sum('"raised"' in line and "telemetry-stale" in line for line in lines)
    return took, raised, len(lines), sink.pending


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"alarm storm: {args.channels} channels, {args.channels // 2} go silent in one tick")
    results: dict[str, list[tuple[float, int, int, int]]] = {"index": [], "scan": []}
    for _ in range(args.repeat):
        for name in results:
            results[name].append(storm(args.channels, baseline=name == "scan"))
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        _, raised, lines, held = runs[-1]
        print(
            f"  {name:<6} tick {seconds * 1000:8.1f} ms (median of {len(runs)}); "
            f"{raised} telemetry-stale raised, {lines} lines emitted, {held} held for the "
            f"sink, {lines - held} lost"
        )
    ratio = statistics.median(r[0] for r in results["scan"]) / statistics.median(
        r[0] for r in results["index"]
    )
    print(f"  the per-bed index: {ratio:.1f}x faster than scanning every alarm for every line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
