"""``calguard library``: the pharmacist's lifecycle of the drug library, on the command line.

    calguard library draft FILE                       # checked, kept by its content hash
    calguard library diff OLD NEW                     # files, or versions of the log
    calguard library approve VERSION [--acknowledge KEY]...
    calguard library publish VERSION --site SITE.toml [--site SITE.toml]...
    calguard library rollback --site SITE.toml [--to VERSION]
    calguard library history [--unit NAME]
    calguard library status

Every command works on the log database (``--db``; for ``publish`` and ``rollback`` the
site configs' by default; else the local SQLite file). The steps that change something
take the token of ``calguard login`` (``--token-file``): approving, publishing and rolling
back need a pharmacist's account. A version may be named by its first digits
(``sha256:9a07e6``). What is checked and recorded is ``calguard.pharmacy``'s. Exit status:
0 done, 1 refused (with the reason) or a problem in a library, 2 bad usage, 3 the database
could not be used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calguard.alerts.accounts import AccountError
from calguard.alerts.library_store import LibraryStoreError, Step
from calguard.config.diff import diff_libraries
from calguard.config.loader import check_library
from calguard.config.site import Site
from calguard.library_watch import POLL_S
from calguard.monitor.errors import ConfigError, LogError
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_ts
from calguard.pharmacy import DraftRefused, LifecycleError, Person, Pharmacy, Unit, UnitStatus
from calguard.site import load_site
from calguard.tokens import TokenError, default_token_file, read_token

__all__ = ["COMMAND", "add_parsers", "dispatch"]

log = logging.getLogger("calguard")
COMMAND = "library"


def add_parsers(sub: Any) -> None:
    library = sub.add_parser(
        COMMAND, help="the drug library's lifecycle: draft, diff, approve, publish, rollback"
    )
    steps = library.add_subparsers(dest="library_command", required=True)
    draft = steps.add_parser("draft", help="check a library file and keep it as a draft")
    draft.add_argument("file")
    diff = steps.add_parser("diff", help="every change between two versions, converted")
    diff.add_argument("old", help="a library file, or a version of the log (sha256:...)")
    diff.add_argument("new", help="a library file, or a version of the log")
    approve = steps.add_parser("approve", help="approve a draft (a pharmacist)")
    approve.add_argument("version")
    approve.add_argument(
        "--acknowledge",
        metavar="KEY",
        action="append",
        default=[],
        help="a warning of the draft, by its key (again for each one)",
    )
    publish = steps.add_parser("publish", help="an approved version to units (a pharmacist)")
    publish.add_argument("version")
    rollback = steps.add_parser(
        "rollback", help="back to the version published before (a pharmacist)"
    )
    rollback.add_argument("--to", metavar="VERSION", help="this version instead")
    for p in (publish, rollback):
        p.add_argument(
            "--site",
            metavar="SITE.toml",
            action="append",
            required=True,
            help="a unit's site config (its name, profile and four eyes); again for each",
        )
    history = steps.add_parser("history", help="every step: who, when, which version")
    history.add_argument("--unit", help="only this unit's (the site config's name)")
    steps.add_parser("status", help="what is published to each unit, and what it runs")
    for p in steps.choices.values():
        p.add_argument("--db", metavar="URL", help="the log database")
    for p in (draft, approve, publish, rollback):
        p.add_argument(
            "--token-file",
            metavar="FILE",
            help="the token of calguard login (default CALGUARD_TOKEN_FILE, else "
            "~/.config/calguard/token)",
        )


def dispatch(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except DraftRefused as exc:
        for problem in exc.checked.problems:
            log.error("%s", problem)
        log.error("%s", exc)
        return 1
    except (LifecycleError, LibraryStoreError, TokenError, AccountError) as exc:
        log.error("refused: %s", exc)
        return 1
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    except LogError as exc:
        log.error("%s", exc)
        return 3
    except OSError as exc:
        log.error("%s: cannot be read (%s)", exc.filename, exc.strerror)
        return 1
    except UnicodeDecodeError as exc:
        log.error("%s: not UTF-8 text (%s)", args.file, exc.reason)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """What the command reads from files (sites, the draft, the token, libraries to
    compare), then what it does with the log."""
    sites = [load_site(path) for path in getattr(args, "site", None) or []]
    url = args.db if args.db is not None else _site_db(sites)
    if args.library_command == "diff":
        return asyncio.run(_diff(_local(args.old), _local(args.new), url))
    token = read_token(_token_file(args)) if hasattr(args, "token_file") else None
    text = Path(args.file).read_text("utf-8") if args.library_command == "draft" else ""
    return asyncio.run(_command(args, url, [Unit.of_site(site) for site in sites], token, text))


async def _command(
    args: argparse.Namespace, url: str | None, units: list[Unit], token: str | None, text: str
) -> int:
    command = args.library_command
    async with Pharmacy(url) as pharmacy:
        if command == "history":
            _print_history(await pharmacy.history(args.unit))
            return 0
        if command == "status":
            _print_status(await pharmacy.status())
            return 0
        assert token is not None  # the commands that change something read it
        person = await pharmacy.person(token)
        if command == "draft":
            return await _draft(pharmacy, text, args.file, person)
        if command == "approve":
            step = await pharmacy.approve(args.version, person, set(args.acknowledge))
            said = len(step.detail.get("acknowledged", []))
            print(f"approved {step.version} by {_who(step)}; {said} warning(s) acknowledged")
            print(f"  audit entry {step.audit_seq}")
            return 0
        if command == "publish":
            found = await pharmacy.publish(args.version, person, units)
        else:
            found = await pharmacy.rollback(person, units, args.to)
    for step in found:
        verb = "published" if step.step == "publish" else "rolled back to"
        profile = f" (profile {step.profile})" if step.profile else ""
        approvers = ", ".join(step.detail.get("approved_by", []))
        print(f"{verb} {step.version} for {step.unit}{profile} by {_who(step)}")
        print(f"  approved by {approvers}; audit entry {step.audit_seq}")
    print(f"the units' monitors switch to it within {POLL_S:g} s, between two inputs")
    return 0


def _site_db(sites: Sequence[Site]) -> str | None:
    """The log database of the sites given (they must share one); None: the default."""
    dbs = {site.db for site in sites}
    if len(dbs) > 1:
        raise LifecycleError("the sites name different log databases: give --db")
    db = dbs.pop() if dbs else ""
    if db is None:
        raise LifecycleError('the site has no log database (db = "none"): give --db')
    return db or None


def _token_file(args: argparse.Namespace) -> Path:
    return Path(args.token_file) if args.token_file else default_token_file()


def _who(step: Step) -> str:
    return f"{step.actor} ({step.role})"


async def _draft(pharmacy: Pharmacy, text: str, file: str, person: Person) -> int:
    checked, step = await pharmacy.draft(text, file, person)
    library = checked.library
    assert library is not None  # a draft with problems is refused
    print(f"drafted {step.version} ({library.name}, {file}) by {_who(step)}")
    print(f"  audit entry {step.audit_seq}")
    if library.profiles:
        print(f"  profiles: {', '.join(library.profiles)}")
    if not checked.warnings:
        print(f"next: calguard library approve {step.version}")
        return 0
    print(f"{len(checked.warnings)} warning(s); approving needs each one acknowledged:")
    for warning in checked.warnings:
        print(f"  {warning.key}: {warning.message}")
    keys = " ".join(f"--acknowledge {w.key}" for w in checked.warnings)
    print(f"next: calguard library approve {step.version} {keys}")
    return 0


def _local(ref: str) -> Library | str:
    """A library file, loaded; else the reference, a version of the log."""
    if not Path(ref).is_file():
        return ref
    result = check_library(ref)
    if result.library is None:
        raise ConfigError(result.problems)
    return result.library


async def _diff(old: Library | str, new: Library | str, url: str | None) -> int:
    libraries: list[Library] = []
    for ref in (old, new):
        if isinstance(ref, Library):
            libraries.append(ref)
            continue
        async with Pharmacy(url) as pharmacy:
            libraries.append(await pharmacy.library(ref))
    before, after = libraries
    changes = diff_libraries(before, after)
    for sign, library in (("---", before), ("+++", after)):
        where = f" ({library.source})" if library.source != library.content_version else ""
        print(f"{sign} {library.version}{where}")
    for change in changes:
        print(change)
    print(f"{len(changes)} change(s)")
    return 0


def _print_history(steps: list[Step]) -> None:
    if not steps:
        print("no library steps in the log yet: calguard library draft FILE")
        return
    print(f"{'TIME (UTC)':<21}{'STEP':<10}{'VERSION':<25}{'UNIT':<20}{'BY':<24}AUDIT")
    for s in steps:
        unit = f"{s.unit}{f' ({s.profile})' if s.profile else ''}" if s.unit else "-"
        print(
            f"{format_ts(s.t_us)[:19]:<21}{s.step:<10}{s.version:<25}{unit[:19]:<20}"
            f"{_who(s)[:23]:<24}{s.audit_seq or '-'}"
        )


def _print_status(units: list[UnitStatus]) -> None:
    if not units:
        print("no unit in the log yet: nothing published, no live monitor")
        return
    for u in units:
        print(f"{u.unit}")
        p = u.published
        if p is None:
            print("  published: nothing (the monitor runs its site config's library)")
        else:
            profile = f"#{p.profile}" if p.profile else ""
            print(f"  published: {p.version}{profile} by {p.actor} at {format_ts(p.t_us)}")
        r = u.running
        if r is None:
            print("  running:   no monitor session in the log")
            continue
        state = "running" if r.ended_us is None else f"stopped at {format_ts(r.ended_us)}"
        approval = "approved" if u.approved else "NOT APPROVED"
        print(f"  running:   {r.version} ({approval}; {r.mode} session {r.session}, {state})")
        if u.switch_pending:
            print("  a switch is pending: its monitor has not taken the published version")
