"""The pharmacy's page (``/pharmacy``) and its API (``/api/library/...``): the drug
library's lifecycle at the station, as ``calguard library`` runs it on the command line.

A pharmacist uploads (or pastes) a library. The page shows what ``config check`` says of
it - a problem refuses it; each warning (a setting looser than the clinical reference, a
rule off) is listed by its key, naming the default and its source - and the diff against
the library this monitor runs, every changed limit in its own unit and converted. Approving
takes a pharmacist and a tick for each warning; publishing sends the version to this
station's unit, whose monitor (this one) switches to it at its next look at the log. Each
step's audit entry is shown: the content hash, and the SHA-256 of the text it stands behind.

Who may take a step, and what it needs, is decided by ``calguard.pharmacy`` on the server,
for the page and the API alike: a disabled button in the page saves a refusal, it is never
the check. The person is the station's session (or a bearer token of ``calguard login``),
proven again against the accounts as they are now (``Pharmacy.person``), as the command
line proves its token. A role that may not approve or publish is refused before anything
is read (403); a step that may not be taken yet is refused in the lifecycle's own words
(409: a warning not acknowledged, four eyes, a version never approved).

Publishing goes to this monitor's unit as its site config describes it now (its name, its
profile, whether it asks for four eyes): the config the monitor was started with, as its
log session records it, read again as ``calguard library publish --site`` reads it. A
monitor that follows no publication (a demo, no log database) has nothing to publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict
from html import escape
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from calguard.alerts.accounts import AccountError
from calguard.alerts.library_store import LibraryStore, LibraryStoreError, Step
from calguard.alerts.log import short_error
from calguard.alerts.schema import audit_chain, sessions
from calguard.config.diff import diff_libraries
from calguard.config.loader import parse_library
from calguard.library_watch import POLL_S
from calguard.monitor.errors import ConfigError, ConfigProblem, LogError
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_ts
from calguard.pharmacy import (
    PHARMACIST,
    Checked,
    DraftRefused,
    LifecycleError,
    Pharmacy,
    Unit,
    check,
    is_approved,
)
from calguard.site import load_site
from calguard.tokens import TokenError
from calguard.web.api import JSON, json_body
from calguard.web.auth import Person, Refused
from calguard.web.pages import layout

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["routes"]

log = logging.getLogger(__name__)

_MAX_LIBRARY = 512 * 1024  # bytes of TOML: the built-in library is 12 kB
_MAX_SOURCE = 200
_MAX_KEYS = 500  # warnings acknowledged at once
_HISTORY = 50  # steps the page lists
_READ_TIMEOUT_S = 10.0


def routes(station: Station) -> list[BaseRoute]:
    desk = _Desk(station)
    return [
        Route("/pharmacy", desk.page, methods=["GET"]),
        Route("/api/library", desk.status, methods=["GET"]),
        Route("/api/library/history", desk.history, methods=["GET"]),
        Route("/api/library/drafts", desk.draft, methods=["POST"]),
        Route("/api/library/versions/{version}", desk.version, methods=["GET"]),
        Route("/api/library/versions/{version}/approve", desk.approve, methods=["POST"]),
        Route("/api/library/versions/{version}/publish", desk.publish, methods=["POST"]),
    ]


@contextlib.contextmanager
def _refusals(person: Person | None = None) -> Iterator[None]:
    """The lifecycle's errors as refusals with their HTTP status, each one logged."""
    try:
        yield
    except (TokenError, AccountError) as exc:
        raise _said(401, str(exc), person) from None
    except LifecycleError as exc:
        raise _said(409, str(exc), person) from None
    except LibraryStoreError as exc:
        raise _said(404, str(exc), person) from None
    except LogError as exc:
        raise _said(503, f"the log cannot be used now: {exc}", person) from None
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise _said(503, f"the log cannot be read now: {short_error(exc)}", person) from None


def _pharmacist(person: Person, what: str) -> None:
    """The role, from the verified session, before anything is read: 403."""
    if person.role != PHARMACIST:
        message = f"only a pharmacist may {what} a library; {person.name} is {person.role}"
        raise _said(403, message, person)


def _said(status: int, message: str, person: Person | None) -> Refused:
    who = f"{person.name} ({person.role})" if person is not None else "a reader"
    log.warning("pharmacy page: refused to %s: %s", who, message)
    return Refused(status, message)


