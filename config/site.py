"""The site config: which drug library, which log, which drivers with which options.

    [site]
    name = "NICU North"
    library = "nicu-library.toml"   # relative to this file; default: the built-in library
    profile = "nicu"                # the library's care-area profile this unit runs
    four_eyes = true                # publishing a library to this unit takes two pharmacists
    timezone = "Europe/London"      # IANA name: local time in reports (default UTC)
    db = "postgresql://calguard@127.0.0.1/calguard"   # default: the local SQLite file; "none"
    speed = 1.0                     # training only: the clock runs this many times faster
    clock_anchor = 2026-11-22T14:00:00Z   # training only: where the fast clock starts
                                          # (default 00:00 UTC today); simulators write it

    [[drivers]]
    url = "mqtt://127.0.0.1:1883/calguard/nicu"
    client_id = "calguard-nicu-north"

    [[sinks]]                       # alarms out: terminal, jsonlog, mqtt, https, mllp
    url = "mqtt://127.0.0.1:1883/calguard/nicu"

    [[drivers]]
    url = "serial:///dev/ttyUSB0?baud=19200&mode=safe"
    [[drivers.pumps]]
    address = 0
    pump = "P1"
    drug = "Calcium gluconate 20 mg/ml"
    concentration = "20 mg/ml"

    [broker]                        # who may publish what on the MQTT broker: the accounts
    pumps = ["P7", "P8"]            # `calguard broker-config` makes (a pump logs in as its id)
    stations = ["station-1"]        # central stations: read alarms, send commands
    [[broker.gateways]]             # a gateway that publishes for several pumps
    account = "gw-north"
    pumps = ["P3", "P4"]
    [[broker.charting]]             # bedside charting, on <prefix>/events/<account>
    account = "chart-b1"
    events = ["patency_check", "site_check"]   # default: every bedside documentation type

    [web]                           # the central station in the browser (on by default)
    host = "127.0.0.1"              # a loopback address only: no TLS, not for the network
    port = 8470                     # 0: any free port (the monitor logs which)
    timezone = "Europe/London"      # the station's local time (default: the site's)
    session = "8 h"                 # how long a login in the browser holds (at most 12 h)

Each driver and sink declares the options it takes (``options``, a map of ``OptionSpec``),
a driver also the parameters of its URL (``url_params``; none when it declares none) and
any check across them (``config_problems(url, options)``, (key, message) pairs). They are
checked here, with the library, so that every problem is reported at once, with file and
key; a pump table's drug must be a product of the library (or no calcium and nothing like
one), its concentration a mass per volume. The drivers and sinks live floors above
``config``, so the caller hands in the lookups that find their classes
(``calguard.site.load_site`` does, with the registries).

The broker's accounts are the site's too: only the monitor, and each device or app in
its own topics (the ACL ``calguard broker-config`` writes). Bedside events that can clear
an alarm must come from a charting account allowed to chart them, so a driver that reads
bedside charting (``takes_charting``) is handed the ``[[broker.charting]]`` accounts.
Account and pump names end up in topics and in Mosquitto's files: letters, digits and
``. _ -`` only.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, available_timezones

from calguard.config.loader import builtin_text, check_library
from calguard.config.options import OptionSpec, check_options, parse_query
from calguard.config.pumps import check_pumps
from calguard.monitor import units
from calguard.monitor.errors import ConfigError, ConfigProblem, DriverError, QuantityError
from calguard.monitor.events import DOCUMENTATION
from calguard.monitor.library import Library
from calguard.monitor.timeutil import parse_ts

__all__ = [
    "BEDSIDE_TYPES",
    "BrokerAccounts",
    "Charting",
    "DriverConfig",
    "LogPolicy",
    "Lookup",
    "Site",
    "WebConfig",
    "load_site",
    "time_zone",
]

#: finds the class for a URL (its ``scheme`` and ``options``); raises ``DriverError`` or
#: ``ValueError`` for a URL it does not know
Lookup = Callable[[str], Any]
Problem = Callable[[str, str], None]

_SECTIONS = ("site", "drivers", "sinks", "broker", "web", "log")
_SITE_KEYS = (
    "name",
    "library",
    "profile",
    "four_eyes",
    "timezone",
    "db",
    "speed",
    "clock_anchor",
)


@dataclass(frozen=True)
class DriverConfig:
    url: str
    options: dict[str, Any] = field(default_factory=dict)


#: the event types of bedside documentation, which a charting account may be allowed
BEDSIDE_TYPES: tuple[str, ...] = tuple(str(vars(kind)["type"]) for kind in DOCUMENTATION)
#: what an account or a pump on the broker may be called: it is part of topics and of
#: Mosquitto's password and ACL files, so no wildcard, separator, space or colon
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Charting:
    """A bedside charting account: it publishes on ``<prefix>/events/<account>`` and may
    chart the event types in ``events``."""

    account: str
    events: frozenset[str] = frozenset(BEDSIDE_TYPES)


@dataclass(frozen=True)
class BrokerAccounts:
    """The devices and apps of the site's MQTT broker (besides the monitor itself, which
    logs in with its driver's and sink's ``username``)."""

    pumps: tuple[str, ...] = ()  # each logs in as its pump id
    gateways: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (account, its pumps)
    charting: tuple[Charting, ...] = ()
    stations: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """The central station in the browser (``[web]``), served by the monitor itself on a
    loopback address only: plain HTTP and a login page are not for the hospital network
    (a reverse proxy with TLS is the way there)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8470  # 0: any free port
    timezone: str | None = None  # IANA name; None: the site's
    session_s: int = 8 * 3600  # how long a login in the browser holds


