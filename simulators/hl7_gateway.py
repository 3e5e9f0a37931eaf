"""A pump gateway and an ADT feed speaking HL7 v2 over MLLP, like a hospital's would.

Vendor styles (``style``), both learnt from real traffic (tests/conformance/ names it):

- ``ihe``: the IHE PCD framework's shape - one gateway message carries every pump as its
  own MDS (named by OBX-18), delivery information with the current rate, primary and
  secondary sources with the programmed rate;
- ``bbraun``: a B. Braun SpaceStation - one message per pump behind one station EUI-64
  (MSH-3), a syringe-pump MDS named ``P<id>`` in OBX-18 and by ``MDC_ATTR_SYS_ID``, the
  short REFID spellings, ``MDC_FLOW_FLUID_PUMP_CURRENT`` in the delivery information; its
  PCD-04 alarms name the pump without the ``P`` and end under a new parent id, as the
  station does.

Every ``interval`` the gateway sends the pumps' state (PCD-01) and waits for each
acknowledgement; a stall is an occlusion alarm (PCD-04 start, and its end when the pump
runs again); the infants of the scenario are admitted by ``ADT^A01`` with their weight and
birth time. The rest of the bedside documentation goes to a file the monitor follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from calguard.monitor import units
from calguard.monitor.clock import Clock
from calguard.simulators.hl7_messages import STYLES, adt_message, pcd01_message, pcd04_message
from calguard.simulators.scenario import Scenario, Step
from hl7.mllp import open_hl7_connection

__all__ = ["STYLES", "Hl7Gateway", "adt_message", "pcd01_message", "pcd04_message"]

log = logging.getLogger(__name__)


class Hl7Gateway:
    """Sends every pump's state to a monitor's MLLP listener, waiting for each ACK; alarms
    and admissions go out as they happen, on the same connection."""

    def __init__(
        self,
        host: str,
        port: int,
        clock: Clock,
        document: Callable[[dict[str, Any]], None],
        *,
        interval_s: float = 5.0,
        style: str = "bbraun",
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style {style!r}: one of {', '.join(STYLES)} is expected")
        self.host, self.port, self.clock, self.style = host, port, clock, style
        self._document = document
        self.interval_us = round(interval_s * 1e6)
        self.state: dict[str, dict[str, dict[str, Any]]] = {}  # pump -> channel -> settings
        self.beds: dict[str, str | None] = {}
        self.silent: set[str] = set()
        self.acks: list[str] = []
        self._garbage = 0
        self._ids = itertools.count(1)
        self._alarms: dict[tuple[str, str], str] = {}  # (pump, channel) -> alert id
        self._outbox: deque[str] = deque()  # sent before the next periodic report
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acknowledged = asyncio.Event()  # a monitor listens and answers

    def _control(self) -> str:
        return f"SIM{next(self._ids):06d}"

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

    def _send(self, message: str) -> None:
        self._outbox.append(message)
        self._wake.set()

    async def document(self, event: dict[str, Any]) -> None:
        """An infant is admitted by the hospital's ADT feed; the rest is charted at the
        bedside (the file the monitor follows)."""
        if event.get("type") != "patient":
            self._document(event)
            return
        now = self.clock.now_us()
        birth = None
        if "postnatal_age" in event:
            birth = now - units.parse_duration_us(str(event["postnatal_age"]))
        bed = str(event["bed"])
        patient = str(event.get("patient", f"SIM-{bed}"))
        self._send(
            adt_message(
                "A01",
                bed,
                patient,
                now,
                self._control(),
                weight=event.get("weight"),
                birth_us=birth,
            )
        )

    async def set_pump(self, pump: str, channel: str, settings: dict[str, Any]) -> None:
        self.state[pump].setdefault(channel, {}).update(settings)
        if settings.get("status", "alarm") == "alarm" or (pump, channel) not in self._alarms:
            return
        alert = self._alarms.pop((pump, channel))
        if alert:  # the pump runs again: its alarm ends
            self._send(
                pcd04_message(
                    pump,
                    channel,
                    "occlusion",
                    alert,
                    False,
                    self.clock.now_us(),
                    self._control(),
                    style=self.style,
                )
            )

    async def fault(self, step: Step) -> None:
        if step.pump is None:
            return
        if step.fault == "stall":  # the motor stalls: an occlusion alarm, delivery stops
            self.state[step.pump][step.channel]["status"] = "alarm"
            alert = f"SIM-{step.pump}-{next(self._ids)}"
            self._alarms[(step.pump, step.channel)] = alert
            self._send(
                pcd04_message(
                    step.pump,
                    step.channel,
                    "occlusion",
                    alert,
                    True,
                    self.clock.now_us(),
                    self._control(),
                    style=self.style,
                )
            )
        elif step.fault in ("unplug", "silence"):
            self.silent.add(step.pump)
        elif step.fault in ("replug", "speak"):
            self.silent.discard(step.pump)
        elif step.fault == "garbage":
            self._garbage += 1

    async def _send_loop(self) -> None:
        while True:
            try:
                reader, writer = await open_hl7_connection(self.host, self.port, encoding="utf-8")
                try:
                    await self._session(reader, writer)
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.debug("gateway: %s", exc)
                await asyncio.sleep(0.5)

    async def _session(self, reader: Any, writer: Any) -> None:
        next_us = self.clock.now_us()
        while True:
            while self._outbox:  # kept until acknowledged: resent after a reconnect
                await self._exchange(reader, writer, self._outbox[0])
                self._outbox.popleft()
            if self.clock.now_us() >= next_us:
                for message in self._reports():
                    await self._exchange(reader, writer, message)
                next_us += self.interval_us
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                delay = (next_us - self.clock.now_us()) / 1e6 / self.clock.speed
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()

    def _reports(self) -> list[str]:
        messages = []
        if self._garbage:
            self._garbage -= 1
            messages.append(
                "MSH|^~\\&|SIM|X|CALGUARD|NICU|20261121||ORU^R01|G1|P|2.6\rOBX|1|NM|157784|1.1.2.4|x\r"
            )
        pumps = {p: c for p, c in sorted(self.state.items()) if p not in self.silent}
        now = self.clock.now_us()
        if self.style == "bbraun":  # a SpaceStation: one message per pump
            for pump, channels in pumps.items():
                messages.append(
                    pcd01_message(
                        pump, self.beds.get(pump), channels, now, self._control(), style="bbraun"
                    )
                )
        elif pumps:  # one gateway message, every pump its own MDS
            first, *rest = pumps
            messages.append(
                pcd01_message(
                    first,
                    self.beds.get(first),
                    pumps[first],
                    now,
                    self._control(),
                    style="ihe",
                    more={p: pumps[p] for p in rest},
                )
            )
        return messages

    async def _exchange(self, reader: Any, writer: Any, message: str) -> None:
        writer.writeblock(message.encode("utf-8"))
        await writer.drain()
        block = await reader.readblock()
        self.acks.append(block.decode("utf-8", "replace"))
        self._acknowledged.set()
