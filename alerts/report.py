"""The alarm-burden report: what the alarms cost a unit, from the durable log.

One row per alarm (from its alert lines): rule, priority, category, bed, when raised and
cleared, whether and when acknowledged and by whom, how far it escalated, override reason.
The summary: alarms per bed-day (a bed-day is one bed with monitoring data on one calendar
day of the site's time zone, UTC unless told), by rule and priority, the share
acknowledged, the median time to acknowledge, the share escalated beyond the bedside,
override reasons. ``--png`` draws alarms raised per local hour by priority, one panel per
calendar day (matplotlib, optional extra ``calguard[report]``).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson
from calguard.alerts.alarms import category
from calguard.alerts.blocks import SUMMARY_BUCKET_US, bed_buckets
from calguard.alerts.schema import alert_transitions, input_blocks, inputs
from calguard.alerts.sessions import SessionFilter
from calguard.config.site import time_zone
from calguard.monitor.timeutil import format_ts, parse_ts, to_datetime
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MAX_CHART_DAYS",
    "AlarmRow",
    "Report",
    "build_report",
    "chart",
    "csv_cell",
    "load_report",
    "write_csv",
    "write_png",
    "zone",
]

MAX_CHART_DAYS = 14  # two weeks of panels keep the PNG readable (1350 x 1260 px at most)
# Every zone offset and clock change in use since 1972 falls on a quarter hour, so a
# quarter hour of data never straddles a local midnight: the database returns one row per
# bed and quarter hour instead of every input.
_BUCKET_US = SUMMARY_BUCKET_US  # 15 minutes: a block keeps its beds per bucket
_PRIORITIES = ("high", "medium", "low")
# colour for the eye, hatching and text for everyone (and for grey-scale print-outs)
_LOOK = {"high": ("#c62828", "xx"), "medium": ("#f9a825", "//"), "low": ("#1e88e5", "..")}
CSV_FIELDS = (
    "alert", "rule", "priority", "category", "bed", "raised", "raised_local", "cleared",
    "acknowledged", "seconds_to_acknowledge", "acknowledged_by", "escalated_to",
    "overridden_reason", "overridden_by", "latched", "reset_by",
)  # fmt: skip
# OWASP "CSV injection": a spreadsheet runs a cell starting with one of these as a formula.
# A leading quote is escaped too, so that the escape can be undone (drop one leading quote).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text and never runs as a formula: text that
    starts with = + - @ tab, CR (or a quote) gets a leading single quote. A user id of
    ``=HYPERLINK(...)`` stays visible as typed; numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` saying what to type (the site config's
    own check: one place decides what a time zone is)."""
    return time_zone(name)


def local_day(us: int, tz: ZoneInfo) -> date:
    return to_datetime(us).astimezone(tz).date()


@dataclass
class AlarmRow:
    alert: str
    rule: str
    priority: str
    bed: str | None
    raised: int
    cleared: int | None = None
    acknowledged: int | None = None
    acknowledged_by: str | None = None
    escalated_to: str | None = None
    overridden_reason: str | None = None
    overridden_by: str | None = None
    latched: bool = False
    reset_by: str | None = None

    @property
    def category(self) -> str:
        return category(self.rule)

    @property
    def seconds_to_acknowledge(self) -> float | None:
        return None if self.acknowledged is None else (self.acknowledged - self.raised) / 1e6


@dataclass
class Report:
    alarms: list[AlarmRow]
    bed_days_seen: set[tuple[str, date]]  # (bed, local calendar day) with monitoring data
    since: int | None
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def bed_days(self) -> int:
        return len(self.bed_days_seen)

    @property
    def days(self) -> list[date]:
        """Every local calendar day from the first with data or an alarm to the last."""
        seen = {day for _, day in self.bed_days_seen}
        seen.update(local_day(a.raised, self.tz) for a in self.alarms)
        if not seen:
            return []
        first, last = min(seen), max(seen)
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    @property
    def per_bed_day(self) -> float:
        return len(self.alarms) / self.bed_days if self.bed_days else 0.0

    @property
    def acknowledged_share(self) -> float:
        return (
            sum(a.acknowledged is not None for a in self.alarms) / len(self.alarms)
            if self.alarms
            else 0.0
        )

    @property
    def median_seconds_to_acknowledge(self) -> float | None:
        times = [a.seconds_to_acknowledge for a in self.alarms if a.acknowledged is not None]
        return statistics.median(times) if times else None  # type: ignore[type-var]

    @property
    def escalated_share(self) -> float:
        return (
            sum(a.escalated_to is not None for a in self.alarms) / len(self.alarms)
            if self.alarms
            else 0.0
        )

    @property
    def override_reasons(self) -> Counter[str]:
        return Counter(a.overridden_reason for a in self.alarms if a.overridden_reason)

    def text(self) -> str:
        window = f"since {format_ts(self.since)}" if self.since is not None else "the whole log"
        out = [
            f"CalGuard alarm burden, {window}; days in {self.tz.key}",
            f"  alarms {len(self.alarms)} over {self.bed_days} bed-days: "
            f"{self.per_bed_day:.1f} per bed-day",
            f"  technical {sum(a.category == 'technical' for a in self.alarms)}, "
            f"clinical {sum(a.category == 'clinical' for a in self.alarms)}",
            f"  acknowledged {self.acknowledged_share:.0%}; median time to acknowledge "
            + (
                f"{self.median_seconds_to_acknowledge:.0f} s"
                if self.median_seconds_to_acknowledge is not None
                else "- (none acknowledged)"
            ),
            f"  escalated beyond the bedside {self.escalated_share:.0%}",
            "",
            f"  {'rule':<28}{'high':>6}{'medium':>8}{'low':>6}{'total':>7}",
        ]
        totals: Counter[str] = Counter()
        for (rule, _), n in self.by_rule.items():
            totals[rule] += n
        rules = sorted(totals, key=lambda r: (-totals[r], r))  # deterministic order
        for rule in rules:
            counts = [self.by_rule[(rule, p)] for p in _PRIORITIES]
            out.append(f"  {rule:<28}{counts[0]:>6}{counts[1]:>8}{counts[2]:>6}{sum(counts):>7}")
        reasons = self.override_reasons
        out.append("")
        out.append(
            "  override reasons: "
            + (", ".join(f"{r} {n}" for r, n in reasons.most_common()) if reasons else "none")
        )
        return "\n".join(out)


