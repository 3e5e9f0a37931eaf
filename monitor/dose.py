"""The sliding 24-hour elemental-calcium total of one infant, exact in time.

Calcium delivered to an infant is a cumulative curve C(t): it rises linearly at the sum of
the calcium channels' rates and jumps with a documented dose. The daily total is
S(t) = C(t) - C(t - W), the calcium given in the window (t - W, t]. C is stored as
breakpoints (time, cumulative, slope) appended whenever the infant's total rate changes,
so a pump that reports the same rate every second adds nothing.

``next_change`` predicts, assuming the current rate continues, the exact moment S will
cross a limit (upwards or back down as old calcium leaves the window), so that the
``dose-daily`` alert fires at that moment and not at the next reading.

Why an index, and why this one (#12). The prediction walks the window's breakpoints in
time order: between two of them leaving the window, S is linear. A pump whose measured rate
jitters (0.80, 0.81, 0.80 ml/h ...) adds a breakpoint every second, 86,400 a day, and a walk
over all of them on every reading made a day of it quadratic (138 ms a reading after a day).
A cache of the last prediction cannot help: the jitter changes the slope on every reading,
and every change moves the crossing. So the walk is kept - its arithmetic decides the
answer, to the microsecond - but it only visits segments that can hold the change.

With x the current slope, S at the start of a segment and just before its end is
``A + x*T - C`` at two points (T, C) of the cumulative curve, A being the query's own. A
run of segments can hold the change only if the least (or greatest) of ``x*T - C`` over
their points reaches the limit; that extreme lies on the upper (lower) convex hull of the
points, and one bisection of the hull's edge slopes finds it, whatever x is. Blocks of
``_BLOCK`` segments get their hulls when their last breakpoint arrives; pairs of blocks,
pairs of those and so on get the hull of their children's hulls: a segment tree over
absolute block numbers, from which pruning drops whole nodes at the front. A query walks
the segments before the first whole block and after the last one (at most ``_BLOCK``
each), and finds the first block that can hold the change in O(log n) nodes of one
bisection each, whatever the window holds: a full day costs a few nodes more than an hour.
That block is walked, and only if it came near the limit without crossing does the search
go on. Each node is built once, from its children: amortised O(1) per breakpoint and level.

A bound is only ever used to skip: a block is skipped when, in exact arithmetic, its closest
approach to the limit stays further away than a margin that covers every float rounding of
the walk and of the hulls, so the answer is the walk's, bit for bit
(``tests/test_dose_ledger.py`` holds it to the walk as it was, on random ledgers).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from enum import Enum
from itertools import pairwise
from typing import TypeAlias

__all__ = ["DoseLedger"]

_US_PER_MIN = 60_000_000
_PRUNE_BATCH = 64
_BLOCK = 16  # segments per leaf of the index; the exact walk covers at most two of them
# Relative slack of a skip, far above the roundings it must cover (a few 1e-16 per
# operation) and far below any margin that matters clinically: a block whose total comes
# within it of the limit is walked exactly instead of skipped, which costs time, not truth.
_SLACK = 1e-9

# An upper convex hull of m vertices in one flat tuple (a day of jitter: ~20,000 hulls):
# m - 1 keys, the edges' slopes negated (increasing, for bisection), then m xs, then m ys
_Hull: TypeAlias = tuple[float, ...]
# The hull of (T, C) for the minimum of x*T - C, the hull of (T, -C) for the maximum
_Node: TypeAlias = tuple[_Hull, _Hull]


class _Walk(Enum):
    ON = "on"  # the walked segments hold no change: go on after them


class DoseLedger:
    __slots__ = (
        "_base",
        "_c",
        "_cmax",
        "_levels",
        "_offsets",
        "_origin",
        "_s",
        "_smax",
        "_t",
        "window_us",
    )

    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self._t: list[int] = []  # breakpoint times, increasing
        self._c: list[float] = []  # cumulative mmol at the breakpoint (after its jump)
        self._s: list[float] = []  # mmol per µs from the breakpoint on
        self._base = 0  # the number of breakpoints pruned: the absolute index of _t[0]
        self._origin = 0  # the first breakpoint's time: hull points are relative to it
        # the index: _levels[k][m - _offsets[k]] covers blocks m*2^k .. (m+1)*2^k - 1;
        # None where a block's first breakpoint was pruned before it filled (never queried)
        self._levels: list[list[_Node | None]] = []
        self._offsets: list[int] = []
        self._cmax = 0.0  # the largest |cumulative| in the index, and |slope| ever: the
        self._smax = 0.0  # scale of the roundings a skip must allow for

    def state(self) -> dict[str, object]:
        """Everything the ledger holds, index included (copies: the caller may serialise it
        while the ledger moves on), so that a restored ledger answers bit for bit alike."""
        return {
            "window_us": self.window_us,
            "t": list(self._t),
            "c": list(self._c),
            "s": list(self._s),
            "base": self._base,
            "origin": self._origin,
            "cmax": self._cmax,
            "smax": self._smax,
            "offsets": list(self._offsets),
            "levels": [
                [None if n is None else [list(n[0]), list(n[1])] for n in level]
                for level in self._levels
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> DoseLedger:
        """The ledger ``state()`` described; ``ValueError`` for anything else."""
        ledger = cls(_int(state["window_us"]))
        t = [_int(v) for v in _list(state["t"])]
        c = [_float(v) for v in _list(state["c"])]
        s = [_float(v) for v in _list(state["s"])]
        if not len(t) == len(c) == len(s) or any(a >= b for a, b in pairwise(t)):
            raise ValueError("the ledger's breakpoints are not in time order")
        ledger._t, ledger._c, ledger._s = t, c, s
        ledger._base, ledger._origin = _int(state["base"]), _int(state["origin"])
        ledger._cmax, ledger._smax = _float(state["cmax"]), _float(state["smax"])
        ledger._offsets = [_int(v) for v in _list(state["offsets"])]
        ledger._levels = [[_node(n) for n in _list(level)] for level in _list(state["levels"])]
        if len(ledger._levels) != len(ledger._offsets):
            raise ValueError("the ledger's index has levels without offsets")
        return ledger

    @property
    def rate_mmol_min(self) -> float:
        return self._s[-1] * _US_PER_MIN if self._s else 0.0

    def cumulative(self, t: int) -> float:
        i = bisect_right(self._t, t) - 1
        if i < 0:
            return 0.0
        return self._c[i] + self._s[i] * (t - self._t[i])

    def total(self, t: int) -> float:
        """mmol delivered in (t - window, t]."""
        return self.cumulative(t) - self.cumulative(t - self.window_us)

    def set_rate(self, t: int, mmol_per_min: float) -> None:
        slope = mmol_per_min / _US_PER_MIN
        if self._s and self._s[-1] == slope:
            return
        self._append(t, self.cumulative(t), slope)

    def add(self, t: int, mmol: float) -> None:
        slope = self._s[-1] if self._s else 0.0
        self._append(t, self.cumulative(t) + mmol, slope)

    def _append(self, t: int, cumulative: float, slope: float) -> None:
        self._smax = max(self._smax, abs(slope))
        if self._t and self._t[-1] == t:  # same instant: replace, keeping order
            self._c[-1], self._s[-1] = cumulative, slope
        else:
            if not self._t:
                self._origin = t
            self._t.append(t)
            self._c.append(cumulative)
            self._s.append(slope)
            last = self._base + len(self._t) - 1
            if last % _BLOCK == 0 and last > 0:  # its segments' ends are all known now
                self._index(last // _BLOCK - 1)
        self._prune(t)

    def _prune(self, now: int) -> None:
        # Keep the last breakpoint at or before now - window; drop older ones in batches.
        keep_from = bisect_right(self._t, now - self.window_us) - 1
        if keep_from >= _PRUNE_BATCH:
            del self._t[:keep_from], self._c[:keep_from], self._s[:keep_from]
            self._base += keep_from
            first = self._base // _BLOCK
            for k, level in enumerate(self._levels):
                drop = (first >> k) - self._offsets[k]
                if drop > 0:
                    del level[:drop]
                    self._offsets[k] += drop

    # -- the index ------------------------------------------------------------------------

    def _index(self, block: int) -> None:
        """Hulls for a block whose segments all ended, then for each node it completes."""
        self._put(0, block, self._leaf(block))
        k = 0
        while block & 1:  # a right child: its parent is complete too
            block >>= 1
            k += 1
            left, right = self._node(k - 1, 2 * block), self._node(k - 1, 2 * block + 1)
            merged = None
            if left is not None and right is not None:
                merged = (_merge(left[0], right[0]), _merge(left[1], right[1]))
            self._put(k, block, merged)

    def _leaf(self, block: int) -> _Node | None:
        first = block * _BLOCK - self._base
        if first < 0:
            return None
        t, c, s, origin = self._t, self._c, self._s, self._origin
        xs: list[float] = []
        ys: list[float] = []
        for i in range(first, first + _BLOCK):
            xs += (float(t[i] - origin), float(t[i + 1] - origin))
            ys += (c[i], c[i] + s[i] * (t[i + 1] - t[i]))  # the segment's start and end
        self._cmax = max(self._cmax, max(map(abs, ys)))
        return _upper_hull(xs, ys), _upper_hull(xs, [-y for y in ys])

    def _node(self, k: int, m: int) -> _Node | None:
        index = m - self._offsets[k]
        return self._levels[k][index] if index >= 0 else None

    def _put(self, k: int, m: int, node: _Node | None) -> None:
        if k == len(self._levels):
            self._levels.append([])
            self._offsets.append(m)
        self._levels[k].append(node)

    # -- the prediction -------------------------------------------------------------------

    def next_change(self, now: int, limit: float, above: bool) -> int | None:
        """First time > ``now`` when ``total > limit`` stops being ``above``, if the current
        rate continues; None if it never changes."""
        if not self._t:
            return None
        t, w = self._t, self.window_us
        slope_now = self._s[-1]
        c_now = self.cumulative(now)
        j0 = bisect_right(t, now - w)  # next breakpoint to leave the window
        n, base = len(t), self._base
        walk = _Walker(self, now, c_now, slope_now, limit, above)
        # step j walks the segment of breakpoint j-1 (from now, for j0); whole blocks b
        # hold steps b*_BLOCK+1-base .. (b+1)*_BLOCK-base
        first, blocks = -((j0 + base) // -_BLOCK), (n - 1 + base) // _BLOCK
        if first >= blocks:
            return walk.to_end(j0, now)
        found = walk.steps(j0, first * _BLOCK - base + 1, now)
        if found is not _Walk.ON:
            return found
        query = self._query(now, c_now, slope_now, limit, above)
        block = first
        while (candidate := self._candidate(block, blocks, *query)) is not None:
            j = candidate * _BLOCK - base + 1
            found = walk.steps(j, j + _BLOCK, t[j - 1] + w)
            if found is not _Walk.ON:
                return found
            block = candidate + 1  # it only came near the limit
        j = blocks * _BLOCK - base + 1
        return walk.to_end(j, t[j - 1] + w)

    def _query(
        self, now: int, c_now: float, x: float, limit: float, above: bool
    ) -> tuple[int, float, float]:
        """(hull, x, threshold): a segment can cross only if ``x*T - C <= threshold`` at one
        of its points, on that hull (the maximum's question is asked of (T, -C), negated)."""
        t, w, origin = self._t, self.window_us, self._origin
        last = t[-1]
        span = w + abs(last - now) + abs(now - origin) + abs(last - origin)
        scale = abs(c_now) + abs(limit) + self._cmax + abs(x) * span
        # an instant's float rounding (~2^-52 of the time since 1970) at the steepest slope
        instant = (abs(x) + self._smax) * (4 + (abs(now) + abs(last) + 2 * w) * 2.0**-50)
        margin = _SLACK * scale + instant
        a = c_now + x * (origin + w - now)  # S at a point is a + x*T - C
        if above:
            return 0, x, limit + margin - a
        return 1, -x, a + margin - limit

    def _candidate(
        self, block: int, blocks: int, hull: int, x: float, threshold: float
    ) -> int | None:
        """The first block from ``block`` on that can hold the crossing, if any."""
        levels, offsets = self._levels, self._offsets
        while block < blocks:
            k = 0  # climb to the largest whole node that starts here
            while not (block >> k) & 1 and block + (2 << k) <= blocks:
                k += 1
            while True:
                node = levels[k][(block >> k) - offsets[k]]
                assert node is not None  # nodes from a query's window on are all indexed
                h = node[hull]
                m = (len(h) + 1) // 3
                v = m - 1 + bisect_left(h, -x, 0, m - 1)  # the vertex where x*T - C is least
                if x * h[v] - h[v + m] > threshold:  # not in this node: on to the next one
                    block += 1 << k
                    break
                if k == 0:
                    return block
                k -= 1  # descend to the left child
        return None


class _Walker:
    """The exact walk over segments: the prediction's arithmetic, as it always was."""

    __slots__ = ("above", "c", "c_now", "cumulative", "limit", "now", "s", "slope_now", "t", "w")

    def __init__(
        self,
        ledger: DoseLedger,
        now: int,
        c_now: float,
        slope_now: float,
        limit: float,
        above: bool,
    ) -> None:
        self.t, self.c, self.s, self.w = ledger._t, ledger._c, ledger._s, ledger.window_us
        self.cumulative = ledger.cumulative
        self.now, self.c_now = now, c_now
        self.slope_now, self.limit, self.above = slope_now, limit, above

    def to_end(self, j: int, u: int) -> int | None:
        """Walk from step j to the last one, which runs on for ever: always an answer."""
        found = self.steps(j, len(self.t) + 1, u)
        assert found is not _Walk.ON
        return found

    def steps(self, j: int, stop: int, u: int) -> int | _Walk | None:
        """Walk steps j .. stop-1 from time ``u``: the change found, or ON past them."""
        now, c_now, cumulative = self.now, self.c_now, self.cumulative
        slope_now, limit, above = self.slope_now, self.limit, self.above
        t, c, s, w = self.t, self.c, self.s, self.w
        back = cumulative(u - w)  # C where the window starts
        while j < stop:
            trail_slope = s[j - 1] if j > 0 else 0.0
            total = c_now + slope_now * (u - now) - back
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
            back = c[j] + s[j] * (u - w - t[j])  # cumulative(u - w): the window starts at t[j]
            j += 1
        return _Walk.ON


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"not an integer: {v!r:.40}")
    return v


