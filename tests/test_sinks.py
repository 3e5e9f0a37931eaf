"""Notification sinks with real peers: the MQTT sink and commands through this test's own
Mosquitto, a webhook receiver on loopback that fails and then recovers, PCD-04 over a real
MLLP socket; bounded buffers, refusals logged as undelivered, and one failing sink never
holding up another."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from calguard.alerts.signed_state import load_public_key, public_key_file, unseal
from calguard.alerts.sinks import Delivery, open_sink
from calguard.alerts.sinks.base import Sink
from calguard.drivers.virtual import VirtualDriver
from hl7.mllp import start_hl7_server

from tests.brokers import Broker, free_port
from tests.live import LiveBay, admission, now_ts
from tests.people import add_staff, guard, keyring, token

CA = "Calcium gluconate 10%"
_urls = itertools.count()


def bedside_url() -> str:
    return f"virtual://sinks-{next(_urls)}"


def admit(url: str) -> None:
    for event in admission(now_ts()):
        VirtualDriver.put(url, event)


def reading(url: str, rate: str) -> None:
    VirtualDriver.put(
        url, {"t": now_ts(), "type": "reading", "pump": "P1", "rate": rate, "drug": CA}
    )


def signed_sink(url: str, tmp_path: Path, **options: Any) -> Sink:
    """The MQTT sink, signing with a key of this test's own."""
    return open_sink(url, signing_key=str(tmp_path / "keys" / "state-ed25519.key"), **options)


def opened(tmp_path: Path, message: aiomqtt.Message) -> Any:
    """A retained state, checked with the sink's public key (the monitor's signature)."""
    key = load_public_key(public_key_file(tmp_path / "keys" / "state-ed25519.key"))
    assert isinstance(message.payload, bytes)
    return unseal(key, str(message.topic), message.payload)[1]


