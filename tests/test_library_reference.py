"""Departures from the clinical reference, care-area profiles, and the diff of two versions
(issue #14, parts 2 and 3, and the diff of part 4).

A unit's library may be looser than the reference (a unit has its reasons), but never
quietly: each looser setting is a warning naming the default and its source, and approving
needs each one acknowledged. One library holds the care-area profiles of several units;
a unit running one carries the library's hash and the profile's name on every alert line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from calguard.config.diff import diff_libraries
from calguard.config.loader import builtin_text, parse_library
from calguard.config.schema import RULES
from calguard.monitor import units

from calguard.cli import main
from calguard.site import load_site

ROOT = Path(__file__).parent.parent
PICU = """
[profiles.picu]
description = "Paediatric ICU: children up to 16 years"

[profiles.picu.rules.rate-volume]
limit = "3 ml/min"

[profiles.picu.rules.site-check-overdue]
medium_after = "2 h"
high_after = "3 h"
"""


@pytest.fixture(autouse=True)
def own_logging() -> Iterator[None]:
    """``main()`` sets up its own logging: put the test's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def warnings(*edits: tuple[str, str]) -> dict[str, str]:
    text = builtin_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    result = parse_library(text, "nicu.toml")
    assert result.library is not None, result.problems
    return {w.key: w.message for w in result.warnings}


# -- looser than the reference: a warning each ------------------------------------------------


def test_the_built_in_library_departs_from_nothing() -> None:
    assert warnings() == {}


def test_a_rate_limit_above_the_reference_is_a_warning_with_its_default_and_source() -> None:
    found = warnings(('limit = "2 ml/min"', 'limit = "5 ml/min"'))
    assert found == {
        "rules.rate-volume.limit": '"5 ml/min" is looser than the clinical reference\'s '
        'default "2 ml/min" ([Case], [USP-Ca])'
    }


def test_a_looser_limit_in_another_unit_is_shown_in_the_reference_unit_too() -> None:
    found = warnings(('limit = "2 ml/min"', 'limit = "150 ml/h"'))
    assert found["rules.rate-volume.limit"].startswith('"150 ml/h" (2.5 ml/min) is looser')


def test_a_stricter_or_equal_setting_is_no_warning() -> None:
    assert warnings(('limit = "2 ml/min"', 'limit = "120 ml/h"')) == {}  # the same
    assert warnings(('limit = "2 ml/min"', 'limit = "1.5 ml/min"')) == {}


@pytest.mark.parametrize(
    ("old", "new", "key", "said"),
    [
        (
            'medium_after = "60 min"',
            'medium_after = "75 min"',
            "rules.site-check-overdue.medium_after",
            'default "60 min" ([INS])',
        ),
        (
            'max_postnatal_age = "28 day"',  # fewer infants covered: looser below
            'max_postnatal_age = "21 day"',
            "rules.ceftriaxone-neonate.max_postnatal_age",
            'default "28 day" ([FDA-Cx])',
        ),
        (
            '[rules.line-arterial]\npriority = "high"',
            '[rules.line-arterial]\npriority = "medium"',
            "rules.line-arterial.priority",
            'lower than the clinical reference\'s "high"',
        ),
        (
            'high = ["bicarbonate", "phosphate", "ceftriaxone"]',
            'high = ["bicarbonate", "ceftriaxone"]',
            "rules.incompatible-coinfusion.high",
            "leaves out phosphate",
        ),
        (
            "min_grade = 1 ",
            "min_grade = 2 ",
            "rules.site-abnormal.min_grade",
            "2 is looser than the clinical reference's default 1 ([Pop], [INS])",
        ),
        (
            'pause = { high = "2 min",',
            'pause = { high = "5 min",',
            "alarms.pause.high",
            'default "2 min" ([IEC])',
        ),
        ('latching = ["high"]', "latching = []", "alarms.latching", "high alarms no longer latch"),
    ],
)
def test_every_kind_of_departure_is_warned(old: str, new: str, key: str, said: str) -> None:
    found = warnings((old, new))
    assert list(found) == [key]
    assert said in found[key]


def test_a_disabled_rule_is_warned_once_and_its_settings_not_compared() -> None:
    found = warnings(
        ("[rules.rate-volume]\n", "[rules.rate-volume]\nenabled = false\n"),
        ('limit = "2 ml/min"', 'limit = "5 ml/min"'),
    )
    assert found == {"rules.rate-volume": "this rule is DISABLED; CalGuard will not check it"}


def test_config_check_says_ok_and_that_approval_needs_the_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nicu.toml"
    path.write_text(builtin_text().replace('limit = "2 ml/min"', 'limit = "5 ml/min"'))
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out and "1 warning(s): approving this library needs each one" in out
    assert 'rules.rate-volume.limit: "5 ml/min" is looser' in err


def test_the_sources_in_the_code_are_those_of_the_rule_table() -> None:
    """What a warning names as the source is the rule table's source column."""
    text = (ROOT / "docs" / "clinical-reference.md").read_text("utf-8")
    rows = {
        m[1]: m[2]
        for m in re.finditer(r"^\| `([a-z-]+)` \|.*\| ([^|]*) \|\s*$", text, re.MULTILINE)
    }
    for rule_id, spec in RULES.items():
        tags = set(re.findall(r"\[[A-Za-z-]+\]", spec.source))
        assert tags == set(re.findall(r"\[[A-Za-z-]+\]", rows[rule_id])), rule_id
        if not tags:
            assert "project choice" in rows[rule_id].lower() or rule_id == "line-arterial"


# -- care-area profiles ---------------------------------------------------------------------------


