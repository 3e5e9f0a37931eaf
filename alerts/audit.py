"""Verifying the audit: ``calguard audit verify``.

Five checks, each named in the report, each with what it found:

- **links**: entries numbered 1, 2, 3 ... without gaps, each naming the MAC of the one
  before (an entry deleted or inserted in the middle);
- **HMACs**: each keyed entry's HMAC, with the key it names (an entry edited and every
  later one re-hashed, or one forged and appended, by someone without the key); legacy
  entries (before the chain was keyed) by their SHA-256, and only before the keyed ones;
- **alert_transitions** and **inputs**: each row of those tables against the entry that
  covers it (``calguard.alerts.chain``): a row edited (a priority lowered), deleted, or
  added afterwards; rows written before the chain was keyed are counted as legacy;
  readings kept in blocks are decoded into their rows; an ``inputs`` entry older than a
  prune's boundary (``calguard.alerts.retention``) may have lost all its rows to it;
- **anchor**: the chain against the newest anchor of this log (``calguard.alerts.anchor``:
  the anchor file, and the broker's retained copy when asked): a chain that ends before
  the anchored entry was cut (all of it deleted, when it has no entry left), one whose
  entry differs from the anchored MAC was rewritten.

Tables are walked in commit order, side by side with the chain (the log writer commits a
batch's rows and their entries in one transaction, one commit at a time), so memory stays
small on a log of years. Anchors are read before the chain, and rows committed while the
check runs (a monitor writing the log) are matched with the entries committed with them.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from calguard.alerts.accounts import account_digest
from calguard.alerts.anchor import Anchor, scan_anchors
from calguard.alerts.chain import (
    GENESIS,
    INPUTS,
    KEYED_START,
    TRANSITION,
    AuditKey,
    AuditKeyError,
    Entry,
    Head,
    Subject,
    entry_mac,
    inputs_rows,
    legacy_hash,
    load_key,
    rows_digest,
)
from calguard.alerts.inputs_read import stream_inputs
from calguard.alerts.log import (
    TRANSITION_COLUMNS,
    default_anchor_file,
    default_audit_key,
    normalise_db_url,
)
from calguard.alerts.retention import PRUNED, pruned_before
from calguard.alerts.schema import alert_transitions, audit_chain, log_identity, users
from sqlalchemy import Row, inspect, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "CHECKS",
    "AnchorSource",
    "AuditReport",
    "Check",
    "anchor_file_source",
    "chain_rows",
    "default_keys",
    "verify_chain",
]

CHECKS = ("links", "HMACs", "alert_transitions", "inputs", "accounts", "anchor")
_SHOWN = 3  # problems named per check; the rest are counted
_HELD_ROWS = 100_000  # rows held while waiting for their entry (a log being written)


@dataclass
class Check:
    name: str
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    more: int = 0  # problems beyond those named

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, problem: str) -> None:
        if len(self.problems) < _SHOWN:
            self.problems.append(problem)
        else:
            self.more += 1


@dataclass
class AuditReport:
    log_id: str | None
    checks: dict[str, Check] = field(default_factory=lambda: {c: Check(c) for c in CHECKS})
    entries: int = 0
    legacy: int = 0  # unkeyed entries from before the chain was keyed
    head: Head = field(default_factory=Head)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks.values() if not c.ok]


@dataclass(frozen=True)
class AnchorSource:
    """Where anchors were read: ``name`` for the report, ``lines`` as read, or why they
    could not be (``error``)."""

    name: str
    lines: Sequence[bytes]
    error: str | None = None


def anchor_file_source(path: Path | None = None) -> AnchorSource:
    """The anchor file (default: the data directory's); a missing file holds no anchor."""
    file = default_anchor_file() if path is None else path
    try:
        lines = file.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    return AnchorSource(f"the anchor file {file}", lines)


def default_keys() -> dict[str, AuditKey]:
    try:
        key = load_key(default_audit_key(), create=False)
    except AuditKeyError:
        return {}
    return {key.id: key}


async def verify_chain(
    url: str,
    *,
    keys: Mapping[str, AuditKey] | None = None,
    anchors: Sequence[AnchorSource] | None = None,
) -> AuditReport:
    """Every check of the log at ``url`` (keys by id: default the data directory's key;
    anchors: default the data directory's anchor file)."""
    engine = create_async_engine(normalise_db_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            log_id = await _log_id(conn)
            keyed_columns = await _keyed_columns(conn)
        report = AuditReport(log_id)
        given = anchors if anchors is not None else [anchor_file_source()]
        newest = _newest_anchor(report, given, keys if keys is not None else default_keys())
        walk = _Walk(report, keys if keys is not None else default_keys(), newest, keyed_columns)
        await walk.run(engine)
        await _accounts(engine, report.checks["accounts"], keyed_columns)
    finally:
        await engine.dispose()
    return report


async def _accounts(engine: AsyncEngine, check: Check, keyed_columns: bool) -> None:
    """Every account's row against its latest audit entry (``account-*``, whose HMAC the walk
    checked): a role, a state or a password hash written straight into the table, an account
    added or deleted outside ``calguard user``, fails."""
    async with engine.connect() as conn:
        if not keyed_columns or not await conn.run_sync(
            lambda sync: inspect(sync).has_table("users")
        ):
            check.summary = "no accounts yet (a log from before schema version 6)"
            return
        rows = (await conn.execute(select(users))).all()
        c = audit_chain.c
        entries = (
            await conn.execute(
                select(c.seq, c.payload, c.digest)
                .where(c.kind.like("account-%"), c.key_id.is_not(None))
                .order_by(c.seq)
            )
        ).all()
    latest: dict[str, tuple[int, str | None]] = {}
    for entry in entries:
        name = _json(entry.payload).get("account")
        if isinstance(name, str):
            latest[name] = (int(entry.seq), entry.digest)
    for row in rows:
        found = latest.pop(row.name, None)
        if found is None:
            check.fail(f"account {row.name} has no audit entry: added outside calguard user")
        elif found[1] != account_digest(row):
            check.fail(
                f"account {row.name} differs from its audited state (entry {found[0]}): "
                "its role, state or password changed outside calguard user"
            )
    for name, (seq, _) in sorted(latest.items()):
        check.fail(f"account {name} was deleted outside calguard user (its last entry {seq})")
    check.summary = f"{len(rows)} account(s) match their latest audit entries"


async def chain_rows(url: str) -> list[Row[Any]]:
    """Every entry of the chain, in order (for the export)."""
    engine = create_async_engine(normalise_db_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            query = _chain_query(await _keyed_columns(conn), 0, None)
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def _keyed_columns(conn: AsyncConnection) -> bool:
    """Whether the chain has the columns of schema version 6 (an older log: not yet)."""
    names = await conn.run_sync(
        lambda sync: {c["name"] for c in inspect(sync).get_columns("audit_chain")}
    )
    return "key_id" in names


def _chain_query(keyed_columns: bool, after: int, upto: int | None) -> Any:
    """Entries after ``after`` up to ``upto``, in order; a log not yet at schema version
    6 has legacy ones only (its new columns read as NULL)."""
    c = audit_chain.c
    keyed = ("key_id", "subject", "digest")
    columns = [
        col if keyed_columns or col.name not in keyed else literal(None).label(col.name)
        for col in c
    ]
    query = select(*columns).where(c.seq > after)
    if upto is not None:
        query = query.where(c.seq <= upto)
    return query.order_by(c.seq)


async def _log_id(conn: AsyncConnection) -> str | None:
    has_identity = await conn.run_sync(lambda sync: inspect(sync).has_table("log_identity"))
    if not has_identity:
        return None
    value = (await conn.execute(select(log_identity.c.id))).scalar()
    return str(value) if value is not None else None


def _newest_anchor(
    report: AuditReport, sources: Sequence[AnchorSource], keys: Mapping[str, AuditKey]
) -> tuple[Anchor, str] | None:
    """The newest anchor of this log among ``sources`` (and what is wrong with any)."""
    check = report.checks["anchor"]
    newest: tuple[Anchor, str] | None = None
    for source in sources:
        if report.log_id is None:
            break
        if source.error is not None:
            check.fail(f"{source.name}: {source.error}")
            continue
        scan = scan_anchors(source.lines, report.log_id, keys)
        for problem in scan.problems:
            check.fail(f"{source.name}: {problem}")
        if scan.newest is None:
            check.fail(
                f"{source.name} holds no anchor of this log ({report.log_id}): entries cut "
                "from its end, or all of it deleted, cannot be found"
            )
        elif newest is None or scan.newest.seq > newest[0].seq:
            newest = (scan.newest, source.name)
    if report.log_id is None:
        check.fail("the log has no identity (a log from before schema version 3): no anchor")
    return newest


class _Walk:
    """The chain in order, with the tables beside it."""

    def __init__(
        self,
        report: AuditReport,
        keys: Mapping[str, AuditKey],
        anchor: tuple[Anchor, str] | None,
        keyed_columns: bool,
    ) -> None:
        self.report, self.keys, self.anchor = report, keys, anchor
        self.keyed_columns = keyed_columns
        self.links, self.macs = report.checks["links"], report.checks["HMACs"]
        self.expected, self.prev = 1, GENESIS
        self.key_ids: set[str] = set()
        self.keyed_from: int | None = None
        self.transitions = _Rows(report.checks["alert_transitions"], _describe_transition)
        self.inputs = _Rows(report.checks["inputs"], _describe_inputs)
        self.pruned_before = 0  # inputs entries older than this may have lost their rows

    async def run(self, engine: AsyncEngine) -> None:
        async with contextlib.AsyncExitStack() as stack:
            head = await self._head(engine)
            self.pruned_before = await _pruned_before(engine)
            # the tables are read after the head: every row committed before it has its entry
            self.transitions.rows = await stack.enter_async_context(
                _stream(engine, _table_query(alert_transitions, TRANSITION_COLUMNS))
            )
            self.inputs.rows = await stack.enter_async_context(stream_inputs(engine))
            async with _stream(engine, _chain_query(self.keyed_columns, 0, head)) as chain:
                async for row in chain:
                    await self.entry(row, newer=False)
            for rows in (self.transitions, self.inputs):
                await rows.pull_rest()
            if self.transitions.held or self.inputs.held:  # rows newer than the head read
                async with _stream(engine, _chain_query(self.keyed_columns, head, None)) as chain:
                    async for row in chain:
                        await self.entry(row, newer=True)
        self.finish()

    async def _head(self, engine: AsyncEngine) -> int:
        query = select(audit_chain.c.seq).order_by(audit_chain.c.seq.desc()).limit(1)
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    # -- one entry ------------------------------------------------------------------------

    async def entry(self, row: Row[Any], *, newer: bool) -> None:
        self.report.entries += 1
        self._link(row)
        entry = Entry(
            row.session_id, row.t_us, row.kind, row.actor, row.payload, row.subject, row.digest
        )
        if row.key_id is None:
            self._legacy(row)
        else:
            self._keyed(row, entry)
        self._anchored(row)
        self.report.head = Head(row.seq, row.hash, row.key_id)
        self.prev, self.expected = row.hash, row.seq + 1
        subject = Subject.parse(row.subject)
        if row.key_id is None or subject is None:
            return
        if row.kind == TRANSITION:
            await self.transitions.expect(
                _Range(row.seq, subject, 1, row.digest, row.payload, newer)
            )
        elif row.kind == INPUTS:
            count = inputs_rows(row.payload) or 0
            rng = _Range(row.seq, subject, count, row.digest, "", newer)
            rng.pruned = row.t_us < self.pruned_before
            await self.inputs.expect(rng)

    def _link(self, row: Row[Any]) -> None:
        if row.seq != self.expected:  # seq is the key: higher, never lower
            self.links.fail(
                f"entries {self.expected}-{row.seq - 1} are missing (the next one is {row.seq}): "
                "deleted"
            )
        elif row.prev_hash != self.prev:
            self.links.fail(
                f"entry {row.seq} does not follow entry {row.seq - 1}: an entry was deleted, "
                "inserted or rewritten before it"
            )

    def _legacy(self, row: Row[Any]) -> None:
        if self.keyed_from is not None:
            self.macs.fail(
                f"entry {row.seq} is unkeyed after keyed entries (edited and re-hashed, or forged)"
            )
            return
        self.report.legacy += 1
        expected = legacy_hash(row.seq, row.t_us, row.kind, row.actor, row.payload, row.prev_hash)
        if expected != row.hash:
            self.macs.fail(f"legacy entry {row.seq} does not match its SHA-256 (edited)")

    def _keyed(self, row: Row[Any], entry: Entry) -> None:
        if self.keyed_from is None:
            self.keyed_from = row.seq
        self.key_ids.add(row.key_id)
        key = self.keys.get(row.key_id)
        if key is None:
            self.macs.fail(
                f"entry {row.seq} was made with key {row.key_id}, which was not given "
                "(--audit-key FILE)"
            )
        elif not hmac.compare_digest(entry_mac(key, row.seq, entry, row.prev_hash), row.hash):
            self.macs.fail(
                f"entry {row.seq}'s HMAC does not match (edited and re-hashed, or forged)"
            )
        if row.kind == KEYED_START:
            legacy = _json(row.payload)
            self.transitions.legacy_before = int(legacy.get("transitions_before", 0))
            self.inputs.legacy_before = int(legacy.get("inputs_before", 0))

    def _anchored(self, row: Row[Any]) -> None:
        if self.anchor is None or row.seq != self.anchor[0].seq:
            return
        anchor, source = self.anchor
        if not hmac.compare_digest(anchor.hash, row.hash):
            self.report.checks["anchor"].fail(
                f"entry {row.seq} differs from the anchor of {anchor.time} ({source}): the "
                "chain was rewritten up to there"
            )

    # -- the end --------------------------------------------------------------------------

    def finish(self) -> None:
        r = self.report
        for rows in (self.transitions, self.inputs):
            rows.finish()
        keyed = r.entries - r.legacy
        keys = ", ".join(sorted(self.key_ids)) or "-"
        r.checks["links"].summary = (
            f"{r.entries} entries"
            + (f", 1-{r.legacy} legacy (unkeyed SHA-256)" if r.legacy else "")
            + (f", {r.legacy + 1}-{r.head.seq} keyed" if keyed else "")
        )
        r.checks["HMACs"].summary = f"{keyed} keyed entries (key {keys})"
        self._anchor_summary()

    def _anchor_summary(self) -> None:
        r, check = self.report, self.report.checks["anchor"]
        if self.anchor is None:
            return
        anchor, source = self.anchor
        if r.entries == 0:
            check.fail(
                f"all entries deleted: the anchor of {anchor.time} holds entry {anchor.seq}, "
                f"the log has none ({source})"
            )
        elif r.head.seq < anchor.seq:
            check.fail(
                f"tail cut: the anchor of {anchor.time} holds entry {anchor.seq}, the log ends "
                f"at {r.head.seq} ({source})"
            )
        check.summary = (
            f"head {r.head.seq}; newest anchor: entry {anchor.seq} at {anchor.time} ({source})"
        )


@dataclass
class _Range:
    """Rows an entry covers, hashed as they come."""

    entry: int
    subject: Subject
    count: int
    digest: str | None
    line: str  # a transition entry's alert line (for naming the alert)
    newer: bool  # committed after the tables were read: its rows may not be there
    fed: int = 0
    pruned: bool = False  # older than a prune's boundary: its rows may all be gone
    # held until all are in: a batch's readings (blocks) and its other inputs are read
    # from two tables, and the digest is of them all in seq order
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class _Rows:
    """One table's rows against the entries that cover them. Rows come in id order, the
    entries in chain order: the same commit order, so each entry finds its rows at once
    or nearly (a row held meanwhile is one of a later entry, or of none)."""

    def __init__(self, check: Check, describe: Any) -> None:
        self.check, self.describe = check, describe
        self.rows: AsyncIterator[Any] | None = None  # Row, or LoggedInput (inputs)
        self.legacy_before: int | None = None  # rows up to this id predate the keyed chain
        self.awaiting: dict[int, list[_Range]] = {}  # by session
        self.held: list[Row[Any]] = []
        self.legacy = self.matched = self.ranges = self.pruned = 0
        self.too_many = 0

    async def expect(self, rng: _Range) -> None:
        self.awaiting.setdefault(rng.subject.session, []).append(rng)
        self.ranges += 1
        held, self.held = self.held, []
        for row in held:
            self._place(row)
        for _ in range(rng.count):
            pulled = await self._pull()
            if pulled is None:
                break
            self._place(pulled)

    async def pull_rest(self) -> None:
        while (row := await self._pull()) is not None:
            self._place(row)

    async def _pull(self) -> Any:
        assert self.rows is not None
        async for row in self.rows:
            if _before_keyed(row, self.legacy_before):
                self.legacy += 1
                continue
            return row
        return None

    def _place(self, row: Row[Any]) -> None:
        for rng in self.awaiting.get(row.session_id, ()):
            if rng.subject.first <= row.seq <= rng.subject.last:
                rng.rows.append(tuple(row)[1:])  # all but the id
                rng.fed += 1
                if rng.fed == rng.count:
                    self._close(rng)
                return
        if len(self.held) < _HELD_ROWS:
            self.held.append(row)
        else:
            self.too_many += 1

    def _close(self, rng: _Range) -> None:
        self.awaiting[rng.subject.session].remove(rng)
        rng.rows.sort(key=lambda r: r[1])  # (session, seq, ...): by seq
        if rng.digest is not None and hmac.compare_digest(rows_digest(rng.rows), rng.digest):
            self.matched += rng.count
        else:
            self.check.fail(self.describe(rng, None))

    def finish(self) -> None:
        for ranges in self.awaiting.values():
            for rng in ranges:
                if rng.pruned and rng.fed == 0:  # all its rows went with a prune
                    self.pruned += rng.count
                elif not rng.newer:  # a newer one's rows came after the tables were read
                    self.check.fail(self.describe(rng, None))
        if self.legacy_before is None:  # no keyed entry: every row is from before
            self.legacy += len(self.held) + self.too_many
            self.held, self.too_many = [], 0
        for row in self.held:
            self.check.fail(self.describe(None, row))
        if self.too_many:
            self.check.fail(f"{self.too_many} more rows are in no audit entry")
        self.check.summary = (
            f"{self.matched} row(s) match their {self.ranges} audit entries"
            + (
                f"; {self.legacy} legacy rows from before the chain was keyed"
                if self.legacy
                else ""
            )
            + (f"; {self.pruned} row(s) pruned (inputs-pruned entries)" if self.pruned else "")
        )


async def _pruned_before(engine: AsyncEngine) -> int:
    """The latest boundary of the chain's prunes (their MACs are checked on the walk)."""
    query = select(audit_chain.c.payload).where(audit_chain.c.kind == PRUNED)
    async with engine.connect() as conn:
        payloads = (await conn.execute(query)).scalars().all()
    return max((pruned_before(p) or 0 for p in payloads), default=0)


def _before_keyed(row: Any, before: int | None) -> bool:
    # a reading in a block (no id) is never legacy: blocks came after the keyed chain
    return before is not None and row.id is not None and row.id <= before


def _describe_transition(rng: _Range | None, row: Row[Any] | None) -> str:
    if row is not None:
        return (
            f"alert_transitions row {row.alert_id} (session {row.session_id}, seq {row.seq}) "
            "is in no audit entry (added afterwards, or its entry deleted)"
        )
    assert rng is not None
    alert = _json(rng.line).get("alert", "?")
    where = (
        f"alert_transitions row {alert} (session {rng.subject.session}, seq {rng.subject.first})"
    )
    if rng.fed < rng.count:
        return f"{where} of entry {rng.entry} is missing (deleted, or its session or seq changed)"
    return f"{where} differs from its audited line (entry {rng.entry})"


def _describe_inputs(rng: _Range | None, row: Row[Any] | None) -> str:
    if row is not None:
        which = f"input row {row.id}" if row.id is not None else "a reading in a block"
        return (
            f"{which} (session {row.session_id}, seq {row.seq}) is in no audit "
            "entry (added afterwards, or its entry deleted)"
        )
    assert rng is not None
    s = rng.subject
    where = f"input rows seq {s.first}-{s.last} of session {s.session} (entry {rng.entry})"
    if rng.fed < rng.count:
        found = f"{rng.fed} of {rng.count} found"
        return f"{where}: {found} (rows deleted, or their session or seq changed)"
    return f"{where} differ from their audited digest (a row edited)"


def _table_query(table: Any, columns: Sequence[str]) -> Any:
    return select(table.c.id, *(table.c[name] for name in columns)).order_by(table.c.id)


@contextlib.asynccontextmanager
async def _stream(engine: AsyncEngine, query: Any) -> AsyncIterator[AsyncIterator[Row[Any]]]:
    async with engine.connect() as conn:
        result = await conn.stream(query)
        try:
            yield result.__aiter__()
        finally:
            await result.close()


def _json(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