class Lost:
    """Collects what sinks give up on (the monitor sends it to the audit chain)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __call__(self, sink: Sink, item: Delivery, reason: str) -> None:
        self.items.append((item.tr.alert, reason))


# -- MQTT: alarm lines, retained active state per bed, commands ------------------------------


async def test_a_central_station_sees_active_alarms_at_once_and_acknowledges(
    broker: Broker, tmp_path: Path
) -> None:
    prefix = "calguard/sinktest"
    url = bedside_url()
    sink = signed_sink(
        f"mqtt://127.0.0.1:{broker.port}/{prefix}", tmp_path, client_id="alarms-under-test"
    )
    db, keys = f"sqlite:///{tmp_path / 'log.sqlite3'}", keyring(tmp_path)
    await add_staff(db)
    async with LiveBay([VirtualDriver(url)], sinks=[sink], guard=guard(db, keys)) as bay:
        admit(url)
        reading(url, "180 ml/h")  # rate-volume, rate-mass (high), concentration (medium) ...
        await bay.until(
            lambda: bay.of("rate-volume", "raised") and sink.pending == 0 and sink.connected
        )
        alert = bay.of("rate-volume")[0]["alert"]
        # a central station connecting now sees bed B1's active alarms at once (retained)
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier="central-station"
        ) as station:
            await station.subscribe(f"{prefix}/alerts/active/+", qos=1)
            await station.subscribe(f"{prefix}/commands/results", qos=1)
            await station.subscribe(f"{prefix}/alerts", qos=1)
            messages = aiter(station.messages)
            first = await asyncio.wait_for(anext(messages), 10)
            assert str(first.topic) == f"{prefix}/alerts/active/B1" and first.retain
            active = opened(tmp_path, first)
            assert {a["rule"] for a in active} >= {"rate-volume", "rate-mass"}
            assert all(a["state"] == "active" and a["audience"] == "bedside" for a in active)
            assert {a["category"] for a in active} == {"clinical"}
            # ... and acknowledges one of them
            proof = token(keys, "charge1")  # calguard login's
            command = {"id": "c-1", "action": "ack", "alert": alert, "token": proof}
            await station.publish(f"{prefix}/commands", orjson.dumps(command), qos=1)
            bad = {"id": "c-2", "action": "ack", "alert": "a-999999", "token": proof}
            await station.publish(f"{prefix}/commands", orjson.dumps(bad), qos=1)
            seen: dict[str, Any] = {}
            async with asyncio.timeout(10):
                while not ("c-1" in seen and "c-2" in seen and "acked" in seen and "state" in seen):
                    message = await anext(messages)
                    topic = str(message.topic)
                    if "/alerts/active/" in topic:
                        body = opened(tmp_path, message)
                    else:
                        body = orjson.loads(message.payload)  # type: ignore[arg-type]
                    if topic.endswith("/commands/results"):
                        seen[body["id"]] = body
                    elif topic == f"{prefix}/alerts" and body["state"] == "acknowledged":
                        seen["acked"] = body
                    elif topic.endswith("/active/B1") and any(
                        a["state"] == "acknowledged" for a in body
                    ):
                        seen["state"] = body
    assert seen["c-1"] == {"id": "c-1", "ok": True}
    assert seen["c-2"]["ok"] is False and "active or latched" in seen["c-2"]["reason"]
    assert seen["acked"]["alert"] == alert and seen["acked"]["by"] == "charge1"
    acked = next(a for a in seen["state"] if a["alert"] == alert)
    assert acked["acknowledged_by"] == "charge1"
    # the command went through the pipeline like any input: accepted, and the refused one too
    actions = [r for r in bay.records if r.event_type == "ack"]
    assert [r.status for r in actions] == ["accepted", "rejected"]


async def test_on_connect_the_retained_bed_states_are_put_right(
    broker: Broker, tmp_path: Path
) -> None:
    """A retained state left by an earlier run (unsigned here) for a bed that has no alarm
    now is replaced by ``[]``, signed, when the sink connects; a bed with active alarms
    gets its state at once."""
    prefix = "calguard/reconcile"
    ghost = [{"alert": "a-000042", "rule": "occlusion", "state": "active"}]
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="earlier-run") as earlier:
        await earlier.publish(f"{prefix}/alerts/active/B9", orjson.dumps(ghost), qos=1, retain=True)
    url = bedside_url()
    sink = signed_sink(
        f"mqtt://127.0.0.1:{broker.port}/{prefix}", tmp_path, client_id="alarms-reconcile"
    )
    async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
        admit(url)
        reading(url, "180 ml/h")
        await bay.until(lambda: bay.of("rate-volume", "raised") and sink.pending == 0)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="station-after") as station:
            await station.subscribe(f"{prefix}/alerts/active/+", qos=1)
            retained: dict[str, Any] = {}
            async with asyncio.timeout(10):
                async for message in station.messages:
                    retained[str(message.topic).rsplit("/", 1)[1]] = opened(tmp_path, message)
                    if retained.get("B9") == [] and "B1" in retained:
                        break
    assert retained["B9"] == []
    assert any(a["rule"] == "rate-volume" for a in retained["B1"])


async def test_the_mqtt_sink_buffers_while_the_broker_is_down(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "mosquitto").start()
    prefix = "calguard/outage"
    sink = signed_sink(
        f"mqtt://127.0.0.1:{broker.port}/{prefix}", tmp_path, client_id="alarms-outage"
    )
    url = bedside_url()
    try:
        async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
            admit(url)
            await bay.until(lambda: sink.connected)
            broker.stop()
            await bay.until(lambda: not sink.connected)
            reading(url, "180 ml/h")
            await bay.until(lambda: bay.of("rate-volume", "raised"))
            assert sink.pending > 0  # kept, not lost
            broker.start()
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, identifier="late-station"
            ) as station:
                await station.subscribe(f"{prefix}/alerts/active/B1", qos=1)
                await bay.until(lambda: sink.pending == 0, within=30)
                message = await asyncio.wait_for(anext(aiter(station.messages)), 10)
                assert any(a["rule"] == "rate-volume" for a in opened(tmp_path, message))
        assert sink.stats.undelivered == 0 and sink.stats.retries >= 1
    finally:
        broker.stop()


# -- webhook -------------------------------------------------------------------------------


class Receiver:
    """An HTTP receiver on loopback that answers ``fail_first`` requests with 503 (or with
    ``status``), then 200; it keeps the bodies it accepted."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.fail_first, self.status = fail_first, status
        self.accepted: list[dict[str, Any]] = []
        self.requests = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                self.requests += 1
                if self.requests <= self.fail_first:
                    status = self.status
                else:
                    status = 200
                    self.accepted.append(json.loads(body))
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_webhook_that_fails_then_recovers_loses_nothing_and_keeps_order() -> None:
    url = bedside_url()
    async with Receiver(fail_first=3) as receiver:
        sink = open_sink(f"http://127.0.0.1:{receiver.port}/alarms")
        lost = Lost()
        async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
            sink.on_undelivered = lost
            sink.backoff.initial = sink.backoff._next = 0.05  # a test need not wait seconds
            admit(url)
            reading(url, "180 ml/h")
            reading(url, "1 ml/h")
            await bay.until(lambda: bay.of("rate-volume", "cleared"))
            await bay.until(lambda: len(receiver.accepted) == len(bay.alerts), within=20)
    assert [a["alert"] + a["state"] for a in receiver.accepted] == [
        a["alert"] + a["state"] for a in bay.alerts
    ]
    assert receiver.requests == len(bay.alerts) + 3 and sink.stats.retries == 3
    assert lost.items == []


