"""Patient-level rules: the 24-hour elemental calcium dose and ceftriaxone in neonates."""

from __future__ import annotations

import math

import pytest
from calguard.monitor.timeutil import format_ts

from tests.support import Bedside, us

GLUCONATE_CA = 0.093
CA_MG_PER_MMOL = 40.078
TEN_PERCENT = "Calcium gluconate 10%"
# mmol of elemental calcium per ml of 10% calcium gluconate
MMOL_PER_ML = 100 * GLUCONATE_CA / CA_MG_PER_MMOL
HOUR_US = 3_600_000_000


def crossing(start: str, mmol: float, ml_h: float, rounding=math.ceil) -> int:  # type: ignore[no-untyped-def]
    """When ``mmol`` of calcium has run in at ``ml_h`` since ``start`` (µs, rounded up)."""
    return us(start) + int(rounding(mmol / (ml_h * MMOL_PER_ML) * HOUR_US))


def close_to(alert: dict[str, str], expected_us: int) -> bool:
    """The alert time is the computed instant (to the microsecond the engine counts in)."""
    return abs(us(alert["t"]) - expected_us) <= 1


# -- dose-daily: 3 mmol/kg of elemental calcium in 24 h ------------------------------------------


def test_the_daily_dose_fires_at_the_moment_the_total_passes_the_limit() -> None:
    bay = Bedside()
    bay.admit(weight="1 kg")
    bay.reading("08:00", rate="6 ml/h", drug=TEN_PERCENT)
    for minute in range(10, 60, 10):  # readings every 10 minutes, unchanged
        bay.reading(f"08:{minute}", rate="6 ml/h", drug=TEN_PERCENT)
    bay.clock("10:30")
    (raised,) = bay.of("dose-daily")
    assert raised["state"] == "raised" and raised["priority"] == "high"
    assert close_to(raised, crossing("08:00", 3.0, 6.0))  # about 10:09:17
    assert raised["limit"] == "3 mmol/kg" and raised["bed"] == "B1"


def test_stopping_exactly_at_the_limit_does_not_alarm_and_just_below_neither() -> None:
    at_the_limit = crossing("08:00", 3.0, 6.0, math.floor)  # the last µs not above 3 mmol
    for stop_us in (at_the_limit, crossing("08:00", 2.99, 6.0)):
        bay = Bedside()
        bay.admit(weight="1 kg")
        bay.reading("08:00", rate="6 ml/h", drug=TEN_PERCENT)
        bay.reading(format_ts(stop_us), rate="0 ml/h", drug=TEN_PERCENT, status="stopped")
        bay.clock("20:00")
        assert bay.of("dose-daily") == []


def test_the_dose_limit_scales_with_weight() -> None:
    bay = Bedside()
    bay.admit(weight="1.5 kg")
    bay.reading("08:00", rate="6 ml/h", drug=TEN_PERCENT)
    bay.clock("12:00")
    assert close_to(bay.of("dose-daily")[0], crossing("08:00", 4.5, 6.0))


def test_the_alert_clears_when_the_early_calcium_leaves_the_24_hour_window() -> None:
    bay = Bedside()
    bay.admit(weight="1 kg")
    bay.reading("08:00", rate="6 ml/h", drug=TEN_PERCENT)
    stop = crossing("08:00", 3.3, 6.0)
    bay.reading(format_ts(stop), rate="0 ml/h", drug=TEN_PERCENT, status="stopped")
    bay.clock("12:00", day="2026-11-22")
    raised, cleared = bay.of("dose-daily")
    assert close_to(raised, crossing("08:00", 3.0, 6.0))
    # the window drops what ran in first: 0.3 mmol after 08:00 the next day
    assert cleared["state"] == "cleared"
    assert close_to(cleared, crossing("08:00", 0.3, 6.0) + 24 * HOUR_US)


def test_all_channels_and_documented_doses_count_towards_the_total() -> None:
    bay = Bedside()
    bay.admit(weight="1 kg")
    bay.send("08:00", "line", line="L2", bed="B1", kind="picc", tip_confirmed=True)
    bay.send("08:00", "connect", pump="P2", line="L2")
    bay.send("08:00", "patency_check", line="L2", result="blood_return")
    bay.reading("08:00", rate="3 ml/h", drug=TEN_PERCENT)
    bay.reading("08:00", pump="P2", rate="3 ml/h", drug=TEN_PERCENT)
    # an IV push of 500 mg calcium gluconate (1.16 mmol) at 08:30
    bay.send(
        "08:30", "medication", bed="B1", drug="Calcium gluconate 10%", dose="500 mg", route="iv"
    )
    bay.clock("12:00")
    pushed = 500 * GLUCONATE_CA / CA_MG_PER_MMOL
    # 6 ml/h in all; the push brings the crossing forward by pushed/rate
    expected = crossing("08:00", 3.0 - pushed, 6.0)
    assert close_to(bay.of("dose-daily")[0], expected)


