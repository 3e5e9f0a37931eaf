"""The alarm commands of ``calguard``: audit, report, alerts and actions on alarms."""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import sys
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from alerts.audit import verify_chain
from alerts.log import default_db_url, normalise_db_url
from alerts.schema import audit_chain
from monitor.timeutil import format_ts

__all__ = ["add_parsers", "dispatch"]

log = logging.getLogger("calguard")
COMMANDS = ("audit",)


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit chain")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="report the first broken link, if any")
    export = audit_sub.add_parser("export", help="the chain as CSV, for retention elsewhere")
    for p in (verify, export):
        p.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    export.add_argument("--out", metavar="FILE.csv", help="default: standard output")


def dispatch(args: argparse.Namespace) -> int:
    url = normalise_db_url(args.db or default_db_url())
    try:
        if args.command == "audit" and args.audit_command == "verify":
            return asyncio.run(_verify(url))
        if args.command == "audit":
            return _export(asyncio.run(_audit_rows(url)), args.out)
    except (SQLAlchemyError, OSError) as exc:
        log.error("cannot read the log %s: %s", url, str(exc).splitlines()[0])
        return 3
    return 2


async def _verify(url: str) -> int:
    report = await verify_chain(url)
    if report.ok:
        print(
            f"audit chain intact: {report.rows} entries; head {report.head_seq} "
            f"sha256:{report.head_hash} (keep this to detect entries cut from the end)"
        )
        return 0
    print(
        f"audit chain BROKEN at entry {report.broken_at}: {report.problem}; "
        f"entries 1-{report.head_seq} are intact (head sha256:{report.head_hash})"
    )
    return 1


async def _audit_rows(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(audit_chain).order_by(audit_chain.c.seq))).all())
    finally:
        await engine.dispose()


def _export(rows: list[Any], out: str | None) -> int:
    stream = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(stream)
        writer.writerow(["seq", "time", "session", "kind", "actor", "payload", "prev_hash", "hash"])
        for r in rows:
            writer.writerow(
                [
                    r.seq,
                    format_ts(r.t_us),
                    r.session_id,
                    r.kind,
                    r.actor or "",
                    r.payload,
                    r.prev_hash,
                    r.hash,
                ]
            )
    finally:
        if out:
            stream.close()
    log.info("%d audit entries exported", len(rows))
    return 0
