"""Quantities: the cached fast path agrees with pint, and nothing is ever guessed."""

from __future__ import annotations

import math

import pytest
from calguard.monitor import units
from calguard.monitor.errors import QuantityError
from calguard.monitor.timeutil import format_ts, parse_ts
from calguard.monitor.units import ureg
from hypothesis import given, settings
from hypothesis import strategies as st

UNITS_BY_KIND = {
    units.VOLUME_RATE: ["ml/h", "mL/min", "ml/hr", "ul/min", "µl/h", "l/h", "cc/h"],
    units.CONCENTRATION: ["mg/ml", "g/l", "mcg/ml", "mg/mL", "g/dl"],
    units.WEIGHT: ["kg", "g", "lb"],
    units.DURATION: ["s", "min", "h", "hour", "day", "d"],
    units.PRESSURE: ["mmHg", "kPa", "cmH2O", "torr"],
    units.SALT_PER_WEIGHT_RATE: ["mg/kg/h", "mg/kg/min", "g/kg/day", "mg/(kg*h)"],
    units.SUBSTANCE_PER_WEIGHT_RATE: ["mmol/kg/h", "umol/kg/min"],
}
pairs = st.sampled_from([(kind, unit) for kind, names in UNITS_BY_KIND.items() for unit in names])


@settings(max_examples=500, deadline=None)
@given(
    pair=pairs, value=st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
)
def test_cached_conversion_agrees_with_pint(pair: tuple[units.Kind, str], value: float) -> None:
    kind, unit = pair
    ours = units.parse_quantity(f"{value!r} {unit}", kind)
    theirs = ureg.Quantity(value, unit).to(kind.canonical).magnitude
    assert math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_is_a_quantity_or_a_quantity_error(text: str) -> None:
    try:
        value = units.parse_quantity(text, units.VOLUME_RATE)
    except QuantityError as exc:
        reason = exc.reason
        assert reason.strip()
    else:
        assert math.isfinite(value) and value >= 0


def test_ml_per_hour_and_ml_per_minute_cannot_be_confused() -> None:
    assert units.parse_quantity("120 ml/h", units.VOLUME_RATE) == pytest.approx(2.0)
    assert units.parse_quantity("2 ml/min", units.VOLUME_RATE) == 2.0
    assert units.format_quantity(2.0, units.VOLUME_RATE, "ml/h") == "120 ml/h"


@pytest.mark.parametrize("text", ["33 ml/ml/h", "33 1/h", "33 percent/h", "33 mg/h"])
def test_a_weight_based_limit_needs_an_amount_per_body_weight_per_time(text: str) -> None:
    with pytest.raises(QuantityError):
        units.parse_quantity(text, units.SALT_PER_WEIGHT_RATE)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (3.0, "3"),
        (0.02, "0.02"),
        (1234.56, "1235"),  # digits before the point are never dropped
        (0.2325, "0.233"),
        (0.000123, "0.000123"),
        (0.0008599, "0.00086"),
        (0.5869, "0.587"),
        (9.996, "10"),
        (0.0, "0"),
    ],
)
def test_numbers_for_a_nurse(value: float, shown: str) -> None:
    assert units.format_number(value) == shown


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))  # up to 2100
def test_timestamps_round_trip_to_the_microsecond(us: int) -> None:
    assert parse_ts(format_ts(us)) == us


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("2026-11-21T09:00:00+01:00", parse_ts("2026-11-21T08:00:00Z")),
        ("2026-11-21T03:30:00-04:30", parse_ts("2026-11-21T08:00:00Z")),
        ("2026-11-21T08:00:00.5Z", parse_ts("2026-11-21T08:00:00Z") + 500_000),
    ],
)
def test_offsets_and_fractions(text: str, us: int) -> None:
    assert parse_ts(text) == us
