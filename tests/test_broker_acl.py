"""The broker's accounts and access list as `calguard broker-config` makes them from the
site config, on a real Mosquitto started with the generated files: every device and app
publishes only where it belongs, and nobody gets in without an account."""

from __future__ import annotations

import argparse
import asyncio
import stat
from pathlib import Path

import aiomqtt
import pytest
from calguard.monitor.errors import ConfigError

from calguard import broker_config
from calguard.site import load_site
from tests.wardnet import PREFIX, WardSite, ward_site

#: topics the monitor reads: where a device's message would reach it
MONITOR_READS = ("events", "events/+", "commands", "pumps/+/telemetry", "alerts/#")


async def only_the_marker_arrives(
    site: WardSite, account: str, forbidden: list[str], marker: str
) -> list[str]:
    """``account`` publishes on each ``forbidden`` topic, then on ``marker`` (one it may
    write); the monitor's account, subscribed to all it reads, sees what got through.
    Mosquitto handles one connection's messages in order: once the marker is there, any
    forbidden message that got through would be there too."""
    async with site.client("calguard-monitor") as monitor:
        for topic in MONITOR_READS:
            await monitor.subscribe(f"{PREFIX}/{topic}", qos=1)
        async with site.client(account) as device:
            for topic in [*forbidden, marker]:
                await device.publish(f"{PREFIX}/{topic}", b'{"t":"x"}', qos=1, retain=True)
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for message in monitor.messages:
                seen.append(str(message.topic).removeprefix(f"{PREFIX}/"))
                if seen[-1] == marker:
                    return seen
    raise AssertionError("unreachable")


async def test_a_pump_writes_only_its_own_telemetry_and_presence(tmp_path: Path) -> None:
    site = ward_site(tmp_path)
    with site.broker():
        forbidden = ["events", "events/P1", "commands", "pumps/P2/telemetry", "alerts/active/B1"]
        seen = await only_the_marker_arrives(site, "P1", forbidden, "pumps/P1/telemetry")
    assert seen == ["pumps/P1/telemetry"]


async def test_a_charting_account_writes_only_its_own_events_topic(tmp_path: Path) -> None:
    site = ward_site(tmp_path)
    with site.broker():
        forbidden = ["events", "events/chart-sites", "commands", "pumps/P1/telemetry"]
        seen = await only_the_marker_arrives(site, "chart-b1", forbidden, "events/chart-b1")
    assert seen == ["events/chart-b1"]


async def test_a_station_sends_commands_but_cannot_blank_a_bed(tmp_path: Path) -> None:
    site = ward_site(tmp_path)
    with site.broker():
        forbidden = ["alerts/active/B1", "alerts/status", "events/station-1"]
        seen = await only_the_marker_arrives(site, "station-1", forbidden, "commands")
        assert seen == ["commands"]
        async with site.client("station-1") as station:  # and it reads what the monitor holds
            await station.subscribe(f"{PREFIX}/alerts/#", qos=1)
            async with site.client("calguard-monitor") as monitor:
                await monitor.publish(f"{PREFIX}/alerts/active/B2", b"[]", qos=1, retain=True)
            message = await asyncio.wait_for(anext(aiter(station.messages)), 10)
    assert str(message.topic) == f"{PREFIX}/alerts/active/B2"


async def test_nobody_gets_in_without_an_account(tmp_path: Path) -> None:
    site = ward_site(tmp_path)
    with site.broker() as broker:
        with pytest.raises(aiomqtt.MqttError, match="authori"):
            async with aiomqtt.Client(broker.host, broker.port, identifier="anonymous"):
                pass
        with pytest.raises(aiomqtt.MqttError, match="authori"):
            async with aiomqtt.Client(
                broker.host, broker.port, identifier="guess", username="P1", password="guess"
            ):
                pass


