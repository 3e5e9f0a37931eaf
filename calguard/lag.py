"""Know when you are behind: the live monitor's input lag, reported as an input of its own.

Once a period the monitor reads the engine's receive-side sensor
(``calguard.monitor.lag.InputLag``: the median, over the channels that reported, of how
much later than usual their freshest readings were taken) and decides here whether it lags:

- raised when the figure has stayed at the library's ``monitor-lagging`` threshold for
  ``RAISE_AFTER_S`` (a burst of late readings that is gone the next second is no backlog),
  or at once when the monitor itself stood still that long (its lag task ran that late);
- cleared only once it has stayed below half the threshold for ``CLEAR_AFTER_S``
  (hysteresis: a backlog that drains in bursts does not make the alarm flap);
- while raised, a new figure is reported when it moved by a fifth or by 2 s, whichever is
  more (each report is a logged input; a smaller lag makes the engine judge every watched
  channel again).

On a training clock the threshold, the step and both spans are stretched by its speed
(never below 1): the machine's delays do not speed up with the ward, so at 60x the alarm
still means 15 s of real time behind (15 min of the ward's), as on a ward, and a loaded
machine's 0.3 s hiccup (18 s of ward time) is none.

A feed that stops altogether while the monitor lags is behind too: readings waiting in the
broker are not taken, so the sensor hears nothing. While every driver stays connected, the
figure then grows with the silence from the input's last known frontier (the latest
reading's receive time less its lag), less the gap the ward's readings usually leave
(pumps that report every 20 s are not a monitor 20 s behind: the longest recent gap,
forgotten slowly). Nothing on the receive side tells that apart from a ward whose inputs
stopped, so it is done only once a lag was measured from readings (a one-pump bay whose
pump falls silent is silent, not behind), and only until the input has been silent for the
stale timeout plus ``max_hold`` (by then every hold has run out): the silence is then the
inputs', not the monitor's, and the figure lapses. A disconnected driver is an outage,
never a lag: ``telemetry-stale`` speaks then.

Every decision is a ``monitor`` event (condition ``monitor-lagging``, its ``lag``),
logged like any input: the engine uses only that figure, so a replay of the log raises,
holds and clears exactly as the live run did.
"""

from __future__ import annotations

from calguard.monitor.lag import InputLag
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_duration, format_ts

__all__ = ["PERIOD_S", "LagReporter"]

#: how often the sensor is read (monitor time; a training clock scales it)
PERIOD_S = 1.0
#: how long the lag must stay at the threshold before the alarm is raised (real time, too)
RAISE_AFTER_S = 2.0
#: how long the lag must stay below half the threshold before the alarm clears (real time:
#: a training clock stretches it, as it does the threshold)
CLEAR_AFTER_S = 10.0
_RESOLUTION_US = 100_000  # figures are reported to a tenth of a second
_MIN_STEP_US = 2_000_000
_GAP_DECAY = 0.98  # the usual gap forgets a long one by 2 % a period
#: the most a monitor event states (the event format's bound): a pump clock years off is
#: no lag figure, and an event the engine refused would leave the alarm unsaid
_MAX_LAG_US = 86_400_000_000


