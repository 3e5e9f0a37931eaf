"""Bounded inputs: a flood of garbage naming made-up pumps is one alarm per source, makes
no state for what it names, and never delays another bed's alarm."""

from __future__ import annotations

import json

from tests.support import Bedside, ts

CA = "Calcium gluconate 10%"


def garbage(pump: str, clock: str) -> str:
    return json.dumps({"t": ts(clock), "type": "reading", "pump": pump, "rate": "lots"})


def test_six_thousand_made_up_pumps_are_one_alarm_and_no_state() -> None:
    bay = Bedside(alarms=True)
    bay.admit("08:00")
    for i in range(6000):
        bay.pipeline.feed_line(garbage(f"X{i}", f"08:{1 + i // 600:02d}:{i % 60:02d}"),
                               source="mqtt://broker/ward#pumps/X/telemetry")  # fmt: skip
    strays = [a for a in bay.pipeline.engine.book.active.values() if a.rule == "input-unknown"]
    assert len(strays) == 1
    assert set(bay.engine.ward.pumps) == {"P1"}  # only the admitted pump: nothing made up
    assert len(bay.engine.ward.channels) == 1
    assert bay.pipeline.counts["rejected"] == 6000  # every one logged with its reason
    assert all(r.reason for r in bay.records[-6000:])


def test_each_source_has_its_own_alarm_and_a_quiet_source_clears() -> None:
    bay = Bedside(alarms=True)
    bay.admit("08:00")
    bay.raw(garbage("X1", "08:01"))
    out = bay.pipeline.feed_line(garbage("X2", "08:01:10"), source="mllp://gateway")
    bay.alerts += [tr.to_dict() for tr in out]
    raised = [a for a in bay.alerts if a["rule"] == "input-unknown"]
    assert len(raised) == 2  # the test's own source and the gateway
    bay.clock("08:03")
    cleared = [a for a in bay.alerts if a["rule"] == "input-unknown" and a["state"] == "cleared"]
    assert {a["t"] for a in cleared} == {ts("08:02"), ts("08:02:10")}


def test_garbage_from_a_known_pump_is_its_own_channel_alarm() -> None:
    bay = Bedside()
    bay.admit("08:00")
    bay.reading("08:01", rate="1 ml/h", drug="Calcium gluconate 20 mg/ml")
    bay.raw(garbage("P1", "08:02"))
    raised = [a["rule"] for a in bay.alerts if a["state"] == "raised"]
    assert "telemetry-invalid" in raised and "input-unknown" not in raised


def test_a_flood_does_not_delay_another_beds_high_alarm() -> None:
    """The canary's alarm is raised by the input that causes it, not queued behind the
    flood's alarm lines: the flood yields no alarm line after its first."""
    bay = Bedside(alarms=True)
    lines_per_input = []
    for i in range(3000):
        out = bay.pipeline.feed_line(garbage(f"X{i}", "08:01:00"), source="mqtt://b/w")
        lines_per_input.append(len(out))
    assert sum(lines_per_input) == 1
    bay.admit("08:01", bed="B9", pump="P9", line="L9")
    out = bay.reading("08:01:30", pump="P9", rate="180 ml/h", drug=CA)
    assert "rate-volume" in {a["rule"] for a in out}


def test_made_up_channels_of_a_real_pump_are_strays_after_a_few() -> None:
    bay = Bedside(alarms=True)
    bay.admit("08:00")
    for i in range(5000):
        line = json.dumps({"t": ts("08:01"), "type": "reading", "pump": "P1",
                           "channel": f"Z{i}", "rate": "lots"})  # fmt: skip
        bay.alerts += [tr.to_dict() for tr in bay.pipeline.feed_line(line, source="mqtt://b/w")]
    assert len(bay.engine.ward.channels) <= 8
    invalid = [a for a in bay.alerts if a["rule"] == "telemetry-invalid"]
    assert len(invalid) <= 7  # the few channels a pump may have, then one stray alarm
    assert [a["rule"] for a in bay.alerts if a["rule"] == "input-unknown"] == ["input-unknown"]


def test_garbage_before_any_valid_time_is_bounded_and_counted_as_strays_too() -> None:
    """Rejected readings that arrive before any valid time wait for the first one; a flood
    of them waits bounded, and then makes no channel for a made-up pump."""
    bay = Bedside(alarms=True)
    for i in range(3000):
        bay.raw(json.dumps({"t": "yesterday", "type": "reading", "pump": f"X{i}", "rate": "1"}))
    bay.admit("08:00")
    assert set(bay.engine.ward.pumps) == {"P1"}
    assert [a["rule"] for a in bay.alerts if a["state"] == "raised"].count("input-unknown") == 1
