"""Alert transitions: what the engine emits, in the alert-line format of event-format.md.

``AlertBook`` keeps one active alert per (rule, subject) and turns rule outcomes into
``raised``, ``escalated`` (priority went up) and ``cleared`` transitions. An active alert
never lowers its priority: if a high condition eases to a medium one, the alert stays
high until it clears (a person should not see an unresolved alarm quietly soften).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import ClassVar

from calguard.monitor.timeutil import format_ts, parse_ts

__all__ = ["PRIORITY_RANK", "ActiveAlert", "AlertBook", "AlertTransition", "Description"]

PRIORITY_RANK = {"low": 0, "medium": 1, "high": 2}
#: the Description fields an alert line carries when set, in their order on the line
_CONTEXT = ("bed", "line", "pump", "channel", "value", "limit")


@dataclass(frozen=True, slots=True)
class Description:
    """What an alert says: its subject's context, the numbers compared, and the message."""

    message: str
    bed: str | None = None
    line: str | None = None
    pump: str | None = None
    channel: str | None = None
    value: str | None = None
    limit: str | None = None


@dataclass(slots=True)
class ActiveAlert:
    alert: str
    rule: str
    key: Hashable
    priority: str
    raised_t: int
    description: Description

    def transition(self, t: int, state: str, library: str) -> AlertTransition:
        return AlertTransition(
            t, state, self.alert, self.rule, self.priority, self.description, library
        )


@dataclass(frozen=True, slots=True)
class AlertTransition:
    t: int
    state: str
    alert: str
    rule: str
    priority: str
    description: Description
    library: str
    latched: bool = False
    # the alarm-management layer's lines (acknowledged, paused, overridden, escalated ...)
    by: str | None = None
    reason: str | None = None
    audience: str | None = None
    until: int | None = None

    def to_dict(self) -> dict[str, object]:
        d = self.description
        out: dict[str, object] = {
            "t": format_ts(self.t),
            "state": self.state,
            "alert": self.alert,
            "rule": self.rule,
            "priority": self.priority,
        }
        for name in _CONTEXT:
            value = getattr(d, name)
            if value is not None:
                out[name] = value
        out["message"] = d.message
        if self.latched:
            out["latched"] = True
        if self.by is not None:
            out["by"] = self.by
        if self.reason is not None:
            out["reason"] = self.reason
        if self.audience is not None:
            out["audience"] = self.audience
        if self.until is not None:
            out["until"] = format_ts(self.until)
        out["library"] = self.library
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> AlertTransition:
        """An alert line (as logged) back into a transition: the inverse of ``to_dict``."""

        def text(key: str) -> str | None:
            value = d.get(key)
            return value if isinstance(value, str) else None

        until = text("until")
        return cls(
            parse_ts(d["t"]),
            str(d["state"]),
            str(d["alert"]),
            str(d["rule"]),
            str(d["priority"]),
            Description(str(d.get("message", "")), *(text(k) for k in _CONTEXT)),
            str(d.get("library", "")),
            latched=bool(d.get("latched")),
            by=text("by"),
            reason=text("reason"),
            audience=text("audience"),
            until=parse_ts(until) if until else None,
        )


Describe = Callable[[], Description]


def _one_unit() -> str:
    return "a-"


class AlertBook:
    """Active alerts and the transitions of the current step."""

    __slots__ = ("_active", "_next_id", "_out", "library", "prefix")

    #: what alert ids start with, asked when a book is made: ``a-`` (``a-000123``) for a
    #: site that is one unit. ``calguard.units`` sets it to the running unit's ``a-<unit>-``
    #: (monitors of several units share one log): a process runs several units, each in a
    #: task of its own, and the books made in that task (a warm start's, a replay's) take
    #: its unit's prefix without every caller passing it down.
    id_prefix: ClassVar[Callable[[], str]] = _one_unit

    def __init__(self, library: str, *, first_id: int = 1) -> None:
        self.library = library
        self.prefix = AlertBook.id_prefix()
        self._active: dict[Hashable, ActiveAlert] = {}
        self._out: list[AlertTransition] = []
        self._next_id = first_id

    @property
    def active(self) -> dict[Hashable, ActiveAlert]:
        return self._active

    @property
    def next_id(self) -> int:
        return self._next_id

    def take(self) -> list[AlertTransition]:
        out, self._out = self._out, []
        return out

    def is_active(self, key: Hashable) -> bool:
        return key in self._active

    def set(self, key: Hashable, rule: str, t: int, priority: str, describe: Describe) -> None:
        """The condition of ``rule`` holds for this subject at ``t`` with ``priority``."""
        current = self._active.get(key)
        if current is None:
            alert = ActiveAlert(self.format_id(self._next_id), rule, key, priority, t, describe())
            self._next_id += 1
            self._active[key] = alert
            self._emit(t, "raised", alert)
        elif PRIORITY_RANK[priority] > PRIORITY_RANK[current.priority]:
            current.priority = priority
            current.description = describe()
            self._emit(t, "escalated", current)

    def adopt(self, key: Hashable, alert_id: str) -> None:
        """Give an active alert the id it had before a restart (warm start)."""
        self._active[key].alert = alert_id

    def restore(self, library: str, next_id: int, active: list[ActiveAlert]) -> None:
        """The book as a snapshot left it: its active alerts, in the order they were
        raised, and the id the next one gets (nothing waits to be taken)."""
        self.library, self._next_id, self._out = library, next_id, []
        self._active.clear()
        self._active.update((alert.key, alert) for alert in active)

    @property
    def pending(self) -> int:
        """Transitions made and not yet taken (a snapshot is taken only when none are)."""
        return len(self._out)

    def format_id(self, number: int) -> str:
        """The alert id of ``number``: ``a-000123``, or ``a-<unit>-000123`` for a unit."""
        return f"{self.prefix}{number:06d}"

    def restart_ids(self, first_id: int) -> None:
        self._next_id = first_id

    def clear(self, key: Hashable, t: int) -> None:
        current = self._active.pop(key, None)
        if current is not None:
            self._emit(t, "cleared", current)

    def _emit(self, t: int, state: str, alert: ActiveAlert) -> None:
        self._out.append(alert.transition(t, state, self.library))
