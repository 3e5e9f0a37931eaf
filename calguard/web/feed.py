"""Live updates pushed to every open page: server-sent events, no polling loop in a page.

One task builds the ward's state (``calguard.web.state``) when something changed and
sends the same bytes to every open page: at once when an alert line goes out (the
monitor's outputs call ``poke``), within ``_SAMPLE_S`` when an input was applied (a
reading that moves a rate bar raises no alert line: the task looks at the monitor's count
of inputs), and at least once a second. That heartbeat lets a page tell a monitor that
went quiet from a ward that did: a page that hears nothing for a few seconds says so
(``static/station.js``), and a page whose connection drops says so at once.

The same task measures how late the event loop runs (a sleep of 0.1 s that took 2 s
means the monitor itself is lagging: its readings and timers wait as long) and the state
it sends carries that, for the ``monitor-lagging`` banner.

Why SSE and not a websocket: the page only listens; its actions are ordinary POSTs that
carry the CSRF token, and the browser's ``EventSource`` reconnects by itself after a
restart of the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

__all__ = ["Feed"]

log = logging.getLogger(__name__)

_SAMPLE_S = 0.1  # how often the count of applied inputs is looked at
_HEARTBEAT_S = 1.0  # the state goes out at least this often
_LAG_WINDOW_S = 10.0  # the lag shown is the worst of this long
_RETRY_MS = 1000  # how soon a page's EventSource tries again after losing the monitor


class Feed:
    """``build(lag_s)`` makes the state; ``changes()`` says how many inputs were applied."""

    def __init__(
        self, build: Callable[[float], dict[str, Any]], changes: Callable[[], int]
    ) -> None:
        self.build = build
        self.changes = changes
        self.version = 0
        self.latest = b""
        self.state: dict[str, Any] = {}
        self.closed = False
        self._poked = asyncio.Event()
        self._published = asyncio.Event()
        self._lags: deque[tuple[float, float]] = deque()
        self.clients = 0

    def poke(self, *_: object) -> None:
        """Something changed (an alert line, an action): send the state now. Takes any
        arguments, so it can be one of the monitor's outputs."""
        self._poked.set()

    @property
    def lag_s(self) -> float:
        return max((lag for _, lag in self._lags), default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        seen, last = -1, 0.0
        while not self.closed:
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SAMPLE_S):
                    await self._poked.wait()
            self._note_lag(loop.time() - started)
            count = self.changes()
            due = loop.time() - last >= _HEARTBEAT_S
            if self._poked.is_set() or count != seen or due:
                self._poked.clear()
                seen, last = count, loop.time()
                self.publish()

    def _note_lag(self, slept: float) -> None:
        now = time.monotonic()
        late = max(0.0, slept - _SAMPLE_S) if not self._poked.is_set() else 0.0
        self._lags.append((now, late))
        while self._lags and self._lags[0][0] < now - _LAG_WINDOW_S:
            self._lags.popleft()

    def publish(self) -> None:
        try:
            state = self.build(self.lag_s)
        except Exception:  # a bug in a view must not stop the updates, nor the monitor
            log.exception("the central station could not build the ward's state")
            return
        self.state = state
        self.latest = _event("state", state)
        self.version += 1
        self._wake()

    def close(self, why: str = "the monitor stopped") -> None:
        """The last message every page gets: the monitor stops (the page says so, at once)."""
        if self.closed:
            return
        self.closed = True
        self.latest = _event("stopped", {"why": why, "at": time.time()})
        self.version += 1
        self._wake()

    def _wake(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    async def stream(self) -> AsyncIterator[bytes]:
        """What one page receives, until the monitor stops (or the page goes)."""
        self.clients += 1
        try:
            yield f"retry: {_RETRY_MS}\n\n".encode()
            seen = -1
            while True:
                published = self._published
                if self.version != seen and self.latest:
                    seen = self.version
                    yield self.latest
                if self.closed:
                    return
                await published.wait()
        finally:
            self.clients -= 1


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
