"""IHE PCD-01 (``ORU^R01``) and PCD-10 (``ORU^R42``) from pump gateways -> readings.

A gateway reports many pumps: each pump is one MDS (``<mds>.0.0.0``) named by OBX-18 of
its MDS row (``P2449^^0012210000000000^EUI-64``), else by ``MDC_ATTR_SYS_ID``; MSH-3 names
the gateway and is never taken for a pump. Inside a pump, each VMD (an infusion module) has
a delivery-information object (``x.y.1``: what the pump does now - infusing status, the
current rate, the active source) and fluid sources (``x.y.2`` primary, ``x.y.3`` secondary
or piggyback: different infusions, so different CalGuard channels). Channel objects are
recognised by their device row's REFID, or by their number when they have none.

A source becomes one reading. Its channel is the source's own short label (``A``, ``B``)
when the pump gives one, else the VMD's letter (VMD 1 is ``A``) for the primary and
``A-secondary`` for the secondary, so a primary and its piggyback stay two channels and a
label keeps a channel stable when the gateway renumbers its VMDs. Its status comes from the
status observations, the most cautious word winning (alarm, paused, stopped, then
infusing): a pump that says it is not delivering is never read as infusing. Its rate is the
delivery information's current rate while the source delivers (what flows now), else the
programmed rate of the source (what will flow when it restarts).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from calguard.drivers import mdc
from calguard.drivers.hl7v2 import HL7Problem, Message, Row, hl7_time, unit_of

__all__ = ["ChannelReading", "Pcd01", "translate_pcd01"]

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_SHORT_LABEL = re.compile(r"[A-Za-z0-9]{1,8}\Z")
_GENERIC_LABELS = {"primary", "secondary", "piggyback", "channel", "source"}
_ID = re.compile(r"\S(?:.{0,62}\S)?\Z")
_STATUS_ORDER = ("alarm", "paused", "stopped", "infusing")


@dataclass
class ChannelReading:
    """One source of one pump as a reading (without the alarm, which the driver merges from
    this message's own alarm condition and the gateway's PCD-04 alarms)."""

    pump: str
    channel: str
    vmd: int
    kind: str  # primary | secondary
    reading: dict[str, Any]
    alarm: str | None = None


@dataclass
class Pcd01:
    control_id: str
    readings: list[ChannelReading] = field(default_factory=list)
    #: (pump, channel) when the problem concerns a known pump channel, and the reason
    problems: list[tuple[tuple[str, str] | None, str]] = field(default_factory=list)


# -- the containment tree -------------------------------------------------------------------


@dataclass
class _Node:
    row: Row | None = None  # the device row (trailing zeros)
    metrics: list[Row] = field(default_factory=list)


@dataclass
class _Vmd(_Node):
    channels: dict[int, _Node] = field(default_factory=dict)


@dataclass
class _Mds(_Node):
    vmds: dict[int, _Vmd] = field(default_factory=dict)


def _tree(rows: list[Row]) -> dict[int, _Mds]:
    tree: dict[int, _Mds] = {}
    for row in rows:
        if not row.path:
            continue
        m, v, c, metric = ((*row.path, 0, 0, 0))[:4]
        mds = tree.setdefault(m, _Mds())
        if v == 0:
            node: _Node = mds
        else:
            vmd = mds.vmds.setdefault(v, _Vmd())
            node = vmd if c == 0 else vmd.channels.setdefault(c, _Node())
        if metric == 0 and len(row.path) <= 4:
            node.row = node.row or row
        else:
            node.metrics.append(row)
    return tree


def _first(rows: list[Row], term: mdc.Term) -> Row | None:
    return next((r for r in rows if term.matches(r)), None)


_PUMP_METRICS = (
    mdc.INFUSING_STATUS,
    mdc.PUMP_STAT,
    mdc.DELIVERY_STATUS,
    mdc.FLOW_CURRENT,
    mdc.FLOW,
    mdc.DRUG_NAME,
)


def _has_pump_metrics(rows: list[Row]) -> bool:
    return any(t.matches(r) for r in rows for t in _PUMP_METRICS)


# -- one message ----------------------------------------------------------------------------


def translate_pcd01(message: Message, *, zone: tzinfo | None = None) -> Pcd01:
    """Every pump of a PCD-01/PCD-10 message as readings and per-channel problems;
    ``HL7Problem`` when the message as a whole is unusable."""
    sent = hl7_time(message.field(message.msh, 7), "MSH-7", zone=zone)
    result = Pcd01(message.control_id)
    seen: set[str] = set()
    for obr, rows in message.groups():
        observed = message.field(obr, 7).strip() if obr is not None else ""
        for number, mds in sorted(_tree(rows).items()):
            _Device(message, number, mds, (observed, sent), zone, result, seen).translate()
    return result


class _Device:
    def __init__(
        self,
        message: Message,
        number: int,
        mds: _Mds,
        times: tuple[str, str],
        zone: tzinfo | None,
        result: Pcd01,
        seen: set[str],
    ) -> None:
        self.message, self.number, self.mds = message, number, mds
        self.times, self.zone, self.result, self.seen = times, zone, result, seen

    def default_time(self) -> str:
        """OBR-7 (read only when a reading needs it), else MSH-7."""
        observed, sent = self.times
        return hl7_time(observed, "OBR-7", zone=self.zone) if observed else sent

    def infusion_vmds(self) -> dict[int, _Vmd]:
        """The VMDs that carry infusion data (a device report, PCD-15, carries none)."""
        out = {}
        for v, vmd in sorted(self.mds.vmds.items()):
            kinds = {mdc.channel_kind(c, ch.row) for c, ch in vmd.channels.items()}
            rows = vmd.metrics + [r for ch in vmd.channels.values() for r in ch.metrics]
            if kinds & {"delivery", "primary", "secondary"} and _has_pump_metrics(rows):
                out[v] = vmd
            elif _has_pump_metrics(vmd.metrics):
                out[v] = vmd  # a flattened pump: its metrics sit on the VMD itself
        if not out and _has_pump_metrics(self.mds.metrics):
            out[1] = _Vmd(row=None, metrics=self.mds.metrics)  # flattened to the MDS
        return out

    def translate(self) -> None:
        vmds = self.infusion_vmds()
        if not vmds:
            return  # not a pump, or a pump's device report: nothing CalGuard monitors
        pump = self.identity()
        if pump is None:
            return
        names: set[str] = set()
        for v, vmd in vmds.items():
            for reading in _Module(self, pump, v, vmd).readings():
                if reading.channel in names:
                    self.result.problems.append(
                        (
                            (pump, reading.channel),
                            f"two sources of pump {pump} are both channel {reading.channel}",
                        )
                    )
                    continue
                names.add(reading.channel)
                self.result.readings.append(reading)

    def identity(self) -> str | None:
        """OBX-18 of the MDS row, else MDC_ATTR_SYS_ID; None (and a problem) otherwise."""
        where = f"the pump reported as MDS {self.number}"
        candidates: list[tuple[str, str]] = []
        row = self.mds.row
        if row is not None and row.equipment:
            eq = [c.strip() for c in row.equipment] + ["", "", ""]
            if eq[0]:
                candidates.append((eq[0], "OBX-18 of its MDS row"))
            elif eq[3].upper().replace("-", "") == "EUI64" and _device_eui(eq[2]):
                candidates.append((eq[2], "OBX-18 of its MDS row"))
        all_rows = self.mds.metrics + [r for v in self.mds.vmds.values() for r in v.metrics]
        sys_id = _first(all_rows, mdc.SYS_ID)
        if sys_id is not None and sys_id.text:
            candidates.append((sys_id.text, "MDC_ATTR_SYS_ID"))
        if not candidates:
            self.result.problems.append(
                (
                    None,
                    f"{where} names itself nowhere: no OBX-18 on its MDS row "
                    f"({self.number}.0.0.0) and no MDC_ATTR_SYS_ID (MSH-3 names the gateway, "
                    "not a pump)",
                )
            )
            return None
        pump, source = candidates[0]
        if not _ID.match(pump):
            self.result.problems.append(
                (None, f"{where}: its id {pump!r} from {source} is not 1-64 characters")
            )
            return None
        if pump in self.seen:
            self.result.problems.append((None, f"pump {pump} is reported twice in one message"))
            return None
        self.seen.add(pump)
        return pump


def _device_eui(text: str) -> bool:
    """An EUI-64 that names a device: 16 hex digits whose 40-bit extension is not zero
    (B. Braun sends ``0012210000000000``, the company id alone, for every pump)."""
    text = text.strip()
    return bool(re.fullmatch(r"[0-9A-Fa-f]{16}", text)) and int(text[6:], 16) != 0


@dataclass
class _Source:
    number: int
    kind: str  # primary | secondary
    node: _Node
    label: str


class _Module:
    """One infusion VMD: its delivery information and its sources."""

    def __init__(self, device: _Device, pump: str, number: int, vmd: _Vmd) -> None:
        self.device, self.pump, self.number, self.vmd = device, pump, number, vmd
        self.delivery = _Node()
        self.sources: list[_Source] = []
        self.doses: list[_Node] = []
        for c, node in sorted(vmd.channels.items()):
            kind = mdc.channel_kind(c, node.row)
            if kind == "delivery" and self.delivery.row is None and not self.delivery.metrics:
                self.delivery = node
            elif kind in ("primary", "secondary"):
                label_row = _first(node.metrics, mdc.SOURCE_LABEL)
                self.sources.append(_Source(c, kind, node, label_row.text if label_row else ""))
            elif kind == "dose":
                self.doses.append(node)
        if not self.sources:  # flattened: the VMD's own metrics are its one source
            self.sources.append(_Source(0, "primary", _Node(vmd.row, vmd.metrics), ""))
        active = _first(self.delivery.metrics + vmd.metrics, mdc.ACTIVE_SOURCES)
        self.active = {_word(r) for r in (active.repeats if active else []) if _word(r)}

    # -- naming -------------------------------------------------------------------------

    def base(self) -> str:
        primary = next((s for s in self.sources if s.kind == "primary"), None)
        if primary is not None and _short(primary.label):
            return primary.label
        return chr(ord("A") + self.number - 1) if 1 <= self.number <= 26 else str(self.number)

    def name(self, source: _Source) -> str:
        if _short(source.label):
            return source.label
        return self.base() if source.kind == "primary" else f"{self.base()}-{source.kind}"

    # -- readings -----------------------------------------------------------------------

    def readings(self) -> list[ChannelReading]:
        out = []
        for source in self.sources:
            channel = self.name(source)
            try:
                reading, alarm = self.reading(source, channel)
            except HL7Problem as exc:
                self.device.result.problems.append(((self.pump, channel), str(exc)))
                continue
            out.append(ChannelReading(self.pump, channel, self.number, source.kind, reading, alarm))
        return out

    def is_active(self, source: _Source) -> bool | None:
        """Whether this source is the one delivering: by MDC_DEV_PUMP_ACTIVE_SOURCES, or
        because it is the only one; None when the pump does not say."""
        if self.active:
            if f"pump-source-info-{source.kind}" in self.active:
                return True
            return self.bolus_target() is source
        return True if len(self.sources) == 1 else None

    def bolus_target(self) -> _Source | None:
        """The source a running bolus/loading/PCA dose comes from: the one whose label the
        dose group repeats, else the primary."""
        if not self.active & mdc.BOLUS_SOURCES:
            return None
        labels = {r.text for d in self.doses for r in d.metrics if mdc.SOURCE_LABEL.matches(r)}
        for source in self.sources:
            if source.label and source.label in labels:
                return source
        return next((s for s in self.sources if s.kind == "primary"), None)

    def status(self, source: _Source) -> str | None:
        evidence: list[str] = []
        active = self.is_active(source)
        for row in self.delivery.metrics + self.vmd.metrics:
            if mdc.INFUSING_STATUS.matches(row) or mdc.PUMP_STAT.matches(row):
                word = self.word(row)
                if word == "infusing" and active is not True:
                    continue  # the pump infuses, but from which source it does not say
                if word is not None:
                    evidence.append(word)
        if active is False:
            evidence.append("stopped")
        for row in source.node.metrics:
            if (
                mdc.DELIVERY_STATUS.matches(row)
                or mdc.NOT_DELIVERING_REASON.matches(row)
                or mdc.PUMP_STAT.matches(row)
                or mdc.INFUSING_STATUS.matches(row)
            ):
                word = self.word(row)
                if word is not None:
                    evidence.append(word)
        return next((s for s in _STATUS_ORDER if s in evidence), None)

    def word(self, row: Row) -> str | None:
        status, known = mdc.status_of(row)
        if not known:
            log.info(
                "pump %s: %s says %r, a status CalGuard does not know; it is not taken either way",
                self.pump,
                row.where(),
                row.coded,
            )
        return status

    def reading(self, source: _Source, channel: str) -> tuple[dict[str, Any], str | None]:
        status = self.status(source)
        rate_row = self.rate_row(source, status)
        reading: dict[str, Any] = {
            "t": self.time(rate_row, source),
            "type": "reading",
            "pump": self.pump,
            "channel": channel,
            "rate": _quantity(rate_row),
        }
        if status is not None:
            reading["status"] = status
        mode = _first(source.node.metrics, mdc.DELIVERY_MODE)
        if self.bolus_target() is source:
            reading["mode"] = "bolus"
        elif mode is not None and mode.coded:
            reading["mode"] = mdc.delivery_mode(mode.coded)
        drug = _first(source.node.metrics, mdc.DRUG_NAME) or _first(self.vmd.metrics, mdc.DRUG_NAME)
        if drug is not None and drug.text:
            reading["drug"] = drug.text
        for key, term in (
            ("concentration", mdc.CONCENTRATION),
            ("volume_infused", mdc.VOLUME_DELIVERED),
        ):
            row = _first(source.node.metrics, term)
            if row is not None and row.value and row.value[0].strip():
                reading[key] = _quantity(row)
        return reading, self.alarm(source)

    def rate_row(self, source: _Source, status: str | None) -> Row:
        current = _first(source.node.metrics, mdc.FLOW_CURRENT) or _first(
            self.delivery.metrics + self.vmd.metrics,
            mdc.FLOW_CURRENT,
        )
        if current is None:  # in the 2010 framework the delivery channel's total current rate
            current = _first(self.delivery.metrics, mdc.FLOW)
        programmed = next(
            (
                r
                for r in source.node.metrics
                if mdc.is_programmed_rate(r) and not mdc.FLOW_CURRENT.matches(r)
            ),
            None,
        )
        active = self.is_active(source)
        if current is not None and active and status in ("infusing", None):
            return current  # delivering: what flows now
        if programmed is not None:
            return programmed  # not delivering (or not known to be): what is programmed
        if current is not None and active is not False:
            return current
        raise HL7Problem(
            "no rate for this channel: neither a current rate (MDC_FLOW_FLUID_PUMP_CURRENT) "
            "while it delivers nor a programmed rate (MDC_FLOW_FLUID_PUMP)"
        )

    def time(self, row: Row, source: _Source) -> str:
        """OBX-14 of the row, else of its nearest ancestor that has one (TF-2 B.8.7), else
        OBR-7, else MSH-7."""
        group = self.delivery if row in self.delivery.metrics else source.node
        chain = [row, group.row, self.vmd.row, self.device.mds.row]
        for item in chain:
            if item is not None and item.time:
                return hl7_time(item.time, f"OBX-14 of {item.where()}", zone=self.device.zone)
        return self.device.default_time()

    def alarm(self, source: _Source) -> str | None:
        """The pump's own alarm condition (MDC_ATTR_AL_COND) for this source: one in the
        source itself, or one of the VMD whose alert source (if named) is this source."""
        for row in source.node.metrics:
            if mdc.ALARM_CONDITION.matches(row):
                return _alarm(row)
        rows = self.vmd.metrics + self.delivery.metrics
        for i, row in enumerate(rows):
            if not mdc.ALARM_CONDITION.matches(row):
                continue
            following = rows[i + 1 : i + 2]
            if following and mdc.ALERT_SOURCE.matches(following[0]):
                path = following[0].text.split(".")
                if (
                    len(path) >= 3
                    and path[2].isdigit()
                    and int(path[2])
                    not in (
                        0,
                        source.number,
                    )
                ):
                    continue  # the condition of another source of this module
            return _alarm(row)
        return None


def _alarm(row: Row) -> str:
    refid = row.value[1] if len(row.value) > 1 else row.value[0] if row.value else ""
    text = row.value[8] if len(row.value) > 8 else ""
    return mdc.alarm_name(refid, text)


def _word(repetition: str) -> str:
    parts = [p.strip().lower() for p in repetition.split("^")]
    return parts[1] if len(parts) > 1 and parts[1] else parts[0]


def _short(label: str) -> bool:
    return bool(_SHORT_LABEL.match(label)) and label.lower() not in _GENERIC_LABELS


def _quantity(row: Row) -> str:
    number = row.value[0].strip() if row.value else ""
    if not _NUMBER.match(number):
        raise HL7Problem(f"{row.where()} has the value {number!r}, not a number")
    unit = unit_of(row.unit)
    if unit is None:
        shown = "^".join(row.unit).strip("^") or "none"
        raise HL7Problem(f"{row.where()} has a unit CalGuard does not know ({shown})")
    return f"{number} {unit}"
