"""The last 24 h of one bed, for its chart: channel rates, calcium given, alarms, checks.

The rates, alarms and bedside checks come from the durable log (the inputs the monitor
applied and the alert lines it emitted), so the chart shows what happened before a
restart too. A pump reading every second is 86,400 rows a day per channel: the database
hands back the first and the last reading of each minute of each channel (a rate that
changes within a minute and back is still drawn, and every rate alarm is marked from its
own line), and only those rows are parsed, by the engine's own event parser, so a rate
means in the chart what it meant to the rules.

The calcium curve comes from the engine's dose ledger (the exact cumulative calcium of
this infant): the calcium given since the window's start, rising to the total the
``dose-daily`` rule compares with its limit now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from calguard.alerts.blocks import LoggedInput
from calguard.alerts.inputs_read import read_inputs
from calguard.alerts.schema import alert_transitions, input_blocks, inputs
from calguard.alerts.sessions import SessionFilter
from calguard.monitor.engine import Engine
from calguard.monitor.errors import CalGuardError
from calguard.monitor.events import Reading, parse_event

__all__ = ["HOUR_US", "WINDOW_US", "BedHistory", "Mark", "load_history"]

HOUR_US = 3_600_000_000
WINDOW_US = 24 * HOUR_US
_BUCKET_US = 60_000_000  # first and last reading of each minute
_DOSE_STEP_US = 5 * 60_000_000
_CHECKS = ("site_check", "patency_check")
_MARKED = ("raised", "escalated", "acknowledged", "paused", "overridden", "cleared", "reset")


@dataclass(frozen=True)
class Mark:
    """A moment on the chart: an alarm line or a bedside check."""

    t: int
    kind: str  # an alarm line's state, or site_check / patency_check
    priority: str | None  # an alarm's
    text: str


@dataclass
class BedHistory:
    bed: str
    start: int
    end: int
    rate_limit_ml_min: float
    dose_limit: float  # mmol/kg
    dose_limit_text: str
    weight_kg: float | None
    rates: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # ml/min
    dose: list[tuple[int, float]] = field(default_factory=list)  # mmol/kg since start
    alarms: list[Mark] = field(default_factory=list)
    checks: list[Mark] = field(default_factory=list)
    logged: bool = True  # False: no log, only the engine's dose curve

    def to_dict(self) -> dict[str, Any]:
        return {
            "bed": self.bed,
            "start_us": self.start,
            "end_us": self.end,
            "rate_limit_ml_min": self.rate_limit_ml_min,
            "dose_limit_mmol_kg": self.dose_limit,
            "weight_kg": self.weight_kg,
            "rates": {ch: [[t, v] for t, v in points] for ch, points in self.rates.items()},
            "dose": [[t, v] for t, v in self.dose],
            "alarms": [m.__dict__ for m in self.alarms],
            "checks": [m.__dict__ for m in self.checks],
            "logged": self.logged,
        }


async def load_history(
    engine: Engine,
    bed: str,
    end: int,
    reader: AsyncEngine | None,
    which: SessionFilter,
    window_us: int = WINDOW_US,
) -> BedHistory:
    """The bed's last ``window_us`` (24 h) up to ``end`` (the monitor's time); ``reader``
    None: no log."""
    ctx = engine.rules.ctx
    state = engine.ward.beds.get(bed)
    history = BedHistory(
        bed,
        end - window_us,
        end,
        ctx.rate_volume.value,
        ctx.dose_limit.value,
        ctx.dose_limit.text,
        state.weight_kg if state is not None else None,
        logged=reader is not None,
    )
    if state is not None and state.weight_kg:
        history.dose = _dose_curve(state.ledger, state.weight_kg, history.start, end)
    if reader is None:
        return history
    lines = [ln.line for ln in engine.ward.lines_of(state)] if state is not None else []
    channels = {ch.key for line in lines for ch in engine.ward.channels_on(engine.ward.lines[line])}
    async with reader.connect() as conn:
        alarm_rows = (await conn.execute(_alarm_query(bed, history, which))).all()
        channels |= {(r.pump, r.channel or "A") for r in alarm_rows if r.pump}
        history.alarms = [_alarm_mark(r) for r in alarm_rows if r.state in _MARKED]
        if channels:
            reading_rows = (await conn.execute(_reading_query(channels, history, which))).all()
            in_blocks = await _block_readings(conn, channels, history, which)
            history.rates = _rates(sorted([*reading_rows, *in_blocks], key=lambda r: r.t_us))
        check_rows = (await conn.execute(_check_query(bed, lines, history, which))).all()
        history.checks = [_check_mark(r.t_us, r.event_type, r.raw) for r in check_rows]
    return history


def _dose_curve(ledger: Any, weight_kg: float, start: int, end: int) -> list[tuple[int, float]]:
    base = ledger.cumulative(start)
    times = [*range(start, end, _DOSE_STEP_US), end]
    return [(t, (ledger.cumulative(t) - base) / weight_kg) for t in times]


def _alarm_query(bed: str, h: BedHistory, which: SessionFilter) -> Any:
    at = alert_transitions.c
    return (
        select(
            at.t_us, at.state, at.rule, at.priority, at.pump, at.channel, at.message, at.alert_id
        )
        .where(
            at.bed == bed,
            at.t_us >= h.start,
            at.t_us <= h.end,
            at.session_id.in_(which.query()),
        )
        .order_by(at.t_us, at.id)
    )


def _alarm_mark(row: Any) -> Mark:
    return Mark(
        row.t_us, row.state, row.priority, f"{row.alert_id} {row.rule} {row.state}: {row.message}"
    )


def _reading_query(channels: set[tuple[str, str]], h: BedHistory, which: SessionFilter) -> Any:
    c = inputs.c
    minute = (c.t_us // _BUCKET_US).label("minute")
    ours = or_(*(and_(c.pump == pump, c.channel == channel) for pump, channel in sorted(channels)))
    picked = (
        select(func.min(c.id).label("first"), func.max(c.id).label("last"))
        .where(
            ours,
            c.event_type == "reading",
            c.status == "accepted",
            c.t_us >= h.start,
            c.t_us <= h.end,
            c.session_id.in_(which.query()),
        )
        .group_by(c.pump, c.channel, minute)
        .subquery()
    )
    ids = select(picked.c.first).union(select(picked.c.last))
    return select(c.t_us, c.pump, c.channel, c.raw).where(c.id.in_(ids)).order_by(c.t_us, c.id)


async def _block_readings(
    conn: AsyncConnection, channels: set[tuple[str, str]], h: BedHistory, which: SessionFilter
) -> list[LoggedInput]:
    """The readings kept in blocks (schema version 8): the first and last of each minute
    of each channel, as ``_reading_query`` picks them from rows."""
    b = input_blocks.c
    where = (b.session_id.in_(which.query()), b.t_max >= h.start, b.t_min <= h.end)

    def keep(r: LoggedInput) -> bool:
        return (r.pump, r.channel) in channels and h.start <= (r.t_us or 0) <= h.end

    spans: dict[tuple[Any, ...], list[LoggedInput]] = {}
    for r in await read_inputs(conn, (false(),), where, keep):
        span = spans.setdefault((r.pump, r.channel, (r.t_us or 0) // _BUCKET_US), [r, r])
        if (r.t_us or 0) < (span[0].t_us or 0):
            span[0] = r
        if (r.t_us or 0) >= (span[1].t_us or 0):
            span[1] = r
    return list({(r.session_id, r.seq): r for span in spans.values() for r in span}.values())


def _rates(rows: Sequence[Any]) -> dict[str, list[tuple[int, float]]]:
    rates: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        reading = _reading(row.raw)
        if reading is not None:
            rates.setdefault(f"{row.pump}/{row.channel}", []).append(
                (row.t_us, reading.rate_ml_min)
            )
    return rates


def _reading(raw: str) -> Reading | None:
    try:
        event = parse_event(orjson.loads(raw))
    except (orjson.JSONDecodeError, CalGuardError, ValueError):
        return None
    return event if isinstance(event, Reading) else None


def _check_query(bed: str, lines: list[str], h: BedHistory, which: SessionFilter) -> Any:
    c = inputs.c
    where = c.bed == bed if not lines else or_(c.bed == bed, c.line.in_(lines))
    return (
        select(c.t_us, c.event_type, c.raw)
        .where(
            where,
            c.event_type.in_(_CHECKS),
            c.status == "accepted",
            c.t_us >= h.start,
            c.t_us <= h.end,
            c.session_id.in_(which.query()),
        )
        .order_by(c.t_us, c.id)
    )


def _check_mark(t_us: int, kind: str, raw: str) -> Mark:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    if kind == "site_check":
        text = f"site check of line {obj.get('line')}: grade {obj.get('grade')}"
    else:
        text = f"patency check of line {obj.get('line')}: {obj.get('result')}"
    if obj.get("by"):
        text += f" by {obj['by']}"
    return Mark(t_us, kind, None, text)
