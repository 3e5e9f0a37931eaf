"""Technical rules: silence is never safety. Stale and invalid telemetry, unknown products,
missing context, and the (advisory) pressure trend."""

from __future__ import annotations

import pytest

from tests.support import Bedside

CA = "Calcium gluconate 20 mg/ml"


def infusing(clock: str = "08:05", **admit: object) -> Bedside:
    bay = Bedside()
    bay.admit(**admit)  # type: ignore[arg-type]
    bay.reading(clock, rate="1 ml/h", drug=CA)
    return bay


# -- telemetry-stale ---------------------------------------------------------------------------


def test_a_silent_calcium_pump_is_stale_exactly_60_s_after_its_last_reading() -> None:
    bay = infusing("08:05")
    bay.clock("08:05:59")
    assert bay.of("telemetry-stale") == []
    bay.clock("08:30")
    (alert,) = bay.of("telemetry-stale")
    assert (alert["t"], alert["state"], alert["priority"]) == (
        "2026-11-21T08:06:00Z",
        "raised",
        "medium",
    )
    assert "No reading from P1/A" in alert["message"]


def test_a_reading_exactly_at_60_s_keeps_it_fresh_and_the_next_reading_clears_it() -> None:
    bay = infusing("08:05")
    bay.reading("08:06", rate="1 ml/h", drug=CA)
    bay.clock("08:06:59")
    assert bay.of("telemetry-stale") == []
    bay.reading("08:09", rate="1 ml/h", drug=CA)
    assert bay.states("telemetry-stale") == [
        ("2026-11-21T08:07:00Z", "raised", "medium"),
        ("2026-11-21T08:09:00Z", "cleared", "medium"),
    ]


def test_silence_after_calcium_stopped_or_from_other_drugs_is_not_stale() -> None:
    stopped = infusing()
    stopped.reading("08:06", rate="0 ml/h", drug=CA, status="stopped")
    dextrose = Bedside()
    dextrose.admit()
    dextrose.reading("08:05", rate="5 ml/h", drug="Dextrose 10%")
    for bay in (stopped, dextrose):
        bay.clock("10:00")
        assert bay.of("telemetry-stale") == []


def test_a_documented_disconnect_ends_the_stale_watch() -> None:
    bay = infusing()
    bay.clock("08:10")
    bay.send("08:11", "disconnect", pump="P1")
    bay.clock("09:00")
    assert bay.states("telemetry-stale") == [
        ("2026-11-21T08:06:00Z", "raised", "medium"),
        ("2026-11-21T08:11:00Z", "cleared", "medium"),
    ]


def test_a_late_reading_does_not_hide_staleness() -> None:
    bay = infusing("08:05")
    bay.clock("08:10")
    bay.reading("08:05:30", rate="1 ml/h", drug=CA)  # arrives late, still 4.5 min old
    assert "telemetry-stale" in bay.active_rules()


# -- telemetry-invalid ---------------------------------------------------------------------------


def test_a_reading_that_cannot_be_understood_raises_telemetry_invalid_on_that_channel() -> None:
    bay = infusing()
    bay.send("08:06", "reading", pump="P1", channel="A", rate="30", drug=CA)
    (alert,) = bay.of("telemetry-invalid")
    assert (alert["pump"], alert["channel"], alert["priority"]) == ("P1", "A", "medium")
    assert "bare number" in alert["message"]
    assert bay.records[-1].status == "rejected"
    bay.reading("08:07", rate="1 ml/h", drug=CA)
    assert bay.states("telemetry-invalid")[-1] == ("2026-11-21T08:07:00Z", "cleared", "medium")


def test_the_last_valid_state_is_kept_when_a_reading_is_invalid() -> None:
    bay = infusing()
    bay.reading("08:06", rate="180 ml/h", drug=CA)
    bay.send("08:07", "reading", pump="P1", rate="nan ml/h", drug=CA)
    assert {"rate-volume", "telemetry-invalid"} <= bay.active_rules()


def test_garbage_naming_a_channel_without_a_valid_time_still_alarms_on_that_channel() -> None:
    bay = infusing()
    bay.raw('{"t":"yesterday","type":"reading","pump":"P1","channel":"B","rate":"1 ml/h"}')
    (alert,) = bay.of("telemetry-invalid")
    assert (alert["t"], alert["pump"], alert["channel"]) == ("2026-11-21T08:05:00Z", "P1", "B")


def test_garbage_that_names_no_pump_is_logged_not_alarmed() -> None:
    bay = infusing()
    bay.raw(b"\x00\xff not json")
    assert bay.of("telemetry-invalid") == []
    assert bay.records[-1].status == "rejected"
    assert bay.records[-1].raw_sha256 is not None  # not UTF-8: the exact bytes are identified


