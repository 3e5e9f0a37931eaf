"""``calguard alerts`` and ``calguard ack|pause|reset|override`` as a charge nurse runs them,
against a running monitor (its MQTT alarm sink) through this test's own Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from calguard.alerts.sinks import open_sink
from calguard.drivers.virtual import VirtualDriver

from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts
from tests.people import PASSWORD, add_staff, guard, keyring, token_file

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 10%"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink's state signing key, and the public key `calguard alerts` trusts: in this
    test's own data directory, never the user's."""
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(tmp_path))


async def calguard(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calguard.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_charge_nurse_lists_acknowledges_and_overrides_from_the_command_line(
    broker: Broker, tmp_path: Path
) -> None:
    url_in = "virtual://commands-test"
    broker_url = f"mqtt://127.0.0.1:{broker.port}/calguard/cmd"
    sink = open_sink(broker_url, client_id="alarms-cmd")
    site = tmp_path / "site.toml"
    site.write_text(f'[[drivers]]\nurl = "{url_in}"\n[[sinks]]\nurl = "{broker_url}"\n')
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await add_staff(db)
    # the people's commands find the token of their login here, the monitor its keys
    env = {"CALGUARD_DATA_DIR": str(tmp_path), "CALGUARD_TOKEN_FILE": str(tmp_path / "token")}
    checks = guard(db, keyring(tmp_path))
    async with LiveBay([VirtualDriver(url_in)], sinks=[sink], guard=checks) as bay:
        t = now_ts()
        for event in (
            *admission(t, bed="B2"),
            {"t": t, "type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA},
        ):
            VirtualDriver.put(url_in, event)
        await bay.until(lambda: len(bay.alerts) >= 4 and sink.pending == 0 and sink.connected)
        rate = bay.of("rate-volume")[0]["alert"]
        conc = bay.of("concentration-peripheral")[0]["alert"]

        code, out, err = await calguard("alerts", "--broker", broker_url, "--json")
        assert code == 0, err
        listed = [json.loads(line) for line in out.splitlines()]
        assert [a["priority"] for a in listed] == ["high"] * 3 + ["medium"]  # by priority
        assert {a["alert"] for a in listed} == {a["alert"] for a in bay.alerts}

        code, out, err = await calguard("login", "--user", "charge1", "--password-stdin",
                                        "--db", db, env=env, stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 0 and "logged in as charge1 (charge-nurse)" in out, err
        code, out, err = await calguard("ack", rate, "--site", str(site), env=env)
        assert code == 0 and "by charge1: done" in out, err
        code, out, _ = await calguard("reset", rate, "--broker", broker_url, env=env)
        assert code == 1 and "still holds" in out
        code, out, err = await calguard("login", "--user", "dr7", "--password-stdin",
                                        "--db", db, env=env, stdin=PASSWORD + "\n")  # fmt: skip
        assert code == 0, err
        code, out, _ = await calguard(
            "override", conc, "--reason", "prescriber-approved",
            "--duration", "30 min", "--broker", broker_url, env=env,
        )  # fmt: skip
        assert code == 0, out
        await bay.until(lambda: sink.pending == 0)

        code, out, err = await calguard("alerts", "--broker", broker_url, "--bed", "B2")
        assert code == 0, err
        table = {line.split()[2]: line for line in out.splitlines()[1:]}
        assert "acknowledged" in table[rate] and "overridden" in table[conc]
        code, out, _ = await calguard("alerts", "--broker", broker_url, "--priority", "medium")
        assert len(out.splitlines()) == 2  # the header and the overridden medium alarm

    states = [(a["alert"], a["state"], a.get("by")) for a in bay.alerts]
    assert (rate, "acknowledged", "charge1") in states and (conc, "overridden", "dr7") in states


async def test_no_monitor_listening_is_said_plainly(broker: Broker, tmp_path: Path) -> None:
    logged_in = token_file(keyring(tmp_path), tmp_path / "token", "rn1")
    code, _, err = await calguard(
        "ack", "a-000001", "--token-file", str(logged_in), "--wait", "2",
        "--broker", f"mqtt://127.0.0.1:{broker.port}/nobody",
    )  # fmt: skip
    assert code == 3 and "no monitor answered" in err
