"""Time and order: duplicates dropped, late readings never move a channel backwards, the
clock only goes forward, and timers fire at their expiry whatever the input rhythm."""

from __future__ import annotations

from tests.support import Bedside

CA = "Calcium gluconate 20 mg/ml"


def test_a_redelivered_reading_is_dropped_as_a_duplicate() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA, seq=1)
    bay.reading("08:05", rate="1 ml/h", drug=CA, seq=1)
    assert [r.status for r in bay.records[-2:]] == ["accepted", "duplicate"]
    assert "seq 1 of P1/A was already received" in (bay.records[-1].reason or "")


def test_a_pump_that_restarts_its_counter_is_not_mistaken_for_duplicates() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA, seq=1)
    bay.reading("08:06", rate="1 ml/h", drug=CA, seq=2)
    bay.reading("08:07", rate="180 ml/h", drug=CA, seq=1)  # power cycle: seq starts again
    assert bay.records[-1].status == "accepted"
    assert "rate-volume" in bay.active_rules()


def test_an_out_of_order_reading_is_logged_but_does_not_change_the_channel() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05:10", rate="1 ml/h", drug=CA)
    bay.reading("08:05:05", rate="180 ml/h", drug=CA)  # older: arrived late over the network
    assert bay.records[-1].status == "out_of_order"
    assert "rate-volume" not in bay.active_rules()


def test_the_clock_never_goes_backwards_and_output_stays_in_time_order() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.send("08:10", "clock")
    bay.send("08:07", "site_check", line="L1", grade=2)  # documented late
    times = [a["t"] for a in bay.alerts]
    assert times == sorted(times)
    assert bay.engine.now is not None and bay.of("site-abnormal")[0]["t"] == "2026-11-21T08:10:00Z"


def test_a_late_documented_check_counts_from_when_it_was_done() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:00", rate="1 ml/h", drug=CA)
    for minute in range(1, 60):
        bay.reading(f"08:{minute:02d}", rate="1 ml/h", drug=CA)
    bay.reading("09:00", rate="1 ml/h", drug=CA)
    bay.send("09:05", "site_check", line="L1", grade=0)
    bay.send("09:04", "clock")  # never moves time back
    # overdue at 09:00, cleared when the check is documented at 09:05
    assert bay.states("site-check-overdue") == [
        ("2026-11-21T09:00:00Z", "raised", "medium"),
        ("2026-11-21T09:05:00Z", "cleared", "medium"),
    ]


def test_timers_fire_at_their_expiry_across_a_long_gap_in_input() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.clock("23:00")  # one input, fifteen hours later
    fired = [(a["t"][11:19], a["rule"], a["state"]) for a in bay.alerts]
    assert fired == [
        ("08:05:00", "concentration-peripheral", "raised"),  # 20 mg/ml continuous on a PIV
        ("08:06:00", "telemetry-stale", "raised"),
        ("09:05:00", "site-check-overdue", "raised"),
        ("09:35:00", "site-check-overdue", "escalated"),
    ]


def test_finish_fires_what_is_due_at_the_last_instant() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    bay.reading("08:06", pump="P2", rate="1 ml/h", drug="Dextrose 10%")
    assert bay.of("telemetry-stale") == []
    bay.finish()
    assert bay.states("telemetry-stale") == [("2026-11-21T08:06:00Z", "raised", "medium")]


def test_timers_due_before_a_refused_event_are_not_held_back() -> None:
    bay = Bedside()
    bay.admit()
    bay.reading("08:05", rate="1 ml/h", drug=CA)
    # a calcium medication without its dose is refused; the stale alert due at 08:06 must
    # still come out now, not with some later event
    out = bay.send("08:10", "medication", bed="B1", drug="Calcium gluconate 10%")
    assert bay.records[-1].status == "rejected"
    assert [(a["t"][11:19], a["rule"]) for a in out] == [("08:06:00", "telemetry-stale")]
