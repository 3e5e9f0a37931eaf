"""The log through a database outage, in process, on a private PostgreSQL stopped and
started by the test: batches spool in order and drain when it returns, a batch committed
and spooled too is written once, inputs are acknowledged only once durable, and a monitor
whose log cannot be written keeps alarming and says so (``log-unavailable``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from calguard.alerts import log as log_module
from calguard.alerts import log_writer
from calguard.alerts.audit import verify_chain
from calguard.alerts.log import AlertLog, normalise_db_url, session_rows
from calguard.alerts.schema import audit_chain, inputs, sessions
from calguard.config import load_library
from calguard.drivers.base import Inbound
from calguard.drivers.clock import SystemClock
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.errors import EventError
from calguard.monitor.events import MonitorStatus, parse_event
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_ts
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.app import Monitor
from calguard.recovery import warm_start
from calguard.replay import replay
from tests.live import admission
from tests.pgcluster import PgCluster

CA = "Calcium gluconate 20 mg/ml"


def record(n: int) -> InputRecord:
    raw = orjson.dumps({"t": "2026-11-21T08:00:00Z", "type": "reading", "pump": "P1", "seq": n})
    return InputRecord.from_raw(raw, "test", "accepted", event_type="reading", pump="P1")


async def rows(url: str, statement: Any) -> list[Any]:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(statement)).all())
    finally:
        await engine.dispose()


async def logged_seqs(url: str) -> list[int]:
    found = await rows(url, select(inputs.c.raw).order_by(inputs.c.id))
    return [orjson.loads(r.raw)["seq"] for r in found]


@contextlib.asynccontextmanager
async def held_up(url: str) -> AsyncIterator[None]:
    """Another session holds the inputs table: the log's next commit waits for it."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE inputs IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


def log_alarm_cleared(lines: list[str]) -> bool:
    return any('"state":"cleared"' in x and '"rule":"log-unavailable"' in x for x in lines)


def spooled(directory: Path) -> bool:
    return any(directory.rglob("*.spool"))


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        assert loop.time() < end, f"not met within {within} s"
        await asyncio.sleep(0.02)


async def add(log: AlertLog, first: int, count: int) -> None:
    for n in range(first, first + count):
        log.add_input(record(n))
    await asyncio.wait_for(log.flush(), 60)


