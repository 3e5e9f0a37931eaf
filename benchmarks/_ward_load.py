"""The ward's load for ``bench_ward.py``, and what watches it from outside.

The publisher and the bare subscriber run as their own processes (``python
benchmarks/_ward_load.py publish|bare JSON``), so the benchmark reads each one's CPU apart
from the monitors' and the broker's. Only public contracts are used: the event format on
MQTT topics under a unit's prefix (docs/protocols.md section 3), the alarm sink's
``<prefix>/alerts`` lines, the database's catalogue and ``/proc``; nothing of CalGuard's
insides. PostgreSQL is the local server's ``postgres`` account (trust), as the tests use.

Unit ``u`` is the prefix ``calguard/<tag>/u<u>``; bed ``b`` of it is ``U<u>B<b>`` with one
central line, each of its channels a pump ``U<u>B<b>C<c>`` on that line. Channels 0 and 1
of a bed run calcium at 0.5 ml/h, the others dextrose. A known fraction of the calcium
channels are *flippers*: every ``period`` seconds their reading goes to 150 ml/h (above the
2 ml/min `rate-volume` limit: a high alarm is raised) or back (it clears). Those readings
carry ``sent_ns``, the publish time on the machine's wall clock, which the benchmark and
the bare subscriber compare with their own; every reading carries a per-pump ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import orjson

CA = "Calcium gluconate 20 mg/ml"
OTHER = "Dextrose 10%"
CHARTER = "ward-charting"  # the bedside documentation's charting account (site config)
LOW, HIGH = "0.5 ml/h", "150 ml/h"
SLICES = 20  # a second's readings go out in 20 slices, as unsynchronised pumps send them


@dataclass(frozen=True)
class Load:
    port: int
    units: int
    beds: int  # per unit
    channels: int  # per bed
    seconds: float
    rate: float = 1.0  # readings per channel per second
    flip_fraction: float = 0.02  # of all channels (taken among the calcium ones)
    period: int = 10  # seconds between a flipper's transitions
    qos: int = 1
    tag: str = "w"  # each run its own prefixes: no session of an earlier run queues for it
    out: str = ""  # where the process writes its result (JSON)

    @property
    def total(self) -> int:
        return self.units * self.beds * self.channels

    def prefix(self, unit: int) -> str:
        return f"calguard/{self.tag}/u{unit}"

    def pumps(self, unit: int) -> list[tuple[str, bool, int]]:
        """(pump, calcium, flip phase or -1) for each channel of the unit."""
        out: list[tuple[str, bool, int]] = []
        calcium_every = max(1, round(min(2, self.channels) / self.channels / self.flip_fraction))
        n = 0
        for b in range(self.beds):
            for c in range(self.channels):
                calcium = c < 2
                flip = -1
                if calcium and self.flip_fraction > 0:
                    if n % calcium_every == 0:
                        flip = (n // calcium_every) % self.period
                    n += 1
                out.append((f"U{unit}B{b}C{c}", calcium, flip))
        return out

    def bedside(self, unit: int, t: str) -> list[bytes]:
        """Each infant (3 kg, 5 days), a central line with its tip confirmed, a passing
        patency check, and every channel connected: all rules can fire, none does. One
        message per bed (the driver reads at most 64 KiB of a payload)."""
        out: list[bytes] = []
        for b in range(self.beds):
            bed, line = f"U{unit}B{b}", f"U{unit}L{b}"
            events: list[dict[str, Any]] = [
                {"t": t, "type": "patient", "bed": bed, "weight": "3 kg", "postnatal_age": "5 day"},
                {"t": t, "type": "line", "line": line, "bed": bed, "kind": "picc"},
                {"t": t, "type": "patency_check", "line": line, "result": "blood_return"},
            ]
            events[1]["tip_confirmed"] = True
            events += [
                {"t": t, "type": "connect", "pump": f"{bed}C{c}", "line": line}
                for c in range(self.channels)
            ]
            out.append(json.dumps(events).encode())
        return out


def wall_ts(ns: int) -> str:
    """The event format's time, in milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + (
        f".{ns // 10**6 % 1000:03d}Z"
    )


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def publish(load: Load) -> dict[str, Any]:
    """Every channel once per 1/rate s, spread over SLICES; returns what was sent when."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"ward-pub-{os.getpid()}", clean_session=True
    )
    # unlimited: with a limit, paho walks every message in flight on each PUBACK (quadratic
    # once the broker's acknowledgements lag on a loaded machine)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    acked = [0]
    lock = threading.Lock()

    def on_publish(*_: object) -> None:
        with lock:
            acked[0] += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", load.port, keepalive=60)
    client.loop_start()
    channels = [
        (f"{load.prefix(u)}/pumps/{p}/telemetry", p, ca, flip)
        for u in range(load.units)
        for p, ca, flip in load.pumps(u)
    ]
    slices = [channels[i::SLICES] for i in range(SLICES)]
    flips: list[tuple[str, int, int]] = []  # (pump, sent_ns, 1 raised / 0 cleared)
    sent = 0
    late = 0.0
    ticks = int(load.seconds * load.rate)
    step = 1.0 / load.rate / SLICES
    cpu0, start = cpu_s(), time.perf_counter() + 0.2
    for tick in range(ticks):
        seq = tick + 1
        for i, part in enumerate(slices):
            due = start + tick / load.rate + i * step
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                late = max(late, -delay)
            now = time.time_ns()
            head = f'{{"t":"{wall_ts(now)}","type":"reading","pump":"'
            for topic, pump, ca, flip in part:
                drug = CA if ca else OTHER
                rate = LOW
                extra = ""
                if flip >= 0 and tick >= flip:
                    phase = (tick - flip) // load.period
                    rate = HIGH if phase % 2 == 0 else LOW
                    if (tick - flip) % load.period == 0:
                        sent_ns = time.time_ns()
                        flips.append((pump, sent_ns, 1 - phase % 2))
                        extra = f',"sent_ns":{sent_ns}'
                body = f'{head}{pump}","rate":"{rate}","drug":"{drug}","seq":{seq}{extra}}}'
                client.publish(topic, body, qos=load.qos)
            sent += len(part)
    end = time.perf_counter()
    deadline = time.monotonic() + 60
    while load.qos and acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return {
        "sent": sent,
        "acked": acked[0] if load.qos else sent,
        "seconds": end - start,
        "cpu_s": cpu_s() - cpu0,
        "late_s": late,  # the worst a slice went out after its due time
        "end_ns": time.time_ns(),
        "flips": flips,
    }


def flag(path: str) -> None:
    Path(path).touch()


async def bare(load: Load, unit: int) -> dict[str, Any]:
    """The baseline: receive and parse every reading of one unit at QoS 1, nothing else."""
    prefix = load.prefix(unit)
    expected = load.beds * load.channels * int(load.seconds * load.rate)
    latencies: list[tuple[int, float]] = []  # (sent_ns, ms)
    count = 0
    last_ns = 0
    cpu0 = cpu_s()
    async with aiomqtt.Client(
        "127.0.0.1", load.port, identifier=f"ward-bare-{unit}-{os.getpid()}"
    ) as client:
        await client.subscribe(f"{prefix}/pumps/+/telemetry", qos=1)
        await client.subscribe(f"{prefix}/events/+", qos=1)
        flag(load.out + ".ready")  # subscribed: the publisher may start
        messages = aiter(client.messages)
        while count < expected:
            try:
                message = await asyncio.wait_for(anext(messages), 30)
            except TimeoutError:
                break
            obj = orjson.loads(message.payload)
            if isinstance(obj, dict):
                count += 1
                last_ns = time.time_ns()
                if "sent_ns" in obj:
                    latencies.append((obj["sent_ns"], (time.time_ns() - obj["sent_ns"]) / 1e6))
    return {"count": count, "latencies": latencies, "cpu_s": cpu_s() - cpu0, "last_ns": last_ns}


# --- watching from outside: the alarm sink's topics, the database, /proc -----------------

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK  # less idle and iowait


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads were ready to run but waited for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def proc_cpu(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def site_toml(load: Load, monitor: int, units: list[int], db: str) -> str:
    """One monitor's site config: a driver per unit it owns, the alarm sink on the first."""
    url = f"mqtt://127.0.0.1:{load.port}"
    drivers = "".join(
        f'[[drivers]]\nurl = "{url}/{load.prefix(u)}"\nclient_id = "bench-{load.tag}-u{u}"\n\n'
        for u in units
    )
    return (
        f'[site]\nname = "bench ward {load.tag} m{monitor}"\ndb = "{db}"\n\n{drivers}'
        f'[[sinks]]\nurl = "{url}/{load.prefix(units[0])}"\n'
        f'client_id = "bench-{load.tag}-alarms-m{monitor}"\n\n'
        f'[[broker.charting]]\naccount = "{CHARTER}"\n\n[web]\nport = 0\n'
    )


