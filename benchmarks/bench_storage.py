"""Bytes and writer CPU per reading in the log: one row per reading (before #12) against
readings in compact blocks (schema version 8), on SQLite and PostgreSQL.

    python benchmarks/bench_storage.py [--readings 20000] [--channels 400] [--repeat 3]
        [--batch 5000] [--pg postgresql://postgres@127.0.0.1:5432/test] [--only sqlite]

Workload: CHANNELS pump channels at 1 Hz on MQTT (one source per topic), READINGS accepted
readings in batches of BATCH (5,000: the log's batch size, a busy unit; ~4: a single bay
flushed every quarter second), added to an ``AlertLog`` as the pipeline adds them and
flushed. ``before`` stores every reading as an ``inputs`` row (the
v7 form, its two indexes included), ``after`` as the writer does now.

  bytes/reading  the pages of inputs, input_blocks (PostgreSQL: all its partitions) and
                 input_sources, their indexes (and TOAST) included, over an empty log:
                 SQLite's dbstat, PostgreSQL's pg_total_relation_size
  CPU/reading    this process's CPU (the producer's add_input, the writer: encoding,
                 the driver) over READINGS; PostgreSQL's own CPU is not counted

Medians of REPEAT runs. Numbers depend on the machine's load: they are printed, never
asserted (tests/test_storage.py checks the behaviour).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.alerts import blocks
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.config import load_library
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import SECOND_US, format_ts, parse_ts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

_START = parse_ts("2026-11-29T08:00:00Z")
# the inputs' tables and their indexes (the audit chain's entry per batch is not counted:
# it is the same in both forms, and a matter of the batch size)
_SQLITE_SIZE = """
SELECT coalesce(sum(pgsize), 0) FROM dbstat
WHERE name LIKE 'input%' OR name LIKE 'ix_input%' OR name LIKE 'sqlite_autoindex_input%'
"""
_PG_SIZE = """
SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
FROM (SELECT relid FROM pg_partition_tree('input_blocks')
      UNION ALL SELECT 'inputs'::regclass UNION ALL SELECT 'input_sources'::regclass) t
"""


def records(readings: int, channels: int) -> list[InputRecord]:
    out = []
    for i in range(readings):
        n, second = i % channels, i // channels
        pump, bed = f"P{n // 2:04d}", f"NICU-{n // 4:03d}"
        channel = "AB"[n % 2]
        t_us = _START + second * SECOND_US + n * 997
        rate = f"{0.8 + (second % 3) * 0.01:.2f} ml/h"
        raw = {
            "t": format_ts(t_us),
            "type": "reading",
            "pump": pump,
            "channel": channel,
            "drug": "Calcium gluconate 10%",
            "rate": rate,
            "volume_infused": f"{second * 0.0002:.4f} ml",
            "seq": second,
        }
        source = f"mqtt://broker.hospital.example:8883#calguard/nicu/pumps/{pump}/{channel}"
        out.append(
            InputRecord.from_raw(
                orjson.dumps(raw),
                source,
                "accepted",
                t_us=t_us,
                event_type="reading",
                pump=pump,
                channel=channel,
                bed=bed,
                line=f"L{n % 3 + 1}",
            )
        )
    return out


async def write(url: str, recs: list[InputRecord], data_dir: Path, batch: int) -> float:
    """The log's CPU for ``recs`` (seconds of this process)."""
    library = load_library()
    async with AlertLog(url, spool_dir=data_dir / "spool", audit_key=data_dir / "key") as log:
        await log.start_session("live", "bench", library, site="bench")
        start = time.process_time()
        for at in range(0, len(recs), batch):
            for r in recs[at : at + batch]:
                log.add_input(r)
            await log.flush()
        return time.process_time() - start


async def used_bytes(url: str) -> int:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                return int((await conn.execute(text(_PG_SIZE))).scalar_one())
            return int((await conn.execute(text(_SQLITE_SIZE))).scalar_one())
    finally:
        await engine.dispose()


async def pg_database(admin: str, name: str, *, drop: bool = False) -> str:
    engine = create_async_engine(normalise_db_url(admin), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            verb = (
                f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                if drop
                else f"CREATE DATABASE {name}"
            )
            await conn.execute(text(verb))
    finally:
        await engine.dispose()
    return admin.rsplit("/", 1)[0] + f"/{name}"


async def one_run(
    kind: str, form: str, recs: list[InputRecord], pg: str, batch: int
) -> tuple[float, float]:
    """(bytes, CPU seconds) per reading of one run in a fresh log."""
    bulk = blocks.is_bulk
    if form == "before":
        blocks.is_bulk = lambda row: False  # every reading a row, as before version 8
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        os.environ["CALGUARD_DATA_DIR"] = tmp
        name = f"bench_storage_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{data_dir / 'log.sqlite3'}" if kind == "sqlite" else ""
        try:
            if kind == "postgresql":
                url = await pg_database(pg, name)
            await write(url, recs[:1], data_dir, batch)  # the empty log, with a session
            empty = await used_bytes(url)
            cpu = await write(url, recs, data_dir, batch)
            size = await used_bytes(url) - empty
        finally:
            blocks.is_bulk = bulk
            if kind == "postgresql":
                await pg_database(pg, name, drop=True)
    return size / len(recs), cpu / len(recs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=5000, help="readings per flush (a single bay: ~4)"
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # not each fresh log's "a new audit key"
    recs = records(args.readings, args.channels)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"{args.readings} readings, {args.channels} channels, {args.batch} a batch, "
        f"median of {args.repeat}"
    )
    print(f"{'database':<12}{'form':<8}{'bytes/reading':>15}{'CPU us/reading':>16}")
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for kind in ("sqlite", "postgresql"):
        if args.only and kind != args.only:
            continue
        for form in ("before", "after"):
            runs = [
                asyncio.run(one_run(kind, form, recs, args.pg, args.batch))
                for _ in range(args.repeat)
            ]
            size = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            results[kind, form] = (size, cpu)
            print(f"{kind:<12}{form:<8}{size:>15.1f}{cpu * 1e6:>16.1f}")
        before, after = results[kind, "before"], results[kind, "after"]
        print(
            f"{kind:<12}ratio   {after[0] / before[0]:>15.3f}{after[1] / before[1]:>16.3f}"
            "   (after / before)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
