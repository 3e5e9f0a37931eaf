"""The people commands of ``calguard``: accounts, logging in and out, the token keys.

    calguard user add NAME --role ROLE [--db URL] [--password-stdin]
    calguard user disable|enable NAME [--db URL]
    calguard user passwd NAME [--db URL] [--password-stdin]
    calguard user list [--db URL]
    calguard login [--user NAME] [--ttl 1h] [--db URL] [--token-file FILE] [--password-stdin]
    calguard logout [--token-file FILE]
    calguard keys rotate

Accounts live in the log database (``--db``: by default the local SQLite file, as for
``calguard run``). Passwords are read from a prompt that does not echo them, or from the
first line of standard input for scripts; they are never printed, logged or put in an
argument (where ``ps`` would show them). Exit status: 0 done, 1 refused (a wrong password,
a disabled account, a name taken or not allowed), 2 bad usage or no password, 3 the
database could not be used.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import time
from pathlib import Path
from typing import Any

from calguard.alerts.accounts import (
    ROLES,
    Account,
    AccountError,
    Accounts,
    check_name,
    check_password,
)
from calguard.alerts.log import default_db_url
from calguard.monitor import units
from calguard.monitor.errors import LogError, QuantityError
from calguard.monitor.timeutil import format_ts
from calguard.tokens import (
    DEFAULT_TTL_S,
    MAX_TTL_S,
    KeyRing,
    TokenError,
    default_token_file,
    issue,
    remove_token,
    write_token,
)

__all__ = ["COMMANDS", "add_parsers", "dispatch"]

log = logging.getLogger("calguard")
COMMANDS = ("user", "login", "logout", "keys")
_MIN_TTL_S = 60


def add_parsers(sub: Any) -> None:
    user = sub.add_parser("user", help="people's accounts: add, disable, enable, passwd, list")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="a new account, with its role")
    add.add_argument("name", help="2-32 characters: a-z, 0-9, '.', '_', '-' (e.g. rn42)")
    add.add_argument("--role", required=True, choices=ROLES, help="what the person may do")
    for name, text in (
        ("disable", "the account can no longer log in or act (its tokens stop working)"),
        ("enable", "a disabled account may log in again"),
        ("passwd", "set a new password (the account's tokens stop working)"),
    ):
        p = user_sub.add_parser(name, help=text)
        p.add_argument("name")
    user_sub.add_parser("list", help="every account: name, role, state")
    for p in user_sub.choices.values():
        _db_arg(p)
    for p in (add, user_sub.choices["passwd"]):
        _password_stdin(p)

    login = sub.add_parser("login", help="prove who you are: a signed token for the commands")
    login.add_argument(
        "--user", default=None, help="the account (default: your login name on this computer)"
    )
    login.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL_S,
        help=f'how long the token holds, e.g. "30 min", "8 h" (default 1 h, at most '
        f"{MAX_TTL_S // 3600} h)",
    )
    _db_arg(login)
    _password_stdin(login)
    logout = sub.add_parser("logout", help="forget the token of calguard login")
    for p in (login, logout):
        p.add_argument(
            "--token-file",
            metavar="FILE",
            help="where the token is kept (default CALGUARD_TOKEN_FILE, else "
            "~/.config/calguard/token)",
        )

    keys = sub.add_parser("keys", help="the keys that sign login tokens")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser(
        "rotate",
        help="a new signing key; tokens signed with the previous one hold until they expire",
    )


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help=f"the log database with the accounts (default {default_db_url()})",
    )


def _password_stdin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (scripts)",
    )


def _ttl(text: str) -> int:
    """argparse type: a token lifetime, 1 min to 12 h."""
    try:
        number, unit = units.split_quantity(text)
        seconds = number * units.unit_factor(unit, units.DURATION) / 1e6
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.explain()}") from None
    if not _MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(
            f"{text}: a token holds from 1 min to {MAX_TTL_S // 3600} h"
        )
    return round(seconds)


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "logout":
            return _logout(args)
        if args.command == "keys":
            kid = KeyRing().rotate(time.time())
            print(
                f"token signing key {kid} made; the previous key verifies until its tokens expire"
            )
            return 0
        return asyncio.run(_login(args) if args.command == "login" else _user(args))
    except (AccountError, TokenError) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s: %s", exc.filename or "the token keys", exc.strerror)
        return 1
    except LogError as exc:
        log.error("%s", exc)
        return 3
    except (EOFError, KeyboardInterrupt):
        log.error("no password given")
        return 2


async def _user(args: argparse.Namespace) -> int:
    name = args.name if args.user_command != "list" else None
    if name is not None:
        check_name(name)
    password = None
    if args.user_command in ("add", "passwd"):
        password = _new_password(name or "", args.password_stdin)
    async with Accounts(args.db) as accounts:
        if args.user_command == "list":
            _print_accounts(list((await accounts.snapshot()).values()))
            return 0
        assert name is not None
        if args.user_command == "add":
            assert password is not None
            account = await accounts.add(name, args.role, password)
            print(f"account {account.name} added: {account.role}")
        elif args.user_command == "passwd":
            assert password is not None
            await accounts.passwd(name, password)
            print(
                f"account {name}: password changed; running monitors refuse its earlier "
                "tokens within 2 s"
            )
        elif args.user_command == "disable":
            await accounts.disable(name)
            print(f"account {name} disabled; running monitors refuse its tokens within 2 s")
        else:
            await accounts.enable(name)
            print(f"account {name} enabled")
    return 0


def _print_accounts(found: list[Account]) -> None:
    if not found:
        print("no accounts yet: calguard user add NAME --role ROLE")
        return
    print(f"{'NAME':<33}{'ROLE':<14}{'STATE':<10}CHANGED (UTC)")
    for a in found:
        print(f"{a.name:<33}{a.role:<14}{a.state:<10}{format_ts(a.changed_us)[:19]}")


async def _login(args: argparse.Namespace) -> int:
    name = args.user or getpass.getuser()
    password = _password(f"Password for {name}: ", args.password_stdin)
    async with Accounts(args.db) as accounts:
        account = await accounts.authenticate(name, password)
    now = time.time()
    token = issue(KeyRing(), account.name, account.role, ttl_s=args.ttl, now_s=now)
    path = Path(args.token_file) if args.token_file else default_token_file()
    write_token(path, token)
    until = format_ts(int(now + args.ttl) * 1_000_000)
    print(f"logged in as {account.name} ({account.role}) until {until}; token in {path}")
    return 0


def _logout(args: argparse.Namespace) -> int:
    path = Path(args.token_file) if args.token_file else default_token_file()
    print("logged out" if remove_token(path) else f"not logged in (no token at {path})")
    return 0


def _new_password(name: str, from_stdin: bool) -> str:
    password = check_password(_password(f"New password for {name}: ", from_stdin))
    if not from_stdin and getpass.getpass("Again: ") != password:
        raise AccountError("the two passwords differ; nothing was changed")
    return password


def _password(prompt: str, from_stdin: bool) -> str:
    if not from_stdin:
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")
