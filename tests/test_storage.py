"""Readings kept compactly (schema version 8), on SQLite and PostgreSQL: every input reads
back exactly as it was added, in order of arrival across both forms; the warm start, the
export and the audit chain see what they saw when every reading was a row; a version 7
log upgrades in place; PostgreSQL keeps the readings in day partitions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from calguard.alerts import blocks
from calguard.alerts.audit import verify_chain
from calguard.alerts.inputs_read import read_inputs
from calguard.alerts.log import AlertLog, input_row, normalise_db_url, session_rows
from calguard.alerts.log_writer import Batch
from calguard.alerts.partitions import DAY_US, day_of, partition_days
from calguard.alerts.schema import MIGRATIONS, input_blocks, inputs, log_identity
from calguard.alerts.sessions import SessionFilter
from calguard.alerts.spool import Spool
from calguard.config import load_library
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_ts
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

T0 = 1_795_000_000_000_000  # 2026-11-18
SOURCE = "mqtt://127.0.0.1:1883#calguard/nicu/pumps/{}/A"


def reading(n: int, pump: str = "P1", **fields: Any) -> InputRecord:
    t_us = T0 + n * 1_000_000
    raw = (
        f'{{"t":"{format_ts(t_us)}","type":"reading","pump":"{pump}","channel":"A",'
        f'"drug":"Calcium gluconate 10%","rate":"0.8{n % 2} ml/h","seq":{n}}}'
    )
    base: dict[str, Any] = {"t_us": t_us, "event_type": "reading", "pump": pump, "channel": "A"}
    status = fields.pop("status", "accepted")
    return InputRecord.from_raw(raw, SOURCE.format(pump), status, **{**base, **fields})


def every_kind() -> list[InputRecord]:
    """Readings (accepted, a duplicate, a rejected one, one not valid UTF-8), documentation,
    a person's action accepted and refused, bytes no driver could use - interleaved."""
    doc = '{"t":"2026-11-18T08:00:00Z","type":"patient","bed":"B1","weight":"1 kg"}'
    ack = '{"t":"2026-11-18T08:00:05Z","type":"ack","alert":"a-000001","by":"rn42"}'
    return [
        InputRecord.from_raw(
            doc, "bedside.jsonl", "accepted", t_us=T0, event_type="patient", bed="B1", line_no=1
        ),
        reading(1, bed="B1", line="L1"),
        reading(2, bed="B1", line="L1"),
        InputRecord.from_raw(
            b'{"rate": "\xff"}',
            SOURCE.format("P1"),
            "rejected",
            reason="not valid UTF-8",
            pump="P1",
            event_type="wire",
        ),
        reading(3, pump="P2"),
        InputRecord.from_raw(ack, "station", "accepted", t_us=T0 + 5_000_000, event_type="ack"),
        reading(2, status="duplicate", reason="seen before"),
        InputRecord.from_raw(
            ack,
            "device",
            "rejected",
            t_us=T0 + 6_000_000,
            event_type="ack",
            reason="an action from a device",
        ),
        InputRecord.from_raw(
            b"\xfe\xff" + b'{"t":1}',
            SOURCE.format("P3"),
            "accepted",
            t_us=T0 + 7_000_000,
            event_type="reading",
            pump="P3",
            channel="A",
        ),
        reading(8, pump="P2", bed="B2"),
    ]


async def write(url: str, records: list[InputRecord], *, site: str = "nicu") -> int:
    async with AlertLog(url) as log:
        session = await log.start_session("live", "test", load_library(), site=site)
        for r in records:
            log.add_input(r)
        await log.flush()
    return session


async def query(url: str, statement: Any) -> list[Any]:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(statement)).all())
    finally:
        await engine.dispose()


