"""The log writer: batches made durable in order, in the database or in the local spool.

Every batch of log rows ends in one of three places, in the order it was taken:

- the database, in one transaction that also records the batch's number for its writer
  (``log_writers``), when the database takes it and nothing older waits in the spool;
- the local spool (``calguard.alerts.spool``), fsynced, while the database is down, full,
  read-only or too slow - a second task drains it into the database, oldest first, as
  soon as the database answers again, and only then do batches go straight in again;
- nowhere yet, when the spool cannot be written either: the batch is held in memory and
  retried (memory is bounded: past ``max_held_inputs`` the oldest inputs are dropped and
  the loss is written to the audit chain when the log works again).

``after_durable`` callbacks run once a batch holding everything added before them is in
the database or the spool (that is when an input may be acknowledged upstream: MQTT
PUBACK, MLLP AA) - or once it is held in memory with nowhere to go, because the monitor
must keep taking inputs to keep alarming: the status then says ``unrecorded`` and the
monitor says so loudly. The status (``ok``, ``spooling``, ``unrecorded``) is what the
monitor turns into the ``log-unavailable`` technical alarm.

A batch's inputs are written in two forms (``calguard.alerts.blocks``): its accepted
readings as one compressed block per session, every other input as a row - with one
executemany each, so that a reading costs the database a few bytes and the writer little.

The audit chain (``calguard.alerts.chain``) is extended here, in the transaction that
commits a batch: its entries, then one ``inputs`` entry with the digest of the batch's
input rows, numbered after the chain's head as the database holds it then. Commits that
extend the chain are serialised (PostgreSQL: an advisory lock; SQLite: the write lock,
taken first), so a batch drained from the spool hours later, and the batches of several
writers on one database, make one chain in commit order. The head is anchored outside the
database as it moves (``calguard.alerts.anchor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from calguard.alerts.anchor import Anchorer
from calguard.alerts.blocks import InputStore, Prepared
from calguard.alerts.chain import (
    KEYED_START,
    TRANSITION,
    AuditKey,
    Entry,
    Head,
    inputs_entries,
    link,
    row_digest,
    transition_subject,
)
from calguard.alerts.schema import alert_transitions, audit_chain, inputs, log_writers, sessions
from calguard.alerts.spool import Spool, SpoolError, SpoolRecord
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["OK", "SPOOLING", "UNRECORDED", "Batch", "LogStatus", "LogWriter", "Marks"]

log = logging.getLogger("calguard.alerts.log")

OK, SPOOLING, UNRECORDED = "ok", "spooling", "unrecorded"
#: rows added so far, by kind: (inputs, transitions, audit links)
Marks = tuple[int, int, int]
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 5.0  # database retries while it is down
_REPEAT_S = 60.0  # how often a lasting failure is said again on stderr
_PG_AUDIT_LOCK = 0x6361_6C61  # "cala": one commit at a time extends the audit chain
_PAYLOAD_VERSION = 2  # 2: audit entries unnumbered (chained at commit); 1: numbered, hashed


@dataclass(slots=True)
class Batch:
    """Rows written together, numbered in the order taken; ``marks``: the rows taken up to
    and including this batch."""

    number: int
    inputs: list[tuple[Any, ...]]
    transitions: list[tuple[Any, ...]]
    audit: list[Entry]
    marks: Marks
    end: tuple[int, int] | None = None  # (session id, ended_us): the session closes

    @property
    def rows(self) -> int:
        return len(self.inputs) + len(self.transitions) + len(self.audit)

    def payload(self, writer: str) -> bytes:
        return orjson.dumps(
            {
                "v": _PAYLOAD_VERSION,
                "writer": writer,
                "batch": self.number,
                "inputs": self.inputs,
                "transitions": self.transitions,
                "audit": [tuple(e) for e in self.audit],  # orjson takes no NamedTuple
                "end": self.end,
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> tuple[str, Batch]:
        d = orjson.loads(payload)
        ins, trs = ([tuple(r) for r in d[k]] for k in ("inputs", "transitions"))
        if d.get("v") == _PAYLOAD_VERSION:
            audit = [Entry(*r) for r in d["audit"]]
        else:
            audit = _entries_of_version_1(d["audit"], trs)
        end = (int(d["end"][0]), int(d["end"][1])) if d.get("end") else None
        return str(d["writer"]), cls(int(d["batch"]), ins, trs, audit, (0, 0, 0), end)


def _entries_of_version_1(rows: list[list[Any]], transitions: list[tuple[Any, ...]]) -> list[Entry]:
    """Audit rows an older CalGuard spooled, numbered and hashed, as entries to chain now;
    each transition entry names its row (one per transition, in the same order)."""
    rows_of = iter(transitions)
    entries = []
    for _seq, session, t_us, kind, actor, payload, _prev, _hash in rows:
        row = next(rows_of, None) if kind == TRANSITION else None
        if row is None:
            entries.append(Entry(session, t_us, kind, actor, payload))
            continue
        subject = transition_subject(row[0], row[1])
        entries.append(Entry(session, t_us, kind, actor, payload, subject, row_digest(row)))
    return entries


@dataclass(frozen=True)
class LogStatus:
    """Where the log's rows go now, in words a technician can act on."""

    state: str = OK  # ok | spooling | unrecorded
    reason: str | None = None  # why the database (or the spool) cannot be written
    spooled: int = 0  # batches waiting in the spool
    held: int = 0  # rows held in memory with nowhere durable to go
    dropped: int = 0  # inputs given up (memory bound) since the log last worked
    spool: str = ""

    @property
    def available(self) -> bool:
        return self.state == OK


