"""The alarm-burden report on a replayed shift: the day shift of examples/ with a charge
nurse's acknowledgements, an override and resets added, worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.report import load_report
from calguard.config import load_library

from calguard.replay import replay

ROOT = Path(__file__).parent.parent
SHIFT = ROOT / "examples" / "nicu-shift.jsonl"
DAY = "2026-11-21T"
# the shift's alarms (see tests/test_shift_replay.py): a-000001 rate-weight and a-000002
# salt-not-gluconate (high, 07:40), a-000003 concentration-peripheral (medium, 07:40),
# a-000005 incompatible-coinfusion (high, 09:01), a-000008 occlusion (medium, 10:45) ...
ACTIONS = [
    ("07:41:00", {"type": "ack", "alert": "a-000001", "by": "rn1"}),  # 60 s
    (
        "07:42:00",
        {"type": "override", "alert": "a-000003", "by": "dr1", "reason": "prescriber-approved"},
    ),
    ("07:43:00", {"type": "ack", "alert": "a-000002", "by": "rn1"}),  # 180 s
    ("08:20:00", {"type": "reset", "alert": "a-000001", "by": "rn1"}),
    ("08:20:00", {"type": "reset", "alert": "a-000002", "by": "rn1"}),
    ("09:02:00", {"type": "ack", "alert": "a-000005", "by": "charge1"}),  # 60 s
    ("10:46:00", {"type": "pause", "alert": "a-000008", "by": "rn2"}),
]


def shift_with_actions() -> bytes:
    events = [json.loads(line) for line in SHIFT.read_text().splitlines() if line.strip()]
    events += [{"t": f"{DAY}{clock}Z", **action} for clock, action in ACTIONS]
    events.sort(key=lambda e: e["t"])  # stable: an action after the events of its instant
    return "".join(json.dumps(e) + "\n" for e in events).encode()


async def replay_into(url: str) -> list[dict[str, object]]:
    out = io.StringIO()
    async with AlertLog(url) as log:
        summary = await replay(
            io.BytesIO(shift_with_actions()),
            source="shift",
            library=load_library(),
            out=out,
            log=log,
        )
    assert summary.counts["rejected"] == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_the_report_of_a_replayed_shift(db_url: str) -> None:
    lines = await replay_into(db_url)
    report = await load_report(normalise_db_url(db_url), None)
    raised = [a for a in lines if a["state"] == "raised"]
    assert len(report.alarms) == len(raised) == 12
    assert report.bed_days == 3  # B1, B2, B3 on 21 November
    assert report.per_bed_day == 4.0
    assert report.acknowledged_share == 3 / 12
    assert report.median_seconds_to_acknowledge == 60.0  # of 60, 180 and 60 s
    assert report.override_reasons == {"prescriber-approved": 1}
    assert report.escalated_share == 6 / 12  # the unacknowledged ones that lasted long enough
    by_id = {a.alert: a for a in report.alarms}
    assert by_id["a-000001"].reset_by == "rn1" and by_id["a-000001"].latched
    assert by_id["a-000003"].overridden_by == "dr1" and by_id["a-000003"].escalated_to is None
    assert by_id["a-000011"].category == "technical"
    assert report.by_rule[("rate-weight", "high")] == 2
    assert report.by_rule[("site-check-overdue", "medium")] == 2
    text = report.text()
    assert "12 over 3 bed-days: 4.0 per bed-day" in text
    assert "acknowledged 25%; median time to acknowledge 60 s" in text
    assert "override reasons: prescriber-approved 1" in text


async def test_since_limits_the_report_to_later_alarms(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await replay_into(url)
    from calguard.monitor.timeutil import parse_ts

    report = await load_report(normalise_db_url(url), parse_ts(f"{DAY}12:00:00Z"))
    assert [a.rule for a in report.alarms] == [
        "ceftriaxone-neonate",
        "telemetry-stale",
        "site-check-overdue",
    ]


def test_calguard_report_writes_the_table_csv_and_chart(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    asyncio.run(replay_into(url))
    result = subprocess.run(
        [
            sys.executable, "-m", "calguard.cli", "report", "--db", url,
            "--csv", str(tmp_path / "alarms.csv"), "--png", str(tmp_path / "alarms.png"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "per bed-day" in result.stdout and "rate-weight" in result.stdout
    with (tmp_path / "alarms.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    first = rows[0]
    assert (first["alert"], first["acknowledged_by"], first["seconds_to_acknowledge"]) == (
        "a-000001",
        "rn1",
        "60.0",
    )
    png = (tmp_path / "alarms.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
