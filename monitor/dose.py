"""The sliding 24-hour elemental-calcium total of one infant, exact in time.

Calcium delivered to an infant is a cumulative curve C(t): it rises linearly at the sum of
the calcium channels' rates and jumps with a documented dose. The daily total is
S(t) = C(t) - C(t - W), the calcium given in the window (t - W, t]. C is stored as
breakpoints (time, cumulative, slope) appended whenever the infant's total rate changes,
so a pump that reports the same rate every second adds nothing.

``next_change`` predicts, assuming the current rate continues, the exact moment S will
cross a limit (upwards or back down as old calcium leaves the window), so that the
``dose-daily`` alert fires at that moment and not at the next reading.
"""

from __future__ import annotations

import math
from bisect import bisect_right

__all__ = ["DoseLedger"]

_US_PER_MIN = 60_000_000
_PRUNE_BATCH = 64


class DoseLedger:
    __slots__ = ("_c", "_s", "_t", "window_us")

    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self._t: list[int] = []  # breakpoint times, non-decreasing
        self._c: list[float] = []  # cumulative mmol at the breakpoint (after its jump)
        self._s: list[float] = []  # mmol per µs from the breakpoint on

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
        if self._t and self._t[-1] == t:  # same instant: replace, keeping order
            self._c[-1], self._s[-1] = cumulative, slope
        else:
            self._t.append(t)
            self._c.append(cumulative)
            self._s.append(slope)
        self._prune(t)

    def _prune(self, now: int) -> None:
        # Keep the last breakpoint at or before now - window; drop older ones in batches.
        keep_from = bisect_right(self._t, now - self.window_us) - 1
        if keep_from >= _PRUNE_BATCH:
            del self._t[:keep_from], self._c[:keep_from], self._s[:keep_from]

    def next_change(self, now: int, limit: float, above: bool) -> int | None:
        """First time > ``now`` when ``total > limit`` stops being ``above``, if the current
        rate continues; None if it never changes."""
        if not self._t:
            return None
        t, s, w = self._t, self._s, self.window_us
        slope_now = s[-1]
        c_now = self.cumulative(now)
        j = bisect_right(t, now - w)  # next breakpoint to leave the window
        u = now
        while True:
            trail_slope = s[j - 1] if j > 0 else 0.0
            total = c_now + slope_now * (u - now) - self.cumulative(u - w)
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