# -- product-unknown ------------------------------------------------------------------------------


def test_a_calcium_label_that_matches_no_product_is_never_assumed_safe() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="300 ml/h", drug="Calcium glubionate 10%")
    alerts = bay.active()
    assert alerts["product-unknown"] == "medium"
    # what needs no product is still checked: 5 ml/min is above 2 ml/min
    assert alerts["rate-volume"] == "high"
    assert "may be chloride" in bay.of("product-unknown")[0]["message"]


def test_a_neutral_drug_is_not_unknown() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="3 ml/h", drug="Dextrose 10%")
    assert bay.active_rules() == set()


def test_an_unknown_calcium_medication_is_flagged_for_the_dose_window() -> None:
    bay = Bedside()
    bay.admit()
    bay.send("08:30", "medication", bed="B1", drug="Calcium glubionate syrup", dose="5 ml")
    bay.clock("09:00", day="2026-11-22")
    assert bay.states("product-unknown") == [
        ("2026-11-21T08:30:00Z", "raised", "medium"),
        ("2026-11-22T08:30:00Z", "cleared", "medium"),
    ]


# -- context-missing ------------------------------------------------------------------------------


def test_calcium_from_a_pump_with_no_line() -> None:
    bay = Bedside()
    bay.send("08:00", "patient", bed="B1", weight="1 kg")
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    (alert,) = bay.of("context-missing")
    assert "no documented line" in alert["message"] and "suspended" in alert["message"]


def test_calcium_connected_to_an_undocumented_line() -> None:
    bay = Bedside()
    bay.send("08:00", "connect", pump="P1", line="L9")
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    assert "line L9 has no line event" in bay.of("context-missing")[0]["message"]
    bay.send("08:06", "patient", bed="B1", weight="1 kg")
    bay.send("08:06", "line", line="L9", bed="B1", kind="piv")
    bay.send("08:06", "patency_check", line="L9", result="blood_return")
    # the line is documented now: the alert about it clears
    assert bay.states("context-missing")[-1] == ("2026-11-21T08:06:00Z", "cleared", "medium")


def test_line_and_weight_missing_are_two_separate_alerts() -> None:
    bay = Bedside()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.send("08:06", "line", line="L1", bed="B1", kind="piv")
    bay.send("08:06", "connect", pump="P1", line="L1")
    kinds = [a["message"].split(" but ")[1][:10] for a in bay.of("context-missing")]
    assert [a["state"] for a in bay.of("context-missing")] == ["raised", "cleared", "raised"]
    assert kinds == ["no documen", "no documen", "bed B1 has"]


def test_removing_the_line_under_a_running_pump() -> None:
    bay = infusing()
    bay.send("09:00", "line_removed", line="L1")
    assert "context-missing" in bay.active_rules()
    assert "site-check-overdue" not in bay.active_rules()


# -- pressure trend: advisory only ----------------------------------------------------------------


def pressures(values: list[tuple[str, str, str]]) -> Bedside:
    bay = Bedside()
    bay.admit()
    for clock, rate, pressure in values:
        bay.reading(clock, rate=rate, drug=CA, pressure=pressure)
    return bay


def test_a_sustained_pressure_rise_is_an_advisory_that_says_what_it_is_not() -> None:
    bay = pressures(
        [
            ("08:00", "1 ml/h", "20 mmHg"),
            ("08:03", "1 ml/h", "22 mmHg"),
            ("08:06", "1 ml/h", "70 mmHg"),
            ("08:11", "1 ml/h", "72 mmHg"),
            ("08:16", "1 ml/h", "75 mmHg"),
        ]
    )
    bay.reading("08:20", rate="1 ml/h", drug=CA, pressure="76 mmHg")
    bay.clock("08:20:30")
    assert bay.of("pressure-trend") == []
    bay.reading("08:21:30", rate="1 ml/h", drug=CA, pressure="74 mmHg")
    (alert,) = bay.of("pressure-trend")
    assert (alert["t"], alert["priority"]) == ("2026-11-21T08:21:00Z", "low")
    assert "NOT infiltration detection" in alert["message"]


def test_a_rise_of_49_mmhg_is_not_a_trend() -> None:
    bay = pressures(
        [
            ("08:00", "1 ml/h", "20 mmHg"),
            ("08:05", "1 ml/h", "69 mmHg"),
            ("08:20", "1 ml/h", "69 mmHg"),
        ]
    )
    bay.clock("08:40")
    assert bay.of("pressure-trend") == []


