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


# -- the front door: every mistake seen on a fresh clone is named, with file and key -------

SERIAL = """
[[drivers]]
url = "serial:///dev/ttyUSB0?baud=19200&mode=safe"
"""
PUMP = """
[[drivers.pumps]]
address = {address}
pump = "{pump}"
drug = "Calcium gluconate 20 mg/ml"
concentration = "20 mg/ml"
"""


def problems(path: Path) -> list[str]:
    """Every problem, as the person editing the file reads it (``file: key: message``)."""
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    assert all(p.file == str(path) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


def said(lines: list[str], path: Path, key: str, *words: str) -> bool:
    """Whether one problem names this file and key and says all these words."""
    return any(
        line.startswith(f"{path}: {key}: ") and all(w in line for w in words) for line in lines
    )


def test_a_serial_line_in_safe_mode_with_two_pumps_loads(tmp_path: Path) -> None:
    text = SERIAL + PUMP.format(address=0, pump="P1") + PUMP.format(address=1, pump="P2")
    site = load_site(write(tmp_path, text + '[site]\ntimezone = "Europe/London"\n'))
    assert site.timezone == "Europe/London"
    pumps = site.drivers[0].options["pumps"]
    assert [(p["address"], p["pump"]) for p in pumps] == [(0, "P1"), (1, "P2")]


def test_the_time_zone_is_utc_unless_the_site_names_another(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, '[[drivers]]\nurl = "replay:///dev/null"\n'))
    assert site.timezone == "UTC"
    path = write(tmp_path, '[site]\ntimezone = "Europe/Pairs"\n[[drivers]]\nurl = "replay:///x"\n')
    assert said(
        problems(path), path, "site.timezone", "Europe/Pairs", 'did you mean "Europe/Paris"'
    )
    for wrong in ('"Europe"', '"../etc/passwd"', "1"):  # a folder, a path, not a name
        path = write(tmp_path, f'[site]\ntimezone = {wrong}\n[[drivers]]\nurl = "replay:///x"\n')
        assert said(problems(path), path, "site.timezone", "IANA")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("baud=19200&mode=safer", ["mode=safer", "basic, safe"]),  # ran basic mode, silently
        ("baud=19201", ["baud=19201", "300, 1200, 2400, 9600, 19200"]),
        ("baud=fast", ["baud=fast", "a whole number"]),
        ("protocol=ne2000", ["protocol=ne2000", "ne1000, ne500"]),
        ("bauds=9600", ['unknown URL parameter "bauds"', 'did you mean "baud"']),
        ("poll_interval=1", ['"poll_interval" is an option, not a URL parameter']),
        ("mode=safe&mode=basic", ['gives "mode" twice']),
    ],
)
def test_every_parameter_of_a_serial_url_is_checked(
    tmp_path: Path, query: str, words: list[str]
) -> None:
    text = f'[[drivers]]\nurl = "serial:///dev/ttyUSB0?{query}"\n' + PUMP.format(
        address=0, pump="P1"
    )
    path = write(tmp_path, text)
    lines = problems(path)
    assert said(lines, path, "drivers[0].url", *words) and len(lines) == 1


def test_a_url_of_a_driver_without_parameters_takes_none(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[drivers]]\nurl = "mqtt://127.0.0.1:1883/calguard/nicu?qos=1"\n'
        '[[drivers]]\nurl = "mllp://127.0.0.1:2575?keepalive=5"\n'
        '[[drivers]]\nurl = "serial://dev/ttyUSB0"\n' + PUMP.format(address=0, pump="P1"),
    )
    lines = problems(path)
    assert said(lines, path, "drivers[0].url", '"qos"', "takes none")
    assert said(lines, path, "drivers[1].url", '"keepalive"', "takes none")
    assert said(lines, path, "drivers[2].url", "three slashes", "serial:///dev/ttyUSB0")


