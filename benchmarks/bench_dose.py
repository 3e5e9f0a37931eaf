"""The cost of a reading when a pump's measured rate jitters all day, against a steady pump.

    python benchmarks/bench_dose.py [--at 1 6 24] [--sample 200] [--repeat 5] [--weight 2]

Workload: one infant (WEIGHT kg, so the daily total stays below the limit and the whole
window is looked through) and one channel of 10% calcium gluconate reporting at 1 Hz, fed
as pre-validated events into the engine, for the largest AT hours:
  steady   0.80 ml/h every second: an unchanged reading, no rule runs (the fast path)
  change   steady all along, but the timed readings alternate 0.80/0.81 ml/h: every rule of
           the channel, line and bed runs, over a window that holds almost nothing
  jitter   0.80/0.81 ml/h alternating every second: a breakpoint a second in the dose
           ledger, 86,400 in a full window; the timed readings are the same as for change
  walk     jitter, with the daily-dose prediction as it was before #12 (a walk over every
           breakpoint of the window; ``tests.test_dose_ledger.reference_next_change``)

At each point AT hours in, SAMPLE readings are timed one by one (walk: a tenth of them);
the median per reading is printed, the median of REPEAT runs. jitter/change is what the
window's content costs (goal: within 2x); jitter/steady also counts the rules that run
because the rate changed, which no index can take away.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.config import load_library
from calguard.monitor.dose import DoseLedger
from calguard.monitor.engine import Engine
from calguard.monitor.events import Reading, parse_event
from calguard.monitor.timeutil import SECOND_US, format_ts, parse_ts

from tests.test_dose_ledger import reference_next_change

START = parse_ts("2026-11-21T08:00:00Z")
SCENARIOS = ("steady", "change", "jitter", "walk")


class WalkedLedger(DoseLedger):
    """The same ledger, predicting by the walk over every breakpoint."""

    __slots__ = ()

    def next_change(self, now: int, limit: float, above: bool) -> int | None:
        return reference_next_change(self, now, limit, above)


def admitted(weight: float) -> tuple[Engine, Reading, Reading]:
    """An engine with the infant admitted, and the two readings (0.80 and 0.81 ml/h)."""
    engine = Engine(load_library())
    at = format_ts(START)
    for event in (
        {"type": "patient", "bed": "B1", "weight": f"{weight} kg", "postnatal_age": "5 day"},
        {"type": "line", "line": "L1", "bed": "B1", "kind": "picc", "tip_confirmed": True},
        {"type": "patency_check", "line": "L1", "result": "blood_return"},
        {"type": "connect", "pump": "P1", "channel": "A", "line": "L1"},
    ):
        engine.handle(parse_event({"t": at, **event}))
    reading = {"t": at, "type": "reading", "pump": "P1", "channel": "A", "seq": 0}
    reading |= {"status": "infusing", "drug": "Calcium gluconate 10%"}
    low = parse_event({**reading, "rate": "0.80 ml/h"})
    high = parse_event({**reading, "rate": "0.81 ml/h"})
    assert isinstance(low, Reading) and isinstance(high, Reading)
    return engine, low, high


def run(
    scenario: str, points: list[int], sample: int, weight: float
) -> tuple[dict[int, float], int]:
    """Median µs per timed reading at each point; the breakpoints in the last window."""
    engine, low, high = admitted(weight)
    second = 0

    def feed(until: int, jitter: bool, timed: list[int] | None = None) -> None:
        nonlocal second
        handle = engine.handle
        while second < until:
            event = high if jitter and second % 2 else low
            event = event._replace(t=START + second * SECOND_US, seq=second)
            begin = time.perf_counter_ns()
            handle(event)
            if timed is not None:
                timed.append(time.perf_counter_ns() - begin)
            second += 1

    out = {}
    bed = engine.ward.beds["B1"]
    count = sample // 10 if scenario == "walk" else sample
    for hours in points:
        feed(hours * 3600 - count, jitter=scenario in ("jitter", "walk"))
        timed: list[int] = []
        if scenario == "walk":
            bed.ledger.__class__ = WalkedLedger  # same state, the old prediction
        feed(hours * 3600, jitter=scenario != "steady", timed=timed)
        bed.ledger.__class__ = DoseLedger
        out[hours] = statistics.median(timed) / 1000
    now = START + (second - 1) * SECOND_US
    return out, sum(1 for t in bed.ledger._t if t > now - bed.ledger.window_us)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--at", type=int, nargs="+", default=[1, 6, 24], help="hours")
    parser.add_argument("--sample", type=int, default=200, help="readings timed at each point")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--weight", type=float, default=2.0, help="kg (3 mmol/kg a day)")
    args = parser.parse_args()
    points = sorted(args.at)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"workload: one infant of {args.weight:g} kg, one channel at 1 Hz for {points[-1]} h; "
        f"{args.sample} readings timed at each point ({args.sample // 10} for walk), "
        f"{args.repeat} runs"
    )
    gc.collect()
    gc.freeze()
    runs: dict[str, list[dict[int, float]]] = {name: [] for name in SCENARIOS}
    window = 0
    for _ in range(args.repeat):
        for name in SCENARIOS:
            figures, held = run(name, points, args.sample, args.weight)
            runs[name].append(figures)
            window = held if name == "jitter" else window
    med = {
        name: {h: statistics.median(r[h] for r in runs[name]) for h in points} for name in SCENARIOS
    }
    print("median µs per reading through the engine:")
    header = "".join(f"{name:>10}" for name in SCENARIOS)
    print(f"{'at':>5}{header}{'jitter/change':>15}{'jitter/steady':>15}{'walk/jitter':>13}")
    for h in points:
        row = "".join(f"{med[name][h]:>10.1f}" for name in SCENARIOS)
        jitter = med["jitter"][h]
        print(
            f"{h:>4}h{row}{jitter / med['change'][h]:>15.2f}"
            f"{jitter / med['steady'][h]:>15.1f}{med['walk'][h] / jitter:>13.0f}"
        )
    print(f"breakpoints in the jittering pump's window at {points[-1]} h: {window}")
    worst = max(med["jitter"][h] / med["change"][h] for h in points)
    growth = med["jitter"][points[-1]] / med["jitter"][points[0]]
    targets = [
        ("jitter within 2x of a steady pump whose reading changes the rate", worst <= 2),
        (f"jitter at {points[-1]} h within 2x of {points[0]} h", growth <= 2),
    ]
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
