"""``calguard broker-config --site SITE.toml --out DIR``: the MQTT broker's accounts and
access list, made from the site config, so that every device and app publishes only where
it belongs (DESIGN.md: nothing at the edge is trusted blindly).

Three files go into DIR, for Mosquitto 2 (``deploy/mosquitto/README.md`` installs them):

    calguard.passwd       the accounts, as Mosquitto's ``mosquitto_passwd`` writes them
                          (``$7$``: PBKDF2-SHA512), made here so the tool need not be there
    calguard.acl          what each account may read and write; Mosquitto denies the rest
    calguard.credentials  each account's password (TOML, 0600): give each its own

The accounts: the monitor (the ``username`` of the site's mqtt drivers and sinks), the only
one that may write alarms, its presence and command results; each pump (its own telemetry
and presence) or gateway (those of its pumps); each bedside charting app (its own
``events/<account>`` topic: the driver stamps the account on what it charts); each central
station (reads alarms, sends commands). Passwords are random; running it again keeps them
and their hashes, so only new accounts get new ones, unless ``--rotate`` says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from calguard.alerts.private import private_dir
from calguard.config.site import BrokerAccounts, Site
from calguard.monitor.errors import ConfigError, ConfigProblem

__all__ = [
    "ACL",
    "CREDENTIALS",
    "PASSWD",
    "BrokerPlan",
    "acl_text",
    "add_parser",
    "main",
    "password_line",
    "plan",
    "write",
]

log = logging.getLogger("calguard")

PASSWD, ACL, CREDENTIALS = "calguard.passwd", "calguard.acl", "calguard.credentials"
#: Mosquitto 2's own choice (``mosquitto_passwd``); the broker hashes every log-in with it.
#: The passwords are random, 192 bits: no count of iterations would make guessing easier
_ITERATIONS = 101
_SALT_BYTES = 12
_PASSWORD_BYTES = 24
_TOPIC_UNSAFE = set("+#\x00 ")


@dataclass(frozen=True)
class BrokerPlan:
    """Who is on the broker, for which topic prefixes."""

    site: str
    prefixes: tuple[str, ...]
    monitors: tuple[str, ...]
    accounts: BrokerAccounts

    @property
    def names(self) -> list[str]:
        """Every account, the monitor's first."""
        a = self.accounts
        return [
            *self.monitors,
            *a.pumps,
            *(name for name, _ in a.gateways),
            *(c.account for c in a.charting),
            *a.stations,
        ]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "broker-config",
        help="the MQTT broker's accounts, passwords and access list, from the site config",
    )
    p.add_argument("--site", required=True, metavar="SITE.toml", help="the site config")
    p.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    p.add_argument(
        "--rotate",
        nargs="*",
        metavar="ACCOUNT",
        help="new passwords for these accounts (for every account when none is named)",
    )


def main(args: argparse.Namespace) -> int:
    from calguard.site import load_site

    try:
        found = plan(load_site(args.site, db_default=None))
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    rotate = None if args.rotate is None else set(args.rotate or found.names)
    unknown = sorted((rotate or set()) - set(found.names))
    if unknown:
        log.error("--rotate: no account %s in %s", ", ".join(unknown), args.site)
        return 2
    try:
        fresh = write(found, Path(args.out), rotate or set())
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    a = found.accounts
    print(
        f"{found.site}: {len(found.names)} broker accounts under {', '.join(found.prefixes)}: "
        f"monitor {', '.join(found.monitors)}; pumps {len(a.pumps)}, gateways "
        f"{len(a.gateways)}, charting {len(a.charting)}, stations {len(a.stations)}"
    )
    print(f"written to {args.out}: {PASSWD}, {ACL}, {CREDENTIALS} (secret: give each its own)")
    if fresh:
        print(f"new passwords: {', '.join(fresh)}")
    print("install them (deploy/mosquitto/README.md), then reload Mosquitto: kill -HUP")
    return 0