async def test_every_kind_of_input_reads_back_exactly_in_order(db_url: str) -> None:
    records = every_kind()
    session = await write(db_url, records)
    _, rows, _ = await session_rows(db_url, session)
    expected = [input_row(session, n, r) for n, r in enumerate(records, 1)]
    assert [tuple(r)[1:] for r in rows] == expected
    # the accepted readings are in blocks; every other input is a row of its own
    (kept,) = await query(db_url, select(func.sum(input_blocks.c.rows)))
    assert kept[0] == sum(
        1 for r in records if r.status == "accepted" and r.event_type == "reading"
    )
    singles = await query(db_url, select(inputs.c.event_type, inputs.c.status))
    assert ("reading", "accepted") not in {tuple(r) for r in singles}
    assert len(singles) == len(records) - kept[0]
    report = await verify_chain(db_url)
    assert report.ok, [c.problems for c in report.failed]
    assert f"{len(records)} row(s) match" in report.checks["inputs"].summary


async def test_warm_start_and_export_read_the_same_as_when_every_reading_was_a_row(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = every_kind() + [reading(n, pump=f"P{n % 4}") for n in range(10, 60)]
    session = await write(db_url, records)
    old_url = f"sqlite:///{tmp_path / 'rows.sqlite3'}"
    with monkeypatch.context() as m:
        m.setattr(blocks, "is_bulk", lambda row: False)
        old_session = await write(old_url, records)
    assert await query(old_url, select(func.count()).select_from(input_blocks)) == [(0,)]
    for url in (db_url, old_url):
        async with AlertLog(url) as log:
            warm = await log.recovery_inputs(T0, T0 + 20_000_000, site="nicu")
        fields = [(r.raw, r.event_type, r.source, r.t_us) for r in warm]
        if url == db_url:
            new_fields = fields
    assert new_fields == fields and len(fields) > 40
    exported = [tuple(r)[2:] for r in (await session_rows(db_url, session))[1]]
    before = [tuple(r)[2:] for r in (await session_rows(old_url, old_session))[1]]
    assert exported == before


async def test_the_order_of_arrival_holds_across_batches_sessions_and_forms(db_url: str) -> None:
    first = await write(db_url, every_kind())
    second = await write(db_url, list(reversed(every_kind())))
    engine = create_async_engine(normalise_db_url(db_url))
    try:
        async with engine.connect() as conn:
            rows = await read_inputs(conn, (), ())
    finally:
        await engine.dispose()
    keys = [(r.session_id, r.seq) for r in rows]
    assert keys == sorted(keys) and {k[0] for k in keys} == {first, second}
    assert len(keys) == 2 * len(every_kind())


async def test_a_version_7_log_with_rows_upgrades_in_place(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(blocks, "is_bulk", lambda row: False)
        old = await write(db_url, every_kind())
    await _back_to_version_7(db_url)
    # read as it is (an export, an audit of a copy): nothing needs version 8 to read it
    assert len((await session_rows(db_url, old))[1]) == len(every_kind())
    report = await verify_chain(db_url)
    assert report.ok, [c.problems for c in report.failed]
    new = await write(db_url, every_kind())  # migrates, then writes blocks
    versions = [v for (v,) in await query(db_url, text("SELECT version FROM calguard_schema"))]
    assert 8 in versions and versions == sorted(versions)
    for session in (old, new):
        _, rows, _ = await session_rows(db_url, session)
        assert [tuple(r)[1:] for r in rows] == [
            input_row(session, n, r) for n, r in enumerate(every_kind(), 1)
        ]
    report = await verify_chain(db_url)
    assert report.ok, [c.problems for c in report.failed]
    async with AlertLog(db_url) as log:
        warm = await log.recovery_inputs(T0, T0, site="nicu")
    assert [r.session_id for r in warm] == sorted(r.session_id for r in warm)
    assert {r.session_id for r in warm} == {old, new}


async def _back_to_version_7(url: str) -> None:
    """What a version 7 log held: no blocks, no sources, no exports, no commit time."""
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.begin() as conn:
            for table in ("input_blocks", "input_sources", "log_exports"):
                await conn.execute(text(f"DROP TABLE {table}"))
            await conn.execute(text("ALTER TABLE inputs DROP COLUMN logged_us"))
            await conn.execute(text("DELETE FROM calguard_schema WHERE version >= 8"))
    finally:
        await engine.dispose()
    assert MIGRATIONS[7].version == 8


@pytest.mark.postgres
async def test_postgresql_keeps_readings_in_day_partitions_and_a_default_one(
    pg_url: str,
) -> None:
    await write(pg_url, every_kind())
    today = day_of(time.time_ns() // 1000)
    engine = create_async_engine(normalise_db_url(pg_url))
    try:
        async with engine.begin() as conn:
            assert await partition_days(conn) == [today, today + DAY_US]
            # a block no day's partition takes (a clock far off) still goes in: the default
            far = today - 400 * DAY_US
            await conn.execute(
                text(
                    "INSERT INTO input_blocks (logged_us, session_id, first_seq, last_seq, rows,"
                    " t_min, t_max, format, beds, payload) SELECT :far, session_id, first_seq,"
                    " last_seq, rows, t_min, t_max, format, beds, payload FROM input_blocks"
                    " LIMIT 1"
                ),
                {"far": far},
            )
            where = await conn.execute(
                text("SELECT tableoid::regclass::text FROM input_blocks WHERE logged_us = :far"),
                {"far": far},
            )
            assert where.scalar() == "input_blocks_default"
            today_rows = await conn.execute(
                text("SELECT count(*) FROM input_blocks_p" + format_ts(today)[:10].replace("-", ""))
            )
            assert today_rows.scalar() >= 1
    finally:
        await engine.dispose()


async def test_a_batch_spooled_while_the_database_was_down_drains_into_blocks(
    db_url: str, tmp_path: Path
) -> None:
    """The spool keeps a batch's rows as the producer added them (readings one by one);
    drained, they are written as a live batch is: readings in a block, the rest as rows."""
    spool_root = tmp_path / "spool"
    async with AlertLog(db_url, spool_dir=spool_root) as log:
        session = await log.start_session("live", "before the outage", load_library())
    (identity,) = await query(db_url, select(log_identity.c.id))
    rows = [input_row(session, n, r) for n, r in enumerate(every_kind(), 1)]
    spool = Spool(spool_root / identity.id, 1 << 20)
    spool.open()
    spool.append(Batch(1, rows, [], [], (len(rows), 0, 0)).payload("0" * 32))
    spool.close()
    async with AlertLog(db_url, spool_dir=spool_root):  # drains the spool first
        pass
    assert not any(spool_root.rglob("*.spool"))
    _, read, _ = await session_rows(db_url, session)
    assert [tuple(r)[1:] for r in read] == rows
    assert await query(db_url, select(func.count()).select_from(input_blocks)) == [(1,)]
    report = await verify_chain(db_url)
    assert report.ok, [c.problems for c in report.failed]


async def test_the_bed_history_finds_the_readings_kept_in_blocks(db_url: str) -> None:
    """The station's 24-hour chart: the first and last reading of each minute of a channel,
    whichever form holds them."""
    from calguard.web.history import BedHistory, _block_readings

    minute = 60_000_000
    await write(db_url, [reading(n) for n in range(0, 150, 10)] + [reading(5, pump="P9")])
    h = BedHistory("B1", T0, T0 + 3 * minute, 0.0, 0.0, "", None)
    engine = create_async_engine(normalise_db_url(db_url))
    try:
        async with engine.connect() as conn:
            found = await _block_readings(conn, {("P1", "A")}, h, SessionFilter())
    finally:
        await engine.dispose()
    seconds = sorted(((r.t_us or 0) - T0) // 1_000_000 for r in found)
    # T0 is 40 s into a minute: minutes [-40, 20), [20, 80), [80, 140), [140, 200); no P9
    assert seconds == [0, 10, 20, 70, 80, 130, 140]


def test_the_preset_dictionary_of_format_1_never_changes() -> None:
    """Blocks of format 1 decode only with these exact bytes: a change is a new format."""
    import hashlib

    digest = hashlib.sha256(blocks._ZDICT).hexdigest()
    assert digest == "bcc123b02935f8f651de75108d60643f4390d5ff6fe49de62fb29b9c9e10f782"
