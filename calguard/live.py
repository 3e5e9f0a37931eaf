"""``calguard run`` and ``calguard demo``: the live monitor wired to its parts.

Both run one ``asyncio.TaskGroup``: the monitor (drivers and engine), the alert output
(JSON lines, or the terminal view), the central station in the browser (``calguard.web``:
its server is a task of the same loop, reading the engine and the alarm layer as they
are), and for the demo the simulated pumps and the scenario.
SIGINT and SIGTERM stop the drivers, let the engine finish what arrived, and flush the
durable log before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from calguard.alerts.anchor import Anchor
from calguard.alerts.anchor_mqtt import AnchorPublisher
from calguard.alerts.log import AlertLog
from calguard.alerts.sinks import Sink, open_sink
from calguard.alerts.snapshots import PERIOD_S as SNAPSHOT_PERIOD_S
from calguard.app import Monitor
from calguard.config.site import Site, WebConfig
from calguard.drivers.base import Driver
from calguard.drivers.clock import ScaledClock, SystemClock
from calguard.drivers.registry import open_driver
from calguard.drivers.serial import SerialDriver
from calguard.drivers.virtual import VirtualDriver
from calguard.guard import CommandGuard
from calguard.library_watch import LibraryWatch, unapproved
from calguard.monitor.clock import Clock
from calguard.monitor.engine import Engine
from calguard.monitor.library import Library
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import AlertTransition
from calguard.recovery import WARM_START, restore_alarms, warm_start
from calguard.simulators.ne1000 import PumpBus
from calguard.simulators.runner import BedsideQueue, play
from calguard.simulators.scenario import Scenario
from calguard.simulators.serial_ward import SerialWard
from calguard.view import TerminalView
from calguard.web import Station
from calguard.web.demo import demo_accounts

if TYPE_CHECKING:
    from calguard.lease import Lease

__all__ = ["run_demo", "run_site"]

log = logging.getLogger("calguard")


def _printer(out: TextIO, counts: Counter[str]) -> Callable[[AlertTransition, str], None]:
    def write(tr: AlertTransition, line: str) -> None:
        counts[f"{tr.state} {tr.rule}"] += 1
        out.write(line + "\n")
        out.flush()

    return write


@contextlib.asynccontextmanager
async def _log(
    db: str | None,
    on_anchor: Callable[[Anchor], None] | None = None,
    lease: Lease | None = None,
    spool_dir: Path | None = None,
) -> AsyncIterator[AlertLog | None]:
    """``lease``: this unit's (calguard.lease), checked in every commit; ``spool_dir``:
    a unit's own spool (several units of one process each have a log writer)."""
    if db is None:
        yield None
        return
    async with AlertLog(db or None, on_anchor=on_anchor, spool_dir=spool_dir) as alert_log:
        if lease is not None:
            alert_log.fence_with(lease.check)
        yield alert_log


def _anchor_publisher(site: Site) -> AnchorPublisher | None:
    """The audit chain's anchor kept retained on the broker of the site's MQTT alarm sink
    (its log-in and TLS options): a copy of the head off this machine."""
    if site.db is None:
        return None
    for sink in site.sinks:
        if sink.url.startswith(("mqtt://", "mqtts://")):
            return AnchorPublisher(sink.url, **sink.options)
    return None


#: what a signal stops, per event loop: the monitors of several units share one loop
_stops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stops = _stops.setdefault(loop, [])
    stops.append(stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: [each() for each in list(stops)])