def build_report(
    lines: list[dict[str, Any]],
    beds: Iterable[tuple[str, int]],
    since: int | None,
    tz: ZoneInfo | None = None,
) -> Report:
    """From alert lines in time order (the log's, or a replay's) and the (bed, time) of the
    monitoring data since ``since``; bed-days counted in ``tz`` (default UTC)."""
    tz = tz or ZoneInfo("UTC")
    seen = {(bed, local_day(t, tz)) for bed, t in beds}
    rows: dict[str, AlarmRow] = {}
    for line in lines:
        t = parse_ts(line["t"])
        if line.get("bed") and (since is None or t >= since):
            # beds with alarms count too, though their documentation is older
            seen.add((line["bed"], local_day(t, tz)))
        state, alert = line["state"], line["alert"]
        row = rows.get(alert)
        if state == "raised":
            if since is not None and t < since:
                continue
            rows[alert] = AlarmRow(alert, line["rule"], line["priority"], line.get("bed"), t)
            continue
        if row is None:
            continue
        row.priority = line["priority"]  # the highest it reached (alerts never soften)
        if state == "cleared":
            row.cleared, row.latched = t, bool(line.get("latched"))
        elif state == "acknowledged" and row.acknowledged is None:
            row.acknowledged, row.acknowledged_by = t, line.get("by")
        elif state == "escalated" and line.get("audience"):
            row.escalated_to = line["audience"]
        elif state == "overridden":
            row.overridden_reason, row.overridden_by = line.get("reason"), line.get("by")
        elif state == "reset":
            row.reset_by = line.get("by")
    alarms = list(rows.values())
    return Report(alarms, seen, since, tz, Counter((a.rule, a.priority) for a in alarms))


