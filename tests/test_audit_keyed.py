"""``calguard audit verify`` against someone who can write the log database but holds no
key: each attack found and named - entries cut from the end, all of them deleted, one
edited and every later one re-hashed, one forged and appended, an alarm softened in
``alert_transitions``, an input edited or deleted - on SQLite and on PostgreSQL; an intact
log passes. Then the chain as the log writer builds it in harder cases: legacy unkeyed
entries before the keyed ones, batches spooled while the database is locked, two writers
on one database at once, and the anchor kept on the MQTT broker catching a cut that the
anchor file on the monitor's own disk was rewound to hide."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from calguard.alerts.anchor_mqtt import AnchorPublisher, anchor_topic, fetch_anchor
from calguard.alerts.blocks import decode, encode
from calguard.alerts.chain import AuditKey, Entry, entry_mac, legacy_hash
from calguard.alerts.log import AlertLog, default_anchor_file, normalise_db_url
from calguard.alerts.schema import (
    alert_transitions,
    audit_chain,
    input_blocks,
    input_sources,
    inputs,
    log_identity,
    metadata,
)
from calguard.alerts.spool import Spool
from calguard.config import load_library
from calguard.monitor.records import InputRecord
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.cli import main
from calguard.replay import replay
from tests.brokers import Broker
from tests.live import calguard_process
from tests.test_audit import SHIFT

Calguard = Callable[..., tuple[int, str]]


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own data directory: its audit key and anchor file."""
    path = tmp_path / "data"
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(path))
    monkeypatch.delenv("CALGUARD_AUDIT_KEY", raising=False)
    return path


@pytest.fixture
def calguard(capsys: pytest.CaptureFixture[str]) -> Iterator[Calguard]:
    """``calguard ARGS`` in this process: (exit status, what it printed)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    yield run
    root.handlers[:], root.level = handlers, level  # main() set its own up


async def shift(url: str, source: str = "shift") -> None:
    data = "".join(json.dumps(e) + "\n" for e in SHIFT).encode()
    async with AlertLog(url) as log:
        await replay(
            io.BytesIO(data), source=source, library=load_library(), out=io.StringIO(), log=log
        )


async def execute(url: str, *statements: Any) -> list[Any]:
    engine = create_async_engine(normalise_db_url(url))
    found: list[Any] = []
    try:
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(statement)
                found = list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
    return found


def entries(url: str) -> list[Any]:
    return asyncio.run(execute(url, select(audit_chain).order_by(audit_chain.c.seq)))


def verdict(output: str) -> dict[str, str]:
    """Each failed check and the first thing it found, from ``audit verify``'s lines."""
    failed = {}
    for line in output.splitlines():
        words = line.split(maxsplit=2)
        if len(words) == 3 and words[1] == "FAILED":
            failed[words[0]] = words[2]
    return failed


# -- attacks, one by one, on SQLite and PostgreSQL --------------------------------------------


