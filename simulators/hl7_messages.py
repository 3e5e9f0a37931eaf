"""HL7 v2 messages as pump gateways and hospital systems send them, for the simulated ward.

``pcd01_message`` (telemetry), ``pcd04_message`` (an alarm's start or end) and
``adt_message`` (admit, transfer, discharge ...) in the vendor styles of
``simulators/hl7_gateway.py``: ``ihe``, the IHE PCD framework's shape (one gateway message,
each pump its own MDS named by OBX-18), and ``bbraun``, a B. Braun SpaceStation as its
captures in tests/conformance/ show it (one message per pump behind one station EUI-64,
``P<id>`` in OBX-18, ``MDC_ATTR_SYS_ID``, the current rate in the delivery information;
PCD-04 naming the pump without its letter and ending an alarm under a new parent id).
"""

from __future__ import annotations

import uuid
from typing import Any

from calguard.monitor.timeutil import to_datetime

__all__ = ["STYLES", "adt_message", "hl7_stamp", "pcd01_message", "pcd04_message"]

STYLES = ("bbraun", "ihe")
_UNITS = {
    "ml/h": "265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM",
    "ml/min": "265234^MDC_DIM_MILLI_L_PER_MIN^MDC^mL/min^mL/min^UCUM",
}
_CONC_UNIT = "264306^MDC_DIM_MILLI_G_PER_ML^MDC^mg/mL^mg/mL^UCUM"
_STATION = "PAT_DEVICE_BBRAUN^0012211839000001^EUI-64"
_BBRAUN_EUI = "0012210000000000"  # B. Braun's company id, the same for every pump
_IHE_GATEWAY = "CALGUARD_SIM_GW^00000000000C0A11^EUI-64"


def hl7_stamp(us: int) -> str:
    return to_datetime(us).strftime("%Y%m%d%H%M%S") + "+0000"


def _channel(name: str) -> tuple[int, str]:
    """Channel ``B`` -> (VMD 2, primary); ``A-secondary`` -> (VMD 1, secondary)."""
    letter, _, source = name.partition("-")
    vmd = ord(letter[:1].upper()) - ord("A") + 1 if letter[:1].isalpha() else 1
    return max(vmd, 1), source or "primary"


class _Rows:
    """OBX segments numbered 1..n, as a gateway sends them."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def add(
        self,
        kind: str,
        code: str,
        path: str,
        value: str = "",
        unit: str = "",
        status: str = "R",
        equipment: str = "",
    ) -> None:
        fields = [
            "OBX",
            str(len(self.rows) + 1),
            kind,
            code,
            path,
            value,
            unit,
            "",
            "",
            "",
            "",
            status,
            "",
            "",
            "",
            "",
            "",
            "",
            equipment,
        ]
        self.rows.append("|".join(fields).rstrip("|"))

    def device(self, code: str, path: str, equipment: str = "") -> None:
        self.add("", code, path, status="X", equipment=equipment)


def _state(s: dict[str, Any]) -> tuple[str, str, str | None]:
    """(infusing status, delivery status, not-delivering reason) of a channel's settings."""
    status = s.get("status", "stopped")
    if status == "infusing":
        return "pump-status-infusing", "pump-delivery-status-delivering", None
    reason = {"alarm": "pump-stopped-alarming", "paused": "pump-stopped-by-clinician"}.get(
        status, "pump-stopped-not-specified"
    )
    return "pump-status-not-infusing", "pump-delivery-status-not-delivering", reason


def _rate(s: dict[str, Any]) -> tuple[str, str]:
    number, unit = str(s.get("rate", "0 ml/h")).split()
    return number, _UNITS.get(unit.lower(), unit)


def _source_rows(rows: _Rows, prefix: str, kind: str, s: dict[str, Any], bbraun: bool) -> None:
    name = "MDC_DEV_PUMP_INFUSATE_SOURCE_" + kind.upper()
    rows.device(f"{'70071' if kind == 'primary' else '70075'}^{name}^MDC", f"{prefix}.0")
    _status, delivery, reason = _state(s)
    number, unit = _rate(s)
    rows.add("ST", "158012^MDC_DEV_PUMP_SOURCE_CHANNEL_LABEL^MDC", f"{prefix}.1", kind.title())
    if "drug" in s:
        rows.add("ST", "184514^MDC_DRUG_NAME_LABEL^MDC", f"{prefix}.2", str(s["drug"]))
    rows.add("NM", "157784^MDC_FLOW_FLUID_PUMP^MDC", f"{prefix}.5", number, unit)
    if "concentration" in s:
        rows.add(
            "NM",
            "157760^MDC_CONC_DRUG^MDC",
            f"{prefix}.7",
            str(s["concentration"]).split()[0],
            _CONC_UNIT,
        )
    mode = {"bolus": "bolus", "intermittent": "multi-dosing"}.get(s.get("mode", ""), "continuous")
    prefix_name = "MDC_PUMP" if bbraun else "MDC_DEV_PUMP"
    rows.add(
        "CWE",
        f"158008^{prefix_name}_PROGRAM_DELIVERY_MODE^MDC",
        f"{prefix}.21",
        f"^pump-program-delivery-mode-{mode}",
    )
    rows.add(
        "CWE", f"158005^{prefix_name}_CURRENT_DELIVERY_STATUS^MDC", f"{prefix}.22", f"^{delivery}"
    )
    if reason:
        rows.add(
            "CWE", f"158006^{prefix_name}_NOT_DELIVERING_REASON^MDC", f"{prefix}.23", f"^{reason}"
        )


