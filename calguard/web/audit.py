"""The latest actions on alarms, as the audit chain holds them: what the station shows under
"Actions (audit)".

The station does not keep its own account of who did what: it reads the log's audit chain
(``audit_chain``: every action and every refused one, keyed and linked, see
``calguard.alerts.log``), so the page shows what an auditor will find, refusals included.
An action taken at the station is in the chain once the log has written it: the trail
waits for that (``AlertLog.after_durable``) and reads again, and it reads every
``_REFRESH_S`` anyway (an action from another station over the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from calguard.alerts.log import short_error
from calguard.alerts.schema import audit_chain
from calguard.monitor.timeutil import format_ts

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["AuditTrail", "entry"]

log = logging.getLogger(__name__)

_KINDS = ("action", "action-refused")
_SHOWN = 20
_REFRESH_S = 15.0
_DURABLE_WAIT_S = 5.0
_READ_TIMEOUT_S = 10.0


def entry(seq: int, t_us: int, kind: str, actor: str | None, payload: str) -> dict[str, Any]:
    """One audit entry of an action as the page shows it: the action as received, and for
    a refused one the monitor's reason (the payload's second line)."""
    first, _, reason = payload.partition("\n")
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    action = obj.get("type") or obj.get("action")
    return {
        "seq": seq,
        "t": format_ts(t_us),
        "kind": kind,
        "by": actor or obj.get("by"),
        "role": obj.get("role"),
        "action": action if isinstance(action, str) else None,
        "alert": obj.get("alert") if isinstance(obj.get("alert"), str) else None,
        "reason": obj.get("reason") if isinstance(obj.get("reason"), str) else None,
        "verdict": reason or "done",
    }


class AuditTrail:
    """The station's copy of the chain's latest action entries (``entries``)."""

    def __init__(self, station: Station) -> None:
        self.station = station
        self.entries: list[dict[str, Any]] = []
        self.problem: str | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """An action was taken: read the chain again once the log holds it."""
        self._poked.set()

    async def run(self) -> None:
        while True:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REFRESH_S):
                    await self._poked.wait()
            self._poked.clear()
            await self._durable()

    async def _durable(self) -> None:
        alert_log = self.station.monitor.log
        if alert_log is None:
            return
        done = asyncio.Event()
        alert_log.after_durable(done.set, soon=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DURABLE_WAIT_S):
                await done.wait()

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                entries = await self.read(_SHOWN)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            why = f"the audit cannot be read now: {short_error(exc)}"
            if why != self.problem:
                log.error("%s", why)
            self.problem = why
            return
        self.problem = None
        if entries != self.entries:
            self.entries = entries
            self.station.feed.poke()

    async def read(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` action entries of this station's sessions, newest first."""
        reader = self.station.reader
        if reader is None:
            return []
        chain = audit_chain.c
        query = (
            select(chain.seq, chain.t_us, chain.kind, chain.actor, chain.payload)
            .where(chain.kind.in_(_KINDS), chain.session_id.in_(self.station.sessions_of().query()))
            .order_by(chain.seq.desc())
            .limit(limit)
        )
        async with reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [entry(*row) for row in rows]
