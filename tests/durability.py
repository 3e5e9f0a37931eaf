"""What the durability tests share: pumps that publish QoS 1 telemetry at a set rate and
keep count of what the broker acknowledged, ``calguard run`` as a real process (stopped,
killed, restarted), and a census of the log (what is in it, what is missing, what came
twice).

Pumps are real MQTT clients (paho-mqtt, one connection per pump, an outbox that survives a
lost broker, as a pump or its gateway keeps one): ``sent`` is what they published,
``acked`` what the broker acknowledged to them - the readings a broker failure could lose.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from calguard.drivers.clock import SystemClock
from calguard.monitor.timeutil import format_ts
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from tests.live import ROOT, admission

CA = "Calcium gluconate 20 mg/ml"
PREFIX = "calguard/test"
CHARTING = "charting"  # the bedside charting account: it publishes on events/charting
Key = tuple[str, int]  # (pump, seq)


def now_ts() -> str:
    return format_ts(SystemClock().now_us())


def wait_for(condition: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.05)


# -- the pumps -------------------------------------------------------------------------------


def _client(client_id: str, port: int, username: str | None, password: str | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    client.reconnect_delay_set(0.2, 2)
    client.max_queued_messages_set(0)  # an outbox without limit while the broker is away
    return client


@dataclass
class Surge:
    """One pump runs calcium too fast (180 ml/h = 3 ml/min) over a range of its readings."""

    pump: str
    seqs: range


class Ward:
    """``pumps`` pumps, each feeding calcium to its own cot; ``total`` readings in turns at
    ``rate`` a second, each with the pump's ``seq``."""

    def __init__(
        self,
        port: int,
        *,
        total: int = 20_000,
        pumps: int = 10,
        rate: float = 500.0,
        surge: Surge | None = None,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        """``passwords``: each account's (a pump's is its name), to log in with."""
        self.port, self.total, self.rate, self.surge = port, total, rate, surge
        self.names = [f"P{k:02d}" for k in range(1, pumps + 1)]

        def client(client_id: str, account: str) -> mqtt.Client:
            if passwords is None:
                return _client(client_id, port, None, None)
            return _client(client_id, port, account, passwords[account])

        self.clients = {name: client(f"pump-{name}", name) for name in self.names}
        self.charting = client("charting", CHARTING)
        self.sent = 0
        self._lock = threading.Lock()
        self._mids: dict[tuple[str, int], Key] = {}
        self._acked_mids: set[tuple[str, int]] = set()
        self._monitor_online = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # connection ------------------------------------------------------------------------

    def connect(self) -> Ward:
        for name, client in self.clients.items():
            client.on_publish = self._on_publish(name)
        self.charting.on_message = self._on_status
        self.charting.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/monitor/status", qos=1)
        for client in (*self.clients.values(), self.charting):
            props = Properties(mqtt.PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            client.connect(
                "127.0.0.1", self.port, keepalive=15, clean_start=False, properties=props
            )
            client.loop_start()
        return self

    def _on_publish(self, name: str) -> Callable[..., None]:
        def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
            with self._lock:
                self._acked_mids.add((name, mid))

        return on_publish

    def _on_status(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if json.loads(message.payload or b"{}").get("online"):
            self._monitor_online.set()

    def wait_for_monitor(self, within: float = 60) -> None:
        if not self._monitor_online.wait(within):
            raise AssertionError(f"the monitor did not come online within {within:.0f} s")

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for client in (*self.clients.values(), self.charting):
            client.disconnect()
            client.loop_stop()
            client._reset_sockets()  # paho leaves its loop's wake-up socket pair open

    # publishing ------------------------------------------------------------------------

    def admit(self) -> None:
        """Every cot's infant, line, pump connection and patency check, as the charting
        gateway sends them; acknowledged by the broker before telemetry starts."""
        t = now_ts()
        events: list[dict[str, Any]] = []
        for k, pump in enumerate(self.names, 1):
            events += admission(t, bed=f"B{k:02d}", line=f"L{k:02d}", pump=pump)
        info = self.charting.publish(f"{PREFIX}/events/{CHARTING}", json.dumps(events), qos=1)
        info.wait_for_publish(30)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._publish_all, name="pumps", daemon=True)
        self._thread.start()

    def reading(self, index: int) -> tuple[str, int, bytes]:
        pump = self.names[index % len(self.names)]
        seq = index // len(self.names) + 1
        fast = self.surge is not None and pump == self.surge.pump and seq in self.surge.seqs
        event = {
            "t": now_ts(),
            "type": "reading",
            "pump": pump,
            "rate": "180 ml/h" if fast else "1 ml/h",
            "drug": CA,
            "status": "infusing",
            "seq": seq,
        }
        return pump, seq, json.dumps(event).encode()

    def _publish_all(self) -> None:
        start = time.monotonic()
        for i in range(self.total):
            if self._stop.is_set():
                return
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pump, seq, payload = self.reading(i)
            # never call paho holding our lock: its network thread holds its own lock while
            # it calls on_publish, which takes ours (the mids are matched up at the end)
            topic = f"{PREFIX}/pumps/{pump}/telemetry"
            info = self.clients[pump].publish(topic, payload, qos=1)
            with self._lock:
                self._mids[(pump, info.mid)] = (pump, seq)
                self.sent += 1

    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def expected(self) -> set[Key]:
        return {
            (self.names[i % len(self.names)], i // len(self.names) + 1) for i in range(self.total)
        }

    def acked(self) -> set[Key]:
        """Readings the broker acknowledged to their pump (each pump counts its own mids)."""
        with self._lock:
            return {self._mids[m] for m in self._acked_mids if m in self._mids}


# -- calguard run as a process --------------------------------------------------------------


@dataclass
class Line:
    at: float  # time.monotonic() when it was read
    alert: dict[str, Any]


@dataclass
class Monitor:
    """``calguard run --site SITE`` in a process of its own; its alert lines collected."""

    site: Path
    env: dict[str, str]
    stderr: Path
    run_as: dict[str, Any] = field(default_factory=dict)  # user=, group= (root test runs)
    lines: list[Line] = field(default_factory=list)
    runs: int = 0
    process: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def start(self) -> Monitor:
        self.runs += 1
        err = self.stderr.with_suffix(f".{self.runs}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "calguard.cli", "run", "--site", str(self.site)],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            **self.run_as,
        )
        err.close()
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for text in process.stdout:
            with contextlib.suppress(json.JSONDecodeError):  # only alert lines matter here
                self.lines.append(Line(time.monotonic(), json.loads(text)))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no flush, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._close()

    def stop(self, within: float = 60) -> int:
        """SIGTERM, as a service manager stops it; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close()
        return int(self.process.returncode)

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def errors(self) -> str:
        return "\n".join(
            p.read_text()[-3000:]
            for p in sorted(self.stderr.parent.glob(f"{self.stderr.stem}.*.log"))
        )

    def of(self, rule: str, state: str | None = None) -> list[Line]:
        return [
            line
            for line in self.lines
            if line.alert["rule"] == rule and (state is None or line.alert["state"] == state)
        ]


def site_file(path: Path, db: str, broker_port: int, **driver: str) -> Path:
    """The monitor's site config: the broker's accounts too (ten pumps, the charting)."""
    options = "".join(f'{k} = "{v}"\n' for k, v in driver.items())
    pumps = ", ".join(f'"P{k:02d}"' for k in range(1, 11))
    path.write_text(
        f'[site]\nname = "durability test"\ndb = "{db}"\n\n'
        f'[[drivers]]\nurl = "mqtt://127.0.0.1:{broker_port}/{PREFIX}"\n'
        f'client_id = "calguard-durability"\n{options}\n'
        f"[broker]\npumps = [{pumps}]\n"
        f'[[broker.charting]]\naccount = "{CHARTING}"\n'
    )
    return path


# -- the log's census -------------------------------------------------------------------------


@dataclass
class Census:
    sent: int
    acked_by_broker: int
    logged: int  # distinct readings in the log, whatever their status
    applied: int  # distinct readings accepted (the others came after a newer one: logged
    # as out_of_order, the channel's state unchanged)
    missing: int  # sent and not in the log at all
    lost: int  # acknowledged to its pump by the broker, and not in the log at all
    duplicated: int  # copies beyond the first (QoS 1 redeliveries), dropped by seq
    accepted_twice: int  # must be 0: a reading applied twice

    def line(self, what: str) -> str:
        return (
            f"{what}: sent {self.sent}, acknowledged by the broker {self.acked_by_broker}, "
            f"in the log {self.logged} (applied {self.applied}, late "
            f"{self.logged - self.applied}), missing {self.missing}, lost after the "
            f"broker's acknowledgement {self.lost}, duplicated {self.duplicated}, "
            f"accepted twice {self.accepted_twice}"
        )


def census(ward: Ward, rows: Iterable[tuple[str, str]]) -> Census:
    """``rows``: (raw, status) of every reading in the log."""
    accepted: Counter[Key] = Counter()
    seen: Counter[Key] = Counter()
    for raw, status in rows:
        d = json.loads(raw)
        key = (d["pump"], d["seq"])
        seen[key] += 1
        if status == "accepted":
            accepted[key] += 1
    expected, acked, logged = ward.expected, ward.acked(), set(seen)
    return Census(
        sent=ward.sent,
        acked_by_broker=len(acked),
        logged=len(logged & expected),
        applied=len(set(accepted) & expected),
        missing=len(expected - logged),
        lost=len(acked - logged),
        duplicated=sum(seen.values()) - len(seen),
        accepted_twice=sum(n - 1 for n in accepted.values() if n > 1),
    )


def report(text: str) -> None:
    """A measured figure: printed (``pytest -s``) and kept in build/durability.txt."""
    print(text)
    out = ROOT / "build" / "durability.txt"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
