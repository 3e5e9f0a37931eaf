"""Unit-safe quantities: one pint registry, parsed once per distinct unit string.

Every quantity that enters CalGuard is a string ``"<number> <unit>"``. It is checked here,
at the boundary, against the *kind* of quantity the field needs (a volumetric rate, a
concentration, ...) and turned into a plain float in that kind's canonical unit. Inside
the engine values are floats in canonical units and their names say so (``rate_ml_min``).

pint is slow for this job when used naively (a ``Quantity(text).to(unit)`` costs about
100-400 µs), so each distinct unit string is parsed once: its dimension is checked and its
factor to the canonical unit is cached. Whole quantity strings are cached too, because a
pump repeats the same ``"1.2 ml/h"`` every second. A bare number, an unknown unit, a unit
of the wrong dimension, a negative, NaN or infinite value is a ``QuantityError`` with a
reason written for the person who sent it; nothing is ever guessed.

Two notations of pharmacy that pint does not know are read here, each with its one
meaning, and refused with that meaning spelt out where it does not fit:

- **mEq** counts charges. CalGuard's amounts are of elemental calcium, whose ion carries
  two: 2 mEq = 1 mmol. An amount in mEq is converted so; a mass or a volume in mEq is
  refused with that explanation (a mass per time is not an amount of ions).
- **%** is % w/v (g/100 ml: 10% calcium gluconate is 100 mg/ml) where the drug library
  expects a concentration (``to_canonical(..., percent_wv=True)``, the pharmacist's own
  notation); anywhere else it is refused with what it would mean ("2% w/v is 20 mg/ml"),
  a pump's reading included: a device states its concentration in mg/ml.

pint's own warnings (``"15 mins"`` can be read as minutes or milli-inches: pint says so on
its logger and picks minutes) never reach the person: the dimension check decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import pint
import pint.util
from calguard.monitor.errors import QuantityError

__all__ = [
    "CALCIUM_CHARGE",
    "CONCENTRATION",
    "DURATION",
    "KINDS",
    "MASS",
    "MASS_RATE",
    "PRESSURE",
    "SALT_PER_WEIGHT_RATE",
    "SIGNIFICANT",
    "SUBSTANCE",
    "SUBSTANCE_PER_VOLUME",
    "SUBSTANCE_PER_WEIGHT",
    "SUBSTANCE_PER_WEIGHT_RATE",
    "VOLUME",
    "VOLUME_RATE",
    "WEIGHT",
    "Kind",
    "format_beside",
    "format_number",
    "format_quantity",
    "from_canonical",
    "is_unit",
    "own_notation",
    "parse_duration_us",
    "parse_quantity",
    "percent_meaning",
    "split_quantity",
    "to_canonical",
    "unit_factor",
    "value_cache",
]

#: The one registry. pint quantities from different registries cannot be mixed, so every
#: part of CalGuard that needs pint imports this one.
ureg: Any = pint.UnitRegistry()
# what pint says on its one logger (an ambiguous "mins") is not for the person: CalGuard's
# own checks explain every refusal, and the dimension check decides what an ambiguity meant
pint.util.logger.setLevel("ERROR")

#: Molar mass of calcium, g/mol (= mg/mmol). A physical constant, not a setting.
CALCIUM_MG_PER_MMOL = 40.078
#: The charge of the calcium ion: an equivalent of Ca2+ is half a mole (2 mEq = 1 mmol).
CALCIUM_CHARGE = 2
# Equivalents of calcium, as pint knows them once defined; what people write ("mEq",
# "meq", "Eq") is turned into this name before pint reads it.
ureg.define(f"calcium_equivalent = mole / {CALCIUM_CHARGE} = Eq_Ca")


@dataclass(frozen=True, slots=True)
class Kind:
    """What a quantity field must measure, and the canonical unit CalGuard computes in.

    ``per_body_weight`` marks limits such as ``mg/kg/h``: pint reduces mg/kg to a pure
    number, so ``mg/kg/h`` has the same dimension as ``1/h`` or ``ml/ml/h``. For those the
    unit itself must be an amount per body mass per time, which is checked structurally.
    """

    name: str
    canonical: str
    expected: str
    example: str
    dimensionality: str
    per_body_weight: bool = False

    def describe(self) -> str:
        return f'{self.expected} (e.g. "{self.example}")'


VOLUME_RATE = Kind(
    "volume rate", "ml/min", "a volume per time", "30 ml/h", "[length] ** 3 / [time]"
)
CONCENTRATION = Kind(
    "concentration", "mg/ml", "a mass per volume", "100 mg/ml", "[mass] / [length] ** 3"
)
WEIGHT = Kind("weight", "kg", "a body weight (a mass)", "1.2 kg", "[mass]")
MASS = Kind("mass", "mg", "a mass", "500 mg", "[mass]")
VOLUME = Kind("volume", "ml", "a volume", "3.1 ml", "[length] ** 3")
DURATION = Kind("duration", "microsecond", "a time span", "60 min", "[time]")
PRESSURE = Kind("pressure", "mmHg", "a pressure", "45 mmHg", "[mass] / [length] / [time] ** 2")
MASS_RATE = Kind("mass rate", "mg/min", "a mass per time", "100 mg/min", "[mass] / [time]")
SUBSTANCE = Kind("amount", "mmol", "an amount of substance", "0.5 mmol", "[substance]")
SUBSTANCE_PER_WEIGHT = Kind(
    "amount per body weight",
    "mmol/kg",
    "an amount per body weight",
    "3 mmol/kg",
    "[substance] / [mass]",
)
SUBSTANCE_PER_VOLUME = Kind(
    "amount per volume",
    "mmol/ml",
    "an amount of substance per volume",
    "0.2325 mmol/ml",
    "[substance] / [length] ** 3",
)
SALT_PER_WEIGHT_RATE = Kind(
    "mass per body weight per time",
    "mg/kg/min",
    "a mass per body weight per time",
    "33 mg/kg/h",
    "1 / [time]",
    per_body_weight=True,
)
SUBSTANCE_PER_WEIGHT_RATE = Kind(
    "amount per body weight per time",
    "mmol/kg/min",
    "an amount per body weight per time",
    "0.125 mmol/kg/h",
    "[substance] / [mass] / [time]",
)

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        VOLUME_RATE,
        CONCENTRATION,
        WEIGHT,
        MASS,
        VOLUME,
        DURATION,
        PRESSURE,
        MASS_RATE,
        SUBSTANCE,
        SUBSTANCE_PER_WEIGHT,
        SUBSTANCE_PER_VOLUME,
        SALT_PER_WEIGHT_RATE,
        SUBSTANCE_PER_WEIGHT_RATE,
    )
}

# Names for dimensions people meet, so that a wrong unit is explained, not just refused.
_DIMENSION_NAMES = {
    "[length] ** 3 / [time]": "a volume per time",
    "[mass] / [length] ** 3": "a mass per volume",
    "[mass]": "a mass",
    "[length] ** 3": "a volume",
    "[time]": "a time",
    "[mass] / [time]": "a mass per time",
    "[substance]": "an amount of substance",
    "[substance] / [mass]": "an amount per mass",
    "[substance] / [length] ** 3": "an amount per volume",
    "[substance] / [time]": "an amount per time",
    "[substance] / [mass] / [time]": "an amount per mass per time",
    "[mass] / [length] / [time] ** 2": "a pressure",
    "1 / [time]": "a frequency (per time)",
    "[length]": "a length",
    "dimensionless": "a plain number",
}

# ASCII digits only: Python reads Arabic-Indic or full-width digits as numbers, which a
# person checking the label or the log would not read so. Refused, not read.
_NUMBER_UNIT = re.compile(
    r"\s*(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>.*?)\s*\Z",
    re.DOTALL | re.ASCII,
)
_NOT_FINITE = re.compile(r"\s*[+-]?(?:nan|inf|infinity)\b", re.IGNORECASE)
# Unit strings are handed to pint's expression parser, so only unit-like text gets there.
_UNIT_TEXT = re.compile(r"[A-Za-zµμ/*^(). \t0-9_]{1,40}\Z")
# an equivalent: mEq, meq, µEq, Eq, mEquiv (the prefix as written: M is not milli)
_EQUIVALENT = re.compile(r"(?<![A-Za-z])(?P<prefix>[mµμu]?)(?i:eq|equiv|equivalents?)(?![A-Za-z])")
# % w/v; "%" alone means it too. Any other percentage (w/w, v/v) is refused.
_PERCENT = re.compile(r"%\s*(?:(?P<basis>[A-Za-z]+\s*/\s*[A-Za-z]+))?", re.ASCII)
_MG_ML_PER_PERCENT = 10.0  # 1% w/v = 1 g/100 ml = 10 mg/ml
_VALUE_CACHE_MAX = 8192


def split_quantity(text: object) -> tuple[float, str]:
    """Split ``"30 ml/h"`` into ``(30.0, "ml/h")``; the unit is not checked here."""
    if isinstance(text, bool) or not isinstance(text, str):
        if isinstance(text, int | float):
            raise QuantityError(text, "a bare number", "a quantity string with its unit")
        raise QuantityError(text, "not a quantity string", 'a string such as "30 ml/h"')
    m = _NUMBER_UNIT.match(text)
    if not text.isascii() and any(c.isdigit() and not c.isascii() for c in text):
        raise QuantityError(text, "digits other than 0-9 are refused, not read")
    if m is None:
        if _NOT_FINITE.match(text):
            raise QuantityError(text, "not a finite number")
        raise QuantityError(text, "does not start with a number")
    value = float(m["num"])
    if not math.isfinite(value):
        raise QuantityError(text, "not a finite number")
    if value < 0:
        raise QuantityError(text, "negative values are not allowed")
    return value, m["unit"]


@cache
def _dimensionality(expr: str) -> Any:
    return ureg.get_dimensionality(expr)


@cache
def _canonical_units(kind: Kind) -> Any:
    return ureg.parse_units(kind.canonical)


def _parse_units(unit: str, kind: Kind) -> Any:
    if not _UNIT_TEXT.match(unit):
        raise QuantityError(unit, f"{unit!r} is not a unit CalGuard can read", kind.describe())
    try:
        return ureg.parse_units(unit)
    except Exception as exc:  # pint raises many types (UndefinedUnitError, AssertionError, ...)
        reason = f"unknown unit {unit!r} ({_pint_reason(exc)})"
        raise QuantityError(unit, reason, kind.describe()) from None


def _pint_reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text and len(text) < 120 else type(exc).__name__


def _describe_dimension(units: Any) -> str:
    dim = str(units.dimensionality)
    return _DIMENSION_NAMES.get(dim, f"of dimension {dim}")


def _check_per_body_weight(unit: str, units: Any, kind: Kind) -> None:
    # Expect exactly: one amount (mass) up, one body mass down, one time down.
    ups, downs, times = [], [], []
    for name, exponent in units._units.items():
        dim = str(ureg.get_dimensionality(name))
        if dim == "[mass]" and exponent == 1:
            ups.append(name)
        elif dim == "[mass]" and exponent == -1:
            downs.append(name)
        elif dim == "[time]" and exponent == -1:
            times.append(name)
        else:
            break
    else:
        if len(ups) == len(downs) == len(times) == 1 and len(units._units) == 3:
            return
    raise QuantityError(
        unit, f"{unit!r} is not an amount per body weight per time", kind.describe()
    )


def _calcium_equivalents(unit: str, kind: Kind) -> str:
    """``unit`` with its equivalents named as calcium's (mEq -> mEq_Ca, half a millimole)
    where ``kind`` is an amount of calcium; refused with that meaning anywhere else."""
    if not _EQUIVALENT.search(unit):
        return unit
    if "[substance]" not in kind.dimensionality:
        raise QuantityError(
            unit,
            f"{unit!r} is in equivalents, an amount of calcium ions (2 mEq = 1 mmol = "
            f"{CALCIUM_MG_PER_MMOL:.2f} mg of calcium), where no amount is expected",
            kind.describe(),
        )
    return _EQUIVALENT.sub(lambda m: f"{m['prefix']}Eq_Ca", unit)


def _percent_factor(unit: str, kind: Kind, *, percent_wv: bool) -> float:
    """% w/v (g/100 ml) where the library expects a concentration; refused anywhere else."""
    m = _PERCENT.fullmatch(unit)
    if m is None or (m["basis"] and m["basis"].replace(" ", "").lower() != "w/v"):
        raise QuantityError(
            unit, f"{unit!r}: of percentages only % w/v (g/100 ml) is read", kind.describe()
        )
    if kind is not CONCENTRATION or not percent_wv:
        where = "where a concentration is expected" if percent_wv else "in the drug library"
        raise QuantityError(
            unit, f"{unit!r} is a percentage, read as % w/v only {where}", kind.describe()
        )
    return _MG_ML_PER_PERCENT


def is_unit(unit: str) -> bool:
    """Whether CalGuard can read ``unit`` at all, whatever it measures."""
    if unit.startswith("%"):
        return bool(_PERCENT.fullmatch(unit))
    if not _UNIT_TEXT.match(unit):
        return False
    try:
        ureg.parse_units(_EQUIVALENT.sub(lambda m: f"{m['prefix']}Eq_Ca", unit))
    except Exception:  # pint raises many types; any of them means "not a unit"
        return False
    return True


def own_notation(unit: str) -> bool:
    """A unit written in equivalents or as a percentage: a notation with one meaning of its
    own, which a hint must never swap for mmol or mg/ml."""
    return unit.startswith("%") or bool(_EQUIVALENT.search(unit))


def percent_meaning(number: float) -> str:
    """``"2% w/v is 20 mg/ml"``: what a percentage of a solution means, in CalGuard's unit."""
    shown = format_number(number, significant=15)
    return f"{shown}% w/v is {format_number(number * _MG_ML_PER_PERCENT, significant=15)} mg/ml"


