"""``calguard library diff``: what changes between two versions of a drug library.

Every changed limit and timer is shown as each version wrote it and converted to one other
unit (``"2 ml/min" -> "300 ml/h" (= 120 -> 300 ml/h; x2.5, looser)``), so that a slip of
unit cannot hide in a diff; every product, alias, salt, keyword and profile added or
removed is a line of its own. A profile's own changes are listed under it: a unit running
it sees those, besides the library's. Lines read ``~`` changed, ``+`` added, ``-`` removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from calguard.config.loader import parse_library
from calguard.config.schema import RULES, QuantitySetting
from calguard.monitor import units
from calguard.monitor.library import ConfiguredQuantity, Library, Product, RuleConfig
from calguard.monitor.units import Kind, format_number

__all__ = ["Change", "diff_libraries"]

#: the unit a value of each kind is also shown in: the first of its pair that it was not
#: written in
_OTHER_UNITS: dict[Kind, tuple[str, str]] = {
    units.VOLUME_RATE: ("ml/h", "ml/min"),
    units.MASS_RATE: ("mg/h", "mg/min"),
    units.SALT_PER_WEIGHT_RATE: ("mg/kg/h", "mg/kg/min"),
    units.SUBSTANCE_PER_WEIGHT_RATE: ("mmol/kg/day", "mmol/kg/h"),
    units.SUBSTANCE_PER_WEIGHT: ("mEq/kg", "mmol/kg"),
    units.SUBSTANCE_PER_VOLUME: ("mEq/ml", "mmol/ml"),
    units.DURATION: ("min", "h"),
    units.PRESSURE: ("kPa", "mmHg"),
}


@dataclass(frozen=True)
class Change:
    key: str
    sign: str  # "~" changed, "+" added, "-" removed
    old: str | None = None
    new: str | None = None
    note: str = ""

    def __str__(self) -> str:
        if self.sign == "+":
            return f"+ {self.key}: {self.new}"
        if self.sign == "-":
            return f"- {self.key}: {self.old}"
        note = f" ({self.note})" if self.note else ""
        return f"~ {self.key}: {self.old} -> {self.new}{note}"


def diff_libraries(old: Library, new: Library) -> list[Change]:
    """Every difference between two libraries, their profiles included."""
    changes = [*_meta(old, new), *_products(old, new), *_rules(old.rules, new.rules)]
    changes += _alarms(old, new)
    return changes + _profiles(old, new, changes)


def _quoted(text: str) -> str:
    return f'"{text}"'


def _converted(q: ConfiguredQuantity, unit: str) -> str:
    if unit == "% w/v":
        return f"{format_number(q.value / 10)}% w/v"
    return units.format_quantity(q.value, q.kind, unit)


def _quantity(key: str, old: ConfiguredQuantity, new: ConfiguredQuantity) -> Change | None:
    if abs(old.value - new.value) <= 1e-9 * max(abs(old.value), abs(new.value)):
        if old.text == new.text:
            return None
        return Change(key, "~", _quoted(old.text), _quoted(new.text), "the same value")
    pair = ("% w/v", "mg/ml") if new.kind is units.CONCENTRATION else _OTHER_UNITS.get(new.kind)
    notes = []
    if pair is not None:
        other = pair[0] if new.unit != pair[0] else pair[1]
        notes.append(f"= {_converted(old, other).rsplit(' ', 1)[0]} -> {_converted(new, other)}")
    if old.value:
        notes.append(f"x{format_number(new.value / old.value)}")
    setting = _setting(key)
    if setting is not None:
        above = new.value > old.value
        notes.append("looser" if above == (setting.looser == "above") else "stricter")
    return Change(key, "~", _quoted(old.text), _quoted(new.text), ", ".join(notes))


def _setting(key: str) -> QuantitySetting | None:
    """The schema's setting of a key ``[profiles.<p>.]rules.<rule>.<setting>``."""
    parts = key.split(".")
    if "rules" not in parts or len(parts) < parts.index("rules") + 3:
        return None
    at = parts.index("rules")
    spec = RULES.get(parts[at + 1])
    found = spec.settings.get(parts[at + 2]) if spec is not None else None
    return found if isinstance(found, QuantitySetting) else None


def _sets(key: str, old: Iterable[str], new: Iterable[str]) -> Iterator[Change]:
    before, after = list(old), list(new)
    for item in after:
        if item not in before:
            yield Change(key, "+", new=_quoted(item))
    for item in before:
        if item not in after:
            yield Change(key, "-", old=_quoted(item))


def _plain(key: str, old: object, new: object) -> Iterator[Change]:
    if old != new:
        yield Change(key, "~", str(old), str(new))


