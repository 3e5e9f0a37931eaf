"""Units a pharmacist can trust in the drug library (issue #14, part 1).

The traps found by writing realistic mistakes: ``"6 mEq/kg"`` was offered ``"6 mmol/kg"``
(double the dose: 1 mmol of calcium is 2 mEq), ``"2%"`` was offered ``"2 mg/ml"`` (2% w/v
is 20 mg/ml), and ``"15 mins"`` let pint's own warning reach the terminal. Now mEq is
read with calcium's charge or refused with it, % is % w/v where a concentration is
expected or refused with what it would mean, and a hint never proposes another dose.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from calguard.config.loader import builtin_text, parse_library
from calguard.monitor import units
from calguard.monitor.errors import EventError, QuantityError
from calguard.monitor.events import parse_event
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).parent.parent


def problems(old: str, new: str) -> list[str]:
    text = builtin_text()
    assert old in text
    result = parse_library(text.replace(old, new, 1), "nicu.toml")
    assert result.library is None, "the library was expected to be refused"
    return [str(p) for p in result.problems]


# -- mEq: calcium's charge ---------------------------------------------------------------------


def test_a_daily_dose_in_meq_is_half_as_many_millimoles() -> None:
    lib = parse_library(
        builtin_text().replace('limit = "3 mmol/kg"', 'limit = "6 mEq/kg"'), "nicu.toml"
    ).library
    assert lib is not None
    assert lib.rule("dose-daily").q("limit").value == pytest.approx(3.0)  # canonical mmol/kg


@pytest.mark.parametrize(
    ("text", "kind", "mmol"),
    [
        ("6 mEq/kg", units.SUBSTANCE_PER_WEIGHT, 3.0),
        ("0.25 meq/kg/h", units.SUBSTANCE_PER_WEIGHT_RATE, 0.125 / 60),
        ("0.465 mEq/ml", units.SUBSTANCE_PER_VOLUME, 0.2325),
        ("930 µEq", units.SUBSTANCE, 0.465),
    ],
)
def test_meq_converts_with_the_charge_of_calcium(text: str, kind: units.Kind, mmol: float) -> None:
    assert units.parse_quantity(text, kind) == pytest.approx(mmol)


def test_meq_where_a_mass_is_expected_is_refused_with_the_charge_and_no_hint() -> None:
    (problem,) = problems('continuous_medium = "33 mg/kg/h"', 'continuous_medium = "6 mEq/kg/h"')
    assert "rules.rate-weight.continuous_medium" in problem
    assert "2 mEq = 1 mmol" in problem
    assert "did you mean" not in problem


def test_an_implausible_meq_value_is_never_offered_as_mmol() -> None:
    """0.8 mEq/kg is 0.4 mmol/kg, below the plausible 0.5: "0.8 mmol/kg" would double it."""
    (problem,) = problems('limit = "3 mmol/kg"', 'limit = "0.8 mEq/kg"')
    assert "0.4 mmol/kg, outside the plausible range" in problem
    assert "did you mean" not in problem


def test_mega_is_not_milli() -> None:
    with pytest.raises(QuantityError, match="unknown unit"):
        units.parse_quantity("3 MEq/kg", units.SUBSTANCE_PER_WEIGHT)


# -- %: w/v where a concentration is expected --------------------------------------------------


@pytest.mark.parametrize("written", ["2%", "2 %", "2% w/v", "2 %w/v"])
def test_percent_is_weight_per_volume_for_a_concentration(written: str) -> None:
    lib = parse_library(
        builtin_text().replace('continuous_limit = "10 mg/ml"', f'continuous_limit = "{written}"'),
        "nicu.toml",
    ).library
    assert lib is not None
    assert lib.rule("concentration-peripheral").q("continuous_limit").value == 20.0  # mg/ml


def test_a_product_of_ten_percent_is_a_hundred_mg_per_ml() -> None:
    lib = parse_library(
        builtin_text().replace(
            'concentration = "100 mg/ml"           # 10% w/v', 'concentration = "10%"  # 10% w/v'
        ),
        "nicu.toml",
    ).library
    assert lib is not None
    product = next(p for p in lib.products if p.id == "ca-gluconate-10")
    assert product.concentration is not None and product.concentration.value == 100.0


def test_a_pump_reporting_a_percentage_is_refused_with_what_it_would_mean() -> None:
    """A device states its concentration in mg/ml; % w/v is the pharmacist's notation."""
    reading = {
        "t": "2026-11-21T08:00:00Z",
        "type": "reading",
        "pump": "P1",
        "drug": "Calcium gluconate 10%",
        "concentration": "10%",
        "rate": "1 ml/h",
        "status": "infusing",
    }
    with pytest.raises(EventError, match=r"only in the drug library \(10% w/v is 100 mg/ml\)"):
        parse_event(reading)


def test_percent_elsewhere_is_refused_with_what_it_would_mean_and_no_hint() -> None:
    (problem,) = problems('limit = "2 ml/min"', 'limit = "2%"')
    assert "2% w/v is 20 mg/ml" in problem
    assert "did you mean" not in problem


def test_other_percentages_are_refused() -> None:
    (problem,) = problems('continuous_limit = "10 mg/ml"', 'continuous_limit = "1% w/w"')
    assert "only % w/v" in problem
    assert "did you mean" not in problem


# -- hints re-spell, they never change a dose --------------------------------------------------


@pytest.mark.parametrize(
    ("new", "hint"),
    [
        # understood, implausible as written: the usual unit is named, never another dose
        ('limit = "2 ml/h"', "check the unit: this setting is usually written in ml/min"),
        ('limit = "2 ml/mn"', 'did you mean "2 ml/min"?'),  # a misspelt unit
        ("limit = 2", 'did you mean "2 ml/min"?'),  # no unit at all
    ],
)
def test_a_hint_respells_what_was_meant(new: str, hint: str) -> None:
    (problem,) = problems('limit = "2 ml/min"', new)
    assert hint in problem


def test_a_unit_of_another_dimension_gets_no_hint() -> None:
    (problem,) = problems('limit = "100 mg/min"', 'limit = "100 ml/min"')
    assert "is a volume per time" in problem
    assert "did you mean" not in problem


# -- pint keeps quiet --------------------------------------------------------------------------


def test_pint_says_nothing_about_ambiguous_units(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    units.unit_factor.cache_clear()
    assert units.parse_quantity("15 mins", units.DURATION) == 15 * 60e6
    assert not [r for r in caplog.records if r.name.startswith("pint")]


def test_config_check_of_15_mins_prints_no_pint_warning(tmp_path: Path) -> None:
    path = tmp_path / "nicu.toml"
    path.write_text(builtin_text().replace('window = "15 min"', 'window = "15 mins"'))
    done = subprocess.run(
        [sys.executable, "-m", "calguard.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    assert "pint" not in done.stderr and "Parsing" not in done.stderr


# -- the conversions hold for any value --------------------------------------------------------

values = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@given(values)
def test_meq_is_always_half_a_millimole(x: float) -> None:
    meq = units.parse_quantity(f"{x!r} mEq/kg", units.SUBSTANCE_PER_WEIGHT)
    assert meq == pytest.approx(
        units.parse_quantity(f"{x / 2!r} mmol/kg", units.SUBSTANCE_PER_WEIGHT)
    )


@given(values)
def test_percent_is_always_ten_mg_per_ml(x: float) -> None:
    number, unit = units.split_quantity(f"{x!r}%")
    assert units.to_canonical(number, unit, units.CONCENTRATION, percent_wv=True) == pytest.approx(
        10 * x
    )
