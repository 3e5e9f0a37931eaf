"""HL7 v2 building blocks for the MLLP driver: a parsed message, its fields, timestamps and
units.

python-hl7 parses the message and unescapes values; this module adds what every CalGuard
translator needs on top: a field as text (empty when absent), components of the first
repetition, OBX rows as plain values, HL7 ``DTM`` timestamps turned into RFC 3339 (range
checked like every CalGuard time), and units from MDC codes or UCUM in either triplet of a
``CWE``. Anything unusable is an ``HL7Problem`` whose text goes into the AE acknowledgement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import hl7
from calguard.monitor.errors import QuantityError
from calguard.monitor.timeutil import parse_ts

__all__ = [
    "HL7Problem",
    "Message",
    "Row",
    "birth_time",
    "hl7_time",
    "unit_of",
]


class HL7Problem(Exception):
    """A message (or part of one) CalGuard cannot use; the text is the reason given back."""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Row:
    """One OBX segment, as plain values (unescaped)."""

    set_id: str
    value_type: str
    code: str  # OBX-3.1, the MDC (or LOINC) code
    refid: str  # OBX-3.2, the REFID (MDC_...) or the text
    system: str  # OBX-3.3
    path: tuple[int, ...]  # OBX-4 dotted numbers; () when absent or not numeric
    value: list[str]  # OBX-5 components of its first repetition
    repeats: list[str]  # OBX-5 every repetition, whole (for lists such as active sources)
    unit: list[str]  # OBX-6 components
    flags: list[str]  # OBX-8 repetitions
    status: str  # OBX-11
    time: str  # OBX-14
    method: str  # OBX-17.1
    equipment: list[str]  # OBX-18 components of its first repetition

    @property
    def text(self) -> str:
        """OBX-5 as one text (the first repetition, components joined as sent)."""
        return "^".join(self.value).strip("^").strip()

    @property
    def coded(self) -> str:
        """The text of a coded OBX-5 (``^pump-status-infusing``, ``196940^MDC_EVT_X^MDC``):
        the second component when there is one, else the first."""
        if len(self.value) > 1 and self.value[1].strip():
            return self.value[1].strip()
        return self.value[0].strip() if self.value else ""

    def where(self) -> str:
        return f"OBX {self.set_id} ({self.refid or self.code})"


class Message:
    """A parsed HL7 v2 message with text access to fields and components."""

    def __init__(self, text: str) -> None:
        # segments end with CR; some senders end them with CR LF or LF, which no field holds
        text = text.replace("\r\n", "\r").replace("\n", "\r")
        if not text.startswith("MSH"):
            raise HL7Problem("not an HL7 v2 message (it does not start with MSH)")
        try:
            self.raw = hl7.parse(text)
            self.msh = self.raw.segment("MSH")
        except Exception as exc:  # python-hl7 raises plain ParseException/KeyError/IndexError
            raise HL7Problem(f"not an HL7 v2 message ({exc.__class__.__name__})") from None
        encoding = self.field(self.msh, 2)
        if not 3 <= len(encoding) <= 5 or any(c.isalnum() or c.isspace() for c in encoding):
            raise HL7Problem(
                f"not an HL7 v2 message: MSH-2 {encoding[:10]!r} is not the encoding "
                "characters (^~\\&)"
            )
        self.comp, self.rep = encoding[0], encoding[1]

    # -- fields ------------------------------------------------------------------------

    def field(self, segment: Any, n: int) -> str:
        """Field ``n`` of a segment as sent (escaped), or "" when absent."""
        try:
            return _text(segment(n))
        except (IndexError, KeyError):
            return ""

    def comps(self, segment: Any, n: int) -> list[str]:
        """The components of the first repetition of field ``n``, unescaped."""
        raw = self.field(segment, n).split(self.rep, 1)[0]
        return [self.unescape(c) for c in raw.split(self.comp)]

    def comp_at(self, segment: Any, n: int, i: int) -> str:
        """Component ``i`` (1-based) of field ``n``, unescaped and stripped."""
        parts = self.comps(segment, n)
        return parts[i - 1].strip() if len(parts) >= i else ""

    def unescape(self, value: str) -> str:
        try:
            return _text(self.raw.unescape(value))
        except Exception:  # a malformed escape sequence: keep the text as sent
            return value

    def segments(self, name: str) -> list[Any]:
        return [s for s in self.raw if _text(s(0)) == name]

    @property
    def control_id(self) -> str:
        return self.field(self.msh, 10)

    @property
    def kind(self) -> tuple[str, str]:
        """MSH-9 message code and trigger event, e.g. ("ORU", "R01")."""
        return (self.comp_at(self.msh, 9, 1).upper(), self.comp_at(self.msh, 9, 2).upper())

    # -- OBX rows ----------------------------------------------------------------------

    def groups(self) -> list[tuple[Any | None, list[Row]]]:
        """The OBX rows under each OBR (an OBR opens a group; OBX before any OBR fall in a
        group of their own), since OBX-4 is unique only within one OBR."""
        out: list[tuple[Any | None, list[Row]]] = [(None, [])]
        for segment in self.raw:
            name = _text(segment(0))
            if name == "OBR":
                out.append((segment, []))
            elif name == "OBX":
                out[-1][1].append(self.row(segment))
        return [g for g in out if g[0] is not None or g[1]]

    def row(self, obx: Any) -> Row:
        code = self.comps(obx, 3)
        reps = self.field(obx, 5).split(self.rep)
        return Row(
            set_id=self.field(obx, 1),
            value_type=self.field(obx, 2).strip().upper(),
            code=code[0].strip(),
            refid=code[1].strip() if len(code) > 1 else "",
            system=code[2].strip() if len(code) > 2 else "",
            path=_path(self.field(obx, 4)),
            value=self.comps(obx, 5),
            repeats=[self.unescape(r) for r in reps],
            unit=self.comps(obx, 6),
            flags=[f.strip().upper() for f in self.field(obx, 8).split(self.rep) if f.strip()],
            status=self.field(obx, 11).strip().upper(),
            time=self.field(obx, 14).strip(),
            method=self.comp_at(obx, 17, 1).upper(),
            equipment=self.comps(obx, 18),
        )


def _path(text: str) -> tuple[int, ...]:
    parts = text.strip().split(".")
    if not text.strip() or not all(p.isdigit() and len(p) <= 9 for p in parts):
        return ()
    return tuple(int(p) for p in parts)


# -- timestamps ---------------------------------------------------------------------------

_DTM = re.compile(
    r"(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.(\d{1,4}))?(?:([+-])(\d\d)(\d\d))?\Z"
)


def _pieces(value: str, what: str) -> tuple[list[int | None], str, tuple[str, int, int] | None]:
    m = _DTM.match(value.strip())
    if m is None or (m[7] and m[6] is None):
        raise HL7Problem(f"{what} {value!r} is not an HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])")
    numbers = [int(g) if g is not None else None for g in m.groups()[:6]]
    offset = (m[8], int(m[9]), int(m[10])) if m[8] else None
    return numbers, m[7] or "", offset


def _checked(text: str, what: str, value: str) -> str:
    try:
        parse_ts(text)
    except QuantityError as exc:
        raise HL7Problem(f"{what} {value!r}: {exc.reason}") from None
    return text


def _local(
    y: int, mo: int, d: int, h: int, mi: int, s: int, zone: tzinfo, what: str, value: str
) -> datetime:
    """A wall-clock time of the sender's configured zone; one the zone skips or repeats (a
    daylight-saving change) is refused: either choice would be a guess."""
    try:
        first = datetime(y, mo, d, h, mi, s, tzinfo=zone)
    except ValueError as exc:
        raise HL7Problem(f"{what} {value!r} is not a date/time: {exc}") from None
    second = first.replace(fold=1)
    back = first.astimezone(UTC).astimezone(zone)
    if first.utcoffset() != second.utcoffset() or back.replace(tzinfo=None) != first.replace(
        tzinfo=None
    ):
        raise HL7Problem(
            f"{what} {value!r} has no UTC offset and falls in a daylight-saving change of "
            f"{zone}: it is ambiguous"
        )
    return first


def hl7_time(value: str, what: str = "the time", *, zone: tzinfo | None = None) -> str:
    """An HL7 ``DTM`` of at least minute precision as RFC 3339, e.g. ``20261121080310+0000``
    -> ``2026-11-21T08:03:10+00:00``. Without an offset the sender's configured zone is
    used, when the site gives one; otherwise it is refused: time zones are not guessed."""
    (y, mo, d, h, mi, s), frac, offset = _pieces(value, what)
    if mo is None or d is None or h is None or mi is None:
        raise HL7Problem(f"{what} {value!r} is not precise to the minute")
    assert y is not None  # the pattern requires the year
    s = s or 0
    if offset is None:
        if zone is None:
            raise HL7Problem(
                f"{what} {value!r} has no UTC offset; CalGuard does not guess time zones "
                "(the listener's time_zone option names the sender's zone)"
            )
        local = _local(y, mo, d, h, mi, s, zone, what, value)
        delta = local.utcoffset() or timedelta(0)
        minutes = int(delta.total_seconds()) // 60
        offset = ("+" if minutes >= 0 else "-", abs(minutes) // 60, abs(minutes) % 60)
    sign, oh, om = offset
    try:
        datetime(y, mo, d, h, mi, s)
    except ValueError as exc:
        raise HL7Problem(f"{what} {value!r} is not a date/time: {exc}") from None
    fraction = f".{frac}" if frac else ""
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{fraction}{sign}{oh:02d}:{om:02d}"
    return _checked(text, what, value)


def birth_time(value: str, *, zone: tzinfo | None, not_after: str) -> str:
    """PID-7 as RFC 3339. A birth date without a time is taken as the last moment that date
    exists anywhere on Earth (23:59:59 at UTC-12:00), never after ``not_after``: an infant
    is never taken as older than it is, so age limits hold at least as long as they
    should. A birth time without an offset needs the sender's zone, like any time."""
    (y, mo, d, h, mi, _s), _frac, offset = _pieces(value, "PID-7 (birth)")
    if mo is None or d is None:
        raise HL7Problem(f"PID-7 (birth) {value!r} does not give the day of birth")
    if h is not None:
        if mi is None:
            value = value.strip()[:10] + "00" + value.strip()[10:]
        return hl7_time(value, "PID-7 (birth)", zone=zone)
    assert y is not None
    try:
        day = datetime(y, mo, d, 23, 59, 59)
    except ValueError as exc:
        raise HL7Problem(f"PID-7 (birth) {value!r} is not a date: {exc}") from None
    if offset is not None:
        sign, oh, om = offset
        tz: tzinfo = timezone((1 if sign == "+" else -1) * timedelta(hours=oh, minutes=om))
    elif zone is not None:
        tz = zone
    else:
        tz = timezone(timedelta(hours=-12))
    latest = day.replace(tzinfo=tz)
    bound = datetime.fromisoformat(not_after)
    text = min(latest, bound).isoformat()
    return _checked(text, "PID-7 (birth)", value)


