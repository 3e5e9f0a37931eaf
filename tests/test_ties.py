"""Actions win ties: a person's action at the very instant of an alarm-layer deadline comes
first, however many other inputs share that instant."""

from __future__ import annotations

from typing import Any

from tests.support import Bedside
from tests.test_alarms import DILUTED, QUIET  # a library without telemetry-stale


def _bay() -> tuple[Bedside, str]:
    """1 kg infant, calcium on a confirmed PICC at 2 ml/h: a medium rate-weight alarm at
    08:01, due to escalate to the charge nurse at 08:06:00 exactly."""
    bay = Bedside(QUIET, alarms=True)
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    bay.admit("08:00", bed="B2", line="L2", pump="P2", kind="picc", tip_confirmed=True)
    bay.reading("08:01", rate="2 ml/h", drug=DILUTED)
    alert = next(a["alert"] for a in bay.alerts if a["rule"] == "rate-weight")
    return bay, str(alert)


def _of(bay: Bedside, alert: str) -> list[tuple[str, str, Any]]:
    return [
        (a["t"][11:19], a["state"], a.get("audience") or a.get("by"))
        for a in bay.alerts
        if a["alert"] == alert
    ]


def test_an_ack_third_of_three_inputs_at_the_deadline_stops_the_escalation() -> None:
    bay, alert = _bay()
    bay.reading("08:06", pump="P2", rate="0.5 ml/h", drug="Dextrose 10%")  # first
    bay.send("08:06", "site_check", line="L2", grade=0, by="rn7")  # second
    bay.send("08:06", "ack", alert=alert, by="rn42")  # third, at the deadline itself
    bay.clock("08:30")
    assert _of(bay, alert) == [("08:01:00", "raised", None), ("08:06:00", "acknowledged", "rn42")]


def test_without_the_ack_the_deadline_fires_at_its_exact_time_all_the_same() -> None:
    bay, alert = _bay()
    bay.reading("08:06", pump="P2", rate="0.5 ml/h", drug="Dextrose 10%")
    bay.send("08:06", "site_check", line="L2", grade=0, by="rn7")
    bay.reading("08:06:30", pump="P2", rate="0.5 ml/h", drug="Dextrose 10%")
    assert _of(bay, alert) == [
        ("08:01:00", "raised", None),
        ("08:06:00", "escalated", "charge-nurse"),  # stamped with the deadline, not 08:06:30
    ]


def test_a_clock_event_at_the_deadline_fires_it_so_a_later_ack_is_late() -> None:
    """A clock event is time moving on: what is due at its instant fires."""
    bay, alert = _bay()
    bay.clock("08:06")
    bay.send("08:06", "ack", alert=alert, by="rn42")
    assert _of(bay, alert) == [
        ("08:01:00", "raised", None),
        ("08:06:00", "escalated", "charge-nurse"),
        ("08:06:00", "acknowledged", "rn42"),
    ]


def test_two_acks_at_one_deadline_both_win() -> None:
    bay, first = _bay()
    bay.reading("08:01", pump="P2", rate="2 ml/h", drug=DILUTED)
    second = [a["alert"] for a in bay.alerts if a["rule"] == "rate-weight"][1]
    bay.send("08:06", "ack", alert=first, by="rn42")
    bay.send("08:06", "ack", alert=second, by="rn7")
    bay.clock("08:30")
    assert [s for _, s, _ in _of(bay, first)] == ["raised", "acknowledged"]
    assert [s for _, s, _ in _of(bay, second)] == ["raised", "acknowledged"]


def test_an_action_does_not_fire_the_engines_timers_of_its_own_instant() -> None:
    """A site check documented at exactly 60 min is on time, even when another nurse's
    acknowledgement shares that instant (and comes first)."""
    bay = Bedside(QUIET, alarms=True)
    bay.admit("08:00")  # a PIV: site checks hourly while calcium runs
    bay.reading("08:00", rate="1 ml/h", drug=DILUTED)
    bay.admit("08:00", bed="B2", line="L2", pump="P2", kind="picc", tip_confirmed=True)
    bay.reading("08:00", pump="P2", rate="2 ml/h", drug=DILUTED)  # a medium alarm to ack
    alert = next(a["alert"] for a in bay.alerts if a["rule"] == "rate-weight")
    bay.send("09:00", "ack", alert=alert, by="rn7")
    bay.send("09:00", "site_check", line="L1", grade=0, by="rn1")
    bay.clock("09:10")
    assert [a for a in bay.alerts if a["rule"] == "site-check-overdue"] == []
