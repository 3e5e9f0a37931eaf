"""What a clock is, as the engine's callers see it; the engine itself never reads one.

The real clocks (the wall clock, a scaled training clock) read the outside world and so
live a floor up, in ``calguard.drivers.clock``; here is only the shape every party agrees on.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Clock"]


class Clock(Protocol):
    speed: float

    def now_us(self) -> int: ...

    async def sleep_until(self, us: int) -> None: ...
