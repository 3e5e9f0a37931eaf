"""The site config: which drug library, which log, which drivers with which options.

    [site]
    name = "NICU North"
    library = "nicu-library.toml"   # relative to this file; default: the built-in library
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

Each driver and sink declares the options it takes (``options``, a map of ``OptionSpec``);
they are checked here, with the library, so that every problem is reported at once, with
file and key. The drivers and sinks live floors above ``config``, so the caller hands in
the lookups that find their classes (``calguard.site.load_site`` does, with the registries).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from calguard.config.loader import check_library
from calguard.config.options import OptionSpec
from calguard.monitor.errors import ConfigError, ConfigProblem, DriverError
from calguard.monitor.library import Library
from calguard.monitor.timeutil import parse_ts

__all__ = ["DriverConfig", "Lookup", "Site", "load_site"]

#: finds the class for a URL (its ``scheme`` and ``options``); raises ``DriverError`` or
#: ``ValueError`` for a URL it does not know
Lookup = Callable[[str], Any]

_SITE_KEYS = ("name", "library", "db", "speed", "clock_anchor")


@dataclass(frozen=True)
class DriverConfig:
    url: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Site:
    name: str
    library: Library
    db: str | None  # None: no durable log; "": the default SQLite file; else a URL
    drivers: tuple[DriverConfig, ...]
    sinks: tuple[DriverConfig, ...] = ()  # notification sinks: url and options
    speed: float = 1.0
    clock_anchor_us: int | None = None  # a training clock's start (None: 00:00 UTC)
    source: str = ""


def load_site(
    path: str | Path,
    *,
    drivers: Lookup,
    sinks: Lookup,
    db_default: str | None = "default",
) -> Site:
    """Read and check a site config; ``ConfigError`` listing every problem."""
    source = str(path)
    problems: list[ConfigProblem] = []

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(source, key, message))

    try:
        doc = tomllib.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem(source, "", f"cannot be read: {exc}")]) from None
    for key in doc:
        if key not in ("site", "drivers", "sinks"):
            problem(key, "unknown section; expected [site], [[drivers]] and [[sinks]]")
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
    result = check_library(library_path)
    problems += result.problems
    speed = site.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed <= 10_000:
        problem("site.speed", f"{speed!r} — a number above 0 (1 = real time) is expected")
        speed = 1.0
    anchor = _anchor(site.get("clock_anchor"), problem)
    db = site.get("db", db_default)
    if db is not None and not isinstance(db, str):
        problem("site.db", 'a database URL, or "none", is expected')
    driver_configs = _drivers(doc.get("drivers", []), drivers, problem)
    sink_configs = _sinks(doc.get("sinks", []), sinks, problem)
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
        source=source,
    )


def _anchor(value: object, problem: Callable[[str, str], None]) -> int | None:
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


def _db(db: object) -> str | None:
    """None: no durable log; "": the default SQLite file; otherwise a database URL."""
    if db is None or db == "none":
        return None
    return "" if db == "default" else str(db)


def _drivers(items: object, driver_class: Lookup, problem: Any) -> list[DriverConfig]:
    if not isinstance(items, list) or not items:
        problem("drivers", "at least one [[drivers]] entry with a url is expected")
        return []
    return [
        DriverConfig(url, options)
        for _, url, options, _ in _entries("drivers", items, driver_class, problem)
    ]


def _sinks(items: object, sink_class: Lookup, problem: Any) -> list[DriverConfig]:
    if not isinstance(items, list):
        problem("sinks", "an array of tables ([[sinks]]) is expected")
        return []
    out = []
    for key, url, options, cls in _entries("sinks", items, sink_class, problem, _SINK_OPTIONS):
        try:
            cls(url, **options)  # the URL itself (a prefix, https for remote hosts ...)
        except ValueError as exc:
            problem(f"{key}.url", str(exc))
            continue
        out.append(DriverConfig(url, options))
    return out


#: options every sink takes besides its own
_SINK_OPTIONS = {"capacity": OptionSpec(int, 1000, "alarm lines kept while it is down", 1)}


def _entries(
    section: str,
    items: list[object],
    lookup: Callable[[str], Any],
    problem: Any,
    common: Mapping[str, OptionSpec] | None = None,
) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """The ``[[section]]`` tables whose URL scheme is known and whose options all fit, as
    (key, url, options, class); every other one is reported as a problem."""
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
        fine = True
        for name, value in options.items():
            spec = known.get(name)
            if spec is None:
                fine = False
                problem(
                    f"{key}.{name}",
                    f"unknown option for {cls.scheme}; expected one of {', '.join(known)}",
                )
            elif not _fits(value, spec.kind):
                fine = False
                problem(f"{key}.{name}", f"{value!r} — {spec.kind.__name__} expected ({spec.help})")
            elif spec.minimum is not None and value < spec.minimum:
                fine = False
                problem(f"{key}.{name}", f"{value!r} — at least {spec.minimum:g} ({spec.help})")
        if fine:
            yield key, url, options, cls


def _fits(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
