"""A published library reaches the running monitors of its unit (issue #14, parts 4 and 5).

The engine takes another library between two inputs and evaluates the ward again under it:
no alert is lost (what still holds stays active under its id), and every alert line from
then on carries the new version. A live monitor learns of a publication from its log
within its poll, logs the switch as an input (a replay of the log switches too and gives
the same lines), says which library it runs in its retained MQTT presence, and raises
``library-unapproved`` while it runs one no pharmacist approved. ``calguard run`` refuses
to start on such a library unless told otherwise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from calguard.alerts.log import AlertLog, session_rows
from calguard.alerts.signed_state import load_public_key, public_key_file, unseal
from calguard.alerts.sinks import open_sink
from calguard.config.loader import builtin_text, parse_library
from calguard.drivers.base import Inbound
from calguard.drivers.clock import SystemClock
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.errors import EventError
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_ts, parse_ts

from calguard.app import Monitor
from calguard.library_watch import LibraryWatch, switch_input
from calguard.pharmacy import Person, Pharmacy, Unit
from tests.brokers import Broker
from tests.live import admission, now_ts
from tests.support import Bedside, us

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 20 mg/ml"
# the unit ran a looser rate limit, never approved; the pharmacy publishes the reference's
# limit with a stricter mass limit (a library of its own, not the built-in one)
LOOSE = builtin_text().replace('limit = "2 ml/min"', 'limit = "3 ml/min"')
STRICT = builtin_text().replace('limit = "100 mg/min"', 'limit = "90 mg/min"')
ANA, BEN = Person("ana", "pharmacist"), Person("ben", "pharmacist")


def library(text: str, source: str = "unit.toml") -> Library:
    found = parse_library(text, source).library
    assert found is not None
    return found


# -- the engine: another library between two inputs ------------------------------------------


def _running_at_150_ml_h() -> Bedside:
    """A 1 kg neonate with calcium gluconate 20 mg/ml at 150 ml/h (2.5 ml/min) on a PIV."""
    bay = Bedside(library(LOOSE), alarms=True)
    bay.admit("08:00")
    bay.reading("08:01", rate="150 ml/h", drug=CA)
    return bay


def test_a_swap_keeps_what_still_holds_and_raises_what_now_holds_with_the_new_version() -> None:
    bay = _running_at_150_ml_h()
    loose, strict = library(LOOSE), library(STRICT)
    before = {a.rule: a.alert for a in bay.engine.active.values()}
    assert "rate-volume" not in before
    assert {"rate-weight", "concentration-peripheral"} <= set(before)
    at = us("08:01:30")  # before anything else falls due (a silent pump at 08:02)
    raw = orjson.dumps(switch_input(strict, loose, at))
    lines = [tr.to_dict() for tr in bay.pipeline.switch(strict, raw=raw, source="t", t=at)]
    assert [(x["state"], x["rule"], x["library"]) for x in lines] == [
        ("raised", "rate-volume", strict.version)
    ]
    assert lines[0]["t"] == "2026-11-21T08:01:30Z" and lines[0]["limit"] == "2 ml/min"
    after = {a.rule: a.alert for a in bay.engine.active.values()}
    assert {rule: after[rule] for rule in before} == before  # the same alerts, the same ids
    assert all(tr.library == strict.version for tr in bay.engine.take())
    later = bay.clock("09:05")  # the site check falls due: a line of the new library
    assert later and {x["library"] for x in later} == {strict.version}
    assert bay.records[-2].event_type == "library" and bay.records[-2].status == "accepted"


def test_a_looser_library_clears_what_no_longer_holds_under_the_new_version() -> None:
    bay = Bedside(library(STRICT), alarms=False)
    bay.admit("08:00")
    bay.reading("08:01", rate="150 ml/h", drug=CA)
    assert "rate-volume" in bay.active_rules()
    loose, strict = library(LOOSE), library(STRICT)
    at = us("08:01:30")
    raw = orjson.dumps(switch_input(loose, strict, at))
    lines = [tr.to_dict() for tr in bay.pipeline.switch(loose, raw=raw, source="t", t=at)]
    assert [(x["state"], x["rule"], x["library"]) for x in lines] == [
        ("cleared", "rate-volume", loose.version)
    ]


def test_a_longer_dose_window_is_refused_and_nothing_changes() -> None:
    bay = _running_at_150_ml_h()
    longer = library(LOOSE.replace('window = "24 h"', 'window = "48 h"'))
    with pytest.raises(EventError, match="restart the monitor"):
        bay.engine.swap(longer, us("08:10"))
    assert bay.engine.library.version == library(LOOSE).version


# -- replayable: the switch is an input of the log ----------------------------------------------


class StepClock:
    """A monitor clock the test moves."""

    speed = 1.0

    def __init__(self, t: str) -> None:
        self.us = parse_ts(t)

    def now_us(self) -> int:
        return self.us


async def test_a_live_switch_replays_from_the_exported_session_to_the_same_lines(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    (tmp_path / "loose.toml").write_text(LOOSE)
    loose, strict = library(LOOSE, str(tmp_path / "loose.toml")), library(STRICT)
    clock, live = StepClock("2026-11-21T08:00:00Z"), []
    async with AlertLog(url) as log:
        await log.start_session("live", "test", loose, site="NICU")
        monitor = Monitor(
            loose, [], clock=clock, log=log, outputs=[lambda _, line: live.append(line)],
            approved=False,
        )  # fmt: skip
        monitor._report_unapproved(True)  # as its run() does at the start

        def arrive(event: dict[str, object]) -> None:
            clock.us += 1_000_000
            event = {"t": format_ts(clock.us), **event}
            monitor._process(Inbound("mqtt://b/w#events", orjson.dumps(event), event))

        for event in admission("2026-11-21T08:00:00Z"):
            arrive({k: v for k, v in event.items() if k != "t"})
        arrive({"type": "reading", "pump": "P1", "rate": "150 ml/h", "drug": CA, "seq": 1})
        clock.us += 5_000_000
        assert monitor.switch_library(strict)
        arrive({"type": "reading", "pump": "P1", "rate": "130 ml/h", "drug": CA, "seq": 2})
        await log.flush()
    assert any(orjson.loads(x)["rule"] == "rate-volume" for x in live)

    env = {**os.environ, "CALGUARD_DATA_DIR": str(tmp_path)}

    def calguard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "calguard", *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    exported = calguard("export", "--db", url)
    assert exported.returncode == 0, exported.stderr
    assert '"type":"library"' in exported.stdout
    replayed = calguard(
        "replay", "-", "--no-db", "--library", str(tmp_path / "loose.toml"), stdin=exported.stdout
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == live
    switched = live.index(next(x for x in live if orjson.loads(x)["library"] == strict.version))
    assert {orjson.loads(x)["library"] for x in live[switched:]} == {strict.version}


# -- live: a publication reaches the running monitor -------------------------------------------


async def _presence(broker: Broker, prefix: str, key_file: Path) -> dict[str, Any]:
    """The monitor's retained presence, checked with its public key."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(f"{prefix}/alerts/status", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert isinstance(message.payload, bytes)
    body = unseal(load_public_key(public_key_file(key_file)), str(message.topic), message.payload)
    assert isinstance(body[1], dict)
    return body[1]


