"""Line rules: co-infusion, patency (backflow) checks, site checks, cannula rotation,
occlusion. Every timer is checked to fire at its exact expiry, not at the next input."""

from __future__ import annotations

import pytest
from calguard.config import parse_library
from calguard.config.loader import builtin_text

from tests.support import Bedside

CA = "Calcium gluconate 20 mg/ml"


def infusing(clock: str = "08:05", **admit: object) -> Bedside:
    bay = Bedside()
    bay.admit(**admit)  # type: ignore[arg-type]
    bay.reading(clock, rate="1 ml/h", drug=CA)
    return bay


# -- incompatible-coinfusion -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("drug", "priority"),
    [
        ("Sodium bicarbonate 4.2%", "high"),
        ("THAM 0.3 M", "high"),
        ("Potassium phosphate", "high"),
        ("sodium glycerophosphate 1 mmol/ml", "high"),
        ("Ceftriaxone 50 mg/ml", "high"),
        ("Magnesium sulfate 10%", "medium"),
        ("Dextrose 10%", None),
        ("Normal saline", None),
    ],
)
def test_another_drug_on_the_same_line_as_calcium(drug: str, priority: str | None) -> None:
    bay = infusing()
    bay.send("08:06", "connect", pump="P2", line="L1")
    bay.reading("08:07", pump="P2", rate="0.5 ml/h", drug=drug)
    assert bay.active().get("incompatible-coinfusion") == priority


def test_bicarbonate_on_a_separate_line_is_not_coinfusion() -> None:
    bay = infusing()
    bay.send("08:06", "line", line="L2", bed="B1", kind="piv")
    bay.send("08:06", "connect", pump="P2", line="L2")
    bay.reading("08:07", pump="P2", rate="0.5 ml/h", drug="Sodium bicarbonate 4.2%")
    assert "incompatible-coinfusion" not in bay.active_rules()


def test_coinfusion_escalates_from_sulfate_to_bicarbonate_and_clears_when_calcium_stops() -> None:
    bay = infusing()
    bay.send("08:06", "connect", pump="P2", line="L1")
    bay.send("08:06", "connect", pump="P3", line="L1")
    bay.reading("08:07", pump="P2", rate="0.5 ml/h", drug="Magnesium sulfate 10%")
    bay.reading("08:08", pump="P3", rate="0.5 ml/h", drug="Sodium bicarbonate 4.2%")
    bay.reading("08:09", rate="0 ml/h", drug=CA, status="stopped")
    assert bay.states("incompatible-coinfusion") == [
        ("2026-11-21T08:07:00Z", "raised", "medium"),
        ("2026-11-21T08:08:00Z", "escalated", "high"),
        ("2026-11-21T08:09:00Z", "cleared", "high"),
    ]
    assert "Sodium bicarbonate" in bay.of("incompatible-coinfusion")[1]["message"]


# -- patency (blood backflow) before every start --------------------------------------------------


def test_starting_calcium_without_a_patency_check() -> None:
    bay = Bedside()
    bay.admit(patency=None)
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.send("08:10", "patency_check", line="L1", result="blood_return", by="rn42")
    assert bay.states("patency-check-missing") == [
        ("2026-11-21T08:05:00Z", "raised", "medium"),
        ("2026-11-21T08:10:00Z", "cleared", "medium"),
    ]


@pytest.mark.parametrize(
    ("check_at", "alarms"),
    [("07:50:00", False), ("07:49:59", True), ("08:04:59", False)],
)
def test_the_patency_check_must_be_within_15_min_before_the_start(
    check_at: str, alarms: bool
) -> None:
    bay = Bedside()
    bay.admit("07:30", patency=None)
    bay.send(check_at, "patency_check", line="L1", result="blood_return")
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    assert ("patency-check-missing" in bay.active_rules()) is alarms


def test_flush_ok_counts_as_a_passing_check() -> None:
    bay = Bedside()
    bay.admit(patency="flush_ok")
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    assert "patency-check-missing" not in bay.active_rules()


@pytest.mark.parametrize(("resume_at", "new_start"), [("08:39:59", False), ("08:40", True)])
def test_a_pause_shorter_than_10_min_is_not_a_new_start(resume_at: str, new_start: bool) -> None:
    bay = infusing("08:00")
    bay.reading("08:30", rate="0 ml/h", drug=CA, status="paused")
    bay.reading(resume_at, rate="1 ml/h", drug=CA)
    assert ("patency-check-missing" in bay.active_rules()) is new_start