@cache
def unit_factor(unit: str, kind: Kind) -> float:
    """Factor that turns a number in ``unit`` into ``kind``'s canonical unit (cached)."""
    if unit.startswith("%"):
        return _percent_factor(unit, kind, percent_wv=False)
    units = _parse_units(_calcium_equivalents(unit, kind), kind)
    if units.dimensionality != _dimensionality(kind.dimensionality):
        raise QuantityError(unit, f"{unit!r} is {_describe_dimension(units)}", kind.describe())
    if kind.per_body_weight:
        _check_per_body_weight(unit, units, kind)
    factor = float(ureg.Quantity(1.0, units).to(_canonical_units(kind)).magnitude)
    if not math.isfinite(factor) or factor <= 0:
        raise QuantityError(unit, "cannot be converted to a usable value")
    return factor


def to_canonical(number: float, unit: str, kind: Kind, *, percent_wv: bool = False) -> float:
    """``number`` in ``unit`` as a float in ``kind``'s canonical unit; ``percent_wv``: a
    percentage is % w/v where a concentration is expected (the drug library's). A
    percentage refused says what that very number means (2% w/v is 20 mg/ml)."""
    try:
        if unit.startswith("%"):
            return number * _percent_factor(unit, kind, percent_wv=percent_wv)
        return number * unit_factor(unit, kind)
    except QuantityError as exc:
        if not unit.startswith("%"):
            raise
        reason = f"{exc.reason} ({percent_meaning(number)})"
        raise QuantityError(exc.text, reason, exc.expected) from None