def test_an_intact_log_passes(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 0, out
    assert verdict(out) == {} and "audit verified: every check holds" in out


def test_a_cut_tail_is_found_by_the_anchor(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    head = entries(db_url)[-1].seq
    asyncio.run(execute(db_url, delete(audit_chain).where(audit_chain.c.seq > head - 3)))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert verdict(out)["anchor"].startswith("tail cut: the anchor of ")
    assert f"holds entry {head}, the log ends at {head - 3}" in verdict(out)["anchor"]


def test_all_entries_deleted_are_found(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    head = entries(db_url)[-1].seq
    asyncio.run(execute(db_url, delete(audit_chain)))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert verdict(out)["anchor"].startswith("all entries deleted: the anchor of ")
    assert f"holds entry {head}, the log has none (the anchor file " in verdict(out)["anchor"]


def test_an_entry_edited_and_every_later_one_re_hashed_without_the_key_is_found(
    db_url: str, calguard: Calguard
) -> None:
    asyncio.run(shift(db_url))
    rows = entries(db_url)
    target = next(r for r in rows if r.kind == "transition" and '"high"' in r.payload)
    guessed = AuditKey(secrets.token_bytes(32))  # the attacker's best: any key but the one
    statements, prev = [], target.prev_hash
    for r in rows[target.seq - 1 :]:
        payload = r.payload.replace('"high"', '"low"') if r is target else r.payload
        entry = Entry(r.session_id, r.t_us, r.kind, r.actor, payload, r.subject, r.digest)
        mac = entry_mac(guessed, r.seq, entry, prev)
        statements.append(
            update(audit_chain)
            .where(audit_chain.c.seq == r.seq)
            .values(payload=payload, prev_hash=prev, hash=mac)
        )
        prev = mac
    asyncio.run(execute(db_url, *statements))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    found = verdict(out)
    assert "links" not in found  # the links were made to hold: the HMACs cannot be
    assert found["HMACs"] == (
        f"entry {target.seq}'s HMAC does not match (edited and re-hashed, or forged)"
    )
    assert found["anchor"].startswith(f"entry {rows[-1].seq} differs from the anchor of ")


def test_an_entry_re_hashed_as_an_unkeyed_one_is_found(tmp_path: Path, calguard: Calguard) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    asyncio.run(shift(url))
    row = entries(url)[3]
    forged = row.payload + " "
    legacy = legacy_hash(row.seq, row.t_us, row.kind, row.actor, forged, row.prev_hash)
    asyncio.run(
        execute(
            url,
            update(audit_chain)
            .where(audit_chain.c.seq == row.seq)
            .values(payload=forged, hash=legacy, key_id=None),
        )
    )
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 1
    assert verdict(out)["HMACs"] == (
        f"entry {row.seq} is unkeyed after keyed entries (edited and re-hashed, or forged)"
    )


def test_a_forged_entry_appended_is_found(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    head = entries(db_url)[-1]
    ack = '{"t":"2026-11-21T08:05:00Z","type":"ack","alert":"a-000001","by":"rn42"}'
    forged = Entry(head.session_id, head.t_us, "action", "rn42", ack)
    mac = entry_mac(AuditKey(secrets.token_bytes(32)), head.seq + 1, forged, head.hash)
    row = {**forged._asdict(), "seq": head.seq + 1, "prev_hash": head.hash, "hash": mac}
    asyncio.run(execute(db_url, insert(audit_chain).values(**row, key_id=head.key_id)))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert verdict(out) == {
        "HMACs": f"entry {head.seq + 1}'s HMAC does not match (edited and re-hashed, or forged)"
    }


def test_an_alarm_softened_in_alert_transitions_is_found(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    first = entries(db_url)[1]  # a-000001, raised high: the first transition
    asyncio.run(
        execute(
            db_url,
            update(alert_transitions)
            .where(alert_transitions.c.priority == "high")
            .values(priority="low"),
        )
    )
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    found = verdict(out)
    assert list(found) == ["alert_transitions"]
    session, seq = first.subject.split(":")[1], first.subject.split(":")[2].split("-")[0]
    assert found["alert_transitions"] == (
        f"alert_transitions row a-000001 (session {session}, seq {seq}) differs from its "
        f"audited line (entry {first.seq})"
    )


def test_an_edited_input_row_is_found(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    asyncio.run(
        execute(
            db_url,
            update(inputs)
            .where(inputs.c.event_type == "connect")
            .values(raw=func.replace(inputs.c.raw, '"L1"', '"L2"')),
        )
    )
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert list(verdict(out)) == ["inputs"]
    assert verdict(out)["inputs"].endswith("differ from their audited digest (a row edited)")


def test_an_edited_reading_in_a_block_is_found(db_url: str, calguard: Calguard) -> None:
    """A reading kept compactly, decoded, edited (a rate lowered) and encoded again."""
    asyncio.run(shift(db_url))
    (block,) = asyncio.run(execute(db_url, select(input_blocks).limit(1)))
    names = {r.id: r.source for r in asyncio.run(execute(db_url, select(input_sources)))}
    rows = decode(block.session_id, block.payload, names)
    edited = [(*r[:12], r[12].replace("180 ml/h", "18 ml/h"), *r[13:]) for r in rows]
    assert edited != rows
    ids = {v: k for k, v in names.items()}
    payload = encode(block.logged_us, block.session_id, edited, ids)[-1]
    asyncio.run(
        execute(
            db_url,
            update(input_blocks).where(input_blocks.c.id == block.id).values(payload=payload),
        )
    )
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert list(verdict(out)) == ["inputs"]
    assert verdict(out)["inputs"].endswith("differ from their audited digest (a row edited)")


def test_a_deleted_input_row_is_found(db_url: str, calguard: Calguard) -> None:
    asyncio.run(shift(db_url))
    count = sum(r.rows for r in asyncio.run(execute(db_url, select(input_blocks.c.rows))))
    count += len(asyncio.run(execute(db_url, select(inputs.c.id))))
    asyncio.run(execute(db_url, delete(inputs).where(inputs.c.event_type == "connect")))
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1
    assert list(verdict(out)) == ["inputs"]
    assert f": {count - 1} of {count} found (rows deleted" in verdict(out)["inputs"]


# -- the chain as the writer builds it ------------------------------------------------------


def test_legacy_unkeyed_entries_stay_verifiable_before_the_keyed_ones(
    tmp_path: Path, calguard: Calguard
) -> None:
    """A log from before the key: its SHA-256 entries and rows are kept as they were, the
    keyed chain goes on from them, and editing a legacy entry is still found."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    asyncio.run(legacy_log(url))
    code, out = calguard("audit", "verify", "--db", url)  # before the upgrade: no anchor yet
    assert code == 1 and list(verdict(out)) == ["anchor"]
    assert "2 entries, 1-2 legacy (unkeyed SHA-256)" in out
    asyncio.run(shift(url))  # the upgrade (schema version 6), and a shift
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 0, out
    assert "3 legacy rows from before the chain was keyed" in out  # the old inputs
    assert "1-2 legacy (unkeyed SHA-256), 3-" in out
    keyed_start = entries(url)[2]
    assert keyed_start.kind == "keyed-start" and keyed_start.prev_hash == entries(url)[1].hash
    asyncio.run(execute(url, update(audit_chain).where(audit_chain.c.seq == 2).values(actor="x")))
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 1 and verdict(out) == {
        "HMACs": "legacy entry 2 does not match its SHA-256 (edited)"
    }


OLD_AUDIT_CHAIN = """CREATE TABLE audit_chain (seq BIGINT PRIMARY KEY, session_id BIGINT NOT NULL,
    t_us BIGINT NOT NULL, kind VARCHAR(32) NOT NULL, actor VARCHAR(200), payload TEXT NOT NULL,
    prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)"""
OLD_INSERT = """INSERT INTO audit_chain VALUES (:seq, :session_id, :t_us, :kind, :actor, :payload,
    :prev_hash, :hash)"""


async def legacy_log(url: str) -> None:
    """Two entries and three inputs as CalGuard wrote them before its chain was keyed (the
    chain's table as it was then: no key, subject or digest)."""
    engine = create_async_engine(normalise_db_url(url))
    prev, rows = "0" * 64, []
    for seq, actor in ((1, "rn1"), (2, "rn2")):
        payload = f'{{"type":"ack","by":"{actor}"}}'
        mac = legacy_hash(seq, 1_000 * seq, "action", actor, payload, prev)
        entry = {"seq": seq, "session_id": 1, "t_us": 1_000 * seq, "kind": "action"}
        rows.append({**entry, "actor": actor, "payload": payload, "prev_hash": prev, "hash": mac})
        prev = mac
    row = {"session_id": 1, "source": "old", "status": "accepted", "raw": "{}", "raw_bytes": 2}
    old = [{**row, "seq": n} for n in (1, 2, 3)]
    tables = [t for t in metadata.sorted_tables if t.name not in ("audit_chain", "calguard_schema")]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all, tables)
            await conn.execute(text(OLD_AUDIT_CHAIN))
            for row in rows:
                await conn.execute(text(OLD_INSERT), row)
            await conn.execute(insert(inputs), old)
    finally:
        await engine.dispose()


def test_batches_spooled_while_sqlite_is_locked_join_the_chain_when_it_returns(
    tmp_path: Path, calguard: Calguard
) -> None:
    """Another process holds the database's write lock: the writer spools, and the spooled
    batches are chained when they are written, in order, after the head as it is then."""
    db = tmp_path / "log.sqlite3"
    url = f"sqlite:///{db}"
    asyncio.run(shift(url, "before"))
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        conn = sqlite3.connect(db, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(60)
        conn.rollback()
        conn.close()

    async def through_a_lock() -> str:
        async with AlertLog(url, flush_interval=0.05, spool_dir=tmp_path / "spool") as log:
            await log.start_session("live", "locked", load_library())
            holder = threading.Thread(target=hold_the_lock)
            holder.start()
            try:
                await asyncio.to_thread(locked.wait, 30)
                for n in range(1, 51):
                    raw = json.dumps({"t": "2026-11-21T09:00:00Z", "type": "reading", "seq": n})
                    log.add_input(InputRecord.from_raw(raw, "test", "accepted", t_us=n))
                log.add_undelivered("http://station", 60, "no answer", '{"alert":"a-000001"}')
                await until(lambda: log.status.state == "spooling" and log.status.spooled > 0)
            finally:
                release.set()
                await asyncio.to_thread(holder.join, 30)
            await log.flush()
            await until(lambda: log.status.state == "ok")
            return log.status.state

    assert asyncio.run(through_a_lock()) == "ok"
    assert not any((tmp_path / "spool").rglob("*.spool"))  # drained
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 0, out
    spooled = [r for r in entries(url) if r.session_id == 2]
    assert {r.kind for r in spooled} == {"inputs", "undelivered"}
    assert "50 input row(s)" in " ".join(r.payload for r in spooled)


def test_a_batch_an_older_calguard_spooled_joins_the_keyed_chain(
    tmp_path: Path, calguard: Calguard
) -> None:
    """A spool left by the version before the key (entries numbered and hashed when taken)
    is written by this one: its entries are keyed as they are chained, each transition
    entry naming its row."""
    url, spool_root = f"sqlite:///{tmp_path / 'log.sqlite3'}", tmp_path / "spool"

    async def a_session() -> tuple[str, int]:
        async with AlertLog(url, spool_dir=spool_root) as log:
            session = await log.start_session("live", "before the upgrade", load_library())
        (identity,) = await execute(url, select(log_identity.c.id))
        return str(identity.id), session

    identity, session = asyncio.run(a_session())
    t, line = 1_795_000_000_000_000, '{"state":"raised","alert":"a-000001","priority":"high"}'
    raw = '{"t":"2026-11-21T08:01:00Z","type":"reading","pump":"P1","rate":"180 ml/h"}'
    reading = (session, 1, t, "old", 1, "accepted", None, "reading", "P1", "A", None, None)
    transition = (session, 2, t, "raised", "a-000001", "rate-volume", "high", "B1", "L1", "P1")
    transition += ("A", "3 ml/min", "2 ml/min", "too fast", "sha256:x", False, line)
    old_entry = [1, session, t, "transition", None, line, "0" * 64]
    old_entry.append(legacy_hash(1, t, "transition", None, line, "0" * 64))
    batch = {"writer": "0" * 32, "batch": 1, "inputs": [(*reading, raw, len(raw), None)]}
    batch |= {"transitions": [transition], "audit": [old_entry], "end": None}  # no "v"
    spool = Spool(spool_root / identity, 1 << 20)
    spool.append(orjson.dumps(batch))
    spool.close()

    async def upgraded() -> None:
        async with AlertLog(url, spool_dir=spool_root):  # drains the spool before anything
            pass

    asyncio.run(upgraded())
    assert [(r.kind, r.subject) for r in entries(url)] == [
        ("keyed-start", None),
        ("transition", f"alert_transitions:{session}:2-2"),
        ("inputs", f"inputs:{session}:1-1"),
    ]
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 0, out


def test_two_writers_on_one_database_make_one_chain(db_url: str, calguard: Calguard) -> None:
    """Two monitors write one database, their commits alternating: each commit extends the
    chain from the head the other one left."""

    async def both() -> None:
        async with AlertLog(db_url) as one, AlertLog(db_url) as two:
            for log in (one, two):
                await log.start_session("live", "shared database", load_library())
            for n in range(1, 11):
                for log in (one, two):
                    raw = json.dumps({"t": "2026-11-21T09:00:00Z", "type": "reading", "seq": n})
                    log.add_input(InputRecord.from_raw(raw, "test", "accepted", t_us=n))
                    await log.flush()

    asyncio.run(shift(db_url, "first"))  # the log exists (schema made) before they start
    asyncio.run(both())
    rows = entries(db_url)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    batches = [r.session_id for r in rows if r.kind == "inputs"][1:]
    assert batches == [2, 3] * 10  # one chain, in commit order
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 0, out


def test_the_head_is_anchored_within_the_interval_of_each_move_while_the_log_is_open(
    tmp_path: Path,
) -> None:
    """A quiet spell after a commit does not leave the head unanchored until the stop."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"

    def anchored() -> list[int]:
        lines = default_anchor_file().read_bytes().splitlines()
        return [json.loads(line)["seq"] for line in lines]

    async def two_commits() -> None:
        async with AlertLog(url, flush_interval=0.05, anchor_interval=0.5) as log:
            await log.start_session("live", "quiet", load_library())
            for n in (1, 2):
                log.add_input(InputRecord.from_raw(f'{{"n":{n}}}', "test", "accepted", t_us=n))
                await log.flush()  # the first commit is anchored at once, the second not
            (head,) = await execute(url, select(func.max(audit_chain.c.seq)))
            await until(lambda: anchored()[-1] == head[0])

    asyncio.run(two_commits())
    assert anchored()[0] < anchored()[-1]


def test_the_broker_s_anchor_finds_a_cut_the_anchor_file_was_rewound_to_hide(
    broker: Broker, tmp_path: Path, calguard: Calguard
) -> None:
    """The attacker cuts the second run from the log and the anchor file back to the first
    run's anchors: the file agrees with the log now, the broker's retained copy does not."""
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"

    async def two_runs() -> int:
        publisher = AnchorPublisher(broker.url, client_id="test")
        async with publisher:
            for source in ("first", "second"):
                data = "".join(json.dumps(e) + "\n" for e in SHIFT).encode()
                async with AlertLog(url, on_anchor=publisher.offer) as log:
                    await replay(
                        io.BytesIO(data),
                        source=source,
                        library=load_library(),
                        out=io.StringIO(),
                        log=log,
                    )
                if source == "first":
                    first_run = default_anchor_file().read_bytes()
        default_anchor_file().write_bytes(first_run)  # the rewind
        return publisher.published

    assert asyncio.run(two_runs()) >= 2
    retained = asyncio.run(fetch_anchor(broker.url, {}))
    assert retained is not None and json.loads(retained)["seq"] == entries(url)[-1].seq
    second = entries(url)[-1].session_id
    cut = min(r.seq for r in entries(url) if r.session_id == second)
    asyncio.run(
        execute(
            url,
            delete(audit_chain).where(audit_chain.c.seq >= cut),
            delete(inputs).where(inputs.c.session_id == second),
            delete(input_blocks).where(input_blocks.c.session_id == second),
            delete(alert_transitions).where(alert_transitions.c.session_id == second),
        )
    )
    code, out = calguard("audit", "verify", "--db", url)
    assert code == 0, out  # the file alone is fooled
    code, out = calguard("audit", "verify", "--db", url, "--anchor-mqtt", broker.url)
    assert code == 1
    assert list(verdict(out)) == ["anchor"]
    assert verdict(out)["anchor"].startswith("tail cut: the anchor of ")
    assert verdict(out)["anchor"].endswith(
        f"(the retained anchor {anchor_topic('calguard/test')} on 127.0.0.1:{broker.port})"
    )


def test_the_running_monitor_keeps_its_anchor_retained_on_the_broker(
    broker: Broker, tmp_path: Path, data_dir: Path, calguard: Calguard
) -> None:
    """``calguard run`` with an MQTT alarm sink: the anchor is on the broker soon after the
    first commit, the last one after a stop, and the log verifies against it."""
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\nname = "anchored"\ndb = "{db}"\n'
        f'[[drivers]]\nurl = "{broker.url}"\n[[sinks]]\nurl = "{broker.url}"\n'
    )
    monitor = calguard_process("run", "--site", str(site), env={"CALGUARD_DATA_DIR": str(data_dir)})
    try:
        retained = asyncio.run(retained_anchor(broker.url))
        assert json.loads(retained)["seq"] >= 1
    finally:
        monitor.send_signal(signal.SIGTERM)
        _, errors = monitor.communicate(timeout=60)
    assert monitor.returncode == 0, errors
    final = asyncio.run(fetch_anchor(broker.url, {}))
    assert final is not None and json.loads(final)["seq"] == entries(db)[-1].seq
    code, out = calguard("audit", "verify", "--db", db, "--anchor-mqtt", broker.url)
    assert code == 0, out


async def retained_anchor(url: str, within: float = 30.0) -> bytes:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (found := await fetch_anchor(url, {}, wait=0.5)) is None:
        assert loop.time() < end, f"no anchor retained within {within} s"
    return found


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        assert loop.time() < end, f"not met within {within} s"
        await asyncio.sleep(0.02)


def test_without_the_key_nothing_passes(db_url: str, calguard: Calguard, data_dir: Path) -> None:
    asyncio.run(shift(db_url))
    (data_dir / "keys" / "audit.key").rename(data_dir / "elsewhere.key")
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 1 and "no audit key at" in out
    assert "which was not given (--audit-key FILE)" in verdict(out)["HMACs"]
    code, out = calguard(
        "audit", "verify", "--db", db_url, "--audit-key", str(data_dir / "elsewhere.key")
    )
    assert code == 0, out