def test_a_profile_overrides_limits_and_timers_and_keeps_the_rest() -> None:
    text = builtin_text() + PICU
    base = parse_library(text, "unit.toml").library
    picu = parse_library(text, "unit.toml", "picu").library
    assert base is not None and picu is not None
    assert base.rule("rate-volume").q("limit").value == 2.0
    assert picu.rule("rate-volume").q("limit").value == 3.0  # ml/min
    assert picu.rule("site-check-overdue").q("medium_after").us == 2 * 3600_000_000
    assert picu.rule("rate-mass").q("limit").text == "100 mg/min"  # the library's own
    assert picu.products == base.products and picu.alarms == base.alarms
    assert base.profile is None and picu.profile == "picu"
    assert base.profiles == picu.profiles == {"picu": "Paediatric ICU: children up to 16 years"}


def test_the_version_is_the_content_hash_and_the_profile_s_name() -> None:
    text = builtin_text() + PICU
    base = parse_library(text, "unit.toml").library
    picu = parse_library(text, "unit.toml", "picu").library
    assert base is not None and picu is not None
    assert picu.version == f"{base.version}#picu"
    assert picu.content_version == base.content_version == base.version
    edited = parse_library(text.replace('limit = "3 ml/min"', 'limit = "2.5 ml/min"'), "u")
    assert edited.library is not None and edited.library.version != base.version


def test_a_profile_s_problems_and_warnings_are_keyed_under_it() -> None:
    text = builtin_text() + PICU.replace('limit = "3 ml/min"', 'limit = "3 ml/h"')
    text += '\n[profiles.cardiac]\nrules.rate-mass.limt = "80 mg/min"\n'
    result = parse_library(text, "unit.toml")
    assert result.library is None
    keys = {p.key for p in result.problems}
    assert keys == {
        "profiles.picu.rules.rate-volume.limit",
        "profiles.cardiac.rules.rate-mass.limt",
    }
    fine = parse_library(builtin_text() + PICU, "unit.toml")
    assert {w.key for w in fine.warnings} == {
        "profiles.picu.rules.rate-volume.limit",
        "profiles.picu.rules.site-check-overdue.medium_after",
        "profiles.picu.rules.site-check-overdue.high_after",
    }


def test_a_profile_the_library_does_not_have_is_a_problem() -> None:
    result = parse_library(builtin_text() + PICU, "unit.toml", "nicu")
    assert [(p.key, p.message) for p in result.problems] == [
        ("profiles", 'no profile "nicu" in this library (it has: picu)')
    ]


def test_config_show_prints_a_profile_s_effective_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unit.toml"
    path.write_text(builtin_text() + PICU)
    assert main(["config", "show", str(path), "--profile", "picu"]) == 0
    out = capsys.readouterr().out
    assert "#picu" in out and "profile picu: Paediatric ICU" in out
    assert re.search(r"^ +\*limit +3 ml/min$", out, re.MULTILINE)
    assert re.search(r"^ +\*medium_after +2 h$", out, re.MULTILINE)
    assert re.search(r"^ +limit +100 mg/min$", out, re.MULTILINE)  # the library's own
    assert main(["config", "show", str(path)]) == 0
    assert "profiles: picu (show one with --profile NAME)" in capsys.readouterr().out


def test_the_site_config_names_the_unit_s_profile(tmp_path: Path) -> None:
    (tmp_path / "unit.toml").write_text(builtin_text() + PICU)
    site = tmp_path / "picu.toml"
    site.write_text(
        '[site]\nname = "PICU"\nlibrary = "unit.toml"\nprofile = "picu"\nfour_eyes = true\n'
        'db = "none"\n[[drivers]]\nurl = "virtual://picu"\n'
    )
    loaded = load_site(site)
    assert loaded.profile == "picu" and loaded.four_eyes is True
    assert loaded.library.version.endswith("#picu")
    assert loaded.library.rule("rate-volume").q("limit").value == 3.0


# -- the diff -----------------------------------------------------------------------------------


def test_the_diff_shows_each_limit_as_written_and_converted_and_every_product_change() -> None:
    old = parse_library(builtin_text() + PICU, "old.toml").library
    new_text = (
        (builtin_text() + PICU)
        .replace('limit = "2 ml/min"', 'limit = "150 ml/h"')
        .replace('"calcium gluconate 2%", ', "")
        .replace('[[products]]\nid = "tham"', '[[products]]\nid = "tris"')
        .replace('medium_after = "2 h"', 'medium_after = "90 min"')
    )
    new = parse_library(new_text, "new.toml").library
    assert old is not None and new is not None
    lines = [str(c) for c in diff_libraries(old, new)]
    assert lines == [
        '+ products[tris]: "THAM" [bicarbonate]; aliases "trometamol", "tromethamine"',
        '- products[tham]: "THAM" [bicarbonate]; aliases "trometamol", "tromethamine"',
        '- products[ca-gluconate-20mg].aliases: "calcium gluconate 2%"',
        '~ rules.rate-volume.limit: "2 ml/min" -> "150 ml/h" (= 2 -> 2.5 ml/min, x1.25, looser)',
        '~ profiles.picu.rules.site-check-overdue.medium_after: "2 h" -> "90 min" '
        "(= 2 -> 1.5 h, x0.75, stricter)",
    ]


def test_a_rewritten_value_that_means_the_same_is_said_so() -> None:
    old = parse_library(builtin_text(), "old.toml").library
    new = parse_library(builtin_text().replace('limit = "3 mmol/kg"', 'limit = "6 mEq/kg"'), "n")
    assert old is not None and new.library is not None
    assert [str(c) for c in diff_libraries(old, new.library)] == [
        '~ rules.dose-daily.limit: "3 mmol/kg" -> "6 mEq/kg" (the same value)'
    ]
    assert units.parse_quantity("6 mEq/kg", units.SUBSTANCE_PER_WEIGHT) == 3.0
