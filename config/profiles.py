"""Care-area profiles: one library, limits and timers set apart for some units.

A NICU, a PICU and a cardiac NICU share the products, the salts and most limits; a few
settings differ (older, heavier children tolerate a higher rate). One library holds them
all, so that one pharmacist's review and one approval cover every unit::

    [profiles.picu]
    description = "Paediatric ICU: children up to 16 years"

    [profiles.picu.rules.rate-volume]
    limit = "3 ml/min"

    [profiles.picu.rules.site-check-overdue]
    medium_after = "2 h"
    high_after = "3 h"

A profile replaces settings of the rules it names (any setting a rule takes, ``enabled``
and ``priority`` too); everything else is the library's own. The site config says which
profile its unit runs (``[site] profile = "picu"``). A profile is checked as the library
is, setting by setting, and each of its problems and warnings is keyed under it
(``profiles.picu.rules.rate-volume.limit``).

The library's version is the content hash of the whole document, every profile included;
a unit that runs a profile carries that hash and the profile's name, ``#`` between them
(``sha256:9a07e6a01af8928a#picu``), on every alert line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from calguard.config.schema import RULES

__all__ = ["ProfileTable", "profile_tables"]

Problem = Callable[[str, str], None]  # (key, message)

#: a profile's name: it stands in the library's version on every alert line
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\Z")
_KEYS = ("description", "rules")


@dataclass(frozen=True)
class ProfileTable:
    """One profile as written: its description, and the library's rule tables with the
    profile's settings put over them (``touched``: the settings it sets, as keys)."""

    name: str
    description: str
    rules: dict[str, Any]
    touched: frozenset[str]


def profile_tables(value: object, rules: dict[str, Any], problem: Problem) -> list[ProfileTable]:
    """The ``[profiles]`` of a library, each merged over its ``[rules]``; what is wrong in
    their shape is reported (``problem``), and such a profile left out. The settings
    themselves are checked by the caller, as the library's are."""
    if value is None:
        return []
    if not isinstance(value, dict):
        problem("profiles", "a table of care-area profiles is expected, e.g. [profiles.picu]")
        return []
    found = []
    for name, body in value.items():
        table = _profile(name, body, rules, problem)
        if table is not None:
            found.append(table)
    return found


def _profile(
    name: str, body: object, rules: dict[str, Any], problem: Problem
) -> ProfileTable | None:
    path = f"profiles.{name}"
    if not _NAME.match(name):
        problem(path, "a profile's name: lower-case letters, digits and -, at most 32 (picu)")
        return None
    if not isinstance(body, dict):
        problem(path, "a table is expected ([profiles.picu])")
        return None
    fine = True
    for key in body:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            problem(f"{path}.{key}", f"unknown key; expected one of {', '.join(_KEYS)}{hint}")
            fine = False
    description = body.get("description", "")
    if not isinstance(description, str):
        problem(f"{path}.description", f"{description!r} — a text is expected")
        fine = False
    overrides = body.get("rules", {})
    if not isinstance(overrides, dict):
        problem(f"{path}.rules", "a table of rules is expected ([profiles.picu.rules.rate-volume])")
        return None
    merged = {
        rule: dict(table) if isinstance(table, dict) else table for rule, table in rules.items()
    }
    touched: set[str] = set()
    for rule, settings in overrides.items():
        where = f"{path}.rules.{rule}"
        if rule not in RULES:
            close = difflib.get_close_matches(rule, list(RULES), n=1)
            problem(where, "unknown rule id" + (f'; did you mean "{close[0]}"?' if close else ""))
            fine = False
        elif not isinstance(settings, dict) or not settings:
            problem(where, 'a table of the settings this profile changes, e.g. limit = "3 ml/min"')
            fine = False
        else:
            own = merged.get(rule)
            merged[rule] = {**(own if isinstance(own, dict) else {}), **settings}
            touched |= {f"rules.{rule}.{key}" for key in settings}
    if not fine:
        return None
    return ProfileTable(name, description.strip(), merged, frozenset(touched))
