"""Retention: ``calguard log prune`` drops inputs past the site's policy - never one that
is not in a verified export - and the audit chain still verifies after it, knowing the
pruned rows were pruned; alerts, actions and the chain itself stay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from calguard.alerts.audit import verify_chain
from calguard.alerts.log import AlertLog, normalise_db_url, session_rows
from calguard.alerts.partitions import DAY_US, partition_days
from calguard.alerts.retention import PRUNED
from calguard.alerts.schema import alert_transitions, audit_chain, input_blocks, inputs
from calguard.monitor.errors import ConfigError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.cli import main
from calguard.log_cli import prune_log
from calguard.site import load_site
from tests.test_storage import every_kind, query, reading, write

Calguard = Callable[..., tuple[int, str]]
STDOUT: list[str] = []  # what the last command wrote to standard output
LATER = 40 * DAY_US  # the prune runs 40 days after the inputs were written


@pytest.fixture
def calguard(capsys: pytest.CaptureFixture[str]) -> Iterator[Calguard]:
    """``calguard ARGS`` in this process: (exit status, what it printed)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        out = capsys.readouterr()
        STDOUT[:] = [out.out]
        return code, out.out + out.err

    yield run
    root.handlers[:], root.level = handlers, level


def later() -> int:
    return time.time_ns() // 1000 + LATER


async def counts(url: str) -> tuple[int, int, int]:
    """(inputs, transitions, audit entries) in the log."""
    (blocked,) = await query(url, select(func.coalesce(func.sum(input_blocks.c.rows), 0)))
    (single,) = await query(url, select(func.count()).select_from(inputs))
    (trs,) = await query(url, select(func.count()).select_from(alert_transitions))
    (chain,) = await query(url, select(func.count()).select_from(audit_chain))
    return int(blocked[0]) + int(single[0]), int(trs[0]), int(chain[0])


def test_a_prune_refuses_inputs_that_no_verified_export_holds(
    db_url: str, calguard: Calguard
) -> None:
    session = asyncio.run(write(db_url, every_kind()))
    before = asyncio.run(counts(db_url))
    assert asyncio.run(prune_log(db_url, 30, now_us=later())) == 1  # not exported: refused
    assert asyncio.run(counts(db_url)) == before
    code, out = calguard("log", "prune", "--db", db_url, "--keep-days", "1")
    assert code == 0 and "0 in 0 session(s)" in out  # today's inputs are within any policy

    # exported but not verified: still refused, and the message says what to do
    code, out = calguard("export", "--db", db_url, "--session", str(session))
    assert code == 0
    assert asyncio.run(prune_log(db_url, 30, now_us=later())) == 1
    assert asyncio.run(counts(db_url)) == before


def test_the_refusal_says_what_to_do(
    db_url: str, calguard: Calguard, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        calguard("log", "prune", "--help")
    assert "verify-export" in " ".join(capsys.readouterr().out.split())
    session = asyncio.run(write(db_url, every_kind()))
    code, _out = calguard("log", "prune", "--db", db_url, "--keep-days", "1")
    assert code == 0  # nothing is old enough
    assert asyncio.run(prune_log(db_url, 30, now_us=later())) == 1
    said = capsys.readouterr()
    assert f"REFUSED: the inputs of session(s) {session} are in no verified export" in said.err
    assert "calguard log verify-export FILE" in said.err


def exported(calguard: Calguard, url: str, session: int, path: Path) -> Path:
    code, out = calguard("export", "--db", url, "--session", str(session))
    assert code == 0, out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STDOUT[0])  # the export as it was written, byte for byte
    return path


