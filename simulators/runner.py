"""Play a scenario on a simulated ward, whatever wire the ward speaks.

A backend (serial, MQTT, HL7) implements three verbs: ``document`` a bedside event,
``set_pump`` settings, and ``fault``, after ``start``, which may wait until a monitor
listens. ``play`` walks the timeline on the injected clock from then on, so a scenario runs
in real time or, for training, faster (``ScaledClock``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.clock import Clock
from calguard.monitor.timeutil import format_ts
from calguard.simulators.scenario import Scenario, Step

__all__ = ["BedsideFile", "BedsideQueue", "WardBackend", "play"]

log = logging.getLogger(__name__)


class WardBackend(Protocol):
    async def start(self, scenario: Scenario, t0: int) -> None: ...

    async def document(self, event: dict[str, Any]) -> None: ...

    async def set_pump(self, pump: str, channel: str, settings: dict[str, Any]) -> None: ...

    async def fault(self, step: Step) -> None: ...


class BedsideFile:
    """Bedside documentation written as JSON Lines, for a monitor following the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.write_text("")

    def __call__(self, event: dict[str, Any]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")


class BedsideQueue:
    """Bedside documentation handed to an in-process monitor's virtual driver."""

    def __init__(self, url: str = "virtual://bedside") -> None:
        self.url = url

    def __call__(self, event: dict[str, Any]) -> None:
        VirtualDriver.put(self.url, event)


async def play(scenario: Scenario, ward: WardBackend, clock: Clock) -> None:
    """Set the ward up, then apply every step at its time; returns at the scenario's end."""
    await ward.start(scenario, clock.now_us())
    t0 = clock.now_us()  # after start: a ward may have waited for its monitor
    for event in scenario.opening(t0):
        await ward.document(event)
    for step in scenario.steps:
        await clock.sleep_until(t0 + step.at_us)
        if step.event is not None:
            await ward.document({"t": format_ts(clock.now_us()), **step.event})
        elif step.fault is not None:
            log.info("scenario %s: %s %s", scenario.name, step.fault, step.pump or "")
            await ward.fault(step)
        elif step.pump is not None:
            await ward.set_pump(step.pump, step.channel, step.settings)
    await clock.sleep_until(t0 + scenario.duration_us)
