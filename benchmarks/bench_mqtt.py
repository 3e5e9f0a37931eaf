"""End-to-end MQTT: Mosquitto -> CalGuard -> alerts and the durable log, against a bare
aiomqtt subscriber that only parses JSON (the ceiling), in one run.

    python benchmarks/bench_mqtt.py [--messages 30000] [--rate 1000] [--seconds 10] [--repeat 3]
                                    [--no-latency]

Throughput: MESSAGES readings of 200 pumps are queued at QoS 1 for a persistent session
while the subscriber is away; it then connects and drains them (publisher out of the
way). CalGuard runs its MQTT driver, the engine with every rule, and the SQLite log (and
once more without a log). Each round runs every kind once, in turn; the ratios are the
medians of each round's ratio (the machine's load moves both sides of a round alike).

The ceilings: stock aiomqtt, taking messages one by one (``async for``) and in bursts as
CalGuard's driver does, acknowledging on receipt; and "bare, lean" - the driver's own
receive path (``calguard.drivers.mqtt_wire``: a PUBLISH without properties decoded in a
few slices, straight into the queue) acknowledging each burst once parsed: what the
transport alone costs CalGuard, so its ratio is CalGuard's own cost above the wire.

Latency: a separate process publishes RATE readings/s for SECONDS; one reading in ten
flips a calcium channel across the 2 ml/min limit, so it raises or clears an alert.
Publish-to-alert latency is measured on those, publish-to-parse on the bare subscriber.
Both processes read the same wall clock (CLOCK_REALTIME) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.alerts.log import AlertLog
from calguard.config import load_library
from calguard.config.site import Charting
from calguard.drivers.clock import SystemClock
from calguard.drivers.mqtt import MqttDriver, _Inbox
from calguard.drivers.mqtt_wire import lean_receive, manual_acks
from calguard.monitor.engine import Engine
from calguard.monitor.timeutil import format_ts

from calguard.app import Monitor
from tests.brokers import Broker

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "calguard/bench"
CHARTER = "bench-charting"  # the bedside documentation comes from a charting account
CHARTING_TOPIC = f"{PREFIX}/events/{CHARTER}"
PUMPS = 200
CA = "Calcium gluconate 20 mg/ml"


def bedside() -> list[dict[str, object]]:
    t = format_ts(SystemClock().now_us())
    out: list[dict[str, object]] = []
    for b in range(PUMPS // 2):
        out += [
            {
                "t": t,
                "type": "patient",
                "bed": f"B{b}",
                "weight": "1.5 kg",
                "postnatal_age": "5 day",
            },
            {
                "t": t,
                "type": "line",
                "line": f"L{b}",
                "bed": f"B{b}",
                "kind": "picc",
                "tip_confirmed": True,
            },
            {"t": t, "type": "patency_check", "line": f"L{b}", "result": "blood_return"},
        ]
    out += [
        {"t": t, "type": "connect", "pump": f"P{p}", "line": f"L{p % (PUMPS // 2)}"}
        for p in range(PUMPS)
    ]
    return out


def reading(n: int, sent_ns: int) -> tuple[str, bytes]:
    pump = n % PUMPS
    flip = n % 10 == 0 and pump < PUMPS // 2  # a calcium channel crossing the 2 ml/min limit
    rate = ("150 ml/h" if (n // PUMPS) % 2 else "1 ml/h") if flip else "1 ml/h"
    drug = CA if pump < PUMPS // 2 else "Dextrose 10%"
    body = {
        "t": format_ts(sent_ns // 1000),
        "type": "reading",
        "pump": f"P{pump}",
        "rate": rate,
        "drug": drug,
        "seq": n,
        "sent_ns": sent_ns,
    }
    return f"{PREFIX}/pumps/P{pump}/telemetry", orjson.dumps(body)


def session_client(
    port: int, client_id: str, *, burst: bool = False, lean: bool = False
) -> aiomqtt.Client:
    """A subscriber with a persistent session (MQTT 5, clean start off, kept an hour).
    ``lean``: on the driver's receive path, acknowledging by hand (as the driver does)."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    if lean:
        props.ReceiveMaximum = 5000  # as the driver asks: acknowledgements come in bursts
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
        queue_type=_Inbox if burst or lean else None,
    )
    if lean:
        assert _Inbox.latest is not None
        manual_acks(client)
        lean_receive(client, _Inbox.latest)
    return client


async def subscribe_once(port: int, client_id: str) -> None:
    """Create the persistent session (subscriptions) before messages are queued for it."""
    async with session_client(port, client_id) as client:
        for topic in (
            f"{PREFIX}/pumps/+/telemetry",
            f"{PREFIX}/pumps/+/status",
            f"{PREFIX}/events/+",
        ):
            await client.subscribe(topic, qos=1)


