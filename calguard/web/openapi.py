"""The station's API described for other systems: an OpenAPI 3.1 document at
``/api/openapi.json``, made of the paths each section declares (``Section.paths``), so a
page added later (the pharmacy's) describes its own API beside the others.

Written by hand rather than derived: the API is small, its answers are the monitor's
documents (event-format's field names are a contract), and a schema written for the
person integrating reads better than one generated from code. ``tests/test_web_api.py``
fuzzes the running station against this document (schemathesis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from calguard import __version__
from calguard.monitor.events import ALARM_ACTIONS
from calguard.web.api import JSON

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = [
    "API_PATHS",
    "API_SCHEMAS",
    "BED_PATHS",
    "LIBRARY_PATHS",
    "LIBRARY_SCHEMAS",
    "REPORT_PATHS",
    "document",
    "routes",
]

_PRIORITIES = ["high", "medium", "low"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_TEXT: dict[str, Any] = {"type": "string"}
_MAYBE_TEXT: dict[str, Any] = {"type": ["string", "null"]}

API_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {**_TEXT, "description": "why, in words for people"}},
    },
    "Alarm": {
        "type": "object",
        "description": "An alarm as the alarm layer holds it: the fields of its latest alert "
        "line (event-format.md), with its state and who acted.",
        "required": ["alert", "rule", "priority", "state", "message", "raised"],
        "properties": {
            "alert": _TEXT,
            "rule": _TEXT,
            "priority": {"enum": _PRIORITIES},
            "label": {"enum": ["HIGH", "MEDIUM", "LOW"]},
            "state": {"enum": ["active", "acknowledged", "paused", "overridden", "latched"]},
            "category": {"enum": ["clinical", "technical"]},
            "bed": _TEXT,
            "line": _TEXT,
            "pump": _TEXT,
            "channel": _TEXT,
            "message": _TEXT,
            "value": _TEXT,
            "limit": _TEXT,
            "raised": {**_TEXT, "format": "date-time"},
            "t": {**_TEXT, "format": "date-time"},
            "until": {**_TEXT, "format": "date-time"},
            "audience": _TEXT,
            "acknowledged_by": _TEXT,
            "paused_by": _TEXT,
            "overridden_by": _TEXT,
            "override_reason": _TEXT,
            "latched": {"type": "boolean"},
            "annunciating": {"type": "boolean"},
        },
    },
    "WardState": {
        "type": "object",
        "description": "The whole ward as the overview shows it (beds worst alarm first).",
        "required": ["title", "mode", "timezone", "now", "beds", "alarms", "banners", "sound"],
        "properties": {
            "title": _TEXT,
            "mode": {"enum": ["live", "training", "demo"]},
            "timezone": _TEXT,
            "now": {**_TEXT, "format": "date-time"},
            "speed": {"type": "number"},
            "beds": {"type": "array", "items": _OBJECT},
            "unassigned": {"type": "array", "items": _OBJECT},
            "alarms": {"type": "array", "items": _ref("Alarm")},
            "banners": {"type": "array", "items": _OBJECT},
            "sound": _OBJECT,
            "audit": {"type": "array", "items": _OBJECT},
        },
    },
    "Session": {
        "type": "object",
        "required": ["user", "login"],
        "properties": {
            "user": _MAYBE_TEXT,
            "role": _TEXT,
            "expires": {**_TEXT, "format": "date-time"},
            "csrf": {
                **_MAYBE_TEXT,
                "description": "send as X-CSRF-Token with every change made with the cookie",
            },
            "login": {**_TEXT, "description": '"open", or why nobody can log in here'},
        },
    },
    "Login": {
        "type": "object",
        "required": ["user", "password"],
        "properties": {"user": _TEXT, "password": {**_TEXT, "format": "password"}},
    },
    "ActionBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {
                **_TEXT,
                "minLength": 1,
                "maxLength": 64,
                "description": "override: a coded reason of the library (WardState.library)",
            },
            "duration": {**_TEXT, "minLength": 1, "maxLength": 32, "examples": ["2 min"]},
            "note": {**_TEXT, "minLength": 1, "maxLength": 200},
        },
    },
    "ActionResult": {
        "type": "object",
        "required": ["alert", "action", "by", "role", "applied", "verdict"],
        "properties": {
            "alert": _TEXT,
            "action": {"enum": list(ALARM_ACTIONS)},
            "by": _TEXT,
            "role": _TEXT,
            "applied": {"type": "boolean"},
            "verdict": {**_TEXT, "description": '"done", or the monitor\'s reason for refusing'},
        },
    },
    "Audit": {
        "type": "object",
        "required": ["entries"],
        "properties": {"entries": {"type": "array", "items": _OBJECT}, "problem": _MAYBE_TEXT},
    },
}

_SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]

API_PATHS: dict[str, Any] = {
    "/api/state": {
        "get": {
            "summary": "the ward now: beds, alarms, banners, sound",
            "responses": {"200": _json(_ref("WardState"), "the ward")},
        }
    },
    "/api/alarms": {
        "get": {
            "summary": "the alarms shown now, the most urgent first",
            "parameters": [
                {"name": "bed", "in": "query", "schema": _TEXT},
                {"name": "priority", "in": "query", "schema": {"enum": _PRIORITIES}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["alarms"],
                        "properties": {"alarms": {"type": "array", "items": _ref("Alarm")}},
                    },
                    "the alarms",
                )
            },
        }
    },
    "/api/events": {
        "get": {
            "summary": "server-sent events: `state` (a WardState) on every change and every "
            "second; `stopped` when the monitor stops",
            "responses": {
                "200": {"description": "the stream", "content": {"text/event-stream": {}}}
            },
        }
    },
    "/api/audit": {
        "get": {
            "summary": "the latest actions on alarms, as the log's audit chain holds them",
            "responses": {"200": _json(_ref("Audit"), "newest first")},
        }
    },
    "/api/session": {
        "get": {
            "summary": "who the request's cookie or bearer token proves to be",
            "responses": {"200": _json(_ref("Session"), "the session, or user null")},
        }
    },
    "/api/login": {
        "post": {
            "summary": "log in with a CalGuard account: sets the HttpOnly session cookie",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Login")}},
            },
            "responses": {
                "200": _json(_ref("Session"), "logged in"),
                "400": _error("no user or password"),
                "401": _error("unknown user or wrong password"),
                "403": _error("the account is disabled"),
                "413": _error("too large"),
                "415": _error("not JSON"),
                "429": _error("too many failed logins for this account"),
                "503": _error("no accounts here, or they cannot be read now"),
            },
        }
    },
    "/api/logout": {
        "post": {
            "summary": "end the browser session (a bearer token ends with calguard logout)",
            "security": [{"cookie": []}],
            "responses": {
                "200": _json(_ref("Session"), "logged out"),
                "400": _error("a bearer token, not a session"),
                "401": _error("not logged in"),
                "403": _error("the CSRF token is missing or stale"),
            },
        }
    },
    "/api/alarms/{alert}/{action}": {
        "post": {
            "summary": "act on an alarm as the logged-in person: the monitor's verdict",
            "security": _SECURED,
            "parameters": [
                {
                    "name": "alert",
                    "in": "path",
                    "required": True,
                    "schema": {**_TEXT, "maxLength": 64, "examples": ["a-000001"]},
                },
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": list(ALARM_ACTIONS)},
                },
            ],
            "requestBody": {"content": {"application/json": {"schema": _ref("ActionBody")}}},
            "responses": {
                "200": _json(_ref("ActionResult"), "applied"),
                "400": _error("a field the action does not take, or a bad value"),
                "401": _error("not logged in, or the token no longer holds"),
                "403": _error("the CSRF token is missing or stale"),
                "404": _error("no such action"),
                "409": _json(_ref("ActionResult"), "refused by the monitor: its verdict"),
                "413": _error("too large"),
                "415": _error("not JSON"),
            },
        }
    },
}

_BED = [
    {"name": "bed", "in": "path", "required": True, "schema": _TEXT},
    {
        "name": "hours",
        "in": "query",
        "description": "how far back (default 24)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 24},
    },
]
BED_PATHS: dict[str, Any] = {
    "/api/beds/{bed}": {
        "get": {
            "summary": "a bed now and its last 24 h (rates, calcium, alarms, checks)",
            "parameters": _BED,
            "responses": {
                "200": _json(_OBJECT, "the bed"),
                "400": _error("hours not a whole number from 1 to 24"),
                "404": _error("no such bed at this monitor"),
            },
        }
    },
    "/api/beds/{bed}/chart.svg": {
        "get": {
            "summary": "the bed's last 24 h as an SVG chart",
            "parameters": _BED,
            "responses": {
                "200": {"description": "the chart", "content": {"image/svg+xml": {}}},
                "400": _error("hours not a whole number from 1 to 24"),
                "404": _error("no such bed at this monitor"),
            },
        }
    },
}

_REPORT_PARAMS = [
    {
        "name": "since",
        "in": "query",
        "schema": {**_TEXT, "examples": ["7 day", "2026-11-21T07:00:00Z"]},
    },
    {"name": "tz", "in": "query", "schema": {**_TEXT, "examples": ["Europe/London"]}},
]
_REPORT_ERRORS = {
    "400": _error("since or tz not understood"),
    "503": _error("no log, or it cannot be read now"),
}
REPORT_PATHS: dict[str, Any] = {
    "/api/report": {
        "get": {
            "summary": "the alarm burden: per bed-day, per day and per bed (calguard report)",
            "parameters": _REPORT_PARAMS,
            "responses": {"200": _json(_OBJECT, "the report"), **_REPORT_ERRORS},
        }
    },
    "/api/report.csv": {
        "get": {
            "summary": "one row per alarm, as calguard report --csv writes it",
            "parameters": _REPORT_PARAMS,
            "responses": {
                "200": {"description": "CSV", "content": {"text/csv": {}}},
                **_REPORT_ERRORS,
            },
        }
    },
}


_PROBLEMS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["key", "message"],
        "properties": {
            "key": {**_TEXT, "examples": ["rules.rate-volume.limit"]},
            "message": {**_TEXT, "description": "in words, naming the default and its source"},
        },
    },
}
LIBRARY_SCHEMAS: dict[str, Any] = {
    "Draft": {
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {
            "text": {**_TEXT, "minLength": 1, "description": "the library's TOML"},
            "source": {
                **_TEXT,
                "maxLength": 200,
                "description": "the file's name, as the draft records it",
                "examples": ["nicu-library.toml"],
            },
        },
    },
    "LibraryStep": {
        "type": "object",
        "description": "A step of the library's lifecycle and its entry of the audit chain "
        "(payload: the step, the content hash, the SHA-256 of the library's text).",
        "required": ["t", "step", "version", "by", "role", "detail"],
        "properties": {
            "t": {**_TEXT, "format": "date-time"},
            "step": {"enum": ["draft", "approve", "publish", "rollback"]},
            "version": _TEXT,
            "unit": _MAYBE_TEXT,
            "profile": _MAYBE_TEXT,
            "by": _TEXT,
            "role": _TEXT,
            "detail": _OBJECT,
            "audit": {"type": ["object", "null"]},
        },
    },
    "LibraryVersion": {
        "type": "object",
        "description": "A version as `calguard config check` sees it now, its diff against "
        "the library this monitor runs, and its steps.",
        "required": ["version", "problems", "warnings"],
        "properties": {
            "version": _TEXT,
            "name": _MAYBE_TEXT,
            "problems": _PROBLEMS,
            "warnings": _PROBLEMS,
            "diff": {"type": ["object", "null"]},
            "approved_by": {"type": "array", "items": _TEXT},
            "steps": {"type": "array", "items": _ref("LibraryStep")},
        },
    },
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "a content hash, or its first digits (sha256: and at least 6)",
    "schema": {**_TEXT, "examples": ["sha256:9a07e6"]},
}
_PHARMACIST_ERRORS = {
    "400": _error("a field the step does not take"),
    "401": _error("not logged in, or the token no longer holds"),
    "403": _error("not a pharmacist, or the CSRF token is missing or stale"),
    "404": _error("no such version in the log"),
    "409": _error("refused by the lifecycle: its reason"),
    "413": _error("too large"),
    "415": _error("not JSON"),
    "503": _error("the log cannot be used now"),
}
LIBRARY_PATHS: dict[str, Any] = {
    "/api/library": {
        "get": {
            "summary": "the library this monitor runs, and what is published to its unit",
            "responses": {
                "200": _json(_OBJECT, "running, published, switch_pending"),
                "503": _error("no log, or it cannot be read now"),
            },
        }
    },
    "/api/library/history": {
        "get": {
            "summary": "the lifecycle's latest steps, newest first, with their audit entries",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["steps"],
                        "properties": {"steps": {"type": "array", "items": _ref("LibraryStep")}},
                    },
                    "the steps",
                ),
                "503": _error("no log, or it cannot be read now"),
            },
        }
    },
    "/api/library/drafts": {
        "post": {
            "summary": "check a library (its TOML text) and keep it as a draft",
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Draft")}},
            },
            "responses": {
                "201": _json(_ref("LibraryVersion"), "drafted: its check, diff and steps"),
                "400": _error("no text, or a source that is not a file name"),
                "401": _error("not logged in, or the token no longer holds"),
                "403": _error("the CSRF token is missing or stale"),
                "413": _error("too large"),
                "415": _error("not JSON"),
                "422": _json(_ref("LibraryVersion"), "problems: nothing was recorded"),
                "503": _error("the log cannot be used now"),
            },
        }
    },
    "/api/library/versions/{version}": {
        "get": {
            "summary": "a version as checked now, its diff against what runs, its steps",
            "parameters": [_VERSION],
            "responses": {
                "200": _json(_ref("LibraryVersion"), "the version"),
                "404": _error("no such version in the log"),
                "503": _error("the log cannot be read now"),
            },
        }
    },
    "/api/library/versions/{version}/approve": {
        "post": {
            "summary": "approve a draft (a pharmacist), each warning acknowledged by its key",
            "security": _SECURED,
            "parameters": [_VERSION],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "acknowledged": {"type": "array", "items": _TEXT},
                            },
                        }
                    }
                }
            },
            "responses": {
                "200": _json(_ref("LibraryStep"), "approved"),
                **_PHARMACIST_ERRORS,
            },
        }
    },
    "/api/library/versions/{version}/publish": {
        "post": {
            "summary": "publish an approved version to this monitor's unit (a pharmacist; a "
            "second one if its site config asks for four eyes)",
            "security": _SECURED,
            "parameters": [_VERSION],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["steps"],
                        "properties": {
                            "steps": {"type": "array", "items": _ref("LibraryStep")},
                            "switch_within_s": {"type": "number"},
                        },
                    },
                    "published: the unit's monitor switches at its next look at the log",
                ),
                **_PHARMACIST_ERRORS,
            },
        }
    },
}


def document(station: Station) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for section in station.sections:
        paths.update(section.paths)
        schemas.update(section.schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"CalGuard central station: {station.info.title}",
            "version": __version__,
            "description": "Read the ward; act on alarms with a CalGuard account (a bearer "
            "token of `calguard login`, or the station's session cookie with its CSRF token).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": station.sessions.cookie},
            },
        },
    }


def routes(station: Station) -> list[BaseRoute]:
    async def openapi(request: Request) -> Response:
        return JSON(document(station))

    return [Route("/api/openapi.json", openapi, methods=["GET"])]
