"""A ward network as `calguard broker-config` makes it: a site config with its broker
accounts, the generated password file and ACL, and a real Mosquitto started with them.

    site = ward_site(tmp_path)                   # the site config (port chosen now)
    with site.broker() as broker:                # Mosquitto with the generated files
        async with site.client("P1") as pump:    # logged in as an account
            ...
"""

from __future__ import annotations

import argparse
import contextlib
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from calguard.drivers.mqtt import MqttDriver
from calguard.drivers.registry import open_driver

from calguard import broker_config
from calguard.site import load_site
from tests.brokers import Broker, free_port

PREFIX = "calguard/ward"
MONITOR = "calguard-monitor"
PASSWORD_ENV = "CG_TEST_WARD_PASSWORD"  # the monitor's password, as its site config says

SITE = """[site]
name = "Ward network test"
db = "none"

[[drivers]]
url = "{url}"
client_id = "ward-monitor"
username = "{monitor}"
password_env = "{env}"

[[sinks]]
url = "{url}"
client_id = "ward-alarms"
username = "{monitor}"
password_env = "{env}"
signing_key = "{key}"

[broker]
pumps = ["P1", "P2"]
stations = ["station-1"]
[[broker.charting]]
account = "chart-b1"
[[broker.charting]]
account = "chart-sites"
events = ["site_check"]
"""


@dataclass
class WardSite:
    """The site config of a ward and what `calguard broker-config` made from it."""

    path: Path
    out: Path
    port: int
    key: Path  # the monitor's state signing key (its .pub beside it)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}/{PREFIX}"

    @property
    def credentials(self) -> dict[str, str]:
        return tomllib.loads((self.out / broker_config.CREDENTIALS).read_text())

    def generate(self, *rotate: str) -> int:
        args = argparse.Namespace(
            site=str(self.path), out=str(self.out), rotate=list(rotate) if rotate else None
        )
        return broker_config.main(args)

    @contextlib.contextmanager
    def broker(self, extra: str = "") -> Iterator[Broker]:
        """Mosquitto with the generated password file and ACL, no anonymous access;
        ``extra``: more of its configuration (TLS)."""
        files = (
            f"password_file {self.out / 'calguard.passwd'}\n"
            f"acl_file {self.out / 'calguard.acl'}\n"
            # as shipped: with no limit (0), Mosquitto 2.0.11 breaks the connection of an
            # MQTT 5 client after refusing one of its QoS 1 messages (measured)
            "max_queued_messages 500000\n" + extra
        )
        broker = Broker(
            self.path.parent / "mosquitto", port=self.port, extra=files, anonymous=False
        )
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()

    def client(self, account: str, **kwargs: Any) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"test-{account}",
            username=account,
            password=self.credentials[account],
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
            **kwargs,
        )

    def driver(self) -> MqttDriver:
        """The monitor's MQTT driver as `calguard run` makes it from the site config (with
        the site's charting accounts); its password must be in ``PASSWORD_ENV``."""
        config = load_site(self.path).drivers[0]
        driver = open_driver(config.url, **config.options)
        assert isinstance(driver, MqttDriver)
        return driver


def ward_site(tmp_path: Path) -> WardSite:
    port = free_port()
    key = tmp_path / "keys" / "state-ed25519.key"
    path = tmp_path / "site.toml"
    url = f"mqtt://127.0.0.1:{port}/{PREFIX}"
    path.write_text(SITE.format(url=url, monitor=MONITOR, env=PASSWORD_ENV, key=key))
    site = WardSite(path, tmp_path / "broker", port, key)
    assert site.generate() == 0
    return site
