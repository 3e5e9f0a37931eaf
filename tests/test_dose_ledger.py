"""A reading costs the same whatever the 24-hour window holds (#12), and the daily-dose
prediction is still the walk it always was, to the microsecond.

``reference_next_change`` is that walk as it was before the index: through every breakpoint
of the window. A pump whose measured rate jitters (0.80, 0.81, 0.80 ml/h ...) adds a
breakpoint every second, so after a day the walk cost 86,400 steps on every reading. The
index may only skip what cannot hold the answer; these tests hold it to the walk's answers
on random ledgers, on a jittering pump, and hold its cost to the window's logarithm.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from bisect import bisect_right
from collections.abc import Callable

from calguard.config import load_library
from calguard.monitor.dose import DoseLedger
from calguard.monitor.engine import Engine
from calguard.monitor.events import parse_event
from calguard.monitor.rules.base import DOSE_EPSILON
from calguard.monitor.timeutil import format_ts, parse_ts
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import Bedside

SECOND_US = 1_000_000
DAY_US = 86_400 * SECOND_US
START = parse_ts("2026-11-21T08:00:00Z")
MMOL_PER_ML = 100 * 0.093 / 40.078  # 10% calcium gluconate
ML_H = MMOL_PER_ML / 60  # mmol/min of elemental calcium per ml/h


def reference_next_change(ledger: DoseLedger, now: int, limit: float, above: bool) -> int | None:
    """``DoseLedger.next_change`` before the index: a walk over every breakpoint."""
    if not ledger._t:
        return None
    t, s, w = ledger._t, ledger._s, ledger.window_us
    slope_now = s[-1]
    c_now = ledger.cumulative(now)
    j = bisect_right(t, now - w)  # next breakpoint to leave the window
    u = now
    while True:
        trail_slope = s[j - 1] if j > 0 else 0.0
        total = c_now + slope_now * (u - now) - ledger.cumulative(u - w)
        crossed = total <= limit if above else total > limit
        if crossed and u > now:
            return u
        k = slope_now - trail_slope
        if (k < 0) if above else (k > 0):
            at = u + (limit - total) / k
            end = t[j] + w if j < len(t) else None
            if end is None or at < end:
                return max(now + 1, math.ceil(at))
        if j >= len(t):
            return None
        u = t[j] + w
        j += 1


def jitter(ledger: DoseLedger, seconds: range, start: int = START) -> int:
    """A pump at 0.80 ml/h, measured as 0.81 every other second; the last time fed."""
    t = start
    for second in seconds:
        t = start + second * SECOND_US
        ledger.set_rate(t, (0.81 if second % 2 else 0.80) * ML_H)
    return t


def same_answers(ledger: DoseLedger, now: int, limit: float) -> list[int | None]:
    """Both predictions, for the engine's own question and then the opposite one."""
    answers = []
    for above in (ledger.total(now) > limit, ledger.total(now) <= limit):
        answer = ledger.next_change(now, limit, above)
        assert answer == reference_next_change(ledger, now, limit, above), (now, limit, above)
        answers.append(answer)
    return answers


# -- the same answers -------------------------------------------------------------------------

RATES = [0.0, 0.80 * ML_H, 0.81 * ML_H, 1e-6, 0.5, 1.0, 3.0]
Step = tuple[int, float, int, int, float, int]
step = st.tuples(
    st.sampled_from([0, 1, 999, SECOND_US]) | st.integers(0, 4_000_000),  # µs since the last
    # mmol/min, or mmol given at once; from 1e-9, as a rate near 1e-300 sends the walk's
    # crossing time to infinity (OverflowError on the opposite question, old walk and new)
    st.sampled_from(RATES) | st.floats(1e-9, 5),
    st.integers(0, 9),  # 0: a documented dose; else a rate
    st.integers(0, 6),  # which question to ask after it
    st.floats(0.5, 1.5),
    st.integers(0, 2_000_000),  # how long after the step the question is asked
)


@settings(max_examples=150, deadline=None)
@given(
    window=st.sampled_from([1, 250, 100 * SECOND_US, DAY_US]) | st.integers(1, 500 * SECOND_US),
    start=st.sampled_from([0, START]) | st.integers(-(10**12), 10**12),
    pattern=st.lists(step, min_size=1, max_size=12),
    repeats=st.integers(1, 120),
    extras=st.lists(st.tuples(st.integers(0, 10**4), step), max_size=20),
    every=st.integers(1, 13),
)
def test_the_indexed_prediction_is_the_walk_over_every_breakpoint(
    window: int,
    start: int,
    pattern: list[Step],
    repeats: int,
    extras: list[tuple[int, Step]],
    every: int,
) -> None:
    """Random rates, doses, windows and limits: a pattern repeated (as a pump's jitter is)
    with changes put in anywhere, asked every few steps and at the end. The limit is the
    total now, at a breakpoint's exit from the window, a float either side of those, or
    anywhere near; the question the engine asks and the opposite one."""
    steps = pattern * repeats
    for position, extra in extras:
        steps.insert(position % (len(steps) + 1), extra)
    ledger, t = DoseLedger(window), start
    for number, (dt, value, kind, question, factor, later) in enumerate(steps):
        t += dt
        if kind == 0:
            ledger.add(t, value)
        else:
            ledger.set_rate(t, value)
        if number % every and number < len(steps) - 3:
            continue
        now = t + (later if question == 6 else 0)
        if question in (0, 1):
            limit = ledger.total(now)
            limit = math.nextafter(limit, math.inf if question else -math.inf)
        elif question in (2, 3):  # the total as a breakpoint leaves the window
            exit_at = ledger._t[int(factor * 1000) % len(ledger._t)] + window
            limit = ledger.total(exit_at)
            limit = limit if question == 2 else math.nextafter(limit, -math.inf)
        else:
            limit = ledger.total(now) * factor
        same_answers(ledger, now, limit)