def test_rerunning_keeps_the_passwords_and_rotate_changes_only_those_named(
    tmp_path: Path,
) -> None:
    site = ward_site(tmp_path)
    files = {p.name: p.read_bytes() for p in site.out.iterdir()}
    assert set(files) == {"calguard.passwd", "calguard.acl", "calguard.credentials"}
    for name in ("calguard.passwd", "calguard.credentials"):
        assert stat.S_IMODE((site.out / name).stat().st_mode) == 0o600
    assert site.generate() == 0
    assert {p.name: p.read_bytes() for p in site.out.iterdir()} == files  # nothing changed
    before = site.credentials
    assert site.generate("P1") == 0
    after = site.credentials
    assert after["P1"] != before["P1"]
    assert {k: v for k, v in after.items() if k != "P1"} == {
        k: v for k, v in before.items() if k != "P1"
    }
    assert site.generate("nobody") == 2


def test_the_acl_names_each_account_with_its_own_topics(tmp_path: Path) -> None:
    acl = (ward_site(tmp_path).out / "calguard.acl").read_text()
    blocks = {
        block.split("\n", 1)[0]: set(block.split("\n")[1:]) - {""}
        for block in acl.split("\nuser ")[1:]
    }
    assert set(blocks) == {"calguard-monitor", "P1", "P2", "chart-b1", "chart-sites", "station-1"}
    assert f"topic write {PREFIX}/events/chart-b1" in blocks["chart-b1"]
    writes = {a: {t for t in topics if t.startswith("topic write")} for a, topics in blocks.items()}
    assert writes["P1"] == {
        f"topic write {PREFIX}/pumps/P1/telemetry",
        f"topic write {PREFIX}/pumps/P1/status",
    }
    assert writes["station-1"] == {f"topic write {PREFIX}/commands"}
    # alarms, the bed states and command results: only the monitor writes them
    alerts = [a for a, topics in blocks.items() if f"topic readwrite {PREFIX}/alerts/#" in topics]
    assert alerts == ["calguard-monitor"]


SITE_HEAD = (
    '[[drivers]]\nurl = "mqtt://127.0.0.1:1883/calguard/nicu"\nusername = "calguard-monitor"\n'
)


def test_every_problem_of_the_broker_table_is_named_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE_HEAD
        + '[broker]\npumps = ["P1", "P 2"]\nstations = ["P1"]\nguests = ["x"]\n'
        + '[[broker.charting]]\naccount = "chart/b1"\n'
        + '[[broker.charting]]\naccount = "chart-b2"\nevents = ["patency_check", "ack"]\n'
        + '[[broker.gateways]]\naccount = "gw"\npumps = ["P1"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    assert [p.key for p in caught.value.problems] == ["broker.guests"]
    path.write_text(path.read_text().replace('guests = ["x"]\n', ""))
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    problems = {p.key: p.message for p in caught.value.problems}
    assert set(problems) == {
        "broker.pumps[1]",
        "broker.charting[0].account",
        "broker.charting[1].events",
        "broker.stations",
        "broker.gateways[0].pumps",
    }
    assert "letters, digits" in problems["broker.pumps[1]"]
    assert "'ack'" in problems["broker.charting[1].events"]
    assert "one role" in problems["broker.stations"]
    assert "a pump has one account" in problems["broker.gateways[0].pumps"]


def test_the_monitor_needs_an_account_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE_HEAD.replace('username = "calguard-monitor"\n', "")
        + '[[sinks]]\nurl = "mqtt://127.0.0.1:1883/calguard/nicu"\nusername = "P1"\n'
        + '[broker]\npumps = ["P1"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        broker_config.plan(load_site(path))
    problems = {p.key: p.message for p in caught.value.problems}
    assert set(problems) == {"drivers[0]", "broker"}
    assert "no username" in problems["drivers[0]"]
    assert '"P1" is the monitor\'s account' in problems["broker"]


def test_the_shipped_acl_is_what_broker_config_makes_of_the_example_site(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "deploy" / "mosquitto"
    args = argparse.Namespace(
        site=str(shipped / "site-example.toml"), out=str(tmp_path), rotate=None
    )
    assert broker_config.main(args) == 0
    assert (tmp_path / broker_config.ACL).read_text() == (shipped / "calguard.acl").read_text()
    conf = (shipped / "calguard.conf").read_text().splitlines()
    assert f"acl_file /etc/mosquitto/calguard/{broker_config.ACL}" in conf
    assert f"password_file /etc/mosquitto/calguard/{broker_config.PASSWD}" in conf
