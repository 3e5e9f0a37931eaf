"""The rule table as code: rule ids, their priorities and the shape of their settings.

Rule ids and default priorities are a contract (clinical reference, rule table). The
default *values* live in ``default_library.toml`` where a pharmacist can read their
sources; this module says what each setting must measure and what range is plausible, so
that a slip such as ``"2 ml/h"`` for the 2 ml/min limit is caught when the library loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calguard.monitor import units
from calguard.monitor.events import ALARM_ACTIONS, ROLES
from calguard.monitor.library import Permissions, RolesByPriority
from calguard.monitor.units import Kind

__all__ = [
    "CLASSES",
    "LOOSER",
    "PRIORITIES",
    "PROJECT_CHOICE",
    "RULES",
    "ClassListSetting",
    "IntSetting",
    "QuantitySetting",
    "RuleSpec",
    "Setting",
    "permissions",
]

#: IEC 60601-1-8 priorities, lowest first.
PRIORITIES = ("low", "medium", "high")

#: Drug classes a product may carry. ``neutral`` is for labels a pharmacist wants to be
#: known (e.g. a parenteral nutrition bag that mentions calcium) without any rule.
CLASSES = ("calcium", "bicarbonate", "phosphate", "sulfate", "ceftriaxone", "neutral")


#: Which way a setting departs from the reference towards less safety: a limit is looser
#: when it is higher ("above"), a neonate's age limit when it is lower ("below").
LOOSER = ("above", "below")
PROJECT_CHOICE = "project choice"


@dataclass(frozen=True, slots=True)
class QuantitySetting:
    """A limit or a timer: a quantity of ``kind`` within a plausible canonical range.

    ``looser``: the direction in which a value is less safe than the reference's default
    (``config check`` warns about it, naming the default and ``source``, or the rule's)."""

    kind: Kind
    low: float
    high: float
    hint: str  # the unit people usually write it in, for "did you mean" suggestions
    looser: str = "above"
    source: str | None = None  # where the default comes from, when not the rule's source


@dataclass(frozen=True, slots=True)
class IntSetting:
    low: int
    high: int
    looser: str = "above"
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ClassListSetting:
    """A list of drug classes (incompatibility lists); a class the reference lists and the
    library leaves out is a looser setting."""


Setting = QuantitySetting | IntSetting | ClassListSetting

_MIN = 60 * 1_000_000
_HOUR = 60 * _MIN
_DAY = 24 * _HOUR


def _dur(
    low_us: int, high_us: int, hint: str, *, looser: str = "above", source: str | None = None
) -> QuantitySetting:
    return QuantitySetting(units.DURATION, low_us, high_us, hint, looser, source)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    rule_id: str
    priority: str | None  # None: the rule has two levels named in its settings
    settings: dict[str, Setting] = field(default_factory=dict)
    technical: bool = False  # about CalGuard's inputs rather than the infant (IEC 60601-1-8)
    #: the source of its defaults (the rule table's source column, its tags)
    source: str = PROJECT_CHOICE

    def source_of(self, key: str) -> str:
        """The source of one setting's default."""
        setting = self.settings.get(key)
        own = getattr(setting, "source", None)
        return own if isinstance(own, str) else self.source


RULES: dict[str, RuleSpec] = {
    spec.rule_id: spec
    for spec in (
        RuleSpec(
            "rate-volume",
            "high",
            {"limit": QuantitySetting(units.VOLUME_RATE, 0.1, 10.0, "ml/min")},
            source="[Case], [USP-Ca]",
        ),
        RuleSpec(
            "rate-mass",
            "high",
            {"limit": QuantitySetting(units.MASS_RATE, 10.0, 500.0, "mg/min")},
            source="[USP-Ca]",
        ),
        RuleSpec(
            "rate-weight",
            None,
            {
                # mg/kg/min canonical: 3-300 mg/kg/h
                "continuous_medium": QuantitySetting(
                    units.SALT_PER_WEIGHT_RATE, 0.05, 5.0, "mg/kg/h", source="[USP-Ca]"
                ),
                # mmol/kg/min canonical: 0.012-3 mmol/kg/h
                "continuous_high": QuantitySetting(
                    units.SUBSTANCE_PER_WEIGHT_RATE, 0.0002, 0.05, "mmol/kg/h", source="[NUO]"
                ),
                "bolus_medium": QuantitySetting(
                    units.SALT_PER_WEIGHT_RATE, 1.0, 100.0, "mg/kg/min", source="[USP-Ca]"
                ),
                "bolus_high": QuantitySetting(
                    units.SALT_PER_WEIGHT_RATE, 1.0, 200.0, "mg/kg/min", source=PROJECT_CHOICE
                ),
            },
            source="[USP-Ca], [NUO]",
        ),
        RuleSpec(
            "dose-daily",
            "high",
            {
                "limit": QuantitySetting(units.SUBSTANCE_PER_WEIGHT, 0.5, 20.0, "mmol/kg"),
                # the same limit over a shorter window allows more calcium a day
                "window": _dur(_HOUR, 3 * _DAY, "h", looser="below"),
            },
            source="[NUO]",
        ),
        RuleSpec("salt-not-gluconate", "high", source="[Cl], [Case]"),
        RuleSpec(
            "concentration-peripheral",
            "medium",
            {
                "continuous_limit": QuantitySetting(units.CONCENTRATION, 1.0, 100.0, "mg/ml"),
                "any_mode_limit": QuantitySetting(units.CONCENTRATION, 1.0, 100.0, "mg/ml"),
            },
            source="[USP-Ca]",
        ),
        RuleSpec("line-arterial", "high", source="never into an artery"),
        RuleSpec(
            "incompatible-coinfusion",
            None,
            {"high": ClassListSetting(), "medium": ClassListSetting()},
            source="[Case], [FDA-Cx]",
        ),
        RuleSpec(
            "ceftriaxone-neonate",
            "high",
            {
                # a lower age limit or a shorter look-back covers fewer infants
                "max_postnatal_age": _dur(7 * _DAY, 365 * _DAY, "day", looser="below"),
                "lookback": _dur(_HOUR, 14 * _DAY, "h", looser="below"),
            },
            source="[FDA-Cx]",
        ),
        RuleSpec(
            "patency-check-missing",
            "medium",
            {
                "window": _dur(_MIN, 4 * _HOUR, "min"),
                "pause_grace": _dur(0, 2 * _HOUR, "min", source=PROJECT_CHOICE),
            },
            source="[Case], [INS]",
        ),
        RuleSpec("patency-check-failed", "high", source="[INS]"),
        RuleSpec(
            "site-check-overdue",
            None,
            {
                "medium_after": _dur(15 * _MIN, 8 * _HOUR, "min"),
                "high_after": _dur(15 * _MIN, 12 * _HOUR, "min", source=PROJECT_CHOICE),
            },
            source="[INS]",
        ),
        RuleSpec("site-abnormal", "high", {"min_grade": IntSetting(1, 4)}, source="[Pop], [INS]"),
        RuleSpec(
            "cannula-dwell",
            "medium",
            {"interval": _dur(6 * _HOUR, 14 * _DAY, "h", source=f"{PROJECT_CHOICE}; [Case]")},
            source="[Case]",
        ),
        RuleSpec("occlusion", "medium", source="[ECRI]"),
        RuleSpec(
            "telemetry-stale",
            "medium",
            {"timeout": _dur(5_000_000, 30 * _MIN, "s")},
            technical=True,
        ),
        RuleSpec("telemetry-invalid", "medium", technical=True),
        RuleSpec("product-unknown", "medium", technical=True),
        RuleSpec("context-missing", "medium", technical=True),
        RuleSpec(
            "pressure-trend",
            "low",
            {
                "rise": QuantitySetting(
                    units.PRESSURE, 5.0, 300.0, "mmHg", source=f"{PROJECT_CHOICE}; [ECRI]"
                ),
                "duration": _dur(_MIN, 4 * _HOUR, "min", source=f"{PROJECT_CHOICE}; [ECRI]"),
            },
            source="[ECRI]",
        ),
        # Technical rules CalGuard adds beside the clinical reference's table:
        RuleSpec(
            "clock-skew",
            "medium",
            {
                "tolerance": _dur(1_000_000, 10 * _MIN, "s"),
                "backdate": _dur(_MIN, 24 * _HOUR, "h", source=PROJECT_CHOICE),
            },
            technical=True,
            source="[Alaris]",
        ),
        RuleSpec(
            "input-unknown",
            "medium",
            # a shorter quiet time ends the alarm of a flooding source sooner
            {"quiet": _dur(10_000_000, _HOUR, "s", looser="below")},
            technical=True,
        ),
        # the durable log cannot be written; high, whatever is set, when nothing is recorded
        RuleSpec("log-unavailable", "medium", technical=True),
        # a live monitor runs a library no pharmacist approved in the log (--allow-unapproved)
        RuleSpec("library-unapproved", "medium", technical=True),
        # a live monitor runs behind its inputs (they wait in the broker or a queue): one
        # alarm for the unit; telemetry-stale is held meanwhile, for at most max_hold
        RuleSpec(
            "monitor-lagging",
            "medium",
            {
                "threshold": _dur(2_000_000, 10 * _MIN, "s"),
                "max_hold": _dur(0, 30 * _MIN, "s"),
            },
            technical=True,
        ),
    )
}


# -- who may act on alarms ([alarms.permissions]) ---------------------------------------------

Problem = Callable[[str, str], None]  # (key, message)


def permissions(table: dict[str, Any], problem: Problem) -> Permissions | None:
    """``[alarms.permissions]``: for each action the roles that may take it, as one list for
    every priority or as a table by priority; ``rules.<rule>`` replaces some of them for one
    rule's alarms. Every problem is reported (``problem``); None if there was one."""
    key = "alarms.permissions"
    for name in table:
        if name not in (*ALARM_ACTIONS, "rules"):
            problem(
                f"{key}.{name}", f"unknown key; expected one of {', '.join(ALARM_ACTIONS)}, rules"
            )
    actions: dict[str, RolesByPriority] = {}
    for action in ALARM_ACTIONS:
        if action not in table:
            problem(f"{key}.{action}", 'is missing; list the roles, e.g. ["nurse", "charge-nurse"]')
            continue
        roles = _roles_by_priority(table[action], f"{key}.{action}", problem)
        if roles is not None:
            actions[action] = roles
    rules: dict[str, dict[str, RolesByPriority]] = {}
    exceptions = table.get("rules", {})
    if not isinstance(exceptions, dict):
        problem(f"{key}.rules", "a table of rule ids is expected")
        exceptions = {}
    for rule, per_action in exceptions.items():
        where = f"{key}.rules.{rule}"
        if rule not in RULES:
            problem(where, "no rule has this id; the rules are " + ", ".join(RULES))
        elif not isinstance(per_action, dict) or not per_action:
            problem(where, 'a table of actions is expected, e.g. override = ["prescriber"]')
        else:
            rules[rule] = _rule_exceptions(per_action, where, problem)
    if len(actions) < len(ALARM_ACTIONS):
        return None
    try:
        return Permissions(actions, rules)
    except ValueError as exc:  # what was checked above cannot get here; said, never raised
        problem(key, str(exc))
        return None


def _rule_exceptions(
    per_action: dict[str, Any], where: str, problem: Problem
) -> dict[str, RolesByPriority]:
    out: dict[str, RolesByPriority] = {}
    for action, value in per_action.items():
        if action not in ALARM_ACTIONS:
            problem(f"{where}.{action}", f"unknown action; one of {', '.join(ALARM_ACTIONS)}")
            continue
        roles = _roles_by_priority(value, f"{where}.{action}", problem)
        if roles is not None:
            out[action] = roles
    return out


def _roles_by_priority(value: object, key: str, problem: Problem) -> RolesByPriority | None:
    if isinstance(value, list):
        roles = _roles(value, key, problem)
        return None if roles is None else dict.fromkeys(PRIORITIES, roles)
    if not isinstance(value, dict):
        problem(key, "a list of roles, or one per priority ({ low = [...], high = [...] })")
        return None
    out: dict[str, frozenset[str]] = {}
    for name in value:
        if name not in PRIORITIES:
            problem(f"{key}.{name}", f"unknown priority; one of {', '.join(PRIORITIES)}")
    for priority in PRIORITIES:
        if priority not in value:
            problem(f"{key}.{priority}", "is missing; list the roles ([] for none)")
            continue
        roles = _roles(value[priority], f"{key}.{priority}", problem)
        if roles is not None:
            out[priority] = roles
    return out if len(out) == len(PRIORITIES) else None


def _roles(value: object, key: str, problem: Problem) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        problem(key, f"a list of roles is expected, of {', '.join(ROLES)}")
        return None
    unknown = [r for r in value if r not in ROLES]
    if unknown:
        problem(key, f"{', '.join(map(repr, unknown))}: the roles are {', '.join(ROLES)}")
        return None
    return frozenset(value)