async def test_an_outage_spools_in_order_and_drains_when_the_database_returns(
    pg: PgCluster, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with AlertLog(pg.url, flush_interval=0.05, spool_dir=spool) as log:
        await log.start_session("live", "outage", load_library())
        await add(log, 1, 100)
        assert log.status.state == "ok"
        await asyncio.to_thread(pg.stop)
        await add(log, 101, 100)  # returns: durable in the spool
        assert log.status.state == "spooling" and log.status.spooled >= 1
        assert spooled(spool)
        await add(log, 201, 100)
        await asyncio.to_thread(pg.start)
        await asyncio.wait_for(log.status_changed(log.status), 60)
        assert log.status.state == "ok"
        await add(log, 301, 100)
    assert await logged_seqs(pg.url) == list(range(1, 401))  # each once, in arrival order
    (session,) = await rows(pg.url, select(sessions.c.ended_us))
    assert session.ended_us is not None
    assert not spooled(spool)  # drained, and gone


async def test_a_batch_committed_whose_answer_was_lost_is_written_once(
    pg: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies just after COMMIT: the writer cannot know the batch is in, so
    it spools it too; the drain finds the batch's number recorded and skips it."""
    commit = log_writer.LogWriter._commit
    lost_answers = 1

    async def commit_then_lose_the_answer(self: Any, writer: str, batch: Any, **kw: Any) -> None:
        nonlocal lost_answers
        await commit(self, writer, batch, **kw)
        if lost_answers and batch.inputs:
            lost_answers -= 1
            raise ConnectionResetError("connection lost after COMMIT")

    monkeypatch.setattr(log_writer.LogWriter, "_commit", commit_then_lose_the_answer)
    async with AlertLog(pg.url, flush_interval=0.05, spool_dir=tmp_path) as log:
        await log.start_session("live", "ambiguous commit", load_library())
        await add(log, 1, 50)
        await until(lambda: log.status.state == "ok")
        await add(log, 51, 50)
    assert await logged_seqs(pg.url) == list(range(1, 101))
    assert (await verify_chain(normalise_db_url(pg.url))).ok


async def test_a_database_that_hangs_is_unavailable_after_the_write_timeout(
    pg: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held elsewhere (a stuck migration, a full disk the server waits on): the
    batch is given up after the write timeout and spooled; it is written once the database
    moves again, and only once."""
    monkeypatch.setattr(log_module, "_PG_WRITE_TIMEOUT_S", 1.0)
    acknowledged: list[int] = []
    async with AlertLog(pg.url, flush_interval=0.05, spool_dir=tmp_path) as log:
        await log.start_session("live", "stuck database", load_library())
        await add(log, 1, 10)
        async with held_up(pg.url):
            for n in range(11, 21):
                log.add_input(record(n))
                log.after_durable(lambda n=n: acknowledged.append(n))
            await until(lambda: log.status.state == "spooling")
            await until(lambda: len(acknowledged) == 10)  # spooled: durable
        await until(lambda: log.status.state == "ok", within=60)
    assert await logged_seqs(pg.url) == list(range(1, 21))


async def test_with_nowhere_durable_inputs_are_still_acknowledged_held_and_then_written(
    pg: PgCluster, tmp_path: Path
) -> None:
    acknowledged: list[int] = []
    async with AlertLog(
        pg.url, flush_interval=0.05, spool_dir=tmp_path, spool_max_bytes=2048
    ) as log:
        await log.start_session("live", "no room anywhere", load_library())
        await asyncio.to_thread(pg.stop)
        for n in range(1, 201):  # ~100 bytes each: far more than the 2 KiB spool takes
            log.add_input(record(n))
            log.after_durable(lambda n=n: acknowledged.append(n))
        await until(lambda: log.status.state == "unrecorded")
        await until(lambda: len(acknowledged) == 200)  # alarming must not stall on the log
        assert log.status.held > 0
        await asyncio.to_thread(pg.start)
        await until(lambda: log.status.state == "ok", within=60)
    assert await logged_seqs(pg.url) == list(range(1, 201))  # held, none dropped


async def test_past_the_memory_bound_the_oldest_inputs_go_and_the_chain_says_so(
    pg: PgCluster, tmp_path: Path
) -> None:
    async with AlertLog(
        pg.url,
        flush_interval=0.05,
        spool_dir=tmp_path,
        spool_max_bytes=1024,
        max_held_inputs=50,
    ) as log:
        await log.start_session("live", "a long outage, no disk", load_library())
        await asyncio.to_thread(pg.stop)
        for n in range(1, 201):
            log.add_input(record(n))
            await asyncio.sleep(0.001)
        await until(lambda: log.status.state == "unrecorded" and log.status.dropped > 0)
        await asyncio.to_thread(pg.start)
        await until(lambda: log.status.state == "ok", within=60)
    seqs = await logged_seqs(pg.url)
    assert len(seqs) >= 50 and seqs == sorted(seqs) and seqs[-1] == 200
    gaps = await rows(
        pg.url, select(audit_chain.c.payload).where(audit_chain.c.kind == "unrecorded")
    )
    assert [int(g.payload.split()[0]) for g in gaps] == [200 - len(seqs)]
    assert (await verify_chain(normalise_db_url(pg.url))).ok


async def test_a_spool_left_at_exit_is_written_at_the_next_start_before_anything_is_read(
    pg: PgCluster, tmp_path: Path
) -> None:
    async with AlertLog(pg.url, flush_interval=0.05, spool_dir=tmp_path) as log:
        await log.start_session("live", "stopped during an outage", load_library())
        await asyncio.to_thread(pg.stop)
        await add(log, 1, 30)
    assert spooled(tmp_path)
    await asyncio.to_thread(pg.start)
    async with AlertLog(pg.url, spool_dir=tmp_path):
        assert await logged_seqs(pg.url) == list(range(1, 31))  # in before anything reads
    assert not spooled(tmp_path)


async def test_the_monitor_alarms_through_an_outage_and_says_the_log_is_unavailable(
    pg: PgCluster, tmp_path: Path
) -> None:
    """Readings keep raising their alarms while PostgreSQL is down; ``log-unavailable`` is
    raised for the unit (medium: the spool keeps everything) and cleared once the spool is
    drained; each reading is acknowledged only once durable; and the session's log replays
    to the very alert lines the live run gave."""
    clock, feed, library = SystemClock(), "virtual://outage", load_library()
    VirtualDriver.forget(feed)
    lines: list[str] = []
    acked: list[int] = []

    def reading(seq: int, rate: str) -> None:
        event = {"t": format_ts(clock.now_us()), "type": "reading", "pump": "P1"}
        event |= {"rate": rate, "drug": CA, "seq": seq}
        ack = lambda: acked.append(seq)  # noqa: E731
        VirtualDriver.channel(feed).put_nowait(
            Inbound(feed, orjson.dumps(event), event, on_durable=ack)
        )

    async with AlertLog(pg.url, flush_interval=0.5, spool_dir=tmp_path) as log:
        await log.start_session("live", "outage", library)
        monitor = Monitor(
            library,
            [VirtualDriver(feed, clock=clock)],
            clock=clock,
            log=log,
            outputs=[lambda tr, line: lines.append(line)],
        )
        task = asyncio.create_task(monitor.run())
        try:
            for event in admission(format_ts(clock.now_us())):
                VirtualDriver.put(feed, event)
            await until(lambda: monitor.processed >= 4)
            async with held_up(pg.url):  # the next commit waits for this lock
                reading(1, "1 ml/h")
                await until(lambda: monitor.processed >= 5)
                await asyncio.sleep(1.5)  # several flush intervals
                assert acked == []  # processed, not yet durable: not acknowledged
            await until(lambda: acked == [1])
            await asyncio.to_thread(pg.stop)
            reading(2, "180 ml/h")  # 3 ml/min: over the 2 ml/min limit
            await until(lambda: any('"rule":"rate-volume"' in line for line in lines))
            await until(lambda: any('"rule":"log-unavailable"' in line for line in lines))
            await until(lambda: acked == [1, 2])  # in the spool: durable, acknowledged
            reading(3, "1 ml/h")
            await until(lambda: acked == [1, 2, 3])
            await asyncio.to_thread(pg.start)
            await until(lambda: log_alarm_cleared(lines), within=60)
        finally:
            monitor.stop()
            await asyncio.wait_for(task, 30)
    alerts = [json.loads(line) for line in lines]
    log_alarm = [(a["state"], a["priority"]) for a in alerts if a["rule"] == "log-unavailable"]
    assert log_alarm == [("raised", "medium"), ("cleared", "medium")]
    assert [a["state"] for a in alerts if a["rule"] == "rate-volume"] == ["raised", "cleared"]
    _, logged_rows, logged = await session_rows(pg.url)
    assert logged == lines  # the outage's own lines reached the log through the spool
    text = "".join(r.raw + "\n" for r in logged_rows).encode()
    out = io.StringIO()
    await replay(io.BytesIO(text), source="export", library=library, out=out)
    assert out.getvalue().splitlines() == lines


async def test_when_even_the_spool_fails_the_alarm_is_high_and_monitoring_goes_on(
    pg: PgCluster, tmp_path: Path
) -> None:
    clock, feed, library = SystemClock(), "virtual://no-spool", load_library()
    VirtualDriver.forget(feed)
    lines: list[str] = []
    async with AlertLog(
        pg.url, flush_interval=0.05, spool_dir=tmp_path, spool_max_bytes=4096
    ) as log:
        await log.start_session("live", "nothing recorded", library)
        monitor = Monitor(
            library,
            [VirtualDriver(feed, clock=clock)],
            clock=clock,
            log=log,
            outputs=[lambda tr, line: lines.append(line)],
        )
        task = asyncio.create_task(monitor.run())
        try:
            for event in admission(format_ts(clock.now_us())):
                VirtualDriver.put(feed, event)
            await until(lambda: monitor.processed >= 4)
            await asyncio.to_thread(pg.stop)
            event = {"t": format_ts(clock.now_us()), "type": "reading", "pump": "P1"}
            VirtualDriver.put(feed, event | {"rate": "1 ml/h", "drug": CA, "seq": 0})
            await until(lambda: any('"rule":"log-unavailable"' in line for line in lines))
            for seq in range(1, 40):  # more than the 4 KiB spool takes
                event = {"t": format_ts(clock.now_us()), "type": "reading", "pump": "P1"}
                VirtualDriver.put(feed, event | {"rate": "1 ml/h", "drug": CA, "seq": seq})
            await until(lambda: any('"state":"escalated"' in line for line in lines))
            event = {"t": format_ts(clock.now_us()), "type": "reading", "pump": "P1"}
            VirtualDriver.put(feed, event | {"rate": "180 ml/h", "drug": CA, "seq": 40})
            await until(lambda: any('"rule":"rate-volume"' in line for line in lines))
            await asyncio.to_thread(pg.start)
            await until(lambda: log_alarm_cleared(lines), within=60)
        finally:
            monitor.stop()
            await asyncio.wait_for(task, 30)
    states = [
        (a["state"], a["priority"])
        for a in map(json.loads, lines)
        if a["rule"] == "log-unavailable"
    ]
    assert states == [("raised", "medium"), ("escalated", "high"), ("cleared", "high")]
    escalated = next(json.loads(line) for line in lines if '"escalated"' in line)
    assert "NOTHING IS BEING RECORDED" in escalated["message"]


def test_the_monitor_event_is_validated_like_any_input() -> None:
    event = parse_event(
        {"t": "2026-11-21T08:00:00Z", "type": "monitor", "condition": "log-unavailable",
         "active": True, "recorded": False, "detail": "disk full"}
    )  # fmt: skip
    assert isinstance(event, MonitorStatus) and not event.recorded
    for bad in ({"condition": "coffee-low", "active": True}, {"condition": "log-unavailable"}):
        with pytest.raises(EventError):
            parse_event({"t": "2026-11-21T08:00:00Z", "type": "monitor", **bad})


async def test_a_restart_after_an_outage_clears_the_alarm_the_last_run_left_open(
    tmp_path: Path,
) -> None:
    """The monitor died while its log was unavailable; it comes back with the database
    working: the alarm it left open is cleared at once, under the same alert id."""
    url, library, clock = f"sqlite:///{tmp_path / 'log.sqlite3'}", load_library(), SystemClock()
    async with AlertLog(url, spool_dir=tmp_path / "spool") as log:
        await log.start_session("live", "died during an outage", library)
        first = Monitor(library, [], clock=clock, log=log)
        event = {"t": format_ts(clock.now_us()), "type": "monitor"}
        event |= {"condition": "log-unavailable", "active": True, "detail": "down"}
        first.emit(first.pipeline.feed_object(event, raw=orjson.dumps(event), source="monitor"))
    (raised,) = [json.loads(x) for x in (await session_rows(url))[2]]
    lines: list[str] = []
    async with AlertLog(url, spool_dir=tmp_path / "spool") as log:
        warm = await warm_start(log, library, clock.now_us())
        await log.start_session("live", "restarted", library, warm.engine.book.next_id)
        second = Monitor(
            library, [], clock=clock, log=log, engine=warm.engine,
            outputs=[lambda tr, line: lines.append(line)],
        )  # fmt: skip
        task = asyncio.create_task(second.run())
        await until(lambda: bool(lines))
        second.stop()
        await asyncio.wait_for(task, 30)
    cleared = json.loads(lines[0])
    assert (cleared["rule"], cleared["state"], cleared["alert"]) == (
        "log-unavailable",
        "cleared",
        raised["alert"],
    )
