"""Replay: a JSON Lines file of events through the engine, on the events' own time.

Alert transitions go to ``out`` as alert lines, in time order; every input and every
transition goes to the durable log when one is given. The same file always gives the
same output: the engine only knows the time the events carry.

An export of a live session that began with a warm start opens with that warm start's
marker and context lines (calguard.recovery): the replay rebuilds the same state from them
first, so that it gives the live session's alert lines, not only for a first session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import orjson

from calguard.alerts.log import AlertLog
from calguard.drivers.replay import OversizeLine, read_lines
from calguard.monitor.engine import Engine
from calguard.monitor.library import Library
from calguard.monitor.timeutil import parse_ts
from calguard.monitor.transitions import AlertTransition
from calguard.pipeline import Pipeline
from calguard.recovery import CONTEXT, WARM_START, ExportedContext, restore_alarms, warm_start

__all__ = ["ReplaySummary", "replay"]

_YIELD_EVERY = 2000  # lines between chances for the log writer to run


@dataclass
class ReplaySummary:
    lines: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    transitions: int = 0
    session_id: int | None = None

    def describe(self) -> str:
        c = self.counts
        return (
            f"{self.lines} lines: {c.get('accepted', 0)} accepted, "
            f"{c.get('rejected', 0)} rejected, "
            f"{c.get('duplicate', 0)} duplicate, {c.get('out_of_order', 0)} out of order; "
            f"{self.transitions} alert transitions"
        )


async def replay(
    stream: BinaryIO,
    *,
    source: str,
    library: Library,
    out: TextIO,
    log: AlertLog | None = None,
    alarms: bool = True,
) -> ReplaySummary:
    pipeline = Pipeline(Engine(library), log, alarms=alarms)
    summary = ReplaySummary()
    if log is not None:
        summary.session_id = await log.start_session("replay", source, library)

    def emit(transitions: list[AlertTransition]) -> None:
        for tr in transitions:
            line = tr.to_json()
            out.write(line + "\n")
            if log is not None:
                log.add_transition(tr, line)
        summary.transitions += len(transitions)

    marker: dict[str, object] | None = None  # a warm start's, while its context is read
    context: list[dict[str, object]] = []
    for line_no, raw in read_lines(stream):
        summary.lines = line_no
        if not isinstance(raw, OversizeLine) and (line_no == 1 or marker is not None):
            head = _context_line(raw)
            if head is not None and head.get("type") == WARM_START and line_no == 1:
                marker = head
                continue
            if head is not None and marker is not None and head.get("type") == CONTEXT:
                context.append(head)
                continue
        if marker is not None:  # the session's own inputs begin: resume as it did live
            pipeline = await _resume(library, log, alarms, marker, context, emit)
            marker = None
        if isinstance(raw, OversizeLine):
            emit(
                pipeline.feed_oversize(
                    raw.head, raw.size, raw.sha256, source=source, line_no=line_no
                )
            )
        else:
            emit(pipeline.feed_line(raw, source=source, line_no=line_no))
        if log is not None and line_no % _YIELD_EVERY == 0:
            await log.checkpoint()
            await asyncio.sleep(0)
    if marker is not None:
        pipeline = await _resume(library, log, alarms, marker, context, emit)
    emit(pipeline.finish())
    out.flush()
    summary.counts = dict(pipeline.counts)
    if log is not None:
        await log.flush()
    return summary


def _context_line(raw: bytes) -> dict[str, object] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


async def _resume(
    library: Library,
    log: AlertLog | None,
    alarms: bool,
    marker: dict[str, object],
    context: list[dict[str, object]],
    emit: Callable[[list[AlertTransition]], None],
) -> Pipeline:
    """The live warm start again, from the export's context lines, at the marker's time."""
    restart = parse_ts(str(marker["t"]))
    site = marker.get("site")
    warm = await warm_start(
        ExportedContext(marker, context),
        library,
        restart,
        site=site if isinstance(site, str) else None,
    )
    pipeline = Pipeline(warm.engine, log, alarms=alarms)
    missed = warm.transitions
    if pipeline.alarms is not None:
        missed = restore_alarms(pipeline.alarms, warm.alarm_lines, warm.engine, missed, restart)
    emit(missed)
    return pipeline
