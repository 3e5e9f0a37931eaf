"""The alarm commands of ``calguard``: audit, report, alerts and actions on alarms."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import SQLAlchemyError

from calguard import audit_cli
from calguard.alerts.log import default_db_url, normalise_db_url, redact_url, short_error
from calguard.alerts.sessions import MODES, WARD, SessionFilter
from calguard.cliargs import retire_config
from calguard.monitor.errors import ConfigError

__all__ = ["add_parsers", "dispatch"]

log = logging.getLogger("calguard")
COMMANDS = ("audit", "report", "alerts", "ack", "pause", "reset", "override")
DEFAULT_BROKER = "mqtt://127.0.0.1:1883/calguard/nicu"


def add_parsers(sub: Any) -> None:
    audit_cli.add_parser(sub)
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
    """Where the monitor's alarm sink is, and how a station logs in to its broker: the
    options of the MQTT driver (an account, its password from the environment, TLS)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--broker", metavar="URL", help=f"the monitor's MQTT alarm sink (default {DEFAULT_BROKER})"
    )
    where.add_argument(
        "--site", metavar="SITE.toml", help="take the broker from the site's mqtt sink"
    )
    p.add_argument("--username", help="broker account (default: $CALGUARD_MQTT_USER)")
    p.add_argument(
        "--password-env",
        metavar="NAME",
        help="environment variable holding the password (default: CALGUARD_MQTT_PASSWORD)",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) of the broker (TLS)")
    p.add_argument("--cert-file", metavar="FILE", help="client certificate (TLS)")
    p.add_argument("--key-file", metavar="FILE", help="client key (TLS)")
    retire_config(p)


def add_alarm_parsers(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="the active alarms, as a central station sees them")
    alerts.add_argument("--bed", help="only this bed")
    alerts.add_argument("--priority", choices=["high", "medium", "low"], help="only this priority")
    alerts.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    _broker_args(alerts)
    alerts.add_argument(
        "--max-age",
        type=float,
        default=30.0,
        metavar="S",
        help="a presence the monitor signed longer ago than this is not trusted (default 30)",
    )
    alerts.add_argument(
        "--monitor-key",
        metavar="FILE",
        help="the monitor's public key: only states it signed are shown (default: this "
        "machine's <data dir>/keys/state-ed25519.pub)",
    )
    helps = {
        "ack": "acknowledge an alarm: it stays visible, stops sounding and escalating",
        "pause": "pause an alarm's audio (the library's pause time, or --duration)",
        "reset": "reset a latched alarm whose condition has ended",
        "override": "override an alarm with a coded reason, until --duration (or the maximum)",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text)
        p.add_argument("alert", help="the alert id, e.g. a-000003")
        # who acts is the account of the token (calguard login); --by is refused, with why
        p.add_argument("--by", help=argparse.SUPPRESS)
        p.add_argument(
            "--token-file",
            metavar="FILE",
            help="the token of calguard login (default CALGUARD_TOKEN_FILE, else "
            "~/.config/calguard/token)",
        )
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
            access = remote.access(args)
            return asyncio.run(
                remote.show_alerts(
                    broker,
                    args.bed,
                    args.priority,
                    args.json,
                    access=access,
                    max_age=args.max_age,
                )
            )
        return asyncio.run(remote.send_action(broker, args, access=remote.access(args)))
    if args.command == "audit":
        return audit_cli.run(args)
    url = normalise_db_url(args.db or default_db_url())
    try:
        return _report(url, args)
    except (SQLAlchemyError, OSError) as exc:
        log.error("cannot read the log %s: %s", redact_url(url), short_error(exc))
        return 3


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