def test_two_pumps_cannot_share_an_address_or_a_pump_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SERIAL
        + PUMP.format(address=3, pump="P1")
        + PUMP.format(address=3, pump="P2")  # the same line, the same address
        + '[[drivers]]\nurl = "serial:///dev/ttyUSB1"\n'
        + PUMP.format(address=0, pump="P1")  # another line, but the same pump id
        + "[[drivers.pumps]]\naddress = 1\n"  # "NE01" by default ...
        + "[[drivers.pumps]]\naddress = 2\npump = 'NE01'\n",  # ... and written out
    )
    lines = problems(path)
    assert said(lines, path, "drivers[0].pumps[1].address", "3 is also the address of pumps[0]")
    assert said(lines, path, "drivers[1].pumps[0].pump", '"P1"', "drivers[0].pumps[0]")
    assert said(lines, path, "drivers[1].pumps[2].pump", '"NE01"', "pumps[1]")
    assert len(lines) == 3


def test_a_misspelled_calcium_label_is_named_with_the_product_it_is_like(tmp_path: Path) -> None:
    pump = PUMP.format(address=0, pump="P1").replace("Calcium gluconate 20 mg/ml", "{drug}")
    path = write(
        tmp_path,
        SERIAL
        + pump.format(drug="Calcium glucnate")
        + pump.format(drug="Sodium bicarbonaet 4.2%").replace("0", "1", 1).replace("P1", "P2")
        + pump.format(drug="Dextrose 10%").replace("0", "2", 1).replace("P1", "P3"),
    )
    lines = problems(path)
    assert said(
        lines, path, "drivers[0].pumps[0].drug", '"Calcium glucnate"', "product-unknown",
        'did you mean "Calcium gluconate 10%"?',
    )  # fmt: skip
    # not calcium, but like a product of the library: as written, bicarbonate would be
    # taken for a drug with no incompatibility
    assert said(lines, path, "drivers[0].pumps[1].drug", 'did you mean "Sodium bicarbonate"?')
    assert len(lines) == 2  # dextrose is no product, and like none: a neutral drug


def test_a_drug_matches_as_the_engine_matches_it(tmp_path: Path) -> None:
    pump = PUMP.format(address=0, pump="P1").replace("Calcium gluconate 20 mg/ml", "{drug}")
    text = SERIAL + "".join(
        pump.format(drug=drug).replace("address = 0", f"address = {i}").replace("P1", f"P{i}")
        for i, drug in enumerate(
            ["CALCIUM GLUCONATE 10%", "  calcium gluconate   20 mg/ml ", "ca gluconate 20 mg/ml"]
        )
    )
    assert len(load_site(write(tmp_path, text)).drivers[0].options["pumps"]) == 3


def test_an_unknown_key_in_a_pump_table(tmp_path: Path) -> None:
    path = write(tmp_path, SERIAL + PUMP.format(address=0, pump="P1") + 'concentraton = "x"\n')
    assert said(
        problems(path), path, "drivers[0].pumps[0].concentraton", "unknown key",
        'did you mean "concentration"?',
    )  # fmt: skip


@pytest.mark.parametrize(
    ("concentration", "words"),
    [
        (None, ["is missing", "calcium", '"20 mg/ml"']),
        ('"20 mg"', ['"20 mg"', "a mass per volume"]),  # a mass, not a concentration
        ('"20 mmol/l"', ['"20 mmol/l"', "a mass per volume"]),
        ('"20"', ['"20"', "a bare number"]),
        ("20", ["20", "a text"]),
        ('"20 g/ml"', ['"20 g/ml" is 20000 mg/ml', "plausible range 0.1 to 500 mg/ml"]),
    ],
)
def test_a_calcium_pump_states_its_concentration_as_a_mass_per_volume(
    tmp_path: Path, concentration: str | None, words: list[str]
) -> None:
    pump = PUMP.format(address=0, pump="P1").replace('concentration = "20 mg/ml"\n', "")
    if concentration is not None:
        pump += f"concentration = {concentration}\n"
    path = write(tmp_path, SERIAL + pump)
    lines = problems(path)
    assert said(lines, path, "drivers[0].pumps[0].concentration", *words) and len(lines) == 1