@dataclass(frozen=True)
class LogPolicy:
    """Retention of the durable log (``[log]``): inputs are kept ``keep_inputs_days`` days
    (``calguard log prune`` drops older ones, once exported and verified); alerts, actions
    and the audit chain are kept forever."""

    keep_inputs_days: int = 30


@dataclass(frozen=True)
class Site:
    name: str
    library: Library
    db: str | None  # None: no durable log; "": the default SQLite file; else a URL
    drivers: tuple[DriverConfig, ...]
    sinks: tuple[DriverConfig, ...] = ()  # notification sinks: url and options
    speed: float = 1.0
    clock_anchor_us: int | None = None  # a training clock's start (None: 00:00 UTC)
    timezone: str = "UTC"  # IANA name: the local time of reports and the station
    source: str = ""
    broker: BrokerAccounts = BrokerAccounts()
    web: WebConfig = WebConfig()
    profile: str | None = None  # the library's care-area profile this unit runs
    four_eyes: bool = False  # a library is published to this unit by a second pharmacist
    log: LogPolicy = LogPolicy()  # retention ([log])


def load_site(
    path: str | Path,
    *,
    drivers: Lookup,
    sinks: Lookup,
    db_default: str | None = "default",
    doc: dict[str, Any] | None = None,
) -> Site:
    """Read and check a site config; ``ConfigError`` listing every problem. ``doc``: the
    file's document already read (a unit of a hospital config: ``calguard.units``)."""
    source = str(path)
    problems: list[ConfigProblem] = []

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(source, key, message))

    doc = _read(path, source) if doc is None else doc
    _sections(doc, source, Path(path).name, problem)
    site = doc.get("site", {})
    if not isinstance(site, dict):
        site = {}
        problem("site", "a table is expected")
    for key in site:
        if key not in _SITE_KEYS:
            problem(f"site.{key}", f"unknown key; expected one of {', '.join(_SITE_KEYS)}")
    library_path = site.get("library")
    if library_path is not None and not isinstance(library_path, str):
        problem("site.library", "a file name is expected")
        library_path = None
    if library_path is not None:
        library_path = str((Path(path).parent / library_path).resolve())
    profile, four_eyes = site.get("profile"), site.get("four_eyes", False)
    if profile is not None and not isinstance(profile, str):
        problem("site.profile", f"{profile!r} — the name of a profile of the library is expected")
        profile = None
    if not isinstance(four_eyes, bool):
        problem("site.four_eyes", f"{four_eyes!r} — true or false is expected")
    result = check_library(library_path, profile)
    problems += result.problems
    speed = site.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed <= 10_000:
        problem("site.speed", f"{speed!r} — a number above 0 (1 = real time) is expected")
        speed = 1.0
    anchor = _anchor(site.get("clock_anchor"), problem)
    timezone = _timezone(site["timezone"], problem) if "timezone" in site else "UTC"
    db = site.get("db", db_default)
    if db is not None and not isinstance(db, str):
        problem("site.db", 'a database URL, or "none", is expected')
    broker = _broker(doc.get("broker", {}), problem)
    driver_configs = _drivers(
        doc.get("drivers", []), drivers, result.library, broker.charting, problem
    )
    sink_configs = _sinks(doc.get("sinks", []), sinks, problem)
    web = _web(doc.get("web", {}), problem)
    log_policy = _log_policy(doc.get("log", {}), problem)
    if problems:
        raise ConfigError(problems)
    assert result.library is not None
    return Site(
        name=str(site.get("name", Path(path).stem)),
        library=result.library,
        db=_db(db),
        drivers=tuple(driver_configs),
        sinks=tuple(sink_configs),
        speed=float(speed),
        clock_anchor_us=anchor,
        timezone=timezone,
        source=source,
        broker=broker,
        web=web,
        profile=profile,
        four_eyes=four_eyes is True,
        log=log_policy,
    )


