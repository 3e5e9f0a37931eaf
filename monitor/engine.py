"""The engine: events and injected time in, alert transitions out. No I/O, no wall clock.

Time only moves forward. Handling an event first moves the engine's clock to the event's
time, firing every timer that expired before it at its exact expiry (so a site check due
at 09:03:00 is raised at 09:03:00 even if the next input arrives at 09:10). Timers due at
the very instant of an event fire after the events of that instant (a check documented
at exactly 60 min is on time); ``settle()`` and ``clock`` events fire them. An event older
than the engine's clock still counts with its own timestamp where that matters (the time
a nurse documented a check) but its transitions are stamped with the engine's clock, so
the output is always in time order.

Replay and live runs feed the same engine: replay with the events' own times, live with
a real clock through ``tick()``; the same inputs in the same order give the same alerts.

A pharmacist's newly published library replaces the running one between two inputs
(``swap``): what the ward is (infants, lines, pumps, doses, timers, active alerts and their
ids) stays; every subject is evaluated again under the new settings at that instant, so
an alert whose condition still holds stays active under its id, one that no longer holds
clears, one that now holds is raised, and every line from then on carries the new
library's version. The live monitor logs the swap as an input, so a replay makes it too.

Time is not taken from outside on trust. A live monitor hands every input over with its
own receive time (``received``): that, never a device's clock, moves the engine's time.
A reading keeps its pump's time for ordering that pump's readings, and a pump whose time
is off the monitor's by more than the tolerance raises ``clock-skew``; documentation
keeps its charted time if it lies within the back-dating window before the monitor's
clock and no further ahead than the tolerance, and is refused otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from calguard.monitor.errors import EventError
from calguard.monitor.events import (
    DOCUMENTATION,
    AlarmAction,
    Clock,
    Connect,
    Disconnect,
    Event,
    Line,
    LineRemoved,
    Medication,
    MonitorStatus,
    PatencyCheck,
    Patient,
    PumpStatus,
    Reading,
    SiteCheck,
)
from calguard.monitor.lag import InputLag
from calguard.monitor.library import Library
from calguard.monitor.model import Bed, ChannelState, LineState, Ward
from calguard.monitor.rules import Rules
from calguard.monitor.timers import TimerQueue
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import ActiveAlert, AlertBook, AlertTransition

__all__ = ["Engine"]


class Engine:
    """Feed it events (``handle``) and time (``tick``); it returns alert transitions."""

    def __init__(self, library: Library, *, first_alert_id: int = 1) -> None:
        self.library = library
        self.ward = Ward(library.rule("dose-daily").q("window").us)
        self.book = AlertBook(library.version, first_id=first_alert_id)
        self.timers = TimerQueue()
        self.rules = Rules(library, self.ward, self.book, self.timers)
        #: the live monitor's input lag, a sensor it reads and reports (``calguard.lag``);
        #: the rules see only the figure it logged (``monitor-lagging``)
        self.input_lag = InputLag(self.rules.ctx.skew_tolerance.us)
        self.now: int | None = None
        #: What became of the last handled event: accepted, duplicate or out_of_order ...
        self.disposition = "accepted"
        #: ... and, when it changed nothing or needs a word, why (for the log).
        self.note: str | None = None
        self._received: int | None = None  # the live receive time of the event in hand
        self._tolerance = self.rules.ctx.skew_tolerance.us  # scaled for a training clock
        # every pump's channels, in the order they were made: a pump's presence message
        # concerns its own channels and must not cost a pass over the ward's
        self._pump_channels: dict[str, list[ChannelState]] = {}
        self._handlers: dict[type[Any], Callable[[Any, int], None]] = {
            Reading: self._reading,
            Patient: self._patient,
            Line: self._line,
            LineRemoved: self._line_removed,
            Connect: self._connect,
            Disconnect: self._disconnect,
            PatencyCheck: self._patency,
            SiteCheck: self._site_check,
            Medication: self._medication,
            PumpStatus: self._pump_status,
            MonitorStatus: self._monitor_status,
            Clock: self._clock,
            # time moves on (to before this instant); the alarm manager applies it. Not a
            # clock: the timers of the action's own instant wait for that instant's events
            AlarmAction: self._action,
        }

    # -- public API -----------------------------------------------------------------------

    @property
    def active(self) -> dict[Any, ActiveAlert]:
        return self.book.active

    def handle(
        self, event: Event, received: int | None = None, speed: float = 1.0
    ) -> list[AlertTransition]:
        """Apply one event; ``EventError`` if the event is valid JSON but unusable here.

        ``received``: the monitor's clock when a live input arrived; it, not the event's
        own ``t``, moves the engine's time (None: replay, the event's time is the time).
        ``speed``: a training clock's speed-up; the clock-skew tolerance is scaled by it."""
        self.note, self.disposition = None, "accepted"
        self._received = received
        self._tolerance = round(self.rules.ctx.skew_tolerance.us * speed)
        t = event.t
        if received is not None:
            event = self._at_receipt(event, received)
            t = received
        now = self.now
        if now is None or t > now:
            self._advance(t)
            now = self.now
        assert now is not None
        self._handlers[type(event)](event, now)
        return self.book.take()

    def _at_receipt(self, event: Event, received: int) -> Event:
        """A live input's own time, checked against the monitor's clock."""
        if type(event) is Reading:
            return event  # the pump's time: compared in _reading
        if type(event) is MonitorStatus:  # the monitor's own conditions are its own inputs
            raise EventError(
                "type", "monitor", "a condition only the monitor itself reports, not an input"
            )
        if type(event) not in DOCUMENTATION:
            return replace(event, t=received)  # type: ignore[type-var]  # all dataclasses
        ctx = self.rules.ctx
        ahead = event.t - received
        if ahead > self._tolerance:
            raise EventError(
                "t",
                format_ts(event.t),
                f"documentation cannot be dated ahead of the monitor's clock "
                f"({format_ts(received)}); this is {format_duration(ahead)} ahead",
            )
        if -ahead > ctx.backdate.us:
            raise EventError(
                "t",
                format_ts(event.t),
                f"documentation may be back-dated by at most {format_duration(ctx.backdate.us)}; "
                f"this is {format_duration(-ahead)} before the monitor's clock "
                f"({format_ts(received)}): chart it with a note instead",
            )
        return replace(event, t=received) if ahead > 0 else event  # type: ignore[type-var]

    def take(self) -> list[AlertTransition]:
        """Transitions not yet handed out: those of timers that fired while time moved to an
        event the engine then refused (``handle`` raised ``EventError``)."""
        return self.book.take()

    def advance(self, t: int) -> list[AlertTransition]:
        """Move time to ``t``, firing the timers due before it (those due at ``t`` wait for
        the inputs of that instant, as ever)."""
        self._advance(t)
        return self.book.take()

    def swap(self, library: Library, t: int) -> list[AlertTransition]:
        """Run on ``library`` from ``t`` on. Timers due before ``t`` fire first under the
        running library; then every channel, line and bed is evaluated again under the new
        one, and its timers (a site check, a silent pump, the dose window) are set again.
        ``EventError`` (and nothing changes) for a library that would need history this
        engine has dropped: a longer dose window (a restart's warm start reads it)."""
        window = library.rule("dose-daily").q("window").us
        if window > self.ward.dose_window_us:
            raise EventError(
                "version",
                library.version,
                f"its dose-daily window ({format_duration(window)}) is longer than the "
                f"running one ({format_duration(self.ward.dose_window_us)}), whose calcium "
                "is all this monitor holds: restart the monitor to take it (its warm start "
                "reads the longer window)",
            )
        self._advance(t)
        now = self.now
        assert now is not None  # _advance sets it
        self.library = library
        self.book.library = library.version
        self.rules.use(library)
        self.ward.dose_window_us = window
        for bed in self.ward.beds.values():
            bed.ledger.window_us = window
        channels = list(self.ward.channels.values())
        for ch in channels:
            self._rematch(ch)
        self._evaluate(now, channels, list(self.ward.lines.values()), set(self.ward.beds))
        for ch in channels:
            self.rules.stale(ch, now)
            if ch.elevated_since is not None or ch.k_pressure in self.book.active:
                self.rules.pressure(ch, now)
        return self.book.take()

    def _rematch(self, ch: ChannelState) -> None:
        """A channel's drug as the running library reads its label (products, aliases and
        their concentrations may have changed)."""
        if ch.label is not None:
            ch.match = self.library.match(ch.label)
        match, conc = ch.match, ch.reading_concentration
        if conc is None and match is not None and match.product is not None:
            product_conc = match.product.concentration
            conc = product_conc.value if product_conc is not None else None
        ch.concentration_mg_ml = conc
        was = ch.calcium
        ch.calcium = match is not None and match.is_calcium
        if ch.calcium != was:  # as a reading of another drug would: watched if calcium runs
            ch.stale_watch = ch.calcium_delivering
        ch.signature = (match, ch.rate_ml_min, conc, ch.status, ch.mode, ch.alarm)

    def tick(self, t: int) -> list[AlertTransition]:
        """Move time to ``t`` (live clock) and fire every timer due up to and including it."""
        self._advance(t)
        self._fire()
        return self.book.take()

    def settle(self) -> list[AlertTransition]:
        """Fire the timers due at the current instant (end of a replay)."""
        self._fire()
        return self.book.take()

    def reject(
        self, pump: str, channel: str, reason: str, t: int | None = None
    ) -> list[AlertTransition]:
        """A reading from this pump channel could not be understood: telemetry-invalid."""
        if t is not None:
            self._advance(t)
        if self.now is None:
            raise RuntimeError("the engine has no time yet; advance it before rejecting input")
        self._channel(pump, channel)
        self.rules.invalid(pump, channel, self.now, reason)
        return self.book.take()

    def stray(self, source: str, reason: str, t: int | None = None) -> list[AlertTransition]:
        """An unusable input that names no known pump channel: counted for its source."""
        if t is not None:
            self._advance(t)
        if self.now is None:
            raise RuntimeError("the engine has no time yet; advance it before counting input")
        self.rules.inputs.stray(source, reason, self.now)
        return self.book.take()

    # -- time -----------------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        if self.now is None:
            self.now = t
        elif t > self.now:
            self._fire(t, inclusive=False)
            self.now = t

    def _fire(self, until: int | None = None, *, inclusive: bool = True) -> None:
        """Fire timers due before ``until`` (default: now), each at its own expiry."""
        assert self.now is not None
        for due, key in self.timers.pop_due(
            self.now if until is None else until, inclusive=inclusive
        ):
            self.now = max(self.now, due)
            self.rules.timer(key, self.now)

    # -- evaluation fan-out ---------------------------------------------------------------

    def _evaluate(
        self, now: int, channels: list[ChannelState], lines: list[LineState], beds: set[str]
    ) -> None:
        """Re-evaluate subjects after a change: channels, then their lines, then beds."""
        for ch in channels:
            old_bed = ch.dose_bed
            self.rules.channel(ch, now)
            if old_bed is not None:
                beds.add(old_bed)
            if ch.dose_bed is not None:
                beds.add(ch.dose_bed)
            if ch.line is not None and ch.line in self.ward.lines:
                line = self.ward.lines[ch.line]
                if line not in lines:
                    lines.append(line)
        for line in lines:
            self.rules.line(line, now)
            if line.bed is not None:
                beds.add(line.bed)
        for name in sorted(beds):
            bed = self.ward.beds.get(name)
            if bed is not None:
                self.rules.bed(bed, now)

    def _evaluate_bed(self, bed: Bed, now: int) -> None:
        lines = [line for line in self.ward.lines_of(bed)]
        channels = [c for line in lines for c in self.ward.channels_on(line)]
        self._evaluate(now, channels, lines, {bed.bed})

    def _evaluate_line(self, line: LineState, now: int, extra_beds: set[str] | None = None) -> None:
        self._evaluate(now, self.ward.channels_on(line), [line], set(extra_beds or ()))

    # -- handlers -------------------------------------------------------------------------

    def _channel(self, pump: str, channel: str) -> ChannelState:
        """The ward's channel, made on first mention and filed under its pump."""
        ch = self.ward.channels.get((pump, channel))
        if ch is None:
            ch = self.ward.channel(pump, channel)
            self._pump_channels.setdefault(pump, []).append(ch)
        return ch

    def _channels_of(self, pump: str) -> list[ChannelState]:
        """The pump's channels. The ward counts them too: should one ever be made other than
        through ``_channel``, the list is rebuilt rather than a channel missed."""
        channels = self._pump_channels.get(pump, [])
        if len(channels) != self.ward.pumps.get(pump, 0):
            channels = [ch for key, ch in self.ward.channels.items() if key[0] == pump]
            self._pump_channels[pump] = channels
        return channels

    def _reading(self, r: Reading, now: int) -> None:
        ch = self.ward.channels.get((r.pump, r.channel)) or self._channel(r.pump, r.channel)
        device_t, received = r.t, self._received
        seq = r.seq
        if seq is not None and ch.seen(seq, device_t):  # this very reading again
            self.disposition = "duplicate"
            self.note = f"duplicate: seq {seq} of {ch.name} was already received"
            return
        at = device_t  # the reading's time for the rules: the monitor's when it is live
        off = False  # its own time is off the monitor's by more than the tolerance
        if received is not None:
            at = now
            self.input_lag.note(ch, received - device_t, received)
            off = self._clock_check(ch, device_t - received, received, now)
        if seq is not None and ch.seq_known(seq):
            ch.forget_seqs()  # the pump restarted its counter: a new reading, not a duplicate
        last = ch.latest_device_t
        # the pump's own times order its readings, unless its clock cannot be trusted or
        # its counter says this one is newer (a pump clock stepped back a little)
        if (
            last is not None
            and device_t < last
            and not (off or ch.device_skewed)
            and (seq is None or seq <= ch.max_seq)
        ):
            self.disposition = "out_of_order"
            self.note = (
                f"out of order: older than the latest reading of {ch.name} "
                f"({format_ts(last)}); logged, the channel's state is unchanged"
            )
            return
        if seq is not None:
            ch.remember_seq(seq, device_t)
        ch.latest_t, ch.latest_device_t, ch.device_skewed = at, device_t, off
        ch.offline = False
        active = self.book.active
        if ch.k_invalid in active:
            self.book.clear(ch.k_invalid, now)
        if r.drug is not None and r.drug != ch.label:
            ch.label = r.drug
            ch.match = self.library.match(r.drug)
        match = ch.match
        conc = r.concentration_mg_ml
        if (
            conc is None
            and match is not None
            and match.product is not None
            and match.product.concentration
        ):
            conc = match.product.concentration.value
        ch.rate_text = r.rate_text
        ch.reading_concentration = r.concentration_mg_ml
        signature = (match, r.rate_ml_min, conc, r.status, r.mode, r.alarm)
        if signature != ch.signature:
            ch.signature = signature
            ch.rate_ml_min, ch.concentration_mg_ml = r.rate_ml_min, conc
            ch.status, ch.mode, ch.alarm = r.status, r.mode, r.alarm
            ch.calcium = match is not None and match.is_calcium
            ch.delivering = r.delivering
            ch.stale_watch = ch.calcium_delivering
            self._evaluate(now, [ch], [], set())
            self.rules.stale(ch, now)
        elif ch.stale_watch and ch.k_stale not in active:
            self.timers.schedule(ch.k_stale, at + self.rules.stale_timeout.us)  # the steady state
        else:
            self.rules.stale(ch, now)
        if (r.pressure_mmhg is not None or ch.elevated_since is not None) and (
            self.rules.track_pressure(ch, r.pressure_mmhg, at) or ch.k_pressure in active
        ):
            self.rules.pressure(ch, now)

    def _clock_check(self, ch: ChannelState, skew: int, received: int, now: int) -> bool:
        """A pump's time against the monitor's; True if it is off by over the tolerance.

        Ahead is a clock fault at once: no delay on the way makes a reading early. Behind
        is one only once it has lasted the stale timeout: a broker or a queue that held
        readings back delivers them late, and late is not a wrong clock. A backlog drains
        and the readings after it are on time again."""
        tolerance = self._tolerance
        # late by the monitor's own reported lag (monitor-lagging) is the queue, not the pump
        ahead, behind = skew > tolerance, skew + self.rules.ctx.input_lag_us < -tolerance
        if not behind:
            ch.behind_since = None
        elif ch.behind_since is None:
            ch.behind_since = received
        long_behind = behind and received - ch.behind_since >= self.rules.stale_timeout.us  # type: ignore[operator]
        if ahead or long_behind or ("clock-skew", ch.pump) in self.book.active:
            self.rules.channels.clock_skew(ch, skew if ahead or long_behind else 0, tolerance, now)
        return ahead or behind

    def _patient(self, ev: Patient, now: int) -> None:
        bed = self.ward.bed(ev.bed)
        if ev.patient is not None and bed.patient is not None and ev.patient != bed.patient:
            # A different infant in this bed: nothing of the previous one carries over.
            bed.weight_kg = bed.birth = None
            bed.ledger = type(bed.ledger)(bed.ledger.window_us)
            bed.ceftriaxone_last = bed.unknown_medication = None
        if ev.patient is not None:
            bed.patient = ev.patient
        if ev.weight_kg is not None:
            bed.weight_kg = ev.weight_kg
        if ev.birth is not None:
            bed.birth = ev.birth
        self._evaluate_bed(bed, now)

    def _line(self, ev: Line, now: int) -> None:
        line = self.ward.line(ev.line)
        beds = set()
        if line.bed is not None and line.bed != ev.bed:
            self.ward.bed(line.bed).lines.discard(line.line)
            beds.add(line.bed)
        newly = not line.documented
        line.bed, line.kind, line.site, line.tip_confirmed = (
            ev.bed,
            ev.kind,
            ev.site,
            ev.tip_confirmed,
        )
        if newly or ev.inserted is not None:
            line.inserted = ev.inserted if ev.inserted is not None else ev.t
        self.ward.bed(ev.bed).lines.add(line.line)
        self._evaluate_line(line, now, beds)

    def _line_removed(self, ev: LineRemoved, now: int) -> None:
        line = self.ward.lines.pop(ev.line, None)
        if line is None:
            self.note = f"line {ev.line} was not known; nothing to remove"
            return
        self.rules.line_removed(line, now)
        if line.bed is not None:
            self.ward.bed(line.bed).lines.discard(line.line)
        channels = []
        for key in sorted(line.channels):
            ch = self.ward.channels[key]
            ch.line = None
            channels.append(ch)
        self._evaluate(now, channels, [], {line.bed} if line.bed else set())

    def _connect(self, ev: Connect, now: int) -> None:
        ch = self._channel(ev.pump, ev.channel)
        if ch.line == ev.line:
            self.note = f"{ch.name} is already connected to line {ev.line}"
            return
        lines = []
        if ch.line is not None and ch.line in self.ward.lines:
            old = self.ward.lines[ch.line]
            old.channels.discard(ch.key)
            lines.append(old)
        line = self.ward.line(ev.line)
        line.channels.add(ch.key)
        ch.line = ev.line
        if not line.documented:
            self.note = (
                f"line {ev.line} is not documented yet (no line event): its checks wait for it"
            )
        self._evaluate(now, [ch], lines, set())

    def _disconnect(self, ev: Disconnect, now: int) -> None:
        ch = self._channel(ev.pump, ev.channel)
        lines = []
        if ch.line is not None and ch.line in self.ward.lines:
            old = self.ward.lines[ch.line]
            old.channels.discard(ch.key)
            lines.append(old)
        ch.line = None
        ch.stale_watch = False  # a documented disconnect: its silence is no longer a concern
        self._evaluate(now, [ch], lines, set())
        self.rules.stale(ch, now)

    def _patency(self, ev: PatencyCheck, now: int) -> None:
        line = self.ward.line(ev.line)
        if line.last_patency_t is not None and ev.t < line.last_patency_t:
            self.note = f"an earlier patency check of line {ev.line} than the one on record"
            if ev.passed and (line.last_pass_t is None or ev.t > line.last_pass_t):
                line.last_pass_t = ev.t
        else:
            line.last_patency_t, line.last_patency_result = ev.t, ev.result
            if ev.passed:
                line.last_pass_t = ev.t
        self._evaluate_line(line, now)

    def _site_check(self, ev: SiteCheck, now: int) -> None:
        line = self.ward.line(ev.line)
        if line.last_site_check_t is not None and ev.t < line.last_site_check_t:
            self.note = (
                f"an earlier site check of line {ev.line} than the one on record; kept in the log"
            )
            return
        abnormal = ev.grade >= self.rules.min_grade or bool(ev.findings)
        line.last_site_check_t, line.last_site_grade = ev.t, ev.grade
        line.last_site_findings, line.last_site_abnormal = ev.findings, abnormal
        if abnormal and line.calcium_on:
            line.abnormal_while_calcium = True
        self._evaluate_line(line, now)

    def _medication(self, ev: Medication, now: int) -> None:
        match = self.library.match(ev.drug)
        product = match.product
        if match.is_calcium and product is not None and ev.dose is None:
            raise EventError(
                "dose",
                None,
                'a calcium medication needs its dose (e.g. "100 mg") so the daily total '
                "can count it",
            )
        bed = self.ward.bed(ev.bed)
        if product is not None and product.drug_class == "ceftriaxone":
            bed.ceftriaxone_last = max(bed.ceftriaxone_last or ev.t, ev.t)
        elif match.is_calcium and product is None:
            bed.unknown_medication = (now, ev.drug)
        elif product is not None and product.is_calcium and ev.dose is not None:
            bed.ledger.add(now, self._elemental_mmol(ev, product))
        self._evaluate_bed(bed, now)

    @staticmethod
    def _elemental_mmol(ev: Medication, product: Any) -> float:
        assert ev.dose is not None
        if ev.dose_kind == "amount":  # mmol: already elemental calcium
            return ev.dose
        mg_salt = ev.dose if ev.dose_kind == "mass" else ev.dose * product.concentration.value
        return float(mg_salt * product.elemental_mmol_per_mg())

    def _pump_status(self, ev: PumpStatus, now: int) -> None:
        channels = self._channels_of(ev.pump)
        if not channels:
            state = "online" if ev.online else "offline"
            self.note = f"pump {ev.pump} is {state}; no channel of it is known"
        for ch in channels:
            ch.offline = not ev.online
            self.rules.stale(ch, now)

    def _monitor_status(self, ev: MonitorStatus, now: int) -> None:
        self.rules.system.monitor(ev, now)

    def _action(self, ev: AlarmAction, now: int) -> None:
        """Nothing for the engine: the alarm layer applies a person's action."""

    def _clock(self, ev: Clock, now: int) -> None:
        self._fire()