def test_a_drug_library_given_as_the_site_config_is_one_problem(tmp_path: Path) -> None:
    from calguard.config.loader import builtin_text

    path = tmp_path / "nicu-library.toml"
    path.write_text(builtin_text())
    lines = problems(path)
    assert lines == [
        f"{path}: this is a drug library, not a site config. A site config names its "
        'library in its [site] table: library = "nicu-library.toml"; to replay a file of '
        "events with this library: calguard replay FILE.jsonl --library nicu-library.toml"
    ]
    # a site config that pasted a library section in: named as such
    text = '[[drivers]]\nurl = "replay:///x"\n[rules.occlusion]\npriority = "high"\n'
    path = write(tmp_path, text)
    assert said(problems(path), path, "rules", "a section of a drug library", "[site] library")


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ("poll_interval = 0", "poll_interval", ["from 0.05 to 30"]),
        ("poll_interval = 600.0", "poll_interval", ["from 0.05 to 30"]),
        ("response_timeout = 0.0", "response_timeout", ["from 0.05 to 10"]),
        ("response_timeout = inf", "response_timeout", ["a number"]),
        ("safe_timeout = -1", "safe_timeout", ["from 0 to 255"]),
        ("safe_timeout = 2.5", "safe_timeout", ["a whole number"]),
        # the pumps stop when no packet reaches them in time: 2 s polls of 2 pumps that
        # may each take 6 x 0.5 s when every answer is lost
        ("safe_timeout = 10", "safe_timeout", ["a pump may hear nothing for 12 s"]),
    ],
)
def test_serial_timings_must_make_sense(
    tmp_path: Path, options: str, key: str, words: list[str]
) -> None:
    path = write(
        tmp_path,
        SERIAL
        + options
        + "\n"
        + PUMP.format(address=0, pump="P1")
        + PUMP.format(address=1, pump="P2"),
    )
    lines = problems(path)
    assert said(lines, path, f"drivers[0].{key}", *words) and len(lines) == 1


def test_serial_timings_the_line_or_the_mode_cannot_keep(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[drivers]]\nurl = "serial:///dev/ttyUSB0?baud=300"\nsafe_timeout = 30\n'
        + PUMP.format(address=0, pump="P1"),
    )
    lines = problems(path)
    assert said(lines, path, "drivers[0].response_timeout", "at 300 baud", "1.07 s")
    assert said(lines, path, "drivers[0].safe_timeout", "add mode=safe to the URL")
    path = write(tmp_path, SERIAL + "safe_timeout = 30\n" + PUMP.format(address=0, pump="P1"))
    assert load_site(path).drivers[0].options["safe_timeout"] == 30


def test_a_serial_line_needs_its_pumps(tmp_path: Path) -> None:
    path = write(tmp_path, SERIAL)
    assert said(problems(path), path, "drivers[0].pumps", "no pump on this line")


def test_the_other_drivers_numbers_have_limits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[drivers]]\nurl = "mqtt://127.0.0.1:1883/calguard/nicu"\nkeepalive = 0\n'
        '[[drivers]]\nurl = "replay:///x"\npoll = 0.0\n'
        '[[drivers]]\nurl = "mllp://127.0.0.1:2575"\nmax_message_bytes = 10\n',
    )
    lines = problems(path)
    assert said(lines, path, "drivers[0].keepalive", "from 5 to 600")
    assert said(lines, path, "drivers[1].poll", "from 0.01 to 60")
    assert said(lines, path, "drivers[2].max_message_bytes", "from 4096")


def test_the_fresh_clones_mistakes_are_all_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[site]
name = "NICU North"
timezone = "Europe/Londn"

[[drivers]]
url = "serial:///dev/ttyUSB0?baud=19200&mode=safer"
poll_interval = 0.0
[[drivers.pumps]]
address = 0
pump = "P1"
drug = "Calcium glucnate"
concentration = "20 mg/ml"
[[drivers.pumps]]
address = 0
pump = "P2"
drug = "Calcium gluconate 20 mg/ml"
colour = "blue"
""",
    )
    assert sorted(line.split(": ")[1] for line in problems(path)) == [
        "drivers[0].poll_interval",
        "drivers[0].pumps[0].drug",
        "drivers[0].pumps[1].address",
        "drivers[0].pumps[1].colour",
        "drivers[0].pumps[1].concentration",
        "drivers[0].url",
        "site.timezone",
    ]
