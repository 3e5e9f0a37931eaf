"""The live terminal view: what a nurse at the central station looks at.

Beds with their infant's weight, each line and the pump channels on it (drug, rate, the
rate against the 2 ml/min limit and, for calcium, the weight-based dose), the timers that
matter (next site check, cannula rotation, pump silence) and the active alerts, highest
priority first. ``render`` is a pure function of the engine's state; ``TerminalView``
redraws it once a second.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

from calguard.alerts.alarms import Alarm, AlarmManager
from calguard.drivers.base import Driver
from calguard.monitor.clock import Clock
from calguard.monitor.engine import Engine
from calguard.monitor.model import ChannelState, LineState
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import PRIORITY_RANK, ActiveAlert
from calguard.monitor.units import format_beside, format_number

__all__ = ["TerminalView", "render"]

_COLOURS = {"high": "\x1b[1;41;97m", "medium": "\x1b[1;43;30m", "low": "\x1b[1;46;30m"}
_RESET = "\x1b[0m"


def _until(due: int | None, now: int) -> str:
    if due is None:
        return "-"
    return (
        f"in {format_duration(due - now)}"
        if due >= now
        else f"{format_duration(now - due)} OVERDUE"
    )


def _channel_row(engine: Engine, ch: ChannelState, now: int) -> str:
    limit = engine.rules.ctx.rate_volume
    share = ch.rate_ml_min / limit.value * 100 if limit.value else 0.0
    percent = f"{format_beside(share, 100.0, significant=2)}%"  # 100.02% is over, not 100%
    dose = ""
    bed = engine.ward.bed_of(ch)
    product = ch.match.product if ch.match else None
    if ch.calcium and product and ch.concentration_mg_ml and bed and bed.weight_kg:
        mg_kg_h = (
            ch.rate_ml_min
            * 60
            * ch.concentration_mg_ml
            * product.gluconate_equivalent
            / bed.weight_kg
        )
        # Weight-based limits are written for gluconate: another salt (chloride) is shown as
        # the gluconate carrying the same calcium, and labelled so it is not read as its own.
        dose = f"{format_number(mg_kg_h)} mg/kg/h"
        if not product.is_gluconate:
            dose += " gluconate equivalent"
    silent = ""
    if ch.stale_watch and ch.latest_t is not None:
        silent = f"last reading {format_duration(now - ch.latest_t)} ago"
    state = ch.status + (f" ({ch.alarm})" if ch.alarm else "")
    flag = "Ca" if ch.calcium else "  "
    return (
        f"    {flag} {ch.name:<8} {ch.drug_name[:28]:<28} {ch.rate_text:>11} "
        f"{percent:>6} of {limit.text:<9} {dose:<14} {state:<10} {silent}"
    )


def _line_row(engine: Engine, line: LineState, now: int) -> str:
    ctx = engine.rules.ctx
    site = None
    if line.calcium_on and line.peripheral and line.session_start is not None:
        base = max(line.session_start, line.last_site_check_t or line.session_start)
        site = base + ctx.site_medium.us
    dwell = line.inserted + ctx.dwell.us if line.carried_calcium and line.peripheral else None
    where = f"{line.kind}{', ' + line.site if line.site else ''}"
    return (
        f"  {line.line:<6} {where[:34]:<34} site check {_until(site, now):<20} "
        f"rotation {_until(dwell, now)}"
    )


def _alert_row(alert: ActiveAlert, width: int, colour: bool) -> str:
    d = alert.description
    subject = " ".join(x for x in (d.bed, d.line, f"{d.pump}/{d.channel}" if d.pump else None) if x)
    head = f" {alert.priority.upper():<6} "
    if colour:
        head = f"{_COLOURS[alert.priority]}{head}{_RESET}"
    text = f" {format_ts(alert.raised_t)[11:19]} {alert.rule:<24} {subject:<14} {d.message}"
    return head + text[: max(20, width - 9)]


def _alarm_row(alarm: Alarm, audiences: tuple[str, ...], width: int, colour: bool) -> str:
    last = alarm.last
    d = last.description
    subject = " ".join(x for x in (d.bed, d.line, f"{d.pump}/{d.channel}" if d.pump else None) if x)
    head = f" {last.priority.upper():<6} "
    if colour and alarm.annunciating:
        head = f"{_COLOURS[last.priority]}{head}{_RESET}"
    state = alarm.state + (" (latched)" if alarm.latched and alarm.state != "latched" else "")
    if alarm.acked_by:
        state += f" by {alarm.acked_by}"
    if alarm.audience:
        state += f", to {audiences[alarm.audience]}"
    text = (
        f" {format_ts(alarm.raised_t)[11:19]} {alarm.id} {last.rule:<24} {subject:<14} "
        f"[{state}] {d.message}"
    )
    return head + text[: max(20, width - 9)]


def render(
    engine: Engine,
    *,
    title: str,
    now: int,
    drivers: Sequence[Driver] = (),
    speed: float = 1.0,
    width: int = 120,
    colour: bool = False,
    alarms: AlarmManager | None = None,
) -> str:
    ward = engine.ward
    clock = format_ts(now)[:19].replace("T", " ") + " UTC"
    fast = f"  clock x{format_number(speed)} (training)" if speed != 1 else ""
    out = [f"CalGuard - {title} - {clock}{fast}   library {engine.library.version}", ""]
    for driver in drivers:
        state = driver.state
        s = driver.stats
        out.append(
            f"  {driver.url:<58} {state:<12} {s.items} inputs, {s.problems} problems, "
            f"{s.reconnects} reconnects"
        )
    if drivers:
        out.append("")
    for name in sorted(ward.beds):
        bed = ward.beds[name]
        weight = f"{format_number(bed.weight_kg)} kg" if bed.weight_kg else "NO WEIGHT"
        total = bed.ledger.total(now) / bed.weight_kg if bed.weight_kg else None
        limit = engine.rules.ctx.dose_limit
        dose = f"   calcium in 24 h: {limit.show(total)} of {limit.text}" if total else ""
        out.append(f"BED {name}  {weight}{dose}")
        for line in ward.lines_of(bed):
            out.append(_line_row(engine, line, now))
            out.extend(_channel_row(engine, ch, now) for ch in ward.channels_on(line))
    loose = [
        ch
        for ch in ward.channels.values()
        if ward.documented_line(ch) is None and ch.latest_t is not None
    ]
    if loose:
        out.append("NO DOCUMENTED LINE")
        out.extend(_channel_row(engine, ch, now) for ch in sorted(loose, key=lambda c: c.name))
    if alarms is not None:
        shown = alarms.active()
        out += ["", f"ALARMS ({len(shown)})"]
        out.extend(_alarm_row(a, alarms.policy.audiences, width, colour) for a in shown)
        if not shown:
            out.append("  none - which does not mean a site is fine: look at it")
        return "\n".join(out) + "\n"
    alerts = sorted(engine.active.values(), key=lambda a: (-PRIORITY_RANK[a.priority], a.raised_t))
    out += ["", f"ACTIVE ALERTS ({len(alerts)})"]
    out.extend(_alert_row(a, width, colour) for a in alerts)
    if not alerts:
        out.append("  none - which does not mean a site is fine: look at it")
    return "\n".join(out) + "\n"


class TerminalView:
    """Redraws ``render`` once a second (wall time) on a terminal."""

    def __init__(
        self,
        engine: Engine,
        *,
        title: str,
        clock: Clock,
        drivers: Sequence[Driver] = (),
        out: TextIO | None = None,
        alarms: AlarmManager | None = None,
    ) -> None:
        self.engine, self.title, self.clock, self.drivers = engine, title, clock, drivers
        self.alarms = alarms
        self.out = out or sys.stdout
        self.colour = self.out.isatty()

    def draw(self) -> None:
        width = shutil.get_terminal_size((120, 40)).columns
        now = max(self.clock.now_us(), self.engine.now or 0)
        text = render(
            self.engine,
            title=self.title,
            now=now,
            drivers=self.drivers,
            speed=self.clock.speed,
            width=width,
            colour=self.colour,
            alarms=self.alarms,
        )
        prefix = "\x1b[H\x1b[2J" if self.colour else "\n"
        self.out.write(prefix + text)
        self.out.flush()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            self.draw()
            await asyncio.sleep(interval)
