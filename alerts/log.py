"""The durable log: every input (accepted or rejected, with its reason) and every alert
transition, written in batches and flushed on exit - and never a reason to stop alarming.

``AlertLog`` is an async context manager. Producers call ``add_input`` / ``add_transition``
(cheap, no I/O) and ``await checkpoint()`` now and then, which waits a little when the
writer has fallen far behind (back-pressure instead of unbounded memory). The writer
(``calguard.alerts.log_writer``) flushes when a batch is full, when ``flush_interval`` has
passed, and on exit. SQLite is the embedded default (WAL, synchronous=FULL: a committed
batch survives a power cut); PostgreSQL is used by URL. Readings are kept compactly
(``calguard.alerts.blocks``; PostgreSQL partitions them by day) and read back as rows.

When the database is down, full or read-only, batches go to a bounded local spool on disk
(``calguard.alerts.spool``, under the data directory) and are drained into the database,
in order, when it returns; a non-empty spool is drained at the next start before anything
is read. ``status`` says where rows go (``ok``, ``spooling``, ``unrecorded``) and
``after_durable`` tells a driver when an input may be acknowledged upstream. Database
errors are translated into ``LogError`` here and nowhere else; after the log has opened,
a database error is a status, never an exception that stops the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from calguard.alerts.anchor import DEFAULT_INTERVAL_S, Anchor, Anchorer
from calguard.alerts.blocks import INPUT_COLUMNS, InputStore, LoggedInput
from calguard.alerts.chain import (
    TRANSITION,
    AuditKey,
    AuditKeyError,
    Entry,
    load_key,
    row_digest,
    transition_subject,
)
from calguard.alerts.inputs_read import read_inputs
from calguard.alerts.log_writer import UNRECORDED, Batch, LogStatus, LogWriter, Marks
from calguard.alerts.private import FILE_MODE, create_private_file, private_dir
from calguard.alerts.schema import (
    alert_transitions,
    audit_chain,
    input_blocks,
    inputs,
    library_versions,
    log_identity,
    log_writers,
    migrate_exclusively,
    sessions,
)
from calguard.alerts.spool import Spool, SpoolError
from calguard.monitor.errors import LogError
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.library import Library
from calguard.monitor.records import InputRecord
from calguard.monitor.transitions import AlertBook, AlertTransition
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "INPUT_COLUMNS",
    "AlertLog",
    "LogStatus",
    "default_anchor_file",
    "default_audit_key",
    "default_db_url",
    "default_spool_dir",
    "input_row",
    "normalise_db_url",
    "redact_url",
    "session_rows",
    "short_error",
    "training_db_url",
]

log = logging.getLogger(__name__)
# The spool's default cap. A reading costs about 400 bytes in the spool (its raw JSON and
# the log's columns). 2 GiB is then ~5 million readings: a 40-cot unit's ~120 pump channels
# at 1 Hz for ~12 hours (a night until the database is fixed), or a hospital's 1,000
# channels for ~1.5 hours (a failover or a maintenance window). Past it the monitor says
# loudly that nothing is recorded, and keeps alarming. CALGUARD_SPOOL_MAX_MB changes it.
DEFAULT_SPOOL_MAX_BYTES = 2 << 30
_PG_WRITE_TIMEOUT_S = 10.0  # a PostgreSQL batch slower than this goes to the spool instead
_PG_CONNECT_TIMEOUT_S = 5.0
_BACKPRESSURE_MAX_S = 5.0  # a producer never waits for the writer longer than this
_HELD_INPUTS = 200_000  # inputs held in memory when neither database nor spool takes them
_DRAIN_AT_EXIT_S = 10.0
# Inputs someone waits to acknowledge are written once this many have gathered, without
# waiting for a full batch: an MQTT broker sends the monitor at most its receive maximum
# (5,000) ahead of the acknowledgements, so a batch must go well before that is reached.
_ACK_BATCH = 1000

# Rows are kept as tuples in these column orders and inserted with statements compiled
# once per dialect: SQLAlchemy's per-row parameter handling cost more than SQLite itself.
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
AUDIT_COLUMNS = (
    "seq",
    "session_id",
    "t_us",
    "kind",
    "actor",
    "payload",
    "prev_hash",
    "hash",
    "key_id",
    "subject",
    "digest",
)


def default_data_dir() -> Path:
    env = os.environ.get("CALGUARD_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "calguard"


def training_db_url() -> str:
    """Where the demo and the training simulators log: beside the ward's log, never in it
    (a ward's monitor must never warm-start from a training session)."""
    return f"sqlite+aiosqlite:///{default_data_dir() / 'training' / 'calguard-training.sqlite3'}"


def default_db_url() -> str:
    return f"sqlite+aiosqlite:///{default_data_dir() / 'calguard.sqlite3'}"


def default_spool_dir() -> Path:
    """Where batches wait while the database is down: ``CALGUARD_SPOOL_DIR``, else the
    ``spool`` folder of the data directory. A disk other than the database's is better."""
    env = os.environ.get("CALGUARD_SPOOL_DIR")
    return Path(env) if env else default_data_dir() / "spool"


def default_audit_key() -> Path:
    """The key of the audit chain: ``CALGUARD_AUDIT_KEY``, else ``keys/audit.key`` in the
    data directory - never in the database, whose rows it guards."""
    env = os.environ.get("CALGUARD_AUDIT_KEY")
    return Path(env) if env else default_data_dir() / "keys" / "audit.key"


def default_anchor_file() -> Path:
    """Where the audit chain's heads are anchored: ``audit/anchors`` in the data directory."""
    return default_data_dir() / "audit" / "anchors"


def _spool_max_bytes() -> int:
    env = os.environ.get("CALGUARD_SPOOL_MAX_MB")
    if not env:
        return DEFAULT_SPOOL_MAX_BYTES
    try:
        mib = int(env)
    except ValueError:
        raise LogError(
            f"CALGUARD_SPOOL_MAX_MB={env!r}: a whole number of MiB is expected"
        ) from None
    if mib < 1:
        raise LogError(f"CALGUARD_SPOOL_MAX_MB={env!r}: at least 1 MiB is expected")
    return mib << 20


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


# user:password@ after a scheme (a password may hold an unescaped @ or /), and password=
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):[^\s]*@(?=[^@\s]*$|[^@\s]*\s)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)[^&\s]*")