async def load_report(
    url: str,
    since: int | None,
    tz: ZoneInfo | None = None,
    *,
    sessions_of: SessionFilter | None = None,
) -> Report:
    """``sessions_of``: which sessions count (default: all but training and demo ones,
    which are no ward's alarm burden)."""
    which = (sessions_of or SessionFilter()).query()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = (
                select(alert_transitions.c.alert_line)
                .where(alert_transitions.c.session_id.in_(which))
                .order_by(alert_transitions.c.session_id, alert_transitions.c.seq)
            )
            lines = [orjson.loads(r[0]) for r in (await conn.execute(query)).all()]
            # integer division on both SQLite and PostgreSQL (t_us is a BIGINT)
            bucket = (inputs.c.t_us // _BUCKET_US).label("bucket")
            beds = (
                select(inputs.c.bed, bucket)
                .where(
                    inputs.c.bed.is_not(None),
                    inputs.c.t_us.is_not(None),
                    inputs.c.session_id.in_(which),
                )
                .distinct()
            )
            if since is not None:
                beds = beds.where(inputs.c.t_us >= since)
            bed_rows = [(bed, b * _BUCKET_US) for bed, b in (await conn.execute(beds)).all()]
            bed_rows += await _beds_of_blocks(conn, which, since)
    finally:
        await engine.dispose()
    lines.sort(key=lambda line: line["t"])  # sessions may interleave; RFC 3339 UTC sorts
    return build_report(lines, bed_rows, since, tz)


async def _beds_of_blocks(conn: AsyncConnection, which: Any, since: int | None) -> list[Any]:
    """The beds of the readings kept in blocks, per bucket, from each block's summary
    (its rows are not decoded)."""
    b = input_blocks.c
    query = select(b.beds).where(b.session_id.in_(which))
    if since is not None:  # a block may start before ``since``: its buckets are checked
        query = query.where(b.t_max >= since)
    first = None if since is None else since // _BUCKET_US
    return [
        (bed, bucket * _BUCKET_US)
        for (beds,) in (await conn.execute(query)).all()
        for bed, bucket in bed_buckets(beds)
        if first is None or bucket >= first
    ]


def _local_text(us: int, tz: ZoneInfo) -> str:
    """RFC 3339 with the zone's offset: ``2026-11-21T08:40:00+01:00``."""
    return to_datetime(us).astimezone(tz).isoformat()


def write_csv(report: Report, path: str | Path) -> None:
    """One row per alarm; times in UTC (RFC 3339), and the raising time in the report's
    zone too. Text cells are neutralised against spreadsheet formulas (``csv_cell``)."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for a in report.alarms:
            values = {
                **a.__dict__,
                "category": a.category,
                "seconds_to_acknowledge": a.seconds_to_acknowledge,
                "raised": format_ts(a.raised),
                "raised_local": _local_text(a.raised, report.tz),
                "cleared": format_ts(a.cleared) if a.cleared is not None else None,
                "acknowledged": format_ts(a.acknowledged) if a.acknowledged is not None else None,
            }
            writer.writerow(["" if values[f] is None else csv_cell(values[f]) for f in CSV_FIELDS])


def _day_hours(day: date, tz: ZoneInfo) -> int:
    """23 or 25 on the days the clocks change, else 24."""
    start, end = (datetime.combine(d, time(), tz) for d in (day, day + timedelta(days=1)))
    return round((end.astimezone(UTC) - start.astimezone(UTC)) / timedelta(hours=1))


def chart(report: Report, max_days: int = MAX_CHART_DAYS) -> Figure:
    """Alarms raised per local hour, stacked by priority: one panel per calendar day (the
    last ``max_days`` days), two columns from four days on, the same y scale throughout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    days = report.days
    shown = days[-max_days:]
    counts: Counter[tuple[date, int, str]] = Counter()
    for a in report.alarms:
        local = to_datetime(a.raised).astimezone(report.tz)
        counts[(local.date(), local.hour, a.priority)] += 1
    cols = 1 if len(shown) <= 3 else 2
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(1.5 + 6.0 * cols, 1.4 + 1.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg (PNG) canvas, without pyplot's global state
    title = "CalGuard: alarms raised per hour, by priority"
    if not shown:
        fig.suptitle(f"{title}\nlocal time {report.tz.key}")
        fig.text(0.5, 0.5, "no monitoring data and no alarms in this period", ha="center")
        return fig
    period = f"{shown[0]:%d %b %Y}" + (f" to {shown[-1]:%d %b %Y}" if len(shown) > 1 else "")
    cut = f" (the last {len(shown)} of {len(days)} days)" if len(shown) < len(days) else ""
    fig.suptitle(f"{title}\n{period}{cut}, local time {report.tz.key}")
    axes = list(fig.subplots(rows, cols, sharey=True, squeeze=False).flat)
    for i, (ax, day) in enumerate(zip(axes, shown, strict=False)):
        _day_panel(ax, day, counts, report.tz)
        if i + cols >= len(shown):  # the lowest panel of its column
            ax.set_xlabel(f"hour of the day ({report.tz.key})")
    for ax in axes[len(shown) :]:
        ax.remove()  # the empty slot of an odd number of days
    peak = max(
        (sum(counts[(d, h, p)] for p in _PRIORITIES) for d in shown for h in range(24)), default=0
    )
    axes[0].set_ylim(0, max(peak, 1) * 1.3)  # shared: room for the totals above the bars
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, title="priority")
    fig.supylabel("alarms raised")
    return fig


def _day_panel(ax: Axes, day: date, counts: Counter[tuple[date, int, str]], tz: ZoneInfo) -> None:
    from matplotlib.ticker import MaxNLocator

    hours = range(24)
    bottom = [0] * 24
    for priority in _PRIORITIES:
        values = [counts[(day, h, priority)] for h in hours]
        colour, hatch = _LOOK[priority]
        ax.bar(
            hours,
            values,
            bottom=bottom,
            color=colour,
            hatch=hatch,
            edgecolor="#333333",
            linewidth=0.5,
            label=priority,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for h, total in zip(hours, bottom, strict=True):
        if total:
            ax.annotate(
                str(total),
                (h, total),
                xytext=(0, 1),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    by_priority = ", ".join(f"{p} {sum(counts[(day, h, p)] for h in hours)}" for p in _PRIORITIES)
    length = _day_hours(day, tz)
    clocks = {23: "; clocks went forward (23 h)", 25: "; clocks went back (25 h)"}
    ax.set_title(
        f"{day:%a %d %b %Y}: {_plural(sum(bottom), 'alarm')} ({by_priority})"
        + clocks.get(length, ""),
        fontsize=9,
        loc="left",
    )
    ax.set_xlim(-0.6, 23.6)
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}:00" for h in range(0, 24, 3)], fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", linewidth=0.3)
    ax.set_axisbelow(True)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def write_png(report: Report, path: str | Path, max_days: int = MAX_CHART_DAYS) -> None:
    """The chart of ``chart`` as a PNG (100 dpi)."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    chart(report, max_days).savefig(path, dpi=100)
