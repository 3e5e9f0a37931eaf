"""Where a unit's library is less safe than the clinical reference: one warning each.

A limit above the reference's default (``"5 ml/min"`` against 2 ml/min), a timer that
waits longer, a priority lowered, an incompatible class left out, an alarm that may stay
paused longer or no longer latches: every one loads (a unit may have its reasons) and is
a warning of ``calguard config check`` naming the default and its source, which the
approving pharmacist acknowledges one by one (``calguard library approve --acknowledge``).
The reference is the built-in library, whose values and sources are the rule table of
``docs/clinical-reference.md``. Which way is "less safe" is each setting's ``looser``
(``config/schema.py``). A rule switched off is warned about where it is read, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from calguard.config.schema import PROJECT_CHOICE, RULES, IntSetting, QuantitySetting
from calguard.monitor import units
from calguard.monitor.library import AlarmPolicy, ConfiguredQuantity, Library, RuleConfig
from calguard.monitor.transitions import PRIORITY_RANK

__all__ = ["alarm_departures", "rule_departures"]

Warn = Callable[[str, str], None]  # (key, message)

#: the sources of the built-in alarm policy (the clinical reference's alarm policy table)
_ALARM_SOURCES = {
    "pause": "[IEC]",
    "escalate_after": f"[AAMI]; the times are a {PROJECT_CHOICE}",
    "latching": "[IEC]",
    "override_max": PROJECT_CHOICE,
}


def _looser(value: float, default: float, direction: str) -> bool:
    # the rules' own slack: a unit conversion's last bit is not a departure
    if direction == "above":
        return value > default * (1 + 1e-9)
    return value < default * (1 - 1e-9)


def _written(q: ConfiguredQuantity, default: ConfiguredQuantity) -> str:
    """The value as written, and in the default's unit when it was written in another."""
    if q.unit == default.unit:
        return f'"{q.text}"'
    return f'"{q.text}" ({units.format_quantity(q.value, q.kind, default.unit)})'


def _said(found: str, default: str, source: str) -> str:
    return f"{found} is looser than the clinical reference's default {default} ({source})"


def rule_departures(
    rules: Mapping[str, RuleConfig], reference: Library, warn: Warn, prefix: str = ""
) -> None:
    """A warning for each setting of an enabled rule that is looser than the reference's."""
    for rule_id, cfg in rules.items():
        default = reference.rules.get(rule_id)
        if default is None or not cfg.enabled:
            continue
        spec, base = RULES[rule_id], f"{prefix}rules.{rule_id}"
        if (
            cfg.priority in PRIORITY_RANK
            and default.priority in PRIORITY_RANK
            and PRIORITY_RANK[str(cfg.priority)] < PRIORITY_RANK[str(default.priority)]
        ):
            warn(
                f"{base}.priority",
                f'priority "{cfg.priority}" is lower than the clinical reference\'s '
                f'"{default.priority}" ({spec.source})',
            )
        for key, q in cfg.quantities.items():
            setting, ref = spec.settings.get(key), default.quantities.get(key)
            if (
                isinstance(setting, QuantitySetting)
                and ref is not None
                and _looser(q.value, ref.value, setting.looser)
            ):
                warn(f"{base}.{key}", _said(_written(q, ref), f'"{ref.text}"', spec.source_of(key)))
        for key, number in cfg.ints.items():
            int_setting, ref_int = spec.settings.get(key), default.ints.get(key)
            if (
                isinstance(int_setting, IntSetting)
                and ref_int is not None
                and _looser(number, ref_int, int_setting.looser)
            ):
                warn(f"{base}.{key}", _said(str(number), str(ref_int), spec.source_of(key)))
        for key, classes in cfg.class_lists.items():
            left_out = [c for c in default.class_lists.get(key, ()) if c not in classes]
            if left_out:
                listed = ", ".join(default.class_lists[key])
                warn(
                    f"{base}.{key}",
                    f"leaves out {', '.join(left_out)}, which the clinical reference lists "
                    f"here ({listed}; {spec.source})",
                )


def alarm_departures(policy: AlarmPolicy, reference: Library, warn: Warn) -> None:
    """A warning for each alarm setting that lets an alarm be quiet longer than the
    reference's, or no longer latch."""
    default = reference.alarms
    for key, mine, theirs in (
        ("pause", policy.pause, default.pause),
        ("escalate_after", policy.escalate_after, default.escalate_after),
    ):
        for priority, q in mine.items():
            ref = theirs.get(priority)
            if ref is not None and _looser(q.value, ref.value, "above"):
                found = _written(q, ref)
                warn(f"alarms.{key}.{priority}", _said(found, f'"{ref.text}"', _ALARM_SOURCES[key]))
    if _looser(policy.override_max.value, default.override_max.value, "above"):
        found = _written(policy.override_max, default.override_max)
        said = _said(found, f'"{default.override_max.text}"', _ALARM_SOURCES["override_max"])
        warn("alarms.override_max", said)
    unlatched = sorted(default.latching - policy.latching, key=PRIORITY_RANK.__getitem__)
    if unlatched:
        warn(
            "alarms.latching",
            f"{', '.join(unlatched)} alarms no longer latch, as the clinical reference has "
            f"them do ({_ALARM_SOURCES['latching']})",
        )
