"""Inputs that name nothing CalGuard knows: counted per source into one technical alarm.

An unusable input that names a known pump raises ``telemetry-invalid`` for the channel it
names. One that names no known pump (garbage, a made-up pump id) must not create
state for whatever it names: a flood of them would otherwise make one channel and one
alarm per made-up pump, grow without bound, and bury the ward's real alarms. They are
counted per source (a driver) into one ``input-unknown`` alarm, which clears once the
source has been quiet for the rule's ``quiet`` time.
"""

from __future__ import annotations

from dataclasses import dataclass

from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import RuleContext
from calguard.monitor.transitions import Description

__all__ = ["InputRules"]

_MAX_SOURCES = 1024  # sources are drivers; a bound all the same, so memory cannot grow


@dataclass(slots=True)
class _Strays:
    count: int = 0
    last: str = ""
    last_t: int = 0


class InputRules:
    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        self.sources: dict[str, _Strays] = {}

    def stray(self, source: str, reason: str, now: int) -> None:
        strays = self.sources.get(source)
        if strays is None:
            if len(self.sources) >= _MAX_SOURCES:
                source = "(other sources)"
            strays = self.sources.setdefault(source, _Strays())
        strays.count += 1
        strays.last, strays.last_t = reason[:200], now
        key = ("input-unknown", source)
        quiet = self.ctx.stray_quiet
        self.ctx.put(
            "input-unknown",
            key,
            True,
            now,
            lambda: Description(say.input_unknown(source, strays.last, quiet.text)),
        )
        self.ctx.timers.schedule(key, now + quiet.us)

    def quiet(self, source: str, now: int) -> None:
        """The source has sent nothing unknown for the quiet time: the alarm ends."""
        self.ctx.off(("input-unknown", source), now)
        self.sources.pop(source, None)
