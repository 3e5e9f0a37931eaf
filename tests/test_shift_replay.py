"""A realistic day shift (examples/nicu-shift.jsonl, built by simulators.shift.day_shift):
three infants, five pumps, a line re-sited, checks documented and one missed. The expected
alerts below were worked out by hand from the narrative, incident by incident."""

from __future__ import annotations

import io
import json
from pathlib import Path

from calguard.config import load_library
from calguard.simulators.shift import day_shift

from calguard.replay import replay

SHIFT = Path(__file__).parent.parent / "examples" / "nicu-shift.jsonl"

# (time, state, rule, priority, bed, line, pump)
EXPECTED = [
    # B3: calcium chloride hung on a PIV. 0.3 ml/h x 100 mg/ml = 30 mg/h of chloride: the
    # elemental calcium (0.146 mmol/kg/h at 1.4 kg) is above 0.125 -> rate-weight high;
    # chloride breaks the gluconate-only rule; 293 mg/ml gluconate-equivalent > 10 mg/ml.
    ("07:40:00", "raised", "rate-weight", "high", "B3", "L4", "P3"),
    ("07:40:00", "raised", "salt-not-gluconate", "high", "B3", "L4", "P3"),
    ("07:40:00", "raised", "concentration-peripheral", "medium", "B3", "L4", "P3"),
    ("08:15:00", "cleared", "rate-weight", "high", "B3", "L4", "P3"),
    ("08:15:00", "cleared", "salt-not-gluconate", "high", "B3", "L4", "P3"),
    ("08:15:00", "cleared", "concentration-peripheral", "medium", "B3", "L4", "P3"),
    # B1: the PIV inserted 2026-11-19 09:00 has carried calcium: rotation due at 48 h.
    ("09:00:00", "raised", "cannula-dwell", "medium", "B1", "L1", None),
    # B3: sodium bicarbonate started on the calcium line at 09:01, stopped at 09:10.
    ("09:01:00", "raised", "incompatible-coinfusion", "high", "B3", "L4", None),
    ("09:10:00", "cleared", "incompatible-coinfusion", "high", "B3", "L4", None),
    # B2: 9 ml/h instead of 0.9 ml/h of 20 mg/ml at 0.9 kg = 0.46 mmol/kg/h elemental.
    ("09:15:00", "raised", "rate-weight", "high", "B2", "L3", "P2"),
    ("09:20:00", "cleared", "rate-weight", "high", "B2", "L3", "P2"),
    # B1: checked at 09:05, the 10:05 check is missed; documented at 10:20.
    ("10:05:00", "raised", "site-check-overdue", "medium", "B1", "L1", None),
    ("10:20:00", "cleared", "site-check-overdue", "medium", "B1", "L1", None),
    # B3: the dextrose pump sharing the calcium line occludes.
    ("10:45:00", "raised", "occlusion", "medium", "B3", "L4", "P4"),
    ("10:50:00", "cleared", "occlusion", "medium", "B3", "L4", "P4"),
    # B3: grade 2 site: stop and start the extravasation protocol; calcium stopped 10:52.
    ("10:50:00", "raised", "site-abnormal", "high", "B3", "L4", None),
    ("10:52:00", "cleared", "site-abnormal", "high", "B3", "L4", None),
    # B1: L1 removed when the cannula is re-sited.
    ("11:00:00", "cleared", "cannula-dwell", "medium", "B1", "L1", None),
    # B2 (2 days old): ceftriaxone pushed while calcium runs; calcium stopped at 12:10.
    ("12:00:00", "raised", "ceftriaxone-neonate", "high", "B2", None, None),
    ("12:10:00", "cleared", "ceftriaxone-neonate", "high", "B2", None, None),
    # B1: last reading 14:00:00, pump unplugged, back at 14:04:30.
    ("14:01:00", "raised", "telemetry-stale", "medium", "B1", "L2", "P1"),
    ("14:04:30", "cleared", "telemetry-stale", "medium", "B1", "L2", "P1"),
    # B1: last site check of L2 at 14:00; the shift ends at 15:00 with it due.
    ("15:00:00", "raised", "site-check-overdue", "medium", "B1", "L2", None),
]


async def run(text: bytes) -> list[dict[str, object]]:
    out = io.StringIO()
    # the engine's own lines: the alarm layer (escalation, latching) is tested on its own
    summary = await replay(
        io.BytesIO(text), source="shift", library=load_library(), out=out, alarms=False
    )
    assert summary.counts["rejected"] == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_the_day_shift_gives_exactly_the_expected_alerts() -> None:
    alerts = await run(SHIFT.read_bytes())
    got = [
        (
            a["t"][11:19],
            a["state"],
            a["rule"],
            a["priority"],
            a.get("bed"),
            a.get("line"),
            a.get("pump"),
        )
        for a in alerts
    ]
    assert got == EXPECTED
    # each clear closes the alert its raise opened
    opened = {}
    for a in alerts:
        key = (a["rule"], a.get("bed"), a.get("line"), a.get("pump"))
        if a["state"] == "raised":
            opened[key] = a["alert"]
        else:
            assert opened.pop(key) == a["alert"]


async def test_replay_is_deterministic() -> None:
    text = SHIFT.read_bytes()
    assert await run(text) == await run(text)


def test_the_example_file_is_what_the_scenario_builds() -> None:
    built = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in day_shift())
    assert SHIFT.read_text() == built
