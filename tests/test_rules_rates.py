"""Rate, mass, weight and concentration limits: at, just below and just above each limit,
in the units pumps really send (ml/h), with the boundaries computed here independently
from the clinical constants rather than taken from the engine."""

from __future__ import annotations

import pytest
from calguard.config import parse_library
from calguard.config.loader import builtin_text

from tests.support import Bedside

GLUCONATE_CA = 0.093  # mg Ca per mg calcium gluconate
CHLORIDE_CA = 0.273
CA_MG_PER_MMOL = 40.078

DILUTED = "Calcium gluconate 20 mg/ml"
TEN_PERCENT = "Calcium gluconate 10%"


def started(rate: str, drug: str = DILUTED, **admit: object) -> Bedside:
    bay = Bedside()
    bay.admit(**admit)  # type: ignore[arg-type]
    bay.reading("08:05", rate=rate, drug=drug)
    return bay


# -- rate-volume: never more than 2 ml/min --------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "alarms"),
    [
        ("119.9 ml/h", False),
        ("120 ml/h", False),  # exactly 2 ml/min
        ("120.1 ml/h", True),
        ("2 ml/min", False),
        ("2.01 ml/min", True),
        ("2000 ul/min", False),
        ("0.0335 ml/s", True),
    ],
)
def test_rate_volume_at_below_and_above_the_2_ml_min_limit(rate: str, alarms: bool) -> None:
    bay = started(rate)
    assert ("rate-volume" in bay.active_rules()) is alarms


def test_rate_volume_alert_speaks_in_the_limit_unit_and_the_pump_unit() -> None:
    bay = started("180 ml/h")
    (alert,) = bay.of("rate-volume")
    assert alert["priority"] == "high"
    assert (alert["value"], alert["limit"]) == ("3 ml/min", "2 ml/min")
    assert "3 ml/min (180 ml/h)" in alert["message"]
    assert DILUTED in alert["message"] and "P1/A" in alert["message"]
    assert (alert["bed"], alert["line"], alert["pump"], alert["channel"]) == ("B1", "L1", "P1", "A")


def test_rate_volume_clears_when_the_rate_is_turned_down() -> None:
    bay = started("180 ml/h")
    bay.reading("08:06", rate="60 ml/h", drug=DILUTED)
    assert bay.states("rate-volume") == [
        ("2026-11-21T08:05:00Z", "raised", "high"),
        ("2026-11-21T08:06:00Z", "cleared", "high"),
    ]


def test_a_limit_written_in_ml_h_is_shown_in_ml_h() -> None:
    text = builtin_text().replace('limit = "2 ml/min"', 'limit = "90 ml/h"')
    library = parse_library(text, "unit.toml").library
    assert library is not None
    bay = Bedside(library)
    bay.admit()
    bay.reading("08:05", rate="1.6 ml/min", drug=DILUTED)
    (alert,) = bay.of("rate-volume")
    assert (alert["value"], alert["limit"]) == ("96 ml/h", "90 ml/h")
    assert alert["library"] == library.version


def test_no_volumetric_alarm_for_a_drug_that_is_not_calcium() -> None:
    bay = started("300 ml/h", drug="Dextrose 10%")
    assert bay.active_rules() == set()


# -- rate-mass: at most 100 mg/min of calcium gluconate -------------------------------------


@pytest.mark.parametrize(
    ("rate", "extra", "alarms"),
    [
        ("59.9 ml/h", {}, False),
        ("60 ml/h", {}, False),  # 60 ml/h x 100 mg/ml = 100 mg/min
        ("60.1 ml/h", {}, True),
        ("120 ml/h", {"concentration": "50 mg/ml"}, False),  # the reading's concentration counts
        ("121 ml/h", {"concentration": "50 mg/ml"}, True),
    ],
)
def test_rate_mass_at_below_and_above_100_mg_min(
    rate: str, extra: dict[str, str], alarms: bool
) -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate=rate, drug=TEN_PERCENT, **extra)
    assert ("rate-mass" in bay.active_rules()) is alarms


def test_rate_mass_compares_chloride_by_its_gluconate_equivalent() -> None:
    # 100 mg/min of gluconate carries the calcium of 100 * 0.093/0.273 mg of chloride
    boundary_ml_h = 100 * GLUCONATE_CA / CHLORIDE_CA / 100 * 60  # 20.44 ml/h of 100 mg/ml
    below = started(f"{boundary_ml_h * 0.99:.3f} ml/h", drug="Calcium chloride 10%")
    above = started(f"{boundary_ml_h * 1.01:.3f} ml/h", drug="Calcium chloride 10%")
    assert "rate-mass" not in below.active_rules()
    assert "rate-mass" in above.active_rules()
    assert "gluconate equivalent" in above.of("rate-mass")[0]["message"]


# -- rate-weight -----------------------------------------------------------------------------

# 33 mg/kg/h of gluconate at 1 kg with 20 mg/ml: 1.65 ml/h
MEDIUM_ML_H = 33 / 20
# 0.125 mmol/kg/h elemental calcium at 1 kg with 20 mg/ml gluconate
HIGH_ML_H = 0.125 * CA_MG_PER_MMOL / (20 * GLUCONATE_CA)


