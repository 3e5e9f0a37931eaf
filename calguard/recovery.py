"""Warm start: a restarted monitor rebuilds its state from its own durable log.

Without it a restart would forget every documented infant, line and check, and the
calcium already given today (the 24-hour dose would restart from zero: failing open).
The inputs of earlier live sessions are replayed through a fresh engine - documentation
of the last week, readings of the last dose window - with their transitions discarded
(they were emitted when they happened). Then the engine's active alerts are reconciled
with the alerts the log holds open: the same condition keeps its id; an alert open in
the log but no longer active is cleared now; one active but never announced (a timer
that ran out while the monitor was down) is raised now, stamped with its exact time.

A warm start is part of the session it begins, so that replaying that session gives the
live run's alert lines: the live monitor logs a ``warm_start`` marker as the session's
first input (the time it restarted at, the first free alert id, the windows it read), and
``calguard export`` writes after it the context the warm start read (``context`` lines:
the inputs replayed, the alerts left open, the alarm lines). ``calguard replay`` rebuilds
the same state from those lines (``ExportedContext``) before the session's own inputs.

Snapshots (#12). Replaying a week grows with the log (32.5 s and 1 GB for an hour of 500
channels; hours at a hospital's scale), so the live monitor logs a snapshot of its state
every few minutes (``calguard.alerts.snapshots``) and a warm start restores the latest one
of its site and replays only the inputs logged after it, streamed, with its progress in
the log every second. A snapshot that is refused (another format, a library the engine
cannot take, a damaged payload) or older than the dose window is passed over, and said so:
the warm start then replays the log as above. Its marker names the snapshot it began from,
and an export then carries that snapshot (in ``snapshot_part`` lines, each under the line
cap) and the inputs after it as its context.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from calguard.alerts.alarms import AlarmManager
from calguard.alerts.library_store import SWITCH
from calguard.alerts.log import AlertLog
from calguard.alerts.snapshots import (
    SnapshotRecord,
    count_inputs_after,
    inputs_after,
    latest_snapshot,
    snapshot_by_id,
)
from calguard.monitor.engine import Engine
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.library import Library
from calguard.monitor.snapshot import SnapshotError, from_snapshot
from calguard.monitor.timeutil import format_ts, parse_ts
from calguard.monitor.transitions import AlertTransition, Description
from calguard.pipeline import Pipeline

__all__ = [
    "CONTEXT",
    "WARM_START",
    "ExportedContext",
    "RecoverySource",
    "WarmStart",
    "exported_context",
    "restore_alarms",
    "warm_start",
]

#: the event types of a warm start's marker and of the context lines an export carries
WARM_START, CONTEXT = "warm_start", "context"

log = logging.getLogger(__name__)
_WEEK_US = 7 * 86_400_000_000
_MARGIN_US = 3_600_000_000  # readings a little older than the dose window, for continuity
_FUTURE_US = 60_000_000  # a logged input later than this after the restart is not replayed
_PART_CHARS = 512 * 1024  # base64 characters per snapshot_part line: well under the line cap
_PROGRESS_S = 1.0  # a progress line this often while a warm start replays


class RecoverySource(Protocol):
    """Where a warm start reads the past: the durable log, or an exported session."""

    async def recovery_inputs(
        self, documentation_since_us: int, readings_since_us: int, *, site: str | None = None
    ) -> list[Any]: ...

    async def next_alert_id(self) -> int: ...

    async def open_alerts(self, *, site: str | None = None) -> list[dict[str, Any]]: ...

    async def alarm_lines(
        self, since_us: int, *, site: str | None = None
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ContextInput:
    """One logged input, as a warm start reads it."""

    raw: str
    event_type: str | None
    source: str
    t_us: int | None


class ExportedContext:
    """The context lines of an exported session, as a ``RecoverySource``: what the live
    warm start read, already cut to its windows by the exporter."""

    def __init__(self, marker: dict[str, Any], lines: Iterable[dict[str, Any]]) -> None:
        self.marker = marker
        self.inputs: list[ContextInput] = []
        self.open: list[dict[str, Any]] = []
        self.alarm: list[dict[str, Any]] = []
        self.parts: list[str] = []  # the snapshot the live warm start began from, if any
        for line in lines:
            if "snapshot_part" in line:
                self.parts.append(str(line.get("data", "")))
            elif "input" in line:
                self.inputs.append(
                    ContextInput(
                        str(line["input"]),
                        line.get("event_type"),
                        str(line.get("source", "")),
                        line.get("t_us"),
                    )
                )
            elif "open_alert" in line:
                self.open.append(line["open_alert"])
            elif "alarm_line" in line:
                self.alarm.append(line["alarm_line"])

    async def recovery_inputs(
        self, documentation_since_us: int, readings_since_us: int, *, site: str | None = None
    ) -> list[Any]:
        return list(self.inputs)

    async def next_alert_id(self) -> int:
        return int(self.marker["first_alert_id"])

    async def open_alerts(self, *, site: str | None = None) -> list[dict[str, Any]]:
        return list(self.open)

    async def alarm_lines(self, since_us: int, *, site: str | None = None) -> list[dict[str, Any]]:
        return list(self.alarm)

    def snapshot(self) -> SnapshotRecord | None:
        """The snapshot the marker names, from the export's own lines."""
        named = self.marker.get("snapshot")
        if not isinstance(named, dict):
            return None
        try:
            payload = base64.b64decode("".join(self.parts), validate=True)
            return SnapshotRecord(
                int(named["id"]),
                int(named["session"]),
                int(named["seq"]),
                int(named["t_us"]),
                str(named["library"]),
                int(named["format"]),
                payload,
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("the export's snapshot cannot be read: %s", exc)
            return None


def context_lines(
    marker_raw: str,
    rows: Iterable[Any],
    open_alerts: Iterable[dict[str, Any]],
    alarm_lines: Iterable[dict[str, Any]],
    snapshot: bytes | None = None,
) -> Iterable[str]:
    """An export's warm start: the marker, then what the warm start read, one per line
    (the snapshot it began from in parts, each well under the line cap)."""
    yield marker_raw
    if snapshot is not None:
        data = base64.b64encode(snapshot).decode()
        parts = range(0, len(data), _PART_CHARS)
        for n, at in enumerate(parts):
            part = {"type": CONTEXT, "snapshot_part": n, "parts": len(parts)}
            yield orjson.dumps({**part, "data": data[at : at + _PART_CHARS]}).decode()
    for row in rows:
        line = {"type": CONTEXT, "input": row.raw, "event_type": row.event_type}
        yield orjson.dumps({**line, "source": row.source, "t_us": row.t_us}).decode()
    for alert in open_alerts:
        yield orjson.dumps({"type": CONTEXT, "open_alert": alert}).decode()
    for alarm_line in alarm_lines:
        yield orjson.dumps({"type": CONTEXT, "alarm_line": alarm_line}).decode()


async def exported_context(url: str | None, session: int, marker_raw: str) -> list[str]:
    """The lines an export of ``session`` carries for its warm start: what that warm start
    read from the log then (the live sessions before it, in the windows its marker names)."""
    marker = orjson.loads(marker_raw)
    site = marker.get("site")
    since = {k: parse_ts(marker[k]) for k in ("documentation_since", "readings_since")}
    named = marker.get("snapshot")
    payload = None
    async with AlertLog.reading(url) as source:
        record = await snapshot_by_id(source, int(named["id"])) if isinstance(named, dict) else None
        if record is not None:  # the snapshot that warm start began from, and what followed
            payload = record.payload
            _, after = await _after(source, record, site, session)
            rows = [row async for row in after]
        else:
            if isinstance(named, dict):
                log.warning(
                    "snapshot %s is no longer in the log: the export cannot carry it", named
                )
            rows = await source.recovery_inputs(
                since["documentation_since"],
                since["readings_since"],
                site=site,
                before_session=session,
            )
        open_alerts = await source.open_alerts(site=site, before_session=session)
        alarm_lines = await source.alarm_lines(
            parse_ts(marker["alarm_lines_since"]), site=site, before_session=session
        )
    return list(context_lines(marker_raw, rows, open_alerts, alarm_lines, payload))


@dataclass
class WarmStart:
    engine: Engine
    replayed: int
    kept: int
    transitions: list[AlertTransition]  # what changed while the monitor was down
    #: the alert lines of the same week, in the order emitted: the alarm layer's state
    alarm_lines: list[dict[str, Any]] = field(default_factory=list)
    #: what the session logs first, so that an export of it can be replayed (WARM_START)
    marker: dict[str, Any] = field(default_factory=dict)


def _subject(d: dict[str, Any] | Description) -> tuple[Any, ...]:
    get = d.get if isinstance(d, dict) else lambda k: getattr(d, k)
    return tuple(get(k) for k in ("bed", "line", "pump", "channel"))


async def warm_start(
    alert_log: RecoverySource, library: Library, now_us: int, *, site: str | None = None
) -> WarmStart:
    """Rebuild from the live sessions of ``site`` only: never from training, demo or
    replay sessions, never from another site's. From the latest snapshot and the inputs
    after it when there is one to trust, else from the log's windows."""
    window = library.rule("dose-daily").q("window").us
    since = {"documentation_since": now_us - _WEEK_US, "readings_since": now_us - window}
    since["readings_since"] -= _MARGIN_US
    restored = await _from_snapshot(alert_log, library, now_us, since["readings_since"], site)
    if restored is not None:
        engine, record = restored
        total, rows = await _after(alert_log, record, site)
    else:
        engine, record = Engine(library), None
        listed = await alert_log.recovery_inputs(
            since["documentation_since"], since["readings_since"], site=site
        )
        total, rows = len(listed), _each(listed)
    replayed, skipped = await _replay(engine, rows, total, now_us)
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
            engine.book.adopt(key, engine.book.format_id(engine.book.next_id))
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
    if replayed or record is not None:
        log.info(
            "warm start: %d logged inputs replayed (%d skipped); %d open alerts kept; "
            "%d changes while down",
            replayed - skipped,
            skipped,
            kept,
            len(announce),
        )
    lines = await alert_log.alarm_lines(now_us - _WEEK_US, site=site)
    marker: dict[str, Any] = {
        "t": format_ts(now_us),
        "type": WARM_START,
        "site": site,
        "first_alert_id": first_new,
        **{k: format_ts(v) for k, v in since.items()},
        "alarm_lines_since": format_ts(now_us - _WEEK_US),
    }
    if record is not None:  # an export of this session carries it, and what followed it
        marker["snapshot"] = record.marker()
    return WarmStart(engine, replayed, kept, announce, lines, marker)


def _since(record: SnapshotRecord) -> int:
    """Inputs after a snapshot are looked for from a margin before it (the time index)."""
    return record.t_us - _MARGIN_US


async def _after(
    source: RecoverySource | AlertLog,
    record: SnapshotRecord,
    site: str | None,
    before_session: int | None = None,
) -> tuple[int, AsyncIterator[Any]]:
    """(about how many, the stream of) the inputs logged after a snapshot."""
    if isinstance(source, AlertLog):
        after, since = (record.session_id, record.seq), _since(record)
        total = await count_inputs_after(
            source, after, since, site=site, before_session=before_session
        )
        return total, inputs_after(source, after, since, site=site, before_session=before_session)
    rows = source.inputs if isinstance(source, ExportedContext) else []
    return len(rows), _each(rows)


async def _each(rows: list[Any]) -> AsyncIterator[Any]:
    for row in rows:
        yield row


async def _from_snapshot(
    source: RecoverySource, library: Library, now_us: int, oldest_us: int, site: str | None
) -> tuple[Engine, SnapshotRecord] | None:
    """The engine of the latest snapshot, if there is one to trust; else None, said why."""
    if isinstance(source, ExportedContext):
        record = source.snapshot()  # the one the live warm start began from, if any
    elif isinstance(source, AlertLog):
        record = await latest_snapshot(source, site=site)
    else:
        record = None
    if record is None:
        return None
    why = None
    if record.t_us < oldest_us:
        why = "it is older than the dose window"
    elif record.t_us > now_us + _FUTURE_US:
        why = f"it is dated {format_ts(record.t_us)}, after now"
    else:
        try:
            engine = from_snapshot(record.snapshot(), library)
        except SnapshotError as exc:
            why = str(exc)
    if why is not None:
        log.warning("warm start: snapshot %d not used (%s): replaying the log", record.id, why)
        return None
    log.info(
        "warm start: from snapshot %d (session %d, seq %d, %s)",
        record.id,
        record.session_id,
        record.seq,
        format_ts(record.t_us),
    )
    return engine, record


async def _replay(
    engine: Engine, rows: AsyncIterator[Any], total: int, now_us: int
) -> tuple[int, int]:
    """Feed logged inputs through ``engine`` (its transitions discarded: they were emitted
    when they happened); (inputs read, skipped). A progress line every second."""
    # the engine's state only: the alarm layer (acknowledged, paused, latched ...) is
    # rebuilt from its own lines by the live monitor (restore_alarms)
    pipeline = Pipeline(engine, alarms=False)
    read = skipped = 0
    shown = time.monotonic()
    async for row in rows:
        read += 1
        if time.monotonic() - shown >= _PROGRESS_S:
            shown = time.monotonic()
            log.info("warm start: %d / %d inputs replayed", read, total)
        if row.event_type in ALARM_ACTIONS:  # people's actions: the alarm layer's own lines
            continue
        if row.event_type == SWITCH:  # the library this session starts on is the one to run
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
    return read, skipped


def restore_alarms(
    alarms: AlarmManager,
    lines: list[dict[str, Any]],
    engine: Engine,
    missed: list[AlertTransition],
    now: int,
) -> list[AlertTransition]:
    """The alarms as people left them (acknowledged, paused, latched ...), then what changed
    while the monitor was down through the alarm layer (a high alarm whose condition ended
    meanwhile latches). Returns the lines to emit now: deadlines that ran out while down
    carry their exact times."""
    ids = {a.alert for a in engine.active.values()}
    ids |= {tr.alert for tr in missed if tr.state == "cleared"}
    out = alarms.restore(lines, ids, now)
    for tr in missed:
        if tr.state == "cleared" and tr.alert not in alarms.alarms:
            out.append(tr)  # no alarm left to end: the clear is only recorded
        else:
            out += alarms.process([tr], now)
    for active in engine.active.values():
        if active.alert not in alarms.alarms:  # no lines of it to restore: annunciate again
            alarms.resume(active, engine.library.version, now)
    return sorted(out, key=lambda tr: tr.t)
