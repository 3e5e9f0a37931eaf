"""A standby takes a unit over: two real ``calguard run`` processes on one PostgreSQL and
one Mosquitto. Killed (``kill -9``), the primary's unit is live again in the standby within
seconds, with the same open alert and no id given twice; paused (SIGSTOP), it is taken over
as well, and once it wakes (SIGCONT) it writes nothing more and stops itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from calguard.alerts.log import AlertLog, normalise_db_url
from calguard.alerts.sinks.base import Delivery, Sink
from calguard.config import load_library
from calguard.monitor.errors import LogError
from calguard.monitor.records import InputRecord
from calguard.monitor.transitions import AlertTransition, Description
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from calguard.lease import EXIT_FENCED, Lease
from tests.brokers import Broker
from tests.netcut import NetCut
from tests.people import add_staff, keyring, token
from tests.test_units_processes import Bedside, Process, hospital, run, wait_for

pytestmark = pytest.mark.postgres

UNIT = "nicu"
TAKEN = "lease taken"


def monitor(config: Path, tmp_path: Path, name: str, *more: str) -> Process:
    """``calguard run`` on the unit, as a host of its own would run it: its own data
    directory (spool, anchors), the hospital's one audit key."""
    env = {
        "CALGUARD_DATA_DIR": str(tmp_path / name),
        "CALGUARD_AUDIT_KEY": str(tmp_path / "audit.key"),
    }
    args = ("run", "--site", str(config), *more)
    return Process(*args, env=env, stderr=tmp_path / f"{name}.log")


async def count_rows(url: str, session: int) -> tuple[int, int]:
    """(inputs, alert transitions) the log holds of ``session``."""
    engine = create_async_engine(normalise_db_url(url))
    q = "SELECT count(*) FROM {} WHERE session_id = :s"
    try:
        async with engine.connect() as conn:
            inputs = (await conn.execute(text(q.format("inputs")), {"s": session})).scalar()
            trs = (await conn.execute(text(q.format("alert_transitions")), {"s": session})).scalar()
    finally:
        await engine.dispose()
    return int(inputs or 0), int(trs or 0)


def rows_of(url: str, session: int) -> tuple[int, int]:
    return asyncio.run(count_rows(url, session))


def session_of(proc: Process) -> int:
    for line in proc.stderr.read_text().splitlines():
        if "(session " in line:
            return int(line.rsplit("(session ", 1)[1].split(")")[0])
    raise AssertionError(f"no session in {proc.stderr}")


def live_within(proc: Process, bedside: Bedside, since: float, within: float = 60) -> float:
    """Seconds from ``since`` until ``proc`` holds the lease and its unit is online."""
    wait_for(lambda: proc.said(TAKEN) and UNIT in bedside.online, within, "the takeover")
    return time.monotonic() - since


class Pumps:
    """P1 runs too fast from the start (a rate alert stays open); P2 steady; every 0.2 s."""

    def __init__(self, bedside: Bedside) -> None:
        self.bedside, self.seq, self._stop = bedside, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.bedside.admit(UNIT)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            self.bedside.reading(UNIT, "P1", self.seq, True)
            self.bedside.reading(UNIT, "P2", self.seq, False)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)


