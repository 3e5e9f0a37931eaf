"""Training scenarios: TOML files that script a ward for the simulators.

A scenario names the infants, their lines, the pumps (with what they carry and where they
are connected) and a timeline. Times are offsets from the start ("90 s", "12 min")::

    [scenario]
    title = "A 10x programming error"
    description = "0.9 ml/h of 20 mg/ml programmed as 9 ml/h."
    duration = "20 min"

    [[beds]]
    bed = "B1"
    weight = "0.9 kg"
    postnatal_age = "2 day"

    [[lines]]
    line = "L1"
    bed = "B1"
    kind = "uvc"
    tip_confirmed = true
    inserted = "20 h"              # how long before the start it was inserted

    [[pumps]]
    pump = "P1"                    # address = 0 on a serial bus (default: its position)
    line = "L1"
    drug = "Calcium gluconate 20 mg/ml"
    concentration = "20 mg/ml"
    rate = "0.9 ml/h"
    status = "infusing"

    [[at]]                         # a bedside event: any event-format type and its fields
    time = "1 min"
    event = "patency_check"
    line = "L1"
    result = "blood_return"

    [[at]]                         # a pump change: rate, status, mode, drug, pressure ...
    time = "5 min"                 # (status = "infusing" restarts a pump, after a stall too)
    pump = "P1"
    rate = "9 ml/h"

    [[at]]                         # a fault: stall, unplug, replug, silence, speak,
    time = "8 min"                 # garbage, power-cycle (pump); broker-outage (ward)
    pump = "P1"
    fault = "stall"

Shipped scenarios live in ``simulators/scenarios/``; ``calguard simulate --list`` lists them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from calguard.monitor import units
from calguard.monitor.errors import ConfigError, ConfigProblem, QuantityError
from calguard.monitor.timeutil import format_ts

__all__ = ["FAULTS", "PumpSpec", "Scenario", "Step", "list_scenarios", "load_scenario"]

PUMP_FAULTS = ("stall", "unplug", "replug", "silence", "speak", "garbage", "power-cycle")
WARD_FAULTS = ("broker-outage",)
FAULTS = PUMP_FAULTS + WARD_FAULTS
_SETTINGS = ("rate", "status", "mode", "drug", "concentration", "pressure", "alarm")


@dataclass(frozen=True)
class PumpSpec:
    pump: str
    channel: str
    address: int
    line: str | None
    settings: dict[str, Any]  # rate, status, drug, concentration ...


@dataclass(frozen=True)
class Step:
    at_us: int
    event: dict[str, Any] | None = None  # a bedside event (without t)
    pump: str | None = None
    channel: str = "A"
    settings: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None
    duration_us: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    description: str
    duration_us: int
    beds: tuple[dict[str, Any], ...]
    lines: tuple[dict[str, Any], ...]
    pumps: tuple[PumpSpec, ...]
    steps: tuple[Step, ...]

    def opening(self, t0: int) -> list[dict[str, Any]]:
        """The events that set the ward up at the start: infants, lines, connections."""
        t = format_ts(t0)
        out: list[dict[str, Any]] = [{"t": t, "type": "patient", **bed} for bed in self.beds]
        for line in self.lines:
            event = {"t": t, "type": "line", **{k: v for k, v in line.items() if k != "inserted"}}
            if "inserted" in line:
                event["inserted"] = format_ts(t0 - units.parse_duration_us(line["inserted"]))
            out.append(event)
        for pump in self.pumps:
            if pump.line:
                out.append(
                    {
                        "t": t,
                        "type": "connect",
                        "pump": pump.pump,
                        "channel": pump.channel,
                        "line": pump.line,
                    }
                )
        return out

    def pump(self, name: str, channel: str = "A") -> PumpSpec:
        return next(p for p in self.pumps if p.pump == name and p.channel == channel)


def _scenario_dir() -> Any:
    return resources.files("calguard.simulators").joinpath("scenarios")


def list_scenarios() -> list[tuple[str, str]]:
    found = []
    for entry in sorted(_scenario_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            doc = tomllib.loads(entry.read_text("utf-8"))
            found.append((entry.name[:-5], doc.get("scenario", {}).get("title", "")))
    return found


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path; ``ConfigError`` if unusable."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        source, text, name = str(path), _read(path), path.stem
    else:
        entry = _scenario_dir().joinpath(f"{name_or_path}.toml")
        if not entry.is_file():
            known = ", ".join(n for n, _ in list_scenarios())
            raise ConfigError(
                [ConfigProblem(name_or_path, "", f"no such scenario; shipped: {known}")]
            )
        source, text, name = f"scenario {name_or_path}", entry.read_text("utf-8"), name_or_path
    return _Parser(source).scenario(name, text)


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), "", f"cannot be read ({exc.strerror})")]
        ) from None


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.source, key, message))

    def duration(self, key: str, value: object) -> int:
        try:
            return units.parse_duration_us(value)
        except QuantityError as exc:
            self.problem(key, f"{value!r} — {exc.explain()}")
            return 0

    def scenario(self, name: str, text: str) -> Scenario:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigProblem(self.source, "", f"not valid TOML: {exc}")]) from None
        head = doc.get("scenario", {})
        pumps = []
        for index, item in enumerate(doc.get("pumps", [])):
            if "pump" not in item:
                self.problem(f"pumps[{index}]", "a pump id is required")
                continue
            settings = {k: item[k] for k in _SETTINGS if k in item}
            pumps.append(
                PumpSpec(
                    str(item["pump"]),
                    str(item.get("channel", "A")),
                    int(item.get("address", index)),
                    item.get("line"),
                    settings,
                )
            )
        steps = [
            self.step(f"at[{i}]", item, {p.pump for p in pumps})
            for i, item in enumerate(doc.get("at", []))
        ]
        scenario = Scenario(
            name=name,
            title=str(head.get("title", name)),
            description=str(head.get("description", "")).strip(),
            duration_us=self.duration("scenario.duration", head.get("duration", "30 min")),
            beds=tuple(doc.get("beds", [])),
            lines=tuple(doc.get("lines", [])),
            pumps=tuple(pumps),
            steps=tuple(sorted(steps, key=lambda s: s.at_us)),
        )
        if self.problems:
            raise ConfigError(self.problems)
        return scenario

    def step(self, key: str, item: dict[str, Any], pumps: set[str]) -> Step:
        at = self.duration(f"{key}.time", item.get("time"))
        if "event" in item:
            body = {k: v for k, v in item.items() if k not in ("time", "event")}
            return Step(at, event={"type": item["event"], **body})
        fault = item.get("fault")
        if fault is not None and fault not in FAULTS:
            self.problem(f"{key}.fault", f"{fault!r} — one of {', '.join(FAULTS)} is expected")
        duration = (
            self.duration(f"{key}.duration", item["duration"]) if "duration" in item else None
        )
        pump = item.get("pump")
        if pump is None and fault not in WARD_FAULTS:
            self.problem(
                key, "an entry needs event = ..., or pump = ... (with settings or a fault)"
            )
        elif pump is not None and pump not in pumps:
            self.problem(f"{key}.pump", f"{pump!r} is not one of the scenario's pumps")
        settings = {k: item[k] for k in _SETTINGS if k in item}
        return Step(at, None, pump, str(item.get("channel", "A")), settings, fault, duration)
