"""Warm start: a restarted monitor rebuilds its state from its own durable log.

Without it a restart would forget every documented infant, line and check, and the
calcium already given today (the 24-hour dose would restart from zero: failing open).
The inputs of earlier live sessions are replayed through a fresh engine - documentation
of the last week, readings of the last dose window - with their transitions discarded
(they were emitted when they happened). Then the engine's active alerts are reconciled
with the alerts the log holds open: the same condition keeps its id; an alert open in
the log but no longer active is cleared now; one active but never announced (a timer
that ran out while the monitor was down) is raised now, stamped with its exact time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from calguard.alerts.log import AlertLog
from calguard.monitor.engine import Engine
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition, Description
from calguard.pipeline import Pipeline

__all__ = ["WarmStart", "warm_start"]

log = logging.getLogger(__name__)
_WEEK_US = 7 * 86_400_000_000
_MARGIN_US = 3_600_000_000  # readings a little older than the dose window, for continuity
_FUTURE_US = 60_000_000  # a logged input later than this after the restart is not replayed


@dataclass
class WarmStart:
    engine: Engine
    replayed: int
    kept: int
    transitions: list[AlertTransition]  # what changed while the monitor was down
    #: the alert lines of the same week, in the order emitted: the alarm layer's state
    alarm_lines: list[dict[str, Any]] = field(default_factory=list)


def _subject(d: dict[str, Any] | Description) -> tuple[Any, ...]:
    get = d.get if isinstance(d, dict) else lambda k: getattr(d, k)
    return tuple(get(k) for k in ("bed", "line", "pump", "channel"))


async def warm_start(
    alert_log: AlertLog, library: Library, now_us: int, *, site: str | None = None
) -> WarmStart:
    """Rebuild from the live sessions of ``site`` only: never from training, demo or
    replay sessions, never from another site's."""
    engine = Engine(library)
    window = library.rule("dose-daily").q("window").us
    rows = await alert_log.recovery_inputs(
        now_us - _WEEK_US, now_us - window - _MARGIN_US, site=site
    )
    # the engine's state only: the alarm layer (acknowledged, paused, latched ...) is
    # rebuilt from its own lines by the live monitor (monitor.live._restore_alarms)
    pipeline = Pipeline(engine, alarms=False)
    skipped = 0
    for row in rows:
        if row.event_type in ALARM_ACTIONS:  # people's actions: the alarm layer's own lines
            continue
        t_us = getattr(row, "t_us", None)
        if t_us is not None and t_us > now_us + _FUTURE_US:
            # logged before inputs were stamped with the monitor's clock: a device's
            # future time would carry the fresh engine's clock (and every timer) with it
            log.warning("warm start: skipped an input dated %s, after now", format_ts(t_us))
            skipped += 1
            continue
        try:
            pipeline.feed_line(row.raw, source=f"warm start: {row.source}")
        except Exception:  # a poisoned input must not crash every restart: skip it, say so
            log.exception("warm start: skipped an input it could not replay: %.200r", row.raw)
            skipped += 1
    pipeline.finish()
    engine.take()
    first_new = await alert_log.next_alert_id()
    engine.book.restart_ids(first_new)
    open_alerts = {(a["rule"], _subject(a)): a for a in await alert_log.open_alerts(site=site)}
    kept = 0
    announce: list[AlertTransition] = []
    for key, active in list(engine.active.items()):
        match = open_alerts.pop((active.rule, _subject(active.description)), None)
        if match is not None:
            engine.book.adopt(key, match["alert"])
            kept += 1
        else:  # became active while nobody was watching: say so now
            engine.book.adopt(key, f"a-{engine.book.next_id:06d}")
            engine.book.restart_ids(engine.book.next_id + 1)
            announce.append(active.transition(active.raised_t, "raised", library.version))
    now = engine.now or now_us
    for stale in open_alerts.values():  # open in the log, no longer a condition
        last = AlertTransition.from_dict(stale)  # its latest line, maybe the alarm layer's
        announce.append(
            AlertTransition(
                now,
                "cleared",
                last.alert,
                last.rule,
                last.priority,
                last.description,
                library.version,
            )
        )
    announce.sort(key=lambda tr: tr.t)
    if rows:
        log.info(
            "warm start: %d logged inputs replayed (%d skipped); %d open alerts kept; "
            "%d changes while down",
            len(rows) - skipped,
            skipped,
            kept,
            len(announce),
        )
    lines = await alert_log.alarm_lines(now_us - _WEEK_US, site=site)
    return WarmStart(engine, len(rows), kept, announce, lines)
