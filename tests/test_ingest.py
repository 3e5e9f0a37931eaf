"""The ingest path at the ceiling: the MQTT driver's lean receive path reads a PUBLISH as
paho does and leaves anything unusual to paho; a burst's readings are acknowledged to the
broker only once the log holds them, each once, in the order they came; drivers give
their inputs a read at a time (``bursts``) and one by one (``inputs``) alike."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import paho.mqtt.client as paho_client
import pytest
from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.drivers import mqtt_wire
from calguard.drivers.base import Inbound
from calguard.drivers.mqtt_wire import Received, decode
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.errors import EventError
from calguard.monitor.events import parse_event
from calguard.monitor.timeutil import format_ts, parse_ts
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode  # noqa: F401  # paho's own decode needs it loaded

from tests.brokers import Broker
from tests.live import LiveBay
from tests.test_mqtt import CHARTING, PREFIX, bedside, mqtt_driver, publish, reading

V5 = paho_client.MQTTv5


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int, props: bytes = b"\0") -> bytes:
    """A PUBLISH after its fixed header, as it comes off the wire (MQTT 5)."""
    return (
        struct.pack("!H", len(topic))
        + topic
        + (struct.pack("!H", mid) if qos else b"")
        + props
        + payload
    )


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\0" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(1, 65535),
    dup=st.booleans(),
    retain=st.booleans(),
)
def test_the_lean_path_reads_a_publish_as_paho_does(
    topic: str, payload: bytes, qos: int, mid: int, dup: bool, retain: bool
) -> None:
    header = 0x30 | (dup << 3) | (qos << 1) | retain
    packet = bytearray(publish_packet(topic.encode(), payload, qos, mid))  # paho reads into one
    theirs = _packet.decode_publish(header, packet, V5)
    assert decode(header, packet) == Received(
        theirs.topic.decode(), bytes(theirs.payload), theirs.qos, theirs.mid
    )


def test_anything_unusual_is_left_to_paho() -> None:
    """Properties, QoS 2, a topic alias (empty topic), a topic that is not UTF-8, a packet
    cut short: paho's own path, which knows them all."""
    with_props = b"\x02\x01\x01"  # a payload format indicator
    assert decode(0x32, publish_packet(b"a/b", b"{}", 1, 7, with_props)) is None
    assert decode(0x34, publish_packet(b"a/b", b"{}", 2, 7)) is None
    assert decode(0x32, publish_packet(b"", b"{}", 1, 7, b"\x03\x23\x00\x01")) is None
    assert decode(0x32, publish_packet(b"\xff\xfe", b"{}", 1, 7)) is None
    assert decode(0x32, publish_packet(b"a/b", b"", 1, 7)[:5]) is None
    assert decode(0x32, b"\x00") is None
    assert decode(0x32, publish_packet(b"a/b", b"{}", 1, 7)) == Received("a/b", b"{}", 1, 7)


