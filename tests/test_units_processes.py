"""Three units of one hospital config, each in a ``calguard run`` process of its own, on one
Mosquitto and one PostgreSQL: each unit's alert lines are exactly what its own log replays
to (the unit alone), its ids its own, and the audit chain the three wrote stays valid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from calguard.drivers.clock import SystemClock
from calguard.monitor.errors import ConfigError
from calguard.monitor.timeutil import format_ts
from paho.mqtt.enums import CallbackAPIVersion

from calguard.units import _file_lock, load_units, select_units
from tests.brokers import Broker
from tests.live import ROOT, admission

CA = "Calcium gluconate 20 mg/ml"
UNITS = ("nicu-a", "nicu-b", "picu")
#: per unit: (pump, readings at 180 ml/h from, to): each unit a scenario of its own
SURGES = {"nicu-a": ("P1", 3, 8), "nicu-b": ("P2", 5, 7), "picu": ("P1", 2, 12)}


def hospital(path: Path, db: str, port: int, units: tuple[str, ...] = UNITS) -> Path:
    """A hospital config: the shared log and charting account, each unit its own prefix."""
    text = f'[site]\nname = "St Test"\ndb = "{db}"\n[web]\nenabled = false\n'
    text += '[broker]\npumps = ["P1", "P2"]\n[[broker.charting]]\naccount = "charting"\n'
    for unit in units:
        text += f'\n[[units]]\nname = "{unit}"\n[[units.drivers]]\n'
        text += f'url = "mqtt://127.0.0.1:{port}/calguard/{unit}"\n'
    path.write_text(text)
    return path


def wait_for(condition: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.05)


class Bedside:
    """One MQTT client publishing for every unit (charting and pumps), QoS 1."""

    def __init__(self, port: int) -> None:
        self.online: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bedside", protocol=5)
        self.client.on_message = self._status
        self.client.on_connect = lambda c, *_: c.subscribe("calguard/+/monitor/status", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _status(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        unit = message.topic.split("/")[1]
        if json.loads(message.payload or b"{}").get("online"):
            self.online.add(unit)
        else:
            self.online.discard(unit)

    def publish(self, topic: str, payload: object) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(30)

    def admit(self, unit: str) -> None:
        t = format_ts(SystemClock().now_us())
        events = admission(t, bed="B1", line="L1", pump="P1")
        events += admission(t, bed="B2", line="L2", pump="P2")
        self.publish(f"calguard/{unit}/events/charting", events)

    def reading(self, unit: str, pump: str, seq: int, fast: bool) -> None:
        event = {
            "t": format_ts(SystemClock().now_us()),
            "type": "reading",
            "pump": pump,
            "rate": "180 ml/h" if fast else "1 ml/h",
            "drug": CA,
            "status": "infusing",
            "seq": seq,
        }
        self.publish(f"calguard/{unit}/pumps/{pump}/telemetry", event)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho leaves its loop's wake-up socket pair open


def feed(bedside: Bedside, unit: str) -> None:
    """The unit's scenario: admissions, then 14 s of readings with its surge."""
    bedside.admit(unit)
    surge_pump, start, end = SURGES[unit]
    for seq in range(1, 15):
        for pump in ("P1", "P2"):
            bedside.reading(unit, pump, seq, pump == surge_pump and start <= seq < end)
        time.sleep(0.25)


class Process:
    """``calguard ARGS`` in a process of its own: its stdout lines collected, its stderr
    in a file (read while it runs)."""

    def __init__(self, *args: str, env: dict[str, str], stderr: Path) -> None:
        self.stderr = stderr
        with stderr.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "calguard.cli", *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: list[tuple[float, str]] = []  # (monotonic time read, line)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    @property
    def alert_lines(self) -> list[str]:
        return [line for _, line in self.lines if line.startswith("{")]

    def said(self, text: str) -> bool:
        return text in self.stderr.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """``sig`` (unless it ended), then its exit status and what it said."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.process.returncode, self.stderr.read_text()


def run(*args: str, stdin: str | None = None) -> str:
    """``calguard ARGS``, which must succeed; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "calguard.cli", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"calguard {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


@contextlib.contextmanager
def monitors(config: Path, names: tuple[str, ...]) -> Iterator[list[Process]]:
    procs = [
        Process(
            "run",
            "--site",
            str(config),
            "--units",
            name,
            env={},
            stderr=config.with_suffix(f".{name}.log"),
        )
        for name in names
    ]
    try:
        yield procs
    except BaseException:
        for proc in procs:  # what they said, to tell why
            status, err = proc.stop()
            print(f"--- {proc.process.args}: exit {status}\n{err[-2000:]}")
        raise


