"""A live monitor for tests: real drivers, the real engine loop, alerts collected."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calguard.alerts.log import AlertLog
from calguard.alerts.sinks import Sink
from calguard.config import Library, load_library
from calguard.drivers.base import Driver
from calguard.drivers.clock import SystemClock
from calguard.monitor.clock import Clock
from calguard.monitor.engine import Engine
from calguard.monitor.records import InputRecord
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition

from calguard.app import Monitor
from calguard.guard import CommandGuard

ROOT = Path(__file__).parent.parent


def calguard_process(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``calguard ARGS`` as a separate process (text pipes for stdout and stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "calguard.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def now_ts(clock: Clock | None = None) -> str:
    return format_ts((clock or SystemClock()).now_us())


def admission(
    t: str,
    *,
    bed: str = "B1",
    line: str = "L1",
    pump: str = "P1",
    weight: str = "1 kg",
    age: str | None = "5 day",
) -> list[dict[str, Any]]:
    """The bedside documentation before calcium may run: an infant, a PIV, the pump
    connected to it and a blood-backflow check, all at ``t``."""
    patient: dict[str, Any] = {"t": t, "type": "patient", "bed": bed, "weight": weight}
    if age is not None:
        patient["postnatal_age"] = age
    return [
        patient,
        {"t": t, "type": "line", "line": line, "bed": bed, "kind": "piv"},
        {"t": t, "type": "connect", "pump": pump, "line": line},
        {"t": t, "type": "patency_check", "line": line, "result": "blood_return"},
    ]


class LiveBay:
    def __init__(
        self,
        drivers: Sequence[Driver],
        *,
        clock: Clock | None = None,
        library: Library | None = None,
        log: AlertLog | None = None,
        sinks: Sequence[Sink] = (),
        guard: CommandGuard | None = None,
        file_actions: bool = True,
    ) -> None:
        """``file_actions``: actions in the drivers' inputs apply (as in a replay file);
        False as ``calguard run`` has it, where people act only by signed commands."""
        self.alerts: list[dict[str, Any]] = []
        lib = library or load_library()
        self.monitor = Monitor(
            lib,
            drivers,
            clock=clock or SystemClock(),
            log=log,
            outputs=[self._out],
            engine=Engine(lib),
            sinks=sinks,
            guard=guard,
            file_actions=file_actions,
        )
        self.records: list[InputRecord] = []
        self._log = log
        self.monitor.pipeline.journal = self  # every input and what became of it (then the log)
        self._task: asyncio.Task[None] | None = None

    def add_input(self, record: InputRecord) -> None:
        self.records.append(record)
        if self._log is not None:
            self._log.add_input(record)

    def accepted(self, event_type: str) -> list[InputRecord]:
        return [r for r in self.records if r.status == "accepted" and r.event_type == event_type]

    def _out(self, tr: AlertTransition, line: str) -> None:
        self.alerts.append(tr.to_dict())

    async def __aenter__(self) -> LiveBay:
        self._task = asyncio.create_task(self.monitor.run(), name="test monitor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.monitor.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 20)

    @property
    def counts(self) -> dict[str, int]:
        return self.monitor.pipeline.counts

    def of(self, rule: str, state: str | None = None) -> list[dict[str, Any]]:
        return [
            a for a in self.alerts if a["rule"] == rule and (state is None or a["state"] == state)
        ]

    async def until(self, condition: Callable[[], Any], within: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while not condition():
            if loop.time() > end:
                raise AssertionError(f"not met in {within} s; alerts so far: {self.alerts}")
            await asyncio.sleep(0.02)