def test_a_prune_after_a_verified_export_drops_inputs_and_the_audit_still_verifies(
    db_url: str, tmp_path: Path, calguard: Calguard
) -> None:
    session = asyncio.run(write(db_url, every_kind() + [reading(n) for n in range(10, 40)]))
    archived = exported(calguard, db_url, session, tmp_path / "archive" / "session.jsonl")
    _, rows, _ = asyncio.run(session_rows(db_url, session))

    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(archived.read_text().replace("0.80", "0.08"))
    code, out = calguard("log", "verify-export", str(tampered), "--db", db_url)
    assert code == 1 and "is no export recorded in this log" in out
    code, out = calguard("log", "verify-export", str(archived), "--db", db_url)
    assert code == 0 and f"session(s) {session}" in out

    inputs_before, transitions, entries = asyncio.run(counts(db_url))
    assert asyncio.run(prune_log(db_url, 30, now_us=later(), dry_run=True)) == 0
    assert asyncio.run(counts(db_url)) == (inputs_before, transitions, entries)
    assert asyncio.run(prune_log(db_url, 30, now_us=later())) == 0
    assert asyncio.run(counts(db_url)) == (0, transitions, entries + 1)  # the prune's entry
    (entry,) = asyncio.run(
        query(db_url, select(audit_chain.c.payload).where(audit_chain.c.kind == PRUNED))
    )
    assert f'"{session}":{rows[-1].seq}' in entry.payload

    report = asyncio.run(verify_chain(db_url))
    assert report.ok, [c.problems for c in report.failed]
    assert f"{len(rows)} row(s) pruned" in report.checks["inputs"].summary
    code, out = calguard("audit", "verify", "--db", db_url)
    assert code == 0, out

    # the log goes on: a session after the prune is written, read and verified as before
    asyncio.run(write(db_url, every_kind()))
    report = asyncio.run(verify_chain(db_url))
    assert report.ok, [c.problems for c in report.failed]
    assert len(asyncio.run(recovered(db_url))) == len(every_kind()) - 1  # all but the wire


async def recovered(url: str) -> list[object]:
    async with AlertLog(url) as log:
        return list(await log.recovery_inputs(0, 0, site="nicu"))


async def test_rows_deleted_behind_the_back_of_a_prune_are_still_found(db_url: str) -> None:
    """A prune's boundary excuses whole batches older than it, not a row cut from a newer
    batch (nor a batch half gone)."""
    await write(db_url, every_kind())
    await query_delete(db_url)
    report = await verify_chain(db_url)
    assert not report.ok and list(c.name for c in report.failed) == ["inputs"]


async def query_delete(url: str) -> None:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(inputs.delete().where(inputs.c.event_type == "ack"))
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_postgresql_drops_whole_day_partitions(
    pg_url: str, tmp_path: Path, calguard: Calguard
) -> None:
    session = asyncio.run(write(pg_url, every_kind()))
    archived = exported(calguard, pg_url, session, tmp_path / "export.jsonl")
    assert calguard("log", "verify-export", str(archived), "--db", pg_url)[0] == 0
    assert len(asyncio.run(days(pg_url))) == 2  # today's and tomorrow's
    assert asyncio.run(prune_log(pg_url, 30, now_us=later())) == 0
    assert asyncio.run(days(pg_url)) == []  # both days were past the boundary: dropped
    report = asyncio.run(verify_chain(pg_url))
    assert report.ok, [c.problems for c in report.failed]


async def days(url: str) -> list[int]:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            return await partition_days(conn)
    finally:
        await engine.dispose()


def test_the_site_config_s_log_table_sets_the_policy(
    tmp_path: Path, calguard: Calguard, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    site = tmp_path / "site.toml"
    drivers = '[[drivers]]\nurl = "replay:///dev/null"\n'
    site.write_text(f'[site]\ndb = "{db}"\n[log]\nkeep_inputs_days = 7\n{drivers}')
    asyncio.run(write(db, every_kind()))
    code, out = calguard("log", "prune", "--site", str(site), "--dry-run")
    assert code == 0 and "(kept: 7 days)" in out and "0 in 0 session(s)" in out
    assert load_site(site).log.keep_inputs_days == 7
    site.write_text(f'[site]\ndb = "{db}"\n[log]\nkeep_inputs_days = 0\nkeep = 1\n{drivers}')
    with pytest.raises(ConfigError) as caught:
        load_site(site)
    assert [p.key for p in caught.value.problems] == ["log.keep", "log.keep_inputs_days"]
    site.write_text(f'[site]\ndb = "{db}"\n{drivers}')
    assert load_site(site).log.keep_inputs_days == 30  # the default


def test_a_hospital_config_and_a_log_never_written_to_are_pruned_by_the_same_command(
    tmp_path: Path, calguard: Calguard
) -> None:
    """The units of a hospital config share its one log and its [log] policy; a log that
    holds nothing yet is made, not an error."""
    db = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    units = "".join(
        f'[[units]]\nname = "{name}"\n[[units.drivers]]\nurl = "replay:///dev/null"\n'
        f"[units.web]\nport = {port}\n"
        for name, port in (("nicu-a", 0), ("nicu-b", 0))
    )
    hospital = tmp_path / "hospital.toml"
    site = f'[site]\nname = "st-mary"\ndb = "{db}"\n[log]\nkeep_inputs_days = 9\n'
    hospital.write_text(site + units)
    code, out = calguard("log", "prune", "--site", str(hospital), "--dry-run")
    assert code == 0 and "(kept: 9 days)" in out and "0 in 0 session(s)" in out