@pytest.mark.postgres
def test_three_units_in_three_processes_alert_as_each_alone(
    tmp_path: Path, pg_url: str, broker: Broker
) -> None:
    config = hospital(tmp_path / "hospital.toml", pg_url, broker.port)
    bedside = Bedside(broker.port)
    try:
        with monitors(config, UNITS) as procs:
            wait_for(lambda: bedside.online >= set(UNITS), 90, "the three monitors online")
            feeders = [threading.Thread(target=feed, args=(bedside, u)) for u in UNITS]
            for feeder in feeders:
                feeder.start()
            for feeder in feeders:
                feeder.join(120)
            time.sleep(2)  # the last readings logged (they are acknowledged once durable)
            ended = {name: proc.stop() for name, proc in zip(UNITS, procs, strict=True)}
    finally:
        bedside.close()
    for name, (status, err) in ended.items():
        assert status == 0, f"{name}: exit {status}\n{err[-3000:]}"
    seen: set[str] = set()
    for name, proc in zip(UNITS, procs, strict=True):
        live = proc.alert_lines
        ids = {json.loads(line)["alert"] for line in live}
        assert live and all(i.startswith(f"a-{name}-") for i in ids), (name, live)
        assert not ids & seen  # no id of one unit is another's
        seen |= ids
        logged = run("export", "--db", pg_url, "--site", name, "--mode", "live", "--alerts")
        assert logged.splitlines() == live
        inputs = run("export", "--db", pg_url, "--site", name, "--mode", "live")
        replayed = run("replay", "-", "--no-db", "--unit", name, stdin=inputs)
        assert replayed.splitlines() == live, name  # the unit alone gives the same lines
        assert any('"rule":"rate' in line for line in live), name  # its own surge
    run("audit", "verify", "--db", pg_url)  # one chain, three writers: intact


# -- the hospital config ------------------------------------------------------------------------


def test_each_unit_of_a_hospital_is_a_site_of_its_own_with_its_own_ids(tmp_path: Path) -> None:
    units = load_units(hospital(tmp_path / "h.toml", "postgresql://h/db", 1883))
    assert [(u.name, u.site.name, u.alert_prefix) for u in units] == [
        (name, name, f"a-{name}-") for name in UNITS
    ]
    for unit in units:
        (driver,) = unit.site.drivers
        assert driver.url.endswith(f"/calguard/{unit.name}")
        assert driver.options["client_id"] == f"calguard-{unit.name}"  # never two alike
        assert unit.site.db == "postgresql://h/db"
        assert unit.site.broker.charting  # the hospital's accounts, in every unit
    assert [u.name for u in select_units(units, "picu,nicu-a")] == ["picu", "nicu-a"]
    with pytest.raises(ValueError, match="nicu-c - the config has nicu-a, nicu-b, picu"):
        select_units(units, "nicu-c")


def test_a_plain_site_config_is_one_unit_with_the_ids_it_always_had(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "NICU"\n[[drivers]]\nurl = "mqtt://127.0.0.1:1883/c/n"\n')
    (unit,) = load_units(path)
    assert (unit.name, unit.alert_prefix) == ("NICU", "a-")
    assert unit.site.drivers[0].options.get("client_id", "calguard-monitor") == "calguard-monitor"


def test_every_problem_of_every_unit_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text(
        '[site]\nname = "H"\n[[drivers]]\nurl = "mqtt://127.0.0.1:1883/c/x"\n'
        '[[units]]\nname = "NICU A"\n'
        '[[units]]\nname = "b"\nbeds = 3\n[[units.drivers]]\nurl = "mqtt://127.0.0.1:1883/c/b"\n'
        'client_id = "same"\n'
        '[[units]]\nname = "c"\n[[units.drivers]]\nurl = "nowhere://x"\n'
        '[[units]]\nname = "d"\n[[units.drivers]]\nurl = "mqtt://127.0.0.1:1883/c/d"\n'
        'client_id = "same"\n'
        '[[units]]\nname = "b"\n'
        '[[units]]\nname = "e"\n[units.web]\nport = 8470\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_units(path)
    keys = {p.key for p in caught.value.problems}
    assert {"drivers", "units[0].name", "units[1].beds", "units[4].name"} <= keys
    assert "units[3].drivers" in keys  # the client id of units[1] again
    assert "units[5].web.port" in keys  # the station port of units[1] (8470) again
    assert any(k.startswith("units[2].drivers[0]") for k in keys)  # the unit's own problem


def test_a_second_monitor_of_a_unit_on_sqlite_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    with _file_lock(db, "nicu") as first, _file_lock(db, "nicu") as second:
        assert first and not second
    with _file_lock(db, "nicu") as again:
        assert again  # free once the first monitor ended
