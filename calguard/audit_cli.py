"""``calguard audit verify`` and ``calguard audit export``.

``verify`` runs every check of ``calguard.alerts.audit`` and prints one line per check -
``ok`` with what it found, or ``FAILED`` with what is wrong - and exits 0 only when all
hold (1 when one fails, 3 when the log cannot be read). Keys come from ``--audit-key``
(as many as the chain was written with), else the data directory's; anchors from the
anchor file and, with ``--anchor-mqtt``, the broker's retained copy (logging in as
``calguard alerts`` does: ``CALGUARD_MQTT_USER``, ``CALGUARD_MQTT_PASSWORD``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from calguard.alerts.anchor_mqtt import anchor_topic, fetch_anchor
from calguard.alerts.audit import (
    AnchorSource,
    AuditReport,
    anchor_file_source,
    chain_rows,
    verify_chain,
)
from calguard.alerts.chain import AuditKey, AuditKeyError, load_key
from calguard.alerts.log import (
    default_audit_key,
    default_db_url,
    normalise_db_url,
    redact_url,
    short_error,
)
from calguard.monitor.errors import LogError
from calguard.monitor.timeutil import format_ts

__all__ = ["add_parser", "run"]

log = logging.getLogger("calguard")
_ANCHOR_WAIT_S = 5.0  # how long the broker's retained anchor may take to arrive


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit chain")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the chain, its HMACs, the tables it covers and its anchors"
    )
    export = audit_sub.add_parser("export", help="the chain as CSV, for retention elsewhere")
    for p in (verify, export):
        p.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    verify.add_argument(
        "--audit-key",
        metavar="FILE",
        action="append",
        help="a key the chain was written with (again for each earlier key; default: "
        "$CALGUARD_AUDIT_KEY, else <data dir>/keys/audit.key)",
    )
    verify.add_argument(
        "--anchors", metavar="FILE", help="the anchor file (default: <data dir>/audit/anchors)"
    )
    verify.add_argument(
        "--anchor-mqtt",
        metavar="URL",
        help="check the retained anchor on this broker too (mqtt://host:1883/calguard/nicu)",
    )
    export.add_argument(
        "--out",
        metavar="FILE.csv",
        help="default: standard output. Text a spreadsheet would run as a formula (starting "
        "with = + - @ tab CR) gets a leading ' (and a leading ' is doubled): drop one leading "
        "' from a cell to get the stored text, e.g. to recompute a hash",
    )


def run(args: argparse.Namespace) -> int:
    url = normalise_db_url(args.db or default_db_url())
    try:
        if args.audit_command == "verify":
            return asyncio.run(_verify(url, args))
        return _export(asyncio.run(chain_rows(url)), args.out)
    except (SQLAlchemyError, OSError, LogError) as exc:
        log.error("cannot read the log %s: %s", redact_url(url), short_error(exc))
        return 3


async def _verify(url: str, args: argparse.Namespace) -> int:
    keys = _keys(args.audit_key)
    sources = [anchor_file_source(Path(args.anchors) if args.anchors else None)]
    if args.anchor_mqtt:  # read before the chain: an anchor never runs ahead of it
        sources.append(await _mqtt_anchor(args.anchor_mqtt))
    report = await verify_chain(url, keys=keys, anchors=sources)
    _print(report, url)
    return 0 if report.ok else 1


def _keys(files: list[str] | None) -> dict[str, AuditKey]:
    keys: dict[str, AuditKey] = {}
    for file in files or [str(default_audit_key())]:
        try:
            key = load_key(Path(file), create=False)
        except AuditKeyError as exc:
            log.error("%s: the HMACs cannot be checked with it", exc)
            continue
        keys[key.id] = key
    return keys


async def _mqtt_anchor(url: str) -> AnchorSource:
    parts = urlsplit(url)
    topic = anchor_topic(parts.path.strip("/"))
    name = f"the retained anchor {topic} on {parts.hostname}:{parts.port or 1883}"
    link: dict[str, Any] = {"username": os.environ.get("CALGUARD_MQTT_USER")}
    if "CALGUARD_MQTT_PASSWORD" in os.environ:
        link["password_env"] = "CALGUARD_MQTT_PASSWORD"
    try:
        payload = await fetch_anchor(url, link, wait=_ANCHOR_WAIT_S)
    except ValueError as exc:
        return AnchorSource(name, [], redact_url(str(exc)))
    return AnchorSource(name, [payload] if payload else [])


def _print(report: AuditReport, url: str) -> None:
    print(f"audit of {redact_url(url)} (log {report.log_id or 'without identity'})")
    for check in report.checks.values():
        status = "ok" if check.ok else "FAILED"
        lines = [check.summary] if check.ok else check.problems
        if check.more:
            lines.append(f"... and {check.more} more")
        print(f"  {check.name:<18} {status:<7} {lines[0] if lines else ''}".rstrip())
        for line in lines[1:]:
            print(f"  {'':<18} {'':<7} {line}")
    if report.ok:
        print(f"audit verified: every check holds (head {report.head.seq} hmac:{report.head.hash})")
    else:
        failed = ", ".join(c.name for c in report.failed)
        print(f"audit FAILED: {failed}")


def _export(rows: list[Any], out: str | None) -> int:
    from calguard.alerts.report import csv_cell

    stream = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(stream)
        header = ["seq", "time", "session", "kind", "actor", "payload", "prev_hash", "hash"]
        writer.writerow([*header, "key_id", "subject", "digest"])
        for r in rows:
            cells = [r.seq, format_ts(r.t_us), r.session_id, r.kind, r.actor or "", r.payload]
            cells += [r.prev_hash, r.hash, r.key_id or "", r.subject or "", r.digest or ""]
            writer.writerow([csv_cell(c) for c in cells])
    finally:
        if out:
            stream.close()
    log.info("%d audit entries exported", len(rows))
    return 0
