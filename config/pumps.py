"""What a site's pumps carry, checked against the drug library.

A pump on a serial line knows its address, not its drug: the site config says what each
one carries (``PUMP_OPTIONS``). Wherever a driver's pump tables declare them, the keys are
checked as the engine will see them: each table gives a reading that must be a valid
event, each pump id is used once in the site, a drug is a product of the library, matched
as the engine matches it (a label that names calcium but no product, or that is like a
product's name, is a mistake; any other label is a drug the library need not know, which
the engine takes as neutral: "Dextrose 10%"), and a calcium pump states its concentration
as a plausible mass per volume.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from calguard.config.options import OptionSpec, check_options, table_values
from calguard.monitor import units
from calguard.monitor.errors import EventError
from calguard.monitor.events import parse_event
from calguard.monitor.library import Library, normalise_label

__all__ = ["check_pumps"]

Problem = Callable[[str, str], None]
#: the concentration of a pump's syringe (mg/ml), as for the library's products
_CONCENTRATION_RANGE = (0.1, 500.0)
#: a label this like a product's name or alias is taken for a misspelling of it (from
#: difflib's ratio: 1 is the same text); a label that names calcium, a little less like
_LIKE, _LIKE_CALCIUM = 0.8, 0.6
#: a reading as the driver sends it, for the keys of a pump table to be checked in
_PROBE = {
    "t": "2026-01-01T00:00:00Z",
    "type": "reading",
    "pump": "P",
    "channel": "A",
    "rate": "0 ml/h",
    "status": "stopped",
}


def check_pumps(
    drivers: list[tuple[str, Mapping[str, Any], Mapping[str, OptionSpec]]],
    library: Library | None,
    problem: Problem,
) -> None:
    """Report what is wrong with the pump tables of the site's drivers, given as (key,
    options, option specs): pump ids used twice, drugs, concentrations."""
    ids: dict[str, str] = {}  # pump id -> the table that names it first
    for key, options, specs in drivers:
        for table_key, table, given in _pump_tables(key, options, specs):
            pump = table.get("pump")
            first = ids.setdefault(pump, table_key) if pump is not None else table_key
            if first.partition(".")[0] != key:  # within one driver: reported with its table
                problem(
                    f"{table_key}.pump",
                    f'"{pump}" is also the pump id of {first}; each pump of the site needs '
                    "its own id (alerts and the log name the pump by it)",
                )
            _check_carried(table_key, table, given, library, problem)


def _pump_tables(
    key: str, options: Mapping[str, Any], specs: Mapping[str, OptionSpec]
) -> Iterator[tuple[str, dict[str, Any], set[str]]]:
    """The pump tables, with their defaults, and the keys each gives; of a table that does
    not fit its spec (that is reported), the keys that do."""
    for name, spec in specs.items():
        tables = options.get(name)
        if spec.table is None or "drug" not in spec.table or not isinstance(tables, list):
            continue
        for index, table in enumerate(tables):
            if not isinstance(table, dict):
                continue
            if any(check_options({name: [table]}, specs, "")):
                keys = spec.table
                values = {k: v for k, v in table.items() if k in keys and not keys[k].problem(v)}
            else:
                values = table_values(table, spec.table)
            yield f"{key}.{name}[{index}]", values, set(table)


def _check_carried(
    key: str, table: Mapping[str, Any], given: set[str], library: Library | None, problem: Problem
) -> None:
    fine = _as_in_a_reading(key, table, problem)
    drug, concentration = fine.get("drug"), fine.get("concentration")
    calcium = False
    if library is not None and drug is not None:
        match = library.match(drug)
        calcium = match.is_calcium
        message = _drug_problem(drug, library) if match.product is None else None
        if message is not None:
            problem(f"{key}.drug", message)
    if concentration is not None:
        mg_ml = units.parse_quantity(concentration, units.CONCENTRATION)
        low, high = _CONCENTRATION_RANGE
        if not low <= mg_ml <= high:
            problem(
                f"{key}.concentration",
                f'"{concentration}" is {units.format_number(mg_ml)} mg/ml, outside the '
                f"plausible range {low:g} to {high:g} mg/ml",
            )
    elif "concentration" not in given and calcium:
        problem(
            f"{key}.concentration",
            "is missing; a pump of calcium needs the concentration in its syringe, "
            f'e.g. "{_example(drug, library)}"',
        )


def _as_in_a_reading(key: str, table: Mapping[str, Any], problem: Problem) -> dict[str, str]:
    """The texts of the table that are valid in a reading (the driver sends them in each
    one); the others are reported, in the words of the event validation."""
    fine = {}
    for name in ("pump", "channel", "drug", "concentration"):
        value = table.get(name)
        if value is None:
            continue
        try:
            parse_event({**_PROBE, name: value})
        except EventError as exc:
            problem(f"{key}.{name}", f"{_show(value)} — {exc.expected}")
            continue
        fine[name] = str(value)
    return fine


def _drug_problem(label: str, library: Library) -> str | None:
    """Why a label that matches no product is a mistake, or None for a drug the library
    need not know."""
    if library.match(label).mentions_calcium:
        near = _nearest_product(label, library, _LIKE_CALCIUM)
        hint = f'; did you mean "{near}"?' if near else "; or add it to the library"
        return (
            f'"{label}" names calcium but is no product of the drug library '
            f"({library.name}): CalGuard would raise product-unknown and check no limit "
            f"for it{hint}"
        )
    near = _nearest_product(label, library, _LIKE)
    if near is None:
        return None
    return (
        f'"{label}" is no product of the drug library ({library.name}) but like one: did '
        f'you mean "{near}"? As written it matches no product, and CalGuard would check no '
        "incompatibility for it"
    )


def _nearest_product(label: str, library: Library, cutoff: float) -> str | None:
    """The name of the product whose name or alias is most like ``label``, if any is at
    least ``cutoff`` like it."""
    norm = normalise_label(label)
    best, score = None, cutoff
    for product in library.products:
        for name in (product.name, *product.aliases):
            alias = normalise_label(name)
            for text in (norm, norm[: len(alias)]):  # the label may go on with a strength
                ratio = difflib.SequenceMatcher(None, text, alias).ratio()
                if ratio > score:
                    best, score = product.name, ratio
    return best


def _example(drug: str | None, library: Library | None) -> str:
    match = library.match(drug) if library is not None and drug is not None else None
    if match is not None and match.product is not None and match.product.concentration:
        return match.product.concentration.text
    return "20 mg/ml"


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)
