"""The drug library's lifecycle in the log database: every step a row and an audit entry.

A pharmacist drafts a library (its text is kept by its content hash in
``library_versions``), approves it, publishes it to units, rolls a unit back; each step is
one row of ``library_steps`` (schema version 7) and one entry of the keyed audit chain
(``calguard.alerts.chain``), written in one transaction: there is no step without its
entry, and no entry without its step. The entry names the account that took the step (from
its verified token), holds the content hash and what the step decided (the warnings
acknowledged, the unit and its profile), and its digest is the SHA-256 of the library's
whole text, so that ``calguard audit verify`` stands behind exactly what was approved. The
chain's head is then anchored as the log writer anchors it (``calguard.alerts.anchor``).

What a unit runs is its newest publication or rollback: a monitor polls for it
(``calguard.library_watch``). This module only records and reads; who may take a step and
what it needs (a pharmacist, four eyes, every warning acknowledged) is decided above it
(``calguard.pharmacy``). Entries of the lifecycle belong to no monitor session: session 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from calguard.alerts.anchor import Anchor, append_anchor
from calguard.alerts.chain import AuditKey, AuditKeyError, Entry, Head, Subject, link, load_key
from calguard.alerts.log import (
    AUDIT_COLUMNS,
    default_anchor_file,
    default_audit_key,
    default_db_url,
    normalise_db_url,
    redact_url,
    short_error,
)
from calguard.alerts.log_writer import (  # one commit at a time extends the chain, as there
    _PG_AUDIT_LOCK,
    _keyed_start,
)
from calguard.alerts.private import create_private_file, private_dir
from calguard.alerts.schema import (
    audit_chain,
    inputs,
    library_steps,
    library_versions,
    log_identity,
    migrate_exclusively,
    sessions,
)
from calguard.monitor.errors import CalGuardError, LogError
from calguard.monitor.library import PROFILE_MARK, Library
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "NO_SESSION",
    "STEPS",
    "SWITCH",
    "LibraryStore",
    "LibraryStoreError",
    "Running",
    "Step",
]

log = logging.getLogger(__name__)
STEPS = ("draft", "approve", "publish", "rollback")
#: the event type of a running monitor's switch to another library, as it logs it
SWITCH = "library"
NO_SESSION = 0
_CONNECT_TIMEOUT_S = 5.0
_SHORTEST_REF = len("sha256:") + 6  # a version may be named by a prefix this long or longer


class LibraryStoreError(CalGuardError):
    """A version that is not in the log, or a prefix that names several."""


@dataclass(frozen=True)
class Step:
    id: int
    t_us: int
    step: str
    version: str
    unit: str | None
    profile: str | None
    actor: str
    role: str
    detail: dict[str, Any] = field(default_factory=dict)
    audit_seq: int | None = None


@dataclass(frozen=True)
class Running:
    """What a unit's newest monitor session runs, as its log says."""

    unit: str
    session: int
    mode: str
    version: str  # with the profile, as its alert lines carry it
    started_us: int
    ended_us: int | None  # None: running (or stopped without closing its session)


