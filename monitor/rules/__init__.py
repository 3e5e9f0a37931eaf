"""The rule table of the clinical reference, evaluated on the ward model.

Rules are evaluated per subject when something that affects the subject changes: a pump
channel (rates, limits, context), a line (checks, co-infusion, timers) or a bed (the daily
dose, ceftriaxone). Rules that depend on time alone (a check becoming overdue, a pump
falling silent, the dose window moving) schedule a timer at the exact moment their outcome
would change; the engine fires it at that moment and the rule is evaluated again.

"Calcium channel" = a channel whose drug is calcium (a calcium product, or an unknown
label that mentions calcium: never assumed safe) and that is delivering (status infusing,
rate above zero). Mass-based limits are written for calcium gluconate; another salt is
compared by its gluconate equivalent (the gluconate carrying the same elemental calcium).

Modules: ``channel``, ``lines`` and ``patient`` hold the rules by subject, ``messages``
every text a nurse reads, ``base`` the limits and the alert and timer plumbing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from calguard.monitor.library import Library
from calguard.monitor.model import Bed, ChannelState, LineState, Ward
from calguard.monitor.rules.base import RuleContext
from calguard.monitor.rules.channel import ChannelRules
from calguard.monitor.rules.inputs import InputRules
from calguard.monitor.rules.lines import LineRules
from calguard.monitor.rules.patient import PatientRules
from calguard.monitor.rules.system import SystemRules
from calguard.monitor.timers import TimerQueue
from calguard.monitor.transitions import AlertBook

__all__ = ["Rules"]


class Rules:
    """What the engine calls: evaluate a subject, fire a timer, note a bad reading."""

    def __init__(self, library: Library, ward: Ward, book: AlertBook, timers: TimerQueue) -> None:
        self.ctx = ctx = RuleContext(library, ward, book, timers)
        self.channels = ChannelRules(ctx)
        self.lines = LineRules(ctx, self.channels)
        self.patients = PatientRules(ctx)
        self.inputs = InputRules(ctx)
        # the monitor's own conditions (log-unavailable, monitor-lagging)
        self.system = SystemRules(ctx, self._lag_shrunk)
        self.stale_timeout = ctx.stale_timeout
        self.min_grade = ctx.min_grade
        # timer keys are (rule id, subject id): which evaluation to run when one fires
        channel, line, bed = self._channel_timer, self._line_timer, self._bed_timer
        self._timers: dict[str, Callable[[Hashable, int], None]] = {
            "telemetry-stale": channel(self.channels.stale),
            "pressure-trend": channel(self.channels.pressure),
            "site-check-overdue": line(self.lines.site_overdue),
            "cannula-dwell": line(self.lines.dwell),
            "dose-daily": bed(self.patients.dose),
            "ceftriaxone-neonate": bed(self.patients.ceftriaxone),
            "product-unknown": bed(self.patients.medication_unknown),
            "input-unknown": lambda key, now: self.inputs.quiet(key[1], now),  # type: ignore[index]
        }

    def use(self, library: Library) -> None:
        """The settings of another library from now on; the caller evaluates again."""
        self.ctx.use(library)
        self.stale_timeout = self.ctx.stale_timeout
        self.min_grade = self.ctx.min_grade

    def _lag_shrunk(self, now: int) -> None:
        """The monitor's lag shrank: every watched channel's silence is judged again now,
        against the shorter hold (a stale alarm already raised stays: a reading ends it)."""
        active = self.ctx.book.active
        for ch in self.ctx.ward.channels.values():
            if ch.stale_watch and ch.k_stale not in active:
                self.channels.stale(ch, now)

    def channel(self, ch: ChannelState, now: int) -> None:
        self.channels.evaluate(ch, now)

    def line(self, line: LineState, now: int) -> None:
        self.lines.evaluate(line, now)

    def bed(self, bed: Bed, now: int) -> None:
        self.patients.evaluate(bed, now)

    def line_removed(self, line: LineState, now: int) -> None:
        self.lines.removed(line, now)

    def stale(self, ch: ChannelState, now: int) -> None:
        self.channels.stale(ch, now)

    def track_pressure(self, ch: ChannelState, pressure: float | None, t: int) -> bool:
        return self.channels.track_pressure(ch, pressure, t)

    def pressure(self, ch: ChannelState, now: int) -> None:
        self.channels.pressure(ch, now)

    def invalid(self, pump: str, channel: str, now: int, reason: str) -> None:
        self.channels.invalid(pump, channel, now, reason)

    def timer(self, key: Hashable, now: int) -> None:
        assert isinstance(key, tuple)
        self._timers[key[0]](key, now)

    def _channel_timer(
        self, fn: Callable[[ChannelState, int], None]
    ) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            ch = self.ctx.ward.channels.get(key[1])  # type: ignore[index]  # keys are tuples
            if ch is not None:
                fn(ch, now)

        return fire

    def _line_timer(self, fn: Callable[[LineState, int], None]) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            line = self.ctx.ward.lines.get(key[1])  # type: ignore[index]  # keys are tuples
            if line is not None:
                fn(line, now)

        return fire

    def _bed_timer(self, fn: Callable[[Bed, int], None]) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            bed = self.ctx.ward.beds.get(key[1])  # type: ignore[index]  # keys are tuples
            if bed is not None:
                fn(bed, now)

        return fire
