"""IHE PCD-04 (``ORU^R40``) alarm reports from pump gateways, and the board that carries
them into readings.

A gateway reports a pump alarm (an occlusion above all) as a PCD-04 message: the event
(``196616^MDC_EVT_ALARM`` with the condition in OBX-5, e.g. ``196940^MDC_EVT_FLUID_LINE_OCCL``),
its source, phase (``start``, ``update``, ``end``...) and state (``active``, ``inactive``),
the start and the end of one alarm sharing one alert id (OBR-29, TF-2 B.7.1). The pump is
named by OBX-18 of the event, source or MDS row; the OBX-4 path of the event says which
VMD (0: the whole pump).

A reading needs a rate, which an alarm report does not carry. So the board keeps the latest
reading of every pump channel and, when an alarm starts or ends, gives that reading again
with its ``alarm`` changed; every later reading of the channel carries the alarm until it
ends. An alarm for a pump that has sent no reading yet is a problem for that pump (it is
kept, and its first reading carries it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from calguard.drivers import mdc
from calguard.drivers.hl7v2 import HL7Problem, Message, Row, hl7_time
from calguard.monitor.timeutil import parse_ts

__all__ = ["AlarmBoard", "AlarmReport", "translate_pcd04"]

log = logging.getLogger(__name__)

_ENDED_PHASES = {"end", "stop", "reset", "inactivate", "_end", "_stop", "_compl"}
_MOMENTARY_PHASES = {"tpoint", "start_only"}
_RANK = {"PH": 0, "PM": 1, "PL": 2}


@dataclass(frozen=True)
class AlarmReport:
    device: str
    alert_id: str
    name: str  # the event format's alarm name
    priority: str | None  # PH, PM, PL
    active: bool
    lasting: bool  # False for a time-point alarm (no end will come)
    vmd: int  # 0: the whole pump
    channel: int  # 0: the whole VMD; 2 primary, 3 secondary
    t: str


def translate_pcd04(message: Message, *, zone: tzinfo | None = None) -> AlarmReport | None:
    """The pump alarm a PCD-04 reports; None when it is not an infusion pump's (a
    monitor's SpO2 alarm, an advisory); ``HL7Problem`` when it cannot be used."""
    sent = hl7_time(message.field(message.msh, 7), "MSH-7", zone=zone)
    for obr, rows in message.groups():
        if obr is None:
            continue
        event = next((r for r in rows if _is_event(r)), None)
        if event is not None:
            if not _is_pump_alarm(rows, event):
                return None
            return _report(message, obr, rows, event, sent, zone)
    raise HL7Problem("no alarm event (OBX 196616^MDC_EVT_ALARM, facet 1) in this ORU^R40")


_PUMP_WORDS = ("PUMP", "INFUS", "FLUID_LINE", "SYRINGE")


def _is_pump_alarm(rows: list[Row], event: Row) -> bool:
    """An infusion pump's alarm: a pump's device row, a pump as the alert source, or a pump
    event code (occlusion is MDC_EVT_FLUID_LINE_OCCL)."""
    for row in rows:
        if len(row.path) <= 4 and mdc.is_pump_device(row):
            return True
        if mdc.ALERT_SOURCE.matches(row) and row.value:
            code, refid = row.value[0].strip(), "^".join(row.value[1:2]).upper()
            if code in mdc.PUMP_DEVICE_CODES or any(w in refid for w in _PUMP_WORDS):
                return True
    condition = "^".join(event.value[:2]).upper() if mdc.EVENT.matches(event) else event.refid
    return any(w in condition.upper() for w in _PUMP_WORDS)


def _is_event(row: Row) -> bool:
    if mdc.EVENT.matches(row):
        return True
    return len(row.path) >= 5 and row.path[4] == 1  # a physiological alarm's facet 1


def _report(
    message: Message, obr: Any, rows: list[Row], event: Row, sent: str, zone: tzinfo | None
) -> AlarmReport:
    # OBR-29 (EIP): the parent's placer^filler id, each an EI in subcomponents
    parents = [c.split("&")[0].strip() for c in message.comps(obr, 29)[:2]]
    parent = next((p for p in parents if p), "")
    alert_id = parent or message.comp_at(obr, 3, 1) or message.comp_at(obr, 2, 1)
    if not alert_id:
        raise HL7Problem("the alarm has no id (OBR-29 parent, or OBR-3 filler order number)")
    phase = _text(rows, mdc.EVENT_PHASE).lower()
    state = _text(rows, mdc.ALARM_STATE).lower()
    condition = event.value if mdc.EVENT.matches(event) else [event.code, event.refid]
    refid = condition[1] if len(condition) > 1 else ""
    text = _text(rows, mdc.ALERT_TEXT) or (condition[8] if len(condition) > 8 else "")
    priority = _text(rows, mdc.ALARM_PRIORITY).upper() or next(
        (f for f in event.flags if f in _RANK), None
    )
    when = event.time or message.field(obr, 7).strip()
    t = hl7_time(when, "the alarm's time", zone=zone) if when else sent
    path = (*event.path, 0, 0, 0)
    return AlarmReport(
        device=_device(rows, event),
        alert_id=alert_id,
        name=mdc.alarm_name(refid or event.refid, text),
        priority=priority if priority in _RANK else None,
        active=phase not in _ENDED_PHASES and state != "inactive",
        lasting=phase not in _MOMENTARY_PHASES,
        vmd=path[1],
        channel=path[2],
        t=t,
    )


def _text(rows: list[Row], term: mdc.Term) -> str:
    row = next((r for r in rows if term.matches(r)), None)
    return row.text if row is not None else ""