async def publish_backlog(port: int, n: int) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-pub", max_inflight_messages=1000
    ) as client:
        await client.publish(CHARTING_TOPIC, orjson.dumps(bedside()), qos=1)
        # in slices: aiomqtt counts its pending calls at each publish (quadratic in them)
        for start in range(0, n, 500):
            stop = min(n, start + 500)
            await asyncio.gather(
                *(client.publish(*reading(i, time.time_ns()), qos=1) for i in range(start, stop))
            )


class Rate:
    """Messages per second over the whole drain, timed from the connection: the broker
    delivers the backlog from that moment on, whoever is fastest to ask. (A rate over the
    end of the drain only would credit work paho did earlier, reading ahead.)"""

    def __init__(self, expected: int) -> None:
        self.expected, self.count = expected, 0
        self.start = time.perf_counter()
        self.end = 0.0
        self.cpu = (time.process_time(), 0.0)  # this process's CPU, every thread of it
        self.done = asyncio.Event()

    def restart(self) -> None:
        self.start, self.cpu = time.perf_counter(), (time.process_time(), 0.0)

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.expected and not self.done.is_set():
            self.end = time.perf_counter()
            self.cpu = (self.cpu[0], time.process_time())
            self.done.set()

    @property
    def cpu_us(self) -> float:
        """CPU time of this process a message, in µs."""
        return (self.cpu[1] - self.cpu[0]) / self.count * 1e6

    @property
    def whole(self) -> float:
        return self.count / (self.end - self.start)


async def bare(
    port: int,
    client_id: str,
    expected: int,
    latencies: list[float] | None = None,
    *,
    burst: bool = False,
    lean: bool = False,
) -> Rate:
    """The ceiling: receive and parse JSON, nothing else. Returns messages per second.
    ``burst``: take what has already arrived at once, as CalGuard's driver does; ``lean``:
    and on the driver's receive path, acknowledging each burst once parsed."""
    rate = Rate(expected)  # from the connection: the broker delivers from that moment on
    client = session_client(port, client_id, burst=burst, lean=lean)
    inbox = _Inbox.latest if burst or lean else None
    async with client:
        for topic in (f"{PREFIX}/pumps/+/telemetry", f"{PREFIX}/events/+"):
            await client.subscribe(topic, qos=1)
        messages = aiter(client.messages)
        while rate.count < expected:
            batch = [await anext(messages)]
            if inbox is not None:
                batch += inbox.take(256)
            for message in batch:
                obj = orjson.loads(message.payload)  # type: ignore[arg-type]
                rate.add()
                if (
                    latencies is not None
                    and isinstance(obj, dict)
                    and obj.get("seq", 1) % 10 == 0
                    and "sent_ns" in obj
                ):
                    latencies.append((time.time_ns() - obj["sent_ns"]) / 1e6)
            if lean:
                for message in batch:
                    client._client.ack(message.mid, message.qos)
    return rate


async def calguard(
    port: int, client_id: str, expected: int, db: str | None, latencies: list[float] | None = None
) -> Rate:
    """The real thing: driver, engine with every rule, durable SQLite log."""
    library = load_library()
    driver = MqttDriver(
        f"mqtt://127.0.0.1:{port}/{PREFIX}", client_id=client_id, charting=[Charting(CHARTER)]
    )
    rate = Rate(expected)

    def on_alert(tr: object, line: str) -> None:
        if latencies is not None:  # the reading being processed carries its send time
            latencies.append((time.time_ns() - current["sent_ns"]) / 1e6)

    current = {"sent_ns": 0}
    async with AlertLog(db or "sqlite:///:memory:") as log:
        await log.start_session("live", "bench", library)
        if db is None:
            log = None  # type: ignore[assignment]  # measured without the durable log
        monitor = Monitor(
            library,
            [driver],
            clock=SystemClock(),
            log=log,
            outputs=[on_alert],
            engine=Engine(library),
        )
        original = monitor._process

        def process(item):  # type: ignore[no-untyped-def]
            if isinstance(item.obj, dict) and "sent_ns" in item.obj:
                current["sent_ns"] = item.obj["sent_ns"]
            original(item)
            rate.add()

        monitor._process = process  # type: ignore[method-assign]
        rate.restart()  # from the connection, as for the bare ones
        task = asyncio.create_task(monitor.run())
        await rate.done.wait()
        monitor.stop()
        await task
    return rate


PUBLISHER = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
sys.argv = ["x"]
from benchmarks.bench_mqtt import reading, bedside, CHARTING_TOPIC
import aiomqtt, orjson
async def main():
    async with aiomqtt.Client(
        "127.0.0.1", {port}, identifier="bench-live-pub", max_inflight_messages=1000
    ) as c:
        await c.publish(CHARTING_TOPIC, orjson.dumps(bedside()), qos=1)
        start = time.perf_counter()
        for n in range({total}):
            due = start + n / {rate}
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await c.publish(*reading(n, time.time_ns()), qos=1)
asyncio.run(main())
"""


async def latency_run(port: int, kind: str, rate: int, seconds: float, db: str) -> list[float]:
    client_id = f"bench-lat-{kind}-{time.time_ns()}"
    total = int(rate * seconds)
    latencies: list[float] = []
    root = str(ROOT)
    if kind == "bare":
        consumer = asyncio.create_task(bare(port, client_id, total + 1, latencies))
    else:
        consumer = asyncio.create_task(calguard(port, client_id, total + 1, db, latencies))
    await asyncio.sleep(1.0)  # connected and subscribed
    code = PUBLISHER.format(root=root, port=port, total=total, rate=rate)
    publisher = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    await publisher.wait()
    await asyncio.wait_for(consumer, 120)
    return latencies


def pct(values: list[float], q: float) -> float:
    """The q-quantile; NaN for a run that measured nothing (too short to raise an alert)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


