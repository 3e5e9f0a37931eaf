"""A scenario's pumps as NE-1000 pumps on a pseudo-terminal (one RS-232 line).

The wire carries no drug names: ``site_config`` writes the site config that maps each
address to its pump, drug and concentration, as a real installation's would. A drug change
in the middle of a scenario cannot travel on this wire (it is logged and skipped); use the
MQTT ward for those. Bedside documentation goes to a file the monitor follows (separate
processes) or to an in-process virtual driver (``calguard demo``).

The scenario's clock starts when a monitor first polls the line, so that a monitor that
is slow to start (another process, a loaded machine) does not miss the beginning. A
scenario that sets a pump ``infusing`` restarts it at the keypad, as a nurse does after a
stall: the alarm is cleared and the pump runs again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calguard.monitor.clock import Clock
from calguard.monitor.units import VOLUME_RATE, parse_quantity
from calguard.simulators.ne1000 import PumpBus, SimulatedPump
from calguard.simulators.scenario import Scenario, Step

__all__ = ["SerialWard"]

log = logging.getLogger(__name__)
_STATUS = {"infusing": "I", "stopped": "S", "paused": "P", "alarm": "S"}


def pump_rate(text: str) -> tuple[float, str]:
    """ "0.9 ml/h" -> (0.9, "MH"): in the pump's own units where they exist."""
    number, unit = text.split()[0], text.split()[-1].lower()
    codes = {"ml/h": "MH", "ml/min": "MM", "ul/h": "UH", "ul/min": "UM"}
    if unit in codes:
        return float(number), codes[unit]
    return parse_quantity(text, VOLUME_RATE) * 60, "MH"


class SerialWard:
    def __init__(
        self, bus: PumpBus, document: Callable[[dict[str, Any]], None], clock: Clock
    ) -> None:
        self.bus = bus
        self._document = document
        self.clock = clock
        self.scenario: Scenario | None = None
        self._drugs: dict[str, tuple[str | None, str | None]] = {}

    @staticmethod
    def pumps_for(scenario: Scenario) -> list[SimulatedPump]:
        out = []
        for spec in scenario.pumps:
            rate, units = pump_rate(spec.settings.get("rate", "0 ml/h"))
            out.append(
                SimulatedPump(
                    spec.address,
                    rate,
                    units,
                    _STATUS.get(spec.settings.get("status", "stopped"), "S"),
                )
            )
        return out

    @staticmethod
    def mappings(scenario: Scenario) -> list[dict[str, Any]]:
        """The site config's pump list for this bus."""
        out = []
        for spec in scenario.pumps:
            item: dict[str, Any] = {
                "address": spec.address,
                "pump": spec.pump,
                "channel": spec.channel,
            }
            for key in ("drug", "concentration"):
                if key in spec.settings:
                    item[key] = spec.settings[key]
            out.append(item)
        return out

    def site_config(
        self, scenario: Scenario, bedside: Path, *, safe: bool = False, head: str = ""
    ) -> str:
        """The monitor's site config for this ward; ``head`` is its [site] table."""
        mode = "safe" if safe else "basic"
        lines = [
            head.rstrip("\n") or f'[site]\nname = "training: {scenario.title}"',
            "",
            "[[drivers]]",
            f'url = "serial://{os.path.abspath(self.bus.path)}?baud=19200&mode={mode}"',
            "response_timeout = 0.2  # simulated pumps answer in milliseconds",
        ]
        for item in self.mappings(scenario):
            lines.append("[[drivers.pumps]]")
            lines += [f"{k} = {v!r}".replace("'", '"') for k, v in item.items()]
        lines += ["", "[[drivers]]", f'url = "replay://{bedside.resolve()}"', ""]
        return "\n".join(lines)

    async def start(self, scenario: Scenario, t0: int) -> None:
        """Returns once a monitor polls the pumps (at once if one already has)."""
        self.scenario = scenario
        self._drugs = {
            s.pump: (s.settings.get("drug"), s.settings.get("concentration"))
            for s in scenario.pumps
        }
        if not self.bus.polled.is_set():
            log.info("the scenario starts when a monitor polls the pumps on %s", self.bus.path)
            await self.bus.polled.wait()

    async def document(self, event: dict[str, Any]) -> None:
        self._document(event)

    def _pump(self, name: str) -> SimulatedPump:
        assert self.scenario is not None
        return self.bus.pumps[self.scenario.pump(name).address]

    async def set_pump(self, pump: str, channel: str, settings: dict[str, Any]) -> None:
        sim = self._pump(pump)
        sim.advance(self.clock.now_us())
        if "drug" in settings and (
            settings.get("drug"),
            settings.get("concentration"),
        ) != self._drugs.get(pump):
            log.warning(
                "the serial wire carries no drug name: the change of %s's drug is not simulated",
                pump,
            )
        if "rate" in settings:
            sim.rate, sim.units = pump_rate(settings["rate"])
        if "status" in settings:
            status = _STATUS.get(settings["status"], "S")
            if status == "I":
                sim.restart()  # at the keypad, after a stall too: its alarm is cleared
            else:
                sim.status = status

    async def fault(self, step: Step) -> None:
        if step.fault == "broker-outage":
            log.warning("a broker outage does not apply to a serial line; step skipped")
            return
        assert step.pump is not None
        address = self._pump(step.pump).address
        if step.fault == "stall":
            self.bus.stall(address)
        elif step.fault == "power-cycle":
            self.bus.power_cycle(address)
        elif step.fault in ("silence", "speak"):
            self.bus.silence(address, step.fault == "silence")
        elif step.fault == "unplug":
            self.bus.unplug()
        elif step.fault == "replug":
            self.bus.replug()
        elif step.fault == "garbage":
            self.bus.inject(b"\x02\x99garbage\xff\x03noise")
