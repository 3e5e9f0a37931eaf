"""An in-process driver: whatever is put on its queue comes out as input.

For tests and for the demo, like python-can's virtual bus: ``VirtualDriver.put(event)``
(an event-format object) or ``put_problem(...)``. Instances are found by URL, so code that
only knows ``virtual://bedside`` reaches the same queue.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from calguard.drivers.base import Driver, Inbound

__all__ = ["VirtualDriver"]


class VirtualDriver(Driver):
    scheme = "virtual"
    _queues: ClassVar[dict[str, asyncio.Queue[Inbound]]] = {}

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.queue = self.channel(url)

    @classmethod
    def channel(cls, url: str) -> asyncio.Queue[Inbound]:
        queue = cls._queues.get(url)
        if queue is None:
            queue = cls._queues[url] = asyncio.Queue()
        return queue

    @classmethod
    def put(cls, url: str, event: dict[str, Any]) -> None:
        cls.channel(url).put_nowait(Inbound(url, orjson.dumps(event), event))

    @classmethod
    def put_problem(
        cls, url: str, raw: bytes, problem: str, pump: tuple[str, str] | None = None
    ) -> None:
        cls.channel(url).put_nowait(Inbound(url, raw, problem=problem, pump=pump))

    @classmethod
    def forget(cls, url: str) -> None:
        cls._queues.pop(url, None)

    async def _open(self) -> None:
        return None

    async def _read(self) -> list[Inbound]:
        return [await self.queue.get()]

    async def _close(self) -> None:
        return None
