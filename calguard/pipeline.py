"""From raw input to the engine: decode, validate, apply; every input accounted for.

The pipeline is the one place where raw inputs (a JSON line from a file, an MQTT payload,
a driver's event dict) become engine calls. An input that cannot be used is never
dropped silently: it goes to the journal (the durable log) as a rejected record with its
reason, is reported on the ``calguard.input`` logger, and - when it names a pump -
raises ``telemetry-invalid`` for that pump channel. Records are only built when there is
a journal to keep them.

A switch to a newly published drug library is an input too (``switch``): the live
monitor's own, logged, and made again from its logged line by a replay
(``calguard.library_watch``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from calguard.alerts.alarms import AlarmManager
from calguard.alerts.library_store import SWITCH
from calguard.library_watch import switched_library
from calguard.monitor.engine import Engine
from calguard.monitor.errors import EventError, QuantityError
from calguard.monitor.events import (
    MAX_LINE_BYTES,
    AlarmAction,
    Event,
    clock_speed,
    decode_json,
    named_pump,
    parse_event,
    received_time,
)
from calguard.monitor.events import (
    Clock as ClockEvent,
)
from calguard.monitor.library import Library
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import parse_ts
from calguard.monitor.transitions import AlertTransition

__all__ = ["WIRE", "InputJournal", "Pipeline"]

log = logging.getLogger("calguard.input")

_CONTEXT_FIELDS = ("pump", "channel", "bed", "line")
#: event_type of an input that never became an event (a frame a driver could not use)
WIRE = "wire"
#: channels a pump may have before unusable inputs naming yet another one of it count as
#: strays (the widest multi-channel pumps have 4 channels, each with a secondary)
_CHANNELS_PER_PUMP = 8
#: rejected readings kept until the first valid time (bounded: a flood cannot grow it)
_MAX_WAITING = 1000


class InputJournal(Protocol):
    def add_input(self, record: InputRecord) -> None: ...


class Pipeline:
    """Feeds raw inputs to an engine; counts what happened to them."""

    def __init__(
        self, engine: Engine, journal: InputJournal | None = None, *, alarms: bool = True
    ) -> None:
        self.engine = engine
        self.journal = journal
        #: the alarm layer (acknowledge, pause, escalation ...); None: the engine's lines only
        library = engine.library
        self.alarms = AlarmManager(library.alarms, library.version) if alarms else None
        self.counts: dict[str, int] = {
            "accepted": 0,
            "rejected": 0,
            "duplicate": 0,
            "out_of_order": 0,
        }
        #: the verdict on the latest input: None if it was used, else why it was refused
        #: (a command's answer is this, for that very command)
        self.refusal: str | None = None
        # Rejections that arrive before any valid time is known wait for the first one.
        self._waiting: list[tuple[tuple[str, str], str, str]] = []

    def feed_line(
        self, raw: bytes | str, *, source: str, line_no: int | None = None
    ) -> list[AlertTransition]:
        try:
            obj = decode_json(raw)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, None)
        return self.feed_object(obj, raw=raw, source=source, line_no=line_no)

    def feed_object(
        self,
        obj: object,
        *,
        raw: bytes | str,
        source: str,
        line_no: int | None = None,
        received_us: int | None = None,
    ) -> list[AlertTransition]:
        """``received_us``: the receive time the live monitor just stamped into ``obj`` (as
        ``received``), handed over as the number it is so that it is not parsed back."""
        self.refusal = None
        if isinstance(obj, dict) and obj.get("type") == WIRE and received_us is None:
            return self._replayed_wire(obj, raw, source, line_no)
        if isinstance(obj, dict) and obj.get("type") == SWITCH and received_us is None:
            return self._replayed_switch(obj, raw, source, line_no)
        try:
            received = received_time(obj) if received_us is None else received_us
            speed = clock_speed(obj) if received is not None else 1.0
            event = parse_event(obj)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, obj)
        return self.feed_event(
            event, obj, raw=raw, source=source, line_no=line_no, received=received, speed=speed
        )

    def feed_event(
        self,
        event: Event,
        obj: object,
        *,
        raw: bytes | str,
        source: str,
        line_no: int | None = None,
        received: int | None = None,
        speed: float = 1.0,
    ) -> list[AlertTransition]:
        """``received``: a live input's receive time on the monitor's clock (see
        ``Engine.handle``); None in replay."""
        engine = self.engine
        try:
            transitions = engine.handle(event, received, speed)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, obj, received)
        if received is not None and type(event) is AlarmAction:
            event = replace(event, t=max(received, engine.now or received))
        if self._waiting:
            transitions = self._release_waiting() + transitions
        if type(event) is AlarmAction:
            return self._act(event, transitions, raw=raw, source=source, line_no=line_no)
        transitions = self._alarm(transitions, inclusive=type(event) is ClockEvent)
        note, status = engine.note, engine.disposition
        self.counts[status] += 1
        if note is not None:
            log.info("%s: %s", _where(source, line_no), note)
        self._journal(raw, source, status, event, line_no, note, received)
        return transitions

    def switch(
        self,
        library: Library,
        *,
        raw: bytes | str,
        source: str,
        t: int,
        line_no: int | None = None,
    ) -> list[AlertTransition]:
        """``library`` runs from ``t`` on: what fell due before ``t`` first, under the
        running library; then the engine evaluates every subject again under the new one
        and the alarm layer takes its policy. Logged as an input (``library``); refused,
        with the reason, when the engine cannot take it (``refusal`` says why)."""
        self.refusal = None
        early = self._alarm(self.engine.advance(t))
        try:
            transitions = self.engine.swap(library, t)
        except EventError as exc:
            return early + self._reject(raw, source, line_no, exc, {"type": SWITCH}, t)
        if self.alarms is not None:
            self.alarms.use(library.alarms, library.version)
        self.counts["accepted"] += 1
        log.info("%s: %s runs from now on", _where(source, line_no), library.version)
        if self.journal is not None:
            record = InputRecord.from_raw(
                raw, source, "accepted", t_us=t, line_no=line_no, event_type=SWITCH
            )
            self.journal.add_input(record)
        return early + self._alarm(transitions)

    def _replayed_switch(
        self, obj: dict[str, object], raw: bytes | str, source: str, line_no: int | None
    ) -> list[AlertTransition]:
        """A switch of library as the live monitor logged it: made again, at its time."""
        t = _valid_time(obj)
        try:
            if t is None:
                raise EventError("t", obj.get("t"), "the time of the switch is required")
            library = switched_library(obj)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, obj)
        return self.switch(library, raw=raw, source=source, t=t, line_no=line_no)

    def _alarm(
        self, transitions: list[AlertTransition], *, inclusive: bool = False
    ) -> list[AlertTransition]:
        """The engine's transitions through the alarm layer, with its own lines due before
        now. The alarm layer's deadlines *at* now fire only on a clock event or at the end
        of input: actions win ties, so an ``ack`` at the very instant of an escalation
        deadline stops it even when other inputs of that instant came before it."""
        now = self.engine.now
        if self.alarms is None or now is None:
            return transitions
        return self.alarms.process(transitions, now, inclusive=inclusive)

    def _act(
        self,
        action: AlarmAction,
        transitions: list[AlertTransition],
        *,
        raw: bytes | str,
        source: str,
        line_no: int | None,
    ) -> list[AlertTransition]:
        """A person's action on an alarm: applied at its time, before the deadlines of that
        instant; refused (and logged with the reason) when it cannot apply."""
        alarms = self.alarms
        out = transitions
        try:
            if alarms is None:
                raise EventError("type", action.type, "an event for the alarm layer, which is off")
            out = alarms.process(transitions, action.t - 1)  # the deadlines before it
            out += alarms.act(action)
        except EventError as exc:
            self.counts["rejected"] += 1
            reason = exc.describe() if line_no is None else exc.at_line(line_no).describe()
            log.warning("%s: rejected: %s", source, reason)
            self.refusal = exc.describe()
            self._journal(raw, source, "rejected", action, line_no, exc.describe())
        else:
            self.counts["accepted"] += 1
            log.info(
                "%s: %s %s by %s", _where(source, line_no), action.type, action.alert, action.by
            )
            self._journal(raw, source, "accepted", action, line_no, None)
        return out + (alarms.advance(action.t, inclusive=False) if alarms is not None else [])

    def _journal(
        self,
        raw: bytes | str,
        source: str,
        status: str,
        event: Event,
        line_no: int | None,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        if self.journal is not None:
            self.journal.add_input(
                InputRecord.from_raw(
                    raw,
                    source,
                    status,
                    # the monitor's time for a live input: a device's clock orders nothing
                    t_us=event.t if received is None else received,
                    line_no=line_no,
                    reason=reason,
                    event_type=event.type,
                    **{k: getattr(event, k, None) for k in _CONTEXT_FIELDS},
                )
            )

    def next_due(self) -> int | None:
        """The earliest deadline of the engine's timers and the alarm layer's."""
        dues = [self.engine.timers.next_due()]
        if self.alarms is not None:
            dues.append(self.alarms.next_due())
        known = [d for d in dues if d is not None]
        return min(known) if known else None

    def feed_oversize(
        self, head: bytes, size: int, sha256: str, *, source: str, line_no: int | None
    ) -> list[AlertTransition]:
        """A line over the size cap: refused unread; the log keeps its head, size and hash."""
        exc = EventError(None, None, f"the line is {size} bytes; at most {MAX_LINE_BYTES} are read")
        self.counts["rejected"] += 1
        log.warning(
            "%s: rejected: %s",
            source,
            exc.at_line(line_no).describe() if line_no else exc.describe(),
        )
        if self.journal is not None:
            shown = head.decode("utf-8", errors="backslashreplace")
            self.journal.add_input(
                InputRecord(
                    source, "rejected", shown, size, sha256, line_no=line_no, reason=exc.describe()
                )
            )
        return []

    def _replayed_wire(
        self, obj: dict[str, object], raw: bytes | str, source: str, line_no: int | None
    ) -> list[AlertTransition]:
        """A wire problem as ``calguard export`` writes it (the bytes a driver could not
        use, naming a pump): it does to the replay what it did live."""
        pump, channel, reason = obj.get("pump"), obj.get("channel", "A"), obj.get("reason")
        t = _valid_time(obj)
        if not (isinstance(pump, str) and isinstance(channel, str) and isinstance(reason, str)):
            return self._reject(raw, source, line_no, EventError(None, None, "a wire problem "
                                "needs pump, channel and reason"), obj)  # fmt: skip
        where = obj.get("source")
        return self.feed_problem(
            raw,
            reason,
            source=where if isinstance(where, str) else source,
            pump=(pump, channel),
            t=t,
        )

    def feed_problem(
        self,
        raw: bytes | str,
        reason: str,
        *,
        source: str,
        pump: tuple[str, str] | None = None,
        t: int | None = None,
    ) -> list[AlertTransition]:
        """Something arrived that a driver could not turn into an event (a corrupted frame,
        an unusable answer): logged with the reason; telemetry-invalid if a pump is known."""
        obj = {"pump": pump[0], "channel": pump[1], "type": WIRE} if pump else {"type": WIRE}
        return self._reject(raw, source, None, EventError(None, None, reason), obj, t)

    def refuse_command(
        self, raw: bytes | str, reason: str, *, action: str, source: str, t: int
    ) -> list[AlertTransition]:
        """A person's command refused before it became an action (its token, its form):
        logged as a refused action of that kind, so that the audit chain holds it too."""
        return self._reject(raw, source, None, EventError(None, None, reason), {"type": action}, t)

    def finish(self) -> list[AlertTransition]:
        """End of input: fire the timers due at the last instant."""
        if self.engine.now is None:
            if self._waiting:
                log.warning(
                    "%d rejected reading(s) arrived with no valid time at all; logged only",
                    len(self._waiting),
                )
            return []
        return self._alarm(self.engine.settle(), inclusive=True)

    def _reject(
        self,
        raw: bytes | str,
        source: str,
        line_no: int | None,
        exc: EventError,
        obj: object,
        at: int | None = None,
    ) -> list[AlertTransition]:
        """``at``: the time the refusal counts at (a live input's receive time); else the
        input's own valid time, if it has one."""
        self.counts["rejected"] += 1
        self.refusal = exc.describe()
        already = self.engine.take()  # timers that fired on the way to a refused event
        reason = exc.describe() if line_no is None else exc.at_line(line_no).describe()
        log.warning("%s: rejected: %s", source, reason)
        fields = obj if isinstance(obj, dict) else {}
        if at is None and isinstance(obj, dict) and "received" in obj:
            at = _valid_time(obj, "received")  # a live input whose event was unusable
        t = _valid_time(fields) if at is None else at
        if self.journal is not None:
            self.journal.add_input(
                InputRecord.from_raw(
                    raw,
                    source,
                    "rejected",
                    t_us=t,
                    line_no=line_no,
                    reason=exc.describe(),
                    event_type=_text(fields, "type", 32),
                    **{k: _text(fields, k, 64) for k in _CONTEXT_FIELDS},
                )
            )
        pump = named_pump(obj)
        if pump is None:
            return self._alarm(already)
        why = exc.describe()
        if t is None and self.engine.now is None:
            if len(self._waiting) < _MAX_WAITING:
                self._waiting.append((pump, why, source))
            return self._alarm(already)
        return self._alarm(already + self._invalid(pump, why, source, t))

    def _invalid(
        self, pump: tuple[str, str], why: str, source: str, t: int | None
    ) -> list[AlertTransition]:
        """telemetry-invalid for a channel the ward knows; else counted for its source."""
        known = self.engine.ward.pumps.get(pump[0], 0)  # channels of that pump
        if pump not in self.engine.ward.channels and not 0 < known < _CHANNELS_PER_PUMP:
            # names no pump the ward knows (or yet another channel of one that has many):
            # counted for its source, never a new channel
            stray = f"pump {pump[0]}: {why}"
            return self.engine.stray(source.split("#", 1)[0], stray, t)
        return self.engine.reject(pump[0], pump[1], why, t)

    def _release_waiting(self) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        for pump, why, source in self._waiting:
            out += self._invalid(pump, why, source, None)
        self._waiting.clear()
        return out


def _text(fields: dict[str, object], key: str, limit: int) -> str | None:
    """A context field of a rejected input, kept (shortened) if it is text."""
    value = fields.get(key)
    return value[:limit] if isinstance(value, str) else None


def _valid_time(fields: dict[str, object], key: str = "t") -> int | None:
    try:
        return parse_ts(fields.get(key))
    except QuantityError:
        return None


def _where(source: str, line_no: int | None) -> str:
    return f"{source}:{line_no}" if line_no is not None else source
