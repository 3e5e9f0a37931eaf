"""Snapshots: a restart begins from the engine's and the alarm layer's state as logged, and
replays only what came after it - with the very alert lines a monitor that never stopped
would have given."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import orjson
import pytest
from calguard.alerts.alarms import AlarmManager
from calguard.config import load_library
from calguard.monitor.engine import Engine
from calguard.monitor.snapshot import SnapshotError, from_snapshot, to_snapshot
from calguard.monitor.timeutil import format_ts
from calguard.simulators.shift import day_shift

from calguard.pipeline import Pipeline
from tests.support import us

LIBRARY = load_library()
DRUGS = (
    "Calcium gluconate 10%",
    "Calcium gluconate 20 mg/ml",
    "Sodium bicarbonate 4.2%",
    "Ceftriaxone 100 mg/ml",
    "calcium something",
    None,
)
RATES = ("0 ml/h", "0.8 ml/h", "0.81 ml/h", "2 ml/h", "6 ml/h", "130 ml/h")


def random_ward(seed: int, n: int = 400) -> list[str]:
    """A shift of a random bay: documentation, pumps, doses, checks and people's actions
    in a random order, seconds to minutes apart (event-format v1 lines)."""
    rng = random.Random(seed)
    t = us("07:00")
    seqs: dict[str, int] = {}
    out = []
    for _ in range(n):
        t += rng.choice((1, 1, 1, 5, 30, 61, 300, 900, 3700)) * 1_000_000
        bed, line, pump = (
            f"B{rng.randint(1, 2)}",
            f"L{rng.randint(1, 3)}",
            f"P{rng.randint(1, 3)}",
        )
        kind = rng.random()
        ev: dict[str, Any] = {"t": format_ts(t)}
        if kind < 0.05:
            ev |= {
                "type": "patient",
                "bed": bed,
                "weight": f"{rng.choice((0.8, 1.2, 3))} kg",
                "postnatal_age": f"{rng.randint(1, 40)} day",
            }
        elif kind < 0.1:
            kinds = ("piv", "picc", "uvc", "midline")
            ev |= {"type": "line", "line": line, "bed": bed, "kind": rng.choice(kinds)}
        elif kind < 0.15:
            ev |= {"type": "connect", "pump": pump, "channel": "A", "line": line}
        elif kind < 0.17:
            ev |= {"type": "disconnect", "pump": pump, "channel": "A"}
        elif kind < 0.2:
            ev |= {"type": "patency_check", "line": line, "result": "blood_return"}
        elif kind < 0.23:
            ev |= {"type": "site_check", "line": line, "grade": rng.choice((0, 0, 1, 2))}
        elif kind < 0.25:
            ev |= {
                "type": "medication",
                "bed": bed,
                "drug": "Calcium gluconate 10%",
                "dose": f"{rng.choice((100, 500, 2000))} mg",
                "route": "iv",
            }
        elif kind < 0.26:
            ev |= {"type": "line_removed", "line": line}
        elif kind < 0.3:
            ev |= {
                "type": rng.choice(("ack", "pause", "reset")),
                "alert": f"a-{rng.randint(1, 30):06d}",
                "by": "rn7",
            }
        elif kind < 0.33:
            ev |= {"type": "clock"}
        else:
            seqs[pump] = seqs.get(pump, 0) + 1
            ev |= {
                "type": "reading",
                "pump": pump,
                "channel": "A",
                "seq": seqs[pump],
                "rate": rng.choice(RATES),
                "status": rng.choice(("infusing", "infusing", "stopped")),
            }
            drug = rng.choice(DRUGS)
            if drug is not None:
                ev["drug"] = drug
            if rng.random() < 0.3:
                ev["pressure"] = f"{rng.randint(20, 300)} mmHg"
        out.append(json.dumps(ev))
    return out


def feed(pipeline: Pipeline, lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        out += [tr.to_json() for tr in pipeline.feed_line(line, source="test")]
    return out


def snapshot_of(pipeline: Pipeline) -> dict[str, Any]:
    alarms = pipeline.alarms.state() if pipeline.alarms is not None else None
    logged: dict[str, Any] = orjson.loads(orjson.dumps(to_snapshot(pipeline.engine, alarms)))
    return logged  # as the log holds it


def restored(snapshot: dict[str, Any]) -> Pipeline:
    pipeline = Pipeline(from_snapshot(snapshot, LIBRARY))
    assert pipeline.alarms is not None and snapshot["alarms"] is not None
    pipeline.alarms.restore_state(snapshot["alarms"])
    return pipeline


def check_equivalent(lines: list[str], cut: int) -> None:
    """All of ``lines`` through one engine, and through one restored at ``cut``."""
    whole = Pipeline(Engine(LIBRARY))
    expected = feed(whole, lines) + [tr.to_json() for tr in whole.finish()]
    before = Pipeline(Engine(LIBRARY))
    got = feed(before, lines[:cut])
    after = restored(snapshot_of(before))
    got += feed(after, lines[cut:]) + [tr.to_json() for tr in after.finish()]
    assert got == expected, f"cut at {cut}"
    assert snapshot_of(after) == snapshot_of(whole)  # and the same state at the end


def test_a_day_shift_restored_anywhere_gives_the_same_alert_lines() -> None:
    lines = [json.dumps(e) for e in day_shift()]
    rng = random.Random(12)
    for cut in (1, len(lines) // 2, len(lines) - 1, *rng.sample(range(1, len(lines)), 5)):
        check_equivalent(lines, cut)


@pytest.mark.parametrize("seed", range(40))
def test_random_wards_restored_at_a_random_point_give_identical_alert_lines(seed: int) -> None:
    lines = random_ward(seed)
    whole = Pipeline(Engine(LIBRARY))
    assert feed(whole, lines), "a ward that raised nothing would prove nothing"
    check_equivalent(lines, random.Random(seed).randint(1, len(lines) - 1))


def test_a_snapshot_round_trips_to_the_same_snapshot() -> None:
    pipeline = Pipeline(Engine(LIBRARY))
    feed(pipeline, random_ward(3, 800))
    pipeline.engine.rules.ctx.input_lag_us = 42_000_000  # the monitor said it lags 42 s
    snap = snapshot_of(pipeline)
    assert snap["channels"] and snap["timers"]["heap"] and snap["book"]["active"]
    assert snapshot_of(restored(snap)) == snap
    assert restored(snap).engine.rules.ctx.input_lag_us == 42_000_000


def taken() -> dict[str, Any]:
    pipeline = Pipeline(Engine(LIBRARY))
    feed(pipeline, [json.dumps(e) for e in day_shift()][:400])
    return snapshot_of(pipeline)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s.update(format="something-else"), "not a CalGuard engine snapshot"),
        (lambda s: s.update(version=99), "format version 99"),
        (lambda s: s.update(shape="0" * 16), "holds other state"),
        (lambda s: s["channels"][0].update(latest_t="09:00"), "ChannelState.latest_t"),
        (lambda s: s["channels"][0].pop("offline"), "ChannelState fields differ"),
        (lambda s: s["beds"][0].update(surprise=1), "Bed fields differ"),
        (lambda s: s["beds"][0]["ledger"]["t"].reverse(), "not in time order"),
        (lambda s: s["timers"].update(generation=0), "do not match the queue"),
        (lambda s: s["book"]["active"][0].__setitem__(4, "soon"), "not a"),
        (lambda s: s.pop("timers"), "KeyError"),
    ],
)
def test_a_snapshot_it_does_not_understand_is_refused(change: Any, why: str) -> None:
    snap = taken()
    change(snap)
    with pytest.raises(SnapshotError, match=why):
        from_snapshot(snap, LIBRARY)


def test_the_alarm_layer_refuses_a_state_it_does_not_understand() -> None:
    alarms = AlarmManager(LIBRARY.alarms, LIBRARY.version)
    broken = copy.deepcopy(taken()["alarms"])
    broken["alarms"][0]["acked_by"] = 7
    with pytest.raises(ValueError, match="not of their types"):
        alarms.restore_state(broken)
    assert not alarms.alarms  # nothing half restored


def test_under_another_library_the_state_is_evaluated_again_as_a_publication_would() -> None:
    snap = taken()
    snap["library"] = "an older library"
    engine = from_snapshot(snap, LIBRARY)  # the same window: it can take it
    assert engine.book.library == LIBRARY.version
    assert {a.alert for a in engine.active.values()} <= {a[0] for a in snap["book"]["active"]}
    snap["window_us"] = snap["window_us"] // 2  # a library with a longer window than the state
    for bed in snap["beds"]:
        bed["ledger"]["window_us"] //= 2
    with pytest.raises(SnapshotError, match="cannot run library"):
        from_snapshot(snap, LIBRARY)


def test_a_snapshot_is_taken_between_inputs_of_an_engine_that_has_run() -> None:
    with pytest.raises(ValueError, match="between two inputs"):
        to_snapshot(Engine(LIBRARY))
