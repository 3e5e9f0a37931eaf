"""Technical rules about the monitor itself rather than a pump or an infant.

``log-unavailable``: the durable log cannot be written. The live monitor reports its log's
state as an input of its own (a ``monitor`` event, logged and replayable), and this rule
turns it into one unit-wide technical alarm: the configured priority (medium) while the
local spool keeps every input, escalated to high when the spool cannot be written either
and nothing is being recorded. It clears once the database has everything again.

``library-unapproved``: the monitor runs a drug library no pharmacist approved in the log
(started with ``--allow-unapproved``); reported the same way, one unit-wide alarm until an
approved library is published to the unit and the monitor runs it.

``monitor-lagging``: the monitor runs behind its inputs (``calguard.lag`` measures it and
reports it the same way, with the figure). One unit-wide alarm; while it holds, the
reported lag is the monitor's own input lag for every rule (``RuleContext.input_lag_us``):
``telemetry-stale`` waits that long more, at most ``max_hold``. When the lag shrinks every
watched channel is judged again at once (``on_lag_shrunk``), so a shorter hold is never
served late; a longer one needs nothing: a stale timer that fires early is set again.
"""

from __future__ import annotations

from collections.abc import Callable

from calguard.monitor.events import MonitorStatus
from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import RuleContext
from calguard.monitor.timeutil import format_duration
from calguard.monitor.transitions import Description

__all__ = ["LAG_KEY", "LOG_KEY", "UNAPPROVED_KEY", "SystemRules"]

#: the alert key of the unit-wide log alarm (one per monitor process)
LOG_KEY = ("log-unavailable", "unit")
#: the alert key of the unit-wide alarm of a library no pharmacist approved
UNAPPROVED_KEY = ("library-unapproved", "unit")
#: the alert key of the unit-wide alarm of a monitor running behind its inputs
LAG_KEY = ("monitor-lagging", "unit")


class SystemRules:
    def __init__(self, ctx: RuleContext, on_lag_shrunk: Callable[[int], None]) -> None:
        self.ctx = ctx
        self.on_lag_shrunk = on_lag_shrunk

    def monitor(self, ev: MonitorStatus, now: int) -> None:
        if ev.condition == "log-unavailable":
            self.ctx.put(
                "log-unavailable",
                LOG_KEY,
                ev.active,
                now,
                lambda: Description(say.log_unavailable(ev.recorded, ev.detail)),
                priority=None if ev.recorded else "high",
            )
        elif ev.condition == "library-unapproved":
            self.ctx.put(
                "library-unapproved",
                UNAPPROVED_KEY,
                ev.active,
                now,
                lambda: Description(say.library_unapproved(ev.detail)),
            )
        elif ev.condition == "monitor-lagging":
            self.lagging(ev, now)

    def lagging(self, ev: MonitorStatus, now: int) -> None:
        ctx = self.ctx
        before = ctx.input_lag_us
        lag = (ev.lag_us or 0) if ev.active and ctx.enabled["monitor-lagging"] else 0
        ctx.input_lag_us = lag
        threshold, hold = ctx.lag_threshold, ctx.lag_max_hold

        def describe() -> Description:
            text = say.monitor_lagging(format_duration(lag), hold.text, ev.detail)
            return Description(text, value=threshold.show(float(lag)), limit=threshold.text)

        ctx.put("monitor-lagging", LAG_KEY, ev.active, now, describe)
        if lag < before:
            self.on_lag_shrunk(now)
