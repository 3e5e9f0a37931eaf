"""Webhook sink: each alarm line as an HTTP POST (JSON body, the exact alert line).

    https://alarms.example.org/calguard        (http:// only on loopback, for tests)

2xx is delivered. 408, 429 and 5xx, time outs and connection errors are retried with
backoff (the item stays at the head of the bounded buffer, so order is kept); any other
4xx is a refusal of that item, logged as undelivered. ``Idempotency-Key`` carries the
alert id, state and time, so a receiver can drop a retried duplicate.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from calguard.alerts.sinks.base import Delivery, Refused, Sink, SinkError
from calguard.config.options import OptionSpec

__all__ = ["WebhookSink"]

_RETRY = {408, 425, 429}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class WebhookSink(Sink):
    scheme = "https"
    options: ClassVar[dict[str, OptionSpec]] = {
        "timeout": OptionSpec(float, 5.0, "seconds per request"),
        "token_env": OptionSpec(str, None, "environment variable holding a bearer token"),
        "ca_file": OptionSpec(str, None, "CA certificate(s) to verify the receiver"),
    }

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        if self.parts.scheme == "http" and self.parts.hostname not in _LOOPBACK:
            raise ValueError(f"{url}: alarm data leaves the machine only over https://")
        self._client: httpx.AsyncClient | None = None

    async def _open(self) -> None:
        import os

        headers = {"Content-Type": "application/json", "User-Agent": "CalGuard"}
        name = self.config["token_env"]
        if name:
            token = os.environ.get(name)
            if token is None:
                raise SinkError(f"the environment variable {name} (the token) is not set")
            headers["Authorization"] = f"Bearer {token}"
        verify: Any = self.config["ca_file"] or True
        self._client = httpx.AsyncClient(
            timeout=self.config["timeout"], headers=headers, verify=verify
        )

    async def _deliver(self, item: Delivery) -> None:
        assert self._client is not None
        tr = item.tr
        key = f"{tr.alert}/{tr.state}/{tr.t}"
        try:
            response = await self._client.post(
                self.url, content=item.line.encode(), headers={"Idempotency-Key": key}
            )
        except httpx.HTTPError as exc:
            raise SinkError(f"POST failed: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        if status >= 500 or status in _RETRY:
            raise SinkError(f"the receiver answered {status}")
        raise Refused(f"the receiver answered {status}: {response.text[:200]}")

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
