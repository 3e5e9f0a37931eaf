"""The alarm manager (IEC 60601-1-8 states) through the real pipeline on the events' own
clock: escalation, acknowledgement, audio pause, latching and reset, override with a coded
reason, each line at its exact time; and actions that cannot apply refused with a reason.

Built-in policy: pause 2 min; escalation after 2 min (high) / 5 min (medium) per step,
bedside -> charge-nurse -> unit; high clinical alarms latch; override at most 4 h."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from calguard.alerts.alarms import AlarmManager
from calguard.alerts.log import AlertLog
from calguard.config import builtin_text, parse_library
from calguard.monitor.engine import Engine
from calguard.monitor.events import AlarmAction
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition, Description

from calguard.recovery import restore_alarms
from calguard.replay import replay
from tests.support import Bedside, ts, us

DILUTED = "Calcium gluconate 20 mg/ml"
# these tests send a reading only when the rate changes: no telemetry-stale alarm here
# (its own test below uses the built-in library)
QUIET = parse_library(
    builtin_text().replace(
        '[rules.telemetry-stale]\npriority = "medium"',
        '[rules.telemetry-stale]\nenabled = false\npriority = "medium"',
    ),
    "test library",
).library
assert QUIET is not None


def picc(rate: str, clock: str = "08:01") -> Bedside:
    """1 kg infant, calcium on a confirmed PICC: 2 ml/h is rate-weight medium (40 mg/kg/h),
    3 ml/h high (0.14 mmol/kg/h); nothing else."""
    bay = Bedside(QUIET, alarms=True)
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    bay.reading(clock, rate=rate, drug=DILUTED)
    return bay


def lines(bay: Bedside, rule: str = "rate-weight") -> list[tuple[str, str, Any]]:
    return [
        (a["t"][11:19], a["state"], a.get("audience") or a.get("by"))
        for a in bay.alerts
        if a["rule"] == rule
    ]


def alarms(bay: Bedside) -> AlarmManager:
    assert bay.pipeline.alarms is not None
    return bay.pipeline.alarms


def alert_id(bay: Bedside, rule: str = "rate-weight") -> str:
    return next(str(a["alert"]) for a in bay.alerts if a["rule"] == rule)


def act(bay: Bedside, clock: str, kind: str, **fields: Any) -> list[dict[str, Any]]:
    fields.setdefault("alert", alert_id(bay))
    fields.setdefault("by", "rn42")
    return bay.send(clock, kind, **fields)


def test_an_unacknowledged_alarm_escalates_at_exact_times_to_each_audience() -> None:
    bay = picc("2 ml/h")  # medium: 5 min a step
    bay.clock("08:30")
    assert lines(bay) == [
        ("08:01:00", "raised", None),
        ("08:06:00", "escalated", "charge-nurse"),
        ("08:11:00", "escalated", "unit"),  # the widest audience: no further step
    ]
    escalated = [a for a in bay.alerts if a["state"] == "escalated"]
    assert all(
        a["priority"] == "medium" for a in escalated
    )  # the audience widens, not the priority


def test_acknowledged_stays_visible_stops_escalating_and_returns_when_worse() -> None:
    bay = picc("2 ml/h")
    act(bay, "08:03", "ack")
    bay.clock("08:20")
    (alarm,) = alarms(bay).active()
    assert alarm.state == "acknowledged" and alarm.acked_by == "rn42"
    bay.reading("08:21", rate="3 ml/h", drug=DILUTED)  # worse: high
    bay.clock("08:30")
    assert lines(bay) == [
        ("08:01:00", "raised", None),
        ("08:03:00", "acknowledged", "rn42"),
        ("08:21:00", "escalated", None),  # the engine: priority went up
        ("08:23:00", "escalated", "charge-nurse"),  # annunciating again, 2 min a step now
        ("08:25:00", "escalated", "unit"),
    ]
    assert alarms(bay).active()[0].state == "active"


def test_an_audio_pause_resumes_exactly_when_it_ends_and_delays_escalation() -> None:
    bay = picc("2 ml/h")
    out = act(bay, "08:02", "pause")
    assert out[0]["until"] == ts("08:04")
    assert alarms(bay).active()[0].state == "paused"
    bay.clock("08:30")
    assert lines(bay) == [
        ("08:01:00", "raised", None),
        ("08:02:00", "paused", "rn42"),
        ("08:04:00", "resumed", None),
        ("08:09:00", "escalated", "charge-nurse"),  # 5 min after it resumed
        ("08:14:00", "escalated", "unit"),
    ]


def test_a_pause_may_be_shorter_but_not_longer_than_the_policy() -> None:
    bay = picc("2 ml/h")
    act(bay, "08:02", "pause", duration="30 s")
    too_long = act(bay, "08:03", "pause", duration="10 min")
    assert [a["state"] for a in too_long] == ["resumed"]  # the first pause ended at 08:02:30
    bay.clock("08:04")
    assert lines(bay)[1:] == [("08:02:00", "paused", "rn42"), ("08:02:30", "resumed", None)]
    refused = bay.records[-2]
    assert refused.status == "rejected"
    assert '"10 min" — at most 2 min for a medium alarm' in (refused.reason or "")


def test_a_high_clinical_alarm_latches_until_a_person_resets_it() -> None:
    bay = picc("3 ml/h")
    act(bay, "08:02", "ack")
    bay.reading("08:05", rate="1 ml/h", drug=DILUTED)  # the condition ends
    cleared = [a for a in bay.alerts if a["state"] == "cleared"]
    assert cleared[0]["t"] == ts("08:05") and cleared[0]["latched"] is True
    assert [a.id for a in alarms(bay).active()] == [alert_id(bay)]  # still shown
    act(bay, "08:07", "reset", by="rn7")
    assert lines(bay)[-1] == ("08:07:00", "reset", "rn7")
    assert alarms(bay).active() == []


def test_reset_is_refused_while_the_condition_holds() -> None:
    bay = picc("3 ml/h")
    assert act(bay, "08:02", "reset") == []
    assert bay.records[-1].status == "rejected"
    assert "still holds" in (bay.records[-1].reason or "")
    assert alarms(bay).active()[0].state == "active"


def test_a_medium_alarm_does_not_latch() -> None:
    bay = picc("2 ml/h")
    bay.reading("08:03", rate="1 ml/h", drug=DILUTED)
    assert lines(bay) == [("08:01:00", "raised", None), ("08:03:00", "cleared", None)]
    assert "latched" not in bay.alerts[-1] and alarms(bay).active() == []


def test_technical_alarms_never_latch() -> None:
    bay = Bedside(alarms=True)
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    bay.reading("08:01", rate="1 ml/h", drug=DILUTED)
    bay.clock("08:03")  # telemetry-stale at 08:02:00
    bay.reading("08:04", rate="1 ml/h", drug=DILUTED)
    stale = [a for a in bay.alerts if a["rule"] == "telemetry-stale"]
    assert [(a["t"][11:19], a["state"]) for a in stale] == [
        ("08:02:00", "raised"),
        ("08:04:00", "cleared"),
    ]
    assert "latched" not in stale[-1] and alarms(bay).active() == []


def test_an_override_needs_a_coded_reason_and_returns_at_its_expiry() -> None:
    bay = picc("2 ml/h")
    assert act(bay, "08:02", "override", reason="because") == []
    assert "prescriber-approved" in (bay.records[-1].reason or "")
    out = act(bay, "08:02", "override", reason="prescriber-approved", duration="1 h")
    assert (out[0]["state"], out[0]["reason"], out[0]["until"]) == (
        "overridden",
        "prescriber-approved",
        ts("09:02"),
    )
    bay.clock("09:30")
    assert lines(bay) == [
        ("08:01:00", "raised", None),
        ("08:02:00", "overridden", "rn42"),
        ("09:02:00", "resumed", None),  # still holds: back, at the bedside again
        ("09:07:00", "escalated", "charge-nurse"),
        ("09:12:00", "escalated", "unit"),
    ]


def test_an_overridden_high_alarm_that_ends_does_not_latch() -> None:
    bay = picc("3 ml/h")
    act(bay, "08:02", "override", reason="resuscitation")
    bay.reading("08:30", rate="1 ml/h", drug=DILUTED)
    bay.clock("13:00")
    assert lines(bay) == [
        ("08:01:00", "raised", None),
        ("08:02:00", "overridden", "rn42"),
        ("08:30:00", "cleared", None),
    ]


def test_an_override_longer_than_the_policy_is_refused() -> None:
    bay = picc("2 ml/h")
    assert act(bay, "08:02", "override", reason="resuscitation", duration="5 h") == []
    reason = bay.records[-1].reason or ""
    assert '"5 h" — at most 4 h' in reason  # what was asked and the limit, in hours
    assert not re.search(r"\d{10}", reason)  # never the engine's microseconds (18000000000)


def test_actions_on_unknown_alarms_or_without_a_user_are_refused_with_a_reason() -> None:
    bay = picc("2 ml/h")
    assert act(bay, "08:02", "ack", alert="a-999999") == []
    assert "active or latched" in (bay.records[-1].reason or "")
    assert bay.send("08:02", "ack", alert=alert_id(bay)) == []  # no "by"
    assert "user id" in (bay.records[-1].reason or "")
    act(bay, "08:03", "ack")
    assert act(bay, "08:04", "ack") == []
    assert "already by rn42" in (bay.records[-1].reason or "")
    assert [r.status for r in bay.records[-4:]] == ["rejected", "rejected", "accepted", "rejected"]


def test_an_action_at_the_instant_of_a_deadline_comes_first() -> None:
    bay = picc("2 ml/h")
    act(bay, "08:06", "ack")  # the escalation was due at 08:06:00 exactly
    bay.clock("08:30")
    assert lines(bay) == [("08:01:00", "raised", None), ("08:06:00", "acknowledged", "rn42")]


async def test_a_replayed_shift_with_actions_prints_every_transition_in_time_order() -> None:
    events = [
        {"type": "patient", "bed": "B1", "weight": "1 kg", "postnatal_age": "5 day"},
        {"type": "line", "line": "L1", "bed": "B1", "kind": "picc", "tip_confirmed": True},
        {"type": "connect", "pump": "P1", "line": "L1"},
        {"type": "patency_check", "line": "L1", "result": "blood_return"},
    ]
    script = [("08:00", e) for e in events] + [
        ("08:01", {"type": "reading", "pump": "P1", "rate": "3 ml/h", "drug": DILUTED}),
        ("08:02", {"type": "pause", "alert": "a-000001", "by": "rn42"}),
        ("08:10", {"type": "ack", "alert": "a-000001", "by": "rn42"}),
        ("08:20", {"type": "reading", "pump": "P1", "rate": "1 ml/h", "drug": DILUTED}),
        ("08:25", {"type": "reset", "alert": "a-000001", "by": "charge1"}),
        ("08:30", {"type": "clock"}),
    ]
    text = "".join(json.dumps({"t": ts(c), **e}) + "\n" for c, e in script)
    out = io.StringIO()
    await replay(io.BytesIO(text.encode()), source="test", library=QUIET, out=out)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(a["t"][11:19], a["state"], a.get("audience"), a.get("by")) for a in got] == [
        ("08:01:00", "raised", None, None),
        ("08:02:00", "paused", None, "rn42"),
        ("08:04:00", "resumed", None, None),
        ("08:06:00", "escalated", "charge-nurse", None),
        ("08:08:00", "escalated", "unit", None),
        ("08:10:00", "acknowledged", None, "rn42"),
        ("08:20:00", "cleared", None, None),
        ("08:25:00", "reset", None, "charge1"),
    ]
    assert got[6]["latched"] is True and got[7]["latched"] is True


async def test_live_a_pause_ends_on_the_live_clock_at_its_exact_time(tmp_path: Path) -> None:
    """The monitor's clock task sleeps until the alarm layer's next deadline too."""
    from calguard.drivers.clock import ScaledClock, SystemClock
    from calguard.drivers.virtual import VirtualDriver

    from tests.live import LiveBay, now_ts
    from tests.people import add_staff, guard, keyring, token

    clock = ScaledClock(60.0, anchor_us=SystemClock().now_us())  # a 2 min pause lasts 2 s
    url = "virtual://alarms-live"
    db, keys = f"sqlite:///{tmp_path / 'log.sqlite3'}", keyring(tmp_path)
    await add_staff(db)
    checks = guard(db, keys)
    async with LiveBay([VirtualDriver(url)], clock=clock, library=QUIET, guard=checks) as bay:
        t = now_ts(clock)
        for event in (
            {"t": t, "type": "patient", "bed": "B1", "weight": "1 kg", "postnatal_age": "5 day"},
            {
                "t": t,
                "type": "line",
                "line": "L1",
                "bed": "B1",
                "kind": "picc",
                "tip_confirmed": True,
            },
            {"t": t, "type": "connect", "pump": "P1", "line": "L1"},
            {"t": t, "type": "patency_check", "line": "L1", "result": "blood_return"},
            {"t": t, "type": "reading", "pump": "P1", "rate": "2 ml/h", "drug": DILUTED},
        ):
            VirtualDriver.put(url, event)
        await bay.until(lambda: bay.of("rate-weight", "raised"))
        alert = bay.of("rate-weight")[0]["alert"]
        await checks.ready.wait()
        rn1 = token(keys, "rn1")
        command = json.dumps({"action": "pause", "alert": alert, "token": rn1}).encode()
        assert bay.monitor.command(command, "test") is None
        await bay.until(lambda: bay.of("rate-weight", "resumed"), within=10)
        refused = json.dumps({"action": "reset", "alert": alert, "token": rn1}).encode()
        assert "still holds" in (bay.monitor.command(refused, "test") or "")
        assert "one of ack" in (bay.monitor.command(b'{"action": "silence"}', "test") or "")
        assert "not JSON" in (bay.monitor.command(b"{", "test") or "")
    paused = bay.of("rate-weight", "paused")[0]
    resumed = bay.of("rate-weight", "resumed")[0]
    assert resumed["t"] == paused["until"]  # exactly when the pause ended


def test_the_view_shows_each_alarm_with_its_state() -> None:
    from calguard.view import render

    bay = picc("3 ml/h")
    act(bay, "08:02", "ack", by="rn42")
    bay.clock("08:03")
    text = render(bay.engine, title="B", now=bay.engine.now or 0, alarms=alarms(bay))
    assert "ALARMS (1)" in text and "[acknowledged by rn42]" in text
    bay.reading("08:05", rate="1 ml/h", drug=DILUTED)
    text = render(bay.engine, title="B", now=bay.engine.now or 0, alarms=alarms(bay))
    assert "[acknowledged (latched) by rn42]" in text  # still shown until reset


def down_at_0804() -> tuple[Bedside, str, str]:
    """B1 high, acknowledged, then its condition ends (latched); B2 medium, paused until
    08:05 and still holding; then the monitor goes down."""
    bay = Bedside(QUIET, alarms=True)
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    bay.admit("08:00", bed="B2", line="L2", pump="P2", kind="picc", tip_confirmed=True)
    bay.reading("08:01", rate="3 ml/h", drug=DILUTED)  # B1: high
    bay.reading("08:01", rate="2 ml/h", drug=DILUTED, pump="P2")  # B2: medium
    b1, b2 = (str(a["alert"]) for a in bay.alerts if a["state"] == "raised")
    act(bay, "08:02", "ack", alert=b1)
    act(bay, "08:03", "pause", alert=b2)  # until 08:05
    bay.reading("08:04", rate="1 ml/h", drug=DILUTED)  # B1 ends: latched, acknowledged
    return bay, b1, b2


def check_restored(lines_logged: list[dict[str, Any]], b1: str, b2: str) -> None:
    restarted = AlarmManager(QUIET.alarms)
    # the monitor was down from 08:04:30 to 08:10; B2's condition still holds
    late = restarted.restore(lines_logged, {b2}, us("08:10"))
    assert [(tr.state, format_ts(tr.t)[11:19], tr.audience) for tr in late] == [
        ("resumed", "08:05:00", None),  # the pause ran out while it was down
        ("escalated", "08:10:00", "charge-nurse"),  # 5 min after it resumed
    ]
    kept = {a.id: a for a in restarted.active()}
    assert set(kept) == {b1, b2}
    assert kept[b1].latched and kept[b1].acked_by == "rn42"  # still shown until reset
    assert kept[b2].state == "active" and kept[b2].audience == 1


def test_restore_rebuilds_acknowledged_paused_and_latched_alarms_from_their_lines() -> None:
    """What a restarted monitor does with the lines its last run logged."""
    bay, b1, b2 = down_at_0804()
    check_restored(bay.alerts, b1, b2)


async def test_the_alarm_states_survive_a_round_trip_through_the_log(db_url: str) -> None:
    """The lines a restarted monitor reads back from its log (SQLite and PostgreSQL): in
    the order emitted, and only B2 still open (B1's condition ended; its alarm is latched)."""
    bay, b1, b2 = down_at_0804()
    async with AlertLog(db_url) as log:
        await log.start_session("live", "before the restart", QUIET)
        for line in bay.alerts:
            log.add_transition(AlertTransition.from_dict(line))
    async with AlertLog(db_url) as log:
        opened = await log.open_alerts()
        logged = await log.alarm_lines(us("08:00"))
    assert [a["alert"] for a in opened] == [b2]
    assert logged == bay.alerts
    check_restored(logged, b1, b2)


def test_a_high_alarm_whose_condition_ended_while_the_monitor_was_down_latches() -> None:
    """The warm start clears B1's alert (its condition is gone); the alarm layer latches it,
    so the nurse still has to see and reset it. B2's medium alarm just ends."""
    bay = Bedside(QUIET, alarms=True)
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    bay.admit("08:00", bed="B2", line="L2", pump="P2", kind="picc", tip_confirmed=True)
    bay.reading("08:01", rate="3 ml/h", drug=DILUTED)  # B1: high
    bay.reading("08:01", rate="2 ml/h", drug=DILUTED, pump="P2")  # B2: medium
    raised = [AlertTransition.from_dict(a) for a in bay.alerts if a["state"] == "raised"]
    missed = [replace(tr, t=us("08:01:30"), state="cleared") for tr in raised]
    restarted = AlarmManager(QUIET.alarms)
    out = restore_alarms(restarted, bay.alerts, Engine(QUIET), missed, us("08:01:30"))
    assert [(tr.alert, tr.state, tr.latched) for tr in out] == [
        (raised[0].alert, "cleared", True),
        (raised[1].alert, "cleared", False),
    ]
    (left,) = restarted.active()
    assert (left.id, left.state) == (raised[0].alert, "latched")


def test_a_bed_s_alarms_come_from_its_own_index_through_raise_clear_and_reset() -> None:
    """``of_bed`` answers from a per-bed index (an alarm storm asks it for every line): it
    stays exact as alarms are raised, latch, clear and are reset."""
    manager = AlarmManager(QUIET.alarms)
    lines = []
    for n, bed in enumerate(["B1", "B2", "B1", None]):
        tr = AlertTransition(
            n, "raised", f"a-{n:06d}", "rate-volume", "high",
            Description("", bed=bed, pump=f"P{n}", channel="A"), QUIET.version,
        )  # fmt: skip
        lines += manager.process([tr], n)
    assert [a.id for a in manager.of_bed("B1")] == ["a-000000", "a-000002"]
    assert [a.id for a in manager.of_bed(None)] == ["a-000003"]
    cleared = replace(manager.alarms["a-000000"].last, t=10, state="cleared")
    manager.process([cleared], 10)  # a high clinical alarm latches: still B1's
    assert [a.id for a in manager.of_bed("B1")] == ["a-000000", "a-000002"]
    manager.act(AlarmAction("reset", 11, "a-000000", "rn42"))
    assert [a.id for a in manager.of_bed("B1")] == ["a-000002"]
    assert manager.of_bed("B9") == [] and set(manager.alarms.beds) == {"B1", "B2", None}
