"""The site config: what ``calguard run`` reads. Every problem is listed at once, with the
file and key, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from calguard.monitor.errors import ConfigError
from calguard.monitor.timeutil import parse_ts

from calguard.site import load_site


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_complete_site_config_loads(tmp_path: Path) -> None:
    site = load_site(
        write(
            tmp_path,
            """
[site]
name = "NICU North"
db = "none"
speed = 60
clock_anchor = 2026-11-22T14:00:00Z

[[drivers]]
url = "mqtt://127.0.0.1:1883/calguard/nicu"
client_id = "calguard-north"

[[drivers]]
url = "serial:///dev/ttyUSB0?baud=19200&mode=safe"
[[drivers.pumps]]
address = 0
pump = "P1"
drug = "Calcium gluconate 20 mg/ml"
concentration = "20 mg/ml"
""",
        )
    )
    assert site.name == "NICU North" and site.db is None and site.speed == 60.0
    assert site.clock_anchor_us == parse_ts("2026-11-22T14:00:00Z")
    assert [d.url.split(":")[0] for d in site.drivers] == ["mqtt", "serial"]
    assert site.drivers[0].options == {"client_id": "calguard-north"}


def test_the_clock_anchor_may_be_a_string_as_the_simulators_write_it(tmp_path: Path) -> None:
    text = '[site]\nspeed = 30\nclock_anchor = "2026-11-22T14:00:00.250000+01:00"\n'
    site = load_site(write(tmp_path, text + '[[drivers]]\nurl = "replay:///dev/null"\n'))
    assert site.clock_anchor_us == parse_ts("2026-11-22T13:00:00.25Z")


def test_every_problem_is_listed_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[site]
colour = "blue"
speed = 0
clock_anchor = 2026-11-22T14:00:00

[[drivers]]
url = "carrier-pigeon://loft"

[[drivers]]
url = "mqtt://127.0.0.1:1883/calguard/nicu"
keepalive = "often"
qos = 2
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    keys = {p.key for p in caught.value.problems}
    assert keys == {
        "site.colour",
        "site.speed",
        "site.clock_anchor",  # no offset: which 14:00?
        "drivers[0].url",
        "drivers[1].keepalive",
        "drivers[1].qos",
    }
    assert all(p.file == str(path) for p in caught.value.problems)


def test_a_site_needs_a_driver_and_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_site(write(tmp_path, '[site]\nname = "empty"\n'))
    assert [p.key for p in caught.value.problems] == ["drivers"]
    with pytest.raises(ConfigError, match="file not found"):
        load_site(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_site(write(tmp_path, "[site\n"))


def test_sinks_are_checked_with_the_site(tmp_path: Path) -> None:
    drivers = '[[drivers]]\nurl = "replay:///dev/null"\n'
    good = load_site(
        write(
            tmp_path,
            drivers
            + '[[sinks]]\nurl = "terminal://"\n'
            + '[[sinks]]\nurl = "mqtt://127.0.0.1:1883/calguard/nicu"\nclient_id = "a"\n'
            + '[[sinks]]\nurl = "https://alarms.example.org/in"\ncapacity = 500\n'
            + '[[sinks]]\nurl = "mllp://127.0.0.1:2576"\nfacility = "NICU-N"\n',
        )
    )
    assert [s.url.split(":")[0] for s in good.sinks] == ["terminal", "mqtt", "https", "mllp"]
    with pytest.raises(ConfigError) as caught:
        load_site(
            write(
                tmp_path,
                drivers
                + '[[sinks]]\nurl = "http://alarms.example.org/in"\n'  # plain http, not loopback
                + '[[sinks]]\nurl = "pager://ward"\n'
                + '[[sinks]]\nurl = "mqtt://127.0.0.1:1883/x"\ncapacity = 0\ncolour = true\n',
            )
        )
    assert {p.key for p in caught.value.problems} == {
        "sinks[0].url",
        "sinks[1].url",
        "sinks[2].capacity",
        "sinks[2].colour",
    }
