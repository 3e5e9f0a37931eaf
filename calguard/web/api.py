"""The station's HTTP API: the ward's state, its live feed, logging in, and actions on alarms.

What the overview page shows, it reads here, and so can another station or the hospital's
integration engine (with a token of ``calguard login`` as a bearer token). An action is a
command to the monitor (``Monitor.command``), exactly as one sent over the broker: the
token is checked, the action is stamped with the monitor's clock, logged and audited, the
alarm layer decides with the library's permissions, and its verdict is the answer - 200
with ``applied`` when it was applied, 409 with the monitor's reason when it was refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.timeutil import format_ts
from calguard.web.auth import Person, Refused

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["JSON", "json_body", "routes"]

log = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024
_ACTION_FIELDS = {"reason": 64, "duration": 32, "note": 200}  # what an action may carry
_MAX_ALERT = 64


class JSON(Response):
    """Strict JSON (orjson: no NaN, no Infinity)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); ``Refused`` 4xx otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise Refused(413, f"a body of at most {_MAX_BODY} bytes is expected")
    if not body.strip():
        return {}
    if kind != "application/json":  # a form of another site cannot send JSON unasked
        raise Refused(415, "Content-Type: application/json is expected")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Refused(400, "a JSON object is expected")
    return obj


def routes(station: Station) -> list[BaseRoute]:
    api = _Api(station)
    return [
        Route("/api/state", api.state, methods=["GET"]),
        Route("/api/alarms", api.alarms, methods=["GET"]),
        Route("/api/events", api.events, methods=["GET"]),
        Route("/api/audit", api.audit, methods=["GET"]),
        Route("/api/session", api.session, methods=["GET"]),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/logout", api.logout, methods=["POST"]),
        Route("/api/alarms/{alert}/{action}", api.act, methods=["POST"]),
    ]


class _Api:
    def __init__(self, station: Station) -> None:
        self.station = station

    async def state(self, request: Request) -> Response:
        return JSON(self.station.feed.build(self.station.feed.lag_s))

    async def alarms(self, request: Request) -> Response:
        bed = request.query_params.get("bed")
        priority = request.query_params.get("priority")
        shown = self.station.feed.build(self.station.feed.lag_s)["alarms"]
        if bed is not None:
            shown = [a for a in shown if a.get("bed") == bed]
        if priority is not None:
            shown = [a for a in shown if a.get("priority") == priority]
        return JSON({"alarms": shown})

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self.station.feed.stream(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def audit(self, request: Request) -> Response:
        trail = self.station.audit
        return JSON({"entries": trail.entries, "problem": trail.problem})

    async def session(self, request: Request) -> Response:
        return JSON(self._session(self.station.sessions.person(request)))

    def _session(self, person: Person | None) -> dict[str, Any]:
        sessions = self.station.sessions
        if person is None:
            return {"user": None, "login": sessions.available or "open"}
        return {
            "user": person.name,
            "role": person.role,
            "expires": format_ts(person.expires * 1_000_000),
            "csrf": sessions.csrf(person) if person.by_cookie else None,
            "login": "open",
        }

    async def login(self, request: Request) -> Response:
        body = await json_body(request)
        client = request.client.host if request.client else "?"
        person = await self.station.sessions.login(body.get("user"), body.get("password"), client)
        response = JSON(self._session(person))
        self.station.sessions.set_cookie(response, person)
        return response

    async def logout(self, request: Request) -> Response:
        sessions = self.station.sessions
        person = sessions.require(request, write=True)
        if not person.by_cookie:
            raise Refused(400, "a bearer token is not a session: calguard logout forgets it")
        sessions.logout(person)
        response = JSON(self._session(None))
        sessions.clear_cookie(response)
        return response

    async def act(self, request: Request) -> Response:
        station = self.station
        person = station.sessions.require(request, write=True)
        action, alert = request.path_params["action"], request.path_params["alert"]
        if action not in ALARM_ACTIONS:
            raise Refused(404, f"action {action!r}: one of {', '.join(ALARM_ACTIONS)}")
        if not 0 < len(alert) <= _MAX_ALERT:
            raise Refused(400, f"an alert id of at most {_MAX_ALERT} characters is expected")
        fields = _action_fields(await json_body(request))
        command = {"action": action, "alert": alert, **fields, "token": person.token}
        raw = orjson.dumps(command)
        monitor = station.monitor
        await monitor.settle_command(raw)
        client = request.client.host if request.client else "?"
        verdict = monitor.command(raw, f"web {client}")
        station.audit.poke()
        station.feed.poke()
        if verdict is not None:
            log.warning(
                "%s %s of %s at the station refused: %s", person.name, action, alert, verdict
            )
        answer = {
            "alert": alert,
            "action": action,
            "by": person.name,
            "role": person.role,
            "applied": verdict is None,
            "verdict": verdict or "done",
        }
        return JSON(answer, status_code=200 if verdict is None else 409)


def _action_fields(body: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(body) - set(_ACTION_FIELDS))
    if unknown:
        raise Refused(
            400,
            f"unknown field(s) {', '.join(unknown)}: an action takes {', '.join(_ACTION_FIELDS)}",
        )
    fields: dict[str, str] = {}
    for name, value in body.items():
        longest = _ACTION_FIELDS[name]
        if not isinstance(value, str) or not 0 < len(value) <= longest:
            raise Refused(400, f"{name}: a text of 1 to {longest} characters is expected")
        fields[name] = value
    return fields
