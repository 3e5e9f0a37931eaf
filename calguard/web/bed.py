"""A bed's detail: the infant, the lines and pumps now, the bed's alarms, and its last 24 h on
one chart (``calguard.web.chart``), as a page, as JSON and as an SVG of its own.

A log that cannot be read now costs the chart its history, never the page: what the engine
holds (the infant, the lines, the calcium curve) is shown with the reason beside it.
"""

from __future__ import annotations

import asyncio
import logging
from html import escape
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from calguard.alerts.log import short_error
from calguard.monitor.units import format_number
from calguard.web.api import JSON
from calguard.web.auth import Refused
from calguard.web.chart import bed_chart
from calguard.web.history import HOUR_US, BedHistory, load_history
from calguard.web.pages import layout

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["routes"]

log = logging.getLogger(__name__)
_READ_TIMEOUT_S = 10.0


def routes(station: Station) -> list[BaseRoute]:
    detail = _Detail(station)
    return [
        Route("/bed/{bed}", detail.page, methods=["GET"]),
        Route("/api/beds/{bed}", detail.json, methods=["GET"]),
        Route("/api/beds/{bed}/chart.svg", detail.svg, methods=["GET"]),
    ]


class _Detail:
    def __init__(self, station: Station) -> None:
        self.station = station

    async def _history(self, request: Request) -> tuple[BedHistory, str | None]:
        bed, window = request.path_params["bed"], _hours(request) * HOUR_US
        station = self.station
        monitor = station.monitor
        end = max(monitor.clock.now_us(), monitor.engine.now or 0)
        which = station.sessions_of()
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                history = await load_history(
                    monitor.engine, bed, end, station.reader, which, window
                )
                return history, None
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            why = f"the log cannot be read now ({short_error(exc)}): no rates, alarms or checks"
            log.error("bed %s: %s", bed, why)
            return await load_history(monitor.engine, bed, end, None, which, window), why

    def _tile(self, bed: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The bed's tile and alarms as the overview shows them; 404 for a bed unknown."""
        state = self.station.feed.build(self.station.feed.lag_s)
        tile = next((t for t in state["beds"] if t["bed"] == bed), None)
        if tile is None:
            raise Refused(404, f"no bed {bed!r} at this monitor")
        alarms = [a for a in state["alarms"] if a.get("bed") == bed]
        return tile, alarms

    async def json(self, request: Request) -> Response:
        bed = request.path_params["bed"]
        tile, alarms = self._tile(bed)
        history, problem = await self._history(request)
        return JSON(
            {"bed": tile, "alarms": alarms, "history": history.to_dict(), "problem": problem}
        )

    async def svg(self, request: Request) -> Response:
        bed = request.path_params["bed"]
        self._tile(bed)
        history, _ = await self._history(request)
        return Response(bed_chart(history, self.station.tz), media_type="image/svg+xml")

    async def page(self, request: Request) -> Response:
        bed = request.path_params["bed"]
        tile, alarms = self._tile(bed)
        history, problem = await self._history(request)
        hours = (history.end - history.start) // HOUR_US
        note = f'<p class="problem" role="alert">{escape(problem)}</p>' if problem else ""
        body = (
            f'<main class="bed-detail" data-bed="{escape(bed)}">'
            f'<h1>Bed {escape(bed)} <span class="label p-{tile["worst"] or "ok"}">'
            f"{escape(tile['label'])}</span></h1>"
            f"{_summary(tile)}{_alarm_list(alarms)}"
            f"<h2>The last {hours} h ({escape(self.station.tz.key)})</h2>{note}"
            f'<figure class="bed-chart">{bed_chart(history, self.station.tz)}</figure>'
            f'<p><a href="/api/beds/{escape(bed)}">this bed as JSON</a> · '
            f'<a href="/api/beds/{escape(bed)}/chart.svg">the chart as SVG</a> · '
            '<a href="/">back to the unit</a></p></main>'
        )
        return layout(self.station, "bed", f"Bed {bed}", body)


def _hours(request: Request) -> int:
    text = request.query_params.get("hours", "24")
    if not text.isdigit() or not 1 <= int(text) <= 24:
        raise Refused(400, f"hours {text!r}: a whole number from 1 to 24 is expected")
    return int(text)


def _summary(tile: dict[str, Any]) -> str:
    dose = tile["dose"]
    rows = [
        f"<tr><th>weight</th><td>{escape(tile['weight'] or 'NO WEIGHT')}</td></tr>",
        "<tr><th>calcium in 24 h</th><td>"
        + (escape(f"{dose['text']} of {dose['limit_text']}") if dose else "-")
        + "</td></tr>",
    ]
    for line in tile["lines"]:
        where = ", ".join(x for x in (line["kind"], line["site"]) if x)
        rows.append(f"<tr><th>line {escape(line['line'])}</th><td>{escape(where)}</td></tr>")
        for ch in line["channels"]:
            rate = (
                f"{format_number(ch['rate_ml_h'])} ml/h ({format_number(ch['rate_ml_min'])} "
                f"ml/min), {ch['status']}"
            )
            what = f"{ch['drug']}: {rate}"
            rows.append(f"<tr><th>{escape(ch['name'])}</th><td>{escape(what)}</td></tr>")
    return f'<table class="summary">{"".join(rows)}</table>'


def _alarm_list(alarms: list[dict[str, Any]]) -> str:
    if not alarms:
        return "<p>No alarm at this bed now - which does not mean a site is fine: look at it.</p>"
    items = "".join(
        f'<li class="p-{escape(a["priority"])}"><b>{escape(a["label"])}</b> '
        f"{escape(a['alert'])} {escape(a['rule'])} [{escape(a['state'])}] "
        f"{escape(a['message'])}</li>"
        for a in alarms
    )
    return f'<h2>Alarms</h2><ul class="bed-alarms">{items}</ul>'