def plan(site: Site) -> BrokerPlan:
    """The accounts of the site's broker; ``ConfigError`` (file and key) when the site
    cannot have them: no mqtt driver or sink, one without a username, a clash."""
    problems: list[ConfigProblem] = []

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(site.source, key, message))

    prefixes: dict[str, None] = {}
    monitors: dict[str, None] = {}
    given = [(f"drivers[{i}]", d) for i, d in enumerate(site.drivers)]
    given += [(f"sinks[{i}]", s) for i, s in enumerate(site.sinks)]
    for key, entry in given:
        parts = urlsplit(entry.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            continue
        prefix = parts.path.strip("/")
        if _TOPIC_UNSAFE & set(prefix) or "" in prefix.split("/"):
            problem(f"{key}.url", f"{prefix!r}: a topic prefix without wildcards or spaces")
        prefixes[prefix] = None
        username = entry.options.get("username")
        if isinstance(username, str):
            monitors[username] = None
        else:
            problem(
                key,
                'no username: add username = "calguard-monitor" and password_env = '
                '"CALGUARD_MQTT_PASSWORD" (the monitor logs in with the account made here)',
            )
    if not prefixes:
        problem("", "no mqtt driver or sink: there is no broker to make accounts for")
    found = BrokerPlan(site.name, tuple(prefixes), tuple(monitors), site.broker)
    names = found.names
    for name in sorted({n for n in names if names.count(n) > 1} & set(monitors)):
        problem("broker", f'"{name}" is the monitor\'s account: each device or app needs its own')
    if problems:
        raise ConfigError(problems)
    return found


# -- the access list -------------------------------------------------------------------------


def acl_text(found: BrokerPlan) -> str:
    """The Mosquitto ACL: each account's topics under every prefix, nothing else."""
    a = found.accounts
    monitor = "the monitor: the only writer of alarms, presence, results and the audit anchor"
    blocks = [
        *((m, monitor, _MONITOR) for m in found.monitors),
        *((p, f"pump {p}: its telemetry and presence", _pump_topics(p)) for p in a.pumps),
        *(
            (g, f"gateway {g}: the telemetry and presence of {', '.join(ps)}", _pump_topics(*ps))
            for g, ps in a.gateways
        ),
        *(
            (c.account, f"bedside charting: {', '.join(sorted(c.events))}", _charting(c.account))
            for c in a.charting
        ),
        *((s, "a central station: reads alarms, sends commands", _STATION) for s in a.stations),
    ]
    head = (
        f"# Mosquitto ACL of {found.site}, generated by `calguard broker-config`. Do not edit:\n"
        "# change the site config's [broker] table and run it again. An account may do\n"
        "# only what is listed under it; Mosquitto denies everything else.\n"
    )
    return head + "".join(
        f"\n# {title}\nuser {name}\n"
        + "".join(f"topic {access} {p}/{topic}\n" for p in found.prefixes for access, topic in t)
        for name, title, t in blocks
    )


_MONITOR = [
    ("read", "pumps/+/telemetry"),
    ("read", "pumps/+/status"),
    ("read", "events"),
    ("read", "events/+"),
    ("write", "monitor/status"),
    ("readwrite", "alerts/#"),
    ("read", "commands"),
    ("write", "commands/results"),
    ("readwrite", "audit/anchor"),  # the audit chain's anchor, kept off the monitor's disk
]
_STATION = [
    ("read", "alerts/#"),
    ("read", "monitor/status"),
    ("write", "commands"),
    ("read", "commands/results"),
]


def _pump_topics(*pumps: str) -> list[tuple[str, str]]:
    own = [("write", f"pumps/{p}/{kind}") for p in pumps for kind in ("telemetry", "status")]
    return [*own, ("read", "monitor/status")]


def _charting(account: str) -> list[tuple[str, str]]:
    return [("write", f"events/{account}"), ("read", "monitor/status")]


# -- passwords ---------------------------------------------------------------------------


def password_line(user: str, password: str) -> str:
    """One line of Mosquitto 2's password file: ``user:$7$iterations$salt$hash``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{user}:$7${_ITERATIONS}${encoded[0]}${encoded[1]}"


def _matches(line: str, password: str) -> bool:
    """Whether a password file line is this password's hash (to keep it as it is)."""
    try:
        _, rest = line.split(":", 1)
        _, kind, iterations, salt, digest = rest.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(computed, base64.b64decode(digest))
    except ValueError:
        return False


def write(found: BrokerPlan, out: Path, rotate: set[str]) -> list[str]:
    """Write the three files; passwords kept from an earlier run unless rotated. Returns
    the accounts with a new password."""
    private_dir(out)
    credentials = out / CREDENTIALS
    old = _read_credentials(credentials)
    old_lines = _read_lines(out / PASSWD)
    fresh: list[str] = []
    passwords: dict[str, str] = {}
    for name in found.names:
        if name in old and name not in rotate:
            passwords[name] = old[name]
            continue
        passwords[name] = secrets.token_urlsafe(_PASSWORD_BYTES)
        fresh.append(name)
    lines = [
        old_lines[name]
        if _matches(old_lines.get(name, ""), secret)
        else password_line(name, secret)
        for name, secret in passwords.items()
    ]
    _replace(out / PASSWD, "".join(line + "\n" for line in lines), 0o600)
    _replace(out / ACL, acl_text(found), 0o644)
    _replace(credentials, _credentials_text(found, passwords), 0o600)
    return fresh


def _read_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        found = tomllib.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(
            f"{path} cannot be read ({exc}): mend or remove it (removing it gives every "
            "account a new password)"
        ) from None
    return {k: v for k, v in found.items() if isinstance(v, str)}


def _read_lines(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    lines = path.read_text("utf-8").splitlines()
    return {line.split(":", 1)[0]: line for line in lines if ":" in line}


def _credentials_text(found: BrokerPlan, passwords: dict[str, str]) -> str:
    head = (
        f"# Broker passwords of {found.site}, made by `calguard broker-config`. Secret: give\n"
        "# each device or app only its own. The monitor reads its own from the environment\n"
        "# variable its site config names (password_env).\n"
    )
    return head + "".join(f'"{name}" = "{secret}"\n' for name, secret in passwords.items())


def _replace(path: Path, text: str, mode: int) -> None:
    """Write ``path`` whole (beside it, then moved into place) with ``mode``."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
