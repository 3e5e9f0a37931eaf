"""Where the MQTT driver reaches under aiomqtt into paho-mqtt, and why: every such reach
is in this module, each checked when the client is made, each with the library's own path
to fall back on.

- **Manual acknowledgements.** A QoS 1 message is acknowledged once it is in the durable
  log, not when it arrives. aiomqtt 2.5 has no public switch for it; paho-mqtt (>= 2.0),
  which it wraps, has ``manual_ack_set`` and ``ack(mid, qos)``.
- **A lean receive path.** paho decodes every PUBLISH into an ``MQTTMessage`` (with a
  ``threading.Condition``), builds a full MQTT 5 ``Properties`` object (two dictionaries
  of every property name) even when the packet has none, matches per-topic callbacks the
  monitor never registers, and aiomqtt then wraps it again in a ``Message`` with a
  validated ``Topic``: more than the rules cost. A PUBLISH of QoS 0 or
  1 with no properties and a UTF-8 topic - every message a pump or a bedside client
  sends - is decoded here in a few slices and put straight in aiomqtt's incoming queue
  as a ``Received``. Anything else (properties, QoS 2, an empty topic, no manual acks)
  goes through paho's own ``_handle_publish`` unchanged.
- **Reading what has arrived.** paho reads one packet each time the socket is readable
  (a turn of the event loop per message), with a system call for its first byte, one per
  byte of its length and one for the rest. The read hook here takes up to ``_READ_AHEAD``
  packets while they are waiting, as paho does itself when it has messages in flight, and
  ``recv`` takes what the socket holds (up to ``_RECV_BYTES``) at once and serves paho's
  small reads from it. The hook never returns with bytes left in that buffer, so the
  event loop's "readable" still tells the whole truth.

Acknowledgement semantics, reconnects, keepalive and the detection of a lost broker are
paho's and aiomqtt's, untouched. Measured (``benchmarks/bench_clients.py``): draining a
backlog costs about an eighth of the CPU a message that the stock path costs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import aiomqtt
from calguard.monitor.errors import DriverError
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["Received", "lean_receive", "manual_acks"]

log = logging.getLogger(__name__)

_READ_AHEAD = 64  # packets read in one go when they are already waiting
_RECV_BYTES = 65536  # what one system call may take from the socket


class Received(NamedTuple):
    """A PUBLISH as the lean path gives it: what the driver reads of an aiomqtt Message."""

    topic: str
    payload: bytes
    qos: int
    mid: int


def manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1 messages ourselves (``client._client.ack``), once durable."""
    paho = client._client
    if not hasattr(paho, "manual_ack_set"):
        raise DriverError("paho-mqtt >= 2.0 is needed to acknowledge messages once durable")
    paho.manual_ack_set(True)


def lean_receive(client: aiomqtt.Client, inbox: asyncio.Queue[Any]) -> bool:
    """Install the lean receive path on ``client`` (made, not yet connected), delivering
    into ``inbox`` (its incoming queue). False, leaving paho's own path, if this paho is
    not the one it was written against."""
    paho: Any = client._client  # untyped here: its private hooks are replaced
    if not all(
        hasattr(paho, name)
        for name in (
            "_handle_publish",
            "_in_packet",
            "_manual_ack",
            "_packet_read",
            "_sock",
            "_sock_recv",
            "_loop_rc_handle",
        )
    ):
        log.warning("paho-mqtt changed: the lean receive path is off")
        return False
    paho._handle_publish = _publish_handler(paho, paho._handle_publish, inbox)
    buffer = _RecvBuffer(paho._sock_recv)
    paho._sock_recv = buffer.recv
    paho.loop_read = _reader(paho, buffer)
    return True


def _publish_handler(
    paho: Any, original: Callable[[], MQTTErrorCode], inbox: asyncio.Queue[Any]
) -> Callable[[], MQTTErrorCode]:
    def handle_publish() -> MQTTErrorCode:
        header: int = paho._in_packet["command"]
        received = decode(header, paho._in_packet["packet"])
        if received is None or not paho._manual_ack:
            return original()  # paho's own path: properties, QoS 2, an unusual topic
        try:
            inbox.put_nowait(received)
        except asyncio.QueueFull:  # as aiomqtt does (the driver's queue is unbounded)
            log.warning("Message queue is full. Discarding message.")
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # QoS 1: acknowledged later, once durable

    return handle_publish


def decode(header: int, packet: bytes | bytearray) -> Received | None:
    """A PUBLISH (fixed-header byte, then the rest of the packet) of QoS 0 or 1 with no
    MQTT 5 properties, or None for anything else (left to paho)."""
    qos = (header & 0x06) >> 1
    if qos > 1 or len(packet) < 3:
        return None
    end = 2 + int.from_bytes(packet[:2], "big")
    props = end + 2 if qos else end
    if end == 2 or len(packet) <= props or packet[props] != 0:
        return None  # an empty topic (an alias), a short packet, or properties
    try:
        topic = packet[2:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = int.from_bytes(packet[end:props], "big") if qos else 0
    return Received(topic, bytes(packet[props + 1 :]), qos, mid)


class _RecvBuffer:
    """paho's ``_sock_recv`` with one system call for many of its small reads. Bytes are
    served only from what the socket gave; a ``BlockingIOError`` (nothing waiting) comes
    only from the socket itself, so only when this buffer is empty."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._data = b""
        self._at = 0

    @property
    def empty(self) -> bool:
        return self._at >= len(self._data)

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._data):
            data = self._recv(max(size, _RECV_BYTES))  # may raise: nothing is waiting
            if len(data) <= size:
                return data  # b"": the connection closed (paho's to say so)
            self._data, self._at = data, 0
        at = self._at
        self._at = at + size
        return self._data[at : at + size]


def _reader(paho: Any, buffer: _RecvBuffer) -> Callable[..., MQTTErrorCode]:
    """paho's ``loop_read`` that goes on while packets are waiting: at least until the
    buffer is empty, at most ``_READ_AHEAD`` packets beyond that."""

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        count = 0
        while True:
            if paho._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc: MQTTErrorCode = paho._packet_read()
            if rc > 0:
                return paho._loop_rc_handle(rc)  # type: ignore[no-any-return]
            count += 1
            # paho also says "again" midway through a large packet (after 100 reads): go
            # on while the buffer holds bytes, whatever the count
            if buffer.empty and (
                rc == MQTTErrorCode.MQTT_ERR_AGAIN or count >= max(max_packets, _READ_AHEAD)
            ):
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    return loop_read
