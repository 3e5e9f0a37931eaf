"""The alarm-burden report: what the alarms cost a unit, from the durable log.

One row per alarm (from its alert lines): rule, priority, category, bed, when raised and
cleared, whether and when acknowledged and by whom, how far it escalated, override reason.
The summary: alarms per bed-day (a bed-day is one bed with monitoring data on one calendar
day, UTC), by rule and priority, the share acknowledged, the median time to acknowledge,
the share escalated beyond the bedside, override reasons. ``--png`` draws alarms raised per
hour by priority (matplotlib, optional extra ``calguard[report]``).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from calguard.alerts.alarms import category
from calguard.alerts.schema import alert_transitions, inputs
from calguard.monitor.timeutil import format_ts
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["AlarmRow", "Report", "build_report", "load_report", "write_csv", "write_png"]

_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
CSV_FIELDS = (
    "alert", "rule", "priority", "category", "bed", "raised", "cleared", "acknowledged",
    "seconds_to_acknowledge", "acknowledged_by", "escalated_to", "overridden_reason",
    "overridden_by", "latched", "reset_by",
)  # fmt: skip


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
    bed_days: int
    since: int | None
    by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)

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
            f"CalGuard alarm burden, {window}",
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
            counts = [self.by_rule[(rule, p)] for p in ("high", "medium", "low")]
            out.append(f"  {rule:<28}{counts[0]:>6}{counts[1]:>8}{counts[2]:>6}{sum(counts):>7}")
        reasons = self.override_reasons
        out.append("")
        out.append(
            "  override reasons: "
            + (", ".join(f"{r} {n}" for r, n in reasons.most_common()) if reasons else "none")
        )
        return "\n".join(out)


def build_report(lines: list[dict[str, Any]], bed_days: int, since: int | None) -> Report:
    """From alert lines in time order (the log's, or a replay's)."""
    from calguard.monitor.timeutil import parse_ts

    rows: dict[str, AlarmRow] = {}
    for line in lines:
        t = parse_ts(line["t"])
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
    return Report(alarms, bed_days, since, Counter((a.rule, a.priority) for a in alarms))


async def load_report(url: str, since: int | None) -> Report:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = select(alert_transitions.c.alert_line).order_by(
                alert_transitions.c.session_id, alert_transitions.c.seq
            )
            lines = [orjson.loads(r[0]) for r in (await conn.execute(query)).all()]
            beds = select(inputs.c.bed, inputs.c.t_us).where(
                inputs.c.bed.is_not(None), inputs.c.t_us.is_not(None)
            )
            if since is not None:
                beds = beds.where(inputs.c.t_us >= since)
            bed_rows = (await conn.execute(beds)).all()
    finally:
        await engine.dispose()
    days = {(bed, t // _DAY_US) for bed, t in bed_rows}
    from calguard.monitor.timeutil import parse_ts

    for line in lines:  # beds with alarms count too, though their documentation is older
        t = parse_ts(line["t"])
        if line.get("bed") and (since is None or t >= since):
            days.add((line["bed"], t // _DAY_US))
    lines.sort(key=lambda line: line["t"])  # sessions may interleave; RFC 3339 UTC sorts
    return build_report(lines, len(days), since)


def write_csv(report: Report, path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for a in report.alarms:
            values = {
                **a.__dict__,
                "category": a.category,
                "seconds_to_acknowledge": a.seconds_to_acknowledge,
                "raised": format_ts(a.raised),
                "cleared": format_ts(a.cleared) if a.cleared is not None else None,
                "acknowledged": format_ts(a.acknowledged) if a.acknowledged is not None else None,
            }
            writer.writerow(["" if values[f] is None else values[f] for f in CSV_FIELDS])


def write_png(report: Report, path: str | Path) -> None:
    """Alarms raised per hour, stacked by priority."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not report.alarms:
        hours: list[int] = []
    else:
        first = min(a.raised for a in report.alarms) // _HOUR_US
        last = max(a.raised for a in report.alarms) // _HOUR_US
        hours = list(range(first, last + 1))
    colours = {"high": "#c62828", "medium": "#f9a825", "low": "#1e88e5"}
    fig, ax = plt.subplots(figsize=(max(6, len(hours) * 0.5), 4), dpi=100)
    bottom = [0] * len(hours)
    for priority in ("high", "medium", "low"):
        counts = Counter(a.raised // _HOUR_US for a in report.alarms if a.priority == priority)
        values = [counts.get(h, 0) for h in hours]
        ax.bar(
            range(len(hours)),
            values,
            bottom=bottom,
            color=colours[priority],
            label=priority,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(hours)), [format_ts(h * _HOUR_US)[11:16] for h in hours])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("alarms raised")
    ax.set_xlabel("hour (UTC)")
    ax.set_title(f"CalGuard alarms per hour by priority ({len(report.alarms)} alarms)")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