class Alerts:
    """The alarm sinks' lines on ``<prefix>/alerts`` and the monitors' presence."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.online: set[str] = set()
        self.lines: dict[str, list[tuple[str, int]]] = {}  # pump -> (state, arrival ns)
        self.last_ns = 0

    async def listen(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the run ends by leaving the client
            await self._listen(client)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            try:
                obj = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if topic.endswith("/monitor/status"):
                if obj.get("online") is True:
                    self.online.add(topic.rsplit("/", 2)[0])
            elif obj.get("rule") == "rate-volume" and obj.get("state") in ("raised", "cleared"):
                self.last_ns = time.time_ns()
                self.lines.setdefault(str(obj.get("pump")), []).append((obj["state"], self.last_ns))

    def match(self, flips: list[list[Any]]) -> list[tuple[int, float]]:
        """(sent ns, publish -> alert ms) of each probe whose line came, in order per pump."""
        seen: dict[str, int] = {}
        out: list[tuple[int, float]] = []
        for pump, sent, raised in flips:
            lines = self.lines.get(pump, [])
            i = seen.get(pump, 0)
            want = "raised" if raised else "cleared"
            while i < len(lines) and lines[i][0] != want:
                i += 1
            if i < len(lines):
                out.append((sent, (lines[i][1] - sent) / 1e6))
                i += 1
            seen[pump] = i
        return out


async def database(name: str, *, drop: bool) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def backends_cpu(name: str) -> dict[int, float]:
    """CPU of each PostgreSQL backend connected to the database (the server is local)."""
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()
    cpu = {int(r["pid"]): proc_cpu(int(r["pid"])) for r in rows}
    return {pid: v for pid, v in cpu.items() if v == v}  # NaN: gone, or not ours to read


async def sizes(name: str) -> dict[str, int]:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%'"
        )
    finally:
        await conn.close()
    return {r["relname"]: int(r["size"]) for r in rows}


def main() -> None:
    role, spec = sys.argv[1], json.loads(sys.argv[2])
    unit = spec.pop("unit", 0)
    load = Load(**spec)
    result = publish(load) if role == "publish" else asyncio.run(bare(load, unit))
    with open(load.out, "w") as f:
        json.dump(result, f)


def spec(load: Load, **extra: Any) -> str:
    return json.dumps({**asdict(load), **extra})


if __name__ == "__main__":
    main()