def test_a_standby_takes_over_a_killed_then_a_paused_primary(
    tmp_path: Path, pg_url: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALGUARD_AUDIT_KEY", str(tmp_path / "audit.key"))  # the accounts' too
    config = hospital(tmp_path / "hospital.toml", pg_url, broker.port, (UNIT,))
    with config.open("a") as more:  # the station's way in: alarm lines out, commands in
        more.write(f'[[units.sinks]]\nurl = "mqtt://127.0.0.1:{broker.port}/calguard/{UNIT}"\n')
    asyncio.run(add_staff(pg_url))
    rn1 = token(keyring(tmp_path / "first"), "rn1")
    for host in ("second", "third"):  # the hospital's token keys, on every monitor's host
        shutil.copytree(tmp_path / "first" / "keys", tmp_path / host / "keys")
    bedside = Bedside(broker.port)
    pumps = Pumps(bedside)
    procs: list[Process] = []
    try:
        first = monitor(config, tmp_path, "first")
        procs.append(first)
        live_within(first, bedside, time.monotonic())
        second = monitor(config, tmp_path, "second")
        procs.append(second)
        wait_for(lambda: second.said("waiting as its standby"), 60, "the standby waiting")
        pumps.start()
        wait_for(lambda: any('"rule":"rate-volume' in x for x in first.alert_lines), 60, "alert")
        volume = next(json.loads(x) for x in first.alert_lines if '"rule":"rate-volume' in x)
        bedside.publish(
            f"calguard/{UNIT}/commands",
            {"id": "c1", "action": "ack", "alert": volume["alert"], "token": rn1},
        )
        acked = f'"state":"acknowledged","alert":"{volume["alert"]}"'
        wait_for(lambda: any(acked in x for x in first.alert_lines), 60, "the acknowledgement")
        time.sleep(1)

        # kill -9: the standby is live within seconds, with the alert still open
        bedside.online.discard(UNIT)
        killed = time.monotonic()
        first.process.send_signal(signal.SIGKILL)
        first.stop()
        took = live_within(second, bedside, killed)
        print(f"takeover after kill -9: {took:.1f} s")

        # SIGSTOP: a third monitor takes over from the paused one
        third = monitor(config, tmp_path, "third")
        procs.append(third)
        wait_for(lambda: third.said("waiting as its standby"), 60, "the next standby")
        time.sleep(1)
        bedside.online.discard(UNIT)
        paused = time.monotonic()
        second.process.send_signal(signal.SIGSTOP)
        took_paused = live_within(third, bedside, paused)
        print(f"takeover of a paused primary: {took_paused:.1f} s")
        before = rows_of(pg_url, session_of(second))
        lines_before = len(second.lines)
        time.sleep(2)  # readings keep coming: the paused one has them waiting on its socket
        second.process.send_signal(signal.SIGCONT)
        status, err = second.stop(signal.SIGCONT)
        assert status == EXIT_FENCED, err[-3000:]
        assert "FENCED" in err
        assert rows_of(pg_url, session_of(second)) == before  # nothing written once awake
        assert len(second.lines) == lines_before  # nor said
        time.sleep(1)
        pumps.stop()
        status, err = third.stop()
        assert status == 0, err[-3000:]
    except BaseException:
        for proc in procs:  # what they said, to tell why
            print(f"--- {proc.stderr.name}:\n{proc.stderr.read_text()[-2500:]}")
            print(*proc.alert_lines[-8:], sep="\n")
        raise
    finally:
        pumps.stop()
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGCONT)
                proc.stop(signal.SIGKILL)
        bedside.close()

    lines = [json.loads(x) for p in procs for x in p.alert_lines]
    raised = [x["alert"] for x in lines if x["state"] == "raised"]
    assert len(raised) == len(set(raised))  # no id given twice
    later = [json.loads(x) for p in procs[1:] for x in p.alert_lines]
    assert not [x for x in later if x["alert"] == volume["alert"]]  # acknowledged: kept so
    subjects = [(x["rule"], x.get("pump")) for x in lines if x["state"] == "raised"]
    assert ("rate-volume", "P1") in subjects  # P1 too fast from the start, all along:
    assert len(subjects) == len(set(subjects))  # each condition raised once, its id kept
    anchors = str(tmp_path / "third" / "audit" / "anchors")
    run(
        "audit",
        "verify",
        "--db",
        pg_url,
        "--audit-key",
        str(tmp_path / "audit.key"),
        "--anchors",
        anchors,
    )


# -- the lease itself, in one process ----------------------------------------------------------


class Recorded(Sink):
    """A sink that keeps what it was given to publish."""

    scheme = "recorded"

    def __init__(self) -> None:
        super().__init__("recorded://station")
        self.published: list[str] = []

    async def _deliver(self, item: Delivery) -> None:
        self.published.append(item.line)


def delivery(n: int) -> Delivery:
    tr = AlertTransition(
        n, "raised", f"a-nicu-{n:06d}", "rate-volume", "high", Description("x"), "v"
    )
    return Delivery(tr, tr.to_json())


