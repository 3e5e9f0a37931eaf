"""Readings kept compactly: a batch's accepted readings of one session in one block row.

Readings are the bulk of the log (one a second per pump channel). Kept one row each, a
reading cost ~360-400 bytes: the source URL in every row, the context columns, two
indexes. Here the accepted readings of a batch (per session) become one ``input_blocks``
row - first and last seq, the time range, and a zlib payload of their columns, the
source as a small integer (``input_sources``) - while documentation, rejected inputs and
people's actions stay one ``inputs`` row each, queryable as before.

Nothing is lost: decoding a block gives back each row exactly as the producer added it
(``INPUT_COLUMNS`` order), so the audit chain's digest of a batch's inputs is the same
whichever form holds them, and every reader (``calguard.alerts.inputs_read``) sees one
sequence of ``LoggedInput`` rows, in order of arrival. ``logged_us`` (the commit's wall clock, the
same as the batch's ``inputs`` audit entry's time) is what retention prunes by and what
PostgreSQL partitions ``input_blocks`` by (``calguard.alerts.partitions``).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import orjson
from calguard.alerts.partitions import Partitions
from calguard.alerts.schema import input_blocks, input_sources, inputs
from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "BLOCK_COLUMNS",
    "INPUT_COLUMNS",
    "SUMMARY_BUCKET_US",
    "InputStore",
    "LoggedInput",
    "Prepared",
    "Sources",
    "bed_buckets",
    "decode",
    "encode",
    "is_bulk",
]

# Rows are kept as tuples in this column order (the log's insert order, and the order the
# audit chain digests them in).
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
BLOCK_COLUMNS = (
    "logged_us",
    "session_id",
    "first_seq",
    "last_seq",
    "rows",
    "t_min",
    "t_max",
    "format",
    "beds",
    "payload",
)
_FORMAT = 1
_LEVEL = 6  # zlib: within 10% of level 9's size at a fifth of its cost (~2 us a reading)
#: the report counts bed-days from these buckets (a block keeps its beds per bucket)
SUMMARY_BUCKET_US = 15 * 60 * 1_000_000
# zlib's preset dictionary (format 1): what a small block (a single bay's quarter second:
# a few readings) would otherwise spend its bytes on - the keys and common values of a
# reading's JSON, as the payload holds them. FROZEN: a block of format 1 decodes only
# with these exact bytes (tests/test_storage.py checks their SHA-256); a change is a new
# format, and decoding keeps the old one.
_ZDICT = orjson.dumps(
    [
        [1, 1, 2],
        [1_795_000_000_000_000, 1_000_000, 1_000_000],
        [1, 2, 3],
        [None, None],
        ["P1", "P2"],
        ["A", "B"],
        ["B1", "NICU-01"],
        ["L1", "L2"],
        [
            '{"t":"2026-11-21T08:03:00Z","type":"reading","pump":"P7","channel":"A",'
            '"drug":"Calcium gluconate 10%","concentration":"100 mg/ml","rate":"1.2 ml/h",'
            '"volume_infused":"0.5 ml","status":"infusing","seq":1}',
            '{"t":"2026-11-21T08:03:01.000Z","type":"reading","pump":"P7","channel":"B",'
            '"drug":"Calcium gluconate 10%","rate":"0.80 ml/h","seq":2}',
        ],
        [180, 181],
        [None, None],
    ]
)
_CHUNK = 500  # source texts per lookup (SQLite allows 32,766 parameters)
#: a batch's inputs made ready to insert: (``inputs`` rows, ``input_blocks`` rows)
Prepared = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


class LoggedInput(NamedTuple):
    """One input as read back, whichever form holds it (``id``: the ``inputs`` row's, None
    for a reading in a block)."""

    id: int | None
    session_id: int
    seq: int
    t_us: int | None
    source: str
    line_no: int | None
    status: str
    reason: str | None
    event_type: str | None
    pump: str | None
    channel: str | None
    bed: str | None
    line: str | None
    raw: str
    raw_bytes: int
    raw_sha256: str | None


def is_bulk(row: Sequence[Any]) -> bool:
    """An accepted reading with a time: what goes into blocks."""
    return row[5] == "accepted" and row[7] == "reading" and row[6] is None and row[2] is not None


def encode(
    logged_us: int, session: int, rows: list[tuple[Any, ...]], ids: dict[str, int]
) -> tuple[Any, ...]:
    """One block row (``BLOCK_COLUMNS``) of one session's readings, in seq order."""
    seqs = [r[1] for r in rows]
    times = [r[2] for r in rows]
    columns = [
        _deltas(seqs),
        _deltas(times),
        [ids[r[3]] for r in rows],
        *([r[i] for r in rows] for i in (4, 8, 9, 10, 11, 12, 13, 14)),
    ]
    beds = sorted({(r[10], r[2] // SUMMARY_BUCKET_US) for r in rows if r[10] is not None})
    return (
        logged_us,
        session,
        seqs[0],
        seqs[-1],
        len(rows),
        min(times),
        max(times),
        _FORMAT,
        _compress(orjson.dumps(beds)),
        _compress(orjson.dumps(columns)),
    )


def _compress(data: bytes) -> bytes:
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, zdict=_ZDICT)
    return packer.compress(data) + packer.flush()


def _decompress(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(zlib.MAX_WBITS, zdict=_ZDICT)
    return unpacker.decompress(data) + unpacker.flush()


def decode(
    session: int, payload: bytes, names: dict[int, str], fmt: int = _FORMAT
) -> list[tuple[Any, ...]]:
    """The rows of a block, exactly as they were added (``INPUT_COLUMNS`` order)."""
    if fmt != _FORMAT:  # never guessed at: a reader that cannot decode a block says so
        raise ValueError(f"a block of format {fmt} (this CalGuard reads {_FORMAT}): upgrade")
    seq_d, t_d, src, line_no, pump, channel, bed, line, raw, raw_bytes, sha = orjson.loads(
        _decompress(payload)
    )
    rows = zip(
        _sums(seq_d),
        _sums(t_d),
        src,
        line_no,
        pump,
        channel,
        bed,
        line,
        raw,
        raw_bytes,
        sha,
        strict=True,
    )
    return [
        (session, s, t, names[i], n, "accepted", None, "reading", p, c, b, li, r, rb, h)
        for s, t, i, n, p, c, b, li, r, rb, h in rows
    ]


def bed_buckets(beds: bytes) -> list[tuple[str, int]]:
    """A block's (bed, bucket) pairs (``SUMMARY_BUCKET_US``), without decoding its rows."""
    return [(str(b), int(k)) for b, k in orjson.loads(_decompress(beds))]


def _deltas(values: list[int]) -> list[int]:
    return [values[0], *(b - a for a, b in itertools.pairwise(values))]


def _sums(deltas: list[int]) -> Iterator[int]:
    total = 0
    for d in deltas:
        total += d
        yield total


class Sources:
    """The ``input_sources`` dictionary: source text <-> small integer, cached."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}

    async def id_of(self, engine: AsyncEngine, texts: Iterable[str]) -> dict[str, int]:
        """Ids for ``texts``; unknown ones are added (and committed) first, in a short
        transaction of their own: the dictionary only grows, so an id committed for a batch
        that then fails costs nothing."""
        missing = sorted({t for t in texts if t not in self.ids})
        if missing:
            async with engine.begin() as conn:
                for at in range(0, len(missing), _CHUNK):
                    await self._add(conn, missing[at : at + _CHUNK])
        return self.ids

    async def _add(self, conn: AsyncConnection, texts: list[str]) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        add = dialect.insert(input_sources).on_conflict_do_nothing(index_elements=["source"])
        await conn.execute(add, [{"source": t} for t in texts])
        c = input_sources.c
        for id_, text in await conn.execute(select(c.id, c.source).where(c.source.in_(texts))):
            self.ids[text], self.names[id_] = id_, text

    async def load(self, conn: AsyncConnection) -> dict[int, str]:
        """Every name (readers): the dictionary is small, one row per source ever seen."""
        c = input_sources.c
        for id_, text in await conn.execute(select(c.id, c.source)):
            self.ids[text], self.names[id_] = id_, text
        return self.names


class InputStore:
    """Writes a batch's input rows in their two forms, with one executemany each."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sources = Sources()
        self.partitions = Partitions()
        self.insert_rows = _positional(engine, inputs, (*INPUT_COLUMNS, "logged_us"))
        self.insert_blocks = _positional(engine, input_blocks, BLOCK_COLUMNS)

    async def prepare(
        self, engine: AsyncEngine, rows: list[tuple[Any, ...]], logged_us: int
    ) -> Prepared:
        """(single rows, block rows) to insert, made before the batch's transaction."""
        single: list[tuple[Any, ...]] = []
        bulk: dict[int, list[tuple[Any, ...]]] = {}
        for row in rows:
            if is_bulk(row):
                bulk.setdefault(row[0], []).append(row)
            else:
                single.append((*row, logged_us))
        if not bulk:
            return single, []
        await self.partitions.ahead(engine, logged_us)
        ids = await self.sources.id_of(engine, (r[3] for run in bulk.values() for r in run))
        return single, [encode(logged_us, s, run, ids) for s, run in bulk.items()]

    async def insert(self, conn: AsyncConnection, made: Prepared) -> None:
        single, blocks = made
        if single:
            await conn.exec_driver_sql(self.insert_rows, single)
        if blocks:
            await conn.exec_driver_sql(self.insert_blocks, blocks)


def _positional(engine: AsyncEngine, table: Any, columns: tuple[str, ...]) -> str:
    compiled = insert(table).compile(dialect=engine.dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        raise RuntimeError(f"cannot prepare inserts into {table.name} for {engine.dialect.name}")
    return str(compiled)
