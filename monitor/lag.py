"""How far behind its inputs the monitor runs, measured on the receive side.

A live monitor stamps every input with its own clock when it takes it (``received``). A
reading that waited in the broker, a socket or a queue is taken late: its delay (receive
time less the pump's own time) grows by the wait. The pump's clock is not trusted - it may
be off by a constant - so each channel's delay is counted from its own baseline, the
smallest delay it has shown. The baseline is believed only within the clock-skew
tolerance: a pump further off than that has a clock fault of its own (``clock-skew``), and
a monitor that starts behind (a restart draining a backlog) must not learn its lag as every
pump's offset. One channel wrong by a constant is outvoted: the unit-wide figure is the
median over the channels that reported in the period.

A channel's figure for the period is its freshest reading's (the smallest delay), not its
first: the lag is how far behind the monitor is *now*, at the end of the period. A backlog
drains oldest first, so while the monitor is behind even its freshest reading is late; a
pump that sends what it kept while its own network was away (its outbox, minutes old) ends
the burst with a reading of now, and is not a monitor behind. A pump clock stepped within
the tolerance moves its channel's figure by twice the tolerance at most (10 s with the
library's 5 s), below the ``monitor-lagging`` threshold (15 s); one further behind has a
clock fault (``clock-skew``), outvoted by the median unless it is half the bay.

Cost per reading: a few integer comparisons and one dictionary look-up; the samples are
capped, so a flood cannot grow them. The figure is a sensor: the live monitor reads it once
a period and reports it as a logged ``monitor`` event (``calguard.lag``), and only that
logged figure moves the engine, so a replay decides as the live run did.
"""

from __future__ import annotations

from dataclasses import dataclass

from calguard.monitor.model import ChannelState

__all__ = ["InputLag", "LagSample"]

#: channels sampled per period at most (a ward of 5,000 channels fits; a flood of made-up
#: pumps cannot grow the list)
MAX_SAMPLES = 8192


@dataclass(frozen=True, slots=True)
class LagSample:
    """One period's figure: the median lag of the channels that reported in it, and the
    receive time of the latest reading (what the input frontier was measured against)."""

    lag_us: int
    latest_us: int
    channels: int


class InputLag:
    """Fed every live reading (``note``); ``take`` ends a period and gives its figure."""

    def __init__(self, tolerance_us: int) -> None:
        self._tolerance = self.tolerance_us = tolerance_us
        self._period = 0
        self._samples: dict[ChannelState, int] = {}  # each channel's freshest, this period
        self._latest = 0

    def note(self, ch: ChannelState, delay: int, received: int) -> None:
        """A reading of ``ch`` taken at ``received``, ``delay`` after its pump's own time."""
        base = ch.lag_base
        if base is None or delay < base:
            tol = self.tolerance_us
            base = ch.lag_base = tol if delay > tol else max(delay, -tol)
        lag, samples = delay - base, self._samples
        if ch.lag_period != self._period:  # the channel's first reading of this period
            ch.lag_period = self._period
            if len(samples) < MAX_SAMPLES:
                samples[ch] = lag
        elif lag < samples.get(ch, lag):
            samples[ch] = lag  # a fresher reading: the channel is less behind than it was
        if received > self._latest:
            self._latest = received

    def scale(self, speed: float) -> None:
        """A training clock runs ``speed`` times real time: the machine's own delays are
        that many times longer in ward time, so the trusted clock offset is too."""
        self.tolerance_us = round(self._tolerance * speed)

    def take(self) -> LagSample | None:
        """The figure of the period now ending (None: no live reading came in it)."""
        taken, self._samples = self._samples, {}
        self._period += 1
        if not taken:
            return None
        samples = sorted(taken.values())
        n = len(samples)  # the lower median: half the channels, or one of two, cannot raise it
        return LagSample(max(0, samples[(n - 1) // 2]), self._latest, n)
