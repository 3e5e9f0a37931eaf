"""Leases: one monitor runs a unit at a time, and a standby takes over when it is gone.

Every monitor of a hospital config on PostgreSQL holds a lease per unit it runs (a row of
``monitor_leases``: holder, epoch, expiry by the database's clock). The holder renews it
every ``RENEW_S``; a second ``calguard run`` on the same unit polls, and takes the row
once it expired (``TTL_S`` without a renewal: the holder died, hangs or is cut off),
one epoch higher. An advisory lock alone would not do: a paused process keeps its
connection, and with it the lock, for as long as it is paused.

Fencing, for the holder that wakes after the standby took over (SIGSTOP, a VM paused, a
link back up) - three walls, each enough on its own:

- the log: every commit first checks, in its transaction, that the row still has this
  holder's epoch (``AlertLog.fence_with``), and locks the row while it commits, so a
  takeover waits for a commit in flight and no commit follows a takeover;
- the alarm sinks publish only while the lease is known to hold: a renewal succeeded less
  than ``TTL_S - MARGIN_S`` ago by this process's monotonic clock, which a pause moves on
  (``Sink.may_publish``); the standby, counting by the database's clock, cannot have taken
  the row before that;
- a renewal that finds the row taken, and a SIGCONT after a pause past that limit, stop
  the process at once, loudly, with ``EXIT_FENCED`` (its supervisor starts it again: it
  then waits as the standby).

The taking-over standby connects to the broker with the unit's own client ids, so the
broker disconnects the old holder as well, and hands the new one the persistent session
with every reading not yet acknowledged (acknowledged only once in the log).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # it ships no type information
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from calguard.alerts.log import normalise_db_url, redact_url
from calguard.alerts.schema import migrate_exclusively
from calguard.monitor.errors import LogError

__all__ = ["EXIT_FENCED", "MARGIN_S", "RENEW_S", "TTL_S", "Fenced", "Lease", "fence_on_wake"]

log = logging.getLogger(__name__)

TTL_S = 6.0  # a lease not renewed for this long (database time) may be taken
RENEW_S = 2.0  # how often the holder renews
MARGIN_S = 1.5  # the holder stops publishing this long before its lease could be taken
POLL_S = 1.0  # how often a standby looks whether the lease ran out
EXIT_FENCED = 75  # the exit status of a monitor that lost its lease to another

_TAKE = (  # $1 unit, $2 holder, $3 ttl in seconds
    "INSERT INTO monitor_leases (unit, holder, epoch, expires_at) "
    "VALUES ($1, $2, 1, now() + make_interval(secs => $3)) "
    "ON CONFLICT (unit) DO UPDATE SET holder = EXCLUDED.holder, "
    "epoch = monitor_leases.epoch + 1, expires_at = EXCLUDED.expires_at "
    "WHERE monitor_leases.expires_at < now() RETURNING epoch"
)
_RENEW = (  # $1 unit, $2 holder, $3 epoch, $4 ttl
    "UPDATE monitor_leases SET expires_at = now() + make_interval(secs => $4) "
    "WHERE unit = $1 AND holder = $2 AND epoch = $3 RETURNING epoch"
)
_RELEASE = (  # $1 unit, $2 holder, $3 epoch
    "UPDATE monitor_leases SET expires_at = now() "
    "WHERE unit = $1 AND holder = $2 AND epoch = $3 RETURNING epoch"
)
_HOLDER = (
    "SELECT holder, epoch, expires_at - now() AS remaining FROM monitor_leases WHERE unit = $1"
)
_CHECK = text("SELECT holder, epoch FROM monitor_leases WHERE unit = :unit FOR SHARE")


class Fenced(LogError):
    """This monitor's lease on its unit was taken by another: it may write nothing more."""


