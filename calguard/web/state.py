"""What the central station shows, as one JSON document built from the monitor's own state.

The station reads the engine and the alarm layer directly (they live in the same process
and the same event loop), so the page shows exactly what the monitor decides, never a
copy that could lag or drift. ``ward_state`` is a pure function of that state and the
time: the feed (``calguard.web.feed``) sends it on every change and once a second, the
API serves it at ``/api/state``, and the tests read it like the page does.

What the page needs to be safe to look at is decided here, not in the browser: the bed
order (worst alarm first, then beds as people count them: B2 before B10), the priority
of each tile with its label in words (never colour alone), which alarm sounds (only one
that annunciates: the alarm layer's acknowledge, audio pause and override silence it),
and the banners of every failure that makes the screen less than the truth.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from calguard.alerts.alarms import Alarm, AlarmManager
from calguard.alerts.log import redact_url
from calguard.app import Monitor
from calguard.monitor.engine import Engine
from calguard.monitor.model import Bed, ChannelState, LineState
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import PRIORITY_RANK, AlertTransition
from calguard.monitor.units import format_number

__all__ = ["BANNER_RULES", "ActionMemory", "StationInfo", "bed_key", "ward_state"]

#: technical alarms that make the whole screen less than the truth: a banner besides the list
BANNER_RULES = ("clock-skew", "log-unavailable", "monitor-lagging", "telemetry-stale")
_LAG_BANNER_S = 2.0  # the monitor's loop running this late is said on every screen
_LABELS = {"high": "HIGH", "medium": "MEDIUM", "low": "LOW", None: "OK"}


def bed_key(name: str) -> tuple[Any, ...]:
    """Beds as people count them: B2 before B10, then by name."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if p.isdigit() else p for p in parts)


@dataclass(frozen=True)
class StationInfo:
    """What the station says about itself on every page."""

    title: str
    mode: str  # live | training | demo
    timezone: str
    logged: bool  # the monitor keeps a durable log (accounts, history, report, audit)


@dataclass
class ActionMemory:
    """Who paused or overrode each alarm: the alarm layer keeps the state and the reason,
    the station remembers the name from the lines it sees go out (and from the lines a
    warm start restored), so "overridden until 14:00 by charge1" can be said."""

    by: dict[tuple[str, str], str] = field(default_factory=dict)  # (alert, state) -> who

    def see(self, line: AlertTransition | dict[str, Any]) -> None:
        if isinstance(line, AlertTransition):  # a line going out: no need to render it
            line = {"alert": line.alert, "state": line.state, "by": line.by}
        alert, state, who = line.get("alert"), line.get("state"), line.get("by")
        if not isinstance(alert, str) or not isinstance(state, str):
            return
        if state in ("raised", "cleared", "reset"):
            self.forget(alert)
        elif state in ("paused", "overridden") and isinstance(who, str):
            self.by[(alert, state)] = who

    def forget(self, alert: str) -> None:
        for state in ("paused", "overridden"):
            self.by.pop((alert, state), None)

    def prune(self, alive: Iterable[str]) -> None:
        keep = set(alive)
        for key in [k for k in self.by if k[0] not in keep]:
            del self.by[key]


