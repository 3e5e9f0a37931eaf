"""Test support: a bedside that speaks event-format v1 to an engine, and times as text.

Rule tests read like the situation they check::

    bay = Bedside()
    bay.admit(weight="1 kg")                         # bed B1, PIV L1, pump P1/A, patency checked
    bay.reading("08:05", rate="120.1 ml/h", drug="Calcium gluconate 20 mg/ml")
    assert bay.active_rules() == {...}
"""

from __future__ import annotations

import json
from typing import Any

from calguard.config import Library, load_library
from calguard.monitor.engine import Engine
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import parse_ts

from calguard.pipeline import Pipeline

DAY = "2026-11-21"


def ts(clock: str, day: str = DAY) -> str:
    """'08:03' or '08:03:10' (or a full timestamp) -> RFC 3339 in UTC."""
    if "T" in clock:
        return clock
    if clock.count(":") == 1:
        clock += ":00"
    return f"{day}T{clock}Z"


def us(clock: str, day: str = DAY) -> int:
    return parse_ts(ts(clock, day))


class Bedside:
    """Feeds events through the real pipeline (dict -> validation -> engine)."""

    def __init__(self, library: Library | None = None, *, alarms: bool = False) -> None:
        """``alarms``: through the alarm layer too (the rule tests look at the engine's
        own lines)."""
        self.engine = Engine(library or load_library())
        self.records: list[InputRecord] = []
        self.pipeline = Pipeline(self.engine, self, alarms=alarms)
        self.alerts: list[dict[str, Any]] = []

    def add_input(self, record: InputRecord) -> None:  # the pipeline's journal
        self.records.append(record)

    def send(self, clock: str, type: str, *, day: str = DAY, **fields: Any) -> list[dict[str, Any]]:
        obj = {"t": ts(clock, day), "type": type, **fields}
        transitions = self.pipeline.feed_object(obj, raw=json.dumps(obj), source="test")
        out = [tr.to_dict() for tr in transitions]
        self.alerts += out
        return out

    def raw(self, line: str | bytes) -> list[dict[str, Any]]:
        transitions = self.pipeline.feed_line(line, source="test", line_no=len(self.records) + 1)
        out = [tr.to_dict() for tr in transitions]
        self.alerts += out
        return out

    # -- bedside vocabulary -----------------------------------------------------------

    def admit(
        self,
        clock: str = "08:00",
        *,
        bed: str = "B1",
        weight: str | None = "1 kg",
        age: str | None = "5 day",
        line: str = "L1",
        kind: str = "piv",
        pump: str = "P1",
        channel: str = "A",
        patency: str | None = "blood_return",
        **line_fields: Any,
    ) -> None:
        """An infant with a line, a pump channel connected to it, backflow checked."""
        patient: dict[str, Any] = {"bed": bed}
        if weight is not None:
            patient["weight"] = weight
        if age is not None:
            patient["postnatal_age"] = age
        self.send(clock, "patient", **patient)
        self.send(clock, "line", line=line, bed=bed, kind=kind, **line_fields)
        self.send(clock, "connect", pump=pump, channel=channel, line=line)
        if patency is not None:
            self.send(clock, "patency_check", line=line, result=patency)

    def reading(
        self,
        clock: str,
        *,
        rate: str,
        pump: str = "P1",
        channel: str = "A",
        drug: str | None = "Calcium gluconate 10%",
        **fields: Any,
    ) -> list[dict[str, Any]]:
        if drug is not None:
            fields["drug"] = drug
        return self.send(clock, "reading", pump=pump, channel=channel, rate=rate, **fields)

    def clock(self, clock: str, **kw: Any) -> list[dict[str, Any]]:
        return self.send(clock, "clock", **kw)

    def finish(self) -> list[dict[str, Any]]:
        out = [tr.to_dict() for tr in self.pipeline.finish()]
        self.alerts += out
        return out

    # -- what a test looks at -----------------------------------------------------------

    def active(self) -> dict[str, str]:
        """rule -> priority of the active alerts (one per rule here)."""
        return {a.rule: a.priority for a in self.engine.active.values()}

    def active_rules(self) -> set[str]:
        return {a.rule for a in self.engine.active.values()}

    def of(self, rule: str) -> list[dict[str, Any]]:
        """Every transition of one rule so far."""
        return [a for a in self.alerts if a["rule"] == rule]

    def states(self, rule: str) -> list[tuple[str, str, str]]:
        """(time, state, priority) of every transition of one rule."""
        return [(a["t"], a["state"], a["priority"]) for a in self.of(rule)]
