"""A live monitor for tests: real drivers, the real engine loop, alerts collected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from alerts.log import AlertLog
from alerts.sinks import Sink
from config import Library, load_library
from drivers.base import Driver
from monitor.app import Monitor
from monitor.clock import Clock, SystemClock
from monitor.engine import Engine
from monitor.records import InputRecord
from monitor.timeutil import format_ts
from monitor.transitions import AlertTransition


def now_ts(clock: Clock | None = None) -> str:
    return format_ts((clock or SystemClock()).now_us())


class LiveBay:
    def __init__(
        self,
        drivers: Sequence[Driver],
        *,
        clock: Clock | None = None,
        library: Library | None = None,
        log: AlertLog | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
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