def ward_state(
    monitor: Monitor,
    info: StationInfo,
    memory: ActionMemory,
    *,
    lag_s: float = 0.0,
    audit: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole ward as the page shows it, at the monitor's time now."""
    engine = monitor.engine
    now = max(monitor.clock.now_us(), engine.now or 0)
    alarms = monitor.pipeline.alarms
    shown = alarms.active() if alarms is not None else []
    memory.prune(a.id for a in shown)
    alarm_docs = [_alarm(a, alarms, memory) for a in shown] if alarms is not None else []
    by_bed: dict[str, list[dict[str, Any]]] = {}
    for doc in alarm_docs:
        by_bed.setdefault(str(doc.get("bed") or ""), []).append(doc)
    tiles = [
        _bed_tile(engine, bed, now, by_bed.get(bed.bed, [])) for bed in engine.ward.beds.values()
    ]
    known = {bed for bed in engine.ward.beds}
    tiles += [
        _empty_tile(name, docs) for name, docs in by_bed.items() if name and name not in known
    ]
    tiles.sort(key=lambda t: (-_rank(t["worst"]), bed_key(t["bed"])))
    policy = engine.library.alarms
    return {
        "title": info.title,
        "mode": info.mode,
        "timezone": info.timezone,
        "now": format_ts(now),
        "now_us": now,
        "speed": monitor.clock.speed,
        "library": {
            "name": engine.library.name,
            "version": engine.library.version,
            "override_reasons": list(policy.override_reasons),
            "override_max": policy.override_max.text,
            "pause": {p: q.text for p, q in policy.pause.items()},
        },
        "limits": _limits(engine),
        "sound": _sound(shown),
        "banners": _banners(monitor, info, shown, lag_s),
        "beds": tiles,
        "unassigned": _loose(engine, now),
        "alarms": alarm_docs,
        "audit": audit or [],
        "inputs": monitor.processed,
    }


def _rank(priority: str | None) -> int:
    return -1 if priority is None else PRIORITY_RANK[priority]


def _limits(engine: Engine) -> dict[str, Any]:
    ctx = engine.rules.ctx
    rate = ctx.rate_volume.value
    return {
        "rate_ml_min": rate,
        "rate_ml_h": rate * 60,
        "rate_text": ctx.rate_volume.text,
        "dose_mmol_kg": ctx.dose_limit.value,
        "dose_text": ctx.dose_limit.text,
        "dose_window": format_duration(ctx.dose_window.value),
    }


# -- alarms --------------------------------------------------------------------------------


def _alarm(alarm: Alarm, alarms: AlarmManager, memory: ActionMemory) -> dict[str, Any]:
    doc = alarm.snapshot(alarms.policy.audiences)
    doc["raised"] = format_ts(alarm.raised_t)
    doc["latched"] = alarm.latched
    doc["condition"] = alarm.condition
    doc["annunciating"] = alarm.annunciating
    doc["label"] = _LABELS[alarm.last.priority]
    for state in ("paused", "overridden"):
        who = memory.by.get((alarm.id, state))
        if who is not None and alarm.state == state:
            doc[f"{state}_by"] = who
    if alarm.escalate_at is not None:
        doc["escalates"] = format_ts(alarm.escalate_at)
    doc["subject"] = " ".join(
        str(x)
        for x in (
            doc.get("bed"),
            doc.get("line"),
            f"{doc['pump']}/{doc.get('channel', 'A')}" if doc.get("pump") else None,
        )
        if x
    )
    return doc


def _sound(shown: list[Alarm]) -> dict[str, Any]:
    """The tone of the worst alarm that annunciates; the alarm layer alone silences one."""
    loud = [a for a in shown if a.annunciating]
    if not loud:
        quiet = len(shown)
        why = (
            "no alarm"
            if not quiet
            else f"{quiet} alarm(s) acknowledged, paused or overridden: none annunciating"
        )
        return {"priority": None, "alarms": 0, "why": why}
    worst = max(loud, key=lambda a: PRIORITY_RANK[a.last.priority]).last.priority
    return {"priority": worst, "alarms": len(loud), "why": f"{len(loud)} alarm(s) annunciating"}


def _banners(
    monitor: Monitor, info: StationInfo, shown: list[Alarm], lag_s: float
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for driver in monitor.drivers:
        if driver.state != "connected":
            url = redact_url(driver.url)
            out.append(_banner("driver", "high", f"input {url} is {driver.state}"))
    for ch in monitor.engine.ward.channels.values():
        if ch.offline:
            out.append(_banner("pump", "high", f"pump {ch.pump} is offline ({ch.name})"))
    for alarm in shown:
        if alarm.last.rule in BANNER_RULES and alarm.condition:
            text = f"{alarm.last.rule}: {alarm.last.description.message}"
            out.append(_banner(alarm.last.rule, alarm.last.priority, text))
    if lag_s >= _LAG_BANNER_S:
        text = f"monitor-lagging: the monitor's loop ran {lag_s:.1f} s late"
        out.append(_banner("monitor-lagging", "high", text))
    if not info.logged:
        text = "no durable log: nothing is recorded, and nobody can log in to act on alarms"
        out.append(_banner("log-unavailable", "medium", text))
    guard = monitor.guard
    if guard is not None and guard.problem is not None and info.logged:
        out.append(_banner("accounts", "medium", f"accounts: {guard.problem}"))
    unique = {b["text"]: b for b in out}
    return sorted(unique.values(), key=lambda b: -PRIORITY_RANK[b["priority"]])


def _banner(kind: str, priority: str, text: str) -> dict[str, str]:
    return {"kind": kind, "priority": priority, "label": _LABELS[priority], "text": text}


# -- beds ----------------------------------------------------------------------------------


def _bed_tile(engine: Engine, bed: Bed, now: int, alarms: list[dict[str, Any]]) -> dict[str, Any]:
    worst = _worst(alarms)
    return {
        "bed": bed.bed,
        "worst": worst,
        "label": _LABELS[worst],
        "weight": f"{format_number(bed.weight_kg)} kg" if bed.weight_kg else None,
        "dose": _dose(engine, bed, now),
        "lines": [_line(engine, line, now) for line in engine.ward.lines_of(bed)],
        "alarms": [a["alert"] for a in alarms],
        "headline": alarms[0]["message"] if alarms else None,
    }


def _empty_tile(name: str, alarms: list[dict[str, Any]]) -> dict[str, Any]:
    """A bed the alarms name that the engine has no state for (restored after a restart)."""
    worst = _worst(alarms)
    return {
        "bed": name,
        "worst": worst,
        "label": _LABELS[worst],
        "weight": None,
        "dose": None,
        "lines": [],
        "alarms": [a["alert"] for a in alarms],
        "headline": alarms[0]["message"] if alarms else None,
    }


def _worst(alarms: list[dict[str, Any]]) -> str | None:
    if not alarms:
        return None
    return str(max(alarms, key=lambda a: PRIORITY_RANK[a["priority"]])["priority"])


def _dose(engine: Engine, bed: Bed, now: int) -> dict[str, Any] | None:
    if not bed.weight_kg:
        return None
    limit = engine.rules.ctx.dose_limit
    total = bed.ledger.total(now) / bed.weight_kg
    return {
        "mmol_kg": total,
        "text": limit.show(total),
        "limit": limit.value,
        "limit_text": limit.text,
        "share": total / limit.value if limit.value else 0.0,
    }


def _line(engine: Engine, line: LineState, now: int) -> dict[str, Any]:
    ctx = engine.rules.ctx
    site = None
    if line.calcium_on and line.peripheral and line.session_start is not None:
        site = max(line.session_start, line.last_site_check_t or line.session_start)
        site += ctx.site_medium.us
    rotation = None
    if line.carried_calcium and line.peripheral:
        rotation = line.inserted + ctx.dwell.us
    return {
        "line": line.line,
        "kind": line.kind,
        "site": line.site,
        "site_check_due": _due(site, now),
        "rotation_due": _due(rotation, now),
        "channels": [_channel(engine, ch, now) for ch in engine.ward.channels_on(line)],
    }


def _due(t: int | None, now: int) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"at": format_ts(t), "at_us": t, "in_s": (t - now) / 1e6}


def _channel(engine: Engine, ch: ChannelState, now: int) -> dict[str, Any]:
    ctx = engine.rules.ctx
    limit = ctx.rate_volume.value
    silent = None  # said once half the time telemetry-stale allows has passed
    if ch.stale_watch and ch.latest_t is not None and now - ch.latest_t > ctx.stale_timeout.us / 2:
        silent = format_duration(now - ch.latest_t)
    return {
        "name": ch.name,
        "pump": ch.pump,
        "channel": ch.channel,
        "drug": ch.drug_name,
        "calcium": ch.calcium,
        "status": ch.status,
        "pump_alarm": ch.alarm,
        "offline": ch.offline,
        "rate_ml_h": ch.rate_ml_min * 60,
        "rate_ml_min": ch.rate_ml_min,
        "rate_text": ch.rate_text,
        "share": ch.rate_ml_min / limit if limit else 0.0,
        "last_reading": format_ts(ch.latest_t) if ch.latest_t is not None else None,
        "silent_for": silent,
    }


def _loose(engine: Engine, now: int) -> list[dict[str, Any]]:
    """Channels with readings and no documented line: no bed to show them on."""
    ward = engine.ward
    loose = [
        ch
        for ch in ward.channels.values()
        if ward.documented_line(ch) is None and ch.latest_t is not None
    ]
    return [_channel(engine, ch, now) for ch in sorted(loose, key=lambda c: bed_key(c.name))]
