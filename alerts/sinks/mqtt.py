"""MQTT alarm sink (protocols.md section 3): alarm lines out, commands in.

    mqtt://127.0.0.1:1883/calguard/nicu        (mqtts:// for TLS)

    <prefix>/alerts                  every alarm line (the alert-line format), QoS 1
    <prefix>/alerts/active/<bed>     retained: the bed's active alarms now, a JSON array
                                     (state, category, audience ... per alarm; [] for none),
                                     so a central station that connects sees them at once
    <prefix>/commands                in, QoS 1: {"id": "c-1", "action": "ack", "alert":
                                     "a-000003", "by": "rn42"}; pause takes "duration",
                                     override "reason" and "duration"
    <prefix>/commands/results        out, QoS 1: {"id": "c-1", "ok": true} or
                                     {"id": "c-1", "ok": false, "reason": "..."}
    <prefix>/alerts/status           retained: the alarm publisher's presence,
                                     {"online": true, "since": T}; on a clean stop
                                     {"online": false, "since": T}; as its Will (a lost
                                     connection or a killed monitor) {"online": false,
                                     "lost": true, "online_since": T}. A station that sees
                                     no presence, or an offline one, must not take the
                                     absence of alarms for a quiet ward. Each says which
                                     drug library the monitor runs: "library" (its version,
                                     as alert lines carry it) and "profile" (or null); the
                                     online one is said again when it switches library.

A command becomes an ``ack``/``pause``/``reset``/``override`` event stamped by the
monitor's clock and goes through the pipeline like any input: logged, audited, replayable.

Both retained topics are signed, stamped with the time and the topic they were signed
for (``calguard.alerts.signed_state``), so that a station can tell the monitor's word from
a forgery: what it reads from the broker when it connects is what stays there.

On every (re)connect the retained per-bed state is put right: each bed with active alarms
gets its state now, and a retained state the broker still holds for a bed that has none
any more (left by an earlier run, signed with an older key, forged, or left by alarms that
ended while the broker was away) is replaced by ``[]`` signed now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
import orjson
from calguard.alerts.signed_state import (
    bed_of_level,
    bed_topic,
    default_state_key,
    load_state_key,
    seal,
)
from calguard.alerts.sinks.base import MAX_COMMAND_BYTES, Delivery, Refused, Sink, SinkError
from calguard.config.options import OptionSpec
from calguard.drivers.clock import SystemClock
from calguard.drivers.mqtt_link import LINK_OPTIONS, broker_address, password, tls_context
from calguard.monitor.timeutil import format_ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["MqttSink", "presence_topic"]

log = logging.getLogger(__name__)
#: the presence is signed again this often, with the time each bed's state was signed
HEARTBEAT_S = 10.0


def presence_topic(prefix: str) -> str:
    """Where the alarm publisher's retained presence lives."""
    return f"{prefix}/alerts/status"


def _wall() -> str:
    """Presence is stamped with the wall clock: it is about this process, not the ward."""
    return format_ts(SystemClock().now_us())