class Lease:
    """The lease on one unit, in the log database at ``url`` (PostgreSQL only)."""

    def __init__(
        self,
        url: str,
        unit: str,
        *,
        ttl: float = TTL_S,
        renew: float = RENEW_S,
        margin: float = MARGIN_S,
    ) -> None:
        self.url, self.unit, self.ttl, self.renew_s, self.margin = url, unit, ttl, renew, margin
        #: what a fenced monitor does: exit at once (a test records it instead)
        self.on_fenced: Callable[[str], None] = _exit
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.epoch: int | None = None
        self._renewed = -1e18  # monotonic time of the last renewal that succeeded
        self._conn: asyncpg.Connection | None = None
        self._dsn = normalise_db_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)

    # -- what the monitor asks ---------------------------------------------------------------

    def valid(self) -> bool:
        """Known to hold: renewed within ``TTL_S - MARGIN_S`` by this process's clock."""
        return time.monotonic() - self._renewed < self.ttl - self.margin

    async def check(self, conn: AsyncConnection) -> None:
        """The log writer's fence, inside its commit's transaction: the row still ours.
        A holder paused inside the transaction would keep its locks (the row's, the audit
        chain's) for as long as it is paused: the server ends it after ``ttl / 2`` idle."""
        await conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {self._idle_ms}"))
        row = (await conn.execute(_CHECK, {"unit": self.unit})).first()
        if row is None or row.holder != self.holder or row.epoch != self.epoch:
            self.fenced("the log refused a commit: its lease was taken")
            raise Fenced(f"unit {self.unit}: the lease was taken by {row.holder if row else '?'}")

    # -- taking, holding, giving back ----------------------------------------------------------

    async def __aenter__(self) -> Lease:
        engine = create_async_engine(normalise_db_url(self.url), poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await migrate_exclusively(conn, int(time.time() * 1e6))
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"unit {self.unit}: cannot reach the log {redact_url(self.url)} for its lease: "
                + redact_url(str(exc))
            ) from exc
        finally:
            await engine.dispose()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Give the lease back (a standby takes it at once) and close."""
        if self.epoch is not None and self.valid():
            try:
                await self._fetch(_RELEASE, self.unit, self.holder, self.epoch)
            except LogError as error:
                log.warning("unit %s: could not give the lease back: %s", self.unit, error)
        self._drop()

    async def acquire(self) -> None:
        """Wait until this monitor holds the lease (at once when nobody does)."""
        said = False
        while True:
            epoch = await self._try(_TAKE, self.ttl)
            if epoch is not None:
                self.epoch, self._renewed = epoch, time.monotonic()
                log.warning("unit %s: lease taken (epoch %d) by %s", self.unit, epoch, self.holder)
                return
            if not said:
                log.warning("unit %s: %s; waiting as its standby", self.unit, await self._who())
                said = True
            await asyncio.sleep(POLL_S)

    async def hold(self) -> None:
        """Renew for ever (a task beside the monitor); stops the process if fenced."""
        while True:
            await asyncio.sleep(self.renew_s)
            if not self.valid():
                log.error("unit %s: lease not known to hold; alarms are not published", self.unit)
            started = time.monotonic()
            try:
                epoch = await self._try(_RENEW, self.epoch, self.ttl, raise_=True)
            except LogError as exc:
                log.warning("unit %s: lease renewal failed (%s); retrying", self.unit, exc)
                continue
            if epoch is None:
                self.fenced("another monitor took its lease")
                return
            self._renewed = started  # counted from before the query: the safe side

    def fenced(self, why: str) -> None:
        """Stop now, without flushing or publishing anything more: another runs the unit."""
        self.on_fenced(f"calguard: FENCED: unit {self.unit}: {why}; this monitor stops")

    def on_wake(self) -> None:
        """SIGCONT: after a pause past the lease's limit, another may run the unit now."""
        if self.epoch is not None and not self.valid():
            self.fenced("paused past its lease (SIGCONT)")

    @property
    def _idle_ms(self) -> int:
        return int(self.ttl * 500)

    # -- the database --------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: object) -> Any:
        """One statement on the lease's own connection, never longer than ``renew_s``: a
        connection that timed out is dropped, unread (a link that went silent)."""
        try:
            if self._conn is None:
                self._conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self.renew_s,
                    server_settings={"idle_in_transaction_session_timeout": str(self._idle_ms)},
                )
            return await self._conn.fetchrow(query, *args, timeout=self.renew_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._drop()
            raise LogError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()  # closes the socket, waits for nothing
            self._conn = None

    async def _try(self, query: str, *args: object, raise_: bool = False) -> int | None:
        try:
            row = await self._fetch(query, self.unit, self.holder, *args)
        except LogError as exc:
            if raise_:
                raise
            log.warning("unit %s: cannot reach the lease: %s", self.unit, exc)
            return None
        return int(row["epoch"]) if row is not None else None

    async def _who(self) -> str:
        try:
            row = await self._fetch(_HOLDER, self.unit)
        except LogError as exc:
            return f"its lease cannot be read ({exc})"
        if row is None:
            return "held by nobody"
        left = row["remaining"]  # an interval: a timedelta from asyncpg
        left_s = left.total_seconds() if hasattr(left, "total_seconds") else float(left)
        return f"held by {row['holder']} (epoch {row['epoch']}, {max(left_s, 0.0):.1f} s left)"


def _exit(why: str) -> None:
    sys.stderr.write(why + "\n")
    sys.stderr.flush()
    os._exit(EXIT_FENCED)


def fence_on_wake(leases: list[Lease]) -> None:
    """Check every lease at SIGCONT, before the event loop runs anything else (a Python
    signal handler runs between two bytecodes of the main thread)."""

    def woke(_signum: int, _frame: object) -> None:
        for lease in leases:
            lease.on_wake()

    signal.signal(signal.SIGCONT, woke)
