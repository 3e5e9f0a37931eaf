"""``calguard alerts`` and ``calguard ack|pause|reset|override`` as a charge nurse runs them,
against a running monitor (its MQTT alarm sink) through this test's own Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from calguard.alerts.sinks import open_sink
from calguard.drivers.virtual import VirtualDriver

from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 10%"


async def calguard(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calguard.cli",
        *args,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
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
    async with LiveBay([VirtualDriver(url_in)], sinks=[sink]) as bay:
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

        code, out, err = await calguard("ack", rate, "--by", "charge1", "--site", str(site))
        assert code == 0 and "done" in out, err
        code, out, _ = await calguard("reset", rate, "--by", "charge1", "--broker", broker_url)
        assert code == 1 and "still holds" in out
        code, out, _ = await calguard(
            "override", conc, "--by", "dr7", "--reason", "prescriber-approved",
            "--duration", "30 min", "--broker", broker_url,
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


async def test_no_monitor_listening_is_said_plainly(broker: Broker) -> None:
    code, _, err = await calguard(
        "ack", "a-000001", "--by", "rn1", "--wait", "2",
        "--broker", f"mqtt://127.0.0.1:{broker.port}/nobody",
    )  # fmt: skip
    assert code == 3 and "no monitor answered" in err