_value_cache: dict[Kind, dict[str, float]] = {}


def parse_quantity(text: object, kind: Kind) -> float:
    """Parse a quantity string into a float in ``kind``'s canonical unit.

    Raises ``QuantityError`` for a bare number, an unknown unit, a wrong dimension, or a
    negative, NaN or infinite value.
    """
    cache_for_kind = _value_cache.get(kind)
    if cache_for_kind is None:
        cache_for_kind = _value_cache.setdefault(kind, {})
    if isinstance(text, str):
        hit = cache_for_kind.get(text)
        if hit is not None:
            return hit
    number, unit = split_quantity(text)  # refuses anything that is not a string
    if not unit:
        raise QuantityError(text, "a bare number", f"{kind.describe()} with its unit")
    value = to_canonical(number, unit, kind)
    if not math.isfinite(value):
        raise QuantityError(text, "not a finite number in canonical units")
    if len(cache_for_kind) >= _VALUE_CACHE_MAX:
        cache_for_kind.clear()
    cache_for_kind[str(text)] = value
    return value


def value_cache(kind: Kind) -> dict[str, float]:
    """The cache of whole quantity strings of ``kind`` (for hot paths that look up first)."""
    return _value_cache.setdefault(kind, {})


def parse_duration_us(text: object) -> int:
    """A time span as whole microseconds, the engine's unit of time."""
    return round(parse_quantity(text, DURATION))


