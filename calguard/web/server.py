"""The central station's server: a Starlette app served by uvicorn inside the monitor's loop.

``Station.run`` is one more task in the monitor's ``TaskGroup`` (``calguard.live``), so
the pages read the engine and the alarm layer as they are, and an action goes through
``Monitor.command`` like a command from the broker: checked, logged, audited, answered.

The station is made of sections (``Section``): the overview and its API, the bed detail,
the report. Each brings its routes, its link in the navigation and its part of the
OpenAPI schema; all share the login (``station.sessions``) and the state. A later page
(the pharmacy's) is one more ``Section`` handed to ``Station``.

The station may fail; the monitor may not. A port that cannot be bound is said loudly
(critical) and the monitor goes on alarming without its station; uvicorn's own habits
that would stop the process (``sys.exit`` when a bind fails, signal handlers of its own)
are kept out: the socket is bound here, and the monitor owns the signals. Only loopback
addresses are served (the site config refuses others) and a request naming any other
host is refused, so a web page elsewhere cannot read the ward by rebinding a DNS name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calguard.alerts.accounts import Accounts
from calguard.alerts.sessions import SessionFilter
from calguard.app import Monitor
from calguard.config.site import WebConfig, time_zone
from calguard.monitor.transitions import AlertTransition
from calguard.web.audit import AuditTrail
from calguard.web.auth import Refused, Sessions
from calguard.web.feed import Feed
from calguard.web.pages import layout
from calguard.web.state import ActionMemory, StationInfo, ward_state

__all__ = ["Section", "Station"]

log = logging.getLogger(__name__)

_SHUTDOWN_S = 2  # how long open pages may take to go once the monitor stops
_HEADERS = [
    # every script, style and sound is the station's own: nothing from elsewhere runs here
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class Section:
    """A part of the station: its routes, its place in the navigation, its API's schema."""

    name: str
    routes: Callable[[Station], Sequence[BaseRoute]]
    nav: tuple[str, str] | None = None  # (path, label)
    paths: Mapping[str, Any] = field(default_factory=dict)  # OpenAPI paths
    schemas: Mapping[str, Any] = field(default_factory=dict)  # OpenAPI components


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the monitor stops the station (SIGINT and
    SIGTERM stop the monitor, which flushes its log first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Station:
    """The web station of one monitor. ``run`` serves until ``stop``."""

    def __init__(
        self,
        monitor: Monitor,
        config: WebConfig,
        *,
        title: str,
        mode: str,
        timezone: str = "UTC",
        site: str | None = None,
        sections: Sequence[Section] | None = None,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        from calguard.web.sections import SECTIONS  # the sections import this module

        self.monitor = monitor
        self.config = config
        self.site = site
        self.mode = mode
        self.tz: ZoneInfo = time_zone(config.timezone or timezone)
        alert_log = monitor.log
        self.info = StationInfo(title, mode, self.tz.key, alert_log is not None)
        self.memory = ActionMemory()
        accounts = (
            Accounts(alert_log.url, migrate=False)
            if alert_log is not None and monitor.guard is not None
            else None
        )
        self.sessions = Sessions(monitor.guard, accounts, ttl_s=config.session_s)
        self.audit = AuditTrail(self)
        self.feed = Feed(self._state, lambda: monitor.processed)
        monitor.outputs.append(self._output)
        self.sections = list(SECTIONS if sections is None else sections)
        self.reader: AsyncEngine | None = None  # the log, for the pages' queries
        self.url: str | None = None  # once listening
        self.problem: str | None = None  # why the station is not serving
        self.started = asyncio.Event()  # listening, or given up (see ``problem``)
        self.on_listening = on_listening  # told the address once the station listens
        self._stopping = asyncio.Event()
        self.app = self._app()

    # -- what the sections share ----------------------------------------------------------

    def sessions_of(self) -> SessionFilter:
        """The log's sessions this station's history, audit and report are of: a ward's
        live runs of this site; a demo's or a training run's own session only (their
        clocks run fast from today, so earlier runs would overlap in time)."""
        alert_log = self.monitor.log
        if self.mode == "live" or alert_log is None or alert_log.session_id is None:
            return SessionFilter(site=self.site, mode="live")
        return SessionFilter(session=alert_log.session_id)

    def nav(self) -> list[tuple[str, str]]:
        return [s.nav for s in self.sections if s.nav is not None]

    def remember(self, lines: list[dict[str, Any]]) -> None:
        """Alarm lines restored at a warm start: who paused or overrode what."""
        for line in lines:
            self.memory.see(line)

    def _output(self, tr: AlertTransition, _line: str) -> None:
        """One of the monitor's outputs: every alert line, as it goes out."""
        self.memory.see(tr)
        if tr.by is not None:
            self.audit.poke()
        self.feed.poke()

    def _state(self, lag_s: float) -> dict[str, Any]:
        return ward_state(
            self.monitor, self.info, self.memory, lag_s=lag_s, audit=self.audit.entries
        )

    # -- the app ----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes: list[BaseRoute] = []
        for section in self.sections:
            routes += section.routes(self)
        hosts = ["127.0.0.1", "localhost", "::1", self.config.host]
        return Starlette(
            routes=routes,
            middleware=[
                Middleware(_SecurityHeaders),
                Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            ],
            exception_handlers={Refused: self._refused},
        )

    async def _refused(self, request: Request, exc: Exception) -> Response:
        """A refusal in words: JSON for the API, a page for a person."""
        assert isinstance(exc, Refused)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        body = (
            f'<main class="refused"><h1>{escape(exc.message)}</h1><a href="/">the unit</a></main>'
        )
        page = layout(self, "refused", "Refused", body)
        page.status_code = exc.status
        return page

    # -- serving ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until ``stop``. Never raises: a station that fails is logged, and the
        monitor goes on without it."""
        try:
            await self._serve()
        except Exception as exc:  # the station must never stop the monitor
            self.problem = f"the central station failed: {exc!r}"
            log.exception("the central station failed; the monitor goes on without it")
        finally:
            self.started.set()

    async def _serve(self) -> None:
        try:
            sock = _bind(self.config.host, self.config.port)
        except OSError as exc:
            self.problem = (
                f"the central station cannot listen on {self.config.host} port "
                f"{self.config.port}: {exc.strerror or exc}"
            )
            log.critical("%s; the monitor goes on without it", self.problem)
            return
        self.url = url = _url(sock)
        # cookies do not tell ports apart: two stations on one machine keep their own
        self.sessions.cookie = f"calguard_session_{sock.getsockname()[1]}"
        server = _Server(
            uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,
                lifespan="off",
                ws="none",
                timeout_graceful_shutdown=_SHUTDOWN_S,
            )
        )
        for name in ("uvicorn", "uvicorn.error"):  # its start and stop are ours to say
            logging.getLogger(name).setLevel(logging.WARNING)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(sock.close)
            stack.push_async_callback(self._close_reader)
            if self.sessions.accounts is not None:
                await stack.enter_async_context(self.sessions.accounts)
            if self.monitor.log is not None:
                self.reader = _reader(self.monitor.log.url)
            await self._serving(server, sock, url)

    async def _serving(self, server: _Server, sock: socket.socket, url: str) -> None:
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(server.serve(sockets=[sock]), name="web server")
            helpers = [
                group.create_task(self.feed.run(), name="web feed"),
                group.create_task(self.audit.run(), name="web audit"),
            ]
            log.warning("central station: %s", url)
            if self.on_listening is not None:
                self.on_listening(url)
            self.started.set()
            try:
                await self._stopping.wait()
            finally:
                self.feed.close()  # every page hears that the monitor stops, and lets go
                server.should_exit = True
                for task in helpers:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving

    async def _close_reader(self) -> None:
        if self.reader is not None:
            await self.reader.dispose()
            self.reader = None


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _reader(url: str) -> AsyncEngine:
    """The log for the pages' queries: no pool for a SQLite file (a connection per query
    beside the monitor's writer), a small one for PostgreSQL."""
    if url.startswith("sqlite"):
        return create_async_engine(url, poolclass=NullPool)
    return create_async_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)


class _SecurityHeaders:
    """The same headers on every answer (pure ASGI: server-sent events are not buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