def test_a_jittering_pump_is_predicted_to_the_microsecond_through_many_windows() -> None:
    """Ten-minute windows over an hour of jitter with two pushes: the limit sits on the
    window's total, so the prediction crosses it within the hour, both ways."""
    ledger = DoseLedger(10 * 60 * SECOND_US)
    limit = 10 * 0.805 * ML_H  # ten minutes at the mean rate, in mmol
    crossings = 0
    for second in range(3600):
        now = START + second * SECOND_US
        jitter(ledger, range(second, second + 1))
        if second in (900, 2000):
            ledger.add(now, limit / 50)
        own, _ = same_answers(ledger, now, limit)
        crossings += own is not None
    assert crossings > 1000  # the total went over and back: many a crossing to get right


def test_a_jittering_pump_alerts_at_the_microsecond_the_walk_predicts() -> None:
    """Through the engine: a 0.5 kg infant on 4.00/4.01 ml/h of 10% calcium gluconate, one
    reading a second, until the daily total is due to pass 3 mmol/kg within the second."""
    bay = Bedside()
    bay.admit(weight="0.5 kg")
    ledger = bay.engine.ward.beds["B1"].ledger
    limit = bay.engine.rules.ctx.dose_limit.value * 0.5 * (1 + DOSE_EPSILON)
    for second in range(10_000):
        now = START + second * SECOND_US
        rate = "4.01 ml/h" if second % 2 else "4.00 ml/h"
        bay.reading(format_ts(now), rate=rate, drug="Calcium gluconate 10%")
        due = bay.engine.timers.due(("dose-daily", "B1"))
        if due is not None and due < now + SECOND_US:
            break
    assert due is not None and len(ledger._t) > 5000  # a breakpoint a second until now
    assert due == reference_next_change(ledger, now, limit, False)
    bay.clock(format_ts(now + 10 * SECOND_US))
    (raised,) = bay.of("dose-daily")
    assert parse_ts(raised["t"]) == due


# -- the cost of a reading ----------------------------------------------------------------


def medians_us(*predictions: Callable[[], object], repeat: int = 301) -> list[float]:
    """The median time of each, taken in turn so that a busy machine slows all alike."""
    times: list[list[int]] = [[] for _ in predictions]
    for _ in range(repeat):
        for fn, spent in zip(predictions, times, strict=True):
            begin = time.perf_counter_ns()
            fn()
            spent.append(time.perf_counter_ns() - begin)
    return [statistics.median(spent) / 1000 for spent in times]


def test_the_prediction_costs_the_same_after_an_hour_or_a_day_of_jitter() -> None:
    hour, day = DoseLedger(DAY_US), DoseLedger(DAY_US)
    at_hour = jitter(hour, range(3600))
    at_day = jitter(day, range(DAY_US // SECOND_US + 3600))  # a full window, and pruned
    limit = 5.0  # mmol: a day at this rate is 4.5, so the whole window is looked through
    cost_hour, cost_day = medians_us(
        lambda: hour.next_change(at_hour, limit, False),
        lambda: day.next_change(at_day, limit, False),
    )
    (walk_day,) = medians_us(lambda: reference_next_change(day, at_day, limit, False), repeat=5)
    # 24 times the breakpoints: the walk costs 24 times more, the index a few nodes more
    assert cost_day < 4 * cost_hour, (cost_hour, cost_day)
    assert walk_day > 50 * cost_day, (walk_day, cost_day)


def test_a_pump_going_offline_concerns_its_own_channels_whatever_the_ward_holds() -> None:
    """A presence message looks at the pump's channels, not at every channel of the ward:
    it costs the same with 10 channels as with 20,000, and reaches exactly its own."""

    def ward(channels: int) -> Engine:
        engine = Engine(load_library())
        for pump, channel in [*((f"P{c}", "A") for c in range(channels)), ("P0", "B")]:
            event = {"t": format_ts(START), "type": "connect", "pump": pump, "channel": channel}
            engine.handle(parse_event({**event, "line": f"L{pump}"}))
        return engine

    def status(engine: Engine, online: bool) -> None:
        event = {"t": format_ts(START), "type": "pump_status", "pump": "P0", "online": online}
        engine.handle(parse_event(event))

    def offline(engine: Engine) -> set[tuple[str, str]]:
        return {key for key, ch in engine.ward.channels.items() if ch.offline}

    small, large = ward(10), ward(20_000)
    for engine in (small, large):
        status(engine, False)
        assert offline(engine) == {("P0", "A"), ("P0", "B")}
    small_flips, large_flips = itertools.cycle([True, False]), itertools.cycle([True, False])
    cost_small, cost_large = medians_us(
        lambda: status(small, next(small_flips)), lambda: status(large, next(large_flips))
    )
    assert cost_large < 3 * cost_small, (cost_small, cost_large)
    # a channel put in the ward other than through the engine is not missed either
    large.ward.channel("P0", "C")
    status(large, False)
    assert offline(large) == {("P0", "A"), ("P0", "B"), ("P0", "C")}
