"""The one small driver base class.

A driver turns one wire into event-format v1 inputs. The base owns the public API and the
lifecycle; a backend overrides three hooks::

    async with driver:                    # _open(); reusable, not re-entrant
        items = await driver.read()       # _read(): one or more Inbound
    await driver.close()                  # _close(); idempotent

    async for item in driver.inputs():    # the above in a loop that reconnects with
        ...                               # jittered exponential backoff, for ever
    async for burst in driver.bursts():   # the same, a read's inputs at a time
        ...

Backends translate their library's exceptions into ``DriverError`` inside their hooks;
nothing above ``drivers/`` sees pyserial, aiomqtt or HL7 types.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from calguard.config.options import OptionSpec
from calguard.drivers.clock import SystemClock
from calguard.monitor.clock import Clock
from calguard.monitor.errors import DriverError

__all__ = ["Backoff", "Driver", "DriverStats", "Inbound"]

log = logging.getLogger(__name__)
_HELD_S = 0.5  # how often a driver held off the wire (no lease known to hold) looks again


@dataclass(frozen=True, slots=True)
class Inbound:
    """One input from a wire: an event-format object, or a problem with what arrived.

    ``raw`` is what the log keeps. A problem that concerns a known pump channel names it in
    ``pump`` (it then raises telemetry-invalid for that channel).

    ``on_durable``: how the wire is told that this input - and every input the driver gave
    before it - is safe (an MQTT PUBACK, an MLLP AA). The monitor calls it once the input is
    in the durable log (the database, or the local spool while the database is down); it
    must be quick and must not block (queue the answer; do not await it).

    ``on_verdict``: how the wire learns what the monitor made of this very input, once it
    is applied: None if it was used, else the reason it was refused (an MLLP AA or AE).
    Called at once after the input is applied; quick and non-blocking, like ``on_durable``.
    """

    source: str
    raw: bytes | str
    obj: object | None = None
    problem: str | None = None
    pump: tuple[str, str] | None = None
    on_durable: Callable[[], None] | None = None
    #: the sender waits for this answer before it sends again (MLLP): write it out now
    durable_soon: bool = False
    on_verdict: Callable[[str | None], None] | None = None


@dataclass
class DriverStats:
    opened: int = 0
    items: int = 0
    problems: int = 0
    reconnects: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class Backoff:
    """Jittered exponential backoff: 0.5 s, 1 s, 2 s ... up to ``maximum``, each +-25%."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next * random.uniform(0.75, 1.25)  # jitter, not cryptography
        self._next = min(self._next * 2, self.maximum)
        return delay


class Driver(abc.ABC):
    """Base of every driver: URL, options, clock, lifecycle, stats and reconnects."""

    scheme: ClassVar[str]
    #: The options this driver accepts (besides the URL), for the site config's validation.
    options: ClassVar[Mapping[str, OptionSpec]] = {}

    def __init__(self, url: str, *, clock: Clock | None = None, **options: Any) -> None:
        self.url = url
        self.parts = urlsplit(url)
        self.clock: Clock = clock or SystemClock()
        unknown = set(options) - set(self.options)
        if unknown:
            raise DriverError(
                f"unknown option(s) {sorted(unknown)}; expected {sorted(self.options)}", source=url
            )
        self.config = {key: options.get(key, spec.default) for key, spec in self.options.items()}
        self.stats = DriverStats()
        self._open_now = False
        self.stopped = False  # ``inputs()`` was stopped: closed for good, not reconnecting
        self.backoff = Backoff()
        #: whether the driver may connect now (None: always). Under a lease, only while it
        #: is known to hold: the standby that took the unit over connects with the same
        #: client id, and a reconnect would take its session (and its readings) back
        self.may_connect: Callable[[], bool] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    @property
    def is_open(self) -> bool:
        return self._open_now

    @property
    def state(self) -> str:
        """In words, for a status display."""
        if self._open_now:
            return "connected"
        if self.stopped:
            return "stopped"
        return "reconnecting" if self.stats.opened else "connecting"

    async def __aenter__(self) -> Driver:
        if self._open_now:
            raise RuntimeError(f"{self!r} is already open (drivers are reusable, not re-entrant)")
        await self._open()
        self._open_now = True
        self.stats.opened += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the wire; calling it again does nothing."""
        if not self._open_now:
            return
        self._open_now = False
        try:
            await self._close()
        except DriverError as error:
            log.warning("%s: while closing: %s", self.url, error)

    async def read(self) -> list[Inbound]:
        if not self._open_now:
            raise RuntimeError(f"{self!r} is not open")
        items = await self._read()
        self.stats.items += len(items)
        self.stats.problems += sum(1 for item in items if item.problem is not None)
        return items

    async def inputs(self) -> AsyncIterator[Inbound]:
        """Every input, for ever: reconnects with jittered exponential backoff."""
        async with contextlib.aclosing(self.bursts()) as bursts:
            async for burst in bursts:
                for item in burst:
                    yield item

    async def bursts(self) -> AsyncGenerator[list[Inbound], None]:
        """``inputs``, a read at a time: what a wire delivered together (an MQTT burst
        already received) comes as one list, so a consumer pays its per-read work once
        per burst rather than once per input. Never an empty list."""
        held = False
        while True:
            if self.may_connect is not None and not self.may_connect():
                if not held:
                    log.error("%s: held off the wire until this monitor's lease holds", self.url)
                held = True
                await asyncio.sleep(_HELD_S)
                continue
            held = False
            try:
                async with self:
                    log.info("%s: connected", self.url)
                    self.backoff.reset()
                    while True:
                        burst = await self.read()
                        if burst:
                            yield burst
            except DriverError as error:
                delay = self.backoff.next()
                self.stats.reconnects += 1
                where = "" if error.source else f"{self.url}: "  # the error may name it already
                log.warning("%s%s; reconnecting in %.1f s", where, error, delay)
                await asyncio.sleep(delay)
            except (asyncio.CancelledError, GeneratorExit):
                self.stopped = True
                raise
            except Exception:  # a bug in one driver must not stop the others: log it, retry
                delay = self.backoff.next()
                self.stats.reconnects += 1
                log.exception("%s: unexpected failure; reconnecting in %.1f s", self.url, delay)
                await asyncio.sleep(delay)

    # -- the hooks a backend implements ----------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _read(self) -> list[Inbound]: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...
