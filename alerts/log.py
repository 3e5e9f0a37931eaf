"""The durable log: every input (accepted or rejected, with its reason) and every alert
transition, written in batches by one writer task and flushed on exit.

``AlertLog`` is an async context manager. Producers call ``add_input`` / ``add_transition``
(cheap, no I/O) and ``await checkpoint()`` now and then, which waits only when the writer
has fallen far behind (back-pressure instead of unbounded memory). The writer flushes when
a batch is full, when ``flush_interval`` has passed, and on exit. SQLite is the embedded
default (WAL, synchronous=FULL: a committed batch survives a power cut); PostgreSQL is
used by URL. Database errors are translated into ``LogError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from calguard.alerts.audit import GENESIS, link_hash
from calguard.alerts.schema import (
    alert_transitions,
    audit_chain,
    inputs,
    library_versions,
    migrate,
    sessions,
)
from calguard.monitor.errors import LogError
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.library import Library
from calguard.monitor.records import InputRecord
from calguard.monitor.transitions import AlertTransition
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["AlertLog", "default_db_url", "normalise_db_url", "session_rows"]

log = logging.getLogger(__name__)
_PG_MIGRATION_LOCK = 0x6361_6C67  # "calg": one migrating process at a time

# Rows are kept as tuples in these column orders and inserted with statements compiled
# once per dialect: SQLAlchemy's per-row parameter handling cost more than SQLite itself.
INPUT_COLUMNS = (
    "session_id",
    "seq",
    "t_us",
    "source",
    "line_no",
    "status",
    "reason",
    "event_type",
    "pump",
    "channel",
    "bed",
    "line",
    "raw",
    "raw_bytes",
    "raw_sha256",
)
TRANSITION_COLUMNS = (
    "session_id",
    "seq",
    "t_us",
    "state",
    "alert_id",
    "rule",
    "priority",
    "bed",
    "line",
    "pump",
    "channel",
    "value",
    "limit_value",
    "message",
    "library_version",
    "latched",
    "alert_line",
)
AUDIT_COLUMNS = ("seq", "session_id", "t_us", "kind", "actor", "payload", "prev_hash", "hash")


def default_data_dir() -> Path:
    env = os.environ.get("CALGUARD_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "calguard"


def default_db_url() -> str:
    return f"sqlite+aiosqlite:///{default_data_dir() / 'calguard.sqlite3'}"


def normalise_db_url(url: str) -> str:
    """Accept plain ``sqlite:///…`` / ``postgresql://…`` and pick the async driver."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"