# -- units --------------------------------------------------------------------------------

#: OBX-6 MDC unit codes (IEEE 11073-10101, as the framework and vendors send them)
MDC_UNITS = {
    "265266": "ml/h",  # MDC_DIM_MILLI_L_PER_HR
    "265234": "ml/min",  # MDC_DIM_MILLI_L_PER_MIN
    "263762": "ml",  # MDC_DIM_MILLI_L
    "264306": "mg/ml",  # MDC_DIM_MILLI_G_PER_ML
    "263875": "kg",  # MDC_DIM_KILO_G
    "263872": "g",  # MDC_DIM_X_G
    "263890": "mg",  # MDC_DIM_MILLI_G
    "266016": "mmHg",  # MDC_DIM_MMHG
}
MDC_UNIT_REFIDS = {
    "MDC_DIM_MILLI_L_PER_HR": "ml/h",
    "MDC_DIM_MILLI_L_PER_MIN": "ml/min",
    "MDC_DIM_MILLI_L": "ml",
    "MDC_DIM_MILLI_G_PER_ML": "mg/ml",
    "MDC_DIM_KILO_G": "kg",
    "MDC_DIM_X_G": "g",
    "MDC_DIM_MILLI_G": "mg",
    "MDC_DIM_MMHG": "mmHg",
}
#: UCUM's bracketed atoms, written the way CalGuard's units module reads them
_UCUM_ATOMS = {"[lb_av]": "lb", "[oz_av]": "oz", "mm[Hg]": "mmHg", "cm[H2O]": "cmH2O"}
_UNIT_TEXT = re.compile(r"[A-Za-zµ][A-Za-z0-9µ/.*]{0,19}\Z")