def test_a_failed_patency_check_on_a_line_carrying_calcium() -> None:
    bay = infusing()
    bay.send("08:30", "patency_check", line="L1", result="flush_failed", by="rn42")
    bay.send("08:35", "patency_check", line="L1", result="blood_return", by="rn42")
    assert bay.states("patency-check-failed") == [
        ("2026-11-21T08:30:00Z", "raised", "high"),
        ("2026-11-21T08:35:00Z", "cleared", "high"),
    ]


def test_a_failed_check_on_a_line_without_calcium_is_not_a_calcium_alarm() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug="Dextrose 10%")
    bay.send("08:30", "patency_check", line="L1", result="flush_failed")
    assert "patency-check-failed" not in bay.active_rules()


# -- hourly site checks ------------------------------------------------------------------------


def test_site_check_overdue_fires_at_60_and_escalates_at_90_min_exactly() -> None:
    bay = infusing("08:03")
    for minute in range(4, 60, 1):  # the pump keeps reporting every minute
        bay.reading(f"08:{minute:02d}", rate="1 ml/h", drug=CA)
    for minute in range(0, 50, 1):
        bay.reading(f"09:{minute:02d}:30", rate="1 ml/h", drug=CA)
    assert bay.states("site-check-overdue") == [
        ("2026-11-21T09:03:00Z", "raised", "medium"),
        ("2026-11-21T09:33:00Z", "escalated", "high"),
    ]
    raised, escalated = bay.of("site-check-overdue")
    assert (raised["value"], raised["limit"]) == ("60 min", "60 min")
    assert (escalated["value"], escalated["limit"]) == ("90 min", "90 min")


def test_the_site_timer_counts_from_the_last_check() -> None:
    bay = infusing("08:03")
    bay.send("08:30", "site_check", line="L1", grade=0, by="rn42")
    bay.clock("09:45")
    assert bay.states("site-check-overdue")[0] == ("2026-11-21T09:30:00Z", "raised", "medium")


def test_a_check_documented_exactly_at_the_hour_is_on_time() -> None:
    bay = infusing("08:03")
    bay.send("09:03", "site_check", line="L1", grade=0)
    bay.clock("10:02:59")
    assert bay.of("site-check-overdue") == []
    bay.clock("10:10")
    assert bay.states("site-check-overdue") == [("2026-11-21T10:03:00Z", "raised", "medium")]


def test_documenting_the_check_clears_the_overdue_alert() -> None:
    bay = infusing("08:03")
    bay.clock("09:10")
    bay.send("09:12", "site_check", line="L1", grade=0)
    assert bay.states("site-check-overdue") == [
        ("2026-11-21T09:03:00Z", "raised", "medium"),
        ("2026-11-21T09:12:00Z", "cleared", "medium"),
    ]


def test_no_site_timer_for_a_confirmed_central_line_or_after_calcium_stops() -> None:
    central = infusing("08:03", kind="picc", tip_confirmed=True)
    central.clock("12:00")
    stopped = infusing("08:03")
    stopped.reading("08:50", rate="0 ml/h", drug=CA, status="stopped")
    stopped.clock("12:00")
    assert central.of("site-check-overdue") == [] and stopped.of("site-check-overdue") == []


# -- abnormal site: stop and start the extravasation protocol ----------------------------------


@pytest.mark.parametrize(
    ("grade", "findings", "alarms"),
    [(0, [], False), (1, [], True), (3, ["swelling", "blanching"], True), (0, ["blanching"], True)],
)
def test_an_abnormal_site_while_calcium_infuses(
    grade: int, findings: list[str], alarms: bool
) -> None:
    bay = infusing()
    bay.send("08:30", "site_check", line="L1", grade=grade, findings=findings)
    assert ("site-abnormal" in bay.active_rules()) is alarms
    if alarms:
        assert bay.active()["site-abnormal"] == "high"
        assert "extravasation protocol" in bay.of("site-abnormal")[0]["message"]


def test_an_abnormal_site_stays_active_until_calcium_stops() -> None:
    bay = infusing()
    bay.send("08:30", "site_check", line="L1", grade=2, findings=["swelling"])
    bay.send("08:31", "site_check", line="L1", grade=0)  # a second look does not make it go away
    assert "site-abnormal" in bay.active_rules()
    bay.reading("08:32", rate="0 ml/h", drug=CA, status="stopped")
    assert bay.states("site-abnormal") == [
        ("2026-11-21T08:30:00Z", "raised", "high"),
        ("2026-11-21T08:32:00Z", "cleared", "high"),
    ]


