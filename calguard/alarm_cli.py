"""The alarm commands of ``calguard``: audit, report, alerts and actions on alarms."""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import sys
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.alerts.audit import verify_chain
from calguard.alerts.log import default_db_url, normalise_db_url
from calguard.alerts.schema import audit_chain
from calguard.alerts.sessions import MODES, WARD, SessionFilter
from calguard.cliargs import retire_config
from calguard.monitor.errors import ConfigError
from calguard.monitor.timeutil import format_ts

__all__ = ["add_parsers", "dispatch"]

log = logging.getLogger("calguard")
COMMANDS = ("audit", "report", "alerts", "ack", "pause", "reset", "override")
DEFAULT_BROKER = "mqtt://127.0.0.1:1883/calguard/nicu"


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit chain")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="report the first broken link, if any")
    export = audit_sub.add_parser("export", help="the chain as CSV, for retention elsewhere")
    for p in (verify, export):
        p.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    export.add_argument(
        "--out",
        metavar="FILE.csv",
        help="default: standard output. Text a spreadsheet would run as a formula (starting "
        "with = + - @ tab CR) gets a leading ' (and a leading ' is doubled): drop one leading "
        "' from a cell to get the stored text, e.g. to recompute a hash",
    )
    report = sub.add_parser(
        "report", help="the alarm burden: per bed-day, by rule, acknowledgement"
    )
    report.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    report.add_argument("--session", type=int, help="only this session")
    report.add_argument("--site", help="only this site's sessions")
    report.add_argument(
        "--mode",
        choices=[*MODES, WARD],
        default=WARD,
        help="sessions of this mode (default: all but training and demo, no ward's burden)",
    )
    report.add_argument(
        "--since",
        help='alarms raised from this time ("2026-11-21T07:00:00Z") or this long ago ("7 day")',
    )
    report.add_argument(
        "--tz",
        metavar="ZONE",
        type=_time_zone,
        default="UTC",
        help="the site's IANA time zone (Europe/London): bed-days, days and hours of the "
        "chart are counted in it (default UTC)",
    )
    report.add_argument(
        "--csv", metavar="FILE.csv", help="one row per alarm (times in UTC, and raised_local)"
    )
    report.add_argument(
        "--png",
        metavar="FILE.png",
        help="alarms per hour by priority, one panel per day (the last 14 days)",
    )
    add_alarm_parsers(sub)


def _time_zone(name: str) -> ZoneInfo:
    """argparse type: a bad name is a usage error (exit 2) that says what to type."""
    from calguard.alerts.report import zone

    try:
        return zone(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _broker_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--broker", metavar="URL", help=f"the monitor's MQTT alarm sink (default {DEFAULT_BROKER})"
    )
    where.add_argument(
        "--site", metavar="SITE.toml", help="take the broker from the site's mqtt sink"
    )
    retire_config(p)


def add_alarm_parsers(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="the active alarms, as a central station sees them")
    alerts.add_argument("--bed", help="only this bed")
    alerts.add_argument("--priority", choices=["high", "medium", "low"], help="only this priority")
    alerts.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    _broker_args(alerts)
    helps = {
        "ack": "acknowledge an alarm: it stays visible, stops sounding and escalating",
        "pause": "pause an alarm's audio (the library's pause time, or --duration)",
        "reset": "reset a latched alarm whose condition has ended",
        "override": "override an alarm with a coded reason, until --duration (or the maximum)",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text)
        p.add_argument("alert", help="the alert id, e.g. a-000003")
        p.add_argument("--by", required=True, help="your user id")
        if action == "override":
            p.add_argument("--reason", required=True, help="a coded reason of the library")
        if action in ("pause", "override"):
            p.add_argument("--duration", help='e.g. "1 min", "2 h"')
        p.add_argument("--note", help="free text for the record")
        p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the monitor")
        _broker_args(p)


def _broker(args: argparse.Namespace) -> str:
    if args.broker:
        return str(args.broker)
    if args.site:
        from calguard.site import load_site

        site = load_site(args.site, db_default=None)
        for sink in site.sinks:
            if sink.url.startswith(("mqtt://", "mqtts://")):
                return sink.url
        raise ValueError(f"{args.site} has no mqtt sink: the alarm commands travel over MQTT")
    return DEFAULT_BROKER


def dispatch(args: argparse.Namespace) -> int:
    if args.command not in ("audit", "report"):
        from calguard import remote

        try:
            broker = _broker(args)
        except (ValueError, ConfigError) as exc:
            log.error("%s", exc)
            return 2
        if args.command == "alerts":
            return asyncio.run(remote.show_alerts(broker, args.bed, args.priority, args.json))
        return asyncio.run(remote.send_action(broker, args))
    url = normalise_db_url(args.db or default_db_url())
    try:
        if args.command == "report":
            return _report(url, args)
        if args.command == "audit" and args.audit_command == "verify":
            return asyncio.run(_verify(url))
        if args.command == "audit":
            return _export(asyncio.run(_audit_rows(url)), args.out)
    except (SQLAlchemyError, OSError) as exc:
        log.error("cannot read the log %s: %s", url, str(exc).splitlines()[0])
        return 3
    return 2


def _report(url: str, args: argparse.Namespace) -> int:
    from calguard.alerts.report import load_report, write_csv, write_png
    from calguard.drivers.clock import SystemClock
    from calguard.monitor import units
    from calguard.monitor.errors import QuantityError
    from calguard.monitor.timeutil import parse_ts

    since = None
    if args.since:
        try:
            since = parse_ts(args.since)
        except QuantityError:
            try:
                number, unit = units.split_quantity(args.since)
                ago = number * units.unit_factor(unit, units.DURATION)
            except QuantityError as exc:
                log.error(
                    "--since %r: %s; a time or a duration is expected", args.since, exc.reason
                )
                return 2
            since = SystemClock().now_us() - round(ago)
    which = SessionFilter(session=args.session, site=args.site, mode=args.mode)
    report = asyncio.run(load_report(url, since, args.tz, sessions_of=which))
    print(report.text())
    if args.csv:
        write_csv(report, args.csv)
        log.info("%d alarms written to %s", len(report.alarms), args.csv)
    if args.png:
        try:
            write_png(report, args.png)
        except ImportError:
            log.error("the chart needs matplotlib: pip install 'calguard[report]'")
            return 1
        log.info("chart written to %s", args.png)
    return 0


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
    from calguard.alerts.report import csv_cell

    stream = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(stream)
        writer.writerow(["seq", "time", "session", "kind", "actor", "payload", "prev_hash", "hash"])
        for r in rows:
            cells = [r.seq, format_ts(r.t_us), r.session_id, r.kind, r.actor or "", r.payload]
            writer.writerow([csv_cell(c) for c in (*cells, r.prev_hash, r.hash)])
    finally:
        if out:
            stream.close()
    log.info("%d audit entries exported", len(rows))
    return 0
