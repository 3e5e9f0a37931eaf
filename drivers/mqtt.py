"""MQTT driver (aiomqtt >= 2.5): pump telemetry, presence and bedside events.

    mqtt://127.0.0.1:1883/calguard/nicu          (mqtts:// for TLS, default port 8883)

Topics under the URL's prefix (protocols.md section 3):

    <prefix>/pumps/<pump>/telemetry   readings (one event, or a list), QoS 1
    <prefix>/pumps/<pump>/status      presence {"online": true|false}, retained; the Will
    <prefix>/events/<account>         bedside documentation of a charting account, QoS 1
    <prefix>/events                   bedside documentation from nobody in particular
    <prefix>/monitor/status           the monitor's own presence, published by it:
                                      {"online": true} retained once subscribed, and
                                      {"online": false} as its Will and on a clean exit

The monitor connects with a fixed client id and a persistent session (MQTT 5, clean start
off, a long session expiry), so QoS 1 messages published while it is away are delivered
when it returns. A QoS 1 message is acknowledged (PUBACK) only once its inputs are in the
durable log (the database, or the log's local spool): the monitor calls the ``on_durable``
of the last input of each burst. A monitor killed before that loses nothing - the broker
redelivers what was not acknowledged - and the redelivered copies of what was already
logged are dropped by the engine on ``seq`` (logged as ``duplicate``). ``receive_maximum``
bounds the messages the broker sends ahead of those acknowledgements. Messages already
received are taken as one burst, and an ordinary PUBLISH (QoS 0 or 1, no MQTT 5 properties)
is decoded by a lean path rather than paho's: ``mqtt_wire`` holds every reach under aiomqtt.

Who charted what is the broker's to say, not the payload's: the broker's ACL lets each
charting account publish only on ``events/<account>``, the driver stamps that account on
the event (``"account"``, logged with it), and the site's ``[[broker.charting]]`` says which
event types each account may chart. A bedside event that can end an alarm (``CLEARING``) on
the bare ``events`` topic, an event from an account not allowed to chart it, an event that
names an account of its own, and an action on an alarm (those come from central stations
as commands, stamped by the monitor) are refused with the reason and never applied.

A payload that cannot be used is a problem naming the topic's pump (telemetry-invalid), never
a crash. Losing the broker is a ``DriverError``: the base class reconnects with backoff, and
meanwhile the engine's stale timers speak for the silent pumps. Acknowledgements still due
for a connection that is gone are dropped: the broker redelivers those messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar

import aiomqtt
import orjson
from calguard.config.options import OptionSpec
from calguard.config.site import BEDSIDE_TYPES, Charting
from calguard.drivers.base import Driver, Inbound
from calguard.drivers.mqtt_link import LINK_OPTIONS, broker_address, password, tls_context
from calguard.drivers.mqtt_wire import Received, lean_receive, manual_acks
from calguard.monitor.errors import DriverError
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.timeutil import format_ts
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["CLEARING", "MqttDriver", "monitor_status_topic", "topics"]

_SESSION_EXPIRY_S = 7 * 24 * 3600  # keep queued messages a week while the monitor is away
_BURST = 256  # messages taken at once when they are already waiting
# QoS 1 messages the broker may send before the monitor has acknowledged them. Each waits
# for the log's next batch (0.25 s, longer while spooling or under load): at 1,000 readings
# a second a window of 5,000 is ~5 s of slack before the broker must pause.
#: a telemetry reading is ~200 bytes and a bedside batch a few kilobytes: 64 KiB is ample,
#: and six anonymous 10 MiB messages must not fill a disk through the log
_MAX_PAYLOAD = 64 * 1024
_TOPIC_CHARS = 256  # of a topic, what a source name keeps
_ROUTES = 8192  # topics whose source name and parts are remembered (pumps repeat each second)
_RECEIVE_MAXIMUM = 5000
#: bedside events that can end an alarm (patency-check-missing, site-check-overdue,
#: telemetry-stale ...): they count only from a charting account allowed to chart them
CLEARING = ("patency_check", "site_check", "disconnect", "line_removed")


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue (chosen through its public ``queue_type``), remembered so
    that a burst already received is taken at once instead of a task per message. The
    lean receive path (``mqtt_wire``) puts plain ``Received`` tuples in it."""

    latest: _Inbox | None = None

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        _Inbox.latest = self

    def take(self, limit: int) -> list[aiomqtt.Message | Received]:
        """Up to ``limit`` messages already received, without waiting (``get_nowait``
        each: the queue is unbounded, so no sender waits to be woken)."""
        return [self._get() for _ in range(min(limit, self.qsize()))]


ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'


