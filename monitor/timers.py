"""Deadlines that fire at their exact expiry, on injected time.

Each timer has a key (e.g. ``("telemetry-stale", ("P7", "A"))``) and at most one
deadline. The stale timer of every pump channel moves later with every reading (1 Hz);
pushing a heap entry each time would grow the heap by a reading per second per channel,
so a deadline that moves *later* only updates the target, and the queued entry, when it
comes due, re-queues itself at the new target. A deadline that moves *earlier* queues a
fresh entry and outdates the old one. A cancelled deadline leaves its entry queued (with
no target) for a later schedule of the same key to reuse: a daily-dose timer that comes and
goes with every reading near its limit would otherwise leave an entry per reading in the
heap, all coming due together hours later (measured: 26,000 entries, 42 pops a reading).
An entry with no target is dropped when it comes due. Firing order is by time, then by
scheduling order, so the same input always fires the same timers in the same order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator

__all__ = ["TimerQueue", "TimerState"]

#: a queue's whole state, for a snapshot: (heap, queued, targets, next generation)
TimerState = tuple[
    list[tuple[int, int, Hashable]], dict[Hashable, tuple[int, int]], dict[Hashable, int], int
]


class TimerQueue:
    __slots__ = ("_counter", "_heap", "_queued", "_target")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Hashable]] = []
        self._queued: dict[Hashable, tuple[int, int]] = {}  # key -> (due, generation) in heap
        self._target: dict[Hashable, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._target)

    def schedule(self, key: Hashable, due: int) -> None:
        self._target[key] = due
        queued = self._queued.get(key)
        if queued is None or due < queued[0]:
            generation = next(self._counter)
            self._queued[key] = (due, generation)
            heapq.heappush(self._heap, (due, generation, key))

    def cancel(self, key: Hashable) -> None:
        self._target.pop(key, None)  # its queued entry stays, for a later schedule to reuse

    def state(self) -> TimerState:
        """Copies of the heap (in its own order), the queued entries, the deadlines and the
        next generation: restored, the queue fires the same timers in the same order."""
        generation = next(self._counter)
        self._counter = itertools.count(generation)  # the next schedule still gets it
        return list(self._heap), dict(self._queued), dict(self._target), generation

    def restore(self, state: TimerState) -> None:
        """The state ``state()`` gave; ``ValueError`` if it cannot be a queue's."""
        heap, queued, target, generation = state
        n = len(heap)
        if any(heap[(i - 1) // 2][:2] > heap[i][:2] for i in range(1, n)):
            raise ValueError("the timer heap is not a heap")
        if any(g >= generation for _, g, _ in heap) or not set(queued) <= {k for *_, k in heap}:
            raise ValueError("the timer entries do not match the queue")
        self._heap, self._queued, self._target = list(heap), dict(queued), dict(target)
        self._counter = itertools.count(generation)

    def due(self, key: Hashable) -> int | None:
        return self._target.get(key)

    def pop_due(self, until: int, *, inclusive: bool) -> Iterator[tuple[int, Hashable]]:
        """Yield ``(due, key)`` for every deadline before ``until`` (or at it, if inclusive).

        Deadlines may be scheduled while iterating; those that fall in range are yielded too.
        """
        heap = self._heap
        while heap and (heap[0][0] < until or (inclusive and heap[0][0] == until)):
            due, generation, key = heapq.heappop(heap)
            queued = self._queued.get(key)
            if queued is None or queued[1] != generation:
                continue  # outdated by an earlier deadline
            target = self._target.get(key)
            if target is None:  # cancelled, and not scheduled again
                del self._queued[key]
                continue
            if target > due:  # the deadline moved later since this entry was queued
                generation = next(self._counter)
                self._queued[key] = (target, generation)
                heapq.heappush(heap, (target, generation, key))
                continue
            del self._queued[key]
            del self._target[key]
            yield due, key

    def next_due(self) -> int | None:
        """The earliest deadline, exactly (for a live loop's sleep). Entries whose deadline
        moved later are re-queued on the way, as ``pop_due`` would."""
        heap = self._heap
        while heap:
            due, generation, key = heap[0]
            queued = self._queued.get(key)
            if queued is None or queued[1] != generation:
                heapq.heappop(heap)
                continue
            target = self._target.get(key)
            if target is None:
                heapq.heappop(heap)
                del self._queued[key]
                continue
            if target > due:
                heapq.heappop(heap)
                generation = next(self._counter)
                self._queued[key] = (target, generation)
                heapq.heappush(heap, (target, generation, key))
                continue
            return due
        return None
