"""``calguard config show``: the effective library, each limit in its own unit and converted.

A pharmacist thinks in mg/kg/h, a nurse reads ml/h on the pump: every limit is shown as
written, in the other usual units, and, for each calcium product, as the pump rate that
reaches it (``2 ml/min = 120 ml/h = 200 mg/min of Calcium gluconate 10%``). A care-area
profile's effective library (``--profile``) marks the settings the profile sets with ``*``.
"""

from __future__ import annotations

from collections.abc import Iterator

from calguard.config.schema import RULES
from calguard.monitor import units
from calguard.monitor.library import ConfiguredQuantity, Library, Product
from calguard.monitor.units import CALCIUM_MG_PER_MMOL, format_number

__all__ = ["render_library"]

_US = {"s": 1e6, "min": 60e6, "h": 3600e6, "day": 86400e6}


def _per_product(lib: Library) -> list[Product]:
    return [p for p in lib.calcium_products if p.concentration is not None]


def _conversions(q: ConfiguredQuantity, lib: Library) -> Iterator[str]:
    kind, v = q.kind, q.value
    products = _per_product(lib)
    gluconate = lib.salts["gluconate"].elemental_fraction
    if kind is units.VOLUME_RATE:
        yield f"= {format_number(v * 60)} ml/h"
        for p in products:
            assert p.concentration is not None
            yield (
                f"= {format_number(v * p.concentration.value * p.gluconate_equivalent)} "
                "mg/min of gluconate"
                f"{'' if p.is_gluconate else ' equivalent'} with {p.name}"
            )
    elif kind is units.MASS_RATE:
        yield f"= {format_number(v * 60)} mg/h of calcium gluconate"
        for p in products:
            assert p.concentration is not None
            ml_min = v / (p.concentration.value * p.gluconate_equivalent)
            ml_h = format_number(ml_min * 60)
            yield f"= {format_number(ml_min)} ml/min = {ml_h} ml/h of {p.name}"
    elif kind is units.SALT_PER_WEIGHT_RATE:
        yield f"= {format_number(v * 60)} mg/kg/h = {format_number(v)} mg/kg/min of gluconate"
        elemental = format_number(v * 60 * gluconate / CALCIUM_MG_PER_MMOL)
        yield f"= {elemental} mmol/kg/h elemental calcium"
        for p in products:
            assert p.concentration is not None
            ml = v * 60 / (p.concentration.value * p.gluconate_equivalent)
            yield f"= {format_number(ml)} ml/kg/h of {p.name}"
    elif kind is units.SUBSTANCE_PER_WEIGHT_RATE:
        yield f"= {format_number(v * 60)} mmol/kg/h elemental calcium"
        salt = format_number(v * 60 * CALCIUM_MG_PER_MMOL / gluconate)
        yield f"= {salt} mg/kg/h of calcium gluconate"
        for p in products:
            assert p.concentration is not None
            ml = v * 60 / (p.concentration.value * p.elemental_mmol_per_mg())
            yield f"= {format_number(ml)} ml/kg/h of {p.name}"
    elif kind is units.SUBSTANCE_PER_WEIGHT:
        yield f"= {format_number(v * CALCIUM_MG_PER_MMOL / gluconate)} mg/kg of calcium gluconate"
        for p in products:
            assert p.concentration is not None
            ml = v / (p.concentration.value * p.elemental_mmol_per_mg())
            yield f"= {format_number(ml)} ml/kg of {p.name}"
    elif kind is units.CONCENTRATION:
        elemental = format_number(v * gluconate / CALCIUM_MG_PER_MMOL)
        yield f"= {elemental} mmol/ml elemental calcium (gluconate)"
        yield f"= {format_number(v / 10)} % w/v"
    elif kind is units.DURATION:
        shown = [
            f"{format_number(v / f)} {u}"
            for u, f in _US.items()
            if u != q.unit and 0.01 <= v / f < 10_000
        ]
        if shown:
            yield "= " + " = ".join(shown)
    elif kind is units.PRESSURE:
        yield f"= {units.format_quantity(v, kind, 'kPa')}"


def _profile_lines(lib: Library) -> list[str]:
    if lib.profile is not None:
        about = lib.profiles.get(lib.profile) or "no description"
        return [
            f"  profile {lib.profile}: {about}",
            "  (* the profile's own setting; every other one is the library's)",
        ]
    if lib.profiles:
        return [f"  profiles: {', '.join(lib.profiles)} (show one with --profile NAME)"]
    return []


def render_library(lib: Library) -> str:
    out = [f"{lib.name}", f"  version {lib.version}   source {lib.source}"]
    out += [*_profile_lines(lib), ""]
    out.append("Products (pump labels match the name or an alias, longest first):")
    for p in lib.products:
        detail = [p.drug_class]
        if p.salt:
            detail.append(f"{p.salt.name} salt")
        if p.concentration:
            c = p.concentration.value
            detail.append(f"{p.concentration.text}")
            if p.salt:
                detail.append(
                    f"{format_number(c * p.elemental_mmol_per_mg())} mmol/ml elemental Ca"
                )
        out.append(f"  {p.name}  [{', '.join(detail)}]")
        if p.aliases:
            out.append(f"      aliases: {', '.join(p.aliases)}")
    out.append(
        f"  Labels containing {', '.join(repr(k) for k in lib.calcium_keywords)} "
        "that match no product: product-unknown"
    )
    out.append("")
    out.append("Rules:")
    for rule_id in RULES:
        cfg = lib.rule(rule_id)
        state = "enabled" if cfg.enabled else "DISABLED"
        prio = cfg.priority or "two levels"

        def mark(key: str, rule: str = rule_id) -> str:
            return "*" if f"rules.{rule}.{key}" in lib.overridden else " "

        own = "*" if "*" in mark("priority") + mark("enabled") else " "
        out.append(f" {own}{rule_id:<26} {prio:<10} {state}")
        for key, q in cfg.quantities.items():
            out.append(f"     {mark(key)}{key:<20} {q.text}")
            out.extend(f"      {'':<20} {line}" for line in _conversions(q, lib))
        for key, n in cfg.ints.items():
            out.append(f"     {mark(key)}{key:<20} {n}")
        for key, classes in cfg.class_lists.items():
            out.append(f"     {mark(key)}{key:<20} {', '.join(classes) or '(none)'}")
    a = lib.alarms
    out += ["", "Alarms:"]
    for priority in ("high", "medium", "low"):
        latch = ", latches until reset" if priority in a.latching else ""
        out.append(
            f"  {priority:<7} audio pause {a.pause[priority].text}; unacknowledged "
            f"{a.escalate_after[priority].text} -> next audience{latch}"
        )
    out.append(f"  audiences: {' -> '.join(a.audiences)}")
    out.append(
        f"  override reasons: {', '.join(a.override_reasons)}; at most {a.override_max.text}"
    )
    return "\n".join(out) + "\n"