class AlertLog:
    """Batched, durable writer of inputs and alert transitions (one per process)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        batch_size: int = 5000,
        flush_interval: float = 0.25,
        max_pending: int = 50_000,
    ) -> None:
        self.url = normalise_db_url(url or default_db_url())
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.session_id: int | None = None
        self._engine: AsyncEngine | None = None
        self._inputs: list[tuple[Any, ...]] = []
        self._transitions: list[tuple[Any, ...]] = []
        self._audit_rows: list[tuple[Any, ...]] = []
        self._audit_seq, self._audit_hash = 0, GENESIS
        self._insert_inputs = self._insert_transitions = self._insert_audit = ""
        self._seq = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self.written = 0

    @property
    def display_url(self) -> str:
        return _redact(self.url)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AlertLog:
        if self._engine is not None:
            raise RuntimeError("AlertLog is not re-entrant")
        self._closing, self._failure = False, None
        self._wake, self._drained = asyncio.Event(), asyncio.Event()
        await self._open()
        self._writer = asyncio.create_task(self._run(), name="calguard-log-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        if self.url.startswith("sqlite") and ":memory:" not in self.url:
            path = self.url.split(":///", 1)[-1].split("?", 1)[0]
            if path:  # once, at startup: a blocking mkdir is fine here
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        try:
            engine = create_async_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise LogError(f"cannot use the log database {self.display_url}: {exc}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                applied = await conn.run_sync(migrate, _wall_us())
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            await engine.dispose()
            raise LogError(
                f"cannot open the log database {self.display_url}: {_short(exc)}"
            ) from exc
        if applied:
            log.info("log %s: schema migrated to version %s", self.display_url, applied[-1])
        self._insert_inputs = _positional_insert(engine, inputs, INPUT_COLUMNS)
        self._insert_transitions = _positional_insert(engine, alert_transitions, TRANSITION_COLUMNS)
        self._insert_audit = _positional_insert(engine, audit_chain, AUDIT_COLUMNS)
        try:
            async with engine.connect() as conn:
                head = (
                    await conn.execute(
                        select(audit_chain.c.seq, audit_chain.c.hash)
                        .order_by(audit_chain.c.seq.desc())
                        .limit(1)
                    )
                ).first()
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise LogError(
                f"cannot read the audit chain of {self.display_url}: {_short(exc)}"
            ) from exc
        self._audit_seq, self._audit_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS)
        self._engine = engine

    async def close(self) -> None:
        """Flush everything still pending and close; idempotent."""
        if self._engine is None or self._closing:
            return
        self._closing = True
        self._wake.set()
        try:
            if self._writer is not None:
                await self._writer
        finally:
            try:
                if self.session_id is not None and self._failure is None:
                    await self._end_session()
            finally:
                await self._engine.dispose()
                self._engine = None
        if self._failure is not None:
            raise LogError(
                f"the log {self.display_url} could not be written: {_short(self._failure)}"
            )

    # -- sessions -------------------------------------------------------------------------

    async def start_session(
        self, mode: str, source: str, library: Library, first_alert_id: int = 1
    ) -> int:
        assert self._engine is not None, "use AlertLog as an async context manager"
        now = _wall_us()
        try:
            async with self._engine.begin() as conn:
                known = await conn.execute(
                    library_versions.select().where(library_versions.c.version == library.version)
                )
                if known.first() is None:
                    await conn.execute(
                        insert(library_versions),
                        [
                            {
                                "version": library.version,
                                "name": library.name,
                                "source": library.source,
                                "content": library.text,
                                "first_seen_us": now,
                            }
                        ],
                    )
                result = await conn.execute(
                    insert(sessions).returning(sessions.c.id),
                    [
                        {
                            "mode": mode,
                            "source": source,
                            "library_version": library.version,
                            "started_us": now,
                            "first_alert_id": first_alert_id,
                        }
                    ],
                )
                self.session_id = int(result.scalar_one())
        except SQLAlchemyError as exc:
            raise LogError(f"cannot start a session in {self.display_url}: {_short(exc)}") from exc
        return self.session_id

    async def next_alert_id(self) -> int:
        """The number after the highest alert id in the log, so ids stay unique across runs."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        try:
            async with self._engine.connect() as conn:
                ids = alert_transitions.c.alert_id  # a-000123; longer is higher past a-999999
                result = await conn.execute(
                    select(ids).order_by(func.length(ids).desc(), ids.desc()).limit(1)
                )
                highest = result.scalar()
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc
        return int(highest[2:]) + 1 if highest and highest[2:].isdigit() else 1

    async def recovery_inputs(
        self, documentation_since_us: int, readings_since_us: int
    ) -> list[Any]:
        """Inputs of earlier live sessions to rebuild the engine's state from: documentation
        (and everything but readings) since the first time, readings since the second."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = select(sessions.c.id).where(sessions.c.mode == "live")
        recent = (inputs.c.t_us >= readings_since_us) | (
            (inputs.c.event_type != "reading") & (inputs.c.t_us >= documentation_since_us)
        )
        query = (
            select(inputs.c.raw, inputs.c.event_type, inputs.c.source)
            .where(inputs.c.session_id.in_(live), inputs.c.event_type != "wire", recent)
            .order_by(inputs.c.id)
        )
        try:
            async with self._engine.connect() as conn:
                return list((await conn.execute(query)).all())
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc

    async def open_alerts(self) -> list[dict[str, Any]]:
        """Alerts of live sessions whose condition has not ended (never cleared or reset),
        each as its latest line (an alarm-layer line may follow a latched alarm's clear)."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = select(sessions.c.id).where(sessions.c.mode == "live")
        closed = select(alert_transitions.c.alert_id).where(
            alert_transitions.c.state.in_(("cleared", "reset"))
        )
        last = (
            select(func.max(alert_transitions.c.id))
            .where(
                alert_transitions.c.session_id.in_(live),
                alert_transitions.c.alert_id.not_in(closed),
            )
            .group_by(alert_transitions.c.alert_id)
        )
        query = select(alert_transitions.c.alert_line, alert_transitions.c.state).where(
            alert_transitions.c.id.in_(last)
        )
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc
        return [orjson.loads(r.alert_line) for r in rows if r.state not in ("cleared", "reset")]

    async def alarm_lines(self, since_us: int) -> list[dict[str, Any]]:
        """The alert lines of live sessions since ``since_us``, in the order emitted: what
        the alarm manager needs to restore acknowledgements, pauses, latches after a restart."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = select(sessions.c.id).where(sessions.c.mode == "live")
        query = (
            select(alert_transitions.c.alert_line)
            .where(alert_transitions.c.session_id.in_(live), alert_transitions.c.t_us >= since_us)
            .order_by(alert_transitions.c.session_id, alert_transitions.c.seq)
        )
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc
        return [orjson.loads(r.alert_line) for r in rows]

    async def _end_session(self) -> None:
        assert self._engine is not None
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == self.session_id)
                    .values(ended_us=_wall_us())
                )
        except SQLAlchemyError as exc:
            raise LogError(
                f"cannot close the session in {self.display_url}: {_short(exc)}"
            ) from exc

    # -- producers ------------------------------------------------------------------------

    def add_input(self, record: InputRecord) -> None:
        self._seq += 1
        r = record
        self._inputs.append(
            (
                self.session_id,
                self._seq,
                r.t_us,
                r.source,
                r.line_no,
                r.status,
                r.reason,
                r.event_type,
                r.pump,
                r.channel,
                r.bed,
                r.line,
                r.raw,
                r.raw_bytes,
                r.raw_sha256,
            )
        )
        if r.event_type in ALARM_ACTIONS and r.t_us is not None:  # a person acted: audit it
            kind = "action" if r.status == "accepted" else "action-refused"
            actor = _actor(r.raw)
            self._audit(r.t_us, kind, actor, r.raw if r.reason is None else f"{r.raw}\n{r.reason}")
        if len(self._inputs) >= self.batch_size:
            self._wake.set()

    def add_undelivered(self, sink: str, t_us: int, reason: str, line: str) -> None:
        """An alarm line a sink gave up on: kept in the audit chain with the reason."""
        self._audit(t_us, "undelivered", None, f"{sink}\n{reason}\n{line}")
        self._wake.set()

    def _audit(self, t_us: int, kind: str, actor: str | None, payload: str) -> None:
        """Append to the hash chain (computed here, in order; written with the batch)."""
        self._audit_seq += 1
        prev = self._audit_hash
        self._audit_hash = link_hash(self._audit_seq, t_us, kind, actor, payload, prev)
        self._audit_rows.append(
            (self._audit_seq, self.session_id, t_us, kind, actor, payload, prev, self._audit_hash)
        )

    def add_transition(self, tr: AlertTransition, alert_line: str | None = None) -> None:
        self._seq += 1
        line = alert_line if alert_line is not None else tr.to_json()
        d = tr.description
        self._transitions.append(
            (
                self.session_id,
                self._seq,
                tr.t,
                tr.state,
                tr.alert,
                tr.rule,
                tr.priority,
                d.bed,
                d.line,
                d.pump,
                d.channel,
                d.value,
                d.limit,
                d.message,
                tr.library,
                tr.latched,
                line,
            )
        )
        self._audit(tr.t, "transition", tr.by, line)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._inputs) + len(self._transitions) + len(self._audit_rows)

    async def checkpoint(self) -> None:
        """Wait if the writer is far behind; raise ``LogError`` if it has failed."""
        if self._failure is not None:
            raise LogError(
                f"the log {self.display_url} could not be written: {_short(self._failure)}"
            )
        while self.pending >= self.max_pending and self._failure is None:
            self._drained.clear()
            self._wake.set()
            await self._drained.wait()

    async def flush(self) -> None:
        """Write everything pending now (used by tests and on shutdown)."""
        while self.pending and self._failure is None:
            self._drained.clear()
            self._wake.set()
            await self._drained.wait()
        await self.checkpoint()

    # -- writer ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()
                self._wake.clear()
                await self._write_pending()
                self._drained.set()
                if self._closing and not self.pending:
                    return
        except BaseException as exc:  # keep it for the producers; never die silently
            self._failure = exc
            self._drained.set()
            log.error("log writer stopped: %s", _short(exc))

    async def _write_pending(self) -> None:
        assert self._engine is not None
        while self.pending:
            batch_in, self._inputs = (
                self._inputs[: self.batch_size],
                self._inputs[self.batch_size :],
            )
            batch_tr, self._transitions = self._transitions, []
            batch_audit, self._audit_rows = self._audit_rows, []
            async with self._engine.begin() as conn:
                if batch_in:
                    await conn.exec_driver_sql(self._insert_inputs, batch_in)
                if batch_tr:
                    await conn.exec_driver_sql(self._insert_transitions, batch_tr)
                if batch_audit:
                    await conn.exec_driver_sql(self._insert_audit, batch_audit)
            self.written += len(batch_in) + len(batch_tr)


def _positional_insert(engine: AsyncEngine, table: Any, columns: tuple[str, ...]) -> str:
    compiled = insert(table).compile(dialect=engine.dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        raise LogError(f"cannot prepare inserts into {table.name} for {engine.dialect.name}")
    return str(compiled)


async def session_rows(
    url: str | None, session: int | None = None
) -> tuple[int, list[Any], list[str]]:
    """A session's inputs (in arrival order) and alert lines; the newest session if None."""
    engine = create_async_engine(normalise_db_url(url or default_db_url()))
    try:
        async with engine.connect() as conn:
            if session is None:
                session = (await conn.execute(select(func.max(sessions.c.id)))).scalar()
                if session is None:
                    raise LogError("the log has no session yet")
            rows = (
                await conn.execute(
                    select(
                        inputs.c.seq,
                        inputs.c.status,
                        inputs.c.event_type,
                        inputs.c.raw,
                        inputs.c.reason,
                    )
                    .where(inputs.c.session_id == session)
                    .order_by(inputs.c.seq)
                )
            ).all()
            alerts = (
                (
                    await conn.execute(
                        select(alert_transitions.c.alert_line)
                        .where(alert_transitions.c.session_id == session)
                        .order_by(alert_transitions.c.seq)
                    )
                )
                .scalars()
                .all()
            )
    except SQLAlchemyError as exc:
        raise LogError(f"cannot read {_redact(url or default_db_url())}: {_short(exc)}") from exc
    finally:
        await engine.dispose()
    return session, list(rows), list(alerts)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _actor(raw: str) -> str | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    by = obj.get("by") if isinstance(obj, dict) else None
    return by[:200] if isinstance(by, str) else None


def _wall_us() -> int:
    return time.time_ns() // 1000


def _short(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text_[:300]
