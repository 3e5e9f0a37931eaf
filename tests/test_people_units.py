"""What people read is in people's units: spans in words (never the engine's
microseconds), numbers to three significant digits (never rounded onto a limit they
exceed), and a figure worked out as gluconate for another salt labelled "gluconate
equivalent". Expected figures are computed here from the clinical constants."""

from __future__ import annotations

import re

import pytest
from calguard.config import builtin_text, parse_library
from calguard.monitor import units
from calguard.monitor.timeutil import SECOND_US, format_duration
from calguard.monitor.units import format_beside, format_number
from hypothesis import given, settings
from hypothesis import strategies as st

from calguard.view import render
from tests.support import Bedside, us

GLUCONATE_CA = 0.093  # mg Ca per mg calcium gluconate
CHLORIDE_CA = 0.273
CA_MG_PER_MMOL = 40.078
CHLORIDE = "Calcium chloride 10%"
DILUTED = "Calcium gluconate 20 mg/ml"
TEN_DIGITS = re.compile(r"\d{10}")


def chloride_central(rate: str, mode: str = "continuous") -> Bedside:
    """1 kg infant, 10% calcium chloride on a confirmed central line (so only the salt and
    the dose rules speak)."""
    bay = Bedside()
    bay.admit(kind="uvc", tip_confirmed=True)
    bay.reading("08:05", rate=rate, drug=CHLORIDE, mode=mode)
    return bay


def everything_said(bay: Bedside) -> list[str]:
    return [str(a.get(k, "")) for a in bay.alerts for k in ("message", "value", "limit")]


# -- spans of time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 s"),
        (0.5869, "0.6 s"),
        (9.96, "10 s"),
        (90, "90 s"),
        (120, "2 min"),
        (150, "2 min 30 s"),
        (3599.6, "1 h"),  # rounds up into the next unit, not to "60 min"
        (90 * 60, "1 h 30 min"),
        (4 * 3600, "4 h"),
        (48 * 3600, "48 h"),
        (74 * 3600, "3 days 2 h"),
        (-35 * 60, "-35 min"),
    ],
)
def test_a_span_reads_in_words(seconds: float, words: str) -> None:
    assert format_duration(seconds * SECOND_US) == words


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=400 * 86_400 * SECOND_US))
def test_a_span_in_words_means_the_span_to_its_last_unit(span_us: int) -> None:
    words = format_duration(span_us)
    assert not TEN_DIGITS.search(words)
    parts = re.findall(r"([\d.]+) (s|min|h|days?)", words)
    assert 1 <= len(parts) <= 2 and " ".join(f"{n} {u}" for n, u in parts) == words
    back = sum(units.parse_quantity(f"{n} {u}", units.DURATION) for n, u in parts)
    resolution = units.parse_quantity(f"1 {parts[-1][1]}", units.DURATION)
    if parts[-1][0].count("."):
        resolution /= 10
    assert abs(back - span_us) <= resolution / 2 + 1


def test_a_refused_override_says_at_most_4_h_not_microseconds() -> None:
    bay = Bedside(alarms=True)
    bay.admit(kind="picc", tip_confirmed=True)
    bay.reading("08:01", rate="3 ml/h", drug=DILUTED)  # rate-weight high at 1 kg
    alert = next(a["alert"] for a in bay.alerts if a["rule"] == "rate-weight")
    override = {"alert": alert, "by": "dr7", "reason": "resuscitation", "duration": "5 h"}
    bay.send("08:02", "override", **override)
    assert bay.records[-1].status == "rejected"
    reason = bay.records[-1].reason or ""
    assert "at most 4 h" in reason and '"5 h"' in reason
    assert not TEN_DIGITS.search(reason)  # 18000000000 (µs) was shown before
    bay.send("08:02", "pause", alert=alert, by="rn42", duration="90 min")
    assert bay.records[-1].status == "rejected"
    reason = bay.records[-1].reason or ""
    assert '"1 h 30 min" — at most 2 min for a high alarm' in reason


def test_a_duration_setting_out_of_range_is_explained_in_words() -> None:
    text = builtin_text().replace('override_max = "4 h"', 'override_max = "200 h"')
    result = parse_library(text, "nicu.toml")
    assert result.library is None
    (problem,) = [str(p) for p in result.problems]
    assert "outside the plausible range 60 s to 7 days" in problem
    assert not TEN_DIGITS.search(problem) and "microsecond" not in problem


def test_no_alert_a_nurse_reads_carries_a_ten_digit_number() -> None:
    bay = Bedside()
    bay.admit("08:00", inserted="2026-11-19T07:13:07Z", patency=None)  # dwell, no patency
    bay.reading("08:05", rate="0.0335 ml/s", drug=DILUTED, pressure="20 mmHg")
    bay.reading("08:05:01", rate="0.0335 ml/s", drug=DILUTED, pressure="90 mmHg")
    bay.clock("10:17:33.123456")  # site check overdue, stale, pressure trend
    bay.send("10:18", "medication", bed="B1", drug="ceftriaxone", dose="50 mg")
    chloride = chloride_central("17.3 ml/h", mode="bolus")
    chloride.clock("12:00")
    said = everything_said(bay) + everything_said(chloride)
    rules = {a["rule"] for a in bay.alerts} | {a["rule"] for a in chloride.alerts}
    assert {
        "rate-volume",
        "rate-weight",
        "patency-check-missing",
        "site-check-overdue",
        "cannula-dwell",
        "telemetry-stale",
        "pressure-trend",
        "ceftriaxone-neonate",
        "dose-daily",
        "salt-not-gluconate",
    } <= rules
    assert [s for s in said if TEN_DIGITS.search(s)] == []