class LibraryStore:
    """The lifecycle tables of one log database (an async context manager). ``migrate=False``
    for a reader that must not change the schema (a running monitor: its log migrated it)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        migrate: bool = True,
        audit_key: Path | None = None,
        anchor_file: Path | None = None,
    ) -> None:
        self.url = normalise_db_url(url or default_db_url())
        self.audit_key = audit_key or default_audit_key()
        self.anchor_file = anchor_file or default_anchor_file()
        self._migrate = migrate
        self._engine: AsyncEngine | None = None

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    async def __aenter__(self) -> LibraryStore:
        if self._engine is not None:
            raise RuntimeError("LibraryStore is not re-entrant")
        self._engine = await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _open(self) -> AsyncEngine:
        options: dict[str, Any] = {"connect_args": {"timeout": _CONNECT_TIMEOUT_S}}
        if self.url.startswith("sqlite"):
            options["poolclass"] = NullPool
            path = self.url.split(":///", 1)[-1].split("?", 1)[0]
            if path and ":memory:" not in self.url and self._migrate:
                await asyncio.to_thread(_private_file, path)  # made as the log makes it
        try:
            engine = create_async_engine(self.url, **options)
        except (SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
            raise LogError(f"cannot use the database {self.display_url}: {exc}") from exc
        if not self._migrate:
            return engine
        try:
            async with engine.begin() as conn:
                await migrate_exclusively(conn, _wall_us())
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            await engine.dispose()
            raise LogError(f"cannot open {self.display_url}: {short_error(exc)}") from exc
        return engine

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("use LibraryStore as `async with LibraryStore(url) as store:`")
        return self._engine

    async def _read(self, query: Any) -> list[Any]:
        try:
            async with self.engine.connect() as conn:
                return list((await conn.execute(query)).all())
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(f"cannot read {self.display_url}: {short_error(exc)}") from exc

    # -- reading ------------------------------------------------------------------------------

    async def resolve(self, ref: str) -> str:
        """The content hash a reference names: the whole hash, or a prefix of it at least
        ``sha256:`` and 6 digits long that no other version of the log shares."""
        ref = ref.strip().partition(PROFILE_MARK)[0]
        if len(ref) < _SHORTEST_REF or not ref.startswith("sha256:"):
            raise LibraryStoreError(
                f"{ref!r} is not a library version: sha256: and at least 6 of its digits"
            )
        column = library_versions.c.version
        rows = await self._read(
            select(column).where(column.startswith(ref, autoescape=True)).order_by(column)
        )
        found = [r.version for r in rows if PROFILE_MARK not in r.version]
        if not found:
            raise LibraryStoreError(f"no library {ref} in {self.display_url}")
        if len(found) > 1:
            raise LibraryStoreError(f"{ref} names {len(found)} libraries: give more digits")
        return str(found[0])

    async def content(self, version: str) -> str:
        """The text of the library of this content hash."""
        column = library_versions.c
        rows = await self._read(select(column.content).where(column.version == version))
        if not rows:
            raise LibraryStoreError(f"no library {version} in {self.display_url}")
        return str(rows[0].content)

    async def steps(self, *, unit: str | None = None, version: str | None = None) -> list[Step]:
        """The lifecycle's steps in order, of one unit or one version when asked."""
        c = library_steps.c
        query = select(library_steps).order_by(c.id)
        if unit is not None:
            query = query.where(c.unit == unit)
        if version is not None:
            query = query.where(c.version == version)
        return [_step(r) for r in await self._read(query)]

    async def approvals(self, version: str) -> list[Step]:
        return [s for s in await self.steps(version=version) if s.step == "approve"]

    async def published(self, unit: str) -> Step | None:
        """The unit's newest publication or rollback: the library it is to run."""
        c = library_steps.c
        query = (
            select(library_steps)
            .where(c.unit == unit, c.step.in_(("publish", "rollback")))
            .order_by(c.id.desc())
            .limit(1)
        )
        rows = await self._read(query)
        return _step(rows[0]) if rows else None

    async def units(self) -> list[str]:
        """Every unit the log knows: published to, or monitored live."""
        published = await self._read(select(library_steps.c.unit).distinct())
        live = await self._read(select(sessions.c.site).where(sessions.c.mode == "live").distinct())
        return sorted({r[0] for r in (*published, *live) if r[0] is not None})

    async def running(self, unit: str) -> Running | None:
        """What the unit's newest monitor session (live or training) runs: the library it
        started on, or the last it switched to."""
        s = sessions.c
        rows = await self._read(
            select(s.id, s.mode, s.library_version, s.started_us, s.ended_us)
            .where(s.site == unit, s.mode.in_(("live", "training")))
            .order_by(s.id.desc())
            .limit(1)
        )
        if not rows:
            return None
        session = rows[0]
        i = inputs.c
        switched = await self._read(
            select(i.raw)
            .where(i.session_id == session.id, i.event_type == SWITCH, i.status == "accepted")
            .order_by(i.seq.desc())
            .limit(1)
        )
        version = str(session.library_version)
        if switched:
            logged = orjson.loads(switched[0].raw)
            version = str(logged.get("version", version))
        started, ended = session.started_us, session.ended_us
        return Running(unit, int(session.id), str(session.mode), version, started, ended)

    # -- recording ----------------------------------------------------------------------------

    async def record(
        self,
        step: str,
        version: str,
        *,
        actor: str,
        role: str,
        unit: str | None = None,
        profile: str | None = None,
        detail: dict[str, Any] | None = None,
        library: Library | None = None,
    ) -> Step:
        """One step and its audit entry, in one transaction; ``library``: a draft's, whose
        text is kept by its content hash. ``LogError`` if the database cannot take it."""
        if step not in STEPS:
            raise ValueError(f"a step is one of {', '.join(STEPS)}")
        key = audit_key(self.audit_key)
        now, detail = _wall_us(), detail or {}
        row = {
            "t_us": now,
            "step": step,
            "version": version,
            "unit": unit,
            "profile": profile,
            "actor": actor,
            "role": role,
            "detail": orjson.dumps(detail).decode(),
        }
        try:
            async with self.engine.begin() as conn:
                if library is not None:
                    await _keep_text(conn, library, now)
                # first a write: on SQLite it takes the write lock, so the head read after it
                # stays the head until this transaction commits
                found = await conn.execute(
                    insert(library_steps).returning(library_steps.c.id), [row]
                )
                step_id = int(found.scalar_one())
                entry = await _entry(conn, step_id, row, detail)
                head = await append_entry(conn, entry, key)
                await conn.execute(
                    update(library_steps)
                    .where(library_steps.c.id == step_id)
                    .values(audit_seq=head.seq)
                )
                identity = (await conn.execute(select(log_identity.c.id))).scalar_one()
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"cannot record the {step} in {self.display_url}: {short_error(exc)}"
            ) from exc
        anchor_head(self.anchor_file, key, str(identity), head)
        return Step(step_id, now, step, version, unit, profile, actor, role, detail, head.seq)


