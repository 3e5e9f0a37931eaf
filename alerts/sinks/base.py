"""The base of every notification sink: a bounded buffer, one delivery task, retries.

The monitor hands each alarm line to every sink with ``submit`` (cheap, never blocks, never
raises). Each sink delivers in order from its own task, so a slow or dead sink never holds
up another sink or the engine. A delivery that fails for a reason that may pass (a
connection lost, a 503) is retried with jittered exponential backoff, the item kept at the
head of the buffer; one the receiver refuses for good (a 400, an HL7 AR) is given up. When
the buffer is full the oldest item is given up. Nothing is dropped silently: every item
given up, and why, goes to ``on_undelivered`` (the durable log's audit chain).

    class MySink(Sink):
        scheme = "my"
        async def _open(self): ...              # connect; raise SinkError if it cannot
        async def _deliver(self, item): ...     # raise SinkError (retry) or Refused (give up)
        async def _close(self): ...
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from calguard.config.options import OptionSpec
from calguard.config.site import SINK_CAPACITY
from calguard.drivers.base import Backoff
from calguard.monitor.transitions import AlertTransition

__all__ = ["MAX_COMMAND_BYTES", "Delivery", "Refused", "Sink", "SinkError", "SinkStats"]

#: the largest command the monitor reads (one with its token is well under 2 KiB); a larger
#: one is refused and logged by its size and digest, never whole
MAX_COMMAND_BYTES = 16 * 1024

log = logging.getLogger("calguard.sinks")
_HELD_S = 0.5  # how often a sink held off the broker (no lease known to hold) looks again


class SinkError(Exception):
    """Delivery failed for now: retry."""


class Refused(Exception):
    """The receiver refused this item for good: give it up (logged as undelivered)."""


@dataclass(frozen=True)
class Delivery:
    """One alarm line for a sink, with the active alarms of its bed at that moment."""

    tr: AlertTransition
    line: str
    bed_state: tuple[dict[str, object], ...] = ()
    bed_key: str = ""  # the bed, or "unassigned" for alarms without one


@dataclass
class SinkStats:
    delivered: int = 0
    retries: int = 0
    undelivered: int = 0
    last_error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)


Undelivered = Callable[["Sink", Delivery, str], None]


class Sink(abc.ABC):
    scheme: ClassVar[str]
    options: ClassVar[Mapping[str, OptionSpec]] = {}
    #: True for a sink that also takes commands in (its ``on_command`` is called with them)
    takes_commands: ClassVar[bool] = False
    #: items delivered together when several wait (in order, on one connection): a sink
    #: whose every line waits for the receiver's answer keeps up with a storm only so
    window: ClassVar[int] = 1

    def __init__(self, url: str, *, capacity: int = SINK_CAPACITY, **options: Any) -> None:
        self.url = url
        self.parts = urlsplit(url)
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"{url}: unknown option(s) {sorted(unknown)}; expected {sorted(self.options)}"
            )
        self.config = {key: options.get(key, spec.default) for key, spec in self.options.items()}
        self.capacity = capacity
        self.stats = SinkStats()
        self.backoff = Backoff()
        self.connected = False
        self.on_undelivered: Undelivered = _log_only
        self.on_command: Callable[[bytes, str], str | None] | None = None
        #: awaited before ``on_command`` with the same payload (the monitor looks up an
        #: account it has not read yet, rather than refuse a new person's first command)
        self.before_command: Callable[[bytes], Awaitable[None]] | None = None
        #: the active alarms of every bed now (set by the monitor), for a sink that keeps a
        #: per-bed state elsewhere (the MQTT sink's retained topics) to put right on connect
        self.bed_states: Callable[[], dict[str, tuple[dict[str, object], ...]]] | None = None
        #: what the monitor says of itself in a sink's presence (set by the monitor): the
        #: library version and profile it runs
        self.presence: Callable[[], dict[str, object]] | None = None
        #: whether this monitor may publish now (calguard.lease: only while its lease on the
        #: unit is known to hold); lines wait in the buffer meanwhile
        #: (nor connect: the standby that took the unit over has the same client id, and a
        #: reconnect would take its session back from it)
        self.may_publish: Callable[[], bool] | None = None
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- the monitor's side ------------------------------------------------------------------

    def submit(self, item: Delivery) -> None:
        if len(self._buffer) >= self.capacity:
            self._give_up(self._buffer.popleft(), f"the buffer of {self.capacity} was full")
        self._buffer.append(item)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def announce(self) -> None:
        """What the monitor says of itself changed (it switched library): a sink that keeps
        a presence somewhere says it again (the MQTT sink's retained status)."""
        return None  # optional: a sink without a presence has nothing to say again

    async def run(self) -> None:
        """Deliver for ever (until cancelled): connect, drain the buffer, wait, reconnect."""
        try:
            while True:
                if self.may_publish is not None and not self.may_publish():
                    await asyncio.sleep(_HELD_S)  # no lease known to hold: stay off the broker
                    continue
                try:
                    await self._open()
                    self.connected = True
                    self.backoff.reset()
                    log.info("%s: connected", self.url)
                    while True:
                        await self._drain()
                        self._idle.set()
                        await self._wait()
                        self._wake.clear()
                except SinkError as exc:
                    self.connected = False
                    self.stats.retries += 1
                    self.stats.last_error = str(exc)
                    delay = self.backoff.next()
                    log.warning(
                        "%s: %s; %d waiting, retrying in %.1f s", self.url, exc, self.pending, delay
                    )
                    await self._quiet_close()
                    await asyncio.sleep(delay)
        finally:
            self.connected = False
            await self._quiet_close()

    async def flushed(self, within: float) -> None:
        """Wait until everything submitted was delivered or given up, at most ``within`` s;
        what is still waiting then is given up (and logged) as not delivered at shutdown."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()
        while self._buffer:
            self._give_up(self._buffer.popleft(), "not delivered before the monitor stopped")

    # -- the loop ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        while self._buffer:
            if self.may_publish is not None and not self.may_publish():
                raise SinkError("this monitor's lease on its unit is not known to hold")
            if self.window > 1 and len(self._buffer) > 1 and await self._drain_window():
                continue
            item = self._buffer[0]
            try:
                await self._deliver(item)
            except Refused as exc:
                if self._buffer and self._buffer[0] is item:
                    self._buffer.popleft()
                self._give_up(item, f"refused: {exc}")
                continue
            if self._buffer and self._buffer[0] is item:  # not pushed out meanwhile
                self._buffer.popleft()
            self.stats.delivered += 1

    async def _drain_window(self) -> bool:
        """Up to ``window`` items at the head of the buffer delivered together; False when
        one of them is refused (they then go one at a time, the refused one given up)."""
        items = list(itertools.islice(self._buffer, self.window))
        try:
            await self._deliver_all(items)
        except Refused:
            return False
        for item in items:
            if self._buffer and self._buffer[0] is item:  # not pushed out meanwhile
                self._buffer.popleft()
            self.stats.delivered += 1
        return True

    async def _deliver_all(self, items: list[Delivery]) -> None:
        """Deliver ``items`` in order (a sink with ``window`` > 1 overrides this)."""
        for item in items:
            await self._deliver(item)

    async def _wait(self) -> None:
        """Wait for work; a sink with its own reader overrides this to notice a lost link."""
        await self._wake.wait()

    def _give_up(self, item: Delivery, reason: str) -> None:
        self.stats.undelivered += 1
        try:
            self.on_undelivered(self, item, reason)
        except Exception:  # the report of a loss must not become a loss of the sink
            log.exception("%s: could not record an undelivered alarm line", self.url)

    async def _quiet_close(self) -> None:
        try:
            await self._close()
        except Exception as exc:  # closing a broken link may fail too; it is closed either way
            log.debug("%s: while closing: %s", self.url, exc)

    # -- the hooks ----------------------------------------------------------------------------

    async def _open(self) -> None:  # optional hook: nothing to open by default
        return None

    @abc.abstractmethod
    async def _deliver(self, item: Delivery) -> None: ...

    async def _close(self) -> None:  # optional hook
        return None


def _log_only(sink: Sink, item: Delivery, reason: str) -> None:
    log.error("%s: alarm line not delivered (%s): %s", sink.url, reason, item.line)