def test_no_dose_check_without_a_weight() -> None:
    bay = Bedside()
    bay.admit(weight=None)
    bay.reading("08:00", rate="6 ml/h", drug=TEN_PERCENT)
    bay.clock("20:00")
    assert bay.of("dose-daily") == []
    assert "context-missing" in bay.active_rules()


def test_a_calcium_medication_without_its_dose_is_refused_with_a_reason() -> None:
    bay = Bedside()
    bay.admit()
    bay.send("08:30", "medication", bed="B1", drug="Calcium gluconate 10%")
    record = bay.records[-1]
    assert record.status == "rejected" and "dose" in record.reason


def test_a_new_infant_in_the_bed_does_not_inherit_the_dose() -> None:
    bay = Bedside()
    bay.send("08:00", "patient", bed="B1", weight="1 kg", patient="p-1")
    bay.send(
        "08:00", "medication", bed="B1", drug="Calcium gluconate 10%", dose="1400 mg"
    )  # 3.25 mmol
    bay.send("09:00", "patient", bed="B1", weight="1 kg", patient="p-2")
    bay.send(
        "09:00", "medication", bed="B1", drug="Calcium gluconate 10%", dose="800 mg"
    )  # 1.86 mmol
    assert bay.states("dose-daily") == [
        ("2026-11-21T08:00:00Z", "raised", "high"),
        ("2026-11-21T09:00:00Z", "cleared", "high"),  # p-1's alert ends with p-1's stay
    ]


# -- ceftriaxone in neonates -----------------------------------------------------------------------


def ceftriaxone_then_calcium(
    given: str, age: str | None = "5 day", day: str = "2026-11-21"
) -> Bedside:
    bay = Bedside()
    bay.send(given, "medication", day=day, bed="B1", drug="Ceftriaxone", route="iv", dose="50 mg")
    bay.admit("08:00", age=age)
    bay.reading("08:05", rate="1 ml/h", drug=TEN_PERCENT)
    return bay


@pytest.mark.parametrize(
    ("given", "day", "alarms"),
    [
        ("06:00", "2026-11-21", True),
        ("08:05:01", "2026-11-19", True),  # 47:59:59 before the calcium start
        ("08:05", "2026-11-19", False),  # exactly 48 h before: outside the window
    ],
)
def test_calcium_within_48_h_of_ceftriaxone(given: str, day: str, alarms: bool) -> None:
    bay = ceftriaxone_then_calcium(given, day=day)
    assert ("ceftriaxone-neonate" in bay.active_rules()) is alarms


def test_the_ceftriaxone_alert_clears_exactly_48_h_after_the_dose() -> None:
    bay = ceftriaxone_then_calcium("06:00")
    bay.clock("07:00", day="2026-11-23")
    assert bay.states("ceftriaxone-neonate") == [
        ("2026-11-21T08:05:00Z", "raised", "high"),
        ("2026-11-23T06:00:00Z", "cleared", "high"),
    ]


@pytest.mark.parametrize(
    ("age", "alarms"), [("28 day", True), ("28.9 day", True), ("29 day", False)]
)
def test_ceftriaxone_rule_covers_infants_up_to_28_completed_days(age: str, alarms: bool) -> None:
    bay = ceftriaxone_then_calcium("06:00", age=age)
    assert ("ceftriaxone-neonate" in bay.active_rules()) is alarms


def test_an_unknown_age_is_treated_as_a_neonate_and_says_so() -> None:
    bay = ceftriaxone_then_calcium("06:00", age=None)
    assert "age unknown, treated as a neonate" in bay.of("ceftriaxone-neonate")[0]["message"]


def test_ceftriaxone_running_on_another_line_while_calcium_infuses() -> None:
    bay = Bedside()
    bay.admit()
    bay.send("08:00", "line", line="L2", bed="B1", kind="piv")
    bay.send("08:00", "connect", pump="P2", line="L2")
    bay.reading("08:05", rate="1 ml/h", drug=TEN_PERCENT)
    bay.reading("09:00", pump="P2", rate="10 ml/h", drug="Ceftriaxone 40 mg/ml")
    bay.reading("09:30", pump="P2", rate="0 ml/h", drug="Ceftriaxone 40 mg/ml", status="stopped")
    bay.reading("09:31", rate="0 ml/h", drug=TEN_PERCENT, status="stopped")
    assert bay.states("ceftriaxone-neonate") == [
        ("2026-11-21T09:00:00Z", "raised", "high"),
        ("2026-11-21T09:31:00Z", "cleared", "high"),  # calcium stopped
    ]


def test_ceftriaxone_in_another_bed_does_not_concern_this_infant() -> None:
    bay = Bedside()
    bay.send("06:00", "medication", bed="B2", drug="Ceftriaxone", dose="50 mg")
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=TEN_PERCENT)
    assert "ceftriaxone-neonate" not in bay.active_rules()