async def _keep_text(conn: AsyncConnection, library: Library, now: int) -> None:
    version = library.content_version
    c = library_versions.c
    if (await conn.execute(select(c.version).where(c.version == version))).first() is None:
        row = {
            "version": version,
            "name": library.name,
            "source": library.source,
            "content": library.text,
            "first_seen_us": now,
        }
        await conn.execute(insert(library_versions), [row])


async def _entry(
    conn: AsyncConnection, step_id: int, row: dict[str, Any], detail: dict[str, Any]
) -> Entry:
    """The step's audit entry: its decision, the content hash, and the SHA-256 of the text."""
    c = library_versions.c
    content = (await conn.execute(select(c.content).where(c.version == row["version"]))).scalar()
    if content is None:
        raise LibraryStoreError(f"no library {row['version']}: draft it first")
    sha256 = hashlib.sha256(str(content).encode("utf-8")).hexdigest()
    said = {"step": row["step"], "version": row["version"], "sha256": sha256}
    said |= {k: row[k] for k in ("unit", "profile") if row[k] is not None} | detail
    subject = str(Subject("library_steps", NO_SESSION, step_id, step_id))
    payload = orjson.dumps(said).decode()
    return Entry(
        NO_SESSION, row["t_us"], f"library-{row['step']}", row["actor"], payload, subject, sha256
    )


def audit_key(path: Path) -> AuditKey:
    """The chain's key, for an entry appended outside the log writer (made at first use)."""
    try:
        return load_key(path, create=True)
    except (OSError, AuditKeyError) as exc:
        raise LogError(f"cannot use the audit key: {exc}") from exc


def anchor_head(anchor_file: Path, key: AuditKey, identity: str, head: Head) -> None:
    """The chain's new head, anchored outside the database as the log writer does."""
    try:
        append_anchor(anchor_file, Anchor.make(key, identity, head, _wall_us()))
    except OSError as exc:  # what was appended stands; the next anchor covers it
        log.error("cannot write the audit anchor to %s: %s", anchor_file, exc)


async def append_entry(conn: AsyncConnection, entry: Entry, key: AuditKey) -> Head:
    """Append ``entry`` to the chain after its head (one writer at a time)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    c = audit_chain.c
    last = (
        await conn.execute(select(c.seq, c.hash, c.key_id).order_by(c.seq.desc()).limit(1))
    ).first()
    head = Head(int(last.seq), str(last.hash), last.key_id) if last is not None else Head()
    entries = [entry]
    if head.key_id is None:  # the first keyed entry of this log says where legacy ones end
        entries.insert(0, await _keyed_start(conn, head, entry))
    rows, head = link(head, entries, key)
    await conn.execute(
        insert(audit_chain), [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]
    )
    return head


def _private_file(path: str) -> None:
    """The SQLite file (0600) in its folder (0700), before SQLite makes them with the umask's
    modes: the log holds patients' data."""
    file = Path(path).expanduser()
    private_dir(file.parent)
    create_private_file(file)


def _step(r: Any) -> Step:
    detail = orjson.loads(r.detail) if r.detail else {}
    return Step(
        int(r.id),
        int(r.t_us),
        str(r.step),
        str(r.version),
        r.unit,
        r.profile,
        str(r.actor),
        str(r.role),
        detail if isinstance(detail, dict) else {},
        r.audit_seq,
    )


def _wall_us() -> int:
    return time.time_ns() // 1000