class _Desk:
    """The pharmacy's requests against this station's monitor and its log."""

    def __init__(self, station: Station) -> None:
        self.station = station

    # -- where the lifecycle is kept ----------------------------------------------------------

    def _url(self) -> str:
        alert_log = self.station.monitor.log
        if alert_log is None:
            raise Refused(
                503, "this monitor keeps no log database, where the library's lifecycle is kept"
            )
        return alert_log.url

    @contextlib.asynccontextmanager
    async def _store(self) -> AsyncIterator[LibraryStore]:
        """The log's lifecycle tables, to read (the monitor's log migrated them)."""
        async with LibraryStore(self._url(), migrate=False) as store:
            yield store

    @contextlib.asynccontextmanager
    async def _pharmacy(self) -> AsyncIterator[Pharmacy]:
        guard = self.station.sessions.guard
        assert guard is not None  # a person was required: there are accounts here
        async with Pharmacy(self._url(), keys=guard.keys) as pharmacy:
            yield pharmacy

    def _running(self) -> Library:
        return self.station.monitor.engine.library

    # -- reading ------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        """What this unit runs, what was published to it, and whether it has switched."""
        running, unit = self._running(), self.station.site
        with _refusals():
            async with self._store() as store:
                approved = await is_approved(store, running.version)
                published = await store.published(unit) if unit is not None else None
            steps = await self._steps([published] if published is not None else [])
        return JSON(
            {
                "unit": unit,
                "follows": self.station.monitor.library_watch is not None,
                "running": _library(running) | {"approved": approved},
                "published": steps[0] if steps else None,
                "switch_pending": published is not None
                and published.version != running.content_version,
                "poll_s": POLL_S,
            }
        )

    async def history(self, request: Request) -> Response:
        with _refusals():
            async with self._store() as store:
                steps = (await store.steps())[-_HISTORY:]
            shown = await self._steps(steps[::-1])
        return JSON({"steps": shown})

    async def version(self, request: Request) -> Response:
        with _refusals():
            return JSON(await self._version(request.path_params["version"]))

    async def _version(self, ref: str) -> dict[str, Any]:
        """A version of the log as checked now, its diff against what runs, and its steps."""
        async with self._store() as store:
            version = await store.resolve(ref)
            text = await store.content(version)
            steps = await store.steps(version=version)
        found = check(text, version)
        return _checked(found) | {
            "diff": _diff(self._running(), found.library),
            "approved_by": sorted({s.actor for s in steps if s.step == "approve"}),
            "steps": await self._steps(steps),
        }

    async def _steps(self, steps: Sequence[Step]) -> list[dict[str, Any]]:
        """Steps as the page shows them, each with its entry of the audit chain."""
        entries = await self._entries([s.audit_seq for s in steps if s.audit_seq is not None])
        return [_step(s, entries.get(s.audit_seq or 0)) for s in steps]

    async def _entries(self, seqs: list[int]) -> dict[int, dict[str, Any]]:
        reader = self.station.reader
        if reader is None or not seqs:
            return {}
        c = audit_chain.c
        query = select(
            c.seq, c.t_us, c.kind, c.actor, c.payload, c.key_id, c.digest, c.prev_hash, c.hash
        ).where(c.seq.in_(seqs))
        async with asyncio.timeout(_READ_TIMEOUT_S), reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {int(row.seq): _entry(row) for row in rows}

    # -- the steps ----------------------------------------------------------------------------

    async def draft(self, request: Request) -> Response:
        """A library's text checked and kept as a draft."""
        person = self.station.sessions.require(request, write=True)
        text, source = await _draft_body(request)
        with _refusals(person):
            async with self._pharmacy() as pharmacy:
                who = await pharmacy.person(person.token)
                try:
                    found, step = await pharmacy.draft(text, source, who)
                except DraftRefused as exc:
                    log.warning("pharmacy page: a draft of %s by %s: %s", source, who.name, exc)
                    return JSON({"error": str(exc), **_checked(exc.checked)}, status_code=422)
            log.info("pharmacy page: %s drafted %s (%s)", who.name, found.version, source)
            return JSON(await self._version(step.version), status_code=201)

    async def approve(self, request: Request) -> Response:
        """A pharmacist's approval, with each warning acknowledged by its key."""
        person = self.station.sessions.require(request, write=True)
        _pharmacist(person, "approve")
        acknowledged = _acknowledged(await json_body(request))
        with _refusals(person):
            async with self._pharmacy() as pharmacy:
                who = await pharmacy.person(person.token)
                step = await pharmacy.approve(request.path_params["version"], who, acknowledged)
            log.warning("pharmacy page: %s approved %s", who.name, step.version)
            (shown,) = await self._steps([step])
        return JSON(shown)

    async def publish(self, request: Request) -> Response:
        """An approved version to this monitor's unit (four eyes if its site config asks)."""
        person = self.station.sessions.require(request, write=True)
        _pharmacist(person, "publish")
        if body := await json_body(request):
            raise Refused(400, f"unknown field(s) {', '.join(sorted(body))}: publish takes none")
        with _refusals(person):
            unit = await self._unit(person)
            async with self._pharmacy() as pharmacy:
                who = await pharmacy.person(person.token)
                steps = await pharmacy.publish(request.path_params["version"], who, [unit])
            log.warning("pharmacy page: %s published %s to %s", who.name, steps[0].version, unit)
            shown = await self._steps(steps)
        return JSON({"steps": shown, "switch_within_s": POLL_S})

    async def _unit(self, person: Person) -> Unit:
        """This monitor's unit, as its site config says now."""
        monitor = self.station.monitor
        watch, alert_log = monitor.library_watch, monitor.log
        if watch is None or alert_log is None or alert_log.session_id is None:
            raise _said(
                409,
                "this monitor follows no publication (a demo, or no log database): publish "
                "with calguard library publish VERSION --site SITE.toml",
                person,
            )
        source = await self._site_source(alert_log.session_id, person)
        try:
            site = await asyncio.to_thread(load_site, source)
        except ConfigError as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            message = f"the site config {source} does not load now: {problems}"
            raise _said(409, message, person) from None
        if (site.name, site.profile) != (watch.unit, watch.profile):
            message = (
                f"the site config {source} now describes {site.name} (profile {site.profile}), "
                f"and this monitor runs {watch.unit} (profile {watch.profile}): restart it, or "
                "publish with calguard library publish VERSION --site SITE.toml"
            )
            raise _said(409, message, person)
        return Unit.of_site(site)

    async def _site_source(self, session: int, person: Person) -> str:
        """The site config this monitor was started with, as its log session says."""
        reader = self.station.reader
        if reader is None:
            raise _said(503, "the station is not reading the log yet: try again", person)
        query = select(sessions.c.source).where(sessions.c.id == session)
        async with asyncio.timeout(_READ_TIMEOUT_S), reader.connect() as conn:
            source = (await conn.execute(query)).scalar()
        if not source:
            raise _said(409, f"the log's session {session} names no site config", person)
        return str(source)

    # -- the page -----------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        unit = self.station.site or "this monitor"
        asked = request.query_params.get("version", "")  # a version to open: pharmacy.js reads it
        body = (
            f'<main class="pharmacy" data-version="{escape(asked)}">'
            f"<h1>Pharmacy: the drug library of {escape(unit)}</h1>"
            f"{_running_part(unit)}{_draft_part()}{_version_part(unit)}"
            '<section class="history"><h2>The latest steps, newest first</h2>'
            f'<table id="history" class="steps">{_STEPS_HEAD}<tbody></tbody></table></section>'
            "</main>"
            '<link rel="stylesheet" href="/static/pharmacy.css">'
            '<script src="/static/pharmacy.js" defer></script>'
        )
        return layout(self.station, "pharmacy", "Pharmacy", body)


