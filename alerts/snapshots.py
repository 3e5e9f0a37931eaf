"""Snapshots in the durable log: the latest one is where a restart begins.

The live monitor takes a snapshot (``calguard.monitor.snapshot``: the engine's and the
alarm layer's state) every few minutes and at a clean stop, between two inputs, and writes
it here with the session and the seq of the last input it includes. A warm start then
restores the latest snapshot of its site's live sessions and replays only the inputs
logged after it (``calguard.recovery``), in seconds whatever the log holds.

A snapshot is a convenience, never the record: the inputs are. So a snapshot that cannot
be written is logged and tried again next period (monitoring goes on), and one that
cannot be read is refused and the warm start replays the inputs as it always did.

The payload is the snapshot's JSON, zlib-compressed; serialising and compressing run in a
worker thread, off the event loop (the dict shares nothing with the running engine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from calguard.alerts.blocks import INPUT_COLUMNS, LoggedInput, Sources
from calguard.alerts.blocks import decode as decode_block
from calguard.alerts.log import AlertLog
from calguard.alerts.schema import input_blocks, inputs, sessions, snapshots
from calguard.monitor.snapshot import VERSION, SnapshotError
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "MAX_INPUTS",
    "PERIOD_S",
    "PendingSnapshot",
    "SnapshotRecord",
    "count_inputs_after",
    "decode",
    "encode",
    "inputs_after",
    "latest_snapshot",
    "save_snapshot",
    "snapshot_by_id",
    "snapshot_loop",
    "write_snapshot",
]

log = logging.getLogger(__name__)

#: how often the live monitor takes one (CALGUARD_SNAPSHOT_MINUTES; 0 takes none) ...
PERIOD_S = float(os.environ.get("CALGUARD_SNAPSHOT_MINUTES", "5")) * 60
#: ... or sooner, once this many inputs came since the last: what a restart replays after
#: it is bounded by inputs, not minutes (5 minutes of 5,000 channels are 1.5 million)
MAX_INPUTS = int(os.environ.get("CALGUARD_SNAPSHOT_INPUTS", "100000"))
_MAX_PAYLOAD = 512 << 20  # a payload that inflates beyond this is refused, not read


@dataclass(frozen=True)
class SnapshotRecord:
    """One logged snapshot: where it stands in the log, and its compressed payload."""

    id: int
    session_id: int
    seq: int
    t_us: int
    library_version: str
    format_version: int
    payload: bytes

    def snapshot(self) -> dict[str, Any]:
        """The payload as a snapshot dict; ``SnapshotError`` if it cannot be read."""
        if self.format_version != VERSION:
            raise SnapshotError(f"format version {self.format_version}; this reads {VERSION}")
        return decode(self.payload)

    def marker(self) -> dict[str, Any]:
        """What a warm start's marker says of the snapshot it began from."""
        return {
            "id": self.id,
            "session": self.session_id,
            "seq": self.seq,
            "t_us": self.t_us,
            "library": self.library_version,
            "format": self.format_version,
        }


@dataclass(frozen=True)
class PendingSnapshot:
    """A snapshot taken between two inputs, not yet serialised: the session and the seq of
    the last input it includes."""

    snapshot: dict[str, Any]
    session_id: int
    seq: int


def encode(snapshot: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps(snapshot), 3)


def decode(payload: bytes) -> dict[str, Any]:
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(payload, _MAX_PAYLOAD)
        if inflater.unconsumed_tail:
            raise SnapshotError(f"a snapshot larger than {_MAX_PAYLOAD >> 20} MB")
        data = orjson.loads(raw)
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"an unreadable snapshot payload: {exc}") from exc
    if not isinstance(data, dict):
        raise SnapshotError("a snapshot payload that is not an object")
    return data


