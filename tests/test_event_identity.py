"""Who charted it: a bedside event that can end an alarm counts only from a charting
account allowed to chart it, on that account's own events topic; the account is stamped
on the event and logged with it. Fakes - on the bare events topic, from a pump's account,
from an account not allowed that type, claiming another account, an action on an alarm
sent as an event - are refused with the reason and change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from calguard.alerts.log import AlertLog, session_rows
from calguard.config import load_library
from calguard.config.site import Charting
from calguard.drivers.mqtt import MqttDriver

from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts
from tests.wardnet import PASSWORD_ENV, PREFIX, WardSite, ward_site

CA = "Calcium gluconate 10%"


def calcium(pump: str = "P1", seq: int = 1) -> dict[str, Any]:
    return {"t": now_ts(), "type": "reading", "pump": pump, "rate": "1 ml/h", "drug": CA,
            "status": "infusing", "seq": seq}  # fmt: skip


def patency(**extra: Any) -> dict[str, Any]:
    return {"t": now_ts(), "type": "patency_check", "line": "L1", "result": "blood_return",
            "by": "rn42", **extra}  # fmt: skip


def refusals(bay: LiveBay) -> list[str]:
    return [r.reason or "" for r in bay.records if r.status == "rejected"]


async def without_a_patency_check(bay: LiveBay, send: Any) -> str:
    """An infant, a PIV and calcium running into it with no patency check: the alarm."""
    await bay.until(lambda: bay.monitor.drivers[0].is_open)
    await send("events/chart-b1", admission(now_ts())[:3])  # patient, line, connect
    await send("pumps/P1/telemetry", calcium())
    await bay.until(lambda: bay.of("patency-check-missing", "raised"))
    return str(bay.of("patency-check-missing")[0]["alert"])


# -- on the ward network: the generated accounts and ACL --------------------------------------


async def test_a_charting_accounts_patency_check_clears_the_alarm_and_is_logged_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    site = ward_site(tmp_path)
    monkeypatch.setenv(PASSWORD_ENV, site.credentials["calguard-monitor"])
    async with AlertLog(db_url) as log:
        await log.start_session("live", "who charted it", load_library())
        with site.broker():
            bay = await charted(site, log)
    first, second, third = refusals(bay)
    assert "'chart-sites' may not chart a patency_check (only site_check)" in first
    assert "an action on an alarm (ack) on an events topic" in second
    assert "names the account 'chart-sites'" in third
    _, rows, _ = await session_rows(db_url)
    checks = [r for r in rows if r.event_type == "patency_check" and r.status == "accepted"]
    assert [orjson.loads(r.raw)["account"] for r in checks] == ["chart-b1"]
    assert checks[0].source.endswith(f"#{PREFIX}/events/chart-b1")
    lines = [orjson.loads(r.raw) for r in rows if r.event_type == "line"]
    assert [e["account"] for e in lines] == ["chart-b1"]


async def charted(site: WardSite, log: AlertLog) -> LiveBay:
    """Fakes first, then the charting account's own patency check."""
    async with LiveBay([site.driver()], log=log) as bay:
        alert = await without_a_patency_check(bay, sender(site))
        send = sender(site)
        # an account allowed site checks only; then an ack sent as an event
        await send("events/chart-sites", patency())
        ack = {"t": now_ts(), "type": "ack", "alert": alert, "by": "rn42"}
        await send("events/chart-b1", ack)
        await send("events/chart-b1", patency(account="chart-sites"))  # claims another
        await bay.until(lambda: len(refusals(bay)) == 3)
        assert bay.of("patency-check-missing", "cleared") == []
        assert not [a for a in bay.alerts if a["state"] == "acknowledged"]

        await send("events/chart-b1", patency())
        await bay.until(lambda: bay.of("patency-check-missing", "cleared"))
    return bay


def sender(site: WardSite) -> Any:
    """Publish as the account the topic belongs to (a pump as itself, charting as itself)."""

    async def send(topic: str, payload: object) -> None:
        account = topic.split("/")[1]
        async with site.client(account) as client:
            await client.publish(f"{PREFIX}/{topic}", orjson.dumps(payload), qos=1)

    return send


# -- the driver's own check, on a broker that lets anyone publish anywhere --------------------


async def test_fakes_on_the_bare_topic_or_from_a_pump_account_clear_nothing(
    broker: Broker,
) -> None:
    """Without the ACL anyone may publish anything: the driver still takes an event that
    can end an alarm only from a charting account of the site, on its own topic."""
    url = f"mqtt://{broker.host}:{broker.port}/{PREFIX}"
    driver = MqttDriver(url, client_id="identity-monitor", charting=[Charting("chart-b1")])
    async with LiveBay([driver]) as bay:
        await without_a_patency_check(bay, anyone(broker))
        send = anyone(broker)
        await send("events", patency())  # nobody in particular
        await send("events/P1", patency())  # a pump's account: not a charting account
        await send("events", {"t": now_ts(), "type": "disconnect", "pump": "P1"})
        await send("events", {"t": now_ts(), "type": "reading", "pump": "P1", "rate": "0 ml/h"})
        await bay.until(lambda: len(refusals(bay)) == 4)
        # what cannot end an alarm is still taken from the bare topic
        await send("events", {"t": now_ts(), "type": "patient", "bed": "B1", "weight": "1.1 kg"})
        await bay.until(lambda: len(bay.accepted("patient")) == 2)
    assert bay.of("patency-check-missing", "cleared") == []
    bare, pump, disconnect, reading = refusals(bay)
    assert "a patency_check can end an alarm, so it counts only from a charting account" in bare
    assert "'P1' is not a charting account of this site" in pump
    assert "a disconnect can end an alarm" in disconnect
    assert "a 'reading' event on an events topic" in reading
    assert "account" not in orjson.loads(bay.accepted("patient")[-1].raw)


def anyone(broker: Broker) -> Any:
    async def send(topic: str, payload: object) -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="anyone") as client:
            await client.publish(f"{PREFIX}/{topic}", orjson.dumps(payload), qos=1)

    return send


def test_an_account_in_a_payload_is_never_taken_for_the_sender() -> None:
    """The account is the topic's (the broker's log-in); a reading that names one has it
    taken off, bedside documentation that names another is refused."""
    driver = MqttDriver("mqtt://127.0.0.1:1/w", charting=[Charting("chart-b1")])
    reading = {**calcium(), "account": "chart-b1"}
    (taken,) = driver.translate("w/pumps/P1/telemetry", orjson.dumps(reading))
    assert isinstance(taken.obj, dict) and "account" not in taken.obj
    assert isinstance(taken.raw, bytes) and b"account" not in taken.raw
    (same,) = driver.translate("w/events/chart-b1", orjson.dumps(patency(account="chart-b1")))
    assert same.problem is None and same.obj is not None and same.obj["account"] == "chart-b1"
    (bare,) = driver.translate("w/events", orjson.dumps({**admission(now_ts())[0], "account": "x"}))
    assert bare.problem is not None and "names the account 'x'" in bare.problem
    (deeper,) = driver.translate("w/events/chart-b1/more", orjson.dumps(patency()))
    assert deeper.problem is not None and "unexpected topic" in deeper.problem
