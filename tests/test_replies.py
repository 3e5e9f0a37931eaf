"""Replies tell the truth: each command gets the monitor's verdict on that very command,
and a station never takes a dead monitor for a quiet ward."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from calguard.alerts.sinks import open_sink
from calguard.drivers.virtual import VirtualDriver

from calguard.tokens import write_token
from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts
from tests.people import add_staff, guard, keyring, token, token_file

ROOT = Path(__file__).parent.parent
CA = "Calcium gluconate 10%"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink's state signing key, and the public key `calguard alerts` trusts: in this
    test's own data directory, never the user's."""
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(tmp_path))


async def calguard(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calguard", *args,
        cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_each_refusal_is_its_own_answer_and_a_non_zero_exit(
    broker: Broker, tmp_path: Path
) -> None:
    url_in = "virtual://replies"
    broker_url = f"mqtt://127.0.0.1:{broker.port}/calguard/replies"
    sink = open_sink(broker_url, client_id="alarms-replies")
    db, keys = f"sqlite:///{tmp_path / 'log.sqlite3'}", keyring(tmp_path)
    await add_staff(db)
    rn1 = str(token_file(keys, tmp_path / "rn1.token", "rn1"))
    stale = tmp_path / "stale.token"  # a login of yesterday
    write_token(stale, token(keys, "rn1", ttl_s=3600, now_s=time.time() - 86400))
    async with LiveBay([VirtualDriver(url_in)], sinks=[sink], guard=guard(db, keys)) as bay:
        t = now_ts()
        for event in (
            *admission(t, bed="B4"),
            {"t": t, "type": "reading", "pump": "P1", "rate": "180 ml/h", "drug": CA},
        ):
            VirtualDriver.put(url_in, event)
        await bay.until(lambda: bool(bay.of("rate-volume")) and sink.connected)
        rate = bay.of("rate-volume")[0]["alert"]

        expired = await calguard("ack", rate, "--token-file", str(stale), "--broker", broker_url)
        words = await calguard(
            "pause", rate, "--token-file", rn1, "--duration", "ninety seconds",
            "--broker", broker_url,
        )  # fmt: skip
        too_long = await calguard(
            "pause", rate, "--token-file", rn1, "--duration", "3 h", "--broker", broker_url
        )
        unknown = await calguard("ack", "a-999999", "--token-file", rn1, "--broker", broker_url)
        fine = await calguard("ack", rate, "--token-file", rn1, "--broker", broker_url)

    assert expired[0] == 1 and "refused: token expired at" in expired[1]
    assert words[0] == 1 and "ninety seconds" in words[1]
    assert too_long[0] == 1 and "2 min" in too_long[1]  # in the user's units
    assert "us" not in too_long[1].split("refused:", 1)[1].split()
    assert unknown[0] == 1 and "a-999999" in unknown[1]
    reasons = [r[1].split("refused:", 1)[1] for r in (expired, words, too_long, unknown)]
    assert len(set(reasons)) == 4  # no reply repeats an earlier one
    assert fine[0] == 0 and "done" in fine[1] and "refused" not in fine[1]
    acked = [a for a in bay.alerts if a["state"] == "acknowledged"]
    assert [(a["alert"], a["by"]) for a in acked] == [(rate, "rn1")]


async def test_alerts_never_shows_a_dead_monitor_as_a_quiet_ward(broker: Broker) -> None:
    prefix_url = f"mqtt://127.0.0.1:{broker.port}/calguard/presence"
    code, out, err = await calguard("alerts", "--broker", prefix_url)
    assert code == 3 and out == ""
    assert "no monitor publishes alarms under 'calguard/presence'" in err

    sink = open_sink(prefix_url, client_id="alarms-presence")
    async with LiveBay([VirtualDriver("virtual://presence")], sinks=[sink]) as bay:
        await bay.until(lambda: sink.connected)
        code, out, err = await calguard("alerts", "--broker", prefix_url)
        assert code == 0, err
        assert "no active alarms (monitor online under 'calguard/presence')" in out

    code, out, err = await calguard("alerts", "--broker", prefix_url)
    assert code == 3 and out == ""
    assert "monitor offline under 'calguard/presence' since 20" in err

    code, out, err = await calguard("alerts", "--broker", prefix_url.replace("presence", "presnce"))
    assert code == 3 and "'calguard/presnce'" in err