class MqttSink(Sink):
    scheme = "mqtt"
    takes_commands = True
    window = 64  # lines published together when a storm has them waiting
    options: ClassVar[dict[str, OptionSpec]] = {
        "client_id": OptionSpec(str, "calguard-alarms", "client id of the alarm publisher"),
        **LINK_OPTIONS,
        "commands": OptionSpec(bool, True, "take acknowledge/pause/reset/override commands"),
        "signing_key": OptionSpec(
            str,
            None,
            "the key that signs the retained states (default <data dir>/keys/"
            "state-ed25519.key, made at the first start; stations need its .pub)",
        ),
        "heartbeat": OptionSpec(
            float,
            HEARTBEAT_S,
            "seconds between signings of the presence (stations refuse one 3x older)",
            1.0,
        ),
    }

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.host, self.port, self.prefix, self.tls = broker_address(self.parts, self.config)
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._key: Ed25519PrivateKey | None = None
        self._since = ""  # when this connection's presence went online
        self._announce = False  # the presence is to be said again (a library switch)
        #: when each bed's retained state was last signed: the presence carries it, so that
        #: a station can tell an old genuine state replayed onto its topic from the latest
        self._state_t: dict[str, str] = {}
        self._said_at = 0.0  # when the presence was last signed (the loop's clock)

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            given = self.config["signing_key"]
            path = Path(given) if given else default_state_key()
            try:
                self._key = load_state_key(path)
            except (OSError, ValueError) as exc:
                raise SinkError(f"the state signing key {path}: {exc}") from exc
        return self._key

    def _sealed(self, topic: str, data: object, t: str | None = None) -> bytes:
        return seal(self._signing_key(), topic, data, t)

    async def _open(self) -> None:
        try:
            secret, tls = password(self.config), tls_context(self.config, self.tls)
        except ValueError as exc:
            raise SinkError(str(exc)) from exc
        since = self._since = _wall()
        presence = presence_topic(self.prefix)
        lost = self._sealed(
            presence, {"online": False, "lost": True, "online_since": since, **self._running()}
        )
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.config["client_id"],
            will=aiomqtt.Will(presence, lost, qos=1, retain=True),
            username=self.config["username"],
            password=secret,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.config["keepalive"],
            tls_context=tls,
            timeout=10,
        )
        try:
            await client.__aenter__()
            if self.config["commands"] and self.on_command is not None:
                await client.subscribe(f"{self.prefix}/commands", qos=1)
            if self.bed_states is not None:
                await client.subscribe(f"{self.prefix}/alerts/active/+", qos=1)
                for bed, state in self.bed_states().items():
                    await self._publish_state(client, bed, state)
            await self._online(client)
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)
            raise SinkError(f"cannot connect to the broker {self.host}:{self.port}: {exc}") from exc
        self._client = client
        self._reader = asyncio.create_task(self._read_commands(client), name=f"{self.url} commands")

    def _running(self) -> dict[str, object]:
        return self.presence() if self.presence is not None else {}

    async def _online(self, client: aiomqtt.Client) -> None:
        self._announce = False
        topic = presence_topic(self.prefix)
        online = self._sealed(
            topic,
            {"online": True, "since": self._since, "beds": self._state_t, **self._running()},
        )
        await client.publish(topic, online, qos=1, retain=True)
        self._said_at = asyncio.get_running_loop().time()

    def announce(self) -> None:
        self._announce = True
        self._wake.set()

    async def _drain(self) -> None:
        if self._announce and self._client is not None:
            try:
                await self._online(self._client)
            except aiomqtt.MqttError as exc:
                raise SinkError(f"publish failed: {exc}") from exc
        await super()._drain()

    async def _publish_state(
        self, client: aiomqtt.Client, bed: str, state: tuple[dict[str, object], ...]
    ) -> None:
        topic, t = bed_topic(self.prefix, bed), _wall()
        await client.publish(topic, self._sealed(topic, list(state), t), qos=1, retain=True)
        self._state_t[bed] = t  # the presence's heartbeat names it: older copies are replays

    async def _read_commands(self, client: aiomqtt.Client) -> None:
        active = f"{self.prefix}/alerts/active/"
        async for message in client.messages:
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            topic = str(message.topic)
            if topic.startswith(active):
                # a retained state from before this connection, for a bed with no alarm now:
                # signed again now, whoever signed it (an earlier key) or did not (a forgery)
                bed = bed_of_level(topic[len(active) :])
                states = self.bed_states
                if message.retain and states is not None and bed not in states():
                    await self._publish_state(client, bed, ())
                continue
            ident, refusal = await self._command(payload)
            result: dict[str, object] = {"id": ident, "ok": refusal is None}
            if refusal is not None:
                result["reason"] = refusal
            await client.publish(f"{self.prefix}/commands/results", orjson.dumps(result), qos=1)

    async def _command(self, payload: bytes) -> tuple[object, str | None]:
        """One command's id and verdict. Nothing a station sends can stop the reader: a
        command that makes the monitor's checks fail is refused with that failure (logged),
        never raised."""
        assert self.on_command is not None
        try:
            command = orjson.loads(payload) if len(payload) <= MAX_COMMAND_BYTES else None
        except orjson.JSONDecodeError:
            command = None
        ident = command.get("id") if isinstance(command, dict) else None
        try:
            if self.before_command is not None:
                await self.before_command(payload)
            return ident, self.on_command(payload, f"{self.prefix}/commands")
        except Exception as exc:  # a command must never take the alarm sink down
            log.exception("%s: a command could not be checked", self.url)
            return ident, f"the command could not be checked ({type(exc).__name__})"

    async def _wait(self) -> None:
        """Wait for work, or notice that the command reader lost the broker; the presence
        is signed again every ``heartbeat`` seconds (a station takes an old one for a
        monitor that is gone)."""
        wake = asyncio.ensure_future(self._wake.wait())
        loop = asyncio.get_running_loop()
        try:
            watch = {wake} | ({self._reader} if self._reader is not None else set())
            due = self._said_at + self.config["heartbeat"] - loop.time()
            await asyncio.wait(watch, timeout=max(due, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        if loop.time() >= self._said_at + self.config["heartbeat"]:
            self._announce = True
        reader = self._reader
        if reader is not None and reader.done():
            exc = reader.exception() if not reader.cancelled() else None
            raise SinkError(f"lost the broker: {exc or 'the command reader stopped'}")

    async def _deliver(self, item: Delivery) -> None:
        await self._deliver_all([item])

    async def _deliver_all(self, items: list[Delivery]) -> None:
        """The lines in order, each waiting for its PUBACK together (one connection keeps
        their order), then each bed's latest state once: one PUBACK's round trip per line
        left the central station seconds behind an alarm storm."""
        client = self._client
        assert client is not None
        lines = f"{self.prefix}/alerts"
        try:
            await _every(client.publish(lines, i.line.encode(), qos=1) for i in items)
            latest = {item.bed_key: item.bed_state for item in items}
            await _every(self._publish_state(client, b, s) for b, s in latest.items())
        except aiomqtt.MqttError as exc:
            raise SinkError(f"publish failed: {exc}") from exc
        except (ValueError, TypeError) as exc:  # this line cannot be published: give it up
            raise Refused(f"cannot be published: {exc}") from exc

    async def _close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError, Exception):
                await reader
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                topic = presence_topic(self.prefix)
                offline = self._sealed(
                    topic, {"online": False, "since": _wall(), **self._running()}
                )
                await client.publish(topic, offline, qos=1, retain=True, timeout=1)
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)


async def _every(publishes: Iterable[Awaitable[object]]) -> None:
    """Await every publish, even once one failed (none left running unseen), then raise
    the first failure: the window is then delivered again, whole."""
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
