"""A pump gateway sending IHE PCD-01 ``ORU^R01`` over MLLP, like a vendor's would.

Each pump becomes one device (MDS) whose channels are VMDs: every ``interval`` the gateway
sends one message per pump with, per channel, the infusing status, the programmed rate,
the drug label and the concentration, and waits for the acknowledgement. HL7 carries no
bedside documentation; the scenario's documentation goes to a file the monitor follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from calguard.monitor.clock import Clock
from calguard.monitor.timeutil import to_datetime
from calguard.simulators.scenario import Scenario, Step
from hl7.mllp import open_hl7_connection

__all__ = ["Hl7Gateway", "pcd01_message"]

log = logging.getLogger(__name__)
_UNITS = {
    "ml/h": "265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM",
    "ml/min": "265234^MDC_DIM_MILLI_L_PER_MIN^MDC^mL/min^mL/min^UCUM",
}
_CONC_UNIT = "264306^MDC_DIM_MILLI_G_PER_ML^MDC^mg/mL^mg/mL^UCUM"


def _hl7_time(us: int) -> str:
    return to_datetime(us).strftime("%Y%m%d%H%M%S") + "+0000"


def pcd01_message(
    device: str, bed: str | None, channels: dict[str, dict[str, Any]], now_us: int, control: str
) -> str:
    """One PCD-01 ORU^R01 for a pump device and its channels (A -> VMD 1, ...)."""
    stamp = _hl7_time(now_us)
    segments = [
        f"MSH|^~\\&|SIM_GATEWAY^{device}^EUI-64|CALGUARD_SIM|CALGUARD|NICU|{stamp}||ORU^R01^ORU_R01|{control}|P|2.6"
        "|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||SIM^^^Hospital^PI||Infant^Baby",
        f"PV1||I|NICU^^{bed or ''}",
        f"OBR|1|||69985^MDC_DEV_PUMP_INFUS_MDS^MDC|||{stamp}",
        "OBX|1||69985^MDC_DEV_PUMP_INFUS_MDS^MDC|1.0.0.0|||||||X",
    ]
    row = 2
    for channel, s in sorted(channels.items()):
        vmd = ord(channel) - ord("A") + 1
        status = (
            "pump-status-infusing" if s.get("status") == "infusing" else "pump-status-not-infusing"
        )
        number, unit = str(s.get("rate", "0 ml/h")).split()
        rows = [
            ("", f"69986^MDC_DEV_PUMP_INFUS_VMD^MDC|1.{vmd}.0.0|||||||X"),
            ("CWE", f"184519^MDC_PUMP_INFUSING_STATUS^MDC|1.{vmd}.1.1|^{status}||||||R"),
            (
                "NM",
                f"157784^MDC_FLOW_FLUID_PUMP^MDC|1.{vmd}.2.4|{number}|"
                f"{_UNITS.get(unit.lower(), unit)}|||||R",
            ),
        ]
        if "drug" in s:
            rows.append(("ST", f"184514^MDC_DRUG_NAME_LABEL^MDC|1.{vmd}.2.10|{s['drug']}||||||R"))
        if "concentration" in s:
            value = str(s["concentration"]).split()[0]
            rows.append(("NM", f"157760^MDC_CONC_DRUG^MDC|1.{vmd}.2.11|{value}|{_CONC_UNIT}|||||R"))
        for kind, text in rows:
            segments.append(f"OBX|{row}|{kind}|{text}")
            row += 1
    return "\r".join(segments) + "\r"


class Hl7Gateway:
    """Sends every pump's state to a monitor's MLLP listener, waiting for each ACK."""

    def __init__(
        self,
        host: str,
        port: int,
        clock: Clock,
        document: Callable[[dict[str, Any]], None],
        *,
        interval_s: float = 5.0,
    ) -> None:
        self.host, self.port, self.clock = host, port, clock
        self._document = document
        self.interval_us = round(interval_s * 1e6)
        self.state: dict[str, dict[str, dict[str, Any]]] = {}  # pump -> channel -> settings
        self.beds: dict[str, str | None] = {}
        self.silent: set[str] = set()
        self.acks: list[str] = []
        self._garbage = 0
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._acknowledged = asyncio.Event()  # a monitor listens and answers

    async def start(self, scenario: Scenario, t0: int) -> None:
        """Returns once a monitor has acknowledged the pumps' first message: a monitor that
        is slow to start does not miss the beginning of the scenario."""
        lines = {line["line"]: line.get("bed") for line in scenario.lines}
        for spec in scenario.pumps:
            self.state.setdefault(spec.pump, {})[spec.channel] = dict(spec.settings)
            self.beds[spec.pump] = lines.get(spec.line) if spec.line else None
        self._task = asyncio.create_task(self._send_loop(), name="sim hl7 gateway")
        if self.state:
            log.info("the scenario starts when a monitor answers on %s:%s", self.host, self.port)
            await self._acknowledged.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def document(self, event: dict[str, Any]) -> None:
        self._document(event)

    async def set_pump(self, pump: str, channel: str, settings: dict[str, Any]) -> None:
        self.state[pump][channel].update(settings)

    async def fault(self, step: Step) -> None:
        if step.pump is None:
            return
        if step.fault == "stall":
            self.state[step.pump][step.channel]["status"] = "stopped"
        elif step.fault in ("unplug", "silence"):
            self.silent.add(step.pump)
        elif step.fault in ("replug", "speak"):
            self.silent.discard(step.pump)
        elif step.fault == "garbage":
            self._garbage += 1

    async def _send_loop(self) -> None:
        next_us = self.clock.now_us()
        while True:
            try:
                reader, writer = await open_hl7_connection(self.host, self.port, encoding="utf-8")
                try:
                    while True:
                        await self._send_all(reader, writer)
                        next_us += self.interval_us
                        await self.clock.sleep_until(next_us)
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.debug("gateway: %s", exc)
                await asyncio.sleep(0.5)
                next_us = self.clock.now_us()

    async def _send_all(self, reader: Any, writer: Any) -> None:
        messages = []
        if self._garbage:
            self._garbage -= 1
            messages.append(
                "MSH|^~\\&|SIM|X|CALGUARD|NICU|20261121||ORU^R01|G1|P|2.6\rOBX|1|NM|157784|1.1.2.4|x\r"
            )
        for pump, channels in sorted(self.state.items()):
            if pump not in self.silent:
                messages.append(
                    pcd01_message(
                        pump,
                        self.beds.get(pump),
                        channels,
                        self.clock.now_us(),
                        f"SIM{next(self._ids):06d}",
                    )
                )
        for message in messages:
            writer.writeblock(message.encode("utf-8"))
            await writer.drain()
            block = await reader.readblock()
            self.acks.append(block.decode("utf-8", "replace"))
            self._acknowledged.set()
