"""Time you can trust: in live mode the monitor's clock is the time. A device's own clock
is kept for the record and for ordering its readings, checked against a tolerance
(clock-skew), and never moves the engine; documentation may be back-dated within a
window, never dated ahead."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from calguard.config.site import Charting
from calguard.drivers.mqtt import MqttDriver
from calguard.monitor.timeutil import MINUTE_US, parse_ts

from tests.brokers import Broker
from tests.live import LiveBay, admission, now_ts
from tests.support import Bedside, ts

CA = "Calcium gluconate 20 mg/ml"


def live(bay: Bedside, clock: str, type: str, *, at: str | None = None, **fields: Any) -> None:
    """An input the monitor received at ``clock`` carrying its own time ``at``."""
    bay.send(at or clock, type, received=ts(clock), **fields)


def ward() -> Bedside:
    """An infant on a confirmed PICC with calcium at 1 ml/h from P1 since 08:00 (live)."""
    bay = Bedside()
    bay.admit("08:00", kind="picc", tip_confirmed=True)
    live(bay, "08:00", "reading", pump="P1", rate="1 ml/h", drug=CA, seq=1)
    return bay


def skew_lines(bay: Bedside) -> list[tuple[str, str]]:
    return [(a["t"][11:19], a["state"]) for a in bay.alerts if a["rule"] == "clock-skew"]


def test_a_reading_from_2099_raises_clock_skew_and_moves_no_timer() -> None:
    bay = ward()
    live(bay, "08:00:30", "reading", at="2099-01-01T00:00:00Z", pump="P1", rate="1 ml/h",
         drug=CA, seq=2)  # fmt: skip
    assert bay.engine.now == parse_ts(ts("08:00:30"))  # not 2099
    (skew,) = [a for a in bay.alerts if a["rule"] == "clock-skew"]
    assert skew["state"] == "raised" and skew["pump"] == "P1" and skew["priority"] == "medium"
    assert "is about 72 years ahead of the monitor's" in skew["message"]
    assert skew["limit"] == "5 s"
    # the pump then falls silent: telemetry-stale 60 s after the monitor *received* it
    bay.clock("08:02")
    (stale,) = [a for a in bay.alerts if a["rule"] == "telemetry-stale"]
    assert stale["t"] == ts("08:01:30")


def test_a_pump_clock_in_1999_is_skew_once_it_lasts_and_clears_when_it_is_back() -> None:
    """Behind is a clock fault only once it has lasted the stale timeout (60 s): late
    delivery is not a wrong clock. Its readings count all along, in arrival order."""
    bay = ward()
    for clock, seq in (("08:00:10", 2), ("08:00:40", 3), ("08:01:10", 4)):
        live(bay, clock, "reading", at="1999-06-01T00:00:00Z", pump="P1", rate="1 ml/h",
             drug=CA, seq=seq)  # fmt: skip
        assert bay.records[-1].status == "accepted"
    live(bay, "08:01:20", "reading", at="08:01:21", pump="P1", rate="1 ml/h", drug=CA, seq=5)
    assert skew_lines(bay) == [("08:01:10", "raised"), ("08:01:20", "cleared")]
    assert "behind the monitor's" in next(
        a["message"] for a in bay.alerts if a["rule"] == "clock-skew"
    )


def test_a_backlog_delivered_late_is_not_a_clock_fault() -> None:
    """A broker that held readings for 40 s delivers them late, then on time again."""
    bay = ward()
    for k in range(40):
        live(bay, f"08:01:{k:02d}", "reading", at=f"08:00:{k + 10:02d}", pump="P1",
             rate="1 ml/h", drug=CA, seq=2 + k)  # fmt: skip
    live(bay, "08:01:41", "reading", at="08:01:41", pump="P1", rate="1 ml/h", drug=CA, seq=50)
    assert skew_lines(bay) == []
    assert all(r.status == "accepted" for r in bay.records[-41:])


def test_a_late_redelivery_is_a_duplicate_and_leaves_no_alarm() -> None:
    bay = ward()
    live(bay, "08:05", "reading", at="08:00", pump="P1", rate="1 ml/h", drug=CA, seq=1)
    assert bay.records[-1].status == "duplicate"
    live(bay, "08:05:01", "reading", at="08:05:01", pump="P1", rate="1 ml/h", drug=CA, seq=2)
    assert skew_lines(bay) == []


def test_a_power_cycled_pump_restarting_its_counter_and_clock_is_never_a_duplicate() -> None:
    """After a power cycle: seq from 1 again, the real-time clock back at 2000-01-01."""
    bay = ward()
    for seq in range(2, 6):
        live(bay, f"08:00:{seq:02d}", "reading", at=f"08:00:{seq:02d}", pump="P1",
             rate="1 ml/h", drug=CA, seq=seq)  # fmt: skip
    live(bay, "08:02", "reading", at="2000-01-01T00:00:00Z", pump="P1", rate="180 ml/h",
         drug=CA, seq=1)  # fmt: skip
    assert bay.records[-1].status == "accepted"
    assert ("rate-volume", "raised") in {(a["rule"], a["state"]) for a in bay.alerts}


def test_a_pump_clock_stepped_back_a_little_still_counts_its_newer_readings() -> None:
    """An NTP step on the pump (4 s fast to 4 s slow): seq says the reading is newer."""
    bay = ward()
    live(bay, "08:00:10", "reading", at="08:00:14", pump="P1", rate="1 ml/h", drug=CA, seq=10)
    live(bay, "08:00:11", "reading", at="08:00:07", pump="P1", rate="180 ml/h", drug=CA, seq=11)
    assert bay.records[-1].status == "accepted"
    assert ("rate-volume", "raised") in {(a["rule"], a["state"]) for a in bay.alerts}


def test_within_the_tolerance_a_late_reading_is_still_out_of_order() -> None:
    bay = ward()
    live(bay, "08:00:10", "reading", at="08:00:10", pump="P1", rate="2 ml/h", drug=CA, seq=3)
    live(bay, "08:00:11", "reading", at="08:00:08", pump="P1", rate="1 ml/h", drug=CA, seq=2)
    assert bay.records[-1].status == "out_of_order"
    assert skew_lines(bay) == []


def test_documentation_may_be_back_dated_within_the_window_never_ahead() -> None:
    bay = ward()
    bay.clock("08:50", received=ts("08:50"))
    # charted at 08:58 for a check done at 08:48: kept with its own time
    live(bay, "08:58", "site_check", at="08:48", line="L1", grade=0, by="rn1")
    assert bay.records[-1].status == "accepted"
    line = bay.engine.ward.lines["L1"]
    assert line.last_site_check_t == parse_ts(ts("08:48"))
    # two hours back: refused with the window in words
    live(bay, "09:00", "site_check", at="07:00", line="L1", grade=0, by="rn1")
    assert bay.records[-1].status == "rejected"
    assert "back-dated by at most 1 h" in (bay.records[-1].reason or "")
    assert "2 h before the monitor's clock" in (bay.records[-1].reason or "")
    # ten minutes ahead: refused; three seconds ahead (within the tolerance): at the receipt
    live(bay, "09:01", "patency_check", at="09:11", line="L1", result="blood_return")
    assert bay.records[-1].status == "rejected"
    assert "ahead of the monitor's clock" in (bay.records[-1].reason or "")
    live(bay, "09:02", "patency_check", at="09:02:03", line="L1", result="blood_return")
    assert bay.records[-1].status == "accepted"
    assert bay.engine.ward.lines["L1"].last_patency_t == parse_ts(ts("09:02"))
    assert bay.engine.now == parse_ts(ts("09:02"))


def test_a_refused_reading_counts_at_its_receipt_not_its_own_time() -> None:
    bay = ward()
    live(bay, "08:01", "reading", at="2099-01-01T00:00:00Z", pump="P1", rate="30 mg")
    assert bay.records[-1].status == "rejected"
    assert bay.engine.now == parse_ts(ts("08:01"))
    (invalid,) = [a for a in bay.alerts if a["rule"] == "telemetry-invalid"]
    assert invalid["t"] == ts("08:01")


def test_replaying_the_stamped_inputs_gives_the_live_alert_lines() -> None:
    bay = ward()
    live(bay, "08:00:30", "reading", at="2099-01-01T00:00:00Z", pump="P1", rate="1 ml/h",
         drug=CA, seq=2)  # fmt: skip
    live(bay, "08:40", "site_check", at="08:35", line="L1", grade=0, by="rn1")
    live(bay, "08:41", "reading", at="08:41", pump="P1", rate="180 ml/h", drug=CA, seq=3)
    bay.clock("10:00", received=ts("10:00"))
    again = Bedside()
    for record in bay.records:
        again.raw(record.raw)
    again.finish()
    bay.finish()
    assert again.alerts == bay.alerts


# -- live, over MQTT, against a real Mosquitto ----------------------------------------------

PREFIX = "calguard/clock"


async def _publish(broker: Broker, items: list[tuple[str, object]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="clock-pub", timeout=5) as c:
        for topic, payload in items:
            await c.publish(f"{PREFIX}/{topic}", orjson.dumps(payload), qos=1)


async def _ward_run(broker: Broker, client_id: str, bad_clocks: bool) -> list[dict[str, Any]]:
    url = f"mqtt://{broker.host}:{broker.port}/{PREFIX}"
    driver = MqttDriver(url, client_id=client_id, charting=[Charting("charting")])
    async with LiveBay([driver]) as bay:
        await bay.until(lambda: driver.is_open)
        t = now_ts()
        events = [
            *admission(t, bed="B1", line="L1", pump="P1"),
            *admission(t, bed="B2", line="L2", pump="P2"),
        ]
        items: list[tuple[str, object]] = [("events/charting", events)]
        items.append(("pumps/P2/telemetry", _reading("P2", t, "180 ml/h", 1)))  # B2: too fast
        items.append(("pumps/P1/telemetry", _reading("P1", t, "1 ml/h", 1)))
        if bad_clocks:
            items.append(
                ("pumps/P1/telemetry", _reading("P1", "2099-01-01T00:00:00Z", "1 ml/h", 2))
            )
            items.append(
                ("pumps/P1/telemetry", _reading("P1", "1999-01-01T00:00:00Z", "1 ml/h", 3))
            )
        await _publish(broker, items)
        await bay.until(lambda: len(bay.of("rate-volume")) == 1)
        if bad_clocks:
            await bay.until(lambda: bool(bay.of("clock-skew")))
        await bay.until(lambda: bay.counts["accepted"] >= len(events) + (4 if bad_clocks else 2))
        engine = bay.monitor.engine
        assert engine.now is not None
        assert abs(engine.now - parse_ts(t)) < 10 * MINUTE_US  # never 2099, never 1999
        due = engine.timers.next_due()
        assert due is not None and due - parse_ts(t) < 2 * MINUTE_US  # no timer moved to 2099
    return bay.alerts


def _reading(pump: str, t: str, rate: str, seq: int) -> dict[str, object]:
    return {"t": t, "type": "reading", "pump": pump, "rate": rate, "drug": CA, "seq": seq}


async def test_over_mqtt_bad_pump_clocks_raise_clock_skew_and_leave_other_beds_alone(
    broker: Broker,
) -> None:
    plain = await _ward_run(broker, "clock-plain", bad_clocks=False)
    skewed = await _ward_run(broker, "clock-skewed", bad_clocks=True)
    others = Counter((a["rule"], a["state"], a["bed"]) for a in plain if a["bed"] == "B2")
    assert others == Counter((a["rule"], a["state"], a["bed"]) for a in skewed if a["bed"] == "B2")
    assert others[("rate-volume", "raised", "B2")] == 1
    skew = [a for a in skewed if a["rule"] == "clock-skew"]
    assert skew[0]["state"] == "raised" and skew[0]["pump"] == "P1" and skew[0]["bed"] == "B1"
    assert not [a for a in plain if a["rule"] == "clock-skew"]


def test_a_training_clock_scales_the_tolerance_by_its_speed() -> None:
    """At 240x, 45 ms of the machine's own delay is 11 s of ward time: not a pump clock
    fault. The speed is stamped with the input, so a replay decides the same."""
    fast, real = ward(), ward()
    fast.send("08:00:31", "reading", received=ts("08:00:20"), clock_speed=240, pump="P1",
              rate="1 ml/h", drug=CA, seq=2)  # fmt: skip
    real.send("08:00:31", "reading", received=ts("08:00:20"), pump="P1", rate="1 ml/h",
              drug=CA, seq=2)  # fmt: skip
    assert skew_lines(fast) == []
    assert skew_lines(real) == [("08:00:20", "raised")]
    fast.send(
        "09:00:30",
        "reading",
        received=ts("08:30:00"),
        clock_speed=240,
        pump="P1",
        rate="1 ml/h",
        drug=CA,
        seq=3,
    )  # 30 min ahead: a fault even at 240x (20 min)
    assert skew_lines(fast) == [("08:30:00", "raised")]
    fast.send("08:31", "reading", received=ts("08:31"), clock_speed=-1, pump="P1",
              rate="1 ml/h", drug=CA, seq=4)  # fmt: skip
    assert fast.records[-1].status == "rejected"


def test_a_monitor_condition_from_outside_is_refused() -> None:
    """Only the monitor reports its own conditions (log-unavailable): a device that sends
    one is refused, so nobody can clear that alarm from the broker."""
    bay = ward()
    live(bay, "08:01", "monitor", condition="log-unavailable", active=False)
    assert bay.records[-1].status == "rejected"
    assert "only the monitor itself reports" in (bay.records[-1].reason or "")


async def test_a_command_cannot_bring_its_own_time(tmp_path: Path) -> None:
    """A station's command carrying "received" (or "t") is stamped by the monitor all the
    same: the engine's clock never moves to a time a sender chose."""
    from calguard.drivers.virtual import VirtualDriver

    from tests.live import LiveBay
    from tests.people import add_staff, guard, keyring, token

    feed = "virtual://command-time"
    db, keys = f"sqlite:///{tmp_path / 'log.sqlite3'}", keyring(tmp_path)
    await add_staff(db)
    checks = guard(db, keys)
    async with LiveBay([VirtualDriver(feed)], guard=checks) as bay:
        t = now_ts()
        for event in admission(t):
            VirtualDriver.put(feed, event)
        VirtualDriver.put(feed, {"t": t, "type": "reading", "pump": "P1", "rate": "180 ml/h",
                                 "drug": CA})  # fmt: skip
        await bay.until(lambda: bool(bay.of("rate-volume")))
        alert = bay.of("rate-volume")[0]["alert"]
        await checks.ready.wait()
        command = {"action": "ack", "alert": alert, "token": token(keys, "rn1"),
                   "received": "2099-01-01T00:00:00Z", "t": "2099-01-01T00:00:00Z",
                   "clock_speed": 10000}  # fmt: skip
        assert bay.monitor.command(orjson.dumps(command), "test/commands") is None
        engine = bay.monitor.engine
        assert engine.now is not None and engine.now < parse_ts("2030-01-01T00:00:00Z")
