"""The tamper-evident audit chain: every alert transition and every user action, each row
hashing the one before it.

    hash(n) = SHA-256("n|t_us|kind|actor|payload|hash(n-1)", "|" being a newline)
    hash(0) = 64 zeros

Rows are numbered without gaps. Changing, deleting or inserting a row breaks the chain at
that row, and ``verify`` names the first broken link. What a chain cannot show by itself is
rows cut from its end: ``verify`` prints the head (number and hash) so that it can be kept
elsewhere - in the shift report, on paper - and compared later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from calguard.alerts.schema import audit_chain
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["GENESIS", "AuditLink", "ChainReport", "link_hash", "verify_chain", "verify_rows"]

GENESIS = "0" * 64


def link_hash(seq: int, t_us: int, kind: str, actor: str | None, payload: str, prev: str) -> str:
    text = f"{seq}\n{t_us}\n{kind}\n{actor or ''}\n{payload}\n{prev}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditLink:
    seq: int
    session_id: int
    t_us: int
    kind: str
    actor: str | None
    payload: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_seq: int
    head_hash: str
    broken_at: int | None = None  # the seq of the first broken link
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_rows(rows: Iterable[AuditLink]) -> ChainReport:
    prev, expected, count = GENESIS, 1, 0
    for row in rows:
        count += 1
        if row.seq != expected:
            problem = f"entry {expected} is missing (the next one is {row.seq}): rows deleted"
            return ChainReport(count, expected - 1, prev, expected, problem)
        if row.prev_hash != prev:
            problem = (
                f"entry {row.seq} does not follow entry {row.seq - 1}: "
                "a row was deleted, inserted or rewritten before it"
            )
            return ChainReport(count, row.seq - 1, prev, row.seq, problem)
        actual = link_hash(row.seq, row.t_us, row.kind, row.actor, row.payload, row.prev_hash)
        if actual != row.hash:
            problem = f"entry {row.seq} was modified: its content does not match its hash"
            return ChainReport(count, row.seq - 1, prev, row.seq, problem)
        prev, expected = row.hash, expected + 1
    return ChainReport(count, expected - 1, prev)


async def verify_chain(url: str) -> ChainReport:
    """Walk the chain of the database at ``url`` in order."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.stream(select(audit_chain).order_by(audit_chain.c.seq))
            rows = [AuditLink(**dict(r._mapping)) async for r in result]
    finally:
        await engine.dispose()
    return verify_rows(rows)
