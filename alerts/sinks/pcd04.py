"""HL7 IHE ACM PCD-04 sink: alarm lines as ``ORU^R40`` over MLLP to an alert manager.

    mllp://127.0.0.1:2576

Codes from the IHE PCD Technical Framework (protocols.md section 2): OBR-4
``196616^MDC_EVT_ALARM^MDC``; OBX rows ``1.0.0.0.n``: the event (occlusion is
``196940^MDC_EVT_FLUID_LINE_OCCL``; CalGuard's own rules use their rule id in the local
coding system ``CALGUARD``), ``68480`` MDC_ATTR_ALERT_SOURCE, ``68481`` MDC_ATTR_EVENT_PHASE,
``68482`` MDC_ATTR_ALARM_STATE, ``68483`` MDC_ATTR_ALARM_INACTIVATION_STATE, ``68484``
MDC_ATTR_ALARM_PRIORITY (PH/PM/PL), ``68485`` MDC_ATTR_ALERT_TYPE (SP clinical, ST
technical); the nurse's message in an NTE. Every message of one alarm carries its alert
id (OBR-2/3), from ``start`` to ``end``. ``AA`` is delivered, ``AE``/``AR`` refused
(logged undelivered), silence retried.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, ClassVar

from calguard.alerts.alarms import category
from calguard.alerts.sinks.base import Delivery, Refused, Sink, SinkError
from calguard.config.options import OptionSpec
from calguard.monitor.timeutil import format_ts
from hl7.mllp import open_hl7_connection

__all__ = ["Pcd04Sink", "pcd04_message"]

_EVENTS = {"occlusion": ("196940", "MDC_EVT_FLUID_LINE_OCCL", "MDC")}
#: alarm line state -> (event phase, alarm state, inactivation state)
_PHASES = {
    "raised": ("start", "active", "enabled"),
    "escalated": ("continue", "active", "enabled"),
    "resumed": ("continue", "active", "enabled"),
    "acknowledged": ("continue", "active", "alert-acknowledged"),
    "paused": ("continue", "active", "audio-paused"),
    "overridden": ("continue", "active", "alarm-paused"),
    "cleared": ("end", "inactive", "enabled"),
    "reset": ("end", "inactive", "enabled"),
}
_PRIORITY = {"high": "PH", "medium": "PM", "low": "PL"}
_control_ids = itertools.count(1)
_escape = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}
)


def _hl7_time(us: int) -> str:
    ts = format_ts(us)  # 2026-11-21T08:03:10.5Z
    return ts[:19].replace("-", "").replace(":", "").replace("T", "") + "+0000"


def pcd04_message(item: Delivery, *, facility: str = "NICU") -> str:
    tr = item.tr
    d = tr.description
    phase, state, inactivation = _PHASES.get(tr.state, ("continue", "active", "enabled"))
    if tr.state == "cleared" and tr.latched:
        phase, state = "continue", "latched"
    code, name, system = _EVENTS.get(
        tr.rule, (tr.rule, tr.rule.upper().replace("-", "_"), "CALGUARD")
    )
    when = _hl7_time(tr.t)
    source = "/".join(x for x in (d.pump, d.channel) if x) or d.line or d.bed or "calguard"
    kind = "ST" if category(tr.rule) == "technical" else "SP"
    e = str.translate
    segments = [
        f"MSH|^~\\&|CALGUARD^0000000000000001^EUI-64|{facility}|ACM^^|{facility}|{when}||"
        f"ORU^R40^ORU_R40|CG{next(_control_ids):010d}|P|2.6|||AL|NE||UNICODE UTF-8|||"
        "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO",
        f"PV1||I|{e(facility, _escape)}^^{e(d.bed or '', _escape)}",
        f"OBR|1|{tr.alert}^CALGUARD|{tr.alert}^CALGUARD|196616^MDC_EVT_ALARM^MDC|||{when}",
        f"OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|1.0.0.0.1|{code}^{e(name, _escape)}^{system}||||"
        f"{_PRIORITY[tr.priority]}~{kind}|||F|||{when}",
        f"OBX|2|ST|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.0.2|{e(source, _escape)}||||||F",
        f"OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.0.0.0.3|{phase}||||||F",
        f"OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.4|{state}||||||F",
        f"OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.0.5|{inactivation}||||||F",
        f"OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.0.6|{_PRIORITY[tr.priority]}||||||F",
        f"OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.0.7|{kind}||||||F",
        f"NTE|1||{e(d.message, _escape)}",
    ]
    return "\r".join(segments) + "\r"


class Pcd04Sink(Sink):
    scheme = "mllp"
    options: ClassVar[dict[str, OptionSpec]] = {
        "facility": OptionSpec(str, "NICU", "the unit's name in MSH-4 and PV1-3"),
        "ack_timeout": OptionSpec(float, 10.0, "seconds to wait for the ACK"),
    }

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.host = self.parts.hostname or "127.0.0.1"
        self.port = self.parts.port or 2575
        self._reader: Any = None
        self._writer: Any = None
        self.sent: list[str] = []  # control ids acknowledged (for tests and the view)

    async def _open(self) -> None:
        try:
            self._reader, self._writer = await open_hl7_connection(
                self.host, self.port, encoding="utf-8"
            )
        except OSError as exc:
            raise SinkError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    async def _deliver(self, item: Delivery) -> None:
        message = pcd04_message(item, facility=self.config["facility"])
        try:
            self._writer.writeblock(message.encode("utf-8"))
            await self._writer.drain()
            async with asyncio.timeout(self.config["ack_timeout"]):
                block = await self._reader.readblock()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise SinkError(f"no ACK: {type(exc).__name__} {exc}") from exc
        ack = block.decode("utf-8", "replace")
        msa = next((s for s in ack.split("\r") if s.startswith("MSA|")), "")
        fields = msa.split("|")
        code = fields[1] if len(fields) > 1 else ""
        if code in ("AA", "CA"):
            return
        if code in ("AE", "AR", "CE", "CR"):
            raise Refused(f"{code}: {fields[3] if len(fields) > 3 else 'no reason given'}")
        raise SinkError(f"an answer that is not an ACK: {ack[:80]!r}")

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