async def write_snapshot(alert_log: AlertLog, pending: PendingSnapshot) -> int:
    """Serialise (in a thread) and write one snapshot; its id. ``SQLAlchemyError`` if the
    database cannot take it now (the caller logs it and tries again later)."""
    payload = await asyncio.to_thread(encode, pending.snapshot)
    # the inputs it holds first: a snapshot ahead of its inputs in the log would, after a
    # crash, count readings the broker sends again as duplicates that no row ever held
    await alert_log.flush()
    engine = alert_log._engine  # one row, beside the log writer's batches: a direct write
    assert engine is not None, "use AlertLog as an async context manager"
    site = select(sessions.c.site).where(sessions.c.id == pending.session_id).scalar_subquery()
    row = {
        "session_id": pending.session_id,
        "seq": pending.seq,
        "t_us": pending.snapshot["now"],
        "site": site,
        "format_version": pending.snapshot["version"],
        "library_version": pending.snapshot["library"],
        "created_us": time.time_ns() // 1000,
        "payload": payload,
    }
    async with engine.begin() as conn:
        if alert_log.fence is not None:  # under a lease: never once another runs the unit
            await alert_log.fence(conn)
        result = await conn.execute(insert(snapshots).values(row).returning(snapshots.c.id))
        snapshot_id = int(result.scalar_one())
        # the session's earlier ones are of no more use: a restart begins from the latest
        # (the last one of each session stays: a later session's warm start may name it)
        await conn.execute(
            delete(snapshots).where(
                snapshots.c.session_id == pending.session_id, snapshots.c.id < snapshot_id
            )
        )
        return snapshot_id


_COLUMNS = (
    snapshots.c.id,
    snapshots.c.session_id,
    snapshots.c.seq,
    snapshots.c.t_us,
    snapshots.c.library_version,
    snapshots.c.format_version,
    snapshots.c.payload,
)


async def latest_snapshot(
    alert_log: AlertLog, *, site: str | None = None, before_session: int | None = None
) -> SnapshotRecord | None:
    """The latest snapshot of ``site``'s live sessions (before ``before_session``), if any.
    A log without the table (an older schema read as is) has none."""
    live = alert_log._own_live(site, before_session)
    query = (
        select(*_COLUMNS)
        .where(snapshots.c.session_id.in_(live))
        .order_by(snapshots.c.id.desc())
        .limit(1)
    )
    return await _one(alert_log, query)


async def snapshot_by_id(alert_log: AlertLog, snapshot_id: int) -> SnapshotRecord | None:
    return await _one(alert_log, select(*_COLUMNS).where(snapshots.c.id == snapshot_id))


async def _one(alert_log: AlertLog, query: Any) -> SnapshotRecord | None:
    engine = alert_log._engine
    assert engine is not None, "use AlertLog as an async context manager"
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(query)).first()
    except SQLAlchemyError as exc:
        log.warning("cannot read the snapshots of %s: %s", alert_log.display_url, exc)
        return None
    return None if row is None else SnapshotRecord(*row)


# -- the inputs after a snapshot ---------------------------------------------------------------