def test_starting_calcium_on_a_site_last_found_abnormal() -> None:
    bay = Bedside()
    bay.admit()
    bay.send("08:02", "site_check", line="L1", grade=2)
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    assert bay.states("site-abnormal") == [("2026-11-21T08:05:00Z", "raised", "high")]


def test_the_abnormal_grade_threshold_is_the_pharmacists_setting() -> None:
    library = parse_library(
        builtin_text().replace("min_grade = 1", "min_grade = 2"), "lib.toml"
    ).library
    assert library is not None
    bay = Bedside(library)
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.send("08:30", "site_check", line="L1", grade=1)
    assert "site-abnormal" not in bay.active_rules()
    bay.send("08:31", "site_check", line="L1", grade=2)
    assert "site-abnormal" in bay.active_rules()


# -- cannula rotation ---------------------------------------------------------------------------


def test_cannula_dwell_fires_48_h_after_insertion_and_clears_on_removal() -> None:
    bay = infusing("08:05")
    bay.reading("09:00", rate="0 ml/h", drug=CA, status="stopped")
    bay.clock("07:59:59", day="2026-11-23")
    assert bay.of("cannula-dwell") == []
    bay.clock("08:30", day="2026-11-23")
    bay.send("08:40", "line_removed", day="2026-11-23", line="L1")
    assert bay.states("cannula-dwell") == [
        ("2026-11-23T08:00:00Z", "raised", "medium"),
        ("2026-11-23T08:40:00Z", "cleared", "medium"),
    ]
    assert bay.of("cannula-dwell")[0]["value"] == "48 h"


def test_a_cannula_older_than_48_h_alarms_as_soon_as_it_carries_calcium() -> None:
    bay = Bedside()
    bay.admit("10:00", inserted="2026-11-19T09:00:00Z")
    bay.reading("10:05", rate="1 ml/h", drug=CA)
    assert bay.states("cannula-dwell") == [("2026-11-21T10:05:00Z", "raised", "medium")]
    assert bay.of("cannula-dwell")[0]["value"] == "49.1 h"  # 49 h 5 min, 3 significant digits


def test_no_rotation_timer_without_calcium_or_on_a_confirmed_central_line() -> None:
    plain = Bedside()
    plain.admit()
    plain.reading("08:05", rate="1 ml/h", drug="Dextrose 10%")
    central = infusing(kind="uvc", tip_confirmed=True)
    for bay in (plain, central):
        bay.clock("12:00", day="2026-11-24")
        assert bay.of("cannula-dwell") == []


def test_updating_a_line_does_not_reset_its_insertion_time() -> None:
    bay = infusing("08:05", kind="picc")
    bay.send(
        "10:00", "line", line="L1", bed="B1", kind="picc", tip_confirmed=False, site="right arm"
    )
    bay.clock("08:10", day="2026-11-23")
    assert bay.states("cannula-dwell") == [("2026-11-23T08:00:00Z", "raised", "medium")]


# -- occlusion ----------------------------------------------------------------------------------


def test_an_occlusion_on_a_calcium_channel() -> None:
    bay = infusing()
    bay.reading("08:20", rate="1 ml/h", drug=CA, status="alarm", alarm="occlusion")
    bay.reading("08:25", rate="1 ml/h", drug=CA)
    assert bay.states("occlusion") == [
        ("2026-11-21T08:20:00Z", "raised", "medium"),
        ("2026-11-21T08:25:00Z", "cleared", "medium"),
    ]
    assert "precipitate" in bay.of("occlusion")[0]["message"]


def test_an_occlusion_on_another_channel_sharing_the_calcium_line() -> None:
    bay = infusing()
    bay.send("08:06", "connect", pump="P2", line="L1")
    bay.reading(
        "08:20", pump="P2", rate="2 ml/h", drug="Dextrose 10%", status="alarm", alarm="Occlusion"
    )
    (alert,) = bay.of("occlusion")
    assert alert["pump"] == "P2" and "carries calcium" in alert["message"]


def test_an_occlusion_far_from_calcium_is_not_a_calcium_alarm() -> None:
    bay = infusing()
    bay.send("08:06", "line", line="L2", bed="B1", kind="piv")
    bay.send("08:06", "connect", pump="P2", line="L2")
    bay.reading(
        "08:20", pump="P2", rate="2 ml/h", drug="Dextrose 10%", status="alarm", alarm="occlusion"
    )
    assert bay.of("occlusion") == []
