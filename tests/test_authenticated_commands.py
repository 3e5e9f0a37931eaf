"""Commands carry proof: a live monitor, its MQTT alarm sink on this test's own Mosquitto,
and stations that publish commands with tokens (or without). The role policy decides by
the token's account, the account is what is recorded, every refusal names its cause and
leaves the alarm as it was, and an outage of the accounts database locks no one out."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import jwt
import orjson
import pytest
from calguard.alerts.accounts import Accounts
from calguard.alerts.sinks import open_sink
from calguard.config import builtin_text, load_library, parse_library
from calguard.drivers.virtual import VirtualDriver

from calguard.replay import replay
from calguard.tokens import MAX_TTL_S, issue
from tests.brokers import Broker
from tests.live import LiveBay, admission, calguard_process, now_ts
from tests.people import QUICK, STAFF, add_staff, guard, keyring, tampered, token
from tests.support import Bedside

CA = "Calcium gluconate 10%"
Send = Callable[..., Awaitable[dict[str, Any]]]


@contextlib.asynccontextmanager
async def station(broker: Broker, prefix: str) -> AsyncIterator[Send]:
    """A central station: ``await send(action=..., alert=..., token=...)`` publishes one
    command and returns the monitor's verdict on it."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="station") as client:
        await client.subscribe(f"{prefix}/commands/results", qos=1)
        messages = aiter(client.messages)

        async def send(**command: object) -> dict[str, Any]:
            ident = uuid.uuid4().hex[:8]
            body = orjson.dumps({"id": ident, **command})
            await client.publish(f"{prefix}/commands", body, qos=1)
            async with asyncio.timeout(15):
                while True:
                    result: dict[str, Any] = orjson.loads((await anext(messages)).payload)  # type: ignore[arg-type]
                    if result.get("id") == ident:
                        return result

        yield send