async def _monitor(
    library: Library,
    drivers: list[Driver],
    clock: Clock,
    db: str | None,
    source: str,
    *,
    title: str,
    view: bool,
    out: TextIO,
    body: Callable[[Monitor], AsyncIterator[None]] | None = None,
    mode: str = "live",
    sinks: Sequence[Sink] = (),
    site: str | None = None,
    on_anchor: Callable[[Anchor], None] | None = None,
    web: WebConfig | None = None,
    timezone: str = "UTC",
    web_note: str = "",
    library_watch: LibraryWatch | None = None,
    approved: bool = True,
    lease: Lease | None = None,
    spool_dir: Path | None = None,
) -> Counter[str]:
    counts: Counter[str] = Counter()
    early = asyncio.Event()
    _on_signals(early.set)  # a signal while starting up is kept: the monitor stops at once
    async with _log(db, on_anchor, lease, spool_dir) as alert_log:
        outputs = (
            [_printer(out, counts)]
            if not view
            else [lambda tr, _: counts.update([f"{tr.state} {tr.rule}"])]
        )
        engine = Engine(library)
        restored_lines: list[dict[str, Any]] | None = None
        missed: list[AlertTransition] = []  # what changed while the monitor was down
        restart = clock.now_us()  # one instant for the whole warm start, as its marker says
        if alert_log is not None:
            marker = None
            if mode == "live":  # pick up where this site's last live run left off
                warm = await warm_start(alert_log, library, restart, site=site)
                engine, missed = warm.engine, warm.transitions
                restored_lines, marker = warm.alarm_lines, warm.marker
            else:
                engine.book.restart_ids(await alert_log.next_alert_id())
            session = await alert_log.start_session(
                mode, source, library, engine.book.next_id, site=site
            )
            if marker is not None:  # the session's first input: its export replays as it ran
                record = InputRecord.from_raw(
                    orjson.dumps(marker), "warm start", "accepted", t_us=restart
                )
                record.event_type = WARM_START
                alert_log.add_input(record)
            log.info("logging to %s (session %s)", alert_log.display_url, session)
        monitor = Monitor(
            library,
            drivers,
            clock=clock,
            log=alert_log,
            outputs=outputs,
            engine=engine,
            sinks=sinks,
            # the station's actions are commands too: checked against this log's accounts
            guard=CommandGuard.of_log(alert_log) if web and alert_log is not None else None,
            file_actions=mode != "live",  # live, people act only with a signed token
            library_watch=library_watch,
            approved=approved,
        )
        if mode == "live" and alert_log is not None:  # its restart begins from the latest
            monitor.snapshot_period_s = SNAPSHOT_PERIOD_S
        station = (
            Station(monitor, web, title=title, mode=mode, timezone=timezone, site=site)
            if web is not None
            else None
        )
        _on_signals(monitor.stop)
        if early.is_set():
            monitor.stop()
        alarms = monitor.pipeline.alarms
        if alarms is not None and restored_lines is not None:
            missed = restore_alarms(alarms, restored_lines, engine, missed, restart)
            if station is not None:
                station.remember(restored_lines)
        monitor.emit(missed)
        terminal = (
            TerminalView(
                monitor.engine,
                title=title,
                clock=clock,
                drivers=drivers,
                out=out,
                alarms=monitor.pipeline.alarms,
            )
            if view
            else None
        )
        if station is not None:
            station.on_listening = _announce(terminal, web_note)
        async with asyncio.TaskGroup() as group:
            running = group.create_task(monitor.run(), name="monitor")
            screen = None
            if terminal is not None:
                screen = group.create_task(terminal.run(), name="view")
            if station is not None:
                group.create_task(station.run(), name="central station")
            scenario = None
            if body is not None:
                scenario = group.create_task(_drain(body(monitor)), name="scenario")
            await running
            if scenario is not None:
                scenario.cancel()  # a signal stopped the monitor before the scenario ended
            if screen is not None:
                screen.cancel()
            if station is not None:
                station.stop()  # its pages hear that the monitor stopped
        if terminal is not None:
            terminal.draw()  # the last state, as the monitor stopped
    return counts


async def _drain(body: AsyncIterator[None]) -> None:
    async for _ in body:
        pass


def _announce(terminal: TerminalView | None, note: str) -> Callable[[str], None]:
    """What is said once the station listens: its address (and the demo's accounts), in
    the terminal view's title too, which is redrawn over everything else."""

    def say(url: str) -> None:
        if note:
            log.warning("%s", note)
        if terminal is not None:
            terminal.title += f" - station {url}" + (f" ({note})" if note else "")

    return say


