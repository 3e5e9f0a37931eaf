"""A hospital: several units in one config, spread over monitor processes.

A site config that is one unit works as it always did. A hospital config lists its units;
``[site]`` (and ``[web]``, ``[[sinks]]``, ``[broker]``) hold what they share, each
``[[units]]`` table what is its own::

    [site]
    name = "St Mary's"
    db = "postgresql://calguard@127.0.0.1/calguard"   # one log for every unit

    [[units]]
    name = "nicu-a"                 # lower-case letters, digits and '-'
    [[units.drivers]]
    url = "mqtt://127.0.0.1:1883/calguard/nicu-a"   # the unit's topic prefix
    [[units.sinks]]
    url = "mqtt://127.0.0.1:1883/calguard/nicu-a"
    [units.web]
    port = 8471                     # each unit's station on its own port

    [[units]]
    name = "nicu-b"
    ...

``calguard run --site hospital.toml --units nicu-a,nicu-b`` runs those units in one process
(every unit by default): one monitor per unit in one event loop, each with its own session,
log writer and spool, alert ids ``a-<unit>-000123`` (counted per unit, so monitors on one
log never give one id twice, and a replay with ``--unit`` gives the same ids), and MQTT
client ids ``calguard-<unit>`` (``-alarms`` for the alarm sink) unless a table names its
own. On PostgreSQL each unit (and the one unit of a plain site config, by its name) is
held under a lease (``calguard.lease``): a second ``calguard run`` on the same units waits
as their standby and takes over the units whose monitor died, from the log. On SQLite a
unit of a hospital config is held by a file lock beside the database instead: a second
monitor of it on that host is refused (a standby needs PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import sys
import tomllib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from calguard.alerts.log import default_db_url, default_spool_dir
from calguard.config.site import Site, WebConfig
from calguard.lease import Lease, fence_on_wake
from calguard.live import _on_signals, run_site
from calguard.monitor.errors import ConfigError, ConfigProblem
from calguard.monitor.transitions import AlertBook
from calguard.site import load_site

__all__ = ["ALERT_PREFIX", "Unit", "load_units", "run_units", "select_units"]

log = logging.getLogger(__name__)

#: the running unit's alert id prefix, per task: several units run in one process, each in
#: a task of its own (a replay of a unit's session sets it too)
ALERT_PREFIX: ContextVar[str] = ContextVar("ALERT_PREFIX", default="a-")
AlertBook.id_prefix = ALERT_PREFIX.get  # every book and the log's next id ask it

_UNIT = re.compile(r"[a-z0-9][a-z0-9-]{0,30}\Z")  # in alert ids, topics, LIKE patterns
_UNIT_KEYS = ("name", "drivers", "sinks", "broker", "web")
_SHARED = ("sinks", "broker")  # a unit without its own takes the hospital's


@dataclass(frozen=True)
class Unit:
    name: str
    site: Site  # its own site: the unit's name, drivers and sinks, the hospital's log
    alert_prefix: str = "a-"  # a-<unit>- for a unit of a hospital config


def load_units(path: str | Path) -> tuple[Unit, ...]:
    """The units of a hospital config, or the one unit a plain site config is;
    ``ConfigError`` listing every problem of every unit."""
    doc = _read(path)
    if "units" not in doc:
        site = load_site(path)
        return (Unit(site.name, site),)
    problems: list[ConfigProblem] = []
    units: list[Unit] = []
    for index, unit_doc in _unit_docs(doc, str(path), problems):
        name = unit_doc["site"]["name"]
        try:
            site = load_site(path, doc=unit_doc)
        except ConfigError as exc:
            problems += [
                ConfigProblem(p.file, f"units[{index}].{p.key}" if p.key else "", p.message)
                for p in exc.problems
            ]
            continue
        units.append(Unit(name, site, f"a-{name}-"))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return tuple(units)


def select_units(units: Sequence[Unit], names: str | None) -> tuple[Unit, ...]:
    """The units named (``nicu-a,nicu-b``), or all; ``ValueError`` naming the known ones."""
    if names is None:
        return tuple(units)
    known = {u.name: u for u in units}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    wrong = [n for n in wanted if n not in known]
    if wrong or not wanted:
        raise ValueError(
            f"--units {names!r}: {', '.join(wrong) or 'no unit'} - the config has "
            f"{', '.join(known)}"
        )
    return tuple(known[n] for n in dict.fromkeys(wanted))


def _read(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # load_site reads it again and says what is wrong


def _unit_docs(
    doc: dict[str, Any], source: str, problems: list[ConfigProblem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each unit as a site document of its own (the hospital's tables, then the unit's),
    with its index among the ``[[units]]`` tables."""

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(source, key, message))

    tables = doc["units"]
    if not isinstance(tables, list) or not tables:
        problem("units", "[[units]] tables, each with a name, are expected")
        return
    if "drivers" in doc:
        problem("drivers", "in a hospital config each unit has its own: [[units.drivers]]")
    seen: dict[str, str] = {}
    ports: dict[object, str] = {}
    for index, table in enumerate(tables):
        key = f"units[{index}]"
        name = table.get("name") if isinstance(table, dict) else None
        if not isinstance(name, str) or not _UNIT.match(name):
            problem(f"{key}.name", f"{name!r} - 1 to 31 lower-case letters, digits or '-'")
            continue
        if name in seen:
            problem(f"{key}.name", f'"{name}" is also {seen[name]}: each unit once')
            continue
        seen[name] = key
        for extra in set(table) - set(_UNIT_KEYS):
            problem(f"{key}.{extra}", f"unknown key; expected one of {', '.join(_UNIT_KEYS)}")
        unit = {k: v for k, v in doc.items() if k not in ("units", "drivers")}
        unit["site"] = {**doc.get("site", {}), "name": name}
        for shared in _SHARED:
            if shared in table:
                unit[shared] = table[shared]
        unit["web"] = web = {**doc.get("web", {}), **table.get("web", {})}
        port = web.get("port", WebConfig.port)
        if web.get("enabled", True) and port and ports.setdefault(port, key) != key:
            problem(
                f"{key}.web.port",
                f"{port} is also the station port of {ports[port]}: give each unit its own "
                "([units.web] port = ..., or 0 for any free one)",
            )
        unit["drivers"] = [_named(d, f"calguard-{name}") for d in table.get("drivers", [])]
        unit["sinks"] = [_named(s, f"calguard-{name}-alarms") for s in unit.get("sinks", [])]
        yield index, unit
    _distinct(tables, problem)


