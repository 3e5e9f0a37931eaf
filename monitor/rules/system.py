"""Technical rules about the monitor itself rather than a pump or an infant.

``log-unavailable``: the durable log cannot be written. The live monitor reports its log's
state as an input of its own (a ``monitor`` event, logged and replayable), and this rule
turns it into one unit-wide technical alarm: the configured priority (medium) while the
local spool keeps every input, escalated to high when the spool cannot be written either
and nothing is being recorded. It clears once the database has everything again.

``library-unapproved``: the monitor runs a drug library no pharmacist approved in the log
(started with ``--allow-unapproved``); reported the same way, one unit-wide alarm until an
approved library is published to the unit and the monitor runs it.
"""

from __future__ import annotations

from calguard.monitor.events import MonitorStatus
from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import RuleContext
from calguard.monitor.transitions import Description

__all__ = ["SystemRules"]

#: the alert key of the unit-wide log alarm (one per monitor process)
LOG_KEY = ("log-unavailable", "unit")
#: the alert key of the unit-wide alarm of a library no pharmacist approved
UNAPPROVED_KEY = ("library-unapproved", "unit")


class SystemRules:
    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx

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