def _read(path: str | Path, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem(source, "", f"cannot be read: {exc}")]) from None


@cache
def _library_sections() -> frozenset[str]:
    """The sections of a drug library document (those of the built-in one)."""
    return frozenset(tomllib.loads(builtin_text()))


def _sections(doc: dict[str, Any], source: str, name: str, problem: Problem) -> None:
    library = _library_sections()
    if library & doc.keys() and not any(key in doc for key in _SECTIONS):
        # the wrong file was given: say so once, not once for each of its sections
        raise ConfigError(
            [
                ConfigProblem(
                    source,
                    "",
                    "this is a drug library, not a site config. A site config names its "
                    f'library in its [site] table: library = "{name}"; to replay a file of '
                    f"events with this library: calguard replay FILE.jsonl --library {name}",
                )
            ]
        )
    for key in doc:
        if key in library:
            problem(
                key,
                "a section of a drug library, not of a site config; the library is a file of "
                'its own, named here by [site] library = "FILE.toml"',
            )
        elif key not in _SECTIONS:
            problem(
                key, "unknown section; expected [site], [[drivers]], [[sinks]], [broker] and [web]"
            )


def _anchor(value: object, problem: Problem) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return round(value.timestamp() * 1_000_000)
    if isinstance(value, str):
        try:
            return parse_ts(value)
        except ValueError as exc:
            problem("site.clock_anchor", f"{value!r}: {exc}")
            return None
    problem("site.clock_anchor", f"{value!r} — a date and time with an offset is expected")
    return None


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` ("Europe/London"); ``ValueError`` saying what to write."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # unknown, malformed, a folder such as "Europe"
        keys = {key.lower(): key for key in available_timezones()}
        close = difflib.get_close_matches(name.strip().lower(), keys, n=1, cutoff=0.8)
        hint = f'; did you mean "{keys[close[0]]}"?' if close else ""
        raise ValueError(
            f'"{name}" is not a time zone; an IANA name is expected, such as "Europe/London", '
            f'"America/New_York" or "UTC"{hint}'
        ) from None


def _timezone(value: object, problem: Problem) -> str:
    if not isinstance(value, str):
        problem("site.timezone", f'{value!r} — an IANA time zone name such as "Europe/London"')
        return "UTC"
    try:
        time_zone(value)
    except ValueError as exc:
        problem("site.timezone", str(exc))
        return "UTC"
    return value


_WEB_KEYS = {
    "enabled": OptionSpec(bool, True, "whether the monitor serves the central station"),
    "host": OptionSpec(str, "127.0.0.1", "the loopback address the station listens on"),
    "port": OptionSpec(int, 8470, "the station's TCP port; 0: any free one", 0, 65535),
    "timezone": OptionSpec(str, None, 'the local time shown, e.g. "Europe/London"'),
    "session": OptionSpec(str, "8 h", 'how long a login in the browser holds, e.g. "8 h"'),
}
_SESSION_S = (60, 12 * 3600)  # a browser login holds 1 min to 12 h (a token's longest life)


def _web(table: object, problem: Problem) -> WebConfig:
    """The ``[web]`` table: every problem reported as ``web.<key>``."""
    if not isinstance(table, dict):
        problem("web", "a table ([web]) is expected")
        return WebConfig()
    wrong = dict(check_options(table, _WEB_KEYS, "in the [web] table", "key"))
    for key, message in wrong.items():
        problem(f"web.{key}", message)
    good = {k: v for k, v in table.items() if k not in wrong}
    host = good.get("host", WebConfig.host)
    if not _loopback(host):
        problem(
            "web.host",
            f"{host!r} — a loopback address is expected (127.0.0.1, ::1 or localhost): the "
            "station speaks plain HTTP; serve it further through a proxy with TLS",
        )
    timezone = good.get("timezone")
    if timezone is not None:
        try:
            time_zone(timezone)
        except ValueError as exc:
            problem("web.timezone", str(exc))
    return WebConfig(
        enabled=good.get("enabled", True),
        host=host,
        port=good.get("port", WebConfig.port),
        timezone=timezone,
        session_s=_session(good.get("session"), problem),
    )


def _log_policy(table: object, problem: Problem) -> LogPolicy:
    if not isinstance(table, dict):
        problem("log", "a table is expected")
        return LogPolicy()
    for key in table.keys() - {"keep_inputs_days"}:
        problem(f"log.{key}", "unknown key; expected keep_inputs_days")
    days = table.get("keep_inputs_days", LogPolicy.keep_inputs_days)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        problem("log.keep_inputs_days", f"{days!r} — a number of days (1 or more) is expected")
        return LogPolicy()
    return LogPolicy(keep_inputs_days=days)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _session(text: str | None, problem: Problem) -> int:
    if text is None:
        return WebConfig.session_s
    try:
        number, unit = units.split_quantity(text)
        seconds = round(number * units.unit_factor(unit, units.DURATION) / 1e6)
    except QuantityError as exc:
        problem("web.session", f"{text!r}: {exc.explain()}")
        return WebConfig.session_s
    low, high = _SESSION_S
    if not low <= seconds <= high:
        problem("web.session", f"{text!r} — from 1 min to {high // 3600} h is expected")
        return WebConfig.session_s
    return seconds


def _db(db: object) -> str | None:
    """None: no durable log; "": the default SQLite file; otherwise a database URL."""
    if db is None or db == "none":
        return None
    return "" if db == "default" else str(db)


# -- drivers and sinks ------------------------------------------------------------------


def _drivers(
    items: object,
    driver_class: Lookup,
    library: Library | None,
    charting: tuple[Charting, ...],
    problem: Problem,
) -> list[DriverConfig]:
    if not isinstance(items, list) or not items:
        problem("drivers", "at least one [[drivers]] entry with a url is expected")
        return []
    entries = list(_entries("drivers", items, driver_class, problem, query=True))
    check_pumps(
        [(key, options, cls.options) for key, _, options, cls, _ in entries], library, problem
    )
    out = []
    for _, url, options, cls, fine in entries:
        if not fine:
            continue
        if charting and getattr(cls, "takes_charting", False):
            # a driver of bedside charting learns who may chart what (else: nobody)
            options = {**options, "charting": charting}
        out.append(DriverConfig(url, options))
    return out


def _sinks(items: object, sink_class: Lookup, problem: Problem) -> list[DriverConfig]:
    if not isinstance(items, list):
        problem("sinks", "an array of tables ([[sinks]]) is expected")
        return []
    out = []
    for key, url, options, cls, fine in _entries(
        "sinks", items, sink_class, problem, _SINK_OPTIONS
    ):
        if not fine:
            continue
        try:
            cls(url, **options)  # the URL itself (a prefix, https for remote hosts ...)
        except ValueError as exc:
            problem(f"{key}.url", str(exc))
            continue
        out.append(DriverConfig(url, options))
    return out


#: options every sink takes besides its own
#: alarm lines a sink keeps while its receiver is slow or down: an alarm storm (every
#: calcium channel of 5,000 silent at once: ~2,500 raised, then as many escalated) fits
#: with room to spare, at about 2 KB a line (40 MB at most)
SINK_CAPACITY = 20_000
_SINK_OPTIONS = {"capacity": OptionSpec(int, SINK_CAPACITY, "alarm lines kept while it is down", 1)}

Entry = tuple[str, str, dict[str, Any], Any, bool]


def _entries(
    section: str,
    items: list[object],
    lookup: Lookup,
    problem: Problem,
    common: Mapping[str, OptionSpec] | None = None,
    *,
    query: bool = False,
) -> Iterator[Entry]:
    """The ``[[section]]`` tables whose URL scheme is known, as (key, url, options, class,
    whether the URL and options all fit); every problem is reported. With ``query`` the
    URL's parameters are checked too (a sink's https URL may carry its own)."""
    for index, item in enumerate(items):
        key = f"{section}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            problem(key, "a table with a url is expected")
            continue
        url, options = item["url"], {k: v for k, v in item.items() if k != "url"}
        try:
            cls = lookup(url)
        except (DriverError, ValueError) as exc:
            problem(f"{key}.url", str(exc))
            continue
        known = {**(common or {}), **cls.options}
        found = list(check_options(options, known, f"for the {cls.scheme} {section[:-1]}"))
        if query:
            params: Mapping[str, OptionSpec] = getattr(cls, "url_params", {})
            _, wrong = parse_query(urlsplit(url).query, params, known)
            found += [("url", message) for message in wrong]
        if hasattr(cls, "config_problems"):  # the driver's own checks, which may repeat ours
            found = list(dict.fromkeys([*found, *cls.config_problems(url, options)]))
        for sub, message in found:
            problem(f"{key}.{sub}", message)
        yield key, url, options, cls, not found


# -- the broker's accounts -----------------------------------------------------------------

_ACCOUNT = OptionSpec(
    str, None, "the account's user name on the broker", required=True, unique=True
)
_BROKER_KEYS = {
    "pumps": OptionSpec(list, [], "pumps that publish on MQTT themselves, each as its pump id"),
    "stations": OptionSpec(list, [], "central stations: read alarms, send commands"),
    "gateways": OptionSpec(
        list,
        [],
        "gateways that publish for several pumps",
        table={
            "account": _ACCOUNT,
            "pumps": OptionSpec(list, None, "the pumps it publishes for", required=True),
        },
    ),
    "charting": OptionSpec(
        list,
        [],
        "bedside charting apps, each on <prefix>/events/<account>",
        table={
            "account": _ACCOUNT,
            "events": OptionSpec(list, list(BEDSIDE_TYPES), "the bedside event types it may chart"),
        },
    ),
}


def _broker(table: object, problem: Problem) -> BrokerAccounts:
    """The ``[broker]`` table: every problem reported as ``broker.<key>``."""
    if not isinstance(table, dict):
        problem("broker", "a table ([broker]) is expected")
        return BrokerAccounts()
    found = list(check_options(table, _BROKER_KEYS, "in the [broker] table", "key"))
    for key, message in found:
        problem(f"broker.{key}", message)
    if found:
        return BrokerAccounts()

    def names(values: list[Any], key: str, what: str) -> tuple[str, ...]:
        good = (v for i, v in enumerate(values) if _named(v, f"{key}[{i}]", what, problem))
        return tuple(dict.fromkeys(good))  # a name given twice is one account

    gateways = [
        (g["account"], names(g["pumps"], f"broker.gateways[{i}].pumps", "pump id"))
        for i, g in enumerate(table.get("gateways", []))
        if _named(g["account"], f"broker.gateways[{i}].account", "account", problem)
    ]
    charting = [
        _charting(c, f"broker.charting[{i}]", problem)
        for i, c in enumerate(table.get("charting", []))
        if _named(c["account"], f"broker.charting[{i}].account", "account", problem)
    ]
    accounts = BrokerAccounts(
        pumps=names(table.get("pumps", []), "broker.pumps", "pump id"),
        gateways=tuple(gateways),
        charting=tuple(charting),
        stations=names(table.get("stations", []), "broker.stations", "account"),
    )
    _once(accounts, problem)
    return accounts


def _named(value: object, key: str, what: str, problem: Problem) -> bool:
    """Whether ``value`` is a name that can stand in a topic and in Mosquitto's files."""
    if isinstance(value, str) and _NAME.match(value):
        return True
    problem(
        key,
        f"{value!r} — a {what} of 1 to 64 letters, digits, '.', '_' or '-' is expected "
        "(it is part of MQTT topics and of the broker's account files)",
    )
    return False


def _charting(table: dict[str, Any], key: str, problem: Problem) -> Charting:
    events = table.get("events", BEDSIDE_TYPES)
    wrong = [e for e in events if e not in BEDSIDE_TYPES]
    if wrong or not events:
        problem(
            f"{key}.events",
            f"{wrong or events!r} — bedside event types are expected, some of "
            f"{', '.join(BEDSIDE_TYPES)}",
        )
    return Charting(table["account"], frozenset(e for e in events if e in BEDSIDE_TYPES))


def _once(accounts: BrokerAccounts, problem: Problem) -> None:
    """An account has one role, and a pump publishes through one account."""
    roles: dict[str, str] = {}
    named = [
        *((p, "broker.pumps") for p in accounts.pumps),
        *((a, f"broker.gateways[{i}]") for i, (a, _) in enumerate(accounts.gateways)),
        *((c.account, f"broker.charting[{i}]") for i, c in enumerate(accounts.charting)),
        *((s, "broker.stations") for s in accounts.stations),
    ]
    for name, key in named:
        first = roles.setdefault(name, key)
        if first != key:
            problem(key, f'"{name}" is also an account of {first}: each account has one role')
    carriers: dict[str, str] = {p: "broker.pumps" for p in accounts.pumps}
    for index, (_, pumps) in enumerate(accounts.gateways):
        for pump in pumps:
            first = carriers.setdefault(pump, f"broker.gateways[{index}]")
            if first != f"broker.gateways[{index}]":
                problem(
                    f"broker.gateways[{index}].pumps",
                    f'pump "{pump}" also publishes through {first}: a pump has one account',
                )