class LagReporter:
    """The monitor-lagging state of one live monitor, and the events that report it."""

    def __init__(
        self, sensor: InputLag, *, active: bool = False, lag_us: int = 0, speed: float = 1.0
    ) -> None:
        """``speed``: a training clock's; the machine's delays are that many times longer
        in ward time, so what is measured against them - the threshold, how long the figure
        stays low before the alarm clears, the step worth a new report - is too (as the
        clock-skew tolerance is). Never shorter than the library says, in ward time or in
        real time: a slowed clock (below 1) does not make a lag of less than the threshold
        one, and at 60x a machine's 0.3 s hiccup (18 s of ward time) is not 15 s behind."""
        self.sensor = sensor
        self.speed = speed
        self._stretch = max(1.0, speed)
        sensor.scale(speed)
        self.active = active  # what the engine was last told
        self.reported_us = lag_us
        self._frontier: int | None = None  # how far the input had come (monitor time)
        self._low_since: int | None = None  # since when the figure is below the clear level
        self._high_since: int | None = None  # since when it is at the threshold (not raised)
        self._last_update: int | None = None  # when this ran last (monitor time)
        self._stood_still: int | None = None  # when it last found it had run that late
        self._last_sample: int | None = None  # when readings last came (monitor time)
        self._usual_gap = 0  # the gap the ward's readings usually leave, decaying

    def update(self, now: int, connected: bool, library: Library) -> dict[str, object] | None:
        """Read the sensor at ``now``; the ``monitor`` event to feed, or None."""
        figure, detail = self.figure(now, connected, library)
        rule = library.rule("monitor-lagging")
        threshold = round(rule.q("threshold").us * self._stretch)
        last, self._last_update = self._last_update, now
        if last is not None and now - last >= threshold:
            self._stood_still = now  # this very task ran that late: the monitor stood still
        if not self.active:
            return self._confirm(now, figure, threshold, detail)
        if figure * 2 < threshold:
            if self._low_since is None:
                self._low_since = now
            if now - self._low_since >= CLEAR_AFTER_S * 1e6 * self._stretch:
                self.active = False
                return self._event(now, 0, None)
        else:
            self._low_since = None
        step = max(round(_MIN_STEP_US * self._stretch), self.reported_us // 5)
        if abs(figure - self.reported_us) >= step:
            return self._event(now, figure, detail)
        return None

    def _confirm(
        self, now: int, figure: int, threshold: int, detail: str | None
    ) -> dict[str, object] | None:
        """Raise once the figure has stayed at the threshold for ``RAISE_AFTER_S``: a
        backlog that long takes longer than that to drain, a burst of late readings (a pump
        sending what it kept) does not. At once when the monitor itself stood still that
        long (this task ran late by the threshold: a frozen process, a machine that
        stalled): the backlog is then its own, however fast it drains. A period in which
        no reading came says nothing."""
        if figure < threshold:
            if self._last_sample == now:  # readings came, and they were not that late
                self._high_since = None
            return None
        if self._high_since is None:
            self._high_since = now
        window = RAISE_AFTER_S * 1e6 * self._stretch
        stood_still = self._stood_still is not None and now - self._stood_still <= window
        if now - self._high_since < window and not stood_still:
            return None
        self.active, self._low_since, self._high_since = True, None, None
        return self._event(now, figure, detail)

    def figure(self, now: int, connected: bool, library: Library) -> tuple[int, str | None]:
        """The lag at ``now`` and, when it is not measured from readings, why."""
        sample = self.sensor.take()
        self._usual_gap = int(self._usual_gap * _GAP_DECAY)
        if sample is not None:
            last, self._last_sample = self._last_sample, now
            if last is not None and self._frontier is not None and not self.active:
                self._usual_gap = max(self._usual_gap, now - last)
            self._frontier = sample.latest_us - sample.lag_us
            return sample.lag_us, None
        frontier = self._frontier
        if not self.active:
            return 0, None  # not behind, and no reading says otherwise: a quiet input
        if frontier is None or not connected:
            self._frontier = self._last_sample = None  # an outage: measured afresh after it
            return 0, None
        quiet = now - (self._last_sample or now)
        horizon = (
            library.rule("telemetry-stale").q("timeout").us
            + library.rule("monitor-lagging").q("max_hold").us
        )
        if quiet > horizon:
            self._frontier = None  # the inputs stopped: their silence is theirs now
            return 0, None
        figure = max(0, now - frontier - self._usual_gap)
        return figure, f"no input taken for {format_duration(quiet)}"

    def _event(self, now: int, lag_us: int, detail: str | None) -> dict[str, object]:
        lag_us = round(min(lag_us, _MAX_LAG_US) / _RESOLUTION_US) * _RESOLUTION_US
        self.reported_us = lag_us
        event: dict[str, object] = {
            "t": format_ts(now),
            "type": "monitor",
            "condition": "monitor-lagging",
            "active": self.active,
            "lag": f"{lag_us / 1e6:.1f} s",
        }
        if detail is not None and self.active:
            event["detail"] = detail
        return event
