"""Reading the log's inputs back from both forms: ``inputs`` rows and readings in blocks
(``calguard.alerts.blocks``), as one sequence of ``LoggedInput`` rows.

``read_inputs`` (the warm start, an export, the station's chart) returns them in order of
arrival - session, then seq; ``stream_inputs`` (the audit verifier) streams every input in
commit order, a block at a time, so that memory stays small on a log of years. A log not
yet upgraded to schema version 8 (opened read-only: an export, the audit of a copy) is
read as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from calguard.alerts.blocks import INPUT_COLUMNS, LoggedInput, Sources, decode
from calguard.alerts.schema import input_blocks, inputs
from sqlalchemy import false, inspect, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["has_blocks", "merge_in_order", "read_inputs", "stream_inputs"]


async def read_inputs(
    conn: AsyncConnection,
    single_where: Sequence[Any],
    block_where: Sequence[Any],
    keep: Any = None,
) -> list[LoggedInput]:
    """Inputs from both forms, in order of arrival (session, then seq): ``inputs`` rows
    matching ``single_where``, and the readings of blocks matching ``block_where`` that
    ``keep`` (a predicate on a ``LoggedInput``) keeps."""
    cols = [inputs.c.id, *(inputs.c[n] for n in INPUT_COLUMNS)]
    single = [LoggedInput(*r) for r in await conn.execute(select(*cols).where(*single_where))]
    if not await has_blocks(conn):  # a log not yet upgraded to version 8 (read only)
        return merge_in_order(single)
    b = input_blocks.c
    query = (
        select(b.session_id, b.payload, b.format)
        .where(*block_where)
        .order_by(b.session_id, b.first_seq)
    )
    blocks = (await conn.execute(query)).all()
    names = await Sources().load(conn) if blocks else {}
    read: list[LoggedInput] = []
    for session, payload, fmt in blocks:
        rows = (LoggedInput(None, *r) for r in decode(session, payload, names, fmt))
        read.extend(rows if keep is None else filter(keep, rows))
    return merge_in_order(single, read)


async def has_blocks(conn: AsyncConnection) -> bool:
    """Whether the log is of schema version 8 or later (``input_blocks``, ``logged_us``)."""
    return bool(await conn.run_sync(lambda sync: inspect(sync).has_table("input_blocks")))


def merge_in_order(*parts: list[LoggedInput]) -> list[LoggedInput]:
    merged = [row for part in parts for row in part]
    merged.sort(key=lambda r: (r.session_id, r.seq))
    return merged


@contextlib.asynccontextmanager
async def stream_inputs(engine: AsyncEngine) -> AsyncIterator[AsyncIterator[LoggedInput]]:
    """Every input, both forms, in commit order (the audit verifier walks them beside the
    chain): ``inputs`` rows by id and blocks by id, merged by the time of their commit
    (rows from before version 8, without one, first)."""
    b = input_blocks.c
    async with engine.connect() as names_conn, engine.connect() as a, engine.connect() as c:
        sources = Sources()
        upgraded = await has_blocks(names_conn)
        logged = inputs.c.logged_us if upgraded else literal(None).label("logged_us")
        cols = [inputs.c.id, *(inputs.c[n] for n in INPUT_COLUMNS), logged]
        blocks_query: Any = select(b.logged_us, b.session_id, b.payload, b.format).order_by(b.id)
        if upgraded:
            await sources.load(names_conn)
        else:  # a log not yet upgraded to version 8 (read only): no blocks
            blocks_query = select(literal(0)).where(false())
        single = await a.stream(select(*cols).order_by(inputs.c.id))
        blocks = await c.stream(blocks_query)
        try:
            yield _merged(single.__aiter__(), blocks.__aiter__(), sources, names_conn)
        finally:
            await single.close()
            await blocks.close()


async def _merged(
    single: AsyncIterator[Any], blocks: AsyncIterator[Any], sources: Sources, conn: AsyncConnection
) -> AsyncIterator[LoggedInput]:
    row = await anext(single, None)
    block = await anext(blocks, None)
    while row is not None or block is not None:
        if row is not None and (
            block is None or row.logged_us is None or row.logged_us <= block[0]
        ):
            yield LoggedInput(*tuple(row)[:-1])
            row = await anext(single, None)
            continue
        assert block is not None
        try:
            decoded = decode(block.session_id, block.payload, sources.names, block.format)
        except KeyError:  # a source added since the names were read
            names = await sources.load(conn)
            decoded = decode(block.session_id, block.payload, names, block.format)
        for r in decoded:
            yield LoggedInput(None, *r)
        block = await anext(blocks, None)