def monitor_status_topic(prefix: str) -> str:
    """Where the monitor announces itself: simulators and central stations wait on it."""
    return f"{prefix}/monitor/status"


def topics(prefix: str) -> dict[str, str]:
    return {
        "telemetry": f"{prefix}/pumps/+/telemetry",
        "status": f"{prefix}/pumps/+/status",
        "events": f"{prefix}/events",
        "charting": f"{prefix}/events/+",
    }


class MqttDriver(Driver):
    scheme = "mqtt"
    #: given the site's ``[[broker.charting]]`` accounts (``charting``) by the site config
    takes_charting: ClassVar[bool] = True
    options: ClassVar[dict[str, OptionSpec]] = {
        "client_id": OptionSpec(
            str, "calguard-monitor", "fixed client id: the persistent session's name"
        ),
        **LINK_OPTIONS,
        "persistent": OptionSpec(bool, True, "persistent session (clean start off)"),
        "max_payload_bytes": OptionSpec(
            int,
            _MAX_PAYLOAD,
            "larger payloads are refused unread (logged by size and SHA-256)",
            minimum=1024,
            maximum=16 << 20,
        ),
        "receive_maximum": OptionSpec(
            int,
            _RECEIVE_MAXIMUM,
            "QoS 1 messages the broker may send ahead of their acknowledgement, which waits "
            "until they are in the durable log",
            minimum=1,
            maximum=65535,
        ),
    }

    def __init__(self, url: str, *, charting: Iterable[Charting] = (), **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        #: who may chart what; an account not listed charts nothing
        self.charting = {c.account: c for c in charting}
        try:
            self.host, self.port, self.prefix, self.tls = broker_address(self.parts, self.config)
        except ValueError as exc:
            raise DriverError(str(exc), source=url) from exc
        self._client: aiomqtt.Client | None = None
        self._messages: AsyncIterator[aiomqtt.Message | Received] | None = None
        self._inbox: _Inbox | None = None
        #: topic -> (source name, the parts after the prefix)
        self._routes: dict[str, tuple[str, tuple[str, ...]]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            secret, tls = password(self.config), tls_context(self.config, self.tls)
        except ValueError as exc:
            raise DriverError(str(exc), source=self.url) from exc
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = _SESSION_EXPIRY_S if self.config["persistent"] else 0
        properties.ReceiveMaximum = self.config["receive_maximum"]
        client = aiomqtt.Client(
            self.host,
            self.port,
            queue_type=_Inbox,
            identifier=self.config["client_id"],
            username=self.config["username"],
            password=secret,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self.config["persistent"],
            properties=properties,
            keepalive=self.config["keepalive"],
            tls_context=tls,
            will=aiomqtt.Will(monitor_status_topic(self.prefix), OFFLINE, qos=1, retain=True),
            timeout=10,
        )
        inbox = _Inbox.latest  # made by the constructor above, before any other task ran
        manual_acks(client)
        if inbox is not None:
            lean_receive(client, inbox)
        try:
            await client.__aenter__()
            for topic in topics(self.prefix).values():
                await client.subscribe(topic, qos=1)
            # subscribed: from now on nothing published for the monitor is lost
            await client.publish(monitor_status_topic(self.prefix), ONLINE, qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            await _quietly_exit(client)
            raise DriverError(
                f"cannot connect to the broker {self.host}:{self.port}: {exc}", source=self.url
            ) from exc
        self._client = client
        self._inbox = inbox
        self._messages = aiter(client.messages)  # Messages, and Received from the lean path

    async def _close(self) -> None:
        client, self._client, self._messages = self._client, None, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):  # a lost broker: the Will
                await client.publish(
                    monitor_status_topic(self.prefix), OFFLINE, qos=1, retain=True, timeout=1
                )
            await _quietly_exit(client)

    # -- reading ------------------------------------------------------------------------

    async def _read(self) -> list[Inbound]:
        assert self._messages is not None and self._client is not None
        client = self._client
        try:
            message = await anext(self._messages)  # waits; notices a lost broker
        except aiomqtt.MqttError as exc:
            raise DriverError(f"lost the broker: {exc}", source=self.url) from exc
        burst = [message]
        if self._inbox is not None:
            burst += self._inbox.take(_BURST)
        items: list[Inbound] = []
        for message in burst:
            payload = message.payload
            if type(payload) is not bytes:
                payload = _payload_bytes(payload)
            items += self.translate(str(message.topic), payload)
        due = [(m.mid, m.qos) for m in burst if m.qos > 0]
        if due:
            ack = self._acknowledger(client, due)
            if items:  # acknowledged once the last input of the burst is durable
                items[-1] = dataclasses.replace(items[-1], on_durable=ack)
            else:
                ack()  # nothing in it to keep (an empty list of events)
        return items

    def _acknowledger(
        self, client: aiomqtt.Client, due: list[tuple[int, int]]
    ) -> Callable[[], None]:
        def ack() -> None:
            if client is not self._client:
                self.stats.count("acks_dropped", len(due))  # that connection is gone:
                return  # the broker redelivers those messages to the next one
            paho = client._client  # see mqtt_wire.manual_acks
            for mid, qos in due:
                paho.ack(mid, qos)
            self.stats.count("acknowledged", len(due))

        return ack

    def translate(self, topic: str, payload: bytes) -> list[Inbound]:
        """One MQTT message -> inputs (public for tests of the topic convention)."""
        source, parts = self._route(topic)
        limit = self.config["max_payload_bytes"]
        if len(payload) > limit:  # refused unread; what the log keeps is bounded
            self.stats.count("oversize")
            digest = hashlib.sha256(payload).hexdigest()
            why = f"a payload of {len(payload)} bytes (sha256 {digest}); at most {limit} are read"
            named = (parts[1][:64], "A") if len(parts) == 3 and parts[0] == "pumps" else None
            return [Inbound(source, why, problem=why, pump=named)]
        if parts[0] == "events" and len(parts) <= 2:
            return self._bedside(source, payload, parts[1] if len(parts) == 2 else None)
        if len(parts) == 3 and parts[0] == "pumps" and parts[2] in ("telemetry", "status"):
            if parts[2] == "telemetry":
                return self._readings(source, payload, (parts[1], "A"))
            return [self._status(source, payload, parts[1])]
        self.stats.count("unknown_topic")
        return [Inbound(source, payload, problem=f"unexpected topic {topic!r}")]

    def _route(self, topic: str) -> tuple[str, tuple[str, ...]]:
        """The source name of a topic and its parts after the prefix, remembered: the same
        pumps' topics come every second."""
        route = self._routes.get(topic)
        if route is None:
            rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
            route = (f"{self.url}#{topic[:_TOPIC_CHARS]}", tuple(rest.split("/")))
            if len(self._routes) >= _ROUTES:
                self._routes.clear()  # bounded: a flood of made-up topics cannot grow it
            self._routes[topic] = route
        return route

    def _readings(self, source: str, payload: bytes, pump: tuple[str, str]) -> list[Inbound]:
        items = _decoded(payload)
        if isinstance(items, str):
            return [Inbound(source, payload, problem=items, pump=pump)]
        out = []
        for obj in items:
            problem = _mismatch(obj, pump)
            if problem is not None:
                channel = obj.get("channel") if isinstance(obj, dict) else None
                named = (pump[0], channel if isinstance(channel, str) else "A")
                out.append(Inbound(source, orjson.dumps(obj), problem=problem, pump=named))
                continue
            if "account" in obj:  # only bedside charting has one, and never from a payload
                obj.pop("account")
                out.append(Inbound(source, orjson.dumps(obj), obj))
                continue
            out.append(Inbound(source, payload if len(items) == 1 else orjson.dumps(obj), obj))
        return out

    def _bedside(self, source: str, payload: bytes, account: str | None) -> list[Inbound]:
        """Bedside documentation on ``events`` (``account`` None) or ``events/<account>``:
        each event stamped with its account, or refused with the reason."""
        items = _decoded(payload)
        if isinstance(items, str):
            return [Inbound(source, payload, problem=items)]
        out = []
        for obj in items:
            refusal = self._refusal(obj, account)
            if refusal is not None:
                self.stats.count("refused")
                out.append(Inbound(source, orjson.dumps(obj), problem=refusal))
                continue
            assert isinstance(obj, dict)  # _refusal refuses anything else
            if account is not None:
                obj["account"] = account
            out.append(Inbound(source, orjson.dumps(obj), obj))
        return out

    def _refusal(self, obj: object, account: str | None) -> str | None:
        """Why this bedside event may not count, coming from ``account``; None if it may."""
        if not isinstance(obj, dict):
            return "an event (a JSON object) is expected"
        kind = obj.get("type")
        if kind in ALARM_ACTIONS:
            return (
                f"an action on an alarm ({kind}) on an events topic: actions come from central "
                f"stations as commands on {self.prefix}/commands; never applied from here"
            )
        if kind not in BEDSIDE_TYPES:
            return (
                f"a {kind!r} event on an events topic: only bedside documentation is taken "
                f"there ({', '.join(BEDSIDE_TYPES)}); readings and presence come on "
                f"{self.prefix}/pumps/<pump>/..."
            )
        claimed = obj.get("account")
        if claimed is not None and claimed != account:
            return (
                f"the event names the account {claimed!r}: the account is the broker log-in "
                "it came from (the topic), never the sender's to write"
            )
        if account is None:
            if kind not in CLEARING:
                return None
            return (
                f"a {kind} can end an alarm, so it counts only from a charting account "
                f"(on {self.prefix}/events/<account>); on {self.prefix}/events nobody answers "
                "for it"
            )
        charting = self.charting.get(account)
        if charting is None:
            return (
                f"{account!r} is not a charting account of this site: the site config's "
                "[[broker.charting]] lists who may chart"
            )
        if kind not in charting.events:
            return f"{account!r} may not chart a {kind} (only {', '.join(sorted(charting.events))})"
        return None

    def _status(self, source: str, payload: bytes, pump: str) -> Inbound:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        online = obj.get("online") if isinstance(obj, dict) else None
        if type(online) is not bool:
            return Inbound(
                source, payload, problem='a presence payload {"online": true|false} is expected'
            )
        t = obj.get("t") if isinstance(obj, dict) and isinstance(obj.get("t"), str) else None
        event = {
            "t": t or format_ts(self.clock.now_us()),
            "type": "pump_status",
            "pump": pump,
            "online": online,
        }
        return Inbound(source, orjson.dumps(event), event)


def _decoded(payload: bytes) -> list[Any] | str:
    """The events of a payload (one, or a JSON list of them), or why there are none."""
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    return decoded if isinstance(decoded, list) else [decoded]


def _mismatch(obj: object, pump: tuple[str, str]) -> str | None:
    if not isinstance(obj, dict):
        return "an event (a JSON object) is expected"
    if obj.get("type") != "reading":
        return f"a reading is expected on a telemetry topic, not {obj.get('type')!r}"
    if obj.get("pump") != pump[0]:
        return f"the topic names pump {pump[0]!r} but the reading names {obj.get('pump')!r}"
    return None


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return b"" if payload is None else str(payload).encode("utf-8")


async def _quietly_exit(client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError, OSError):
        await client.__aexit__(None, None, None)