async def test_a_webhook_refusal_is_logged_as_undelivered_and_the_next_goes_on() -> None:
    url = bedside_url()
    async with Receiver(fail_first=1, status=400) as receiver:
        sink = open_sink(f"http://127.0.0.1:{receiver.port}/alarms")
        lost = Lost()
        sink.on_undelivered = lost
        async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
            sink.on_undelivered = lost  # the monitor set its own; the test listens instead
            admit(url)
            reading(url, "180 ml/h")
            await bay.until(
                lambda: (
                    len(bay.alerts) >= 4
                    and len(receiver.accepted) + len(lost.items) == len(bay.alerts)
                )
            )
    assert len(lost.items) == 1 and "refused: the receiver answered 400" in lost.items[0][1]
    assert len(receiver.accepted) == len(bay.alerts) - 1


def test_plain_http_is_only_for_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        open_sink("http://alarms.example.org/calguard")


# -- buffers and independence ----------------------------------------------------------------


async def test_a_full_buffer_gives_up_the_oldest_and_says_so(tmp_path: Path) -> None:
    sink = open_sink(f"http://127.0.0.1:{free_port()}/nobody", capacity=2)  # nobody listens
    lost = Lost()
    url = bedside_url()
    async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
        sink.on_undelivered = lost
        admit(url)
        reading(url, "180 ml/h")  # four alarms raised at once
        await bay.until(lambda: len(bay.alerts) >= 4 and sink.stats.retries >= 1)
        raised = [a["alert"] for a in bay.alerts]
    oldest = raised[: len(raised) - 2]
    assert [alert for alert, _ in lost.items[: len(oldest)]] == oldest
    assert all("buffer of 2 was full" in why for _, why in lost.items[: len(oldest)])
    # at the stop, what was still waiting is given up and said so too
    assert [why for _, why in lost.items[len(oldest) :]] == [
        "not delivered before the monitor stopped"
    ] * 2


async def test_one_dead_sink_does_not_hold_up_another(tmp_path: Path) -> None:
    dead = open_sink(f"http://127.0.0.1:{free_port()}/nobody")
    journal = tmp_path / "alarms.jsonl"
    alive = open_sink(f"jsonlog://{journal}")
    url = bedside_url()
    async with LiveBay([VirtualDriver(url)], sinks=[dead, alive]) as bay:
        admit(url)
        reading(url, "180 ml/h")
        await bay.until(
            lambda: bay.alerts and alive.pending == 0 and alive.stats.delivered == len(bay.alerts)
        )
        assert dead.pending == len(bay.alerts) and dead.stats.delivered == 0
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [a["alert"] for a in lines] == [a["alert"] for a in bay.alerts]


async def test_undelivered_lines_go_to_the_audit_chain(tmp_path: Path) -> None:
    from calguard.alerts.audit import verify_chain
    from calguard.alerts.log import AlertLog, normalise_db_url
    from calguard.config import load_library

    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    sink = open_sink(f"http://127.0.0.1:{free_port()}/nobody", capacity=1)
    url = bedside_url()
    async with AlertLog(db) as alert_log:
        await alert_log.start_session("live", "test", load_library())
        async with LiveBay([VirtualDriver(url)], sinks=[sink], log=alert_log) as bay:
            admit(url)
            reading(url, "180 ml/h")
            await bay.until(lambda: sink.stats.undelivered >= 1)
    from calguard.alerts.schema import audit_chain
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(normalise_db_url(db))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_chain.c.kind, audit_chain.c.payload))).all()
    await engine.dispose()
    undelivered = [payload for kind, payload in rows if kind == "undelivered"]
    assert len(undelivered) == len(bay.alerts)  # 1 kept at a time: every one given up, somehow
    assert (
        undelivered[0].startswith("http://127.0.0.1:") and "buffer of 1 was full" in undelivered[0]
    )
    assert (await verify_chain(normalise_db_url(db))).ok


