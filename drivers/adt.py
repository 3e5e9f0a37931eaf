"""HL7 ADT (admit, transfer, discharge, update) -> ``patient`` events.

The hospital's patient administration system tells CalGuard who lies in which bed, so that
the weight-based rules work without bedside documentation. Fields used:

- the time: EVN-2 (recorded), else MSH-7;
- the infant: PID-3 (the ``MR`` identifier, else the first), PID-7 (birth);
- the bed: PV1-3 (``point of care^room^bed``): the bed, prefixed by the room when one is
  given (``401-A``); for a transfer (A02) also PV1-6, the bed left;
- the weight: an OBX of LOINC 29463-7 (body weight) or 3141-9 (body weight measured), or
  MDC 68063 (``MDC_ATTR_PT_WEIGHT``), with its unit; a birth weight is not a weight.

Admit (A01), register (A04), update (A08) and cancel discharge (A13) are a ``patient``
event for the bed. The event format has no discharge: a discharge (A03), a cancelled
admission (A11) and the bed left by a transfer are a ``patient`` event whose ``patient`` is
``discharged:<id>``, a new id, so that nothing of the infant (weight, age, 24-hour dose,
ceftriaxone history) stays with the bed. It clears nothing else: lines, connections and
pump channels stay as documented. It is not sent when this listener last heard of another
infant in that bed (a late discharge must not wipe the next infant's weight).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from calguard.drivers import mdc
from calguard.drivers.hl7v2 import HL7Problem, Message, birth_time, hl7_time, unit_of

__all__ = ["ADT_EVENTS", "AdtChange", "AdtView", "translate_adt"]

ADMITTING = ("A01", "A04", "A08", "A13")
LEAVING = ("A03", "A11")
ADT_EVENTS = (*ADMITTING, "A02", *LEAVING)
_ID = re.compile(r"[^\s](?:[^\x00-\x1f\x7f]{0,62}[^\s])?\Z")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")
_DROPPED = {"D", "W", "X"}  # OBX-11: deleted, wrong, cannot be obtained


@dataclass(frozen=True)
class AdtChange:
    event: dict[str, Any]
    bed: str
    patient: str | None  # who is in the bed afterwards; None: nobody


class AdtView:
    """Who this listener last heard was in each bed (bounded; empty after a restart)."""

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self.beds: OrderedDict[str, str | None] = OrderedDict()

    def note(self, bed: str, patient: str | None) -> None:
        self.beds[bed] = patient
        self.beds.move_to_end(bed)
        while len(self.beds) > self.limit:
            self.beds.popitem(last=False)


def translate_adt(
    message: Message, trigger: str, view: AdtView, *, zone: tzinfo | None = None
) -> tuple[list[AdtChange], list[str]]:
    """The patient events of one ADT message, and notes on what was left out."""
    evn = message.segments("EVN")
    recorded = message.field(evn[0], 2).strip() if evn else ""
    t = hl7_time(
        recorded or message.field(message.msh, 7), "EVN-2" if recorded else "MSH-7", zone=zone
    )
    pids, pv1s = message.segments("PID"), message.segments("PV1")
    if not pids or not pv1s:
        raise HL7Problem(f"ADT^{trigger} without a PID and a PV1 segment")
    pid, pv1 = pids[0], pv1s[0]
    patient = _patient_id(message, pid)
    bed = _bed(message, pv1, 3)
    if bed is None:
        raise HL7Problem("PV1-3 (assigned location) names no bed")
    notes: list[str] = []
    if trigger in LEAVING:
        change = _leave(t, bed, patient, view, notes)
        return ([change] if change else []), notes
    changes = []
    if trigger == "A02":
        prior = _bed(message, pv1, 6)
        if prior is not None and prior != bed:
            left = _leave(t, prior, patient, view, notes)
            if left is not None:
                changes.append(left)
    event: dict[str, Any] = {"t": t, "type": "patient", "bed": bed}
    if patient is not None:
        event["patient"] = patient
    birth = message.field(pid, 7).strip()
    if birth:
        event["birth"] = birth_time(birth, zone=zone, not_after=t)
    weight = _weight(message)
    if weight is not None:
        event["weight"] = weight
    changes.append(AdtChange(event, bed, patient))
    return changes, notes


def _patient_id(message: Message, pid: Any) -> str | None:
    """PID-3: the medical record number (type MR) when there is one, else the first id."""
    found: list[str] = []
    for repetition in message.field(pid, 3).split(message.rep):
        parts = [message.unescape(p).strip() for p in repetition.split(message.comp)]
        if parts and parts[0]:
            if len(parts) > 4 and parts[4].upper() == "MR":
                found.insert(0, parts[0])
            else:
                found.append(parts[0])
    if not found:
        return None
    if not _ID.match(found[0]):
        raise HL7Problem(f"PID-3 {found[0]!r} is not an identifier of 1-64 characters")
    return found[0]


def _bed(message: Message, pv1: Any, n: int) -> str | None:
    parts = [*message.comps(pv1, n), "", "", ""]
    room, bed = parts[1].strip(), parts[2].strip()
    if not bed:
        return None
    name = f"{room}-{bed}" if room else bed
    if not _ID.match(name):
        raise HL7Problem(f"PV1-{n} bed {name!r} is not an identifier of 1-64 characters")
    return name


def _leave(
    t: str, bed: str, patient: str | None, view: AdtView, notes: list[str]
) -> AdtChange | None:
    holder = view.beds.get(bed)
    if holder is not None and patient is not None and holder != patient:
        notes.append(f"bed {bed} has held {holder} since: {patient} leaving it changes nothing")
        return None
    marker = f"discharged:{patient or 'unknown'}"[:64]
    return AdtChange({"t": t, "type": "patient", "bed": bed, "patient": marker}, bed, None)


def _weight(message: Message) -> str | None:
    """The last body-weight OBX (not deleted or wrong), as a quantity with its unit."""
    weight = None
    for _, rows in message.groups():
        for row in rows:
            if not (mdc.WEIGHT.matches(row) or mdc.PT_WEIGHT.matches(row)):
                continue
            if row.status in _DROPPED:
                continue
            number = row.value[0].strip() if row.value else ""
            if not _NUMBER.match(number):
                raise HL7Problem(f"{row.where()} weight {number!r} is not a number")
            unit = unit_of(row.unit)
            if unit is None:
                shown = "^".join(row.unit).strip("^") or "none"
                raise HL7Problem(
                    f"{row.where()} weight has a unit CalGuard does not know ({shown})"
                )
            weight = f"{number} {unit}"
    return weight