async def test_a_running_monitor_takes_a_publication_mid_stream_and_says_so(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    loose, strict = library(LOOSE), library(STRICT)
    prefix, key_file = "calguard/libswitch", tmp_path / "keys" / "state-ed25519.key"
    sink = open_sink(f"mqtt://127.0.0.1:{broker.port}/{prefix}", signing_key=str(key_file))
    feed = "virtual://library-switch"
    VirtualDriver.forget(feed)
    lines: list[dict[str, Any]] = []
    async with AlertLog(db_url) as log:
        session = await log.start_session("live", "test", loose, site="NICU")
        monitor = Monitor(
            loose,
            [VirtualDriver(feed)],
            clock=SystemClock(),
            log=log,
            outputs=[lambda _, line: lines.append(orjson.loads(line))],
            sinks=[sink],
            library_watch=LibraryWatch(db_url, "NICU", None, interval_s=0.1),
            approved=False,  # as calguard run --allow-unapproved starts it
            file_actions=True,
        )
        running = asyncio.create_task(monitor.run())

        async def until(condition: Any, within: float = 20.0) -> None:
            async with asyncio.timeout(within):
                while not condition():  # noqa: ASYNC110 - the monitor's state, no event
                    await asyncio.sleep(0.02)

        def raised(rule: str) -> bool:
            return any(x["rule"] == rule and x["state"] == "raised" for x in lines)

        sent = 0

        def send(event: dict[str, Any]) -> None:
            nonlocal sent
            VirtualDriver.put(feed, event)
            sent += 1

        for event in admission(now_ts()):
            send(event)
        await until(lambda: raised("library-unapproved") and sink.connected and sink.pending == 0)
        presence = await _presence(broker, prefix, key_file)
        assert presence["online"] and presence["library"] == loose.version

        async def stream() -> None:  # a pump reporting every 20 ms, through the publication
            for seq in range(1, 10_000):
                send({"t": now_ts(), "type": "reading", "pump": "P1", "rate": "150 ml/h",
                      "drug": CA, "status": "infusing", "seq": seq})  # fmt: skip
                await asyncio.sleep(0.02)

        readings = asyncio.create_task(stream())
        await until(lambda: raised("rate-weight"))
        ids = {a.rule: a.alert for a in monitor.engine.active.values()}
        assert "rate-volume" not in ids  # 2.5 ml/min under the unit's 3 ml/min
        async with Pharmacy(db_url) as pharmacy:
            checked, _ = await pharmacy.draft(STRICT, "strict.toml", ANA)
            await pharmacy.approve(checked.version, ANA, ())
            await pharmacy.publish(checked.version, BEN, [Unit("NICU")])
        await until(lambda: raised("rate-volume"))
        await asyncio.sleep(0.2)  # readings after the switch too
        readings.cancel()
        await until(lambda: monitor.processed == sent and sink.pending == 0)
        monitor.stop()
        await running
        presence = await _presence(broker, prefix, key_file)
        await log.flush()
    assert presence["library"] == strict.version and presence["profile"] is None

    first = next(i for i, x in enumerate(lines) if x["library"] == strict.version)
    assert {x["library"] for x in lines[:first]} == {loose.version}
    assert {x["library"] for x in lines[first:]} == {strict.version}  # every line after it
    assert {(x["rule"], x["state"]) for x in lines[first:]} >= {
        ("rate-volume", "raised"),
        ("library-unapproved", "cleared"),
    }
    still = {a.rule: a.alert for a in monitor.engine.active.values()}
    assert {r: still[r] for r in ("rate-weight", "concentration-peripheral")} == {
        r: ids[r] for r in ("rate-weight", "concentration-peripheral")
    }  # not lost, not raised again: the same alerts
    assert monitor.pipeline.counts["rejected"] == 0 and monitor.processed == sent
    _, rows, logged = await session_rows(db_url, session)
    assert [orjson.loads(x) for x in logged] == lines  # every line in the log
    switches = [r for r in rows if r.event_type == "library"]
    assert [(r.status, orjson.loads(r.raw)["version"]) for r in switches] == [
        ("accepted", strict.version)
    ]


# -- calguard run on a library never approved ------------------------------------------------------


def test_calguard_run_refuses_a_library_no_pharmacist_approved(tmp_path: Path) -> None:
    (tmp_path / "unit.toml").write_text(LOOSE)
    site = tmp_path / "site.toml"
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    site.write_text(
        f'[site]\nname = "NICU"\nlibrary = "unit.toml"\ndb = "{db}"\n'
        '[[drivers]]\nurl = "virtual://never-read"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "calguard", "run", "--site", str(site)],
        cwd=ROOT,
        env={**os.environ, "CALGUARD_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert f"the drug library {library(LOOSE).version}" in done.stderr
    assert "is not approved: no pharmacist approved it" in done.stderr
    assert "--allow-unapproved" in done.stderr
