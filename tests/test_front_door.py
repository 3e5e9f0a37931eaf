"""The small things a new user meets first: version, diagnostics, renamed options, pipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import calguard

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.jsonl"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) [\w.]+: "
)


def calguard_cmd(*args: str, tmp: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp / "data")}
    return subprocess.run(
        [sys.executable, "-m", "calguard", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_version(tmp_path: Path) -> None:
    done = calguard_cmd("--version", tmp=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"calguard {calguard.__version__}"
    assert calguard.__version__[0].isdigit()


def test_diagnostics_carry_time_level_and_logger(tmp_path: Path) -> None:
    done = calguard_cmd("replay", str(EXAMPLE), "--no-db", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    assert all(TEXT_LINE.match(line) for line in lines), lines


def test_diagnostics_as_json_after_the_subcommand_too(tmp_path: Path) -> None:
    done = calguard_cmd("replay", str(EXAMPLE), "--no-db", "--log-format", "json", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert entries
    assert {tuple(sorted(e)) for e in entries} == {("level", "logger", "message", "t")}
    assert any("20 alert transitions" in e["message"] for e in entries)


def test_quiet_before_the_subcommand_keeps_only_errors(tmp_path: Path) -> None:
    done = calguard_cmd("-q", "replay", str(EXAMPLE), "--no-db", tmp=tmp_path)
    assert done.returncode == 0
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 20


@pytest.mark.parametrize(
    "args",
    [
        ("replay", str(EXAMPLE), "--config", "lib.toml"),
        ("run", "--config", "site.toml"),
        ("alerts", "--config", "site.toml"),
        ("ack", "a-000001", "--by", "rn1", "--config", "site.toml"),
    ],
)
def test_the_old_config_option_is_refused_with_the_new_names(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    done = calguard_cmd(*args, tmp=tmp_path)
    assert done.returncode == 2
    assert "--library LIBRARY.toml" in done.stderr
    assert "--site SITE.toml" in done.stderr


def _many_alert_lines(path: Path, readings: int) -> Path:
    """A pump that crosses the volume limit up and down: two alert lines a reading pair."""
    events = [
        {"t": "2026-11-21T08:00:00Z", "type": "patient", "bed": "B1", "weight": "1.2 kg"},
        {"t": "2026-11-21T08:00:00Z", "type": "line", "line": "L1", "bed": "B1", "kind": "uvc",
         "tip_confirmed": True},
        {"t": "2026-11-21T08:00:00Z", "type": "connect", "pump": "P1", "line": "L1"},
    ]  # fmt: skip
    for i in range(readings):
        rate = "180 ml/h" if i % 2 == 0 else "0.5 ml/h"
        events.append(
            {"t": f"2026-11-21T08:{1 + i // 60:02d}:{i % 60:02d}Z", "type": "reading",
             "pump": "P1", "drug": "Calcium gluconate 20 mg/ml", "concentration": "20 mg/ml",
             "rate": rate, "seq": i}
        )  # fmt: skip
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`calguard replay big.jsonl | head -1`: far more than a pipe buffer of alert lines."""
    events = _many_alert_lines(tmp_path / "many.jsonl", 2000)
    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path / "data")}
    with subprocess.Popen(
        [sys.executable, "-m", "calguard", "replay", str(events), "--no-db"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # as `head -1` does
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert json.loads(first)["state"] == "raised"
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert code == 141