# -- HL7 PCD-04 over MLLP ------------------------------------------------------------------------


class AlertManager:
    """An ACM alert manager on a real MLLP socket: keeps each ORU^R40, answers AA (or AE)."""

    def __init__(self, answer: str = "AA") -> None:
        self.answer = answer
        self.messages: list[str] = []
        self.port = free_port()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AlertManager]:
        server = await start_hl7_server(self._client, "127.0.0.1", self.port, encoding="utf-8")
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                block = (await reader.readblock()).decode("utf-8")
                self.messages.append(block)
                control = block.split("\r")[0].split("|")[9]
                writer.writeblock(
                    f"MSH|^~\\&|ACM|X|CALGUARD|NICU|20261121||ACK|A1|P|2.6\rMSA|{self.answer}|{control}|no\r".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def segments(message: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for segment in filter(None, message.split("\r")):
        fields = segment.split("|")
        out.setdefault(fields[0], []).append(fields)
    return out


async def test_pcd04_start_and_end_share_one_alert_id_over_a_real_mllp_socket() -> None:
    url = bedside_url()
    async with AlertManager().running() as acm:
        sink = open_sink(f"mllp://127.0.0.1:{acm.port}", facility="NICU-N")
        async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
            admit(url)
            reading(url, "180 ml/h")
            VirtualDriver.put(
                url,
                {
                    "t": now_ts(),
                    "type": "reading",
                    "pump": "P1",
                    "rate": "180 ml/h",
                    "drug": CA,
                    "status": "alarm",
                    "alarm": "occlusion",
                },
            )
            await bay.until(lambda: bay.of("occlusion", "raised"))
            occlusion = bay.of("occlusion")[0]["alert"]
            reading(url, "1 ml/h")
            await bay.until(
                lambda: (
                    bay.of("occlusion", "cleared")
                    and sink.pending == 0
                    and sink.stats.delivered == len(bay.alerts)
                )
            )
    mine = [segments(m) for m in acm.messages if f"|{occlusion}^CALGUARD|" in m]
    assert len(mine) == 2
    for message in mine:
        assert message["MSH"][0][8] == "ORU^R40^ORU_R40"
        assert message["OBR"][0][4] == "196616^MDC_EVT_ALARM^MDC"
        assert message["OBX"][0][5] == "196940^MDC_EVT_FLUID_LINE_OCCL^MDC"
        assert message["PV1"][0][3] == "NICU-N^^B1"
    obx = [{row[3].split("^")[0]: row[5] for row in m["OBX"]} for m in mine]
    assert (obx[0]["68481"], obx[0]["68482"]) == ("start", "active")
    assert (obx[1]["68481"], obx[1]["68482"]) == ("end", "inactive")
    assert obx[0]["68484"] == "PM" and obx[0]["68485"] == "SP"


async def test_pcd04_an_ae_answer_is_logged_undelivered() -> None:
    url = bedside_url()
    lost = Lost()
    async with AlertManager(answer="AE").running() as acm:
        sink = open_sink(f"mllp://127.0.0.1:{acm.port}")
        async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
            sink.on_undelivered = lost
            admit(url)
            reading(url, "180 ml/h")
            await bay.until(lambda: bay.alerts and len(lost.items) == len(bay.alerts))
    assert all(why.startswith("refused: AE") for _, why in lost.items)


async def test_the_terminal_sink_writes_one_readable_line_per_transition() -> None:
    import io as _io

    from calguard.alerts.sinks.simple import TerminalSink

    out = _io.StringIO()
    sink = TerminalSink("terminal://", out=out)
    url = bedside_url()
    async with LiveBay([VirtualDriver(url)], sinks=[sink]) as bay:
        admit(url)
        reading(url, "180 ml/h")
        await bay.until(lambda: len(bay.alerts) >= 4 and sink.stats.delivered == len(bay.alerts))
    lines = out.getvalue().splitlines()
    assert len(lines) == len(bay.alerts)
    assert "HIGH   raised       rate-volume" in lines[0] and "B1 L1 P1/A" in lines[0]
    assert "\x1b[" not in out.getvalue()  # no colour codes when the output is not a terminal