def _redact(url: str) -> str:
    """The URL - or a message holding URLs - without passwords: one redaction for every
    URL CalGuard shows."""
    text_ = _URL_PASSWORD.sub(r"\g<head>:***@", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", text_)


class AlertLog:
    """Batched, durable writer of inputs and alert transitions (one per process)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        batch_size: int = 5000,
        flush_interval: float = 0.25,
        max_pending: int = 50_000,
        spool_dir: Path | str | None = None,
        spool_max_bytes: int | None = None,
        max_held_inputs: int = _HELD_INPUTS,
        audit_key: Path | str | None = None,
        anchor_file: Path | str | None = None,
        anchor_interval: float = DEFAULT_INTERVAL_S,
        on_anchor: Callable[[Anchor], None] | None = None,
    ) -> None:
        self.url = normalise_db_url(url or default_db_url())
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.spool_root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self.spool_max_bytes = spool_max_bytes
        self.max_held_inputs = max_held_inputs
        self.audit_key = Path(audit_key) if audit_key is not None else default_audit_key()
        self.anchor_file = Path(anchor_file) if anchor_file is not None else default_anchor_file()
        self.anchor_interval, self.on_anchor = anchor_interval, on_anchor
        self.session_id: int | None = None
        self._engine: AsyncEngine | None = None
        self._writer: LogWriter | None = None
        self._inputs: list[tuple[Any, ...]] = []
        self._transitions: list[tuple[Any, ...]] = []
        self._audit_rows: list[Entry] = []
        self._insert_transitions = self._insert_audit = ""
        self._seq = 0
        self._added: list[int] = [0, 0, 0]  # rows added: inputs, transitions, audit links
        self._taken: Marks = (0, 0, 0)
        self._batches = 0
        self._end: tuple[int, int] | None = None
        self._closing = False
        self.written = 0

    @property
    def display_url(self) -> str:
        return _redact(self.url)

    @classmethod
    @contextlib.asynccontextmanager
    async def reading(cls, url: str | None = None) -> AsyncIterator[AlertLog]:
        """The log for its queries only (an export): no writer, no spool, no schema change."""
        self = cls(url)
        self._engine = create_async_engine(self.url, poolclass=NullPool)
        try:
            yield self
        finally:
            await self._engine.dispose()
            self._engine = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AlertLog:
        if self._engine is not None:
            raise RuntimeError("AlertLog is not re-entrant")
        self._closing, self._end = False, None
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        file_sqlite = self.url.startswith("sqlite") and ":memory:" not in self.url
        try:  # once, at startup: blocking file system calls are fine here
            if file_sqlite:
                _private_sqlite(self.url.split(":///", 1)[-1].split("?", 1)[0])
            key = load_key(self.audit_key, create=True)
        except (OSError, AuditKeyError) as exc:
            raise LogError(f"cannot use the log {self.display_url}: {exc}") from exc
        try:
            engine = create_async_engine(self.url, **_engine_options(self.url, file_sqlite))
        except (SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
            raise LogError(f"cannot use the log database {self.display_url}: {exc}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        writer_id = uuid.uuid4().hex
        try:
            async with engine.begin() as conn:
                applied = await migrate_exclusively(conn, _wall_us())
                identity = (await conn.execute(select(log_identity.c.id))).scalar_one()
                await conn.execute(
                    insert(log_writers),
                    [{"writer": writer_id, "started_us": _wall_us(), "last_batch": 0}],
                )
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            await engine.dispose()
            raise LogError(
                f"cannot open the log database {self.display_url}: {_short(exc)}"
            ) from exc
        if applied:
            log.info("log %s: schema migrated to version %s", self.display_url, applied[-1])
        self._insert_transitions = _positional_insert(engine, alert_transitions, TRANSITION_COLUMNS)
        self._insert_audit = _positional_insert(engine, audit_chain, AUDIT_COLUMNS)
        writer = await self._writer_for(engine, writer_id, identity, key)
        try:
            drained = await writer.drain_all()  # before anything reads the log
        except (SQLAlchemyError, OSError, SpoolError, TimeoutError) as exc:
            writer.spool.close()
            await engine.dispose()
            raise LogError(
                f"cannot write the spooled rows into {self.display_url}: {_short(exc)}"
            ) from exc
        if drained:
            log.warning("log %s: %d spooled batch(es) written", self.display_url, drained)
        self._engine, self._writer = engine, writer
        writer.start()

    async def _writer_for(
        self, engine: AsyncEngine, writer_id: str, identity: str, key: AuditKey
    ) -> LogWriter:
        """The writer, with the spool of this database (found by its identity), the audit
        key and the anchors of its chain."""
        max_bytes = self.spool_max_bytes or _spool_max_bytes()
        spool = Spool(self.spool_root / identity, max_bytes)
        try:
            await asyncio.to_thread(spool.open)
            others = await asyncio.to_thread(_other_spools, self.spool_root, identity)
        except (OSError, SpoolError) as exc:
            await engine.dispose()
            raise LogError(f"cannot read the spool {spool.directory}: {exc}") from exc
        for other in others:
            log.warning(
                "%s holds spooled rows of another log database: they are written when "
                "CalGuard runs with that database again",
                other,
            )
        return LogWriter(
            engine,
            InputStore(engine),
            (self._insert_transitions, self._insert_audit),
            writer_id,
            spool,
            self._take,
            flush_interval=self.flush_interval,
            write_timeout=_PG_WRITE_TIMEOUT_S if engine.dialect.name == "postgresql" else None,
            max_held_inputs=self.max_held_inputs,
            on_dropped=self._dropped,
            key=key,
            anchorer=Anchorer(
                key,
                identity,
                self.anchor_file,
                interval=self.anchor_interval,
                publish=self.on_anchor,
            ),
        )

    async def close(self) -> None:
        """Write (or spool) everything still pending and close; idempotent."""
        if self._engine is None or self._closing:
            return
        self._closing = True
        writer = self._writer
        assert writer is not None
        if self.session_id is not None:
            self._end = (self.session_id, _wall_us())
        try:
            await writer.stop(drain_for=_DRAIN_AT_EXIT_S)
        finally:
            await self._engine.dispose()
            self._engine = None
        lost = self.pending + writer.dropped
        if writer.failure is not None or lost:
            why = _short(writer.failure) if writer.failure else writer.status.reason
            raise LogError(
                f"the log {self.display_url} could not be written: {lost} row(s) were "
                f"neither written nor spooled ({why})"
            )
        if writer.spool.pending:
            log.warning(
                "%d batch(es) wait in the spool %s: they are written into %s at the next start",
                writer.spool.pending,
                writer.spool.directory,
                self.display_url,
            )

    # -- durability -----------------------------------------------------------------------

    @property
    def status(self) -> LogStatus:
        """Where rows go now: ``ok`` (the database), ``spooling`` (the local spool, or
        draining it), ``unrecorded`` (nowhere durable: held in memory)."""
        return self._writer.status if self._writer is not None else LogStatus()

    async def status_changed(self, since: LogStatus) -> LogStatus:
        """Wait until the state differs from ``since``'s; returns the new status."""
        assert self._writer is not None, "use AlertLog as an async context manager"
        return await self._writer.changed(since)

    def after_durable(self, callback: Callable[[], None], *, soon: bool = False) -> None:
        """Call ``callback`` (no arguments, quick, no I/O of its own: e.g. send an MQTT
        PUBACK or an MLLP AA) once everything added so far is in the database or fsynced in
        the spool - or held with nowhere durable to go (status ``unrecorded``): inputs are
        then still acknowledged, so that they keep coming and the monitor keeps alarming.

        Acknowledgements are batched with the log's writes (every ``flush_interval``, or
        sooner when many wait). ``soon``: write now rather than at the next interval, for a
        sender that waits for each answer before it sends again (MLLP)."""
        marks = (self._added[0], self._added[1], self._added[2])
        if self._writer is None:
            callback()
            return
        self._writer.after_durable(marks, callback)
        if soon or marks[0] - self._taken[0] >= min(self.batch_size, _ACK_BATCH):
            self._writer.wake()

    def fence_with(self, check: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        """Run ``check`` first in every commit's transaction: it raises once this monitor
        may no longer write (``calguard.lease``: another monitor took the unit)."""
        assert self._writer is not None, "use AlertLog as an async context manager"
        self._writer.fence = check

    @property
    def fence(self) -> Callable[[AsyncConnection], Awaitable[None]] | None:
        """The check of ``fence_with``: a write beside the writer's (a snapshot) runs it too."""
        return self._writer.fence if self._writer is not None else None

    # -- sessions -------------------------------------------------------------------------

    async def start_session(
        self,
        mode: str,
        source: str,
        library: Library,
        first_alert_id: int = 1,
        *,
        site: str | None = None,
    ) -> int:
        """``mode``: live (a ward), training (a site config on a training clock), demo or
        replay; ``site``: the site config's name. Only a site's own live sessions are ever
        warm-started from."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        try:
            return await self._start_session(mode, source, library, first_alert_id, site)
        except IntegrityError:
            # another monitor starting on the same log recorded the same library version
            # between our look and our insert: it is there now, so the retry only reads it
            return await self._start_session(mode, source, library, first_alert_id, site)

    async def _start_session(
        self, mode: str, source: str, library: Library, first_alert_id: int, site: str | None
    ) -> int:
        assert self._engine is not None
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
                            "site": site,
                            "source": source,
                            "library_version": library.version,
                            "started_us": now,
                            "first_alert_id": first_alert_id,
                        }
                    ],
                )
                self.session_id = int(result.scalar_one())
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise LogError(f"cannot start a session in {self.display_url}: {_short(exc)}") from exc
        return self.session_id

    async def next_alert_id(self) -> int:
        """The number after the highest alert id in the log, so ids stay unique across runs:
        among the ids of this task's prefix (``AlertBook.id_prefix``: ``a-``, or ``a-<unit>-``
        for a unit of a hospital, whose monitors share the log and each count their own)."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        prefix = AlertBook.id_prefix()  # a unit's name: [a-z0-9-], nothing LIKE reads specially
        ids = alert_transitions.c.alert_id  # a-000123; longer is higher past a-999999
        query = (
            select(ids)
            # a-nicu-000001, not a-nicu-a-000001 (unit nicu-a) nor a-000001 for a-nicu-
            .where(ids.like(f"{prefix}%"), ids.not_like(f"{prefix}%-%"))
            .order_by(func.length(ids).desc(), ids.desc())
            .limit(1)
        )
        try:
            async with self._engine.connect() as conn:
                highest = (await conn.execute(query)).scalar()
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc
        number = highest[len(prefix) :] if highest else ""
        return int(number) + 1 if number.isdigit() else 1

    def _own_live(self, site: str | None, before_session: int | None = None) -> Any:
        """The live sessions of this site: never training, demo or replay, never another
        site's (a database shared by several units); those before ``before_session`` only
        when given (what that session's warm start read, for its export)."""
        query = select(sessions.c.id).where(
            sessions.c.mode == "live",
            sessions.c.site.is_(None) if site is None else sessions.c.site == site,
        )
        return query if before_session is None else query.where(sessions.c.id < before_session)

    async def recovery_inputs(
        self,
        documentation_since_us: int,
        readings_since_us: int,
        *,
        site: str | None = None,
        before_session: int | None = None,
    ) -> list[LoggedInput]:
        """Inputs of earlier live sessions to rebuild the engine's state from: documentation
        (and everything but readings) since the first time, readings since the second; in
        order of arrival (``session_id``, ``seq``) across the log's two forms of inputs."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = self._own_live(site, before_session)
        recent = (inputs.c.t_us >= readings_since_us) | (
            (inputs.c.event_type != "reading") & (inputs.c.t_us >= documentation_since_us)
        )
        single = (
            inputs.c.session_id.in_(live),
            inputs.c.event_type.not_in(("wire", "warm_start")),
            recent,
        )
        blocks = (
            input_blocks.c.session_id.in_(live),
            input_blocks.c.t_max >= readings_since_us,
        )

        def keep(row: LoggedInput) -> bool:
            return row.t_us is not None and row.t_us >= readings_since_us

        try:
            async with self._engine.connect() as conn:
                return await read_inputs(conn, single, blocks, keep)
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read {self.display_url}: {_short(exc)}") from exc

    @property
    def input_seq(self) -> int:
        """The seq of the latest input (or transition) this session added: a snapshot
        taken now includes the inputs up to it."""
        return self._seq

    async def open_alerts(
        self, *, site: str | None = None, before_session: int | None = None
    ) -> list[dict[str, Any]]:
        """Alerts of live sessions whose condition has not ended (never cleared or reset),
        each as its latest line (an alarm-layer line may follow a latched alarm's clear)."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = self._own_live(site, before_session)
        closed = select(alert_transitions.c.alert_id).where(
            alert_transitions.c.state.in_(("cleared", "reset")),
            alert_transitions.c.session_id.in_(live),
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

    async def alarm_lines(
        self, since_us: int, *, site: str | None = None, before_session: int | None = None
    ) -> list[dict[str, Any]]:
        """The alert lines of live sessions since ``since_us``, in the order emitted: what
        the alarm manager needs to restore acknowledgements, pauses, latches after a restart."""
        assert self._engine is not None, "use AlertLog as an async context manager"
        live = self._own_live(site, before_session)
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

    # -- producers ------------------------------------------------------------------------

    def add_input(self, record: InputRecord) -> None:
        self._seq += 1
        self._added[0] += 1
        r = record
        self._inputs.append(input_row(self.session_id, self._seq, r))
        if r.event_type in ALARM_ACTIONS and r.t_us is not None:  # a person acted: audit it
            kind = "action" if r.status == "accepted" else "action-refused"
            actor = _actor(r.raw)
            if kind == "action-refused" and actor is not None:
                actor = f"unverified:{actor}"[:200]  # what the refused sender claimed
            self._audit(r.t_us, kind, actor, r.raw if r.reason is None else f"{r.raw}\n{r.reason}")
        if len(self._inputs) >= self.batch_size and self._writer is not None:
            self._writer.wake()

    def add_undelivered(self, sink: str, t_us: int, reason: str, line: str) -> None:
        """An alarm line a sink gave up on: kept in the audit chain with the reason."""
        self._audit(t_us, "undelivered", None, f"{sink}\n{reason}\n{line}")
        self._wake()

    def _audit(
        self,
        t_us: int,
        kind: str,
        actor: str | None,
        payload: str,
        subject: str | None = None,
        digest: str | None = None,
    ) -> None:
        """An entry for the audit chain, in order; the writer numbers and keys it in the
        transaction that commits its batch (``calguard.alerts.log_writer``)."""
        self._added[2] += 1
        self._audit_rows.append(Entry(self.session_id, t_us, kind, actor, payload, subject, digest))

    def add_transition(self, tr: AlertTransition, alert_line: str | None = None) -> None:
        self._seq += 1
        self._added[1] += 1
        line = alert_line if alert_line is not None else tr.to_json()
        d = tr.description
        row = (
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
        self._transitions.append(row)
        # the entry holds the line, and the digest of the row as stored: an edit of the
        # table (a priority lowered) is found by comparing the two
        subject = transition_subject(self.session_id, self._seq)
        self._audit(tr.t, TRANSITION, tr.by, line, subject, row_digest(row))
        self._wake()

    def _wake(self) -> None:
        if self._writer is not None:
            self._writer.wake()

    def _dropped(self, count: int, reason: str) -> None:
        """Inputs given up while nothing could be written: the gap goes into the chain."""
        self._audit(
            _wall_us(),
            "unrecorded",
            None,
            f"{count} input(s) could not be written to the database or the spool and were "
            f"dropped from memory ({reason})",
        )

    @property
    def pending(self) -> int:
        """Rows added and not yet written or spooled."""
        queued = self._writer.queued_rows if self._writer is not None else 0
        return len(self._inputs) + len(self._transitions) + len(self._audit_rows) + queued

    async def checkpoint(self) -> None:
        """Wait (a little) if the writer is far behind. Never for long, and not at all when
        nothing can be written: the monitor's alarming comes first."""
        writer = self._writer
        if writer is None:
            return
        if writer.failure is not None:
            raise LogError(f"the log {self.display_url} stopped: {_short(writer.failure)}")
        if self.pending < self.max_pending:
            return
        writer.wake()
        try:
            async with asyncio.timeout(_BACKPRESSURE_MAX_S):
                while (
                    self.pending >= self.max_pending
                    and writer.status.state != UNRECORDED
                    and writer.failure is None
                ):
                    await writer.progress()
        except TimeoutError:
            log.warning("the log writer is %d rows behind; going on", self.pending)

    async def flush(self) -> None:
        """Wait until everything added so far is written or spooled (used by tests, before
        a stop, and by replays)."""
        writer = self._writer
        if writer is None:
            return
        done = asyncio.Event()
        self.after_durable(done.set)
        writer.wake()
        while not done.is_set() and writer.failure is None:
            await writer.progress()
        if writer.failure is not None:
            raise LogError(f"the log {self.display_url} stopped: {_short(writer.failure)}")

    def _take(self) -> list[Batch]:
        """Pending rows, as batches numbered in order (the writer calls this)."""
        batches: list[Batch] = []
        while self._inputs or self._transitions or self._audit_rows:
            batch_in, self._inputs = (
                self._inputs[: self.batch_size],
                self._inputs[self.batch_size :],
            )
            batch_tr, self._transitions = self._transitions, []
            batch_audit, self._audit_rows = self._audit_rows, []
            self._taken = (
                self._taken[0] + len(batch_in),
                self._taken[1] + len(batch_tr),
                self._taken[2] + len(batch_audit),
            )
            self._batches += 1
            batches.append(Batch(self._batches, batch_in, batch_tr, batch_audit, self._taken))
            self.written += len(batch_in) + len(batch_tr)
        if self._closing and self._end is not None:
            if batches and not self._inputs:
                batches[-1].end = self._end
            else:
                self._batches += 1
                batches.append(Batch(self._batches, [], [], [], self._taken, self._end))
            self._end = None
        return batches


def input_row(session: int | None, seq: int, r: InputRecord) -> tuple[Any, ...]:
    """An input as the log writer takes it: the ``inputs`` columns after the id, in order."""
    return (
        session,
        seq,
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


def _positional_insert(engine: AsyncEngine, table: Any, columns: tuple[str, ...]) -> str:
    compiled = insert(table).compile(dialect=engine.dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        raise LogError(f"cannot prepare inserts into {table.name} for {engine.dialect.name}")
    return str(compiled)


async def session_rows(
    url: str | None, session: int | None = None
) -> tuple[int, list[LoggedInput], list[str]]:
    """A session's inputs (in arrival order) and alert lines; the newest session if None."""
    engine = create_async_engine(normalise_db_url(url or default_db_url()))
    try:
        async with engine.connect() as conn:
            if session is None:
                session = (await conn.execute(select(func.max(sessions.c.id)))).scalar()
                if session is None:
                    raise LogError("the log has no session yet")
            rows = await read_inputs(
                conn, (inputs.c.session_id == session,), (input_blocks.c.session_id == session,)
            )
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
    except (SQLAlchemyError, OSError) as exc:
        raise LogError(f"cannot read {_redact(url or default_db_url())}: {_short(exc)}") from exc
    finally:
        await engine.dispose()
    return session, rows, list(alerts)


def _private_sqlite(path: str) -> None:
    """The SQLite file (and its folder) made before SQLite makes them with the umask's
    modes: patients' data, 0600 (SQLite gives its -wal and -shm files the same mode)."""
    if not path:
        return
    file = Path(path).expanduser()
    private_dir(file.parent)
    if not create_private_file(file) and file.stat().st_mode & 0o077:
        log.warning(
            "the log %s can be read by others (mode %o): chmod %o %s",
            file,
            file.stat().st_mode & 0o777,
            FILE_MODE,
            file,
        )


def _engine_options(url: str, file_sqlite: bool) -> dict[str, Any]:
    if file_sqlite:
        # A connection per batch: the writer finds the file as it is now (permissions, a
        # replaced file, a remounted disk) instead of writing on through an old descriptor,
        # and notices a log it can no longer write at the next batch, not the next start.
        return {"poolclass": NullPool}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"timeout": _PG_CONNECT_TIMEOUT_S}}
    return {}


def _other_spools(root: Path, identity: str) -> list[Path]:
    if not root.is_dir():
        return []
    return [
        d
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != identity and any(d.glob("*.spool"))
    ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception as exc:  # the driver's adapted OperationalError
        # another process migrates this new log (its write lock, which a change of journal
        # mode does not wait for): the file stays as it is and the next connection, one
        # per batch, makes it WAL; nothing is lost but this connection's WAL
        if "locked" not in str(exc):
            raise
    cursor.execute("PRAGMA synchronous=FULL")
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
    return _redact(text_)[:300]


#: one redaction for every database URL that is shown (no password ever printed)
redact_url = _redact
#: a database error in one line, for people
short_error = _short
