"""The durable log on SQLite and on PostgreSQL: every input with its fate, every alert
transition, the library version; flushed on exit; migrations upgrade without loss."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from calguard.alerts.blocks import LoggedInput
from calguard.alerts.inputs_read import read_inputs
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.schema import (
    MIGRATIONS,
    alert_transitions,
    library_versions,
    metadata,
    sessions,
)
from calguard.config import load_library
from calguard.monitor.errors import LogError
from sqlalchemy import create_engine, func, inspect, select, text

from calguard.replay import replay

EXAMPLE = (Path(__file__).parent.parent / "examples" / "quickstart.jsonl").read_bytes()
BAD_LINES = (
    b'{"t":"2026-11-21T08:04:00Z","type":"reading","pump":"P7","rate":"30"}\n'
    b"not json at all\n"
    b'{"t":"2026-11-21T08:03:10Z","type":"reading","pump":"P7","channel":"A",'
    b'"drug":"Calcium gluconate 10%","rate":"180 ml/h","seq":2}\n'
)


async def query(url: str, statement):  # type: ignore[no-untyped-def]
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            return (await conn.execute(statement)).all()
    finally:
        await engine.dispose()


async def logged_inputs(url: str) -> list[LoggedInput]:
    """Every input, whichever form holds it (a reading in a block, or a row)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            return await read_inputs(conn, (), ())
    finally:
        await engine.dispose()


async def replay_into(url: str, data: bytes) -> tuple[list[str], int | None]:
    out = io.StringIO()
    async with AlertLog(url) as log:
        summary = await replay(
            io.BytesIO(data), source="test.jsonl", library=load_library(), out=out, log=log
        )
    return out.getvalue().splitlines(), summary.session_id


async def test_every_input_and_transition_is_logged(db_url: str) -> None:
    lines, session = await replay_into(db_url, EXAMPLE + BAD_LINES)
    rows = await logged_inputs(db_url)
    assert [r.line_no for r in rows] == list(range(1, 11))
    statuses = [r.status for r in rows]
    assert statuses == ["accepted"] * 7 + ["rejected", "rejected", "duplicate"]
    assert (
        "bare number" in rows[7].reason and rows[7].pump == "P7" and rows[7].event_type == "reading"
    )
    assert "not valid JSON" in rows[8].reason
    assert "duplicate" in rows[9].reason
    logged = await query(
        db_url, select(alert_transitions.c.alert_line).order_by(alert_transitions.c.seq)
    )
    assert [r.alert_line for r in logged] == lines
    assert any(json.loads(line)["rule"] == "telemetry-invalid" for line in lines)
    versions = await query(db_url, select(library_versions.c.version, library_versions.c.content))
    assert (
        versions[0].version == load_library().version
        and "[rules.rate-volume]" in versions[0].content
    )
    (sess,) = await query(db_url, select(sessions).where(sessions.c.id == session))
    assert (
        sess.mode == "replay"
        and sess.ended_us is not None
        and sess.library_version == versions[0].version
    )


async def test_a_second_run_appends_and_the_schema_is_migrated_once(db_url: str) -> None:
    await replay_into(db_url, EXAMPLE)
    await replay_into(db_url, EXAMPLE)
    (count,) = await query(db_url, select(func.count()).select_from(sessions))
    assert count[0] == 2
    versions = await query(db_url, text("SELECT version FROM calguard_schema"))
    assert [v[0] for v in versions] == [m.version for m in MIGRATIONS]
    (transitions,) = await query(db_url, select(func.count()).select_from(alert_transitions))
    assert transitions[0] == 2 * 20  # 7 raised and 13 alarm-layer escalations, twice


async def test_monitors_starting_together_on_a_new_log_all_start(db_url: str) -> None:
    """Several monitors opening one new log at once (a hospital's units after a power
    cut): one migrates, each records the library version or finds it, each gets a session."""
    import asyncio

    library = load_library()

    async def start() -> int:
        async with AlertLog(db_url) as log:
            return await log.start_session("live", "together", library)

    ids = await asyncio.gather(*(start() for _ in range(4)))
    assert len(set(ids)) == 4
    (versions,) = await query(db_url, select(func.count()).select_from(library_versions))
    assert versions[0] == 1


async def test_everything_that_opens_a_new_log_at_once_migrates_it_once(db_url: str) -> None:
    """A monitor, the accounts (a login) and the library store (a pharmacist) may open a
    log nobody has opened yet at the same instant: each takes the one migration lock."""
    import asyncio

    from calguard.alerts.accounts import Accounts
    from calguard.alerts.library_store import LibraryStore

    async def monitor() -> None:
        async with AlertLog(db_url):
            pass

    async def accounts() -> None:
        async with Accounts(db_url):
            pass

    async def store() -> None:
        async with LibraryStore(db_url):
            pass

    await asyncio.gather(monitor(), accounts(), store(), monitor(), accounts(), store())
    versions = await query(db_url, text("SELECT version FROM calguard_schema"))
    assert [v[0] for v in versions] == [m.version for m in MIGRATIONS]


async def test_the_migrated_schema_is_the_declared_schema(db_url: str) -> None:
    await replay_into(db_url, b"")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(normalise_db_url(db_url))
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda sync: {
                t: {c["name"] for c in inspect(sync).get_columns(t)} for t in metadata.tables
            }
        )
    await engine.dispose()
    assert columns == {
        name: {c.name for c in table.columns} for name, table in metadata.tables.items()
    }


async def test_batches_are_flushed_on_exit_even_when_small(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    async with AlertLog(url, batch_size=100_000, flush_interval=3600) as log:
        await replay(
            io.BytesIO(EXAMPLE), source="x", library=load_library(), out=io.StringIO(), log=log
        )
    assert len(await logged_inputs(url)) == 7


async def test_back_pressure_keeps_memory_bounded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    from calguard.simulators.shift import day_shift

    data = "".join(json.dumps(e) + "\n" for e in day_shift()).encode()
    async with AlertLog(url, batch_size=100, max_pending=200) as log:
        await replay(
            io.BytesIO(data), source="x", library=load_library(), out=io.StringIO(), log=log
        )
        assert log.pending == 0
    assert len(await logged_inputs(url)) == len(day_shift())


async def test_an_unreachable_database_is_a_clear_log_error() -> None:
    with pytest.raises(LogError, match="cannot open the log database"):
        async with AlertLog("postgresql://nobody@127.0.0.1:1/none"):
            pass


async def test_a_newer_schema_is_not_written_to(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await replay_into(url, b"")
    sync = create_engine(url)
    with sync.begin() as conn:
        conn.execute(text("INSERT INTO calguard_schema VALUES (99, 'from the future', 0)"))
    sync.dispose()
    with pytest.raises(LogError, match="newer than this CalGuard knows"):
        async with AlertLog(url):
            pass


def test_plain_urls_get_the_async_driver() -> None:
    assert normalise_db_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalise_db_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_db_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
