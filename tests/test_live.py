"""The live monitor as a whole: timers on the live clock, a live session's log replaying
to the same alerts, ``calguard run`` stopped by SIGTERM with its log flushed, and
``calguard demo`` on a fresh install."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
from calguard.alerts.log import AlertLog, session_rows
from calguard.config import load_library
from calguard.drivers.clock import ScaledClock, SystemClock
from calguard.drivers.serial import SerialDriver
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.timeutil import format_ts, parse_ts
from calguard.simulators.ne1000 import PumpBus, SimulatedPump

from calguard.replay import replay
from tests.brokers import Broker
from tests.live import LiveBay, admission, calguard_process
from tests.people import add_staff, keyring, token_file

CA = "Calcium gluconate 10 mg/ml"


def bedside(url: str, t: str) -> None:
    for event in admission(t, weight="1.2 kg", age="3 day"):
        VirtualDriver.put(url, event)


async def test_a_silent_serial_pump_is_stale_exactly_60_s_after_its_last_reading() -> None:
    clock = ScaledClock(20.0, anchor_us=SystemClock().now_us())  # 60 s of ward time = 3 s
    VirtualDriver.forget("virtual://live-bedside")
    mapping = [{"address": 0, "pump": "P1", "drug": CA, "concentration": "10 mg/ml"}]
    async with PumpBus([SimulatedPump(0, 1.0, "MH", "I")], clock=clock) as bus:
        serial = SerialDriver(
            f"serial://{bus.path}", clock=clock, pumps=mapping, response_timeout=0.05
        )
        bedside("virtual://live-bedside", format_ts(clock.now_us()))
        virtual = VirtualDriver("virtual://live-bedside", clock=clock)
        async with LiveBay([serial, virtual], clock=clock) as bay:
            await bay.until(lambda: len(bay.accepted("reading")) >= 3)
            bus.silence(0)
            await bay.until(lambda: bay.of("telemetry-stale", "raised"), within=20)
            last = bay.monitor.engine.ward.channels["P1", "A"].latest_t
    (stale,) = bay.of("telemetry-stale")
    assert last is not None and parse_ts(stale["t"]) == last + 60_000_000


async def test_a_live_sessions_log_replays_to_the_same_alerts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    clock = ScaledClock(60.0, anchor_us=SystemClock().now_us())
    feed = "virtual://live-replay"
    VirtualDriver.forget(feed)
    library = load_library()
    async with AlertLog(url) as log:
        await log.start_session("live", "test", library)
        async with LiveBay([VirtualDriver(feed, clock=clock)], clock=clock, log=log) as bay:
            t = format_ts(clock.now_us())
            bedside(feed, t)
            for i, rate in enumerate(
                ["1 ml/h", "180 ml/h", "1 ml/h"]
            ):  # then the pump falls silent
                VirtualDriver.put(
                    feed,
                    {
                        "t": format_ts(clock.now_us()),
                        "type": "reading",
                        "pump": "P1",
                        "rate": rate,
                        "drug": CA,
                        "seq": i,
                    },
                )
                await asyncio.sleep(0.05)
            VirtualDriver.put(
                feed, {"t": t, "type": "reading", "pump": "P1", "rate": "30"}
            )  # rejected
            await bay.until(
                lambda: bay.of("telemetry-stale", "raised"), within=20
            )  # a timer, via a clock event
            live = [json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in bay.alerts]
    _, rows, logged = await session_rows(url)
    assert logged == live
    assert any(r.event_type == "clock" for r in rows)  # the tick that fired the timer is in the log
    text = "".join(r.raw + "\n" for r in rows).encode()
    out = io.StringIO()
    await replay(io.BytesIO(text), source="export", library=library, out=out)
    assert out.getvalue().splitlines() == live


def test_calguard_run_stops_cleanly_on_sigterm_and_flushes_its_log(tmp_path: Path) -> None:
    events = tmp_path / "bedside.jsonl"
    events.write_text("")
    site = tmp_path / "site.toml"
    db = tmp_path / "run.sqlite3"
    site.write_text(
        f'[site]\nname = "test ward"\ndb = "sqlite:///{db}"\n\n'
        f'[[drivers]]\nurl = "replay://{events}"\npoll = 0.05\n'
    )
    proc = calguard_process("run", "--site", str(site), env={"CALGUARD_DATA_DIR": str(tmp_path)})
    try:
        now = format_ts(SystemClock().now_us())
        lines = [
            *admission(now, age=None),
            {"t": now, "type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA},
        ]
        with events.open("a") as out:
            out.writelines(orjson.dumps(e).decode() + "\n" for e in lines)
        first = _next(proc, "raised")  # the first alert line the monitor prints
        assert first["rule"] == "rate-volume"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert code == 0, err
    session, rows, alerts = asyncio.run(session_rows(f"sqlite:///{db}"))
    # the warm start's marker first (nothing to read: a new log), then the five inputs
    assert session == 1 and [r.event_type for r in rows][:1] == ["warm_start"]
    assert len(rows) == 5 + 1 and json.loads(alerts[0])["rule"] == "rate-volume"


def test_calguard_demo_runs_on_a_fresh_install(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = calguard_process(
        "demo", "--speed", "240", "--no-view", env={"CALGUARD_DATA_DIR": str(tmp_path)}
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:  # never leave a demo running behind a failed test
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    raised = {json.loads(line)["rule"] for line in out.splitlines() if '"state":"raised"' in line}
    assert {"rate-weight", "occlusion", "telemetry-stale", "site-check-overdue"} <= raised
    assert "demo finished" in err
    # the demo logs to its own training file, never to the ward's log
    assert (tmp_path / "training" / "calguard-training.sqlite3").exists()
    assert not (tmp_path / "calguard.sqlite3").exists()
    assert time.monotonic() - start < 120


def test_a_restarted_calguard_run_keeps_the_alarm_states_people_left(
    tmp_path: Path, broker: Broker
) -> None:
    """Run 1 raises a high alarm and a nurse pauses it for 3 s (``calguard pause``, logged
    in); CalGuard is stopped for longer than that. Run 2 (same log) restores the pause and
    emits its ``resumed`` line, stamped with the exact end of the pause, instead of
    annunciating afresh."""
    db = tmp_path / "run.sqlite3"
    commands = f"mqtt://127.0.0.1:{broker.port}/calguard/restart"
    asyncio.run(add_staff(f"sqlite:///{db}"))
    logged_in = token_file(keyring(tmp_path), tmp_path / "token", "rn1")

    def start(events: Path) -> subprocess.Popen[str]:
        site = tmp_path / f"{events.stem}.toml"
        site.write_text(
            f'[site]\nname = "test ward"\ndb = "sqlite:///{db}"\n\n'
            f'[[drivers]]\nurl = "replay://{events}"\npoll = 0.05\n'
            f'[[sinks]]\nurl = "{commands}"\n'
        )
        return calguard_process(
            "run", "--site", str(site), env={"CALGUARD_DATA_DIR": str(tmp_path)}
        )

    def stop(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    first_events, second_events = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first_events.write_text("")
    second_events.write_text("")
    first = start(first_events)
    try:
        now = format_ts(SystemClock().now_us())
        with first_events.open("a") as out:
            out.writelines(
                orjson.dumps(e).decode() + "\n"
                for e in (
                    *admission(now, age=None),
                    {"t": now, "type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA},
                )
            )
        raised = _next(first, "raised")
        assert (raised["rule"], raised["state"]) == ("rate-volume", "raised")
        pause = calguard_process(
            "pause", str(raised["alert"]), "--duration", "3 s", "--broker", commands,
            "--token-file", str(logged_in), env={"CALGUARD_DATA_DIR": str(tmp_path)},
        )  # fmt: skip
        out, err = pause.communicate(timeout=60)
        assert pause.returncode == 0 and "by rn1: done" in out, err
        paused = _next(first, "paused")
        assert (paused["alert"], paused["by"]) == (raised["alert"], "rn1")
    finally:
        stop(first)
    assert first.returncode == 0
    time.sleep(max(0.0, (parse_ts(paused["until"]) - SystemClock().now_us()) / 1e6) + 0.5)

    second = start(second_events)
    try:
        assert second.stdout is not None
        resumed = _next(second, "resumed")
    finally:
        stop(second)
    assert second.returncode == 0
    assert (resumed["alert"], resumed["t"]) == (raised["alert"], paused["until"])


def _next(proc: subprocess.Popen[str], state: str, within: float = 60.0) -> dict[str, object]:
    """The next alert line in ``state`` the process prints (others, e.g. the other limits
    the same reading breaks, are passed over). A process that prints none within ``within``
    seconds is killed, so that the test fails instead of waiting for ever."""
    assert proc.stdout is not None
    watchdog = threading.Timer(within, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            d: dict[str, object] = json.loads(line)
            if d["state"] == state:
                return d
    finally:
        watchdog.cancel()
    raise AssertionError(f"no {state} line within {within} s, before the process ended")