async def test_a_taken_lease_fences_its_old_holders_commits_and_alarm_lines(pg_url: str) -> None:
    fenced: list[str] = []
    library = load_library()
    async with (
        Lease(pg_url, UNIT, ttl=2.0, renew=0.5, margin=0.5) as old,
        Lease(pg_url, UNIT, ttl=2.0, renew=0.5, margin=0.5) as new,
        AlertLog(pg_url) as log,
    ):
        old.on_fenced = fenced.append
        await old.acquire()
        sink = Recorded()
        sink.may_publish = old.valid
        log.fence_with(old.check)
        session = await log.start_session("live", "test", library, site=UNIT)
        log.add_input(InputRecord.from_raw(b'{"type":"x"}', "test", "rejected", t_us=1))
        await log.flush()
        delivering = asyncio.create_task(sink.run())
        sink.submit(delivery(1))
        await asyncio.sleep(0.3)
        assert sink.published and not fenced  # the holder writes and publishes
        # it stops renewing (paused, cut off): its lines wait, then the standby takes over
        await asyncio.sleep(old.ttl - old.margin)
        sink.submit(delivery(2))
        await asyncio.wait_for(new.acquire(), 30)
        assert new.epoch == (old.epoch or 0) + 1
        log.add_input(InputRecord.from_raw(b'{"type":"y"}', "test", "rejected", t_us=2))
        with contextlib.suppress(LogError):
            await log.flush()  # refused in its transaction: it goes to the local spool
        delivering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivering
    assert len(sink.published) == 1  # the line after the lease lapsed was never published
    assert fenced and "FENCED" in fenced[0]
    assert (await count_rows(pg_url, session))[0] == 1  # the second input was not written


def test_a_primary_cut_off_from_the_log_is_taken_over_and_stops_once_it_is_back(
    tmp_path: Path, pg_url: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALGUARD_AUDIT_KEY", str(tmp_path / "audit.key"))
    config = hospital(tmp_path / "hospital.toml", pg_url, broker.port, (UNIT,))
    with config.open("a") as more:
        more.write(f'[[units.sinks]]\nurl = "mqtt://127.0.0.1:{broker.port}/calguard/{UNIT}"\n')
    host, port = pg_url.split("@", 1)[1].split("/", 1)[0].split(":")
    link = NetCut(host, int(port))
    through = pg_url.replace(f"{host}:{port}", f"127.0.0.1:{link.port}")
    bedside = Bedside(broker.port)
    pumps = Pumps(bedside)
    first = monitor(config, tmp_path, "first", "--db", through)
    procs = [first]
    try:
        live_within(first, bedside, time.monotonic())
        second = monitor(config, tmp_path, "second")
        procs.append(second)
        wait_for(lambda: second.said("waiting as its standby"), 60, "the standby waiting")
        pumps.start()
        wait_for(lambda: any('"rule":"rate-volume' in x for x in first.alert_lines), 60, "alert")
        time.sleep(1)
        bedside.online.discard(UNIT)
        cut = time.monotonic()
        link.cut()
        print(f"takeover of a primary cut off: {live_within(second, bedside, cut):.1f} s")
        wait_for(lambda: first.said("not known to hold"), 30, "the primary holding its sinks")
        # the standby connected with the unit's client ids, so the broker dropped the old
        # primary; held off the wire without its lease, it does not take the sessions back
        # (two monitors would otherwise kick each other off in turn, readings split between)
        wait_for(lambda: first.said("held off the wire"), 30, "the primary held off the broker")
        time.sleep(3)
        assert not second.said("lost the broker"), "the old primary took a session back"
        before = rows_of(pg_url, session_of(first))
        link.mend()
        status, err = first.stop(signal.SIGCONT)  # no signal that matters: it stops itself
        assert status == EXIT_FENCED, err[-3000:]
        assert rows_of(pg_url, session_of(first)) == before  # back, it wrote nothing more
        pumps.stop()
        assert second.stop()[0] == 0
    finally:
        pumps.stop()
        for proc in procs:
            if proc.process.poll() is None:
                proc.stop(signal.SIGKILL)
        link.close()
        bedside.close()
