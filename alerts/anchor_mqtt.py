"""The audit anchor off this machine: the newest one kept retained on the MQTT broker.

    <prefix>/audit/anchor     retained, QoS 1: the newest anchor line of the monitor's log
                              (``calguard.alerts.anchor``), HMAC'd with the audit key

The anchor file sits on the monitor's own disk; whoever can rewrite the database there
may cut that file too. A copy on the broker - another machine, another account - is what
``calguard audit verify --anchor-mqtt URL`` compares the log with then. The publisher
logs in as the alarm sink does (``drivers/mqtt_link.py`` options), under a client id of
its own, and keeps only the newest anchor to send: one lost while the broker is away is
replaced by the next. It never holds the monitor up: failures are logged, retried with
backoff, and the last anchor gets a few seconds at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from calguard.alerts.anchor import Anchor
from calguard.drivers.base import Backoff
from calguard.drivers.mqtt_link import LINK_OPTIONS, broker_address, password, tls_context

__all__ = ["AnchorPublisher", "anchor_topic", "fetch_anchor", "link_options"]

log = logging.getLogger(__name__)

_CLOSE_S = 5.0  # how long the last anchor may take to go out at close


def anchor_topic(prefix: str) -> str:
    return f"{prefix}/audit/anchor"


def link_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The log-in and TLS options among a sink's or driver's options (defaults filled)."""
    return {name: options.get(name, spec.default) for name, spec in LINK_OPTIONS.items()}


def _client(
    url: str, link: Mapping[str, Any], identifier: str | None
) -> tuple[aiomqtt.Client, str]:
    """A client for the broker of ``url``, and the anchor topic under its prefix;
    ``ValueError`` for a URL or option that cannot work."""
    host, port, prefix, tls = broker_address(urlsplit(url), link)
    client = aiomqtt.Client(
        host,
        port,
        identifier=identifier,
        username=link["username"],
        password=password(link),
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=link["keepalive"],
        tls_context=tls_context(link, tls),
        timeout=10,
    )
    return client, anchor_topic(prefix)


class AnchorPublisher:
    """Keeps the newest anchor offered retained on ``<prefix>/audit/anchor``."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.link = link_options(options)
        self.client_id = f"{options.get('client_id') or 'calguard'}-audit"
        self.published = 0
        self._latest: Anchor | None = None
        self._sent: Anchor | None = None
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, anchor: Anchor) -> None:
        """The log's newest anchor (called by the log writer; no I/O here)."""
        self._latest = anchor
        self._caught_up.clear()
        self._wake.set()

    async def __aenter__(self) -> AnchorPublisher:
        if self._task is not None:
            raise RuntimeError("AnchorPublisher is not re-entrant")
        self._task = asyncio.create_task(self._run(), name="calguard-audit-anchor")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._latest is not self._sent and not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_S):
                    await self._caught_up.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                client, topic = _client(self.url, self.link, self.client_id)
            except ValueError as exc:  # a configuration problem: retrying will not help
                log.error("the audit anchor is not published to %s: %s", self.url, exc)
                return
            try:
                async with client:
                    backoff.reset()
                    await self._publish(client, topic)
            except aiomqtt.MqttError as exc:
                delay = backoff.next()
                log.warning(
                    "audit anchor: broker %s lost (%s); again in %.1f s", self.url, exc, delay
                )
                await asyncio.sleep(delay)

    async def _publish(self, client: aiomqtt.Client, topic: str) -> None:
        while True:
            anchor = self._latest
            if anchor is not None and anchor is not self._sent:
                await client.publish(topic, anchor.line(), qos=1, retain=True)
                self._sent = anchor
                self.published += 1
                continue
            self._caught_up.set()
            self._wake.clear()
            await self._wake.wait()


async def fetch_anchor(url: str, link: Mapping[str, Any], *, wait: float = 5.0) -> bytes | None:
    """The retained anchor under ``url``'s prefix, or None if none arrives within ``wait``
    seconds; ``ValueError`` when the broker cannot be reached or the options do not work."""
    client, topic = _client(url, link_options(link), None)
    try:
        async with client:
            await client.subscribe(topic, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    async for message in client.messages:
                        if isinstance(message.payload, bytes) and message.payload:
                            return message.payload
    except aiomqtt.MqttError as exc:
        raise ValueError(f"cannot read {topic} from the broker: {exc}") from exc
    return None
