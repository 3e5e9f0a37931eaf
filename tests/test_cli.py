"""The calguard command as a user runs it: alert lines on stdout, diagnostics on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import builtin_text

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.jsonl"


def calguard(*args: str, stdin: bytes | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp / "data")}
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
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
    assert [(a["t"][11:], a["state"], a["rule"], a["priority"]) for a in alerts] == [
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
        and 'did you mean "2 ml/min"?' in result.stderr
    )
    assert "rules.site-abnormal.min_grade" in result.stderr


def test_config_show_converts_every_limit(tmp_path: Path) -> None:
    result = calguard("config", "show", tmp=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert "2 ml/min" in out and "= 120 ml/h" in out
    assert "= 200 mg/min of gluconate with Calcium gluconate 10%" in out
    assert "= 0.33 ml/kg/h of Calcium gluconate 10%" in out  # 33 mg/kg/h


def test_config_init_writes_a_library_that_checks(tmp_path: Path) -> None:
    result = calguard("config", "init", tmp=tmp_path)
    assert result.returncode == 0 and result.stdout == builtin_text()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("replay", "missing.jsonl", "--no-db"), 1, "No such file"),
        (("replay", str(EXAMPLE), "--config", "missing.toml"), 1, "file not found"),
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