def _vmd_rows(
    rows: _Rows,
    mds: int,
    vmd: int,
    sources: dict[str, dict[str, Any]],
    bbraun: bool,
    sys_id: str | None = None,
) -> None:
    """One infusion module: delivery information (what flows now) and its sources."""
    rows.device(
        "70054^MDC_DEV_PUMP_INFUS_SYRINGE_VMD^MDC"
        if bbraun
        else "69986^MDC_DEV_PUMP_INFUS_VMD^MDC",
        f"{mds}.{vmd}.0.0",
    )
    if sys_id is not None:  # where the station puts it: an attribute of the VMD
        rows.add("ST", "67972^MDC_ATTR_SYS_ID^MDC", f"{mds}.{vmd}.0.9", sys_id, status="F")
    running = [k for k, s in sources.items() if s.get("status") == "infusing"]
    flowing = sources[running[0]] if running else None
    rows.device("70067^MDC_DEV_PUMP_DELIVERY_INFO^MDC", f"{mds}.{vmd}.1.0")
    status = "pump-status-infusing" if flowing else "pump-status-not-infusing"
    rows.add("CWE", "184519^MDC_PUMP_INFUSING_STATUS^MDC", f"{mds}.{vmd}.1.1", f"^{status}")
    number, unit = _rate(flowing) if flowing else ("0", _UNITS["ml/h"])
    rows.add("NM", "158014^MDC_FLOW_FLUID_PUMP_CURRENT^MDC", f"{mds}.{vmd}.1.2", number, unit)
    active = running[0] if running else next(iter(sources))
    rows.add(
        "CWE",
        "158016^MDC_DEV_PUMP_ACTIVE_SOURCES^MDC",
        f"{mds}.{vmd}.1.3",
        f"^pump-source-info-{active}",
    )
    for kind, s in sorted(sources.items(), key=lambda item: item[0] != "primary"):
        _source_rows(rows, f"{mds}.{vmd}.{2 if kind == 'primary' else 3}", kind, s, bbraun)


