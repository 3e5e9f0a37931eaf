"""A ward of pumps on MQTT: telemetry, presence and bedside events (protocols.md section 3).

Each pump has its own connection, like a real networked pump: a retained birth message
``{"online": true}`` on its status topic and the Will ``{"online": false}``. It publishes a
reading every ``interval`` (on the injected clock) at QoS 1 and keeps every reading in an
outbox until the broker has acknowledged it: when the broker is away the pump keeps
measuring, and publishes what it kept once it is back (at-least-once; the monitor drops
redeliveries by ``seq``). Bedside documentation goes to the ``events/<account>`` topic of
the ward's charting account (``CHARTING_ACCOUNT`` unless told otherwise): the monitor takes
an event that can end an alarm only from a charting account its site config lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Any

import aiomqtt
import orjson
from calguard.drivers.mqtt import monitor_status_topic
from calguard.monitor.clock import Clock
from calguard.monitor.timeutil import format_ts
from calguard.simulators.scenario import PumpSpec, Scenario, Step

__all__ = ["CHARTING_ACCOUNT", "MqttPump", "MqttWard", "wait_for_monitor"]

log = logging.getLogger(__name__)

#: the simulated bedside charting's account (the training site config lists it)
CHARTING_ACCOUNT = "sim-bedside"


class MqttPump:
    def __init__(
        self, spec: PumpSpec, host: str, port: int, prefix: str, clock: Clock, interval_s: float
    ) -> None:
        self.spec = spec
        self.host, self.port, self.prefix = host, port, prefix
        self.clock = clock
        self.interval_us = round(interval_s * 1e6)
        self.settings: dict[str, Any] = dict(spec.settings)
        self.telemetry = f"{prefix}/pumps/{spec.pump}/telemetry"
        self.status = f"{prefix}/pumps/{spec.pump}/status"
        self.outbox: deque[tuple[str, bytes]] = deque()
        self.published = 0
        self.seq = 0
        self.reporting = True  # False: silent (powered off, unplugged, muted)
        self._wake = asyncio.Event()
        self._reachable = asyncio.Event()  # set while the pump has a path to the broker
        self._reachable.set()
        self._client: aiomqtt.Client | None = None

    def reading(self) -> dict[str, Any]:
        self.seq += 1
        s = self.settings
        event: dict[str, Any] = {
            "t": format_ts(self.clock.now_us()),
            "type": "reading",
            "pump": self.spec.pump,
            "channel": self.spec.channel,
            "rate": s.get("rate", "0 ml/h"),
            "status": s.get("status", "stopped"),
            "seq": self.seq,
        }
        for key in ("drug", "concentration", "mode", "pressure", "alarm"):
            if key in s:
                event[key] = s[key]
        return event

    def queue(self, topic: str, payload: bytes) -> None:
        self.outbox.append((topic, payload))
        self._wake.set()

    async def measure(self) -> None:
        """Every interval, one reading into the outbox (while the pump is reporting)."""
        next_us = self.clock.now_us()
        while True:
            if self.reporting:
                self.queue(self.telemetry, orjson.dumps(self.reading()))
            next_us += self.interval_us
            await self.clock.sleep_until(next_us)

    async def publish(self) -> None:
        """Connect (birth + Will), drain the outbox, reconnect whenever the broker goes."""
        will = aiomqtt.Will(self.status, b'{"online":false}', qos=1, retain=True)
        while True:
            await self._reachable.wait()
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"sim-pump-{self.spec.pump}",
                    will=will,
                    keepalive=5,
                    timeout=5,
                ) as client:
                    self._client = client
                    await client.publish(self.status, b'{"online":true}', qos=1, retain=True)
                    while self.connected_wanted:
                        while self.outbox and self.connected_wanted:
                            topic, payload = self.outbox[0]
                            await client.publish(topic, payload, qos=1, timeout=10)
                            self.outbox.popleft()  # only once the broker acknowledged it
                            self.published += 1
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.5):
                                await self._wake.wait()
                    self._drop(client)
            except aiomqtt.MqttError as exc:
                log.debug("pump %s: %s", self.spec.pump, exc)
            finally:
                self._client = None
            await asyncio.sleep(0.2)

    @property
    def connected_wanted(self) -> bool:
        return self._reachable.is_set()

    @connected_wanted.setter
    def connected_wanted(self, value: bool) -> None:
        if value:
            self._reachable.set()
        else:
            self._reachable.clear()

    def cut(self) -> None:
        """Lose the broker abruptly (no DISCONNECT): the broker publishes the Will."""
        self.connected_wanted = False
        self._wake.set()
        if self._client is not None:
            self._drop(self._client)

    @staticmethod
    def _drop(client: aiomqtt.Client) -> None:
        sock = client._client.socket()  # a simulator may pull its own cable
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class MqttWard:
    """A scenario's pumps and bedside events on an MQTT broker."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        clock: Clock,
        *,
        interval_s: float = 1.0,
        account: str = CHARTING_ACCOUNT,
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.clock = clock
        self.interval_s = interval_s
        self.account = account
        self.pumps: dict[tuple[str, str], MqttPump] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._events: aiomqtt.Client | None = None

    async def start(self, scenario: Scenario, t0: int) -> None:
        self._events = aiomqtt.Client(
            self.host, self.port, identifier="sim-ward-bedside", timeout=5
        )
        await self._events.__aenter__()
        for spec in scenario.pumps:
            pump = MqttPump(spec, self.host, self.port, self.prefix, self.clock, self.interval_s)
            self.pumps[(spec.pump, spec.channel)] = pump
            self._tasks.append(asyncio.create_task(pump.publish(), name=f"sim {spec.pump} publish"))
            self._tasks.append(asyncio.create_task(pump.measure(), name=f"sim {spec.pump} measure"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._events is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._events.__aexit__(None, None, None)

    async def _restore(self, at_us: int) -> None:
        await self.clock.sleep_until(at_us)
        for sim in self.pumps.values():
            sim.connected_wanted = True

    async def document(self, event: dict[str, Any]) -> None:
        assert self._events is not None
        topic = f"{self.prefix}/events/{self.account}"
        await self._events.publish(topic, orjson.dumps(event), qos=1)

    async def set_pump(self, pump: str, channel: str, settings: dict[str, Any]) -> None:
        sim = self.pumps[(pump, channel)]
        sim.settings.update(settings)
        if "status" in settings and settings["status"] != "alarm":
            sim.settings.pop("alarm", None)

    async def fault(self, step: Step) -> None:
        if step.fault == "broker-outage":
            for sim in self.pumps.values():
                sim.cut()  # they keep measuring into their outboxes
            back = self.clock.now_us() + (step.duration_us or 60_000_000)
            self._tasks.append(asyncio.create_task(self._restore(back), name="sim broker back"))
            return
        assert step.pump is not None
        sim = self.pumps[(step.pump, step.channel)]
        if step.fault == "stall":
            sim.settings.update(status="alarm", alarm="occlusion")
        elif step.fault == "unplug":
            sim.reporting = False
            sim.cut()
        elif step.fault == "replug":
            sim.reporting = sim.connected_wanted = True
        elif step.fault in ("silence", "speak"):
            sim.reporting = step.fault == "speak"
        elif step.fault == "garbage":
            bad = {
                "t": format_ts(self.clock.now_us()),
                "type": "reading",
                "pump": sim.spec.pump,
                "rate": "fast",
            }
            sim.queue(sim.telemetry, orjson.dumps(bad))
        elif step.fault == "power-cycle":
            sim.seq = 0  # a restarted pump counts again from 1


async def wait_for_monitor(host: str, port: int, prefix: str, *, retry_s: float = 1.0) -> None:
    """Return once a monitor has announced itself subscribed on ``prefix`` (its retained
    ``{"online": true}``); wait through a broker that is not up yet."""
    topic = monitor_status_topic(prefix)
    while True:
        try:
            async with aiomqtt.Client(host, port, timeout=5) as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    try:
                        status = orjson.loads(message.payload)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(status, dict) and status.get("online") is True:
                        return
        except aiomqtt.MqttError as exc:
            log.warning("waiting for the broker %s:%s: %s", host, port, exc)
            await asyncio.sleep(retry_s)
