"""What the README tells a trainer to do, as two processes on real wires: ``calguard
simulate <wire> --scenario NAME`` in one terminal, ``calguard run --site <the site config
it wrote>`` in another, and the scenario's alerts appear. Serial over a pseudo-terminal,
MQTT through this test's own Mosquitto, HL7 over a real MLLP socket."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.brokers import Broker, free_port
from tests.live import calguard_process

SPEED = "60"  # an hour a minute: a scenario of minutes runs in seconds


class Proc:
    """A ``calguard`` subprocess whose stdout lines are read as they come."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.args = args
        self.popen = calguard_process(*args, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        threading.Thread(target=self._pump, args=(self.popen.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, False), daemon=True).start()

    def _pump(self, stream: object, out: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            (self.lines.put if out else self.err.append)(line)

    def wait_for(self, predicate: object, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, left))
            except queue.Empty:
                raise AssertionError(
                    f"calguard {' '.join(self.args)}: not seen within {timeout} s; "
                    f"stdout: {''.join(self.seen)[-2000:]} stderr: {''.join(self.err)[-2000:]}"
                ) from None
            self.seen.append(line)
            if predicate(line):  # type: ignore[operator]
                return line

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()
        return self.popen.returncode


@contextmanager
def training(wire: str, scenario: str, tmp: Path, *extra: str) -> Iterator[tuple[Proc, Proc]]:
    env = {"CALGUARD_DATA_DIR": str(tmp)}
    sim = Proc(
        "simulate",
        wire,
        "--scenario",
        scenario,
        "--speed",
        SPEED,
        "--dir",
        str(tmp / "sim"),
        *extra,
        env=env,
    )
    monitor: Proc | None = None
    try:
        line = sim.wait_for(lambda s: "monitor it:" in s, 30)
        site = line.split("--site", 1)[1].split()[0]
        monitor = Proc("run", "--site", site, "--db", f"sqlite:///{tmp}/run.sqlite3", env=env)
        yield sim, monitor
    finally:
        code = monitor.stop() if monitor is not None else 0
        sim.stop()
    assert code == 0, "".join(monitor.err if monitor else [])


def alert(state: str, rule: str) -> object:
    def match(line: str) -> bool:
        obj = json.loads(line)
        return bool(obj["state"] == state and obj["rule"] == rule)

    return match


def collect(monitor: Proc, wanted: set[tuple[str, str]], timeout: float) -> list[dict[str, str]]:
    """Alert lines until every (state, rule) in ``wanted`` has been seen."""
    seen: list[dict[str, str]] = []

    def done(line: str) -> bool:
        seen.append(json.loads(line))
        return wanted <= {(a["state"], a["rule"]) for a in seen}

    monitor.wait_for(done, timeout)
    return seen


def test_serial_training_a_10x_programming_error(tmp_path: Path) -> None:
    with training("serial", "programming-error", tmp_path) as (_, monitor):
        seen = collect(monitor, {("raised", "rate-weight"), ("cleared", "rate-weight")}, 60)
    raised = [a for a in seen if a["state"] == "raised"]
    assert [a["rule"] for a in raised] == ["rate-weight"]
    assert raised[0]["priority"] == "high" and raised[0]["pump"] == "P1"


def test_mqtt_training_calcium_chloride_hung_by_mistake(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "mosquitto").start()
    try:
        url = f"mqtt://127.0.0.1:{broker.port}/calguard/training"
        with training("mqtt", "chloride-mistake", tmp_path, "--broker", url) as (sim, monitor):
            # the simulator waits for the monitor's subscription, so no bedside event is lost
            sim.wait_for(lambda s: "scenario starts" in s, 30)
            wanted = {
                ("raised", "salt-not-gluconate"),
                ("raised", "concentration-peripheral"),
                ("raised", "rate-weight"),
                ("cleared", "salt-not-gluconate"),
                ("cleared", "concentration-peripheral"),
                ("cleared", "rate-weight"),
            }
            seen = collect(monitor, wanted, 60)
    finally:
        broker.stop()
    raised = {a["rule"]: a["priority"] for a in seen if a["state"] == "raised"}
    assert raised == {
        "salt-not-gluconate": "high",
        "concentration-peripheral": "medium",
        "rate-weight": "high",
    }


def test_hl7_training_bicarbonate_on_the_calcium_line(tmp_path: Path) -> None:
    target = f"mllp://127.0.0.1:{free_port()}"
    with training("hl7", "bicarbonate-same-line", tmp_path, "--to", target) as (_, monitor):
        seen = collect(
            monitor,
            {("raised", "incompatible-coinfusion"), ("cleared", "incompatible-coinfusion")},
            60,
        )
    assert [a["rule"] for a in seen if a["state"] == "raised"] == ["incompatible-coinfusion"]