# -- the request's parts ----------------------------------------------------------------------


async def _draft_body(request: Request) -> tuple[str, str]:
    """The library's text and its file's name: ``{"text": ..., "source": ...}``, a body
    larger than the station's other requests take (``json_body``), so read here."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":  # a form of another site cannot send JSON unasked
        raise Refused(415, "Content-Type: application/json is expected")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_LIBRARY:
            raise Refused(413, f"a library of at most {_MAX_LIBRARY // 1024} kB is expected")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) - {"text", "source"}:
        raise Refused(400, 'a JSON object with "text" (and "source") is expected')
    return _text(obj.get("text")), _source(obj.get("source"))


def _text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise Refused(400, "text: the library's TOML is expected")
    return text


def _source(source: object) -> str:
    """Where the text came from, as the draft records it (a file's name)."""
    if source is None or source == "":
        return "pasted at the station"
    if not isinstance(source, str) or len(source) > _MAX_SOURCE or not source.isprintable():
        raise Refused(400, f"source: a file name of at most {_MAX_SOURCE} characters is expected")
    return source


def _acknowledged(body: dict[str, Any]) -> set[str]:
    unknown = sorted(set(body) - {"acknowledged"})
    if unknown:
        raise Refused(400, f"unknown field(s) {', '.join(unknown)}: approve takes acknowledged")
    keys = body.get("acknowledged", [])
    if (
        not isinstance(keys, list)
        or len(keys) > _MAX_KEYS
        or not all(isinstance(k, str) and 0 < len(k) <= _MAX_SOURCE for k in keys)
    ):
        raise Refused(400, "acknowledged: a list of the warnings' keys is expected")
    return set(keys)


# -- the documents ------------------------------------------------------------------------------


def _library(library: Library) -> dict[str, Any]:
    return {
        "version": library.version,
        "content_version": library.content_version,
        "profile": library.profile,
        "name": library.name,
        "source": library.source,
    }


def _problems(problems: Sequence[ConfigProblem]) -> list[dict[str, str]]:
    return [{"key": p.key, "message": p.message} for p in problems]


def _checked(found: Checked) -> dict[str, Any]:
    library = found.library
    return {
        "version": found.version,
        "name": library.name if library is not None else None,
        "products": len(library.products) if library is not None else None,
        "profiles": list(library.profiles) if library is not None else [],
        "problems": _problems(found.problems),
        "warnings": _problems(found.warnings),
    }


def _diff(running: Library, new: Library | None) -> dict[str, Any] | None:
    """Every change from the library this monitor runs (the whole document, every profile
    of it) to ``new``, as ``calguard library diff`` prints it."""
    if new is None:
        return None
    old = running
    if running.profile is not None:  # the document it is a profile of
        old = parse_library(running.text, running.source).library or running
    changes = diff_libraries(old, new)
    return {
        "from": old.version,
        "to": new.version,
        "changes": [{**asdict(c), "text": str(c)} for c in changes],
    }


def _step(step: Step, entry: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": step.id,
        "t": format_ts(step.t_us),
        "step": step.step,
        "version": step.version,
        "unit": step.unit,
        "profile": step.profile,
        "by": step.actor,
        "role": step.role,
        "detail": step.detail,
        "audit": entry,
    }


def _entry(row: Any) -> dict[str, Any]:
    """An entry of the audit chain as it is stored: what it says (its payload: the step, the
    content hash, the SHA-256 of the text), its digest and its keyed hash."""
    try:
        payload = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        payload = row.payload
    return {
        "seq": int(row.seq),
        "t": format_ts(row.t_us),
        "kind": row.kind,
        "actor": row.actor,
        "payload": payload,
        "digest": row.digest,
        "key_id": row.key_id,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


# -- the page's parts (pharmacy.js fills them from the API) --------------------------------------

_STEPS_HEAD = (
    "<thead><tr><th>time (UTC)</th><th>step</th><th>version</th><th>unit</th><th>by</th>"
    "<th>decided</th><th>audit entry</th></tr></thead>"
)


def _running_part(unit: str) -> str:
    return (
        '<section class="running" aria-label="what this unit runs">'
        f'<p>{escape(unit)} runs <code id="running-version">…</code> '
        '<span id="running-name"></span> <b id="running-approval"></b></p>'
        '<p id="published"></p></section>'
    )


def _draft_part() -> str:
    return (
        '<section class="step"><h2>1. Draft: upload or paste a library</h2>'
        '<form id="draft-form">'
        '<label>a library file (TOML) <input type="file" id="draft-file" '
        'accept=".toml,application/toml,text/plain"></label>'
        '<label>or its text <textarea id="draft-text" rows="6" spellcheck="false">'
        "</textarea></label>"
        '<button type="submit" id="draft-submit">check it and keep it as a draft</button> '
        '<output id="draft-verdict" class="verdict"></output></form>'
        '<ul id="draft-problems" class="problems"></ul></section>'
    )


def _version_part(unit: str) -> str:
    return (
        '<section id="version" class="step" hidden>'
        '<h2>2. Check: <code id="version-hash"></code> <span id="version-name"></span></h2>'
        "<h3>Departures from the clinical reference: approving needs each one ticked</h3>"
        '<ul id="warnings" class="warnings"></ul>'
        '<h2>3. Diff against the running version <code id="diff-from"></code></h2>'
        '<ul id="diff" class="diff"></ul>'
        "<h2>4. Approve (a pharmacist)</h2>"
        '<p id="approved-by"></p>'
        '<button type="button" id="approve" disabled>approve, each warning acknowledged'
        '</button> <output id="approve-verdict" class="verdict"></output>'
        f"<h2>5. Publish to {escape(unit)}</h2>"
        "<p>A pharmacist publishes an approved version; a unit whose site config asks for "
        "four eyes needs a second pharmacist besides its only approver.</p>"
        '<button type="button" id="publish">publish</button> '
        '<output id="publish-verdict" class="verdict"></output>'
        "<h2>Its steps and their audit entries</h2>"
        f'<table id="steps" class="steps">{_STEPS_HEAD}<tbody></tbody></table></section>'
    )