@pytest.mark.parametrize(
    ("rate_ml_h", "priority"),
    [
        (MEDIUM_ML_H * 0.999, None),
        (MEDIUM_ML_H, None),
        (MEDIUM_ML_H * 1.001, "medium"),
        (HIGH_ML_H * 0.999, "medium"),
        (HIGH_ML_H, "medium"),
        (HIGH_ML_H * 1.001, "high"),
    ],
)
def test_rate_weight_continuous_levels(rate_ml_h: float, priority: str | None) -> None:
    bay = started(f"{rate_ml_h!r} ml/h")
    assert bay.active().get("rate-weight") == priority


def test_rate_weight_scales_with_the_infants_weight() -> None:
    assert "rate-weight" not in started(f"{2 * MEDIUM_ML_H} ml/h", weight="2 kg").active_rules()
    assert (
        "rate-weight" in started(f"{2 * MEDIUM_ML_H * 1.01} ml/h", weight="2000 g").active_rules()
    )


def test_rate_weight_escalates_and_never_silently_softens() -> None:
    bay = started("1.7 ml/h")
    bay.reading("08:10", rate="2.8 ml/h", drug=DILUTED)
    bay.reading("08:15", rate="1.7 ml/h", drug=DILUTED)  # eased to the medium level: stays high
    bay.reading("08:20", rate="1 ml/h", drug=DILUTED)
    assert bay.states("rate-weight") == [
        ("2026-11-21T08:05:00Z", "raised", "medium"),
        ("2026-11-21T08:10:00Z", "escalated", "high"),
        ("2026-11-21T08:20:00Z", "cleared", "high"),
    ]
    assert len({a["alert"] for a in bay.of("rate-weight")}) == 1
    assert bay.of("rate-weight")[1]["limit"] == "0.125 mmol/kg/h"


@pytest.mark.parametrize(
    ("rate", "priority"),
    [("6 ml/h", None), ("6.1 ml/h", "medium"), ("12 ml/h", "medium"), ("12.1 ml/h", "high")],
)
def test_rate_weight_bolus_levels(rate: str, priority: str | None) -> None:
    # 10 and 20 mg/kg/min at 1 kg with 100 mg/ml: 0.1 and 0.2 ml/min = 6 and 12 ml/h
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate=rate, drug=TEN_PERCENT, mode="bolus")
    assert bay.active().get("rate-weight") == priority


def test_intermittent_mode_uses_the_continuous_limits() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate=f"{MEDIUM_ML_H * 1.01} ml/h", drug=DILUTED, mode="intermittent")
    assert bay.active().get("rate-weight") == "medium"


def test_without_a_weight_the_weight_rules_are_suspended_and_that_is_said() -> None:
    bay = started("2.8 ml/h", weight=None)
    assert "rate-weight" not in bay.active_rules()
    (alert,) = bay.of("context-missing")
    assert "no documented weight" in alert["message"] and "suspended" in alert["message"]
    bay.send("08:10", "patient", bed="B1", weight="1 kg")
    assert bay.active().get("rate-weight") == "high"
    assert bay.states("context-missing")[-1] == ("2026-11-21T08:10:00Z", "cleared", "medium")


# -- concentration-peripheral ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concentration", "mode", "alarms"),
    [
        ("9.9 mg/ml", "continuous", False),
        ("10 mg/ml", "continuous", False),
        ("10.1 mg/ml", "continuous", True),
        ("50 mg/ml", "bolus", False),
        ("50.1 mg/ml", "bolus", True),
        ("50 mg/ml", "intermittent", False),
        ("51 mg/ml", "intermittent", True),
        ("1 %", "continuous", None),  # not a mass per volume: the reading is refused
    ],
)
def test_concentration_on_a_peripheral_line(
    concentration: str, mode: str, alarms: bool | None
) -> None:
    bay = Bedside()
    bay.admit()
    bay.reading(
        "08:05", rate="1 ml/h", drug="Calcium gluconate", concentration=concentration, mode=mode
    )
    if alarms is None:
        assert bay.active_rules() == {"telemetry-invalid"}
    else:
        assert ("concentration-peripheral" in bay.active_rules()) is alarms


@pytest.mark.parametrize(
    ("kind", "tip_confirmed", "peripheral"),
    [
        ("piv", False, True),
        ("midline", False, True),
        ("io", False, True),
        ("picc", False, True),  # a central line whose tip is not confirmed counts as peripheral
        ("picc", True, False),
        ("uvc", True, False),
        ("cvc", False, True),
    ],
)
def test_which_lines_count_as_peripheral(kind: str, tip_confirmed: bool, peripheral: bool) -> None:
    bay = started("1 ml/h", drug=TEN_PERCENT, kind=kind, tip_confirmed=tip_confirmed)
    assert ("concentration-peripheral" in bay.active_rules()) is peripheral


# -- salt, arterial lines ------------------------------------------------------------------


def test_calcium_chloride_breaks_the_gluconate_only_rule() -> None:
    bay = started("1 ml/h", drug="Calcium chloride 10%", kind="picc", tip_confirmed=True)
    assert bay.active().get("salt-not-gluconate") == "high"
    assert "chloride" in bay.of("salt-not-gluconate")[0]["message"]


def test_a_paused_chloride_syringe_is_not_infusing() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug="Calcium chloride 10%", status="paused")
    assert "salt-not-gluconate" not in bay.active_rules()


@pytest.mark.parametrize("kind", ["uac", "arterial"])
def test_calcium_into_an_arterial_line(kind: str) -> None:
    bay = started("0.5 ml/h", kind=kind)
    assert bay.active().get("line-arterial") == "high"
    assert "concentration-peripheral" not in bay.active_rules()