@contextlib.asynccontextmanager
async def ward(broker: Broker, tmp_path: Path, name: str) -> AsyncIterator[tuple[LiveBay, str]]:
    """A live monitor as ``calguard run`` has it (actions only as signed commands), with an
    infant whose calcium runs at 180 ml/h: ``(bay, prefix)``, once its alarms are raised."""
    feed, prefix = f"virtual://{name}", f"calguard/{name}"
    sink = open_sink(f"mqtt://127.0.0.1:{broker.port}/{prefix}", client_id=f"alarms-{name}")
    checks = guard(f"sqlite:///{tmp_path / 'log.sqlite3'}", keyring(tmp_path))
    async with LiveBay(
        [VirtualDriver(feed)], sinks=[sink], guard=checks, file_actions=False
    ) as bay:
        t = now_ts()
        for event in (
            *admission(t),
            {"t": t, "type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA},
        ):
            VirtualDriver.put(feed, event)
        await bay.until(lambda: bay.of("rate-volume") and bay.of("rate-mass") and sink.connected)
        await asyncio.wait_for(checks.ready.wait(), 15)
        yield bay, prefix


def alarm_state(bay: LiveBay, alert: str) -> str:
    alarms = bay.monitor.pipeline.alarms
    assert alarms is not None
    return alarms.alarms[alert].state


async def test_a_nurse_may_not_override_a_high_alarm_and_a_charge_nurse_may(
    broker: Broker, tmp_path: Path
) -> None:
    await add_staff(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    keys = keyring(tmp_path)
    async with ward(broker, tmp_path, "override") as (bay, prefix):
        alert = bay.of("rate-volume")[0]["alert"]
        override = {"action": "override", "alert": alert, "reason": "prescriber-approved"}
        async with station(broker, prefix) as send:
            nurse = await send(**override, token=token(keys, "rn1"))
            assert alarm_state(bay, alert) == "active"
            charge = await send(**override, token=token(keys, "charge1"))
        await bay.until(lambda: bay.of("rate-volume", "overridden"))
    assert nurse["ok"] is False
    assert nurse["reason"] == (
        "role nurse may not override a high rate-volume alarm "
        "(the library allows charge-nurse, prescriber)"
    )
    assert charge["ok"] is True
    (overridden,) = bay.of("rate-volume", "overridden")
    assert overridden["by"] == "charge1"
    actions = [r for r in bay.records if r.event_type == "override"]
    assert [r.status for r in actions] == ["rejected", "accepted"]
    logged = [json.loads(r.raw) for r in actions]
    assert [(a["by"], a["role"]) for a in logged] == [("rn1", "nurse"), ("charge1", "charge-nurse")]
    assert not any("token" in r.raw for r in bay.records)  # a credential is never logged

    # the log of the live session, replayed, gives the same verdicts and the same lines
    inputs = "".join(r.raw + "\n" for r in bay.records if r.event_type != "wire")
    out = io.StringIO()
    summary = await replay(
        io.BytesIO(inputs.encode()), source="export", library=load_library(), out=out
    )
    live = [json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in bay.alerts]
    assert out.getvalue().splitlines() == live
    assert summary.counts["rejected"] == 1


async def test_a_key_rotation_while_the_monitor_runs_ends_no_ones_login(
    broker: Broker, tmp_path: Path
) -> None:
    await add_staff(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    keys = keyring(tmp_path)
    before = token(keys, "rn1")  # logged in before the rotation
    async with ward(broker, tmp_path, "rotation") as (bay, prefix):
        volume, mass = bay.of("rate-volume")[0]["alert"], bay.of("rate-mass")[0]["alert"]
        keys.rotate(time.time())  # calguard keys rotate
        after = token(keys, "charge1")  # signed with the new key, which the monitor has not read
        assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
        async with station(broker, prefix) as send:
            old = await send(action="ack", alert=volume, token=before)
            new = await send(action="ack", alert=mass, token=after)
    assert old["ok"] is True and new["ok"] is True, (old, new)
    acked = {a["alert"]: a["by"] for a in bay.alerts if a["state"] == "acknowledged"}
    assert acked == {volume: "rn1", mass: "charge1"}


async def test_commands_without_valid_proof_are_refused_and_the_alarm_stays(
    broker: Broker, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await add_staff(db, {**STAFF, "rn2": "nurse"})
    async with Accounts(db, hasher=QUICK) as accounts:
        await accounts.disable("rn2")
    keys = keyring(tmp_path)
    now = time.time()
    rotated_out = token(keys, "rn1", ttl_s=MAX_TTL_S)
    keys.rotate(now + 1)
    keys.rotate(now + MAX_TTL_S + 60)  # the first key is deleted: no token of it is valid
    tokens = {
        "no token: log in first": None,
        "token expired at 20": token(keys, "rn1", ttl_s=600, now_s=now - 3600),
        "signature invalid": tampered(token(keys, "rn1"), role="charge-nurse"),
        "signed by an unknown key": rotated_out,
        "account rn2 is disabled": issue(keys, "rn2", "nurse", ttl_s=600, now_s=now),
        "account ghost is not known to this monitor": issue(
            keys, "ghost", "nurse", ttl_s=600, now_s=now
        ),
        "account rn1 is now nurse, not prescriber": issue(
            keys, "rn1", "prescriber", ttl_s=600, now_s=now
        ),
    }
    async with ward(broker, tmp_path, "refusals") as (bay, prefix):
        alert = bay.of("rate-volume")[0]["alert"]
        async with station(broker, prefix) as send:
            verdicts = {
                why: await send(action="ack", alert=alert, token=t) for why, t in tokens.items()
            }
            typed = await send(action="ack", alert=alert, by="made-up-user-123")
        # a device or an app on the events topic cannot act at all, whatever it claims
        VirtualDriver.put("virtual://refusals", {"t": now_ts(), "type": "ack", "alert": alert,
                                                 "by": "rn1", "role": "charge-nurse"})  # fmt: skip
        await bay.until(
            lambda: "from a device's or a file's input" in (bay.records[-1].reason or "")
        )
        assert alarm_state(bay, alert) == "active"
    for why, verdict in verdicts.items():
        assert verdict["ok"] is False and why in verdict["reason"], (why, verdict)
    assert typed["ok"] is False and "calguard login" in typed["reason"]
    assert not any(a["state"] == "acknowledged" for a in bay.alerts)
    # each refusal is logged with its reason, and without the token
    refused = [r for r in bay.records if r.status == "rejected"]
    assert len(refused) == len(tokens) + 2
    assert all(r.reason for r in refused)
    # ... as refused actions, which the log keeps in the audit chain ("action-refused")
    assert {r.event_type for r in refused} == {"ack"}
    assert not any(t and t in r.raw for r in refused for t in tokens.values())


async def test_an_account_database_outage_locks_no_one_out(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An account added after the start is looked up on its first command, which then
    counts; once the
    database cannot be read the accounts as last read decide, and the log says so."""
    db_path = tmp_path / "log.sqlite3"
    await add_staff(f"sqlite:///{db_path}")
    keys = keyring(tmp_path)
    async with ward(broker, tmp_path, "outage") as (bay, prefix):
        high, other = bay.of("rate-volume")[0]["alert"], bay.of("rate-mass")[0]["alert"]
        await add_staff(f"sqlite:///{db_path}", {"rn9": "nurse"})
        rn9 = issue(keys, "rn9", "nurse", ttl_s=600, now_s=time.time())
        checks = bay.monitor.guard
        assert checks is not None
        async with station(broker, prefix) as send:
            # looked up before it is checked: a new nurse's first command counts
            first = await send(action="ack", alert=high, token=rn9)
            assert first == {"id": first["id"], "ok": True}

            os.rename(db_path, tmp_path / "moved.sqlite3")  # the database is gone
            with caplog.at_level(logging.WARNING, logger="calguard.guard"):
                ghost = issue(keys, "ghost", "nurse", ttl_s=600, now_s=time.time())
                await send(action="ack", alert=other, token=ghost)  # asks for a fresh read
                await bay.until(lambda: checks.problem is not None)
                nurse = await send(action="ack", alert=other, token=token(keys, "rn1"))
    assert nurse == {"id": nurse["id"], "ok": True}
    acked = {a["alert"]: a["by"] for a in bay.alerts if a["state"] == "acknowledged"}
    assert acked == {high: "rn9", other: "rn1"}
    said = [r.getMessage() for r in caplog.records]
    assert any("commands are checked against the accounts as read at" in m for m in said)
    assert any(m.startswith("command by rn1 checked against the accounts as read at") for m in said)


def test_the_librarys_permissions_decide_by_the_role_an_action_carries() -> None:
    """As a replay applies them: the role of a logged command decides as it did live; a
    file's action without a role (a training script, an old replay file) applies as ever."""
    bay = Bedside(alarms=True)
    bay.admit("08:00", line="L1", pump="P1", bed="B1")
    bay.admit("08:00", line="A1", pump="P2", bed="B2", kind="arterial")
    bay.reading("08:01", rate="180 ml/h")  # high rate alarms, medium concentration
    bay.reading("08:01", pump="P2", rate="1 ml/h")  # line-arterial (high)
    alert = {a["rule"]: a["alert"] for a in bay.alerts if a["state"] == "raised"}

    def verdict(kind: str, rule: str, role: str | None, **fields: Any) -> str | None:
        fields |= {"reason": "prescriber-approved"} if kind == "override" else {}
        if role is not None:
            fields["role"] = role
        bay.send("08:02", kind, alert=alert[rule], by="someone", **fields)
        return bay.records[-1].reason

    assert verdict("ack", "rate-mass", "pharmacist") == (
        "role pharmacist may not acknowledge a high rate-mass alarm "
        "(the library allows charge-nurse, nurse, prescriber)"
    )
    assert verdict("ack", "rate-mass", "nurse") is None
    assert "role nurse may not override a medium" in (
        verdict("override", "concentration-peripheral", "nurse") or ""
    )
    assert verdict("override", "concentration-peripheral", "charge-nurse") is None
    # the library's exception: only a prescriber overrides calcium into an arterial line
    assert "(the library allows prescriber)" in (
        verdict("override", "line-arterial", "charge-nurse") or ""
    )
    assert verdict("override", "line-arterial", "prescriber") is None
    assert verdict("pause", "rate-volume", None) is None  # no role: not checked
    assert "one of nurse, charge-nurse" in (verdict("ack", "rate-weight", "surgeon") or "")


def test_the_permissions_are_checked_when_the_library_loads() -> None:
    text = builtin_text()
    broken = text.replace(
        'ack = ["nurse", "charge-nurse", "prescriber"]', 'ack = ["nurse", "night-nurse"]'
    ).replace(
        "[alarms.permissions.rules.line-arterial]", "[alarms.permissions.rules.line-arterail]"
    )
    problems = {p.key: p.message for p in parse_library(broken, "lib.toml").problems}
    assert set(problems) == {"alarms.permissions.ack", "alarms.permissions.rules.line-arterail"}
    assert "'night-nurse': the roles are nurse, charge-nurse" in problems["alarms.permissions.ack"]
    assert "no rule has this id" in problems["alarms.permissions.rules.line-arterail"]
    # a library written before accounts existed takes the built-in roles, and says so
    older = parse_library(text[: text.index("\n# Who may act on an alarm")], "older.toml")
    assert older.library is not None
    assert older.library.alarms.permissions == load_library().alarms.permissions
    assert [w.key for w in older.warnings] == ["alarms.permissions"]


def test_calguard_run_refuses_an_action_in_its_inputs(tmp_path: Path) -> None:
    """Live, a file or a device that writes an ``ack`` (whatever ``by`` and ``role`` it
    claims) acts on nothing: the refusal is logged, the alarm stays."""
    events, db = tmp_path / "bedside.jsonl", tmp_path / "run.sqlite3"
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\nname = "test ward"\ndb = "sqlite:///{db}"\n\n'
        f'[[drivers]]\nurl = "replay://{events}"\npoll = 0.05\n'
    )
    t = now_ts()
    lines = [*admission(t), {"t": t, "type": "reading", "pump": "P1", "rate": "180 ml/h",
                             "drug": CA}]  # fmt: skip
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    proc = calguard_process("run", "--site", str(site), env={"CALGUARD_DATA_DIR": str(tmp_path)})
    watchdog = threading.Timer(60, proc.kill)  # a monitor that says nothing fails the test
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        raised = json.loads(proc.stdout.readline())
        ack = {"t": now_ts(), "type": "ack", "alert": raised["alert"], "by": "rn1",
               "role": "charge-nurse"}  # fmt: skip
        with events.open("a") as out:
            out.write(json.dumps(ack) + "\n")
        refusal = next(line for line in proc.stderr if "rejected" in line)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "only as a command with a signed token" in refusal
    assert proc.returncode == 0 and '"acknowledged"' not in out


def test_typing_who_acts_is_refused_by_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "calguard", "ack", "a-000001", "--by", "rn42"],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 2 and "--by is no longer taken" in done.stderr
    assert "calguard login" in done.stderr
