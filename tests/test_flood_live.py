"""A flood of garbage from made-up pump ids against a real `calguard run` with its MQTT
alarm sink: another bed's high alarm still reaches the central station within 1 s every
time, and the monitor's memory stays flat."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiomqtt
import orjson
from calguard.drivers.clock import SystemClock
from calguard.monitor.timeutil import format_ts

from tests.brokers import Broker
from tests.live import admission

PREFIX = "calguard/flood"
CA = "Calcium gluconate 10%"
FLOOD_PER_S = 50
FLOOD_S = int(os.environ.get("CALGUARD_FLOOD_S", "60"))  # 3,000 made-up pumps
CANARY_EVERY_S = 5


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_flood_of_made_up_pumps_never_delays_a_canary_nor_grows_memory(
    broker: Broker, tmp_path: Path
) -> None:
    url = f"mqtt://{broker.host}:{broker.port}/{PREFIX}"
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\nname = "flood ward"\ndb = "sqlite:///{tmp_path / "log.sqlite3"}"\n\n'
        f'[[drivers]]\nurl = "{url}"\nclient_id = "flood-monitor"\n\n'
        f'[[sinks]]\nurl = "{url}"\nclient_id = "flood-alarms"\n\n'
        '[[broker.charting]]\naccount = "charting"\n'
    )
    out, err_file = (tmp_path / "stdout.txt").open("w"), (tmp_path / "stderr.txt").open("w")
    proc = _start(site, tmp_path, out, err_file)
    raised: dict[str, float] = {}  # canary pump -> when its rate-volume line arrived
    try:
        async with aiomqtt.Client(broker.host, broker.port, identifier="flood-station") as c:
            await c.subscribe(f"{PREFIX}/alerts", qos=1)
            await c.subscribe(f"{PREFIX}/monitor/status", qos=1)
            listener = asyncio.create_task(_listen(c, raised))
            await _until(lambda: "online" in raised, 60, "the monitor online")
            start_rss = _rss_kb(proc.pid)
            sent: dict[str, float] = {}
            seq = 0
            begin = time.monotonic()
            while (elapsed := time.monotonic() - begin) < FLOOD_S:
                for _ in range(FLOOD_PER_S // 10):
                    seq += 1
                    bad = {"t": _now(), "type": "reading", "pump": f"X{seq}", "rate": "lots"}
                    await c.publish(f"{PREFIX}/pumps/X{seq}/telemetry", orjson.dumps(bad), qos=1)
                if elapsed >= CANARY_EVERY_S * (len(sent) + 1):
                    pump = f"C{len(sent) + 1}"
                    await _canary(c, pump)
                    sent[pump] = time.monotonic()
                await asyncio.sleep(0.1)
            await _until(lambda: set(sent) <= set(raised), 30, f"canaries {sent} raised {raised}")
            end_rss = _rss_kb(proc.pid)
            listener.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err_file.close()
        assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    delays = {pump: raised[pump] - sent[pump] for pump in sent}
    assert len(delays) >= FLOOD_S // CANARY_EVERY_S - 1
    assert max(delays.values()) < 1.0, delays
    assert end_rss - start_rss < 50 * 1024, (start_rss, end_rss)
    assert seq >= FLOOD_PER_S * FLOOD_S * 0.9


def _start(site: Path, data: Path, out: IO[str], err: IO[str]) -> subprocess.Popen[bytes]:
    """`calguard run` with its output to files: a pipe nobody reads fills at 64 KiB (every
    garbage input is a warning line) and would stall the monitor on a write, which is not
    what is tested here."""
    return subprocess.Popen(
        [sys.executable, "-m", "calguard", "run", "--site", str(site)],
        env={**os.environ, "CALGUARD_DATA_DIR": str(data)},
        stdout=out,
        stderr=err,
    )


async def _canary(client: aiomqtt.Client, pump: str) -> None:
    """A new bed with calcium at 180 ml/h: a high rate-volume alarm at once."""
    t = _now()
    bed = pump.replace("C", "B")
    await client.publish(
        f"{PREFIX}/events/charting",
        orjson.dumps(admission(t, bed=bed, line=f"L{bed}", pump=pump)),
        qos=1,
    )
    reading = {"t": t, "type": "reading", "pump": pump, "rate": "180 ml/h", "drug": CA}
    await client.publish(f"{PREFIX}/pumps/{pump}/telemetry", orjson.dumps(reading), qos=1)


async def _listen(client: aiomqtt.Client, raised: dict[str, float]) -> None:
    async for message in client.messages:
        payload: Any = orjson.loads(message.payload)  # type: ignore[arg-type]
        if str(message.topic).endswith("monitor/status"):
            if payload.get("online"):
                raised["online"] = time.monotonic()
        elif payload.get("rule") == "rate-volume" and payload.get("state") == "raised":
            raised.setdefault(str(payload.get("pump")), time.monotonic())


def _now() -> str:
    return format_ts(SystemClock().now_us())


async def _until(condition: Any, within: float, what: str) -> None:
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, f"not met in time: {what}"
        await asyncio.sleep(0.05)
