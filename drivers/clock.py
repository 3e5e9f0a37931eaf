"""The real clocks (they read the wall clock); the engine itself never reads one.

``SystemClock`` is the wall clock. ``ScaledClock`` runs faster than the wall clock for
training and demos (a 60-minute site check overdue in one minute at 60x): every party that
shares the same anchor and speed agrees on the time, across processes.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["ScaledClock", "SystemClock", "midnight_utc_us"]

_DAY_US = 86_400_000_000


def _wall_us() -> int:
    return time.time_ns() // 1000


def midnight_utc_us() -> int:
    """Today's 00:00 UTC: the default anchor processes share for a scaled clock."""
    now = _wall_us()
    return now - now % _DAY_US


class SystemClock:
    speed = 1.0

    def now_us(self) -> int:
        return _wall_us()

    async def sleep_until(self, us: int) -> None:
        delay = (us - _wall_us()) / 1e6
        if delay > 0:
            await asyncio.sleep(delay)


class ScaledClock:
    """Virtual time = anchor + (wall - anchor) x speed: the same anchor, the same clock."""

    def __init__(self, speed: float, anchor_us: int | None = None) -> None:
        if speed <= 0:
            raise ValueError("the clock speed must be positive")
        self.speed = speed
        self.anchor_us = midnight_utc_us() if anchor_us is None else anchor_us

    def now_us(self) -> int:
        return self.anchor_us + round((_wall_us() - self.anchor_us) * self.speed)

    async def sleep_until(self, us: int) -> None:
        delay = (us - self.now_us()) / self.speed / 1e6
        if delay > 0:
            await asyncio.sleep(delay)