def _modules(channels: dict[str, dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    modules: dict[int, dict[str, dict[str, Any]]] = {}
    for name, settings in channels.items():
        vmd, kind = _channel(name)
        modules.setdefault(vmd, {})[kind] = settings
    return modules


def pcd01_message(
    device: str,
    bed: str | None,
    channels: dict[str, dict[str, Any]],
    now_us: int,
    control: str,
    *,
    style: str = "ihe",
    more: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> str:
    """One PCD-01 ORU^R01: a pump ``device`` and its channels (``A`` -> VMD 1 primary,
    ``A-secondary`` -> VMD 1 secondary, ``B`` -> VMD 2), and in the ``ihe`` style the other
    pumps of the gateway in ``more`` (each its own MDS)."""
    stamp = hl7_stamp(now_us)
    bbraun = style == "bbraun"
    rows = _Rows()
    pumps = {device: channels, **(more or {})}
    for mds, (pump, chans) in enumerate(pumps.items(), start=1):
        if bbraun:
            rows.device(
                "70053^MDC_DEV_PUMP_INFUS_SYRINGE_MDS^MDC",
                f"{mds}.0.0.0",
                f"{pump}^^{_BBRAUN_EUI}^EUI-64",
            )
        else:
            rows.device(
                "69985^MDC_DEV_PUMP_INFUS_MDS^MDC",
                f"{mds}.0.0.0",
                f"{pump}^CALGUARD_SIM^calguard.invalid^DNS",
            )
        for vmd, sources in sorted(_modules(chans).items()):
            sys_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"calguard-sim:{pump}:{vmd}"))
            _vmd_rows(rows, mds, vmd, sources, bbraun, sys_id if bbraun else None)
    head = _STATION if bbraun else _IHE_GATEWAY
    segments = [
        f"MSH|^~\\&|{head}|{'BBRAUN' if bbraun else 'CALGUARD_SIM'}|CALGUARD|NICU|{stamp}||"
        f"ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE||UNICODE UTF-8|||"
        "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||Unknown Patient^Unknown Patient||^^^^^^U"
        if bbraun
        else "PID|||SIM^^^Hospital^PI||Infant^Baby",
        f"PV1||I|NICU^^{bed or ''}",
        f"OBR|1|||69985^MDC_DEV_PUMP_INFUS_MDS^MDC|||{stamp}",
        *rows.rows,
    ]
    return "\r".join(segments) + "\r"


def pcd04_message(
    device: str,
    channel: str,
    alarm: str,
    alert_id: str,
    start: bool,
    now_us: int,
    control: str,
    *,
    style: str = "ihe",
) -> str:
    """One PCD-04 ORU^R40 occlusion (or other) alarm start or end of a pump channel."""
    stamp = hl7_stamp(now_us)
    bbraun = style == "bbraun"
    vmd, _ = _channel(channel)
    label = device[1:] if bbraun and device[:1].isalpha() and len(device) > 1 else device
    equipment = (
        f"{label}^^{_BBRAUN_EUI}^EUI-64" if bbraun else f"{label}^CALGUARD_SIM^calguard.invalid^DNS"
    )
    event = {
        "occlusion": "196940^MDC_EVT_FLUID_LINE_OCCL^MDC",
        "air-in-line": "0^MDC_EVT_FLUID_LINE_AIR^MDC",
    }.get(alarm, f"0^MDC_EVT_{alarm.upper().replace('-', '_')}^MDC")
    head = _STATION if bbraun else _IHE_GATEWAY
    path = f"1.{vmd}.0.0"
    phase, state = ("start", "active") if start else ("end", "inactive")
    rows = [
        f"OBX|1||69985^MDC_DEV_PUMP_INFUS_MDS^MDC|1.0.0.0|||||||X|||||||{equipment}",
        f"OBX|2||69986^MDC_DEV_PUMP_INFUS_VMD^MDC|{path}|||||||X",
        f"OBX|3|CWE|196616^MDC_EVT_ALARM^MDC|{path}.1|{event}|||PH~ST|||F|||{stamp}",
        f"OBX|4|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|{path}.2|69986^MDC_DEV_PUMP_INFUS_VMD^MDC||||||F",
        f"OBX|5|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|{path}.3|{phase}||||||F",
        f"OBX|6|ST|68482^MDC_ATTR_ALARM_STATE^MDC|{path}.4|{state}||||||F",
        f"OBX|7|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|{path}.6|PH||||||F",
        f"OBX|8|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|{path}.7|ST||||||F",
    ]
    parent = alert_id
    if bbraun and not start:
        parent = f"{label}_{uuid.uuid4()}_0"  # the station ends an alarm under a new parent id
    segments = [
        f"MSH|^~\\&|{head}|{'BBRAUN' if bbraun else 'CALGUARD_SIM'}|CALGUARD|NICU|{stamp}||"
        f"ORU^R40^ORU_R40|{control}|P|2.6|||AL|NE||UNICODE UTF-8|||"
        "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO",
        f"OBR|1|{control}^SIM|{alert_id}_{'0' if start else '1'}^SIM|196616^MDC_EVT_ALARM^MDC|||"
        f"{stamp}||||||||||||||||||||||^{parent}&SIM",
        *rows,
    ]
    return "\r".join(segments) + "\r"


def adt_message(
    trigger: str,
    bed: str,
    patient: str,
    now_us: int,
    control: str,
    *,
    weight: str | None = None,
    birth_us: int | None = None,
    prior_bed: str | None = None,
) -> str:
    """One ADT message (A01 admit, A02 transfer, A03 discharge, A08 update ...) of an infant
    in ``NICU^^<bed>``, with a body-weight OBX (LOINC 29463-7) when a weight is given."""
    stamp = hl7_stamp(now_us)
    birth = hl7_stamp(birth_us) if birth_us is not None else ""
    pv1 = f"PV1|1|I|NICU^^{bed}"
    if prior_bed:
        pv1 += f"|||NICU^^{prior_bed}"
    segments = [
        f"MSH|^~\\&|SIM_ADT|HOSPITAL|CALGUARD|NICU|{stamp}||ADT^{trigger}^ADT_A01|{control}|P|2.5",
        f"EVN|{trigger}|{stamp}",
        f"PID|1||{patient}^^^SIM^MR||Infant^Baby||{birth}",
        pv1,
    ]
    if weight:
        number, unit = weight.split()
        segments.append(f"OBX|1|NM|29463-7^Body weight^LN||{number}|{unit}^{unit}^UCUM|||||F")
    return "\r".join(segments) + "\r"