def _meta(old: Library, new: Library) -> Iterator[Change]:
    yield from _plain("library.name", _quoted(old.name), _quoted(new.name))
    yield from _sets("matching.calcium_keywords", old.calcium_keywords, new.calcium_keywords)
    for name in sorted(old.salts.keys() | new.salts.keys()):
        was, now = old.salts.get(name), new.salts.get(name)
        key = f"salts.{name}.elemental_calcium_fraction"
        if was is None and now is not None:
            yield Change(key, "+", new=str(now.elemental_fraction))
        elif now is None and was is not None:
            yield Change(key, "-", old=str(was.elemental_fraction))
        elif was is not None and now is not None:
            yield from _plain(key, was.elemental_fraction, now.elemental_fraction)


def _products(old: Library, new: Library) -> Iterator[Change]:
    before = {p.id: p for p in old.products}
    after = {p.id: p for p in new.products}
    for pid, p in after.items():
        if pid not in before:
            yield Change(f"products[{pid}]", "+", new=_describe(p))
    for pid, p in before.items():
        if pid not in after:
            yield Change(f"products[{pid}]", "-", old=_describe(p))
    for pid in before.keys() & after.keys():
        was, now, key = before[pid], after[pid], f"products[{pid}]"
        yield from _plain(f"{key}.name", _quoted(was.name), _quoted(now.name))
        yield from _plain(f"{key}.class", was.drug_class, now.drug_class)
        salt = (was.salt.name if was.salt else None, now.salt.name if now.salt else None)
        yield from _plain(f"{key}.salt", *salt)
        if was.concentration is not None and now.concentration is not None:
            change = _quantity(f"{key}.concentration", was.concentration, now.concentration)
            if change is not None:
                yield change
        else:
            texts = (c.text if c else None for c in (was.concentration, now.concentration))
            yield from _plain(f"{key}.concentration", *texts)
        yield from _sets(f"{key}.aliases", was.aliases, now.aliases)


def _describe(p: Product) -> str:
    detail = [p.drug_class]
    if p.salt is not None:
        detail.append(f"{p.salt.name} salt")
    if p.concentration is not None:
        detail.append(p.concentration.text)
    aliases = f"; aliases {', '.join(map(_quoted, p.aliases))}" if p.aliases else ""
    return f"{_quoted(p.name)} [{', '.join(detail)}]{aliases}"


def _rules(
    old: Mapping[str, RuleConfig], new: Mapping[str, RuleConfig], prefix: str = ""
) -> list[Change]:
    out: list[Change] = []
    for rule_id in RULES:
        was, now = old.get(rule_id), new.get(rule_id)
        if was is None or now is None:
            continue
        key = f"{prefix}rules.{rule_id}"
        out += _plain(f"{key}.enabled", was.enabled, now.enabled)
        out += _plain(f"{key}.priority", was.priority, now.priority)
        for name, q in now.quantities.items():
            before = was.quantities.get(name)
            change = _quantity(f"{key}.{name}", before, q) if before is not None else None
            out += [change] if change is not None else []
        for name, number in now.ints.items():
            out += _plain(f"{key}.{name}", was.ints.get(name), number)
        for name, classes in now.class_lists.items():
            out += _sets(f"{key}.{name}", was.class_lists.get(name, ()), classes)
    return out


def _alarms(old: Library, new: Library) -> Iterator[Change]:
    was, now = old.alarms, new.alarms
    for name, before, after in (
        ("pause", was.pause, now.pause),
        ("escalate_after", was.escalate_after, now.escalate_after),
    ):
        for priority, q in after.items():
            change = _quantity(f"alarms.{name}.{priority}", before[priority], q)
            if change is not None:
                yield change
    change = _quantity("alarms.override_max", was.override_max, now.override_max)
    if change is not None:
        yield change
    yield from _sets("alarms.latching", sorted(was.latching), sorted(now.latching))
    yield from _plain("alarms.audiences", " -> ".join(was.audiences), " -> ".join(now.audiences))
    yield from _sets("alarms.override_reasons", was.override_reasons, now.override_reasons)


def _profiles(old: Library, new: Library, said: list[Change]) -> list[Change]:
    """Profiles added or removed; for a profile of both, what changes for a unit running
    it beyond what the library's own changes say."""
    out: list[Change] = []
    for name in new.profiles.keys() - old.profiles.keys():
        out.append(Change(f"profiles.{name}", "+", new=_quoted(new.profiles[name])))
    for name in old.profiles.keys() - new.profiles.keys():
        out.append(Change(f"profiles.{name}", "-", old=_quoted(old.profiles[name])))
    known = {(c.key, c.old, c.new) for c in said}
    for name in sorted(old.profiles.keys() & new.profiles.keys()):
        was = parse_library(old.text, old.source, name).library
        now = parse_library(new.text, new.source, name).library
        if was is None or now is None:
            continue
        prefix = f"profiles.{name}."
        for change in _rules(was.rules, now.rules, prefix):
            if (change.key.removeprefix(prefix), change.old, change.new) not in known:
                out.append(change)
    return out