def _float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"not a finite number: {v!r:.40}")
    return v


def _list(v: object) -> list[object]:
    if not isinstance(v, list):
        raise ValueError(f"not a list: {v!r:.40}")
    return v


def _node(v: object) -> _Node | None:
    if v is None:
        return None
    hulls = _list(v)
    if len(hulls) != 2:
        raise ValueError("an index node is two hulls")
    low, high = (tuple(_float(x) for x in _list(h)) for h in hulls)
    if len(low) % 3 != 2 or len(high) % 3 != 2:
        raise ValueError("a hull is m - 1 keys, m xs and m ys")
    return low, high


def _upper_hull(xs: list[float], ys: list[float]) -> _Hull:
    """The upper convex hull of points sorted by x (of equal x, the highest counts)."""
    hx: list[float] = []
    hy: list[float] = []
    for x, y in zip(xs, ys, strict=True):
        if hx and hx[-1] == x:
            if y <= hy[-1]:
                continue
            hx.pop()
            hy.pop()
        while len(hx) >= 2 and (hx[-1] - hx[-2]) * (y - hy[-2]) >= (hy[-1] - hy[-2]) * (x - hx[-2]):
            hx.pop()
            hy.pop()
        hx.append(x)
        hy.append(y)
    keys = [(hy[i] - hy[i + 1]) / (hx[i + 1] - hx[i]) for i in range(len(hx) - 1)]
    return (*keys, *hx, *hy)


def _merge(left: _Hull, right: _Hull) -> _Hull:
    """The hull of two hulls, the left one's points all before the right one's."""
    a, b = (len(left) + 1) // 3, (len(right) + 1) // 3
    return _upper_hull(
        [*left[a - 1 : 2 * a - 1], *right[b - 1 : 2 * b - 1]],
        [*left[2 * a - 1 :], *right[2 * b - 1 :]],
    )