# -- numbers ---------------------------------------------------------------------------------


def test_meaningless_precision_is_dropped() -> None:
    assert format_number(0.0008599) == "0.00086"
    assert units.format_quantity(0.0008599, units.SUBSTANCE_PER_WEIGHT) == "0.00086 mmol/kg"
    assert format_number(88.0645) == "88.1"
    assert format_number(1234.56) == "1235"


def test_a_rate_just_above_the_limit_stays_visibly_above_it() -> None:
    # 120.024 ml/h = 2.0004 ml/min: above 2 ml/min, which "2 ml/min" would hide
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="120.024 ml/h", drug=DILUTED)
    (alert,) = bay.of("rate-volume")
    assert alert["limit"] == "2 ml/min"
    assert alert["value"] == "2.0004 ml/min"
    assert "runs at 2.0004 ml/min (120.024 ml/h)" in alert["message"]
    view = render(bay.engine, title="B", now=us("08:05"))
    assert "100.02% of 2 ml/min" in view


def test_a_value_at_the_limit_by_conversion_is_shown_as_the_limit() -> None:
    # 120 ml/h is 2 ml/min up to the last bit of a float: not above, not 2.0000000000000004
    assert units.format_quantity(120 / 60, units.VOLUME_RATE, "ml/min", limit=2.0) == "2 ml/min"
    assert format_beside(2.0000000000000004, 2.0) == "2"
    # within a millionth: a crossing computed to the microsecond (the daily dose), not a
    # difference anyone acts on
    assert format_beside(3.000000003, 3.0) == "3"
    assert format_beside(3.00001, 3.0) == "3.00001"


@settings(max_examples=500, deadline=None)
@given(
    limit=st.floats(min_value=1e-4, max_value=1e5),
    ratio=st.floats(min_value=2e-6, max_value=0.5),
    up=st.booleans(),
)
def test_a_value_off_a_limit_never_looks_on_it_or_across_it(
    limit: float, ratio: float, up: bool
) -> None:
    value = limit * (1 + ratio) if up else limit * (1 - ratio)
    shown = float(format_beside(value, limit))
    written = float(f"{limit:.12g}")
    assert (shown > written) if up else (shown < written)


# -- gluconate equivalent --------------------------------------------------------------------


def test_a_chloride_weight_alert_labels_its_gluconate_figure_as_equivalent() -> None:
    bay = chloride_central("0.3 ml/h")  # elemental calcium above 0.125 mmol/kg/h
    (alert,) = bay.of("rate-weight")
    mmol = 0.3 / 60 * 100 * CHLORIDE_CA / CA_MG_PER_MMOL * 60  # per kg (1 kg), per h
    gluconate = 0.3 * 100 * CHLORIDE_CA / GLUCONATE_CA  # mg/kg/h
    assert alert["value"] == f"{format_number(mmol)} mmol/kg/h"
    assert (
        f"({format_number(gluconate)} mg/kg/h of calcium gluconate equivalent;"
        in (alert["message"])
    )


def test_a_chloride_bolus_alert_is_gluconate_equivalent_and_a_gluconate_one_is_not() -> None:
    chloride = chloride_central("30 ml/h", mode="bolus")
    (alert,) = chloride.of("rate-weight")
    per_min = 30 / 60 * 100 * CHLORIDE_CA / GLUCONATE_CA  # mg/kg/min of gluconate
    assert (
        f"gives {format_number(per_min)} mg/kg/min of calcium gluconate equivalent ("
        in (alert["message"])
    )
    gluconate = Bedside()
    gluconate.admit(kind="picc", tip_confirmed=True)
    gluconate.reading("08:05", rate="1.7 ml/h", drug=DILUTED)  # 34 mg/kg/h > 33
    (alert,) = gluconate.of("rate-weight")
    assert "gives 34 mg/kg/h of calcium gluconate (1.7 ml/h" in alert["message"]
    assert "equivalent" not in alert["message"]


def test_the_view_labels_a_chloride_dose_as_gluconate_equivalent() -> None:
    bay = chloride_central("0.1 ml/h")
    gluconate_line = {"line": "L2", "bed": "B1", "kind": "picc", "tip_confirmed": True}
    bay.send("08:05", "line", **gluconate_line)
    bay.send("08:05", "connect", pump="P2", channel="A", line="L2")
    bay.reading("08:05", pump="P2", rate="1 ml/h", drug=DILUTED)
    rows = render(bay.engine, title="B", now=us("08:05:00.5869")).splitlines()
    (chloride_row,) = [r for r in rows if r.startswith("    Ca P1/A ")]
    (gluconate_row,) = [r for r in rows if r.startswith("    Ca P2/A ")]
    equivalent = 0.1 * 100 * CHLORIDE_CA / GLUCONATE_CA  # mg/kg/h at 1 kg
    assert f"{format_number(equivalent)} mg/kg/h gluconate equivalent" in chloride_row
    assert "20 mg/kg/h" in gluconate_row and "equivalent" not in gluconate_row
    assert "last reading 0.6 s ago" in gluconate_row  # not 0.5869 s


def test_the_view_timers_read_in_words() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=DILUTED)
    rows = render(bay.engine, title="B", now=us("08:35:20")).splitlines()
    (line_row,) = [r for r in rows if r.startswith("  L1 ")]
    assert "site check in 29 min 40 s" in line_row  # due 09:05, an hour after the start
    assert "rotation in 47 h 25 min" in line_row  # inserted 08:00, rotated after 48 h
    bay.clock("09:40")
    rows = render(bay.engine, title="B", now=us("09:40")).splitlines()
    (line_row,) = [r for r in rows if r.startswith("  L1 ")]
    assert "site check 35 min OVERDUE" in line_row
