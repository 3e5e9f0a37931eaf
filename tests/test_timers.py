"""The timer queue: exact order, deadlines that move, and a heap that stays small."""

from __future__ import annotations

from calguard.monitor.timers import TimerQueue


def test_deadlines_fire_in_time_order_then_scheduling_order() -> None:
    timers = TimerQueue()
    timers.schedule("b", 20)
    timers.schedule("a", 10)
    timers.schedule("c", 20)
    assert list(timers.pop_due(20, inclusive=True)) == [(10, "a"), (20, "b"), (20, "c")]
    assert len(timers) == 0


def test_a_deadline_that_moves_later_fires_only_at_its_new_time() -> None:
    timers = TimerQueue()
    timers.schedule("stale", 60)
    for second in range(1, 1000):  # a pump reporting every second
        timers.schedule("stale", second + 60)
    assert len(timers._heap) == 1  # one entry, not a thousand
    assert timers.next_due() == 1059
    assert list(timers.pop_due(1058, inclusive=True)) == []
    assert list(timers.pop_due(1059, inclusive=True)) == [(1059, "stale")]


def test_a_deadline_that_moves_earlier_or_is_cancelled() -> None:
    timers = TimerQueue()
    timers.schedule("x", 100)
    timers.schedule("x", 50)
    timers.schedule("y", 70)
    timers.cancel("y")
    assert timers.next_due() == 50
    assert list(timers.pop_due(1000, inclusive=True)) == [(50, "x")]


def test_exclusive_and_inclusive_bounds() -> None:
    timers = TimerQueue()
    timers.schedule("x", 100)
    assert list(timers.pop_due(100, inclusive=False)) == []
    assert list(timers.pop_due(100, inclusive=True)) == [(100, "x")]


def test_a_deadline_that_comes_and_goes_every_reading_keeps_one_entry() -> None:
    """A daily-dose timer near its limit is cancelled and scheduled again with every
    reading: the queue reuses the cancelled entry instead of growing by one per reading,
    and still fires exactly once, at the last deadline."""
    q = TimerQueue()
    for second in range(10_000):
        q.schedule("dose", 86_400 + second)
        q.cancel("dose")
    q.schedule("dose", 100_000)
    assert len(q._heap) == 1
    assert q.next_due() == 100_000
    assert list(q.pop_due(200_000, inclusive=True)) == [(100_000, "dose")]
    assert len(q._heap) == 0 and q.next_due() is None


def test_a_cancelled_deadline_never_fires_and_its_entry_goes() -> None:
    q = TimerQueue()
    q.schedule("a", 10)
    q.schedule("b", 20)
    q.cancel("a")
    assert q.next_due() == 20 and len(q._heap) == 1  # the dead entry dropped on the way
    assert list(q.pop_due(30, inclusive=False)) == [(20, "b")]
