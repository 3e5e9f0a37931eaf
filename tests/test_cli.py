"""The calguard command as a user runs it: alert lines on stdout, diagnostics on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from calguard.config.loader import builtin_text

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.jsonl"


def calguard(*args: str, stdin: bytes | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp / "data")}
    return subprocess.run(
        [sys.executable, "-m", "calguard.cli", *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_replay_of_the_readme_example(tmp_path: Path) -> None:
    result = calguard("replay", str(EXAMPLE), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    # nobody acknowledges in this file: high alarms go to the charge nurse after 2 min and
    # to the unit after 2 more, medium ones after 5 and 10 min (the built-in policy)
    assert [(a["t"][11:], a["state"], a["rule"], a.get("audience")) for a in alerts] == [
        ("08:03:00Z", "raised", "rate-weight", None),
        ("08:03:00Z", "raised", "concentration-peripheral", None),
        ("08:03:10Z", "raised", "rate-volume", None),
        ("08:03:10Z", "raised", "rate-mass", None),
        ("08:04:10Z", "raised", "telemetry-stale", None),
        ("08:05:00Z", "escalated", "rate-weight", "charge-nurse"),
        ("08:05:10Z", "escalated", "rate-volume", "charge-nurse"),
        ("08:05:10Z", "escalated", "rate-mass", "charge-nurse"),
        ("08:07:00Z", "escalated", "rate-weight", "unit"),
        ("08:07:10Z", "escalated", "rate-volume", "unit"),
        ("08:07:10Z", "escalated", "rate-mass", "unit"),
        ("08:08:00Z", "escalated", "concentration-peripheral", "charge-nurse"),
        ("08:08:20.214624Z", "raised", "dose-daily", None),
        ("08:09:10Z", "escalated", "telemetry-stale", "charge-nurse"),
        ("08:10:20.214624Z", "escalated", "dose-daily", "charge-nurse"),
        ("08:12:20.214624Z", "escalated", "dose-daily", "unit"),
        ("08:13:00Z", "escalated", "concentration-peripheral", "unit"),
        ("08:14:10Z", "escalated", "telemetry-stale", "unit"),
        ("09:03:00Z", "raised", "site-check-overdue", None),
        ("09:08:00Z", "escalated", "site-check-overdue", "charge-nurse"),
    ]
    engine_only = calguard("replay", str(EXAMPLE), "--no-db", "--no-alarms", tmp=tmp_path)
    assert [
        (a["t"][11:], a["state"], a["rule"], a["priority"])
        for a in map(json.loads, engine_only.stdout.splitlines())
    ] == [
        ("08:03:00Z", "raised", "rate-weight", "high"),
        ("08:03:00Z", "raised", "concentration-peripheral", "medium"),
        ("08:03:10Z", "raised", "rate-volume", "high"),
        ("08:03:10Z", "raised", "rate-mass", "high"),
        ("08:04:10Z", "raised", "telemetry-stale", "medium"),
        ("08:08:20.214624Z", "raised", "dose-daily", "high"),
        ("09:03:00Z", "raised", "site-check-overdue", "medium"),
    ]
    assert alerts[2]["message"].startswith(
        "Calcium gluconate 10% on P7/A runs at 3 ml/min (180 ml/h)"
    )
    assert "7 accepted, 0 rejected" in result.stderr
    assert (tmp_path / "data" / "calguard.sqlite3").exists()


def test_replay_from_stdin_without_a_log_is_deterministic(tmp_path: Path) -> None:
    data = EXAMPLE.read_bytes()
    first = calguard("replay", "-", "--no-db", stdin=data, tmp=tmp_path)
    second = calguard("replay", "-", "--no-db", stdin=data, tmp=tmp_path)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stdout
    assert not (tmp_path / "data").exists()


def test_rejected_lines_are_reported_on_stderr_with_their_line_numbers(tmp_path: Path) -> None:
    data = EXAMPLE.read_bytes() + b'{"t":"2026-11-21T09:20:00","type":"clock"}\n{"oops"\n'
    result = calguard("replay", "-", "--no-db", stdin=data, tmp=tmp_path)
    assert result.returncode == 0
    assert "line 8: field 't'" in result.stderr and "no offset" in result.stderr
    assert "line 9: not valid JSON" in result.stderr
    assert "2 rejected" in result.stderr


def test_config_check_passes_the_built_in_library(tmp_path: Path) -> None:
    path = tmp_path / "nicu.toml"
    path.write_text(builtin_text())
    result = calguard("config", "check", str(path), tmp=tmp_path)
    assert result.returncode == 0 and "OK" in result.stdout


def test_config_check_lists_every_problem_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "nicu.toml"
    path.write_text(
        builtin_text()
        .replace('limit = "2 ml/min"', 'limit = "2 ml/h"')
        .replace("min_grade = 1", "min_grade = 9")
    )
    result = calguard("config", "check", str(path), tmp=tmp_path)
    assert result.returncode == 1
    assert "2 problem(s)" in result.stderr
    assert (
        'rules.rate-volume.limit: "2 ml/h"' in result.stderr
        and "check the unit: this setting is usually written in ml/min" in result.stderr
        and "did you mean" not in result.stderr
    )
    assert "rules.site-abnormal.min_grade" in result.stderr


def test_config_show_converts_every_limit(tmp_path: Path) -> None:
    result = calguard("config", "show", tmp=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert "2 ml/min" in out and "= 120 ml/h" in out
    assert "= 200 mg/min of gluconate with Calcium gluconate 10%" in out
    assert "= 0.33 ml/kg/h of Calcium gluconate 10%" in out  # 33 mg/kg/h
    assert "high    audio pause 2 min; unacknowledged 2 min -> next audience, latches" in out
    assert "audiences: bedside -> charge-nurse -> unit" in out


def test_config_init_writes_a_library_that_checks(tmp_path: Path) -> None:
    result = calguard("config", "init", tmp=tmp_path)
    assert result.returncode == 0 and result.stdout == builtin_text()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("replay", "missing.jsonl", "--no-db"), 1, "No such file"),
        (("replay", str(EXAMPLE), "--library", "missing.toml"), 1, "file not found"),
        (
            ("replay", str(EXAMPLE), "--db", "postgresql://nobody@127.0.0.1:1/x"),
            3,
            "cannot open the log database",
        ),
    ],
)
def test_unusable_inputs_exit_with_a_reason(
    args: tuple[str, ...], code: int, message: str, tmp_path: Path
) -> None:
    result = calguard(*args, tmp=tmp_path)
    assert result.returncode == code and message in result.stderr
