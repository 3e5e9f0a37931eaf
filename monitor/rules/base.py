"""What every rule needs: the library's limits in canonical units, and the plumbing that
turns a rule's outcome into alert transitions and timers."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from calguard.monitor.library import ConfiguredQuantity, Library
from calguard.monitor.model import ChannelState, LineState, Ward
from calguard.monitor.timers import TimerQueue
from calguard.monitor.transitions import AlertBook, Description

__all__ = ["DAY_US", "DOSE_EPSILON", "RuleContext", "above"]

DAY_US = 86_400_000_000
# A value exactly at a limit must not alarm because unit conversion rounded it up by one
# ulp (120 ml/h is 2 ml/min, not 2.0000000000000004): limits are "above", with this slack.
_EPSILON = 1e-9
# The daily dose is an integral whose crossing time is computed: a relative slack of 1e-9
# would delay it by microseconds over hours, so it gets a slack far below a microsecond.
DOSE_EPSILON = 1e-12


def above(value: float, limit: float) -> bool:
    return value > limit * (1 + _EPSILON)


class RuleContext:
    """The library's settings, read once, and the ward, alert book and timers they act on."""

    def __init__(self, library: Library, ward: Ward, book: AlertBook, timers: TimerQueue) -> None:
        self.ward, self.book, self.timers = ward, book, timers
        #: how far behind its inputs the live monitor last said it runs, while it said it
        #: lags (its logged ``monitor-lagging`` events; 0 otherwise): survives a library swap
        self.input_lag_us = 0
        self.use(library)

    def use(self, library: Library) -> None:
        """Read the settings of ``library``: at the start, and when a published library
        replaces the one running (``Engine.swap``)."""
        self.enabled = {rid: cfg.enabled for rid, cfg in library.rules.items()}
        self.priority = {rid: cfg.priority or "medium" for rid, cfg in library.rules.items()}
        r = library.rule
        self.rate_volume = r("rate-volume").q("limit")
        self.rate_mass = r("rate-mass").q("limit")
        rw = r("rate-weight")
        self.cont_medium, self.cont_high = rw.q("continuous_medium"), rw.q("continuous_high")
        self.bolus_medium, self.bolus_high = rw.q("bolus_medium"), rw.q("bolus_high")
        self.dose_limit, self.dose_window = r("dose-daily").q("limit"), r("dose-daily").q("window")
        cp = r("concentration-peripheral")
        self.conc_continuous, self.conc_any = cp.q("continuous_limit"), cp.q("any_mode_limit")
        co = r("incompatible-coinfusion").class_lists
        self.incompatible = {c: "high" for c in co.get("high", ())}
        self.incompatible |= {c: "medium" for c in co.get("medium", ())}
        cx = r("ceftriaxone-neonate")
        # "<= 28 days" counts completed days: the whole 28th day is included.
        self.neonate_until = cx.q("max_postnatal_age").us + DAY_US
        self.cef_lookback = cx.q("lookback")
        pc = r("patency-check-missing")
        self.patency_window, self.pause_grace = pc.q("window"), pc.q("pause_grace")
        so = r("site-check-overdue")
        self.site_medium, self.site_high = so.q("medium_after"), so.q("high_after")
        self.min_grade = r("site-abnormal").ints["min_grade"]
        self.dwell = r("cannula-dwell").q("interval")
        self.stale_timeout = r("telemetry-stale").q("timeout")
        cs = r("clock-skew")
        self.skew_tolerance, self.backdate = cs.q("tolerance"), cs.q("backdate")
        self.stray_quiet = r("input-unknown").q("quiet")
        pt = r("pressure-trend")
        self.pressure_rise, self.pressure_duration = pt.q("rise"), pt.q("duration")
        ml = r("monitor-lagging")
        self.lag_threshold, self.lag_max_hold = ml.q("threshold"), ml.q("max_hold")

    @property
    def stale_hold_us(self) -> int:
        """How much longer a channel's silence may last before it is stale: the monitor's
        own lag (readings still queued are not a pump's silence), at most ``max_hold``."""
        lag = self.input_lag_us
        return min(lag, self.lag_max_hold.us) if lag else 0

    def put(
        self,
        rule: str,
        key: Hashable,
        on: bool,
        t: int,
        describe: Callable[[], Description],
        priority: str | None = None,
    ) -> None:
        """The outcome of ``rule`` for one subject: raise, escalate or clear its alert."""
        if on and self.enabled[rule]:
            self.book.set(key, rule, t, priority or self.priority[rule], describe)
        else:
            self.book.clear(key, t)

    def schedule(self, key: Hashable, due: int | None, now: int) -> None:
        """Re-evaluate this rule at ``due`` (None: nothing will change by itself)."""
        if due is None:
            self.timers.cancel(key)
        else:
            self.timers.schedule(key, max(due, now))

    def off(self, key: Hashable, now: int) -> None:
        """Clear the alert and its timer."""
        self.book.clear(key, now)
        self.timers.cancel(key)

    def channel_description(
        self, ch: ChannelState, message: str, value: str | None = None, limit: str | None = None
    ) -> Description:
        line = self.ward.lines.get(ch.line) if ch.line else None
        bed = line.bed if line else None
        return Description(message, bed, ch.line, ch.pump, ch.channel, value, limit)

    @staticmethod
    def line_description(
        line: LineState, message: str, value: str | None = None, limit: str | None = None
    ) -> Description:
        return Description(message, line.bed, line.line, None, None, value, limit)


def shown(value: float, q: ConfiguredQuantity) -> str:
    """A canonical value in the unit the pharmacist wrote the limit in."""
    return q.show(value)
