"""``calguard simulate serial|mqtt|hl7 --scenario NAME``: simulated pumps for training.

Each prints where to connect (and writes a site config for ``calguard run``), then plays
the scenario; the pumps keep running after it until Ctrl-C, unless ``--once``. With
``--speed`` the ward runs faster than real time from the moment it starts; the written
site config gives the monitor the same speed and start (``clock_anchor``) so both agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from calguard.alerts.log import training_db_url
from calguard.drivers.clock import ScaledClock, SystemClock
from calguard.drivers.mqtt import monitor_status_topic
from calguard.monitor.clock import Clock
from calguard.monitor.timeutil import format_ts
from calguard.simulators.hl7_gateway import Hl7Gateway
from calguard.simulators.mqtt_ward import CHARTING_ACCOUNT, MqttWard, wait_for_monitor
from calguard.simulators.ne1000 import PumpBus
from calguard.simulators.runner import BedsideFile, play
from calguard.simulators.scenario import Scenario
from calguard.simulators.serial_ward import SerialWard

__all__ = ["simulate"]

log = logging.getLogger("calguard")


def _clock(speed: float) -> Clock:
    """Real time, or a training clock that starts now (and writes where into the site
    config, so that the monitor's clock is the same)."""
    return SystemClock() if speed == 1 else ScaledClock(speed, anchor_us=SystemClock().now_us())


async def _until_stopped(scenario: Scenario, ward: object, clock: Clock, once: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    playing = asyncio.create_task(play(scenario, ward, clock))  # type: ignore[arg-type]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({playing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if playing.done() and not once:
        log.info("scenario %s finished; the pumps keep running (Ctrl-C to stop)", scenario.name)
        await stopping
    for task in (playing, stopping):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _announce(scenario: Scenario, lines: list[str]) -> None:
    print(f"Scenario {scenario.name}: {scenario.title}", flush=True)
    for text in lines:
        print(f"  {text}", flush=True)


async def simulate(
    wire: str,
    scenario: Scenario,
    *,
    speed: float,
    once: bool,
    directory: str | None,
    broker: str,
    target: str,
    safe: bool,
    wait: bool = True,
    style: str = "bbraun",
) -> int:
    clock = _clock(speed)
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="calguard-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)  # before anything runs: blocking is fine here
    bedside = BedsideFile(workdir / "bedside.jsonl")
    note = (
        f" (clock x{speed:g} from now: the site config gives the monitor the same)"
        if speed != 1
        else ""
    )
    if wire == "serial":
        await _serial(
            scenario, clock, workdir, bedside, safe=safe, speed=speed, once=once, note=note
        )
    elif wire == "mqtt":
        await _mqtt(scenario, clock, workdir, broker, speed=speed, once=once, note=note, wait=wait)
    else:
        await _hl7(
            scenario,
            clock,
            workdir,
            bedside,
            target,
            speed=speed,
            once=once,
            note=note,
            style=style,
        )
    return 0


def _site_head(scenario: Scenario, clock: Clock) -> str:
    head = (
        f'[site]\nname = "training: {scenario.title}"\nspeed = {clock.speed}\n'
        f'db = "{training_db_url()}"   # training never writes the ward\'s log\n'
    )
    if isinstance(clock, ScaledClock):
        head += f'clock_anchor = "{format_ts(clock.anchor_us)}"\n'
    return head + "\n"


async def _serial(
    scenario: Scenario,
    clock: Clock,
    workdir: Path,
    bedside: BedsideFile,
    *,
    safe: bool,
    speed: float,
    once: bool,
    note: str,
) -> None:
    pumps = SerialWard.pumps_for(scenario)
    async with PumpBus(pumps, clock=clock, safe=safe, link=workdir / "ttyNE1000") as bus:
        ward = SerialWard(bus, bedside, clock)
        site = workdir / "site.toml"
        site.write_text(
            ward.site_config(scenario, bedside.path, safe=safe, head=_site_head(scenario, clock))
        )
        mode = "safe" if safe else "basic"
        _announce(
            scenario,
            [
                f"NE-1000 pumps ({mode} mode, 19200 baud) on {bus.path}",
                f"bedside documentation appended to {bedside.path}",
                f"site config: {site}{note}",
                f"monitor it:  calguard run --site {site} --view",
            ],
        )
        await _until_stopped(scenario, ward, clock, once)


async def _mqtt(
    scenario: Scenario,
    clock: Clock,
    workdir: Path,
    broker: str,
    *,
    speed: float,
    once: bool,
    note: str,
    wait: bool,
) -> None:
    parts = urlsplit(broker)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    prefix = parts.path.strip("/") or "calguard/nicu"
    site = workdir / "site.toml"
    site.write_text(
        _site_head(scenario, clock)
        + f'[[drivers]]\nurl = "mqtt://{host}:{port}/{prefix}"\nclient_id = "calguard-training"\n'
        + "\n# alarms to central stations, and their acknowledgements back\n"
        + f'[[sinks]]\nurl = "mqtt://{host}:{port}/{prefix}"\n'
        + 'client_id = "calguard-training-alarms"\n'
        + "\n# the simulated bedside charting, on the events topic of its own account\n"
        + f'[[broker.charting]]\naccount = "{CHARTING_ACCOUNT}"\n'
    )
    ward = MqttWard(host, port, prefix, clock)
    _announce(
        scenario,
        [
            f"{len(scenario.pumps)} pumps publishing to mqtt://{host}:{port}/{prefix}/pumps/<pump>/...",
            f"bedside events on {prefix}/events/{CHARTING_ACCOUNT}",
            f"site config: {site}{note}",
            f"monitor it:  calguard run --site {site} --view",
            f"then:        calguard alerts --site {site}",
            f"             calguard ack ALERT --by YOU --site {site}",
        ],
    )
    if wait:  # bedside events published before the monitor subscribes would be lost
        print(f"  waiting for the monitor on {monitor_status_topic(prefix)} ...", flush=True)
        await wait_for_monitor(host, port, prefix)
        print("  the monitor is subscribed: the scenario starts", flush=True)
    try:
        await _until_stopped(scenario, ward, clock, once)
    finally:
        await ward.stop()


async def _hl7(
    scenario: Scenario,
    clock: Clock,
    workdir: Path,
    bedside: BedsideFile,
    target: str,
    *,
    speed: float,
    once: bool,
    note: str,
    style: str,
) -> None:
    parts = urlsplit(target)
    host, port = parts.hostname or "127.0.0.1", parts.port or 2575
    site = workdir / "site.toml"
    site.write_text(
        _site_head(scenario, clock)
        + f'[[drivers]]\nurl = "mllp://{host}:{port}"\n\n'
        + f'[[drivers]]\nurl = "replay://{bedside.path.resolve()}"\n'
    )
    gateway = Hl7Gateway(host, port, clock, bedside, style=style)
    _announce(
        scenario,
        [
            f"a pump gateway in the {style} style (PCD-01 telemetry, PCD-04 alarms) and an "
            f"ADT feed (the infants, with their weight) sending to mllp://{host}:{port} "
            "(retrying until it listens)",
            f"the rest of the bedside documentation appended to {bedside.path}",
            f"site config: {site}{note}",
            f"monitor it:  calguard run --site {site} --view",
        ],
    )
    try:
        await _until_stopped(scenario, gateway, clock, once)
    finally:
        await gateway.stop()


def main_list() -> int:
    from calguard.simulators.scenario import list_scenarios

    for name, title in list_scenarios():
        sys.stdout.write(f"{name:<24} {title}\n")
    return 0
