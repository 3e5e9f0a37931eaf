"""Event format v1: every kind of bad input is a clear rejection, never a crash."""

from __future__ import annotations

import json
import math

import pytest
from calguard.monitor.errors import EventError
from calguard.monitor.events import MAX_LINE_BYTES, Reading, decode_json, parse_event
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import Bedside

GOOD = {"t": "2026-11-21T08:03:00Z", "type": "reading", "pump": "P7", "rate": "1.2 ml/h"}


def reason(obj: object) -> str:
    with pytest.raises(EventError) as info:
        parse_event(obj)
    return str(info.value)


def test_the_example_reading_parses_into_canonical_units() -> None:
    event = parse_event(
        {
            **GOOD,
            "channel": "A",
            "drug": "Calcium gluconate 10%",
            "concentration": "100 mg/ml",
            "rate": "180 ml/h",
            "status": "infusing",
            "seq": 2,
            "volume_infused": "3.1 ml",
            "pressure": "45 mmHg",
            "alarm": " Occlusion ",
            "unknown_extra": [1, 2],
        }
    )
    assert isinstance(event, Reading)
    assert (event.rate_ml_min, event.concentration_mg_ml, event.volume_infused_ml) == (
        3.0,
        100.0,
        3.1,
    )
    assert (event.alarm, event.seq, event.rate_text, event.channel) == (
        "occlusion",
        2,
        "180 ml/h",
        "A",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"t": "2026-11-21T08:03:00"}, "no offset"),
        ({"t": "2026-11-21 08:03"}, "no offset"),
        ({"t": "21/11/2026 08:03"}, "not an RFC 3339 timestamp"),
        ({"t": 1795248000}, "timestamp string is expected"),
        ({"t": "2026-02-30T08:00:00Z"}, "not a calendar date"),
        ({"t": "2026-11-21T25:00:00Z"}, "out of range"),
        ({"rate": "30"}, "a bare number"),
        ({"rate": 30}, "a bare number"),
        ({"rate": "30 mll/h"}, "unknown unit"),
        ({"rate": "30 mg/h"}, "'mg/h' is a mass per time; a volume per time"),
        ({"rate": "30 ml"}, "'ml' is a volume; a volume per time"),
        ({"rate": "nan ml/h"}, "not a finite number"),
        ({"rate": "inf ml/h"}, "not a finite number"),
        ({"rate": "1e400 ml/h"}, "not a finite number"),
        ({"rate": "-1 ml/h"}, "negative"),
        ({"rate": "1 ml/h; drop table"}, "not a unit CalGuard can read"),
        ({"concentration": "10%"}, "concentration"),
        ({"pressure": "45"}, "a bare number"),
        ({"status": "running"}, "one of infusing, stopped, paused, alarm"),
        ({"mode": "turbo"}, "one of continuous, intermittent, bolus"),
        ({"seq": -1}, "non-negative whole number"),
        ({"seq": "7"}, "non-negative whole number"),
        ({"seq": True}, "non-negative whole number"),
        ({"pump": ""}, "identifier"),
        ({"pump": 7}, "identifier"),
        ({"pump": "P\n7"}, "identifier"),
        ({"type": "readings"}, "one of reading, patient"),
        ({"type": None}, "'type' is missing"),
    ],
)
def test_bad_readings_are_rejected_with_the_field_and_the_reason(
    change: dict[str, object], expected: str
) -> None:
    obj = {**GOOD, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    assert expected in reason(obj)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"t": "2026-11-21T08:00:00Z", "type": "reading", "pump": "P1"}, "'rate' is missing"),
        ({"type": "clock"}, "'t' is missing"),
        ({"t": "2026-11-21T08:00:00Z", "type": "patient"}, "'bed' is missing"),
        (
            {"t": "2026-11-21T08:00:00Z", "type": "patient", "bed": "B1", "weight": "1.2 g"},
            "between 0.2 and 20 kg",
        ),
        (
            {"t": "2026-11-21T08:00:00Z", "type": "patient", "bed": "B1", "weight": "1.2 ml"},
            "a body weight",
        ),
        (
            {
                "t": "2026-11-21T08:00:00Z",
                "type": "patient",
                "bed": "B1",
                "birth": "2026-11-22T08:00:00Z",
            },
            "after the event",
        ),
        (
            {
                "t": "2026-11-21T08:00:00Z",
                "type": "line",
                "line": "L1",
                "bed": "B1",
                "kind": "vein",
            },
            "one of piv, midline",
        ),
        (
            {
                "t": "2026-11-21T08:00:00Z",
                "type": "line",
                "line": "L1",
                "bed": "B1",
                "kind": "piv",
                "tip_confirmed": "yes",
            },
            "true or false",
        ),
        ({"t": "2026-11-21T08:00:00Z", "type": "site_check", "line": "L1", "grade": 5}, "0-4"),
        ({"t": "2026-11-21T08:00:00Z", "type": "site_check", "line": "L1", "grade": 1.0}, "0-4"),
        (
            {
                "t": "2026-11-21T08:00:00Z",
                "type": "site_check",
                "line": "L1",
                "grade": 0,
                "findings": "red",
            },
            "list of texts",
        ),
        (
            {"t": "2026-11-21T08:00:00Z", "type": "patency_check", "line": "L1", "result": "ok"},
            "blood_return, flush_ok",
        ),
        ({"t": "2026-11-21T08:00:00Z", "type": "medication", "bed": "B1"}, "'drug' is missing"),
        (
            {
                "t": "2026-11-21T08:00:00Z",
                "type": "medication",
                "bed": "B1",
                "drug": "x",
                "dose": "5 mg/h",
            },
            "a mass, volume or amount",
        ),
        ({"t": "2026-11-21T08:00:00Z", "type": "connect", "pump": "P1"}, "'line' is missing"),
        ([1, 2, 3], "must be a JSON object"),
    ],
)
def test_bad_events_of_every_type(obj: object, expected: str) -> None:
    assert expected in reason(obj)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"t":"2026-11-21T08:00:00Z","type":"reading","pump":"P1","rate":"1 ml/h"',
            "not valid JSON",
        ),
        ('{"t": NaN}', "not valid JSON"),  # NaN and Infinity are not JSON (RFC 8259)
        ("", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_malformed_lines(line: str | bytes, expected: str) -> None:
    with pytest.raises(EventError, match=expected):
        decode_json(line)


def test_a_10_mb_line_is_refused_before_it_is_decoded() -> None:
    line = (
        '{"t":"2026-11-21T08:00:00Z","type":"reading","pump":"P1","rate":"1 ml/h","x":"'
        + "a" * 10_000_000
        + '"}'
    )
    with pytest.raises(EventError, match=f"at most {MAX_LINE_BYTES}"):
        decode_json(line)


def test_a_rejection_through_the_pipeline_carries_the_line_number_and_loses_nothing() -> None:
    bay = Bedside()
    bay.raw('{"t":"2026-11-21T08:00:00Z","type":"reading","pump":"P1","rate":"30"}')
    record = bay.records[-1]
    assert record.status == "rejected"
    assert (
        record.reason is not None and "'rate'" in record.reason and "bare number" in record.reason
    )
    assert record.raw.endswith('"rate":"30"}') and record.line_no == 1 and record.pump == "P1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(
        ["1.2 ml/h", "100 mg/ml", "2026-11-21T08:00:00Z", "piv", "P1", "30", "nan ml/h", "-1 ml/h"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(
        [
            "reading",
            "patient",
            "line",
            "line_removed",
            "connect",
            "disconnect",
            "patency_check",
            "site_check",
            "medication",
            "clock",
            "nonsense",
        ]
    ),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "t",
                "pump",
                "channel",
                "rate",
                "drug",
                "concentration",
                "status",
                "mode",
                "seq",
                "bed",
                "line",
                "kind",
                "weight",
                "postnatal_age",
                "grade",
                "findings",
                "result",
                "dose",
                "pressure",
                "alarm",
                "birth",
                "inserted",
                "tip_confirmed",
            ]
        ),
        field_values,
    ),
)
def test_any_object_is_either_an_event_or_an_event_error(
    kind: str, fields: dict[str, object]
) -> None:
    try:
        parse_event({"type": kind, **fields})
    except EventError as exc:
        reason = exc.describe()
        assert reason.strip()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_never_crash_the_pipeline(data: bytes | str) -> None:
    bay = Bedside()
    bay.send("08:00", "clock")
    bay.raw(data)
    assert bay.records[-1].status in {"accepted", "rejected"}


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    unit=st.sampled_from(["ml/h", "ml/min", "mL/hr", "ul/min"]),
)
def test_valid_rates_round_trip_through_json(rate: float, unit: str) -> None:
    line = json.dumps({**GOOD, "rate": f"{rate!r} {unit}"})
    event = parse_event(decode_json(line))
    assert isinstance(event, Reading)
    factor = {"ml/h": 1 / 60, "ml/min": 1.0, "mL/hr": 1 / 60, "ul/min": 1e-3}[unit]
    assert math.isclose(event.rate_ml_min, rate * factor, rel_tol=1e-12, abs_tol=1e-300)


@pytest.mark.parametrize(
    "rate", ["\u0661\u0668\u0660 ml/h", "\uff11\uff18\uff10 ml/h", "1\u0668 ml/h"]
)
def test_digits_outside_ascii_are_refused_not_read(rate: str) -> None:
    with pytest.raises(EventError, match="digits other than 0-9 are refused"):
        parse_event({"t": "2026-11-21T08:00:00Z", "type": "reading", "pump": "P1", "rate": rate})


def test_a_timestamp_in_other_digits_is_refused() -> None:
    with pytest.raises(EventError):
        parse_event({"t": "\u0662\u0660\u0662\u0666-11-21T08:00:00Z", "type": "clock"})
