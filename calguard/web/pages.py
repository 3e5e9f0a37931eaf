"""The station's pages: one layout, the unit overview, and the shipped assets.

Every page has the same header (the unit, the monitor's clock, the sound state, who is
logged in) and the same live parts (``static/station.js``: the banners, the offline
warning, the sound), so a nurse who opens a bed's chart still hears the ward and still
sees a failure. The overview's tiles and alarm list are drawn by the script from the
feed; the bed detail and the report are drawn here, on the server.

Every asset ships in the package (``static/``, package data): no CDN, no font or script
from elsewhere, so the station works on a ward network that reaches nothing else.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["STATIC", "layout", "routes"]

STATIC = Path(__file__).parent / "static"
_MODES = {"demo": "DEMO: simulated pumps", "training": "TRAINING: not a ward"}


def layout(station: Station, name: str, title: str, body: str) -> HTMLResponse:
    """A whole page of the station around ``body`` (already escaped HTML)."""
    info = station.info
    nav = "".join(
        f'<a href="{escape(path)}"{" aria-current=page" if path == _path_of(name) else ""}>'
        f"{escape(label)}</a>"
        for path, label in station.nav()
    )
    mode = _MODES.get(info.mode)
    badge = f'<span class="mode">{escape(mode)}</span>' if mode else ""
    return HTMLResponse(
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - {escape(info.title)} - CalGuard</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/station.css"></head>'
        f'<body class="page-{escape(name)}" data-timezone="{escape(info.timezone)}">'
        '<header class="top"><span class="brand">CalGuard</span>'
        f'<span class="unit">{escape(info.title)}</span>{badge}<nav>{nav}</nav>'
        '<span class="clock" id="clock" title="the monitor\'s clock">--:--:--</span>'
        '<button type="button" id="sound" class="sound" aria-live="polite">sound: starting'
        "</button>"
        '<span class="who" id="who"></span>'
        '<button type="button" id="login" class="login">log in</button></header>'
        '<div id="offline" class="banner offline" role="alert" hidden></div>'
        '<div id="banners" role="alert" aria-live="assertive"></div>'
        f"{body}"
        f"{_login_dialog()}"
        '<div id="verdict" class="verdict" role="status" aria-live="polite" hidden></div>'
        '<script src="/static/sound.js"></script><script src="/static/station.js"></script>'
        "</body></html>"
    )


def _path_of(name: str) -> str:
    return "/" if name == "overview" else f"/{name}"


def _login_dialog() -> str:
    return (
        '<dialog id="login-dialog"><form id="login-form" method="dialog">'
        "<h2>Log in with your CalGuard account</h2>"
        '<label>account <input name="user" id="login-user" autocomplete="username" '
        "required></label>"
        '<label>password <input name="password" id="login-password" type="password" '
        'autocomplete="current-password" required></label>'
        '<p class="error" id="login-error" role="alert"></p>'
        '<menu><button type="submit" id="login-submit">log in</button>'
        '<button type="button" id="login-cancel">cancel</button></menu>'
        "</form></dialog>"
    )


def routes(station: Station) -> list[BaseRoute]:
    async def overview(request: Request) -> Response:
        body = (
            '<main class="overview">'
            '<div class="unit-area"><p class="legend" id="legend"></p>'
            '<section id="beds" class="beds" aria-label="beds, worst alarm first"></section></div>'
            '<aside class="side" aria-label="alarms">'
            '<h2>Alarms <span id="alarm-count"></span></h2><ol id="alarms" class="alarms"></ol>'
            '<h2>Actions (audit)</h2><ol id="audit" class="audit"></ol>'
            "</aside></main>"
        )
        return layout(station, "overview", "Unit overview", body)

    return [
        Route("/", overview, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
