"""The alarm manager: the engine's alerts become alarms (IEC 60601-1-8 semantics).

The engine says when a condition starts, worsens and ends (``raised``, ``escalated``,
``cleared``). The alarm manager adds what people do and what time does, on the same
injected clock, so a replay shows exactly what a live run showed:

    active        the condition holds and the alarm annunciates; unacknowledged for the
                  library's ``escalate_after`` it is ``escalated`` to the next audience
                  (bedside -> charge nurse -> unit), each step a line with ``audience``
    acknowledged  a person has seen it: it stays visible, stops annunciating and
                  escalating; it returns (active) if the condition worsens
    paused        audio paused for the priority's ``pause`` (or less); then ``resumed``
    overridden    a person overrides it with a coded reason, until an expiry; then, if the
                  condition still holds, ``resumed``
    latched       a latching (high-priority, clinical) alarm whose condition has ended:
                  ``cleared`` with ``"latched": true``; it stays until a person ``reset``s it
    (gone)        cleared (not latching), or reset

An action that carries the person's ``role`` (every live one: the monitor writes it from the
verified token) is checked against the library's permissions for that alarm's rule and
priority before the action's own checks; an action without one (a replay file's) is not.

Deadlines (pause end, escalation, override expiry) fire at their exact time. An action at
the same instant as a deadline comes first, as events do before the engine's timers.
Technical alarms (telemetry, communications) are kept apart: they never latch.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Any

from calguard.config.schema import RULES
from calguard.monitor.errors import EventError
from calguard.monitor.events import AlarmAction
from calguard.monitor.library import AlarmPolicy
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import PRIORITY_RANK, ActiveAlert, AlertTransition

__all__ = ["TECHNICAL_RULES", "Alarm", "AlarmManager", "category"]

#: Alarms about the monitoring and its inputs, not the infant (IEC 60601-1-8 technical
#: alarms): one definition, the rule table's (``RuleSpec.technical``), so that the alarm
#: layer and the documentation cannot disagree.
TECHNICAL_RULES = frozenset(rule for rule, spec in RULES.items() if spec.technical)
_VERBS = {"ack": "acknowledge", "pause": "pause", "reset": "reset", "override": "override"}


def _urgency(alarm: Alarm) -> tuple[int, int]:
    return -PRIORITY_RANK[alarm.last.priority], alarm.raised_t


def category(rule: str) -> str:
    return "technical" if rule in TECHNICAL_RULES else "clinical"


@dataclass
class Alarm:
    """One alarm as people see it; ``last`` is its latest line."""

    last: AlertTransition
    raised_t: int
    condition: bool = True
    latched: bool = False
    acked_by: str | None = None
    acked_t: int | None = None
    paused_until: int | None = None
    overridden_until: int | None = None
    override_reason: str | None = None
    audience: int = 0
    escalate_at: int | None = None

    @property
    def id(self) -> str:
        return self.last.alert

    @property
    def state(self) -> str:
        if self.overridden_until is not None:
            return "overridden"
        if self.acked_by is not None:
            return "acknowledged"
        if self.paused_until is not None:
            return "paused"
        return "latched" if self.latched else "active"

    @property
    def annunciating(self) -> bool:
        return self.state in ("active", "latched")

    # the changes of state both the live path and a restore (from the lines) make

    def acknowledge(self, by: str | None, t: int) -> None:
        self.acked_by, self.acked_t = by, t
        self.paused_until = self.escalate_at = None

    def returns(self) -> None:
        """It worsened: acknowledgement, pause and override no longer hold."""
        self.acked_by = self.acked_t = None
        self.paused_until = self.overridden_until = self.override_reason = None

    def override_ends(self) -> None:
        """An override ran out: the alarm starts again from the bedside, unacknowledged."""
        self.overridden_until = self.override_reason = None
        self.acked_by = self.acked_t = None
        self.audience = 0

    def snapshot(self, audiences: tuple[str, ...]) -> dict[str, object]:
        """What a central station shows for this alarm."""
        out = self.last.to_dict()
        out.pop("by", None), out.pop("reason", None), out.pop("until", None)
        out["state"] = self.state
        out["category"] = category(self.last.rule)
        out["audience"] = audiences[self.audience]
        if self.acked_by is not None:
            out["acknowledged_by"] = self.acked_by
        if self.override_reason is not None:
            out["override_reason"] = self.override_reason
        if self.paused_until is not None:
            out["until"] = format_ts(self.paused_until)
        if self.overridden_until is not None:
            out["until"] = format_ts(self.overridden_until)
        return out


#: an alarm's own fields (beside its latest line) and their types, as a snapshot holds them
_ALARM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "raised_t": int,
    "condition": bool,
    "latched": bool,
    "acked_by": (str, type(None)),
    "acked_t": (int, type(None)),
    "paused_until": (int, type(None)),
    "overridden_until": (int, type(None)),
    "override_reason": (str, type(None)),
    "audience": int,
    "escalate_at": (int, type(None)),
}
_KINDS = frozenset({"escalate", "pause-end", "override-end"})


def _items(value: object, kind: type = dict) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ValueError(f"not a list of {kind.__name__}: {value!r:.80}")
    return value


class _Alarms(dict[str, Alarm]):
    """The alarms by id, with each bed's indexed: a bed's alarms (its retained state, for
    every line of an alarm storm) cost what that bed has, not what the ward has."""

    def __init__(self) -> None:
        super().__init__()
        self.beds: dict[str | None, dict[str, Alarm]] = {}
        self._bed_of: dict[str, str | None] = {}  # the bed each alarm is indexed under

    def __setitem__(self, alert: str, alarm: Alarm) -> None:
        if alert in self:
            self._unindex(alert)
        super().__setitem__(alert, alarm)
        bed = alarm.last.description.bed
        self._bed_of[alert] = bed
        self.beds.setdefault(bed, {})[alert] = alarm

    def __delitem__(self, alert: str) -> None:
        super().__delitem__(alert)
        self._unindex(alert)

    def _unindex(self, alert: str) -> None:
        bed = self._bed_of.pop(alert)
        of_bed = self.beds[bed]
        del of_bed[alert]
        if not of_bed:
            del self.beds[bed]


class AlarmManager:
    """Feed it the engine's transitions (``process``) and people's actions (``act``);
    ``advance`` fires its own deadlines. Every method returns the lines to emit."""

    def __init__(self, policy: AlarmPolicy, library: str | None = None) -> None:
        self.policy = policy
        #: the library version this layer's own lines carry (None: their alert's line's)
        self.library = library
        self.alarms = _Alarms()
        self._deadlines: list[tuple[int, int, str, str]] = []  # (t, n, kind, alert)
        self._n = 0

    def use(self, policy: AlarmPolicy, library: str) -> None:
        """A newly published library's policy from now on (deadlines already set stand),
        and its version on every line from now on."""
        self.policy, self.library = policy, library

    # -- time ------------------------------------------------------------------------------

    def next_due(self) -> int | None:
        while self._deadlines and not self._live(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def advance(self, t: int, *, inclusive: bool = True) -> list[AlertTransition]:
        """Fire the deadlines up to ``t`` (before it, with ``inclusive=False``), in order."""
        out: list[AlertTransition] = []
        while self._deadlines:
            due, _, kind, alert_id = self._deadlines[0]
            if due > t or (due == t and not inclusive):
                break
            heapq.heappop(self._deadlines)
            if self._live((due, 0, kind, alert_id)):
                out += self._fire(kind, self.alarms[alert_id], due)
        return out

    def process(
        self, transitions: list[AlertTransition], now: int, *, inclusive: bool = True
    ) -> list[AlertTransition]:
        """The engine's transitions of one input (at ``now``), with the alarm lines between
        them at their exact times. With ``inclusive=False`` the deadlines at ``now`` itself
        wait for time to move on (a clock tick, or a later input): a person's action that
        shares the instant must still come first, whatever other inputs arrive with it."""
        out: list[AlertTransition] = []
        for tr in transitions:
            out += self.advance(tr.t, inclusive=False)
            out += self._engine(tr)
        return out + self.advance(now, inclusive=inclusive)

    # -- the engine's transitions -----------------------------------------------------------

    def _engine(self, tr: AlertTransition) -> list[AlertTransition]:
        alarm = self.alarms.get(tr.alert)
        if tr.state == "raised" or alarm is None:
            alarm = Alarm(tr, tr.t)
            self.alarms[tr.alert] = alarm
            self._escalate_from(alarm, tr.t)
            return [tr]
        worse = PRIORITY_RANK[tr.priority] > PRIORITY_RANK[alarm.last.priority]
        alarm.last = tr
        if tr.state == "cleared":
            alarm.condition = False
            latch = (
                tr.priority in self.policy.latching
                and category(tr.rule) == "clinical"
                and alarm.overridden_until is None
            )
            if latch:
                alarm.latched = True
                alarm.last = replace(tr, latched=True)
                return [alarm.last]
            del self.alarms[tr.alert]
            return [tr]
        if worse:  # an acknowledged, paused or overridden alarm returns when it worsens
            alarm.returns()
            self._escalate_from(alarm, tr.t)
        return [tr]

    # -- people's actions ----------------------------------------------------------------------

    def act(self, action: AlarmAction) -> list[AlertTransition]:
        """Apply an action; ``EventError`` (with the reason) if it cannot apply."""
        alarm = self.alarms.get(action.alert)
        if alarm is None:
            raise EventError("alert", action.alert, "an alarm that is active or latched now")
        if action.role is not None:
            self._permitted(action, alarm)
        t, by = action.t, action.by
        if action.type == "ack":
            if alarm.acked_by is not None:
                raise EventError(
                    "alert", action.alert, f"an unacknowledged alarm (already by {alarm.acked_by})"
                )
            alarm.acknowledge(by, t)
            return self._line(alarm, t, "acknowledged", by=by)
        if action.type == "pause":
            limit = self.policy.pause[alarm.last.priority]
            duration = action.duration_us or limit.us
            if duration > limit.us:
                raise EventError(
                    "duration",
                    format_duration(duration),
                    f"at most {format_duration(limit.us)} for a {alarm.last.priority} alarm",
                )
            if not alarm.annunciating:
                raise EventError(
                    "alert", action.alert, f"an annunciating alarm, not one {alarm.state}"
                )
            alarm.paused_until = t + duration
            alarm.escalate_at = None  # suspended while paused; restarts when it resumes
            self._at(alarm.paused_until, "pause-end", alarm)
            return self._line(alarm, t, "paused", by=by, until=alarm.paused_until)
        if action.type == "reset":
            if alarm.condition:
                raise EventError(
                    "alert",
                    action.alert,
                    "a latched alarm whose condition has ended "
                    "(this one still holds: acknowledge or override it)",
                )
            del self.alarms[alarm.id]
            return self._line(alarm, t, "reset", by=by)
        # override
        reasons = self.policy.override_reasons
        if action.reason not in reasons:
            raise EventError("reason", action.reason, f"one of {', '.join(reasons)}")
        limit = self.policy.override_max
        duration = action.duration_us or limit.us
        if duration > limit.us:
            raise EventError(
                "duration", format_duration(duration), f"at most {format_duration(limit.us)}"
            )
        if not alarm.condition:
            raise EventError(
                "alert", action.alert, "an alarm whose condition holds (reset a latched one)"
            )
        alarm.overridden_until = t + duration
        alarm.override_reason = action.reason
        alarm.paused_until = alarm.escalate_at = None
        self._at(alarm.overridden_until, "override-end", alarm)
        return self._line(
            alarm, t, "overridden", by=by, reason=action.reason, until=alarm.overridden_until
        )

    def _permitted(self, action: AlarmAction, alarm: Alarm) -> None:
        """The library's permissions for the action's role on this very alarm (its rule and
        priority now); an action without a role (a file of actions) is not checked here:
        a live monitor never takes one."""
        rule, priority = alarm.last.rule, alarm.last.priority
        roles = self.policy.permissions.roles(action.type, rule, priority)
        if action.role not in roles:
            allowed = ", ".join(sorted(roles)) or "no role"
            raise EventError(
                None,
                None,
                f"role {action.role} may not {_VERBS[action.type]} a {priority} {rule} alarm "
                f"(the library allows {allowed})",
            )

    # -- deadlines ---------------------------------------------------------------------------

    def _fire(self, kind: str, alarm: Alarm, t: int) -> list[AlertTransition]:
        if kind == "escalate":
            alarm.escalate_at = None
            alarm.audience += 1
            audience = self.policy.audiences[alarm.audience]
            self._escalate_from(alarm, t)
            return self._line(alarm, t, "escalated", audience=audience)
        if kind == "pause-end":
            alarm.paused_until = None
            self._escalate_from(alarm, t)
            return self._line(alarm, t, "resumed")
        # override-end: the alarm returns if its condition still holds
        alarm.override_ends()
        self._escalate_from(alarm, t)
        return self._line(alarm, t, "resumed")

    def _live(self, entry: tuple[int, int, str, str]) -> bool:
        due, _, kind, alert_id = entry
        alarm = self.alarms.get(alert_id)
        if alarm is None:
            return False
        wanted = {
            "escalate": alarm.escalate_at,
            "pause-end": alarm.paused_until,
            "override-end": alarm.overridden_until,
        }[kind]
        return wanted == due

    def _escalate_from(self, alarm: Alarm, t: int) -> None:
        if alarm.audience + 1 >= len(self.policy.audiences) or not alarm.annunciating:
            alarm.escalate_at = None
            return
        alarm.escalate_at = t + self.policy.escalate_after[alarm.last.priority].us
        self._at(alarm.escalate_at, "escalate", alarm)

    def _at(self, t: int, kind: str, alarm: Alarm) -> None:
        self._n += 1
        heapq.heappush(self._deadlines, (t, self._n, kind, alarm.id))

    def _line(self, alarm: Alarm, t: int, state: str, **extra: object) -> list[AlertTransition]:
        line = replace(
            alarm.last, t=t, state=state, by=None, reason=None, audience=None, until=None
        )
        if self.library is not None:
            line = replace(line, library=self.library)
        return [replace(line, **extra)]  # type: ignore[arg-type]

    # -- snapshots ---------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """The alarms as people left them and the pending deadlines, in plain values (a
        snapshot's part; ``restore_state`` is its inverse)."""
        return {
            "library": self.library,
            "n": self._n,
            "deadlines": [list(d) for d in self._deadlines],
            "alarms": [
                {**{k: getattr(a, k) for k in _ALARM_FIELDS}, "last": a.last.to_dict()}
                for a in self.alarms.values()
            ],
        }

    def restore_state(self, state: dict[str, object]) -> None:
        """The alarms of ``state()``; ``ValueError`` (and nothing changed) for anything else."""
        alarms = _Alarms()
        for d in _items(state["alarms"]):
            fields = {k: d[k] for k in _ALARM_FIELDS}
            if any(not isinstance(v, _ALARM_FIELDS[k]) for k, v in fields.items()):
                raise ValueError(f"an alarm's fields are not of their types: {fields!r:.200}")
            last = d["last"]
            if not isinstance(last, dict):
                raise ValueError("an alarm without its latest line")
            alarm = Alarm(AlertTransition.from_dict(last), **fields)
            alarms[alarm.id] = alarm
        deadlines: list[tuple[int, int, str, str]] = []
        for entry in _items(state["deadlines"], list):
            t, n, kind, alert = entry
            if not (isinstance(t, int) and isinstance(n, int) and kind in _KINDS):
                raise ValueError(f"not an alarm deadline: {entry!r:.80}")
            deadlines.append((t, n, str(kind), str(alert)))
        n, library = state["n"], state["library"]
        if not isinstance(n, int) or not (library is None or isinstance(library, str)):
            raise ValueError("the alarm layer's counter or library is not of its type")
        heapq.heapify(deadlines)
        self.alarms, self._deadlines, self._n = alarms, deadlines, n
        self.library = library

    # -- views -------------------------------------------------------------------------------

    def resume(self, active: ActiveAlert, library: str, now: int) -> None:
        """An alert still active after a restart: an annunciating alarm again, escalating
        from ``now`` (acknowledgements are not carried over a restart)."""
        alarm = Alarm(active.transition(active.raised_t, "raised", library), active.raised_t)
        self.alarms[active.alert] = alarm
        self._escalate_from(alarm, now)

    def restore(
        self, lines: list[dict[str, object]], active_ids: set[str], now: int
    ) -> list[AlertTransition]:
        """After a restart: rebuild the alarms from the lines the last runs emitted
        (acknowledged, paused, overridden, escalated, latched ...). An alarm whose alert the
        engine still has active keeps its state; a latched one stays until reset; others
        are gone. Deadlines that ran out while the monitor was down fire now, stamped with
        their exact time: the returned lines."""
        since: dict[str, int] = {}
        for d in lines:
            tr = AlertTransition.from_dict(d)
            if tr.state == "raised":
                self.alarms[tr.alert] = Alarm(tr, tr.t)
                since[tr.alert] = tr.t
                continue
            alarm = self.alarms.get(tr.alert)
            if alarm is None:
                continue
            alarm.last = replace(tr, by=None, reason=None, audience=None, until=None)
            if tr.state == "acknowledged":
                alarm.acknowledge(tr.by, tr.t)
            elif tr.state == "paused":
                alarm.paused_until = tr.until
            elif tr.state == "overridden":
                alarm.overridden_until, alarm.override_reason = tr.until, tr.reason
            elif tr.state == "resumed":  # a pause or an override ran out
                if alarm.overridden_until is not None:
                    alarm.override_ends()
                alarm.paused_until = None
                since[tr.alert] = tr.t
            elif tr.state == "escalated" and tr.audience in self.policy.audiences:
                alarm.audience = self.policy.audiences.index(tr.audience)
                since[tr.alert] = tr.t
            elif tr.state == "escalated":  # the engine's: worse, so it returned
                alarm.returns()
                since[tr.alert] = tr.t
            elif tr.state == "cleared" and tr.latched:
                alarm.condition, alarm.latched = False, True
            elif tr.state in ("cleared", "reset"):
                del self.alarms[tr.alert]
        for alert_id, alarm in list(self.alarms.items()):
            if alert_id in active_ids:
                alarm.condition = True
            elif not (alarm.latched and not alarm.condition):
                del self.alarms[alert_id]
                continue
            if alarm.paused_until is not None:
                self._at(alarm.paused_until, "pause-end", alarm)
            elif alarm.overridden_until is not None:
                self._at(alarm.overridden_until, "override-end", alarm)
            elif alarm.acked_by is None:
                self._escalate_from(alarm, since.get(alert_id, alarm.raised_t))
        return self.advance(now)

    def active(self) -> list[Alarm]:
        """Every alarm shown now, the most urgent first."""
        return sorted(self.alarms.values(), key=_urgency)

    def of_bed(self, bed: str | None) -> list[Alarm]:
        """One bed's alarms, the most urgent first (without sorting the whole ward's)."""
        return sorted(self.alarms.beds.get(bed, {}).values(), key=_urgency)