def _where(
    alert_log: AlertLog,
    after: tuple[int, int],
    since_us: int,
    site: str | None,
    before_session: int | None,
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Where the inputs after (session, seq) are, in the log's two forms: single rows, and
    blocks of readings (calguard.alerts.blocks). ``since_us`` bounds both by time first (the
    indexes), a margin before the snapshot's."""
    session, seq = after
    live = alert_log._own_live(site, before_session)
    i, b = inputs.c, input_blocks.c
    single = (
        i.session_id.in_(live),
        i.event_type.not_in(("wire", "warm_start")),
        i.t_us >= since_us,
        (i.session_id > session) | ((i.session_id == session) & (i.seq > seq)),
    )
    blocks = (
        b.session_id.in_(live),
        b.t_max >= since_us,
        (b.session_id > session) | ((b.session_id == session) & (b.last_seq > seq)),
    )
    return single, blocks


async def count_inputs_after(
    alert_log: AlertLog,
    after: tuple[int, int],
    since_us: int,
    *,
    site: str | None = None,
    before_session: int | None = None,
) -> int:
    """About how many inputs ``inputs_after`` gives (its progress lines' total)."""
    engine = alert_log._engine
    assert engine is not None, "use AlertLog as an async context manager"
    single, blocks = _where(alert_log, after, since_us, site, before_session)
    async with engine.connect() as conn:
        n = (await conn.execute(select(func.count()).where(*single))).scalar_one()
        rows = input_blocks.c.rows
        m = (await conn.execute(select(func.coalesce(func.sum(rows), 0)).where(*blocks))).scalar()
    return int(n) + int(m or 0)


async def inputs_after(
    alert_log: AlertLog,
    after: tuple[int, int],
    since_us: int,
    *,
    site: str | None = None,
    before_session: int | None = None,
) -> AsyncIterator[LoggedInput]:
    """The inputs logged after a snapshot's (session, seq), in order of arrival (session,
    then seq) across both forms, streamed: a warm start holds a block at a time, not the
    log."""
    engine = alert_log._engine
    assert engine is not None, "use AlertLog as an async context manager"
    single, blocks = _where(alert_log, after, since_us, site, before_session)
    i, b = inputs.c, input_blocks.c
    single_q = (
        select(i.id, *(i[n] for n in INPUT_COLUMNS))
        .where(*single)
        .order_by(i.session_id, i.seq)
        .execution_options(yield_per=1000)
    )
    block_q = (
        select(b.session_id, b.payload)
        .where(*blocks)
        .order_by(b.session_id, b.first_seq)
        .execution_options(yield_per=4)
    )
    async with engine.connect() as names, engine.connect() as a, engine.connect() as c:
        sources = await Sources().load(names)
        rows = await a.stream(
            single_q.order_by(i.session_id, i.seq).execution_options(yield_per=1000)
        )
        packed = await c.stream(
            block_q.order_by(b.session_id, b.first_seq).execution_options(yield_per=4)
        )
        try:
            readings = _unpacked(packed, sources, after, since_us)
            async for row in _merged((LoggedInput(*r) async for r in rows), readings):
                yield row
        finally:
            await rows.close()
            await packed.close()


async def _unpacked(
    blocks: Any, sources: dict[int, str], after: tuple[int, int], since_us: int
) -> AsyncIterator[LoggedInput]:
    async for session, payload in blocks:
        for r in decode_block(session, payload, sources):
            row = LoggedInput(None, *r)
            if (row.session_id, row.seq) > after and row.t_us is not None and row.t_us >= since_us:
                yield row


async def _merged(
    a: AsyncIterator[LoggedInput], b: AsyncIterator[LoggedInput]
) -> AsyncIterator[LoggedInput]:
    """Two streams in (session, seq) order, as one."""
    x, y = await anext(a, None), await anext(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and (x.session_id, x.seq) < (y.session_id, y.seq)):
            assert x is not None
            yield x
            x = await anext(a, None)
        else:
            yield y
            y = await anext(b, None)


async def snapshot_loop(
    alert_log: AlertLog,
    take: Callable[[], PendingSnapshot | None],
    period_s: float = PERIOD_S,
    *,
    inputs: Callable[[], int] = lambda: 0,
    max_inputs: int = MAX_INPUTS,
) -> None:
    """Every ``period_s``, or once ``max_inputs`` more inputs were processed (``inputs``:
    how many so far), take a snapshot (synchronously, between two inputs) and write it. A
    failure is logged, never raised: monitoring goes on, and the next turn tries again."""
    last_t, last_n = time.monotonic(), inputs()
    while True:
        await asyncio.sleep(min(period_s, 1.0))
        n = inputs()
        if time.monotonic() - last_t < period_s and n - last_n < max_inputs:
            continue
        last_t, last_n = time.monotonic(), n
        await save_snapshot(alert_log, take)


async def save_snapshot(alert_log: AlertLog, take: Callable[[], PendingSnapshot | None]) -> None:
    """One snapshot, taken now and written; any failure logged, never raised."""
    try:
        pending = take()
        if pending is None:
            return
        started = time.perf_counter()
        snapshot_id = await write_snapshot(alert_log, pending)
        log.info(
            "snapshot %d written (session %d, seq %d) in %.2f s",
            snapshot_id,
            pending.session_id,
            pending.seq,
            time.perf_counter() - started,
        )
    except asyncio.CancelledError:
        raise
    except Exception:  # a snapshot is a convenience: it never stops monitoring
        log.exception("a snapshot could not be taken or written; trying again next period")
