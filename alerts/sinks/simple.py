"""Sinks that need no network: the terminal (colour by priority) and a JSON Lines file.

terminal://            one readable line per alarm transition on standard error
jsonlog:///var/log/calguard/alarms.jsonl     the exact alert lines, appended
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar, TextIO

from calguard.alerts.alarms import category
from calguard.alerts.sinks.base import Delivery, Sink, SinkError
from calguard.config.options import OptionSpec

__all__ = ["JsonLogSink", "TerminalSink", "describe"]

_COLOURS = {"high": "\033[1;97;41m", "medium": "\033[30;43m", "low": "\033[36m"}
_RESET = "\033[0m"


def describe(item: Delivery) -> str:
    tr = item.tr
    d = tr.description
    where = " ".join(x for x in (d.bed, d.line, d.pump and f"{d.pump}/{d.channel}") if x)
    extra = " ".join(
        f"{k}={v}" for k, v in (("by", tr.by), ("reason", tr.reason), ("to", tr.audience)) if v
    )
    latched = " (latched)" if tr.latched else ""
    return (
        f"{item.line[7:26].replace('T', ' ')}  {tr.priority.upper():<6} {tr.state:<12} "
        f"{tr.rule:<26} {category(tr.rule)[:4]}  {where:<16} {extra}{latched}  {d.message}"
    )


class TerminalSink(Sink):
    scheme = "terminal"
    options: ClassVar[dict[str, OptionSpec]] = {
        "colour": OptionSpec(bool, True, "colour by priority when the output is a terminal"),
    }

    def __init__(self, url: str, *, out: TextIO | None = None, **options: Any) -> None:
        super().__init__(url, **options)
        self.out = out or sys.stderr

    async def _deliver(self, item: Delivery) -> None:
        text = describe(item)
        if self.config["colour"] and self.out.isatty():
            text = f"{_COLOURS.get(item.tr.priority, '')}{text}{_RESET}"
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except OSError as exc:
            raise SinkError(f"cannot write: {exc}") from exc


class JsonLogSink(Sink):
    scheme = "jsonlog"
    options: ClassVar[dict[str, OptionSpec]] = {
        "fsync": OptionSpec(bool, False, "fsync after each line (slower, survives power loss)"),
    }

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = self.parts.path
        self._file: TextIO | None = None

    async def _open(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: ASYNC230, SIM115
        except OSError as exc:
            raise SinkError(f"cannot open {self.path}: {exc}") from exc

    async def _deliver(self, item: Delivery) -> None:
        assert self._file is not None
        try:
            self._file.write(item.line + "\n")
            self._file.flush()
            if self.config["fsync"]:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc}") from exc

    async def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
