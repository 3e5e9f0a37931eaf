"""HL7 v2 IHE PCD-01 over a real MLLP socket: the framework's example, AA and AE."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from calguard.drivers.clock import SystemClock
from calguard.drivers.hl7 import HL7Problem, MllpDriver, hl7_time, translate_pcd01
from calguard.simulators.hl7_gateway import Hl7Gateway, pcd01_message
from calguard.simulators.scenario import load_scenario
from hl7.mllp import open_hl7_connection

from tests.live import LiveBay

EXAMPLE = (Path(__file__).parent / "data" / "pcd01-example.hl7").read_bytes()


def test_the_frameworks_example_parses_into_the_right_reading() -> None:
    message = translate_pcd01(EXAMPLE.decode())
    assert message.control_id == "1" and message.bed == "B3" and message.problems == []
    assert message.readings == [
        {
            "t": "2026-11-21T08:03:10+00:00",
            "type": "reading",
            "pump": "0012210000000001",
            "channel": "A",
            "status": "infusing",
            "rate": "2.5 ml/h",
            "volume_infused": "3.1 ml",
            "drug": "Calcium gluconate 10%",
        }
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("garbage", "not an HL7 v2 message"),
        ("MSH|^~\\&|GW|X|Y|Z|20261121080310+0000||ADT^A01|9|P|2.6\r", "ORU^R01"),
        (
            "MSH|^~\\&|GW|X|Y|Z|20261121080310||ORU^R01|9|P|2.6\rOBX|1|NM|157784^X^MDC|1.1.2.4|2|265266\r",
            "no UTC offset",
        ),
        ("MSH|^~\\&|GW|X|Y|Z|20261121080310+0000||ORU^R01|9|P|2.6\r", "no pump channel"),
    ],
)
def test_messages_calguard_cannot_use(text: str, reason: str) -> None:
    with pytest.raises(HL7Problem, match=re.escape(reason)):
        translate_pcd01(text)


def test_an_unknown_unit_is_a_problem_of_that_channel_not_a_guess() -> None:
    text = EXAMPLE.decode().replace(
        "265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM", "999999^MDC_DIM_X^MDC"
    )
    message = translate_pcd01(text)
    assert message.readings == [] and message.problems == [
        ("A", "observation 157784 has a unit CalGuard does not know")
    ]


def test_hl7_times() -> None:
    assert hl7_time("20261121080310+0100") == "2026-11-21T08:03:10+01:00"
    assert hl7_time("202611210803-0500") == "2026-11-21T08:03:00-05:00"


async def send(port: int, *messages: bytes) -> list[str]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    acks = []
    try:
        for message in messages:
            writer.writeblock(message)
            await writer.drain()
            acks.append((await reader.readblock()).decode())
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


async def test_mllp_accepts_acks_and_rejects_with_the_reason() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        bad = EXAMPLE.replace(b"265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM", b"999999^X^MDC")
        good, refused, unusable = await send(driver.port, EXAMPLE, bad, b"not hl7 at all")
        mllp = lambda: [r for r in bay.records if r.source.startswith("mllp")]  # noqa: E731
        await bay.until(lambda: len(mllp()) == 3)
    assert "MSA|AA|1" in good
    assert (
        "MSA|AE|1|observation 157784 has a unit CalGuard does not know" in refused
        and "ERR|" in refused
    )
    assert "MSA|AE||not an HL7 v2 message" in unusable
    statuses = [(r.status, r.event_type) for r in mllp()]
    assert statuses == [("accepted", "reading"), ("rejected", "wire"), ("rejected", "wire")]
    # the unknown unit names a pump channel: telemetry-invalid for it
    (invalid,) = bay.of("telemetry-invalid", "raised")
    assert (invalid["pump"], invalid["channel"]) == ("0012210000000001", "A")


async def test_a_gateway_sending_calcium_at_a_10x_rate_raises_the_alarm() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        for event in load_scenario("programming-error").opening(SystemClock().now_us()):
            bay.monitor.pipeline.feed_object(event, raw=str(event), source="test")
        message = pcd01_message(
            "P1",
            "B1",
            {
                "A": {
                    "rate": "9 ml/h",
                    "status": "infusing",
                    "drug": "Calcium gluconate 20 mg/ml",
                    "concentration": "20 mg/ml",
                }
            },
            SystemClock().now_us(),
            "C7",
        )
        (ack,) = await send(driver.port, message.encode())
        await bay.until(lambda: bay.of("rate-weight", "raised"))
    assert "MSA|AA|C7" in ack
    assert bay.of("rate-weight")[0]["priority"] == "high"


async def test_the_gateway_simulator_reconnects_and_is_acknowledged(tmp_path: Path) -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        gateway = Hl7Gateway(
            "127.0.0.1", driver.port, SystemClock(), lambda event: None, interval_s=0.1
        )
        await gateway.start(load_scenario("bicarbonate-same-line"), SystemClock().now_us())
        try:
            await bay.until(lambda: len(bay.accepted("reading")) >= 6)
        finally:
            await gateway.stop()
    assert gateway.acks and all("MSA|AA|" in ack for ack in gateway.acks)
    assert {r.pump for r in bay.accepted("reading")} == {"P1", "P2"}


async def test_the_listener_port_is_released_on_close() -> None:
    driver = MllpDriver("mllp://127.0.0.1:0")
    async with driver:
        port = driver.port
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)  # free again
    server.close()
    await server.wait_closed()
