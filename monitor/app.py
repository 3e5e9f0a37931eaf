"""The live monitor: drivers -> pipeline -> engine -> outputs, on an injected clock.

One ``asyncio.TaskGroup`` holds a named task per driver and one for the engine loop. The
engine loop takes inputs in arrival order and, between them, sleeps exactly until the next
timer is due; it then feeds a ``clock`` event (logged like any input), so that replaying
a live session's log gives the same alerts the live run gave. ``stop()`` stops the
drivers, processes what they already delivered, and returns; the caller's ``AlertLog``
context flushes the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import orjson

from alerts.log import AlertLog
from config.library import Library
from drivers.base import Driver, Inbound
from monitor.clock import Clock
from monitor.engine import Engine
from monitor.pipeline import Pipeline
from monitor.timeutil import format_ts
from monitor.transitions import AlertTransition

__all__ = ["Monitor"]


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait; cancel again a task that has not stopped (a cancellation can be
    lost in a race inside a library), so that stopping never hangs."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning("re-cancelling %s", ", ".join(t.get_name() for t in pending))


log = logging.getLogger(__name__)

Output = Callable[[AlertTransition, str], None]
_CHECKPOINT_EVERY = 500  # inputs between chances for the log writer to catch up


class Monitor:
    def __init__(
        self,
        library: Library,
        drivers: Sequence[Driver],
        *,
        clock: Clock,
        log: AlertLog | None = None,
        outputs: Sequence[Output] = (),
        engine: Engine | None = None,
    ) -> None:
        self.library = library
        self.drivers = list(drivers)
        self.clock = clock
        self.log = log
        self.outputs = list(outputs)
        self.engine = engine or Engine(library)
        self.pipeline = Pipeline(self.engine, log)
        self.queue: asyncio.Queue[Inbound | None] = asyncio.Queue(maxsize=20_000)
        self.processed = 0
        self._stopping = asyncio.Event()
        self._running = False

    def stop(self) -> None:
        """Ask ``run`` to finish: drivers stop, delivered inputs are still processed."""
        self._stopping.set()

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("the monitor is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                feeders = [
                    group.create_task(self._feed(driver), name=f"driver {driver.url}")
                    for driver in self.drivers
                ]
                engine = group.create_task(self._engine_loop(), name="engine")
                await self._stopping.wait()
                await _cancel(feeders)
                await self.queue.put(None)  # after the drivers' last input
                await engine
        finally:
            self._running = False

    async def _feed(self, driver: Driver) -> None:
        async for item in driver.inputs():
            await self.queue.put(item)

    async def _engine_loop(self) -> None:
        clock, engine = self.clock, self.engine
        while True:
            due = engine.timers.next_due()
            timeout = None if due is None else max(0.0, (due - clock.now_us()) / 1e6 / clock.speed)
            try:  # asyncio.timeout: Python 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(timeout):
                    item = await self.queue.get()
            except TimeoutError:
                self._tick(due)
                continue
            if item is None:
                return
            self._process(item)
            self.processed += 1
            if self.log is not None and self.processed % _CHECKPOINT_EVERY == 0:
                await self.log.checkpoint()

    def _process(self, item: Inbound) -> None:
        if item.problem is not None:
            transitions = self.pipeline.feed_problem(
                item.raw, item.problem, source=item.source, pump=item.pump, t=self.clock.now_us()
            )
        else:
            transitions = self.pipeline.feed_object(item.obj, raw=item.raw, source=item.source)
        self._emit(transitions)

    def _tick(self, due: int | None) -> None:
        """A timer is due: move the engine's time on with a (logged) clock event."""
        now = self.clock.now_us()
        if due is None or self.engine.now is None or now < due:
            return
        event = {"t": format_ts(now), "type": "clock"}
        self._emit(self.pipeline.feed_object(event, raw=orjson.dumps(event), source="clock"))

    def _emit(self, transitions: list[AlertTransition]) -> None:
        for tr in transitions:
            line = tr.to_json()
            if self.log is not None:
                self.log.add_transition(tr, line)
            for output in self.outputs:
                try:
                    output(tr, line)
                except Exception:  # an output must never stop the monitor
                    log.exception("an alert output failed")
