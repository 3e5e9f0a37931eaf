"""Rules whose subject is one line (vascular access device): co-infusion, a failed
patency check, the hourly site check, an abnormal site, and cannula rotation."""

from __future__ import annotations

from calguard.monitor.model import ChannelState, LineState
from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import RuleContext
from calguard.monitor.rules.channel import ChannelRules
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import Description

__all__ = ["LineRules"]

_LINE_RULES = (
    "incompatible-coinfusion",
    "patency-check-failed",
    "site-abnormal",
    "site-check-overdue",
    "cannula-dwell",
)


class LineRules:
    def __init__(self, ctx: RuleContext, channels: ChannelRules) -> None:
        self.ctx = ctx
        self.channels = channels

    def evaluate(self, line: LineState, now: int) -> None:
        ctx = self.ctx
        chans = ctx.ward.channels_on(line)
        calcium = [c for c in chans if c.calcium_delivering]
        self._track_session(line, bool(calcium), now)
        documented = line.documented
        self._incompatible(line, now, calcium, chans if documented else [])
        failed = (
            documented
            and line.last_patency_result == "flush_failed"
            and any(c.calcium for c in chans)
        )
        when = format_ts(line.last_patency_t or now)
        ctx.put(
            "patency-check-failed",
            ("patency-check-failed", line.line),
            failed,
            now,
            lambda: ctx.line_description(line, say.patency_failed(line.describe(), when)),
        )
        abnormal = (
            documented
            and line.calcium_on
            and (line.abnormal_while_calcium or line.last_site_abnormal)
        )
        ctx.put(
            "site-abnormal",
            ("site-abnormal", line.line),
            abnormal,
            now,
            lambda: ctx.line_description(
                line,
                say.site_abnormal(line.describe(), line.last_site_grade, line.last_site_findings),
            ),
        )
        self.site_overdue(line, now)
        self.dwell(line, now)
        for ch in chans:
            if ch.alarm == "occlusion" or ctx.book.is_active(("occlusion", ch.key)):
                self.channels.occlusion(ch, now)

    def _track_session(self, line: LineState, calcium_on: bool, now: int) -> None:
        """Calcium on this line since when (short pauses ignored), for the site timer."""
        if calcium_on and not line.calcium_on:
            resumed = (
                line.session_start is not None
                and line.calcium_off_since is not None
                and now - line.calcium_off_since < self.ctx.pause_grace.us
            )
            if not resumed:
                line.session_start = now
            line.calcium_on = line.carried_calcium = True
        elif not calcium_on and line.calcium_on:
            line.calcium_on = False
            line.calcium_off_since = now
            line.abnormal_while_calcium = False

    def _incompatible(
        self, line: LineState, now: int, calcium: list[ChannelState], chans: list[ChannelState]
    ) -> None:
        ctx = self.ctx
        others = [
            (c, ctx.incompatible[c.drug_class])
            for c in chans
            if calcium and c.delivering and not c.calcium and c.drug_class in ctx.incompatible
        ]
        priority = "high" if any(p == "high" for _, p in others) else "medium"

        def describe() -> Description:
            ca = ", ".join(f"{c.name} {c.drug_name}" for c in calcium)
            bad = ", ".join(f"{c.name} {c.drug_name} ({c.drug_class})" for c, _ in others)
            return ctx.line_description(line, say.incompatible(line.describe(), ca, bad))

        key = ("incompatible-coinfusion", line.line)
        ctx.put("incompatible-coinfusion", key, bool(others), now, describe, priority)

    def site_overdue(self, line: LineState, now: int) -> None:
        ctx, key = self.ctx, ("site-check-overdue", line.line)
        start = line.session_start
        if not (line.documented and line.peripheral and line.calcium_on) or start is None:
            ctx.off(key, now)
            return
        checked = line.last_site_check_t
        base = start if checked is None else max(start, checked)
        due_medium, due_high = base + ctx.site_medium.us, base + ctx.site_high.us
        if now < due_medium:
            ctx.book.clear(key, now)
            ctx.schedule(key, due_medium, now)
            return
        high = now >= due_high
        ctx.schedule(key, None if high else due_high, now)
        lim = ctx.site_high if high else ctx.site_medium
        elapsed = lim.show(float(now - base))
        if checked is not None and checked >= start:
            last = f"last check {format_ts(checked)}"
        else:
            last = f"none since calcium started at {format_ts(start)}"
        ctx.put(
            "site-check-overdue",
            key,
            True,
            now,
            lambda: ctx.line_description(
                line, say.site_overdue(line.describe(), elapsed, last), elapsed, lim.text
            ),
            "high" if high else "medium",
        )

    def dwell(self, line: LineState, now: int) -> None:
        ctx, key, interval = self.ctx, ("cannula-dwell", line.line), self.ctx.dwell
        if not (line.documented and line.peripheral and line.carried_calcium):
            ctx.off(key, now)
            return
        due = line.inserted + interval.us
        if now < due:
            ctx.book.clear(key, now)
            ctx.schedule(key, due, now)
            return
        ctx.timers.cancel(key)
        elapsed = interval.show(float(now - line.inserted))
        text = say.cannula_dwell(line.describe(), elapsed, format_ts(line.inserted), interval.text)
        ctx.put(
            "cannula-dwell",
            key,
            True,
            now,
            lambda: ctx.line_description(line, text, elapsed, interval.text),
        )

    def removed(self, line: LineState, now: int) -> None:
        for rule in _LINE_RULES:
            self.ctx.off((rule, line.line), now)
