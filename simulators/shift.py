"""Scripted NICU shifts as event-format v1 events, for training, tests and benchmarks.

``ShiftBuilder`` turns a short script into a full event stream: bedside documentation
at the times given, and pumps that keep reporting their current settings every
``interval`` seconds until the script changes them or unplugs the pump.

    python -m simulators.shift day > examples/nicu-shift.jsonl
    python -m simulators.shift load --pumps 200 --minutes 10 > /tmp/load.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from calguard.monitor.timeutil import SECOND_US, format_ts, parse_ts

__all__ = ["ShiftBuilder", "day_shift", "load_shift"]


@dataclass
class _PumpScript:
    changes: list[tuple[int, dict[str, Any] | None]] = field(
        default_factory=list
    )  # None = unplugged


class ShiftBuilder:
    """Collects documentation events and pump settings; ``events()`` interleaves them."""

    def __init__(self, day: str, *, interval_s: float = 30) -> None:
        self.day = day
        self.interval_us = round(interval_s * SECOND_US)
        self._docs: list[tuple[int, int, dict[str, Any]]] = []
        self._pumps: dict[tuple[str, str], _PumpScript] = {}
        self._order = 0

    def t(self, clock: str) -> int:
        return parse_ts(
            clock
            if "T" in clock
            else f"{self.day}T{clock if clock.count(':') == 2 else clock + ':00'}Z"
        )

    def at(self, clock: str, type: str, **fields: Any) -> ShiftBuilder:
        self._order += 1
        self._docs.append((self.t(clock), self._order, {"type": type, **fields}))
        return self

    def pump(self, clock: str, pump: str, channel: str = "A", **settings: Any) -> ShiftBuilder:
        """From ``clock`` on, the pump channel reports these settings (rate, drug, status...)."""
        self._pumps.setdefault((pump, channel), _PumpScript()).changes.append(
            (self.t(clock), settings)
        )
        return self

    def unplug(self, clock: str, pump: str, channel: str = "A") -> ShiftBuilder:
        """From ``clock`` on, the pump channel sends nothing."""
        self._pumps.setdefault((pump, channel), _PumpScript()).changes.append((self.t(clock), None))
        return self

    def events(self, until: str) -> list[dict[str, Any]]:
        end = self.t(until)
        rows: list[tuple[int, int, int, dict[str, Any]]] = []
        for (pump, channel), script in sorted(self._pumps.items()):
            for t, settings in self._readings(script, end):
                rows.append(
                    (t, 0, 0, {"type": "reading", "pump": pump, "channel": channel, **settings})
                )
        rows += [(t, 1, order, event) for t, order, event in self._docs]
        rows.sort(key=lambda row: row[:3])  # at one instant: pump readings, then documentation
        seqs: dict[tuple[str, str], int] = {}
        out = []
        for t, _, _, event in rows:
            if event["type"] == "reading":
                key = (event["pump"], event["channel"])
                seqs[key] = seqs.get(key, 0) + 1
                event = {**event, "seq": seqs[key]}
            out.append({"t": format_ts(t), **event})
        out.append({"t": format_ts(end), "type": "clock"})
        return out

    def _readings(self, script: _PumpScript, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        changes = sorted(script.changes, key=lambda change: change[0])
        for index, (start, settings) in enumerate(changes):
            stop = changes[index + 1][0] if index + 1 < len(changes) else end + 1
            if settings is None:
                continue
            t = start
            while t < stop and t <= end:
                yield t, settings
                t += self.interval_us


def day_shift() -> list[dict[str, Any]]:
    """07:00-15:00 in a three-cot bay. Each incident is annotated with what CalGuard should say."""
    s = ShiftBuilder("2026-11-21")
    ca10 = {"drug": "Calcium gluconate 10 mg/ml", "concentration": "10 mg/ml"}

    # B1: 1.1 kg, 4 days. PIV in the right hand since 09:00 the day before yesterday:
    # 48 h at 09:00 today.
    s.at("07:00", "patient", bed="B1", weight="1.1 kg", postnatal_age="4 day", patient="nhi-0001")
    s.at(
        "07:00",
        "line",
        line="L1",
        bed="B1",
        kind="piv",
        site="right dorsal hand",
        inserted="2026-11-19T09:00:00Z",
    )
    s.at("07:05", "connect", pump="P1", channel="A", line="L1")
    s.at("07:06", "patency_check", line="L1", result="blood_return", by="rn11")
    s.pump("07:10", "P1", rate="0.5 ml/h", status="infusing", **ca10)
    s.at("08:05", "site_check", line="L1", grade=0, by="rn11")
    s.at("09:05", "site_check", line="L1", grade=0, by="rn11")
    # 10:05 check missed -> site-check-overdue at 10:05, documented late at 10:20
    s.at("10:20", "site_check", line="L1", grade=0, by="rn11")
    # 11:00 the cannula is re-sited (rotation): pause, remove, new line, check, resume
    s.pump("10:58", "P1", rate="0.5 ml/h", status="paused", **ca10)
    s.at("11:00", "line_removed", line="L1")
    s.at("11:05", "line", line="L2", bed="B1", kind="piv", site="left foot")
    s.at("11:06", "connect", pump="P1", channel="A", line="L2")
    s.at("11:07", "patency_check", line="L2", result="blood_return", by="rn11")
    s.pump("11:08", "P1", rate="0.5 ml/h", status="infusing", **ca10)
    for clock in ("12:00", "13:00", "14:00"):
        s.at(clock, "site_check", line="L2", grade=0, by="rn11")
    # 14:00:30 the pump is unplugged for 4 minutes -> telemetry-stale at 14:01:00
    s.unplug("14:00:30", "P1")
    s.pump("14:04:30", "P1", rate="0.5 ml/h", status="infusing", **ca10)
    # no site check after 14:00 -> overdue at 15:00, the end of the shift

    # B2: 0.9 kg, 2 days. UVC with its tip confirmed on X-ray: a central line.
    s.at("07:00", "patient", bed="B2", weight="0.9 kg", postnatal_age="2 day", patient="nhi-0002")
    s.at(
        "07:00",
        "line",
        line="L3",
        bed="B2",
        kind="uvc",
        site="umbilical venous",
        tip_confirmed=True,
        inserted="2026-11-19T20:00:00Z",
    )
    s.at("07:00", "connect", pump="P2", channel="A", line="L3")
    s.at("07:25", "patency_check", line="L3", result="flush_ok", by="rn12")
    s.pump("07:30", "P2", rate="0.9 ml/h", status="infusing", drug="Calcium gluconate 20 mg/ml")
    # 09:15 a 10x programming error (9 ml/h) -> rate-weight high; corrected at 09:20
    s.pump("09:15", "P2", rate="9 ml/h", status="infusing", drug="Calcium gluconate 20 mg/ml")
    s.pump("09:20", "P2", rate="0.9 ml/h", status="infusing", drug="Calcium gluconate 20 mg/ml")
    # 12:00 ceftriaxone pushed while calcium runs -> ceftriaxone-neonate; calcium stopped at 12:10
    s.at(
        "12:00",
        "medication",
        bed="B2",
        drug="Ceftriaxone",
        route="iv",
        dose="50 mg",
        line="L3",
        by="rn12",
    )
    s.pump("12:10", "P2", rate="0 ml/h", status="stopped", drug="Calcium gluconate 20 mg/ml")

    # B3: 1.4 kg, 10 days. PIV at the left saphenous, dextrose maintenance on P4.
    s.at("07:00", "patient", bed="B3", weight="1.4 kg", postnatal_age="10 day", patient="nhi-0003")
    s.at(
        "07:00",
        "line",
        line="L4",
        bed="B3",
        kind="piv",
        site="left saphenous (ankle)",
        inserted="2026-11-21T06:30:00Z",
    )
    s.at("07:00", "connect", pump="P3", channel="A", line="L4")
    s.at("07:00", "connect", pump="P4", channel="A", line="L4")
    s.pump("07:00", "P4", rate="5 ml/h", status="infusing", drug="Dextrose 10%")
    s.at("07:35", "patency_check", line="L4", result="blood_return", by="rn13")
    # 07:40 calcium CHLORIDE hung by mistake on a peripheral line -> salt, concentration, weight
    s.pump("07:40", "P3", rate="0.3 ml/h", status="infusing", drug="Calcium chloride 10%")
    s.pump("08:15", "P3", rate="0 ml/h", status="stopped", drug="Calcium chloride 10%")
    s.pump("08:20", "P3", rate="1.4 ml/h", status="infusing", **ca10)
    s.at("08:30", "site_check", line="L4", grade=0, by="rn13")
    # 09:00 bicarbonate connected to the calcium line -> incompatible-coinfusion
    s.at("09:00", "connect", pump="P5", channel="A", line="L4")
    s.pump("09:01", "P5", rate="1 ml/h", status="infusing", drug="Sodium bicarbonate 4.2%")
    s.pump("09:10", "P5", rate="0 ml/h", status="stopped", drug="Sodium bicarbonate 4.2%")
    s.at("09:11", "disconnect", pump="P5", channel="A")
    s.unplug("09:11", "P5")
    s.at("09:25", "site_check", line="L4", grade=0, by="rn13")
    s.at("10:20", "site_check", line="L4", grade=0, by="rn13")
    # 10:45 the dextrose pump on the calcium line occludes; restarted at 10:50
    s.pump("10:45", "P4", rate="5 ml/h", status="alarm", alarm="occlusion", drug="Dextrose 10%")
    s.pump("10:50", "P4", rate="5 ml/h", status="infusing", drug="Dextrose 10%")
    # 10:50 the site is swollen and pale -> site-abnormal; calcium stopped at 10:52, line out
    s.at("10:50", "site_check", line="L4", grade=2, findings=["swelling", "blanching"], by="rn13")
    s.pump("10:52", "P3", rate="0 ml/h", status="stopped", **ca10)
    s.at("10:55", "disconnect", pump="P3", channel="A")
    s.unplug("10:55", "P3")
    s.at("11:00", "line_removed", line="L4")
    s.at("11:05", "line", line="L5", bed="B3", kind="piv", site="right hand")
    s.at("11:05", "connect", pump="P4", channel="A", line="L5")
    return s.events("15:00")


def load_shift(
    pumps: int = 200, minutes: float = 10, *, interval_s: float = 1, seed: int = 7
) -> list[dict[str, Any]]:
    """A whole unit at 1 Hz, for benchmarks: half the pumps run calcium, half other drugs;
    every pump changes its rate now and then, some past a limit."""
    rng = random.Random(seed)
    s = ShiftBuilder("2026-11-21", interval_s=interval_s)
    beds = max(1, pumps // 2)
    for b in range(beds):
        bed = f"B{b + 1}"
        s.at(
            "08:00",
            "patient",
            bed=bed,
            weight=f"{rng.uniform(0.6, 3.5):.2f} kg",
            postnatal_age=f"{rng.randint(1, 40)} day",
        )
        s.at(
            "08:00",
            "line",
            line=f"L{b + 1}",
            bed=bed,
            kind=rng.choice(["piv", "piv", "picc", "uvc"]),
            tip_confirmed=rng.random() < 0.5,
        )
        s.at("08:00", "patency_check", line=f"L{b + 1}", result="blood_return")
    for p in range(pumps):
        pump, line = f"P{p + 1}", f"L{p % beds + 1}"
        s.at("08:00", "connect", pump=pump, channel="A", line=line)
        calcium = p < pumps // 2
        drug = (
            "Calcium gluconate 20 mg/ml"
            if calcium
            else rng.choice(["Dextrose 10%", "Normal saline", "Morphine"])
        )
        elapsed = 0.0
        while elapsed < minutes:
            rate = rng.choice([0.5, 0.8, 1.0, 1.2, 2.0]) * (10 if rng.random() < 0.05 else 1)
            s.pump(
                format_ts(s.t("08:00") + round(elapsed * 60 * SECOND_US)),
                pump,
                rate=f"{rate} ml/h",
                status="infusing",
                drug=drug,
                pressure=f"{rng.randint(15, 40)} mmHg",
            )
            elapsed += rng.uniform(1, 6)
    end = format_ts(s.t("08:00") + round(minutes * 60 * SECOND_US))
    return s.events(end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.shift", description=__doc__)
    parser.add_argument("which", choices=["day", "load"])
    parser.add_argument("--pumps", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args(argv)
    events = day_shift() if args.which == "day" else load_shift(args.pumps, args.minutes)
    for event in events:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