def test_a_rate_change_starts_a_new_baseline() -> None:
    # elevated from 08:05 (would fire at 08:20), but the rate changes at 08:10
    bay = pressures(
        [
            ("08:00", "1 ml/h", "20 mmHg"),
            ("08:05", "1 ml/h", "70 mmHg"),
            ("08:10", "2 ml/h", "75 mmHg"),
        ]
    )
    bay.reading("08:20", rate="2 ml/h", drug=CA, pressure="76 mmHg")
    bay.clock("08:40")
    assert bay.of("pressure-trend") == []
    control = pressures(
        [
            ("08:00", "1 ml/h", "20 mmHg"),
            ("08:05", "1 ml/h", "70 mmHg"),
            ("08:10", "1 ml/h", "75 mmHg"),
        ]
    )
    control.reading("08:20", rate="1 ml/h", drug=CA, pressure="76 mmHg")
    control.clock("08:40")
    assert control.states("pressure-trend") == [("2026-11-21T08:20:00Z", "raised", "low")]


def test_an_unlabelled_pump_infusing_into_a_patients_line_is_not_silently_neutral() -> None:
    bay = Bedside()
    bay.admit()
    bay.send("08:05", "reading", pump="P1", channel="A", rate="5 ml/h")
    (alert,) = bay.of("context-missing")
    assert alert["priority"] == "medium" and "no drug label" in alert["message"]
    bay.reading("08:06", rate="5 ml/h", drug="Dextrose 10%")
    assert bay.states("context-missing")[-1] == ("2026-11-21T08:06:00Z", "cleared", "medium")


def test_an_unlabelled_pump_on_no_line_is_left_alone() -> None:
    bay = Bedside()
    bay.send("08:05", "reading", pump="P9", channel="A", rate="5 ml/h")
    assert bay.active_rules() == set()


def test_a_pump_going_offline_while_infusing_calcium_is_stale_at_once() -> None:
    bay = infusing("08:05")
    bay.send("08:05:20", "pump_status", pump="P1", online=False)
    # back online: the offline cause ends; the 60 s silence limit has not been reached yet
    bay.send("08:05:40", "pump_status", pump="P1", online=True)
    # ... but if no reading follows, 60 s of silence after 08:05:00 makes it stale again
    bay.clock("08:07")
    assert bay.states("telemetry-stale") == [
        ("2026-11-21T08:05:20Z", "raised", "medium"),
        ("2026-11-21T08:05:40Z", "cleared", "medium"),
        ("2026-11-21T08:06:00Z", "raised", "medium"),
    ]
    assert "went offline" in bay.of("telemetry-stale")[0]["message"]


def test_a_pump_going_offline_after_calcium_stopped_is_not_an_alert() -> None:
    bay = infusing("08:05")
    bay.reading("08:06", rate="0 ml/h", drug=CA, status="stopped")
    bay.send("08:07", "pump_status", pump="P1", online=False)
    assert bay.of("telemetry-stale") == []


def test_a_homoglyph_calcium_label_is_calcium_at_180_ml_h() -> None:
    """'Calcium gluconate 10%' with its C and a written in Cyrillic: it matches the
    product (folded), so every rule applies; it never passes as a neutral drug."""
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="180 ml/h", drug="\u0421\u0430lcium gluconate 10%",
                concentration="100 mg/ml")  # fmt: skip
    alerts = bay.active()
    assert alerts["rate-volume"] == "high"
    assert alerts["concentration-peripheral"] == "medium"
    assert "product-unknown" not in alerts


@pytest.mark.parametrize(
    "label",
    [
        "CALCIU\u039c GLUCONATE 10%",
        "\u0421ALCIUM GLUCONATE 10%",
        "\uff23\uff21\uff2c\uff23\uff29\uff35\uff2d gluconate 10%",
    ],
)
def test_capital_look_alikes_cannot_hide_calcium_either(label: str) -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="180 ml/h", drug=label, concentration="100 mg/ml")
    assert bay.active()["rate-volume"] == "high"


RUSSIAN_CALCIUM_GLUCONATE = (
    "\u041a\u0430\u043b\u044c\u0446\u0438\u044f \u0433\u043b\u044e\u043a\u043e\u043d\u0430\u0442"
)


def test_a_label_in_another_script_is_never_assumed_neutral() -> None:
    """'Calcium gluconate' in Russian matches no product and no keyword: it may be calcium,
    so it is product-unknown while it infuses, and 180 ml/h is still too fast."""
    bay = Bedside()
    bay.admit()
    bay.reading(
        "08:05",
        rate="180 ml/h",
        drug=RUSSIAN_CALCIUM_GLUCONATE,
    )
    alerts = bay.active()
    assert alerts["product-unknown"] == "medium"
    assert alerts["rate-volume"] == "high"
    bay.reading("08:06", rate="3 ml/h", drug="Dextrose 10%", pump="P1")
    assert "product-unknown" not in bay.active()  # an ASCII label of no product stays neutral