KINDS = ("bare", "bare-burst", "bare-lean", "calguard-nolog", "calguard")
LABELS = {
    "bare": "bare aiomqtt, async for + JSON parse",
    "bare-burst": "bare aiomqtt, burst drain + JSON parse",
    "bare-lean": "bare, lean receive path, burst + JSON parse",
    "calguard-nolog": "CalGuard: every rule, no log",
    "calguard": "CalGuard: every rule, SQLite log",
}


async def drain(port: int, directory: str, kind: str, client_id: str, messages: int) -> Rate:
    await subscribe_once(port, client_id)
    await publish_backlog(port, messages)
    expected = messages + 1  # the bedside message too
    if kind == "calguard":
        return await calguard(port, client_id, expected, f"sqlite:///{directory}/{client_id}.db")
    if kind == "calguard-nolog":
        return await calguard(port, client_id, expected, None)
    return await bare(
        port, client_id, expected, burst=kind == "bare-burst", lean=kind == "bare-lean"
    )


async def throughput(port: int, directory: str, messages: int, repeat: int) -> dict[str, float]:
    """Rounds of every kind in turn; medians of the rates and of each round's ratios."""
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    for run in range(repeat):
        for kind in KINDS:
            rate = await drain(port, directory, kind, f"bench-{kind}-{run}", messages)
            rates[kind].append(rate.whole)
            cpu[kind].append(rate.cpu_us)
        print(
            f"  round {run + 1}: " + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in KINDS),
            flush=True,
        )
    whole = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"throughput: {messages} queued readings drained, medians of {repeat} "
        "(msg/s; CPU of the process a message, all its threads):"
    )
    for kind in KINDS:
        print(
            f"  {LABELS[kind]:<46}{whole[kind]:>10,.0f}   "
            f"{statistics.median(cpu[kind]):6.1f} µs CPU"
        )
    print("CalGuard / ceiling, median of the rounds' ratios:")
    for mine in ("calguard", "calguard-nolog"):
        cells = []
        for ceiling in ("bare", "bare-burst", "bare-lean"):
            ratio = statistics.median(
                a / b for a, b in zip(rates[mine], rates[ceiling], strict=True)
            )
            cells.append(f"{ceiling} {ratio:.0%}")
        log = "SQLite log" if mine == "calguard" else "no log"
        print(f"  {log:<12}" + "   ".join(cells))
    return whole


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-latency", dest="latency", action="store_false", help="throughput only"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    import logging

    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "pending publish calls" notes
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(Path(directory) / "mosquitto", persistence=False).start()
        try:
            whole = await throughput(broker.port, directory, args.messages, args.repeat)
            if not args.latency:
                return 0
            runs: dict[str, list[list[float]]] = {"bare": [], "calguard": []}
            for run in range(args.repeat):
                for kind in ("bare", "calguard"):
                    db = f"sqlite:///{directory}/lat-{run}.sqlite3"
                    runs[kind].append(
                        await latency_run(broker.port, kind, args.rate, args.seconds, db)
                    )
            print(f"latency at {args.rate} readings/s for {args.seconds:g} s, x{args.repeat}:")
            p99: dict[str, float] = {}
            for kind, label in (
                ("bare", "publish -> parsed (bare)"),
                ("calguard", "publish -> alert (CalGuard)"),
            ):
                p50s = [pct(v, 0.5) for v in runs[kind]]
                p99s = [pct(v, 0.99) for v in runs[kind]]
                p99[kind] = statistics.median(p99s)
                per_run = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(p50s, p99s, strict=True))
                print(
                    f"  {label:<28} median p50 {statistics.median(p50s):6.2f} ms   "
                    f"median p99 {p99[kind]:6.2f} ms   (runs p50/p99: {per_run})"
                )
            ok_tp = whole["calguard"] >= 0.8 * whole["bare"]
            ok_strict = whole["calguard"] >= 0.8 * whole["bare-burst"]
            ok_lat = p99["calguard"] < 50
            print(
                "targets: throughput >= 80% of the bare subscriber: "
                f"{'met' if ok_tp else 'NOT met'} "
                f"(of the burst-draining one: {'met' if ok_strict else 'NOT met'}); "
                f"p99 < 50 ms: {'met' if ok_lat else 'NOT met'}"
            )
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
