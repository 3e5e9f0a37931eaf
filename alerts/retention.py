"""Retention: inputs older than the site's policy are dropped - once exported and verified.

Inputs (readings above all) are the bulk of the log; alerts, actions and the audit chain
are what a review needs years later, and are kept forever. ``calguard log prune`` drops
the inputs committed before a day boundary (``keep_inputs_days`` before today, UTC): on
PostgreSQL whole day partitions of ``input_blocks`` (``DROP TABLE``), elsewhere and for
single rows ``DELETE``. Rows from before schema version 8 (no commit time) go with their
session, once every ``inputs`` entry of that session is older than the boundary.

Nothing is dropped that has not been exported and verified. ``calguard export`` records
what it wrote (``log_exports``: the session, the seqs it covers, the SHA-256 of the text);
``calguard log verify-export FILE`` re-reads a copy - the archived file - and marks the
export verified when its SHA-256 matches. A prune that would drop an input of a session
without a verified export covering it refuses, and names the sessions.

A prune is an entry of the audit chain (``inputs-pruned``: the boundary, the sessions, the
exports relied on), appended in the transaction that drops the rows: ``calguard audit
verify`` then knows the ``inputs`` entries older than the boundary may have lost their rows
to a prune, and still checks every row that remains.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from calguard.alerts.chain import INPUTS, Entry
from calguard.alerts.partitions import DAY_US, day_of, drop_days_before
from calguard.alerts.schema import audit_chain, input_blocks, inputs, log_exports
from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "PRUNED",
    "Plan",
    "file_sha256",
    "plan_prune",
    "prune",
    "pruned_before",
    "record_export",
    "verify_export",
]

PRUNED = "inputs-pruned"
_NO_SESSION = 0  # an entry of no session (as the library's steps)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def record_export(
    conn: AsyncConnection, session: int, seqs: Iterable[int], sha256: str
) -> int:
    """One ``log_exports`` row for what ``calguard export`` wrote; its id."""
    seen = list(seqs)
    row = {
        "exported_us": _wall_us(),
        "session_id": session,
        "first_seq": min(seen, default=None),
        "last_seq": max(seen, default=None),
        "inputs": len(seen),
        "sha256": sha256,
    }
    result = await conn.execute(insert(log_exports).returning(log_exports.c.id), [row])
    return int(result.scalar_one())


async def verify_export(conn: AsyncConnection, digest: str, where: str) -> list[int]:
    """Mark the exports whose text has SHA-256 ``digest`` (a copy re-read at ``where``:
    ``file_sha256``) as verified; their sessions (none: it matches no export of this log)."""
    c = log_exports.c
    found = (await conn.execute(select(c.id, c.session_id).where(c.sha256 == digest))).all()
    if found:
        await conn.execute(
            update(log_exports)
            .where(c.sha256 == digest)
            .values(verified_us=_wall_us(), verified_path=where)
        )
    return sorted({int(r.session_id) for r in found})


@dataclass
class Plan:
    """What a prune drops: inputs committed before ``before_us``, by session (the highest
    seq and the count), and the sessions no verified export covers."""

    before_us: int
    sessions: dict[int, tuple[int, int]] = field(default_factory=dict)
    legacy_sessions: list[int] = field(default_factory=list)
    unexported: list[int] = field(default_factory=list)
    exports: list[tuple[int, str]] = field(default_factory=list)  # (id, sha256) relied on

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.sessions.values())


def boundary(now_us: int, keep_days: int) -> int:
    """Inputs committed before this (a UTC midnight) are past the policy."""
    return day_of(now_us) - keep_days * DAY_US


async def plan_prune(conn: AsyncConnection, before_us: int) -> Plan:
    plan = Plan(before_us)
    b, i = input_blocks.c, inputs.c
    queries: list[Select[Any]] = [
        select(b.session_id, func.max(b.last_seq), func.sum(b.rows))
        .where(b.logged_us < before_us)
        .group_by(b.session_id),
        select(i.session_id, func.max(i.seq), func.count())
        .where(i.logged_us < before_us)
        .group_by(i.session_id),
    ]
    plan.legacy_sessions = await _legacy_sessions(conn, before_us)
    if plan.legacy_sessions:
        queries.append(_legacy_rows(plan.legacy_sessions))
    for query in queries:
        for row in await conn.execute(query):
            session, last, count = row[0], row[1], row[2]
            had_last, had_count = plan.sessions.get(int(session), (0, 0))
            plan.sessions[int(session)] = (max(had_last, int(last)), had_count + int(count))
    await _check_exports(conn, plan)
    return plan


def _legacy_rows(sessions: list[int]) -> Select[Any]:
    i = inputs.c
    return (
        select(i.session_id, func.max(i.seq), func.count())
        .where(i.logged_us.is_(None), i.session_id.in_(sessions))
        .group_by(i.session_id)
    )


async def _legacy_sessions(conn: AsyncConnection, before_us: int) -> list[int]:
    """Sessions with rows from before version 8 whose every ``inputs`` entry is older
    than the boundary (pre-chain rows, in no entry, are never pruned)."""
    a = audit_chain.c
    old = select(inputs.c.session_id).where(inputs.c.logged_us.is_(None)).distinct()
    newest = (
        select(a.session_id)
        .where(a.kind == INPUTS, a.session_id.in_(old))
        .group_by(a.session_id)
        .having(func.max(a.t_us) < before_us)
    )
    return sorted(int(s) for (s,) in await conn.execute(newest))


async def _check_exports(conn: AsyncConnection, plan: Plan) -> None:
    c = log_exports.c
    for session, (last, _count) in sorted(plan.sessions.items()):
        found = (
            await conn.execute(
                select(c.id, c.sha256)
                .where(c.session_id == session, c.verified_us.is_not(None), c.last_seq >= last)
                .order_by(c.id.desc())
                .limit(1)
            )
        ).first()
        if found is None:
            plan.unexported.append(session)
        else:
            plan.exports.append((int(found.id), str(found.sha256)))


async def prune(conn: AsyncConnection, plan: Plan) -> Entry:
    """Drop what ``plan`` says (it must have no unexported session); the audit entry to
    append in the same transaction."""
    if plan.unexported:
        raise ValueError("a prune must not drop inputs that no verified export holds")
    days: list[int] = []
    if conn.dialect.name == "postgresql":
        days = await drop_days_before(conn, plan.before_us)
    await conn.execute(delete(input_blocks).where(input_blocks.c.logged_us < plan.before_us))
    await conn.execute(delete(inputs).where(inputs.c.logged_us < plan.before_us))
    if plan.legacy_sessions:
        await conn.execute(
            delete(inputs).where(
                inputs.c.logged_us.is_(None), inputs.c.session_id.in_(plan.legacy_sessions)
            )
        )
    said = {
        "before_us": plan.before_us,
        "rows": plan.rows,
        "sessions": {str(s): last for s, (last, _n) in sorted(plan.sessions.items())},
        "legacy_sessions": plan.legacy_sessions,
        "partitions_dropped": len(days),
        "exports": [{"id": i, "sha256": h} for i, h in plan.exports],
    }
    return Entry(_NO_SESSION, _wall_us(), PRUNED, None, orjson.dumps(said).decode())


def pruned_before(payload: str) -> int | None:
    """The boundary an ``inputs-pruned`` entry records."""
    try:
        value = orjson.loads(payload).get("before_us")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _wall_us() -> int:
    return time.time_ns() // 1000