async def test_a_burst_is_acknowledged_only_once_the_log_holds_it_in_order(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady readings (no alert: nothing that writes the log at once) arrive in bursts on
    the lean path: none is acknowledged while the log has not written it; once it has,
    each message exactly once, in the order the broker sent them."""
    acks: list[int] = []
    lean: list[Received] = []
    real_ack, real_decode = paho_client.Client.ack, mqtt_wire.decode

    def ack(self: paho_client.Client, mid: int, qos: int) -> Any:
        acks.append(mid)
        return real_ack(self, mid, qos)

    def decoded(header: int, packet: bytes | bytearray) -> Received | None:
        got = real_decode(header, packet)
        if got is not None:
            lean.append(got)
        return got

    monkeypatch.setattr(paho_client.Client, "ack", ack)
    monkeypatch.setattr(mqtt_wire, "decode", decoded)
    driver = mqtt_driver(broker, client_id="ingest-order")
    telemetry = f"{PREFIX}/pumps/P1/telemetry"
    n = 40
    # a log that writes when asked or when an alert comes, not on a timer
    async with AlertLog(f"sqlite:///{tmp_path}/ingest.sqlite3", flush_interval=3600) as log:
        await log.start_session("live", "ingest", load_library())
        async with LiveBay([driver], log=log) as bay:
            await bay.until(lambda: driver.is_open)  # subscribed
            await publish(broker, CHARTING, bedside())
            await publish(broker, "pumps/P1/telemetry", reading(seq=1))
            await bay.until(lambda: bay.counts["accepted"] >= len(bedside()) + 1)
            await log.flush()
            await bay.until(lambda: len(acks) == 2)
            acks.clear()
            lean.clear()
            async with aiomqtt.Client(broker.host, broker.port, identifier="ingest-pub") as pub:
                await asyncio.gather(
                    *(
                        pub.publish(telemetry, orjson.dumps(reading(seq=seq)), qos=1)
                        for seq in range(2, n + 2)
                    )
                )
            await bay.until(lambda: bay.counts["accepted"] >= len(bedside()) + 1 + n)
            await asyncio.sleep(0.5)  # time enough for an early acknowledgement to show
            assert acks == []  # processed, not durable: not acknowledged
            await log.flush()
            await bay.until(lambda: len(acks) == n)
    assert len(lean) == n  # every message took the lean path
    assert acks == [m.mid for m in lean]  # each once, in the order they came
    assert [orjson.loads(m.payload)["seq"] for m in lean] == list(range(2, n + 2))


async def test_a_publish_with_properties_takes_paho_s_path_and_counts_the_same(
    broker: Broker,
) -> None:
    """A sender that adds MQTT 5 properties (a content type, user properties) is read by
    paho's own decoding: its reading is applied and acknowledged like any other."""
    driver = mqtt_driver(broker, client_id="ingest-props")
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = ("gateway", "bay-3")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)  # subscribed
        await publish(broker, CHARTING, bedside())
        await bay.until(lambda: bay.counts["accepted"] >= len(bedside()))
        async with aiomqtt.Client(
            broker.host, broker.port, identifier="ingest-v5", protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            payload = orjson.dumps(reading(seq=1, rate="180 ml/h"))
            await client.publish(f"{PREFIX}/pumps/P1/telemetry", payload, qos=1, properties=props)
        await bay.until(lambda: bay.of("rate-volume", "raised"))
        await bay.until(lambda: driver.stats.counters.get("acknowledged", 0) >= 2)
    assert bay.counts["rejected"] == 0


async def test_bursts_and_inputs_give_the_same_inputs_and_close_the_driver() -> None:
    url = "virtual://ingest-bursts"
    VirtualDriver.forget(url)
    for n in range(3):
        VirtualDriver.put(url, {"n": n})
    driver = VirtualDriver(url)
    bursts = driver.bursts()
    got = [await anext(bursts) for _ in range(3)]
    assert [[i.obj for i in burst] for burst in got] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
    assert driver.is_open
    await bursts.aclose()
    assert not driver.is_open and driver.state == "stopped"
    VirtualDriver.put(url, {"n": 3})
    driver = VirtualDriver(url)
    inputs = driver.inputs()
    item = await anext(inputs)
    assert isinstance(item, Inbound) and item.obj == {"n": 3}
    await inputs.aclose()  # closing the one-by-one view closes the wire too
    assert not driver.is_open and driver.state == "stopped"
    VirtualDriver.forget(url)


def _reading_at(t: str) -> dict[str, Any]:
    return {"t": t, "type": "reading", "pump": "P1", "rate": "1 ml/h"}


@given(
    second=st.integers(-2_208_988_800, 32_503_679_999),
    micro=st.integers(0, 999_999),
    other=st.integers(0, 999_999),
)
def test_a_time_in_a_second_already_seen_reads_as_a_full_parse_does(
    second: int, micro: int, other: int
) -> None:
    """Readings' times are read from the whole second's text once it has been seen: the
    same microseconds as the full parse."""
    first = format_ts(second * 1_000_000 + max(micro, 1))[:19] + f".{micro:06d}Z"
    then = first[:20] + f"{other:06d}Z"
    assert parse_event(_reading_at(first)).t == parse_ts(first)
    assert parse_event(_reading_at(then)).t == parse_ts(then)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29T14:00:00.12345xZ",  # not a digit
        "2026-11-29T14:00:00.12345\u0663Z",  # an Arabic-Indic digit: ASCII digits only
        "2026-11-29T14:00:00.+12345Z",
        "2026-11-29T14:00:00.123456z0",
    ],
)
def test_a_bad_time_in_a_second_already_seen_is_still_refused(text: str) -> None:
    parse_event(_reading_at("2026-11-29T14:00:00.000001Z"))  # that second is known
    with pytest.raises(EventError):
        parse_event(_reading_at(text.encode().decode("unicode_escape")))


def test_the_receive_buffer_serves_small_reads_and_blocks_only_when_empty() -> None:
    chunks: list[bytes | None] = [b"\x30\x05hello", None, b"xy"]  # None: nothing waiting
    calls: list[int] = []

    def recv(size: int) -> bytes:
        calls.append(size)
        chunk = chunks.pop(0)
        if chunk is None:
            raise BlockingIOError
        return chunk

    buffer = mqtt_wire._RecvBuffer(recv)
    assert [buffer.recv(1), buffer.recv(1), buffer.recv(5)] == [b"\x30", b"\x05", b"hello"]
    assert len(calls) == 1 and buffer.empty  # one system call for three reads
    with pytest.raises(BlockingIOError):
        buffer.recv(1)
    assert buffer.recv(2) == b"xy"  # no more than asked, none kept back


async def test_a_message_of_many_reads_arrives_whole_and_at_once(broker: Broker) -> None:
    """8 MiB: many reads for one packet, through the buffer, and what follows still comes."""
    driver = mqtt_driver(broker, client_id="ingest-big", max_payload_bytes=16 << 20)
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)  # subscribed
        big = b"[" + b" " * (8 << 20) + b"]"  # an empty list of readings: nothing to keep
        await publish(broker, "pumps/P1/telemetry", big)
        await bay.until(lambda: driver.stats.counters.get("acknowledged", 0) >= 1, within=10)
        await publish(broker, "pumps/P1/telemetry", reading(seq=1))
        await bay.until(lambda: bay.counts["rejected"] + bay.counts["accepted"] >= 1)


def test_the_read_hook_never_returns_with_bytes_left_in_the_buffer() -> None:
    """paho says "again" midway through a large packet (after 100 reads) with bytes still
    waiting; those bytes are in the buffer now, where the event loop cannot see them: the
    hook reads on until the buffer is empty."""
    waiting: list[bytes] = [b"abcdef"]

    def recv(size: int) -> bytes:
        if not waiting:
            raise BlockingIOError
        return waiting.pop()

    buffer = mqtt_wire._RecvBuffer(recv)

    class Paho:
        _sock = object()
        reads = 0

        def _packet_read(self) -> MQTTErrorCode:
            self.reads += 1
            try:
                buffer.recv(1)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            return MQTTErrorCode.MQTT_ERR_AGAIN  # as paho after its 100th read of a packet

    paho = Paho()
    assert mqtt_wire._reader(paho, buffer)() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert buffer.empty and paho.reads == 6


def test_a_paho_without_the_hooks_keeps_its_own_receive_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Client:
        _client = object()  # none of paho's private hooks

    assert mqtt_wire.lean_receive(Client(), asyncio.Queue()) is False  # type: ignore[arg-type]
    assert "lean receive path is off" in caplog.text