async def run_site(
    site: Site,
    *,
    view: bool,
    out: TextIO = sys.stdout,
    allow_unapproved: bool = False,
    lease: Lease | None = None,
    spool_dir: Path | None = None,
) -> int:
    """``allow_unapproved``: start on a library no pharmacist approved (else refused);
    ``lease``: held on this unit (calguard.units): the log and the sinks are fenced by it;
    ``spool_dir``: the unit's own spool."""
    refusal = await unapproved(site)
    if refusal is not None and not allow_unapproved:
        log.error("%s", refusal)
        return 1
    clock: Clock = (
        SystemClock() if site.speed == 1 else ScaledClock(site.speed, site.clock_anchor_us)
    )
    if isinstance(clock, ScaledClock):
        log.warning("training clock: %gx real time from %s", site.speed, format_ts(clock.anchor_us))
    drivers = [open_driver(d.url, clock=clock, **d.options) for d in site.drivers]
    sinks = [open_sink(s.url, **s.options) for s in site.sinks]
    if lease is not None:  # publish, and connect, only while the lease is known to hold
        for sink in sinks:
            sink.may_publish = lease.valid
        for driver in drivers:
            driver.may_connect = lease.valid
    anchors = _anchor_publisher(site)
    async with anchors or contextlib.nullcontext():  # closed after the log: the last anchor
        await _monitor(
            site.library,
            drivers,
            clock,
            site.db,
            site.source,
            title=site.name,
            view=view,
            out=out,
            sinks=sinks,
            # a training clock is training: its sessions never warm-start a ward's monitor
            mode="live" if site.speed == 1 else "training",
            site=site.name,
            on_anchor=anchors.offer if anchors is not None else None,
            web=site.web if site.web.enabled else None,
            timezone=site.timezone,
            library_watch=None
            if site.db is None
            else LibraryWatch(site.db, site.name, site.profile),
            approved=refusal is None,
            lease=lease,
            spool_dir=spool_dir,
        )
    return 0


async def run_demo(
    library: Library,
    scenario: Scenario,
    *,
    speed: float,
    view: bool,
    db: str | None,
    out: TextIO = sys.stdout,
    web: WebConfig | None = None,
    accounts: bool = False,
    stay: bool = False,
) -> int:
    """``accounts``: make the demo's accounts in ``db`` (its own training log only);
    ``stay``: keep the monitor and its station up after the scenario, until Ctrl-C."""
    note = await _demo_logins(db, accounts) if web is not None else ""
    clock = ScaledClock(speed, anchor_us=SystemClock().now_us())
    bedside = "virtual://demo-bedside"
    VirtualDriver.forget(bedside)
    async with PumpBus(SerialWard.pumps_for(scenario), clock=clock) as bus:
        drivers: list[Driver] = [
            SerialDriver(
                f"serial://{bus.path}?baud=19200",
                clock=clock,
                pumps=SerialWard.mappings(scenario),
                response_timeout=0.2,
            ),
            VirtualDriver(bedside, clock=clock),
        ]
        ward = SerialWard(bus, BedsideQueue(bedside), clock)
        log.info(
            "demo: %s - %s of ward time at %gx: about %s",
            scenario.title,
            format_duration(scenario.duration_us),
            speed,
            format_duration(scenario.duration_us / speed),
        )
        log.info("simulated NE-1000 pumps on %s", bus.path)

        async def scenario_then_stop(monitor: Monitor) -> AsyncIterator[None]:
            await play(scenario, ward, clock)
            await asyncio.sleep(0.5)  # the last poll
            if stay:
                log.warning("the scenario has ended; the monitor stays up until Ctrl-C")
            else:
                monitor.stop()
            yield None

        counts = await _monitor(
            library,
            drivers,
            clock,
            db,
            f"demo:{scenario.name}",
            title=f"DEMO - {scenario.title}",
            mode="demo",
            view=view,
            out=out,
            body=scenario_then_stop,
            web=web,
            web_note=note,
        )
    raised = {k.split(" ", 1)[1]: v for k, v in counts.items() if k.startswith("raised")}
    log.info(
        "demo finished: %s",
        ", ".join(f"{rule} x{n}" for rule, n in sorted(raised.items())) or "no alerts",
    )
    return 0


async def _demo_logins(db: str | None, accounts: bool) -> str:
    """What a new user needs to act at the demo's station: its accounts and passwords."""
    if db is None:
        return "no log (--no-db): the station shows the ward, and nobody can log in to act"
    if not accounts:
        return "log in with an account of that log (calguard user add NAME --role ROLE --db URL)"
    made = await demo_accounts(db)
    return "log in as " + " or ".join(f"{name} ({role}), password {pw}" for name, role, pw in made)