def _device(rows: list[Row], event: Row) -> str:
    """OBX-18 of the event row, else of the source row, else of the MDS row, else the
    pump's MDC_ATTR_SYS_ID."""
    source = next((r for r in rows if mdc.ALERT_SOURCE.matches(r)), None)
    mds = next((r for r in rows if r.path[1:4] == (0, 0, 0) and len(r.path) == 4), None)
    for row in (event, source, mds):
        if row is not None and row.equipment and row.equipment[0].strip():
            return row.equipment[0].strip()
    sys_id = next((r for r in rows if mdc.SYS_ID.matches(r)), None)
    if sys_id is not None and sys_id.text:
        return sys_id.text
    raise HL7Problem("the alarm names no pump (no OBX-18 on its event, source or MDS row)")


# -- the board ------------------------------------------------------------------------------


@dataclass
class _Known:
    reading: dict[str, Any]  # the latest reading, without its alarm
    vmd: int
    kind: str
    own: str | None  # the pump's own alarm condition in that reading (PCD-01)


@dataclass(frozen=True)
class _Alarm:
    pump: str
    name: str
    rank: int
    vmd: int
    channel: int

    def covers(self, known: _Known) -> bool:
        if self.vmd and known.vmd != self.vmd:
            return False
        wanted = {2: "primary", 3: "secondary"}.get(self.channel)
        return wanted is None or known.kind == wanted


class AlarmBoard:
    """The latest reading of every pump channel and the active PCD-04 alarms, bounded (the
    oldest are forgotten first) so that a flood cannot grow it."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self.known: OrderedDict[tuple[str, str], _Known] = OrderedDict()
        self.alarms: OrderedDict[tuple[str, str], _Alarm] = OrderedDict()

    def remember(self, reading: dict[str, Any], vmd: int, kind: str, own: str | None) -> None:
        key = (str(reading["pump"]), str(reading["channel"]))
        plain = {k: v for k, v in reading.items() if k != "alarm"}
        self.known[key] = _Known(plain, vmd, kind, own)
        self.known.move_to_end(key)
        while len(self.known) > self.limit:
            self.known.popitem(last=False)

    def alarm_of(self, pump: str, channel: str, vmd: int, kind: str, own: str | None) -> str | None:
        """The one alarm a reading of this channel carries: an occlusion above all, then the
        highest priority; the pump's own condition ranks after the gateway's alarms."""
        probe = _Known({}, vmd, kind, own)
        names = {pump, pump[1:]} if pump[:1].isalpha() and len(pump) > 1 else {pump}
        found = [
            (a.name != "occlusion", a.rank, a.name)
            for a in self.alarms.values()
            if a.pump in names and a.covers(probe)  # also one kept before its pump was known
        ]
        if own is not None:
            found.append((own != "occlusion", 3, own))
        return min(found)[2] if found else None

    def pump_of(self, device: str) -> str:
        """The pump a PCD-04 names: itself when its readings are known; else the one known
        pump whose id is this one behind a letter (B. Braun names a pump ``P2449`` in PCD-01
        and ``2449`` in PCD-04, as its captures show), when exactly one fits."""
        pumps = {p for p, _ in self.known}
        if device in pumps:
            return device
        fits = [
            p for p in pumps if len(p) == len(device) + 1 and p[0].isalpha() and p[1:] == device
        ]
        return fits[0] if len(fits) == 1 else device

    def apply(self, report: AlarmReport) -> tuple[str, list[dict[str, Any]]]:
        """The pump the alarm belongs to, and the readings to give again with their alarm
        changed (none if no reading of that pump is known yet)."""
        pump = self.pump_of(report.device)
        key = (pump, report.alert_id)
        if report.active:
            rank = _RANK.get(report.priority or "", 3)
            alarm = _Alarm(pump, report.name, rank, report.vmd, report.channel)
            if report.lasting:
                self.alarms[key] = alarm
                self.alarms.move_to_end(key)
                while len(self.alarms) > self.limit:
                    self.alarms.popitem(last=False)
            return pump, self._again(pump, alarm, alarm if not report.lasting else None, report.t)
        ended = self.alarms.pop(key, None) or self.alarms.pop(
            (report.device, report.alert_id), None
        )
        if ended is None:
            # An end whose id matches no start: B. Braun's captures end an alarm under a new
            # parent id. End the pump's active alarm of the same condition instead.
            owners = {pump, report.device}
            same = [k for k, a in self.alarms.items() if a.pump in owners and a.name == report.name]
            for k in same:
                del self.alarms[k]
            if same:
                log.info(
                    "pump %s: alarm %s ended under id %s, not the id it started with",
                    pump,
                    report.name,
                    report.alert_id,
                )
        scope = _Alarm(pump, report.name, 3, report.vmd, report.channel)
        return pump, self._again(pump, scope, None, report.t)

    def _again(
        self, pump: str, scope: _Alarm, momentary: _Alarm | None, t: str
    ) -> list[dict[str, Any]]:
        """The known readings of the channels the alarm concerns, with their alarm now."""
        out = []
        for (p, channel), known in self.known.items():
            if p != pump or not scope.covers(known):
                continue
            reading = dict(known.reading)
            alarm = self.alarm_of(p, channel, known.vmd, known.kind, known.own)
            if momentary is not None and momentary.covers(known) and alarm is None:
                alarm = momentary.name
            if alarm is not None:
                reading["alarm"] = alarm
            reading["t"] = max(str(reading["t"]), t, key=parse_ts)
            out.append(reading)
        return out

    def channels_of(self, pump: str) -> list[str]:
        return [c for p, c in self.known if p == pump]
