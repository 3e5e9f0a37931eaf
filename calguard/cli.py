"""The ``calguard`` command line.

    calguard replay FILE.jsonl [--library LIBRARY.toml [--profile NAME]] [--db URL | --no-db]
    calguard run --site SITE.toml [--view] [--no-web | --web-port PORT]
    calguard demo [--scenario NAME] [--speed X] [--no-web | --web-port PORT] [--stay]
    calguard config check FILE
    calguard config show [FILE] [--profile NAME]
    calguard config init            # print the built-in library, to copy and edit
    calguard library draft|diff|approve|publish|rollback|history|status   (library_cli)

Alert lines go to standard output; diagnostics (rejected inputs, summaries) to standard
error. Exit status: 0 done, 1 the library or an input file is unusable, 2 bad usage,
3 the durable log failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from calguard import __version__, alarm_cli, broker_config, library_cli, log_cli, user_cli
from calguard.alerts.log import AlertLog, default_db_url, training_db_url
from calguard.alerts.sessions import MODES, SessionFilter, list_sessions
from calguard.cliargs import retire_config
from calguard.config.loader import builtin_text, check_library
from calguard.config.show import render_library
from calguard.config.site import Site, WebConfig, time_zone
from calguard.logs import FORMATS, setup_logging
from calguard.monitor.errors import ConfigError, LogError
from calguard.monitor.timeutil import format_ts
from calguard.pipeline import WIRE

__all__ = ["main"]

log = logging.getLogger("calguard")


def settle_heap() -> None:
    """After startup, move what lives for the whole run (the pint registry, the library,
    imported modules) out of the cyclic collector's way: otherwise every full collection
    walks those ~130,000 objects again, which cost 40% of the throughput (measured)."""
    gc.collect()
    gc.freeze()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calguard", description="Neonatal IV calcium safety monitor"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(verbose=False, quiet=False, log_format="text")
    sub = parser.add_subparsers(dest="command", required=True)

    rp = sub.add_parser("replay", help="replay a JSON Lines file of events; print alert lines")
    rp.add_argument("file", help="event file (JSON Lines), or - for standard input")
    rp.add_argument(
        "--library", metavar="LIBRARY.toml", help="drug library (default: the built-in one)"
    )
    rp.add_argument("--profile", metavar="NAME", help="the library's care-area profile to run")
    retire_config(rp)
    db = rp.add_mutually_exclusive_group()
    db.add_argument("--db", metavar="URL", help=f"log database URL (default: {default_db_url()})")
    db.add_argument("--no-db", action="store_true", help="do not write the durable log")
    rp.add_argument(
        "--no-alarms",
        action="store_true",
        help="the engine's alert lines only: no acknowledgement, pause, escalation ...",
    )
    rp.add_argument(
        "--unit",
        metavar="NAME",
        help="alert ids as this unit of a hospital config gives them (a-NAME-000123)",
    )

    cp = sub.add_parser("config", help="check, show or start a drug library")
    csub = cp.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a library; list every problem")
    check.add_argument("file")
    show = csub.add_parser("show", help="print the effective limits, converted")
    show.add_argument("file", nargs="?")
    show.add_argument("--profile", metavar="NAME", help="as this care-area profile has them")
    csub.add_parser("init", help="print the built-in library to start your own from")

    run = sub.add_parser("run", help="monitor live pumps as the site config says")
    run.add_argument("--site", required=True, metavar="SITE.toml", help="the site config")
    run.add_argument(
        "--units",
        metavar="A,B",
        help="of a hospital config, the units this monitor runs (default: all); a second "
        "monitor on the same units waits as their standby (PostgreSQL)",
    )
    retire_config(run)
    run.add_argument(
        "--view", action="store_true", help="show the live terminal view instead of alert lines"
    )
    run.add_argument("--db", metavar="URL", help="log database (overrides the site config)")
    run.add_argument(
        "--allow-unapproved",
        action="store_true",
        help="start on a library no pharmacist approved (the library-unapproved alarm stays "
        "raised until an approved one is published)",
    )
    _web_args(run, "default: as the site config's [web] says, which serves it")

    demo = sub.add_parser(
        "demo", help="simulated pumps and a scenario, no broker or hardware needed"
    )
    demo.add_argument("--scenario", default="demo", help="a shipped scenario or a scenario file")
    demo.add_argument(
        "--speed",
        type=_speed,
        default=60.0,
        help="clock speed-up (default 60: an hour a minute; at most 10000)",
    )
    view = demo.add_mutually_exclusive_group()
    view.add_argument(
        "--view", dest="view", action="store_true", default=None, help="the live terminal view"
    )
    view.add_argument(
        "--no-view", dest="view", action="store_false", help="alert lines instead of the view"
    )
    demo.add_argument(
        "--db", metavar="URL", help="log database (default: the training file, never the ward's)"
    )
    demo.add_argument("--no-db", action="store_true", help="do not write the durable log")
    _web_args(demo, "default: served, with a demo account in the training log")
    demo.add_argument(
        "--tz", metavar="ZONE", default="UTC", help="the station's local time (default UTC)"
    )
    stay = demo.add_mutually_exclusive_group()
    stay.add_argument(
        "--stay",
        dest="stay",
        action="store_true",
        default=None,
        help="keep the monitor and its station up after the scenario, until Ctrl-C "
        "(default when standard output is a terminal and the station is served)",
    )
    stay.add_argument(
        "--no-stay", dest="stay", action="store_false", help="stop when the scenario ends"
    )

    exp = sub.add_parser("export", help="a logged session's inputs as JSON Lines, to replay")
    exp.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    exp.add_argument("--session", type=int, help="session number (default: the newest)")
    _session_filters(exp)

    ses = sub.add_parser("sessions", help="the sessions a log holds: live, training, demo, replay")
    ses.add_argument("--db", metavar="URL", help="log database (default: the local SQLite file)")
    _session_filters(ses, mode_default=None)
    exp.add_argument("--alerts", action="store_true", help="the session's alert lines instead")

    sim = sub.add_parser("simulate", help="simulated pumps on a real wire, scripted by a scenario")
    sim.add_argument(
        "wire", nargs="?", choices=["serial", "mqtt", "hl7"], help="which wire the pumps speak"
    )
    sim.add_argument("--scenario", default="demo", help="a shipped scenario or a scenario file")
    sim.add_argument("--list", action="store_true", help="list the shipped scenarios")
    sim.add_argument(
        "--speed", type=_speed, default=1.0, help="clock speed-up (the monitor needs the same)"
    )
    sim.add_argument("--once", action="store_true", help="stop at the scenario's end")
    sim.add_argument("--dir", help="where to put the pty link, bedside file and site config")
    sim.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883/calguard/nicu", help="MQTT broker and prefix"
    )
    sim.add_argument(
        "--to", default="mllp://127.0.0.1:2575", help="the monitor's MLLP listener (hl7)"
    )
    sim.add_argument("--safe", action="store_true", help="NE-1000 safe mode (serial)")
    sim.add_argument(
        "--style",
        choices=["bbraun", "ihe"],
        default="bbraun",
        help="hl7: the gateway's vendor style (B. Braun SpaceStation, or the IHE framework's)",
    )
    sim.add_argument(
        "--no-wait",
        action="store_true",
        help="mqtt: start at once instead of waiting for the monitor to subscribe",
    )
    alarm_cli.add_parsers(sub)
    user_cli.add_parsers(sub)
    library_cli.add_parsers(sub)
    log_cli.add_parser(sub)
    broker_config.add_parser(sub)
    _everywhere(parser)
    return parser


def _web_args(p: argparse.ArgumentParser, default: str) -> None:
    """The central station in the browser: on or off, and on which loopback port."""
    web = p.add_mutually_exclusive_group()
    web.add_argument(
        "--web",
        dest="web",
        action="store_true",
        default=None,
        help=f"serve the central station in the browser ({default})",
    )
    web.add_argument("--no-web", dest="web", action="store_false", help="no central station")
    p.add_argument(
        "--web-port",
        type=_port,
        metavar="PORT",
        help="the station's port on 127.0.0.1 (default 8470; 0: any free port)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text}: a port from 0 to 65535")
    return port


def _session_filters(p: argparse.ArgumentParser, mode_default: str | None = None) -> None:
    p.add_argument("--site", help="only this site's sessions (the site config's name)")
    p.add_argument("--mode", choices=MODES, default=mode_default, help="only sessions of this mode")


def _speed(text: str) -> float:
    """A clock speed-up as the monitor takes it: above 0, at most 10000."""
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < speed <= 10_000:
        raise argparse.ArgumentTypeError(f"{text}: a speed above 0 and at most 10000")
    return speed


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """The diagnostics options, accepted before or after any subcommand (defaults are set
    once on the top parser, so a subcommand's parser does not reset what was given)."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more diagnostics"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors"
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="diagnostics on standard error as text (time, level, logger) or JSON lines",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    setup_logging(level, args.log_format)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # the reader went away (`calguard alerts --json | head`): stop quietly, as Unix
        # tools do, and keep Python from complaining again when it flushes at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _SIGPIPE_EXIT


_SIGPIPE_EXIT = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        return _config(args)
    if args.command == "replay":
        return _replay(args)
    if args.command in alarm_cli.COMMANDS:
        return alarm_cli.dispatch(args)
    if args.command in user_cli.COMMANDS:
        return user_cli.dispatch(args)
    if args.command == library_cli.COMMAND:
        return library_cli.dispatch(args)
    if args.command == log_cli.COMMAND:
        return log_cli.dispatch(args)
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "export":
        return _export(args)
    if args.command == "sessions":
        return _sessions(args)
    if args.command == "broker-config":
        return broker_config.main(args)
    return 2


def _sessions(args: argparse.Namespace) -> int:
    try:
        found = asyncio.run(list_sessions(args.db, SessionFilter(site=args.site, mode=args.mode)))
    except LogError as exc:
        log.error("%s", exc)
        return 3
    print(f"{'SESSION':>7}  {'MODE':<9}{'SITE':<24}{'STARTED (UTC)':<22}{'INPUTS':>8}{'ALERTS':>8}")
    for info in found:
        print(
            f"{info.id:>7}  {info.mode:<9}{(info.site or '-')[:23]:<24}"
            f"{format_ts(info.started_us)[:19]:<22}{info.inputs:>8}{info.alerts:>8}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from calguard.alerts.log import session_rows
    from calguard.monitor.events import ALARM_ACTIONS
    from calguard.recovery import WARM_START, exported_context

    session = args.session
    try:
        if session is None and (args.site is not None or args.mode is not None):
            which = SessionFilter(site=args.site, mode=args.mode)
            found = asyncio.run(list_sessions(args.db, which))
            if not found:
                log.error("no session of site %r and mode %r in the log", args.site, args.mode)
                return 1
            session = found[-1].id
        session, rows, alerts = asyncio.run(session_rows(args.db, session))
    except LogError as exc:
        log.error("%s", exc)
        return 3
    if args.alerts:
        sys.stdout.writelines(line + "\n" for line in alerts)
        return 0
    skipped = skipped_actions = 0
    out = log_cli.Recorded(sys.stdout)  # its SHA-256 is recorded: retention needs it
    for row in rows:
        if row.event_type == WARM_START and row.status == "accepted":
            # the live warm start that began the session, and what it read from the log
            try:
                context = asyncio.run(exported_context(args.db, session, row.raw))
            except LogError as exc:
                log.error("%s", exc)
                return 3
            out.writelines(line + "\n" for line in context)
        elif row.status == "rejected" and row.event_type in ALARM_ACTIONS:
            # refused live and changed nothing (a command without valid proof, an action a
            # device sent): the log and the audit chain keep it; a replay, which takes file
            # actions, must not apply it
            skipped_actions += 1
        elif row.event_type != WIRE:
            out.write(row.raw + "\n")
        elif row.pump is not None and row.t_us is not None:
            # bytes a driver could not use, naming a pump: they raised telemetry-invalid (or
            # input-unknown) live, so the replay must see them; as what they were to the
            # engine, not as the bytes (the log keeps those)
            problem = {
                "t": format_ts(row.t_us),
                "type": WIRE,
                "pump": row.pump,
                "channel": row.channel or "A",
                "reason": row.reason or "",
                "source": row.source,
            }
            out.write(orjson.dumps(problem).decode() + "\n")
        else:
            skipped += 1  # naming no pump: logged, and nothing for a replay to do
    log_cli.record_export(args.db, session, rows, out)
    log.info(
        "session %s: %d inputs exported; left out: %d wire problems naming no pump, %d "
        "refused actions",
        session,
        len(rows) - skipped - skipped_actions,
        skipped,
        skipped_actions,
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from calguard.simulate import main_list, simulate
    from calguard.simulators.scenario import load_scenario

    if args.list or args.wire is None:
        return main_list()
    try:
        scenario = load_scenario(args.scenario)
    except ConfigError as exc:
        return _problems(exc)
    return asyncio.run(
        simulate(
            args.wire,
            scenario,
            speed=args.speed,
            once=args.once,
            wait=not args.no_wait,
            directory=args.dir,
            broker=args.broker,
            target=args.to,
            safe=args.safe,
            style=args.style,
        )
    )


def _problems(exc: ConfigError) -> int:
    """Every problem of a config or scenario, one line each; exit status 1."""
    for problem in exc.problems:
        log.error("%s", problem)
    return 1


def _run(args: argparse.Namespace) -> int:
    from calguard.units import load_units, run_units, select_units

    try:
        units = select_units(load_units(args.site), args.units)
    except ConfigError as exc:
        return _problems(exc)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if args.view and len(units) > 1:
        log.error("the terminal view shows one unit: choose it with --units NAME")
        return 1
    units = tuple(dataclasses.replace(u, site=_run_site(args, u.site)) for u in units)
    settle_heap()
    try:
        return asyncio.run(run_units(units, view=args.view, allow_unapproved=args.allow_unapproved))
    except LogError as exc:
        log.error("%s", exc)
        return 3


def _run_site(args: argparse.Namespace, site: Site) -> Site:
    """The site as the command line overrides it (its log, its station)."""
    if args.db is not None:
        site = dataclasses.replace(site, db=args.db)
    web = site.web
    if args.web is not None:
        web = dataclasses.replace(web, enabled=args.web)
    if args.web_port is not None:
        web = dataclasses.replace(web, port=args.web_port)
    return dataclasses.replace(site, web=web)


def _demo(args: argparse.Namespace) -> int:
    from calguard.config.loader import load_library
    from calguard.live import run_demo
    from calguard.simulators.scenario import load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ConfigError as exc:
        return _problems(exc)
    view = sys.stdout.isatty() if args.view is None else args.view
    # the demo never writes the ward's log: its own file, unless --db says otherwise
    db = None if args.no_db else (args.db or training_db_url())
    web = None
    if args.web is not False:
        try:
            time_zone(args.tz)
        except ValueError as exc:
            log.error("--tz: %s", exc)
            return 2
        web = WebConfig(port=8470 if args.web_port is None else args.web_port, timezone=args.tz)
    stay = web is not None and sys.stdout.isatty() if args.stay is None else args.stay
    settle_heap()
    try:
        return asyncio.run(
            run_demo(
                load_library(),
                scenario,
                speed=args.speed,
                view=view,
                db=db,
                web=web,
                accounts=db is not None and args.db is None,  # its own training log only
                stay=stay,
            )
        )
    except LogError as exc:
        log.error("%s", exc)
        return 3


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "init":
        sys.stdout.write(builtin_text())
        return 0
    result = check_library(args.file, getattr(args, "profile", None))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.library is None:
        print(f"{args.file}: {len(result.problems)} problem(s):", file=sys.stderr)
        for problem in result.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    if args.config_command == "check":
        lib = result.library
        print(f"{args.file}: OK — {lib.name}, version {lib.version}, {len(lib.products)} products")
        if result.warnings:
            print(
                f"{len(result.warnings)} warning(s): approving this library needs each one "
                "acknowledged (calguard library approve VERSION --acknowledge KEY)"
            )
        return 0
    sys.stdout.write(render_library(result.library))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from calguard.replay import replay  # the engine is only imported when it is used

    result = check_library(args.library, args.profile)
    for warning in result.warnings:
        log.warning("warning: %s", warning)
    if result.library is None:
        for problem in ConfigError(result.problems).problems:
            log.error("%s", problem)
        return 1
    library = result.library
    settle_heap()
    if args.unit is not None:  # copied into the run below: its engine's books take it
        from calguard.units import ALERT_PREFIX

        ALERT_PREFIX.set(f"a-{args.unit}-")
    if args.file == "-":
        stream: BinaryIO = sys.stdin.buffer
        source = "stdin"
    else:
        try:
            stream = Path(args.file).open("rb")  # noqa: SIM115  # closed in the finally below
        except OSError as exc:
            log.error("%s: %s", args.file, exc.strerror)
            return 1
        source = args.file

    async def run() -> int:
        if args.no_db:
            summary = await replay(
                stream, source=source, library=library, out=sys.stdout, alarms=not args.no_alarms
            )
            log.info("%s", summary.describe())
            return 0
        async with AlertLog(args.db) as alert_log:
            summary = await replay(
                stream,
                source=source,
                library=library,
                out=sys.stdout,
                log=alert_log,
                alarms=not args.no_alarms,
            )
        log.info(
            "%s; logged to %s (session %s)",
            summary.describe(),
            alert_log.display_url,
            summary.session_id,
        )
        return 0

    try:
        return asyncio.run(run())
    except LogError as exc:
        log.error("%s", exc)
        return 3
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


if __name__ == "__main__":
    sys.exit(main())