def _ucum(text: str) -> str | None:
    for atom, plain in _UCUM_ATOMS.items():
        text = text.replace(atom, plain)
    text = text.strip()
    return text if _UNIT_TEXT.match(text) and any(c.isalpha() for c in text) else None


def unit_of(parts: list[str]) -> str | None:
    """The unit of an OBX-6 ``CWE`` as CalGuard writes it, or None when it is not known.

    Each triplet (identifier^text^coding system) is read in turn: an MDC code or REFID from
    the table above, or UCUM (``mL/h``) in either position - also a bare unit with no coding
    system, as some gateways send. The units module checks the dimension later."""
    parts = [p.strip() for p in parts]
    triplets = [parts[i : i + 3] for i in (0, 3) if len(parts) > i and any(parts[i : i + 3])]
    for triplet in triplets:
        ident, text, system = ([*triplet, "", "", ""])[:3]
        if system.upper() == "MDC" or ident in MDC_UNITS or text in MDC_UNIT_REFIDS:
            found = MDC_UNITS.get(ident) or MDC_UNIT_REFIDS.get(text)
            if found:
                return found
            if system.upper() == "MDC":
                continue  # an MDC unit CalGuard has no entry for: try the other triplet
        if system.upper() in ("UCUM", "") or system.upper().startswith("UCUM"):
            for candidate in (ident, text):
                unit = _ucum(candidate) if candidate else None
                if unit:
                    return unit
    return None
