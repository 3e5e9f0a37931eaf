"""Replay: a JSON Lines file of events through the engine, on the events' own time.

Alert transitions go to ``out`` as alert lines, in time order; every input and every
transition goes to the durable log when one is given. The same file always gives the
same output: the engine only knows the time the events carry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from calguard.alerts.log import AlertLog
from calguard.drivers.replay import OversizeLine, read_lines
from calguard.monitor.engine import Engine
from calguard.monitor.library import Library
from calguard.monitor.transitions import AlertTransition
from calguard.pipeline import Pipeline

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
    engine = Engine(library)
    pipeline = Pipeline(engine, log, alarms=alarms)
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

    for line_no, raw in read_lines(stream):
        summary.lines = line_no
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
    emit(pipeline.finish())
    out.flush()
    summary.counts = dict(pipeline.counts)
    if log is not None:
        await log.flush()
    return summary