def _named(table: object, client_id: str) -> object:
    """An MQTT driver or sink without a client id of its own gets the unit's."""
    if isinstance(table, dict) and str(table.get("url", "")).startswith(("mqtt:", "mqtts:")):
        return {"client_id": client_id, **table}
    return table


def _distinct(tables: list[Any], problem: Any) -> None:
    """Two units never share a client id (the broker would drop one for the other)."""
    owner: dict[str, str] = {}
    for index, table in enumerate(t for t in tables if isinstance(t, dict)):
        for section in ("drivers", "sinks"):
            for entry in table.get(section, []):
                client = entry.get("client_id") if isinstance(entry, dict) else None
                if isinstance(client, str):
                    key = f"units[{index}].{section}"
                    if owner.setdefault(client, key) != key:
                        problem(key, f'client id "{client}" is also {owner[client]}\'s')


# -- running ------------------------------------------------------------------------------


async def run_units(
    units: Sequence[Unit], *, view: bool, out: TextIO = sys.stdout, allow_unapproved: bool = False
) -> int:
    """Run each unit's monitor, in one event loop; the worst exit status of them."""
    leases: list[Lease] = []
    fence_on_wake(leases)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    _run_unit(unit, leases, view=view, out=out, allow_unapproved=allow_unapproved),
                    name=f"unit {unit.name}",
                )
                for unit in units
            ]
    except ExceptionGroup as group:  # one unit failing stops them all: as one monitor would
        raise group.exceptions[0] from None
    return max(task.result() for task in tasks)


async def _run_unit(
    unit: Unit, leases: list[Lease], *, view: bool, out: TextIO, allow_unapproved: bool
) -> int:
    ALERT_PREFIX.set(unit.alert_prefix)  # this task's context: the unit's engines and log
    plain = unit.alert_prefix == "a-"  # a plain site config: as it always ran
    spool = None if plain else default_spool_dir() / "units" / unit.name

    async def run(lease: Lease | None = None) -> int:
        return await run_site(
            unit.site,
            view=view,
            out=out,
            allow_unapproved=allow_unapproved,
            lease=lease,
            spool_dir=spool,
        )

    db = unit.site.db
    if db is None or (plain and not db.startswith("postgresql")):
        return await run()  # a single unit on SQLite (or no log): as it always ran
    if not db.startswith("postgresql"):
        with _file_lock(db or default_db_url(), unit.name) as locked:
            return await run() if locked else 1
    async with Lease(db, unit.name) as lease:
        stop = asyncio.Event()
        _on_signals(stop.set)
        if not await _acquire(lease, stop):
            return 0  # stopped while waiting as the standby
        leases.append(lease)
        async with asyncio.TaskGroup() as group:
            holding = group.create_task(lease.hold(), name=f"lease {unit.name}")
            status = await run(lease)
            holding.cancel()
        return status


async def _acquire(lease: Lease, stop: asyncio.Event) -> bool:
    """Wait for the lease, or for a signal to stop (False)."""
    taking = asyncio.create_task(lease.acquire())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((taking, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if taking.done():
        return True
    taking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await taking
    return False


@contextlib.contextmanager
def _file_lock(db: str, unit: str) -> Iterator[bool]:
    """SQLite: the unit's lock file beside the database; a second monitor is refused."""
    path = Path(db.split(":///", 1)[-1].split("?", 1)[0] + f".{unit}.lock")
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error(
                "unit %s is run by another monitor on this host (%s); a SQLite log has no "
                "standby: a standby needs a PostgreSQL log",
                unit,
                path,
            )
            yield False
            return
        yield True