def from_canonical(value: float, kind: Kind, unit: str) -> float:
    """Express a canonical ``kind`` value in ``unit`` (whose factor is cached)."""
    return value / unit_factor(unit, kind)


#: Significant digits of a number shown to people: enough to act on, no false precision.
SIGNIFICANT = 3
# Beyond this many digits a float shows its binary noise (2.0000000000000004).
_MAX_SIGNIFICANT = 15
# A value within this relative distance of a limit is shown *as* the limit: conversion
# noise, or a crossing computed to the microsecond (the daily dose reaches its limit when
# the alert is raised, 1e-12 above it). Ten times the rules' own slack (1e-9), so that any
# value a rule calls "above" by more than noise is shown with the digits that say so.
_AT_LIMIT = 1e-8


def format_number(x: float, significant: int = SIGNIFICANT) -> str:
    """A number for people: ``significant`` significant digits (3), but every digit before
    the point kept (``1235``, not ``1.24e3``), no exponent, no trailing zeros:
    ``0.0008599`` -> ``0.00086``, ``0.5869`` -> ``0.587``, ``2.0`` -> ``2``."""
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    digits = max(0, significant - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:.{digits}f}"  # correctly rounded from the float's exact value
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_beside(x: float, limit: float, significant: int = SIGNIFICANT) -> str:
    """``x`` as ``format_number`` shows it, with as many more digits as it takes to stay on
    its side of ``limit``: 2.0004 against a limit of 2 is ``2.0004``, never ``2``, which
    would read as "at the limit" on an alert that says it is above. A value within the
    rules' slack of the limit is shown as the limit."""
    if not (math.isfinite(x) and math.isfinite(limit)):
        return format_number(x, significant)
    bound = float(f"{limit:.12g}")  # the limit as written, without conversion noise
    if abs(x - bound) <= _AT_LIMIT * abs(bound):
        return format_number(bound if bound else x, significant)
    for n in range(significant, _MAX_SIGNIFICANT + 1):
        text = format_number(x, n)
        if (float(text) > bound) == (x > bound) and float(text) != bound:
            return text
    return format_number(x, _MAX_SIGNIFICANT)


def format_quantity(
    value_canonical: float, kind: Kind, unit: str | None = None, *, limit: float | None = None
) -> str:
    """``"3 ml/min"``: a canonical value shown in ``unit`` (default the canonical unit).

    ``limit`` (canonical, same kind): the limit the value is shown against; a value on one
    side of it is never rounded onto it or past it (``format_beside``)."""
    unit = unit or kind.canonical
    shown = from_canonical(value_canonical, kind, unit)
    if limit is None:
        return f"{format_number(shown)} {unit}"
    return f"{format_beside(shown, from_canonical(limit, kind, unit))} {unit}"
