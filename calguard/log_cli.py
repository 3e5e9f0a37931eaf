"""``calguard log prune`` and ``calguard log verify-export``: retention of the log's inputs.

The policy is the site config's ``[log] keep_inputs_days`` (default 30): inputs committed
before midnight (UTC) that many days ago are dropped - alerts, actions and the audit
chain are kept forever - but only those a verified export holds
(``calguard.alerts.retention``):

    calguard export --session 12 > session-12.jsonl     # records the export's SHA-256
    cp session-12.jsonl /archive/ && calguard log verify-export /archive/session-12.jsonl
    calguard log prune --site nicu.toml --dry-run       # what would go, what is missing
    calguard log prune --site nicu.toml

Exit codes: 0 done (or nothing to do), 1 refused (inputs not exported and verified), 2
usage, 3 the log cannot be read or written.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from calguard.alerts import retention
from calguard.alerts.library_store import anchor_head, append_entry, audit_key
from calguard.alerts.log import (
    default_anchor_file,
    default_audit_key,
    default_db_url,
    normalise_db_url,
    redact_url,
    short_error,
)
from calguard.alerts.retention import (
    Plan,
    boundary,
    file_sha256,
    plan_prune,
    prune,
    verify_export,
)
from calguard.alerts.schema import log_identity, migrate_exclusively
from calguard.config.site import LogPolicy
from calguard.monitor.errors import CalGuardError, LogError
from calguard.monitor.timeutil import format_ts

__all__ = ["COMMAND", "Recorded", "add_parser", "dispatch", "prune_log", "record_export"]

COMMAND = "log"
log = logging.getLogger("calguard")

_PRUNE_HELP = (
    "drop inputs older than the site's [log] keep_inputs_days (default 30; alerts, actions "
    "and the audit chain are kept forever). Refuses unless every input it would drop is in "
    "an export that `calguard export` recorded and `calguard log verify-export FILE` "
    "verified. The prune is an entry of the audit chain."
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(COMMAND, help="the log's retention: prune old inputs, verify exports")
    log_sub = p.add_subparsers(dest="log_command", required=True)
    pr = log_sub.add_parser("prune", help=_PRUNE_HELP, description=_PRUNE_HELP)
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--site", metavar="FILE", help="the site config: its db and [log] policy")
    where.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    pr.add_argument(
        "--keep-days", type=int, help="inputs kept, in days (default: the site's, else 30)"
    )
    pr.add_argument("--dry-run", action="store_true", help="say what would go; drop nothing")
    ve = log_sub.add_parser(
        "verify-export",
        help="re-read an export (e.g. its archived copy) and mark it verified if its SHA-256 "
        "is the one `calguard export` recorded",
    )
    ve.add_argument("file", type=Path, help="the exported JSON Lines file")
    ve.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.log_command == "verify-export":
            where = str(args.file.resolve())
            return asyncio.run(_verify_export(args.db, args.file, file_sha256(args.file), where))
        db, policy = _policy(args)
        keep = args.keep_days or policy.keep_inputs_days
        return asyncio.run(prune_log(db, keep, dry_run=args.dry_run))
    except (LogError, OSError) as exc:
        log.error("%s", exc)
        return 3
    except CalGuardError as exc:
        log.error("%s", exc)
        return 2


def _policy(args: argparse.Namespace) -> tuple[str, LogPolicy]:
    if args.site is None:
        return normalise_db_url(args.db or default_db_url()), LogPolicy()
    from calguard.units import load_units

    # a plain site config, or a hospital's: its units share the one log and its [log]
    logs = {(u.site.db, u.site.log) for u in load_units(args.site)}
    if len(logs) > 1:
        raise LogError(f"{args.site}: its units keep different logs: prune each with --db URL")
    ((db, policy),) = logs
    if db is None:
        raise LogError(f'{args.site}: the site keeps no log (db = "none"): nothing to prune')
    return normalise_db_url(db or default_db_url()), policy


async def _verify_export(db: str | None, file: Path, digest: str, where: str) -> int:
    url = normalise_db_url(db or default_db_url())
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            sessions = await verify_export(conn, digest, where)
    except (SQLAlchemyError, OSError) as exc:
        raise LogError(f"cannot use {redact_url(url)}: {short_error(exc)}") from exc
    finally:
        await engine.dispose()
    if not sessions:
        log.error(
            "%s (SHA-256 %s) is no export recorded in this log: export the session again "
            "with `calguard export --session N > FILE`, then verify that file",
            file,
            digest,
        )
        return 1
    print(f"verified: {file} holds the export of session(s) {', '.join(map(str, sessions))}")
    return 0


async def prune_log(
    url: str, keep_days: int, *, dry_run: bool = False, now_us: int | None = None
) -> int:
    """Prune the log at ``url`` as the policy says (``now_us``: the wall clock, or a test's);
    the command's exit code."""
    if keep_days < 1:
        raise CalGuardError("--keep-days: 1 or more is expected")
    now = time.time_ns() // 1000 if now_us is None else now_us
    before, url = boundary(now, keep_days), normalise_db_url(url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await migrate_exclusively(conn, now)  # a new log, or an older CalGuard's
            plan = await plan_prune(conn, before)
            _say(plan, keep_days)
            if plan.unexported or dry_run or not plan.sessions:
                return 1 if plan.unexported else 0
            key = audit_key(default_audit_key())
            head = await append_entry(conn, await prune(conn, plan), key)
            identity = (await conn.execute(select(log_identity.c.id))).scalar_one()
    except SQLAlchemyError as exc:
        raise LogError(f"cannot prune {redact_url(url)}: {short_error(exc)}") from exc
    finally:
        await engine.dispose()
    anchor_head(default_anchor_file(), key, str(identity), head)
    print(
        f"pruned: {plan.rows} input(s) of {len(plan.sessions)} session(s); audit entry {head.seq}"
    )
    return 0


def _say(plan: Plan, keep_days: int) -> None:
    print(
        f"inputs committed before {format_ts(plan.before_us)} (kept: {keep_days} days): "
        f"{plan.rows} in {len(plan.sessions)} session(s)"
    )
    if plan.unexported:
        sessions = ", ".join(map(str, plan.unexported))
        log.error(
            "REFUSED: the inputs of session(s) %s are in no verified export. For each: "
            "`calguard export --session N > FILE`, keep FILE (archive it), then "
            "`calguard log verify-export FILE` - and prune again. Nothing was dropped.",
            sessions,
        )


class Recorded:
    """Text written to ``stream``, hashed as it goes (what ``calguard export`` wrote)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.sha256 = stream, hashlib.sha256()

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.sha256.update(text.encode("utf-8"))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)


def record_export(db: str | None, session: int, rows: Sequence[Any], out: Recorded) -> None:
    """Record the export in the log (``log_exports``); a log that cannot take it (read-only,
    an older schema) is said, and the export stands - retention just cannot count on it."""
    url = normalise_db_url(db or default_db_url())

    async def record() -> int:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                return await retention.record_export(
                    conn, session, (r.seq for r in rows), out.sha256.hexdigest()
                )
        finally:
            await engine.dispose()

    out.stream.flush()
    try:
        export_id = asyncio.run(record())
    except (SQLAlchemyError, OSError) as exc:
        log.error(
            "the export was written but cannot be recorded in %s: %s (retention will "
            "not count on it)",
            redact_url(url),
            short_error(exc),
        )
        return
    log.info(
        "export %d recorded (SHA-256 %s): `calguard log verify-export FILE` on the kept copy "
        "lets `calguard log prune` drop these inputs",
        export_id,
        out.sha256.hexdigest(),
    )
