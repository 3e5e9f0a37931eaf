"""The alarm-burden report of ``calguard report`` as a page: per day and per bed, in the
site's local time, with its charts and the same CSV to download.

The numbers are ``calguard.alerts.report``'s, from the durable log, for the sessions of
this station (a ward's live runs of this site; a demo's own session): one definition of
a bed-day and of time to acknowledge, whether read in a terminal or here.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from collections import Counter
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from calguard.alerts.log import short_error
from calguard.alerts.report import AlarmRow, Report, load_report, local_day, write_csv, zone
from calguard.monitor import units
from calguard.monitor.errors import QuantityError
from calguard.monitor.timeutil import format_ts, parse_ts
from calguard.web.api import JSON
from calguard.web.auth import Refused
from calguard.web.chart import PRIORITIES, bar_chart
from calguard.web.pages import layout
from calguard.web.state import bed_key

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["routes"]

DEFAULT_SINCE = "7 day"
_READ_TIMEOUT_S = 30.0


def routes(station: Station) -> list[BaseRoute]:
    page = _ReportPage(station)
    return [
        Route("/report", page.page, methods=["GET"]),
        Route("/api/report", page.json, methods=["GET"]),
        Route("/api/report.csv", page.csv, methods=["GET"]),
    ]


def per_day(report: Report) -> list[dict[str, Any]]:
    """Each local calendar day: alarms raised by priority, bed-days, acknowledgement."""
    out = []
    for day in report.days:
        rows = [a for a in report.alarms if local_day(a.raised, report.tz) == day]
        bed_days = sum(1 for _, d in report.bed_days_seen if d == day)
        out.append({"day": day.isoformat(), "bed_days": bed_days, **_counts(rows)})
    return out


def per_bed(report: Report) -> list[dict[str, Any]]:
    beds = {b for b, _ in report.bed_days_seen} | {a.bed for a in report.alarms if a.bed}
    out = []
    for bed in sorted(beds, key=bed_key):
        rows = [a for a in report.alarms if a.bed == bed]
        bed_days = sum(1 for b, _ in report.bed_days_seen if b == bed)
        out.append({"bed": bed, "bed_days": bed_days, **_counts(rows)})
    return out


def _counts(rows: list[AlarmRow]) -> dict[str, Any]:
    by = Counter(a.priority for a in rows)
    acked = [a.seconds_to_acknowledge for a in rows if a.seconds_to_acknowledge is not None]
    return {
        "alarms": len(rows),
        **{p: by.get(p, 0) for p in PRIORITIES},
        "acknowledged": len(acked),
        "median_seconds_to_acknowledge": statistics.median(acked) if acked else None,
        "escalated": sum(a.escalated_to is not None for a in rows),
        "overridden": sum(a.overridden_reason is not None for a in rows),
    }


class _ReportPage:
    def __init__(self, station: Station) -> None:
        self.station = station

    def _params(self, request: Request) -> tuple[int, str, ZoneInfo]:
        text = request.query_params.get("since", DEFAULT_SINCE)
        name = request.query_params.get("tz", self.station.tz.key)
        try:
            tz = zone(name)
        except ValueError as exc:
            raise Refused(400, f"tz: {exc}") from None
        monitor = self.station.monitor
        now = max(monitor.clock.now_us(), monitor.engine.now or 0)
        return _since(text, now), text, tz

    async def _report(self, request: Request) -> tuple[Report, str]:
        since, text, tz = self._params(request)
        alert_log = self.station.monitor.log
        if alert_log is None:
            raise Refused(503, "this monitor keeps no log: there is no alarm burden to report")
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                report = await load_report(
                    alert_log.url, since, tz, sessions_of=self.station.sessions_of()
                )
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise Refused(503, f"the log cannot be read now: {short_error(exc)}") from None
        return report, text

    async def json(self, request: Request) -> Response:
        report, _ = await self._report(request)
        return JSON(
            {
                "since": format_ts(report.since) if report.since is not None else None,
                "timezone": report.tz.key,
                "alarms": len(report.alarms),
                "bed_days": report.bed_days,
                "per_bed_day": report.per_bed_day,
                "acknowledged_share": report.acknowledged_share,
                "median_seconds_to_acknowledge": report.median_seconds_to_acknowledge,
                "escalated_share": report.escalated_share,
                "override_reasons": dict(report.override_reasons),
                "per_day": per_day(report),
                "per_bed": per_bed(report),
            }
        )

    async def csv(self, request: Request) -> Response:
        report, _ = await self._report(request)
        text = await asyncio.to_thread(_csv_text, report)
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="calguard-alarms.csv"'},
        )

    async def page(self, request: Request) -> Response:
        report, since_text = await self._report(request)
        days, beds = per_day(report), per_bed(report)
        query = f"since={escape(since_text)}&amp;tz={escape(report.tz.key)}"
        body = (
            '<main class="report"><h1>Alarm burden</h1>'
            f"{_form(since_text, report.tz.key)}"
            f'<pre class="summary">{escape(report.text())}</pre>'
            f'<p><a href="/api/report.csv?{query}" download>one row per alarm (CSV)</a> · '
            f'<a href="/api/report?{query}">as JSON</a></p>'
            f"<figure>{bar_chart('alarms raised per day, by priority', _bars(days, 'day'))}"
            "</figure>"
            f"{_table('per day', 'day', days)}"
            f"<figure>{bar_chart('alarms per bed, by priority', _bars(beds, 'bed'))}</figure>"
            f"{_table('per bed', 'bed', beds)}</main>"
        )
        return layout(self.station, "report", "Alarm burden", body)


def _since(text: str, now: int) -> int:
    """A time (RFC 3339) or a span back from now ("7 day"); 400 saying what to type."""
    try:
        return parse_ts(text)
    except (QuantityError, ValueError):
        pass
    try:
        number, unit = units.split_quantity(text)
        ago = number * units.unit_factor(unit, units.DURATION)
    except QuantityError as exc:
        raise Refused(
            400,
            f'since {text!r}: {exc.reason}; a time ("2026-11-21T07:00:00Z") or a span '
            '("7 day") is expected',
        ) from None
    return now - round(ago)


def _csv_text(report: Report) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "alarms.csv"
        write_csv(report, path)
        return path.read_text("utf-8")


def _bars(rows: list[dict[str, Any]], key: str) -> list[tuple[str, dict[str, int]]]:
    return [(str(r[key]), {p: r[p] for p in PRIORITIES}) for r in rows if r["alarms"]]


def _form(since: str, tz: str) -> str:
    return (
        '<form class="report-form" method="get" action="/report">'
        f'<label>since <input name="since" value="{escape(since)}"></label>'
        f'<label>time zone <input name="tz" value="{escape(tz)}"></label>'
        '<button type="submit">show</button></form>'
    )


def _table(caption: str, key: str, rows: list[dict[str, Any]]) -> str:
    head = (
        f"<tr><th>{key}</th><th>bed-days</th><th>alarms</th><th>high</th><th>medium</th>"
        "<th>low</th><th>acknowledged</th><th>median to acknowledge</th><th>escalated</th>"
        "<th>overridden</th></tr>"
    )
    body = "".join(
        f"<tr><td>{escape(str(r[key]))}</td><td>{r['bed_days']}</td><td>{r['alarms']}</td>"
        f"<td>{r['high']}</td><td>{r['medium']}</td><td>{r['low']}</td>"
        f"<td>{r['acknowledged']}</td><td>{_seconds(r['median_seconds_to_acknowledge'])}</td>"
        f"<td>{r['escalated']}</td><td>{r['overridden']}</td></tr>"
        for r in rows
    )
    return f'<table class="burden"><caption>{escape(caption)}</caption>{head}{body}</table>'


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"