@dataclass
class _Health:
    ok: bool = True
    reason: str | None = None
    retry_at: float = 0.0
    backoff: float = _RETRY_FIRST_S
    said_at: float = field(default=-1e9)

    def failed(self, reason: str, what: str) -> None:
        now = time.monotonic()
        if self.ok or now - self.said_at >= _REPEAT_S or reason != self.reason:
            log.error("%s: %s", what, reason)
            self.said_at = now
        self.ok, self.reason = False, reason
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, _RETRY_MAX_S)

    def recovered(self, what: str) -> None:
        if not self.ok:
            log.warning("%s: works again", what)
        self.ok, self.reason, self.backoff = True, None, _RETRY_FIRST_S

    @property
    def due(self) -> bool:
        return self.ok or time.monotonic() >= self.retry_at


class LogWriter:
    """Stores batches durably and in order; see the module's docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: InputStore,
        inserts: tuple[str, str],
        writer: str,
        spool: Spool,
        take: Callable[[], list[Batch]],
        *,
        flush_interval: float,
        write_timeout: float | None,
        max_held_inputs: int,
        on_dropped: Callable[[int, str], None],
        key: AuditKey,
        anchorer: Anchorer,
    ) -> None:
        self.engine, self.inserts, self.writer, self.spool = engine, inserts, writer, spool
        self.store = store
        self.key, self.anchorer = key, anchorer
        self._other_key_said: str | None = None
        self.take, self.on_dropped = take, on_dropped
        self.flush_interval, self.write_timeout = flush_interval, write_timeout
        self.max_held_inputs = max_held_inputs
        self.db, self.local = _Health(), _Health()
        self.queue: deque[Batch] = deque()  # taken, not yet durable (oldest first)
        self.settled: Marks = (0, 0, 0)
        self.dropped = 0
        self._drop_reason: str | None = None
        self._drop_said = -1e9
        self.closing = False
        self.status = LogStatus(spool=str(spool.directory))
        self._waiters: deque[tuple[Marks, Callable[[], None]]] = deque()
        self._spool_lock = asyncio.Lock()
        self._wake, self._drain_wake = asyncio.Event(), asyncio.Event()
        self._progress, self._changed = _Signal(), _Signal()
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        #: run first in every commit's transaction (calguard.lease fences a paused monitor)
        self.fence: Callable[[AsyncConnection], Awaitable[None]] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._guard(self._store_loop), name="calguard-log-writer"),
            asyncio.create_task(self._guard(self._drain_loop), name="calguard-log-drain"),
        ]

    async def stop(self, drain_for: float) -> None:
        """Store what is left (spool or database); drain the spool for up to ``drain_for``
        seconds if the database takes it (what remains is drained at the next start)."""
        self.closing = True
        self._wake.set()
        store, drain = self._tasks
        try:
            with contextlib.suppress(Exception):  # a failure is kept in ``failure``
                await store
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_for if self.db.ok else 0):
                    while self.spool.pending and self.db.ok and not drain.done():
                        await self._progress.wait()
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            self.spool.close()
            await self.anchorer.anchor()

    async def _guard(self, loop: Callable[[], Any]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep it for the producers; never die silently
            self.failure = exc
            log.critical("the log writer stopped: %r", exc, exc_info=exc)
            self._progress.fire()

    # -- what producers see ---------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def after_durable(self, mark: Marks, callback: Callable[[], None]) -> None:
        if _reached(mark, self.settled):
            callback()
        else:
            self._waiters.append((mark, callback))

    @property
    def queued_rows(self) -> int:
        return sum(b.rows for b in self.queue)

    async def progress(self) -> None:
        """Wait for the writer's next round (something stored, or given up on)."""
        await self._progress.wait()

    async def changed(self, since: LogStatus) -> LogStatus:
        """The status, once its state is other than ``since``'s."""
        while self.status.state == since.state:
            await self._changed.wait()
        return self.status

    # -- storing --------------------------------------------------------------------------

    async def _store_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            self.queue.extend(self.take())
            while self.queue:
                batch = self.queue[0]
                if not await self._store(batch):
                    self._hold()
                    break
                self.queue.popleft()
                self._settle(batch.marks)
            if self.dropped and not self.queue:  # all held rows are in: record the gap
                self.on_dropped(self.dropped, self._drop_reason or "")
                self.dropped = 0
                self._wake.set()
            await self.anchorer.tick()  # a head left unanchored by a quiet spell
            self._update()
            self._progress.fire()
            if self.closing:
                if self.queue and self.failing_everywhere:
                    return  # nothing more can be done: close() says what was not written
                if not self.queue:
                    more = self.take()
                    if not more:
                        return
                    self.queue.extend(more)
                    self._wake.set()

    @property
    def failing_everywhere(self) -> bool:
        return not self.db.ok and not self.local.ok

    async def _store(self, batch: Batch) -> bool:
        if not self.spool.pending and (self.db.due or self.closing):
            try:
                await self._commit(self.writer, batch, check=False)
            except Exception as exc:  # whatever it was, the rows go to the spool
                self.db.failed(_short(exc), "the log database cannot be written; spooling")
            else:
                self.db.recovered("the log database")
                return True
        try:
            async with self._spool_lock:
                await asyncio.to_thread(self.spool.append, batch.payload(self.writer))
        except Exception as exc:  # full, read-only, I/O error - or a bug: never stop alarming
            if not isinstance(exc, SpoolError | OSError):
                log.exception("the spool failed unexpectedly")
            self.local.failed(str(exc), "THE LOCAL SPOOL CANNOT BE WRITTEN EITHER")
            return False
        self.local.recovered("the local spool")
        self._drain_wake.set()
        return True

    def _hold(self) -> None:
        """Neither the database nor the spool takes rows: keep taking inputs (alarming goes
        on), release their acknowledgements, and bound the memory held."""
        self._settle(self.queue[-1].marks)
        excess = sum(len(b.inputs) for b in self.queue) - self.max_held_inputs
        for batch in self.queue:
            if excess <= 0:
                break
            cut = min(excess, len(batch.inputs))
            batch.inputs = batch.inputs[cut:]
            excess -= cut
            self.dropped += cut
            self._drop_reason = f"{self.db.reason}; {self.local.reason}"
        now = time.monotonic()
        if self.dropped and now - self._drop_said >= _REPEAT_S:
            log.critical(
                "%d input(s) dropped so far: neither the database nor the spool takes them "
                "and no more can be held in memory",
                self.dropped,
            )
            self._drop_said = now

    def _settle(self, marks: Marks) -> None:
        self.settled = marks
        while self._waiters and _reached(self._waiters[0][0], marks):
            _, callback = self._waiters.popleft()
            try:
                callback()
            except Exception:  # an upstream acknowledgement must not stop the writer
                log.exception("an after-durable callback failed")

    # -- draining -------------------------------------------------------------------------

    async def _drain_loop(self) -> None:
        while True:
            if not self.spool.pending:
                self._update()
                self._drain_wake.clear()
                await self._drain_wake.wait()
                continue
            if not self.db.due:
                await asyncio.sleep(max(0.0, self.db.retry_at - time.monotonic()))
                continue
            if await self.drain_one():
                self._update()
                self._progress.fire()
                self._wake.set()  # held batches may now go on

    async def drain_one(self) -> bool:
        """Write the oldest spooled batch into the database; False if it could not be."""
        try:
            async with self._spool_lock:
                record: SpoolRecord | None = await asyncio.to_thread(self.spool.next)
        except SpoolError as exc:  # damage on disk: keep the file for forensics, go on
            log.critical("%s; that segment is set aside, its rest is NOT in the log", exc)
            async with self._spool_lock:
                await asyncio.to_thread(self.spool.set_aside)
            return False
        if record is None:
            return False
        try:
            writer, batch = Batch.from_payload(record.payload)
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # intact, yet not a batch
            log.critical("%s: a record is not a batch (%s); segment set aside", record.segment, exc)
            async with self._spool_lock:
                await asyncio.to_thread(self.spool.set_aside)
            return False
        try:
            await self._commit(writer, batch, check=True)
        except Exception as exc:
            self.db.failed(_short(exc), "the log database cannot be written (spool kept)")
            return False
        async with self._spool_lock:
            await asyncio.to_thread(self.spool.consumed, record)
        self.db.recovered("the log database")
        return True

    async def drain_all(self) -> int:
        """Drain the whole spool now (at start, before the log is read); raises the first
        database error."""
        done = 0
        while self.spool.pending:
            async with self._spool_lock:
                record = await asyncio.to_thread(self.spool.next)
            if record is None:
                break
            writer, batch = Batch.from_payload(record.payload)
            await self._commit(writer, batch, check=True)
            async with self._spool_lock:
                await asyncio.to_thread(self.spool.consumed, record)
            done += 1
        return done

    # -- the database ---------------------------------------------------------------------

    async def _commit(self, writer: str, batch: Batch, *, check: bool) -> None:
        """One batch, one transaction, with its number recorded for its writer and its
        entries appended to the audit chain; with ``check``, a batch already recorded is
        skipped (it was committed, then spooled)."""
        # the batch's inputs entry and its rows carry the same time: retention prunes by it
        now = _wall_us()
        entries = [*batch.audit, *inputs_entries(batch.inputs, now)]
        async with self._deadline():
            made = await self.store.prepare(self.engine, batch.inputs, now)
            head = await self._transaction(writer, batch, entries, made, check=check)
        if head is not None:
            await self.anchorer.moved(head)

    async def _transaction(
        self,
        writer: str,
        batch: Batch,
        entries: list[Entry],
        made: Prepared,
        *,
        check: bool,
    ) -> Head | None:
        ins_tr, ins_au = self.inserts
        head: Head | None = None
        async with self.engine.begin() as conn:
            if self.fence is not None:  # calguard.lease: raises once another took the unit
                await self.fence(conn)
            if check:
                last = (
                    await conn.execute(
                        select(log_writers.c.last_batch).where(log_writers.c.writer == writer)
                    )
                ).scalar()
                if last is not None and last >= batch.number:
                    log.info("spooled batch %s of %s was already in the log", batch.number, writer)
                    return None
                if last is None:  # a log restored from before this writer: record it now
                    row = {"writer": writer, "started_us": _wall_us(), "last_batch": 0}
                    await conn.execute(insert(log_writers), [row])
            # first a write: on SQLite it takes the database's write lock, so the chain's
            # head read below stays the head until this transaction commits
            await conn.execute(
                update(log_writers)
                .where(log_writers.c.writer == writer)
                .values(last_batch=batch.number)
            )
            if entries:
                head = await self._head(conn)
                if head.key_id is None:
                    entries.insert(0, await _keyed_start(conn, head, entries[0]))
            if batch.inputs:
                await self.store.insert(conn, made)
            if batch.transitions:
                await conn.exec_driver_sql(ins_tr, batch.transitions)
            if head is not None:
                rows, head = link(head, entries, self.key)
                await conn.exec_driver_sql(ins_au, rows)
            if batch.end is not None:
                session, ended = batch.end
                await conn.execute(
                    update(sessions).where(sessions.c.id == session).values(ended_us=ended)
                )
        return head

    async def _head(self, conn: AsyncConnection) -> Head:
        """The chain's newest entry, once no other commit can extend the chain."""
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
        c = audit_chain.c
        row = (
            await conn.execute(select(c.seq, c.hash, c.key_id).order_by(c.seq.desc()).limit(1))
        ).first()
        head = Head(int(row.seq), str(row.hash), row.key_id) if row is not None else Head()
        if head.key_id not in (None, self.key.id, self._other_key_said):
            self._other_key_said = head.key_id
            log.error(
                "the audit chain was last extended with key %s; this writer's key (%s) is %s: "
                "verifying the chain now needs both keys",
                head.key_id,
                self.key.path,
                self.key.id,
            )
        return head

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        if self.write_timeout is None:
            yield
            return
        async with asyncio.timeout(self.write_timeout):
            yield

    # -- status ---------------------------------------------------------------------------

    def _update(self) -> None:
        held = self.queued_rows if self.queue and not self.local.ok else 0
        if held or (self.dropped and not self.local.ok):
            state = UNRECORDED
        elif self.spool.pending or not self.db.ok:
            state = SPOOLING
        else:
            state = OK
        reason = None
        if state == UNRECORDED:
            reason = f"{self.db.reason or 'spool not drained'}; {self.local.reason}"
        elif state == SPOOLING:
            reason = self.db.reason or "writing the spooled rows"
        status = LogStatus(
            state, reason, self.spool.pending, held, self.dropped, str(self.spool.directory)
        )
        changed = status.state != self.status.state
        self.status = status
        if changed:
            (log.warning if state == OK else log.error)(
                "log: %s%s", state, f" ({reason})" if reason else ""
            )
            self._changed.fire()


class _Signal:
    """Wakes everyone waiting for the next time it fires (none is missed between a
    waiter's check and its wait: both happen without yielding)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def _keyed_start(conn: AsyncConnection, head: Head, first: Entry) -> Entry:
    """The first keyed entry: where the unkeyed (legacy) entries end, and which rows of
    the tables were written before the chain covered them."""
    before_in = (await conn.execute(select(func.coalesce(func.max(inputs.c.id), 0)))).scalar()
    before_tr = (
        await conn.execute(select(func.coalesce(func.max(alert_transitions.c.id), 0)))
    ).scalar()
    legacy = {
        "legacy_entries": head.seq,
        "inputs_before": before_in,
        "transitions_before": before_tr,
    }
    return Entry(first.session_id, _wall_us(), KEYED_START, None, orjson.dumps(legacy).decode())


def _reached(mark: Marks, settled: Marks) -> bool:
    return mark[0] <= settled[0] and mark[1] <= settled[1] and mark[2] <= settled[2]


def _wall_us() -> int:
    return time.time_ns() // 1000


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
