"""From raw input to the engine: decode, validate, apply; every input accounted for.

The pipeline is the one place where raw inputs (a JSON line from a file, an MQTT payload,
a driver's event dict) become engine calls. An input that cannot be used is never
dropped silently: it is returned as a rejected ``InputRecord`` with its reason (for the
log), reported on the ``calguard`` logger, and - when it names a pump - raises
``telemetry-invalid`` for that pump channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from alerts.log import InputRecord
from monitor.engine import Engine
from monitor.errors import EventError, QuantityError
from monitor.events import MAX_LINE_BYTES, Event, decode_json, named_pump, parse_event
from monitor.timeutil import parse_ts
from monitor.transitions import AlertTransition

__all__ = ["Outcome", "Pipeline"]

log = logging.getLogger("calguard.input")

_CONTEXT_FIELDS = ("pump", "channel", "bed", "line")


@dataclass(slots=True)
class Outcome:
    record: InputRecord
    transitions: list[AlertTransition] = field(default_factory=list)


class Pipeline:
    """Feeds raw inputs to an engine; counts what happened to them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counts: dict[str, int] = {"accepted": 0, "rejected": 0, "duplicate": 0, "out_of_order": 0}
        # Rejections that arrive before any valid time is known wait for the first one.
        self._waiting: list[tuple[str, str, str]] = []

    def feed_line(self, raw: bytes | str, *, source: str, line_no: int | None = None) -> Outcome:
        try:
            obj = decode_json(raw)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, None)
        return self.feed_object(obj, raw=raw, source=source, line_no=line_no)

    def feed_object(
        self, obj: object, *, raw: bytes | str, source: str, line_no: int | None = None
    ) -> Outcome:
        try:
            event = parse_event(obj)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, obj)
        return self.feed_event(event, obj, raw=raw, source=source, line_no=line_no)

    def feed_event(
        self, event: Event, obj: object, *, raw: bytes | str, source: str, line_no: int | None = None
    ) -> Outcome:
        try:
            transitions = self.engine.handle(event)
        except EventError as exc:
            return self._reject(raw, source, line_no, exc, obj)
        if self._waiting:
            transitions = self._release_waiting() + transitions
        note, status = self.engine.note, self.engine.disposition
        self.counts[status] += 1
        if note is not None:
            log.info("%s: %s", _where(source, line_no), note)
        fields = obj if isinstance(obj, dict) else {}
        record = InputRecord.from_raw(
            raw, source, status, t_us=event.t, line_no=line_no, reason=note, event_type=event.type,
            **{k: fields.get(k) if type(fields.get(k)) is str else None for k in _CONTEXT_FIELDS},
        )
        return Outcome(record, transitions)

    def feed_oversize(self, head: bytes, size: int, sha256: str, *, source: str, line_no: int | None) -> Outcome:
        """A line over the size cap: refused unread; the log keeps its head, size and hash."""
        exc = EventError(None, None, f"the line is {size} bytes; at most {MAX_LINE_BYTES} are read")
        self.counts["rejected"] += 1
        log.warning("%s: rejected: %s", source, exc.at_line(line_no).describe() if line_no else exc.describe())
        shown = head.decode("utf-8", errors="backslashreplace")
        return Outcome(InputRecord(source, "rejected", shown, size, sha256, line_no=line_no, reason=exc.describe()))

    def finish(self) -> list[AlertTransition]:
        """End of input: fire the timers due at the last instant."""
        if self.engine.now is None:
            if self._waiting:
                log.warning("%d rejected reading(s) arrived with no valid time at all; logged only", len(self._waiting))
            return []
        return self.engine.settle()

    def _reject(
        self, raw: bytes | str, source: str, line_no: int | None, exc: EventError, obj: object
    ) -> Outcome:
        self.counts["rejected"] += 1
        reason = exc.describe() if line_no is None else exc.at_line(line_no).describe()
        log.warning("%s: rejected: %s", source, reason)
        fields = obj if isinstance(obj, dict) else {}
        t = _valid_time(fields)
        event_type = fields.get("type") if type(fields.get("type")) is str else None
        record = InputRecord.from_raw(
            raw, source, "rejected", t_us=t, line_no=line_no, reason=exc.describe(),
            event_type=event_type[:32] if event_type else None,
            **{k: fields.get(k)[:64] if type(fields.get(k)) is str else None for k in _CONTEXT_FIELDS},
        )
        transitions: list[AlertTransition] = []
        pump = named_pump(obj)
        if pump is not None:
            why = exc.describe()
            if t is None and self.engine.now is None:
                self._waiting.append((*pump, why))
            else:
                transitions = self.engine.reject(pump[0], pump[1], why, t)
        return Outcome(record, transitions)

    def _release_waiting(self) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        for pump, channel, why in self._waiting:
            out += self.engine.reject(pump, channel, why)
        self._waiting.clear()
        return out


def _valid_time(fields: dict[str, object]) -> int | None:
    try:
        return parse_ts(fields.get("t"))
    except QuantityError:
        return None


def _where(source: str, line_no: int | None) -> str:
    return f"{source}:{line_no}" if line_no is not None else source
