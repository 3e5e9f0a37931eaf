"""The IEEE 11073 (MDC) terms CalGuard reads from pump gateways, and what their values mean.

Codes are from the IHE PCD Technical Framework (TF-2 rev 8/9, the IPEC supplement) and the
RTMMS nomenclature it points to; where vendors spell a REFID two ways (``MDC_PUMP_...`` in
B. Braun's LVP firmware, ``MDC_DEV_PUMP_...`` in the framework and its syringe firmware) both
are listed. A row is recognised by its code or, when the code is 0 or missing (the IPEC
supplement's examples send ``0`` for codes pending at publication), by its REFID.
"""

from __future__ import annotations

import re

from calguard.drivers.hl7v2 import Row

__all__ = ["Term", "alarm_name", "delivery_mode", "is_", "status_of"]


class Term:
    """One observation of interest: its codes and REFIDs."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.codes = {c for c, _ in pairs if c and c != "0"}
        self.refids = {r for _, r in pairs if r}

    def matches(self, row: Row) -> bool:
        if row.code in self.codes:
            return True
        return row.refid.upper() in self.refids


def is_(row: Row, term: Term) -> bool:
    return term.matches(row)


# Delivery information (x.y.1.z) and source channels (x.y.2.z primary, x.y.3.z secondary)
INFUSING_STATUS = Term(("184519", "MDC_PUMP_INFUSING_STATUS"))
PUMP_STAT = Term(("184508", "MDC_PUMP_STAT"))  # the 2010 framework's operational status
DELIVERY_STATUS = Term(
    ("158005", "MDC_PUMP_CURRENT_DELIVERY_STATUS"),
    ("158005", "MDC_DEV_PUMP_CURRENT_DELIVERY_STATUS"),
)
NOT_DELIVERING_REASON = Term(
    ("158006", "MDC_PUMP_NOT_DELIVERING_REASON"),
    ("158006", "MDC_DEV_PUMP_NOT_DELIVERING_REASON"),
)
DELIVERY_MODE = Term(
    ("158008", "MDC_PUMP_PROGRAM_DELIVERY_MODE"),
    ("158008", "MDC_DEV_PUMP_PROGRAM_DELIVERY_MODE"),
)
SOURCE_LABEL = Term(
    ("158012", "MDC_PUMP_SOURCE_CHANNEL_LABEL"),
    ("158012", "MDC_DEV_PUMP_SOURCE_CHANNEL_LABEL"),
)
ACTIVE_SOURCES = Term(
    ("158016", "MDC_DEV_PUMP_ACTIVE_SOURCES"), ("158016", "MDC_PUMP_ACTIVE_SOURCES")
)
FLOW_CURRENT = Term(("158014", "MDC_FLOW_FLUID_PUMP_CURRENT"))
FLOW = Term(("157784", "MDC_FLOW_FLUID_PUMP"))  # programmed rate (a setting in a source)
VOLUME_DELIVERED = Term(("157993", "MDC_VOL_FLUID_DELIV_TOTAL"), ("157864", "MDC_VOL_FLUID_DELIV"))
DRUG_NAME = Term(("184514", "MDC_DRUG_NAME_LABEL"), ("184330", "MDC_DRUG_NAME_TYPE"))
CONCENTRATION = Term(("157760", "MDC_CONC_DRUG"))
# Identity and alarm conditions
SYS_ID = Term(("67972", "MDC_ATTR_SYS_ID"))
ALARM_CONDITION = Term(("68012", "MDC_ATTR_AL_COND"))
ALERT_SOURCE = Term(("68480", "MDC_ATTR_ALERT_SOURCE"))
# PCD-04 facets (TF-2 B.8.5)
EVENT = Term(("196616", "MDC_EVT_ALARM"))
EVENT_PHASE = Term(("68481", "MDC_ATTR_EVENT_PHASE"))
ALARM_STATE = Term(("68482", "MDC_ATTR_ALARM_STATE"))
ALARM_PRIORITY = Term(("68484", "MDC_ATTR_ALARM_PRIORITY"))
ALERT_TEXT = Term(("68546", "MDC_ATTR_ALERT_TEXT"))
#: patient weight (ADT OBX): LOINC body weight and body weight measured (by code only: a
#: text says too little - "Body weight" may label an estimate), or the MDC attribute
WEIGHT = Term(("29463-7", ""), ("3141-9", ""))
PT_WEIGHT = Term(("68063", "MDC_ATTR_PT_WEIGHT"))

#: flow rates: a rate row of a source channel whose REFID is a variant of the programmed
#: rate (MDC_FLOW_FLUID_PUMP_SETTING and the like in some firmware) counts as programmed
_PROGRAMMED_VARIANT = re.compile(r"MDC_FLOW_FLUID_PUMP(_[A-Z]+)?\Z")


def is_programmed_rate(row: Row) -> bool:
    if FLOW.matches(row):
        return True
    refid = row.refid.upper()
    return bool(_PROGRAMMED_VARIANT.match(refid)) and not FLOW_CURRENT.matches(row)


# -- device objects (the containment tree) ----------------------------------------------

#: device-row REFID fragments -> the kind of a channel object inside a pump VMD
_CHANNEL_KINDS = (
    ("DELIVERY", "delivery"),  # MDC_DEV_PUMP_DELIVERY_INFO, MDC_DEV_PUMP_INFUS_CHAN_DELIVERY
    ("SOURCE_PRIMARY", "primary"),  # MDC_DEV_PUMP_INFUSATE_SOURCE_PRIMARY[_CHAN]
    ("SOURCE_SECONDARY", "secondary"),
    ("CHAN_SOURCE", "primary"),  # MDC_DEV_PUMP_INFUS_CHAN_SOURCE (2010 framework)
    ("SOURCE", "dose"),  # clinician / loading / PCA dose groups (IPEC)
)
_CHANNEL_CODES = {
    "70067": "delivery",
    "126978": "delivery",
    "70071": "primary",
    "126977": "primary",
}
_BY_NUMBER = {1: "delivery", 2: "primary", 3: "secondary"}
PUMP_DEVICE_CODES = {"69985", "69986", "70049", "70050", "70053", "70054"}


def channel_kind(number: int, device_row: Row | None) -> str:
    """What channel ``number`` of a pump VMD is: ``delivery`` (what the pump does now),
    ``primary`` / ``secondary`` (a fluid source), ``dose`` (a bolus, loading or PCA dose
    group) or ``other`` (syringe, wireless, ... information). By its device row's REFID or
    code when it has one; by its number (1, 2, 3 as the framework numbers them) otherwise."""
    if device_row is not None:
        refid = device_row.refid.upper()
        for fragment, kind in _CHANNEL_KINDS:
            if fragment in refid:
                return kind
        if device_row.code in _CHANNEL_CODES:
            return _CHANNEL_CODES[device_row.code]
        if refid or (device_row.code and device_row.code != "0"):
            return "other"
    return _BY_NUMBER.get(number, "other")


def is_pump_device(row: Row | None) -> bool:
    if row is None:
        return False
    refid = row.refid.upper()
    return row.code in PUMP_DEVICE_CODES or "PUMP" in refid or "INFUS" in refid


# -- values ---------------------------------------------------------------------------------

#: status words -> CalGuard status; None: a word that says nothing either way
_STATUS_WORDS = {
    # MDC_PUMP_INFUSING_STATUS
    "pump-status-infusing": "infusing",
    "pump-status-not-infusing": "stopped",
    # MDC_PUMP_STAT (2010 framework vocabulary and its common extensions)
    "pump-status-kvo": "infusing",  # keep vein open: fluid flows at the KVO rate
    "pump-status-paused": "paused",
    "pump-status-ready": "stopped",
    "pump-status-standby": "stopped",
    "pump-status-idle": "stopped",
    "pump-status-complete": "stopped",
    "pump-status-stopped": "stopped",
    "pump-status-alarm": "alarm",
    # MDC_PUMP_CURRENT_DELIVERY_STATUS (IPEC)
    "pump-delivery-status-delivering": "infusing",
    "pump-delivery-status-kvo": "infusing",
    "pump-delivery-status-not-delivering": "stopped",
    "pump-delivery-status-transitioning": None,
}
#: MDC_PUMP_NOT_DELIVERING_REASON -> a more precise status than "stopped"
_REASONS = {
    "pump-stopped-alarming": "alarm",
    "pump-stopped-by-clinician": "paused",
    "pump-stopped-user": "paused",
    "pump-stopped-switching-source": "paused",
}


def status_of(row: Row) -> tuple[str | None, bool]:
    """(CalGuard status or None, whether the word was known) of a status row."""
    word = row.coded.lower()
    if NOT_DELIVERING_REASON.matches(row):
        return _REASONS.get(word, "stopped"), True
    if word in _STATUS_WORDS:
        return _STATUS_WORDS[word], True
    return None, False


def delivery_mode(word: str) -> str:
    """MDC_PUMP_PROGRAM_DELIVERY_MODE -> the event format's mode. Anything not known to be a
    bolus or an intermittent dose is ``continuous``, the mode with the strictest limits."""
    word = word.lower().removeprefix("pump-program-delivery-mode-")
    if word in ("bolus", "loading", "loading-dose", "clinician", "clinician-dose", "pca"):
        return "bolus"
    if word in ("multi-dosing", "intermittent"):
        return "intermittent"
    return "continuous"


#: dose groups whose activity means a bolus is running (MDC_DEV_PUMP_ACTIVE_SOURCES)
BOLUS_SOURCES = {"pump-source-info-clinician", "pump-source-info-loading", "pump-source-info-pca"}

# -- alarm names ------------------------------------------------------------------------------

_WORDS = re.compile(r"[A-Za-z0-9]+")
_KNOWN_ALARMS = (
    (("OCCL",), "occlusion"),
    (("OCCLUSION",), "occlusion"),
    (("AIR",), "air-in-line"),
    (("DOOR",), "door-open"),
    (("NEAR", "COMP"), "near-end"),
    (("NEAR", "END"), "near-end"),
    (("NEAR", "EMPTY"), "near-end"),
)


def _tokens(text: str) -> list[str]:
    return [t.upper() for t in _WORDS.findall(text)]


def _known(text: str) -> str | None:
    tokens = _tokens(text)
    for needed, name in _KNOWN_ALARMS:
        if all(n in tokens for n in needed):
            return name
    return None


def _slug(text: str) -> str:
    words = [t.lower() for t in _WORDS.findall(text)]
    if words[:2] == ["mdc", "evt"]:
        words = words[2:]
    return "-".join(words)[:64].strip("-")


def alarm_name(refid: str, text: str = "") -> str:
    """The event format's ``alarm`` for a pump's alarm condition: ``occlusion``,
    ``air-in-line``, ``door-open``, ``near-end`` for the conditions the rules and nurses know
    by name (from the MDC event REFID, else the pump's own alarm text), otherwise the text
    or the REFID in lower case with dashes (``MDC_EVT_SYRINGE_BARREL_CAPTURE_FAULT`` with
    text "Syringe Holder Open" is ``syringe-holder-open``)."""
    for source in (refid, text):
        known = _known(source) if source else None
        if known:
            return known
    return _slug(text) or _slug(refid) or "alarm"
