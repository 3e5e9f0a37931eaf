"""The drug library: the built-in defaults are the rule table's, and mistakes are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from calguard.config import RULES, check_library, load_library, parse_library
from calguard.config.loader import builtin_text
from calguard.monitor import units

# The rule table of the clinical reference: id -> (priority, {setting: default}).
RULE_TABLE = {
    "rate-volume": ("high", {"limit": "2 ml/min"}),
    "rate-mass": ("high", {"limit": "100 mg/min"}),
    "rate-weight": (
        None,
        {
            "continuous_medium": "33 mg/kg/h",
            "continuous_high": "0.125 mmol/kg/h",
            "bolus_medium": "10 mg/kg/min",
            "bolus_high": "20 mg/kg/min",
        },
    ),
    "dose-daily": ("high", {"limit": "3 mmol/kg", "window": "24 h"}),
    "salt-not-gluconate": ("high", {}),
    "concentration-peripheral": (
        "medium",
        {"continuous_limit": "10 mg/ml", "any_mode_limit": "50 mg/ml"},
    ),
    "line-arterial": ("high", {}),
    "incompatible-coinfusion": (None, {}),
    "ceftriaxone-neonate": ("high", {"max_postnatal_age": "28 day", "lookback": "48 h"}),
    "patency-check-missing": ("medium", {"window": "15 min", "pause_grace": "10 min"}),
    "patency-check-failed": ("high", {}),
    "site-check-overdue": (None, {"medium_after": "60 min", "high_after": "90 min"}),
    "site-abnormal": ("high", {}),
    "cannula-dwell": ("medium", {"interval": "48 h"}),
    "occlusion": ("medium", {}),
    "telemetry-stale": ("medium", {"timeout": "60 s"}),
    "telemetry-invalid": ("medium", {}),
    "product-unknown": ("medium", {}),
    "context-missing": ("medium", {}),
    "pressure-trend": ("low", {"rise": "50 mmHg", "duration": "15 min"}),
}
# Technical rules CalGuard adds beside the table (README, docs/clinical-reference.md).
ADDED_RULES = {
    "clock-skew": ("medium", {"tolerance": "5 s", "backdate": "1 h"}),
    "input-unknown": ("medium", {"quiet": "60 s"}),
    "log-unavailable": ("medium", {}),
    "library-unapproved": ("medium", {}),
    "monitor-lagging": ("medium", {"threshold": "15 s", "max_hold": "60 s"}),
}


def test_the_built_in_library_is_the_rule_table_of_the_clinical_reference() -> None:
    lib = load_library()
    assert list(RULES) == list(RULE_TABLE) + list(ADDED_RULES)
    for rule_id, (priority, defaults) in {**RULE_TABLE, **ADDED_RULES}.items():
        cfg = lib.rule(rule_id)
        assert cfg.enabled and cfg.priority == priority, rule_id
        for key, text in defaults.items():
            assert cfg.q(key).text == text, (rule_id, key)
    assert lib.rule("incompatible-coinfusion").class_lists == {
        "high": ("bicarbonate", "phosphate", "ceftriaxone"),
        "medium": ("sulfate",),
    }
    assert lib.rule("site-abnormal").ints == {"min_grade": 1}


def test_built_in_products_and_elemental_calcium() -> None:
    lib = load_library()
    by_name = {p.name: p for p in lib.products}
    ten = by_name["Calcium gluconate 10%"]
    assert ten.concentration is not None and ten.concentration.value == 100.0
    assert ten.concentration.value * ten.elemental_mmol_per_mg() == pytest.approx(0.2325, rel=0.01)
    chloride = by_name["Calcium chloride 10%"]
    assert chloride.gluconate_equivalent == pytest.approx(0.273 / 0.093)
    assert {p.drug_class for p in lib.products} >= {
        "calcium",
        "bicarbonate",
        "phosphate",
        "sulfate",
        "ceftriaxone",
    }


@pytest.mark.parametrize(
    ("label", "product"),
    [
        ("Calcium gluconate 10%", "ca-gluconate-10"),
        ("CALCIUM GLUCONATE 20 mg/ml", "ca-gluconate-20mg"),
        ("  calcium   gluconate  ", "ca-gluconate-10"),
        ("Calcium chloride 10% (central only)", "ca-chloride-10"),
        ("Sodium bicarbonate 4.2%", "sodium-bicarbonate"),
        ("bicarbonates", None),
        ("Calcium glubionate", None),
    ],
)
def test_pump_labels_match_products(label: str, product: str | None) -> None:
    match = load_library().match(label)
    assert (match.product.id if match.product else None) == product


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nicu.toml"
    path.write_text(text)
    return path


def problems_of(text: str) -> list[str]:
    result = parse_library(text, "nicu.toml")
    assert result.library is None
    return [str(p) for p in result.problems]


def test_a_rate_written_in_the_wrong_unit_is_caught_with_a_suggestion() -> None:
    (problem,) = problems_of(builtin_text().replace('limit = "2 ml/min"', 'limit = "2 ml/h"'))
    assert problem.startswith("nicu.toml: rules.rate-volume.limit:")
    assert '"2 ml/h" is 0.0333 ml/min, outside the plausible range' in problem
    assert "check the unit: this setting is usually written in ml/min" in problem
    assert "did you mean" not in problem  # 2 ml/min would be another dose than was written


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'limit = "100 mg/min"',
            'limit = "100 ml/min"',
            "'ml/min' is a volume per time; a mass per time",
        ),
        (
            'timeout = "60 s"',
            "timeout = 60",
            'a bare number; a time span (e.g. "60 min") is expected; did you mean "60 s"?',
        ),
        (
            'continuous_medium = "33 mg/kg/h"',
            'continuous_medium = "33 ml/kg/h"',
            "continuous_medium",
        ),
        ("min_grade = 1", "min_grade = 7", "a whole number from 1 to 4"),
        ("[rules.occlusion]", "[rules.occlusoin]", 'unknown rule id; did you mean "occlusion"?'),
        (
            '[rules.telemetry-invalid]\npriority = "medium"',
            '[rules.telemetry-invalid]\npriority = "urgent"',
            "one of low, medium, high",
        ),
        ('high_after = "90 min"', 'high_after = "45 min"', 'must be later than "60 min"'),
        (
            'concentration = "20 mg/ml"',
            'concentration = "200 mg/ml"',
            "does not agree with 200 mg/ml",
        ),
        ('class = "sulfate"', 'class = "sulphate"', "one of calcium, bicarbonate"),
        (
            'aliases = ["rocephin", "ceftriaxone sodium"]',
            'aliases = ["rocephin", "bicarbonate"]',
            "also used by product",
        ),
        (
            'limit = "2 ml/min"',
            'limt = "2 ml/min"',
            'unknown key; expected one of enabled, priority, limit; did you mean "limit"?',
        ),
        (
            "[salts.gluconate]\nelemental_calcium_fraction = 0.093",
            "[salts.gluconate]\nelemental_calcium_fraction = 9.3",
            "between 0 and 1",
        ),
    ],
)
def test_library_problems_a_pharmacist_can_act_on(old: str, new: str, expected: str) -> None:
    text = builtin_text()
    assert old in text
    problems = problems_of(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_every_problem_is_listed_not_just_the_first() -> None:
    text = (
        builtin_text()
        .replace('limit = "2 ml/min"', 'limit = "2 ml/h"')
        .replace("min_grade = 1", "min_grade = 0")
    )
    assert len(problems_of(text)) == 2


def test_a_missing_rule_section_is_an_error_not_a_silent_default() -> None:
    text = builtin_text().replace('[rules.occlusion]\npriority = "medium"', "")
    assert any("rules.occlusion: section is missing" in p for p in problems_of(text))


def test_disabling_a_rule_is_allowed_but_warned() -> None:
    text = builtin_text().replace(
        "[rules.pressure-trend]\n", "[rules.pressure-trend]\nenabled = false\n"
    )
    result = parse_library(text, "nicu.toml")
    assert result.library is not None and not result.library.rule("pressure-trend").enabled
    assert [str(w) for w in result.warnings] == [
        "nicu.toml: rules.pressure-trend: this rule is DISABLED; CalGuard will not check it"
    ]


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    assert "not valid TOML" in problems_of("[rules\n")[0]
    assert str(check_library(tmp_path / "nope.toml").problems[0]).endswith("file not found")


def test_the_version_changes_with_values_not_with_comments() -> None:
    base = load_library().version
    commented = parse_library(builtin_text() + "\n# reviewed by pharmacy 2026-11-20\n", "x").library
    changed = parse_library(
        builtin_text().replace('limit = "2 ml/min"', 'limit = "1.5 ml/min"'), "x"
    ).library
    assert commented is not None and changed is not None
    assert commented.version == base != changed.version
    assert base.startswith("sha256:")


def test_limits_are_converted_once_at_load() -> None:
    lib = load_library(None)
    assert lib.rule("rate-weight").q("continuous_medium").value == pytest.approx(33 / 60)
    assert lib.rule("rate-weight").q("continuous_medium").kind is units.SALT_PER_WEIGHT_RATE
    assert lib.rule("site-check-overdue").q("medium_after").us == 3_600_000_000


def test_the_alarm_policy_is_validated_like_the_limits() -> None:
    from calguard.config import builtin_text, parse_library

    text = builtin_text()
    head, _, _ = text.partition("[alarms]")
    missing = parse_library(head, "lib.toml")
    assert [(p.key, p.message) for p in missing.problems] == [("alarms", "section is missing")]
    broken = (
        text.replace('pause = { high = "2 min",', 'pause = { high = "2",')
        .replace('override_max = "4 h"', 'override_max = "4 ml"')
        .replace('escalate_after = { high = "2 min", ', "escalate_after = { ")
    )
    problems = {p.key: p.message for p in parse_library(broken, "lib.toml").problems}
    assert set(problems) == {
        "alarms.pause.high",
        "alarms.escalate_after.high",
        "alarms.override_max",
    }
    assert "a bare number" in problems["alarms.pause.high"]
    assert 'did you mean "2 min"' in problems["alarms.pause.high"]
    assert 'the built-in default is "2 min"' in problems["alarms.escalate_after.high"]


def test_a_library_written_before_the_technical_rules_still_loads_and_says_so() -> None:
    """A unit's library from before clock-skew and input-unknown existed: those sections
    take the built-in settings with a warning; a clinical rule missing is still an error."""
    import re

    older = builtin_text()
    for rule in ("clock-skew", "input-unknown"):
        older = re.sub(rf"\[rules\.{rule}\][^\[]*", "", older)
    result = parse_library(older, "older.toml")
    assert result.library is not None and result.problems == []
    assert result.library.rule("clock-skew").q("tolerance").text == "5 s"
    assert any("rules.clock-skew: section is missing" in str(w) for w in result.warnings)
    clinical = re.sub(r"\[rules\.rate-volume\][^\[]*", "", builtin_text())
    assert parse_library(clinical, "no-rate.toml").library is None
