"""PostgreSQL: ``input_blocks`` partitioned by day of ``logged_us`` (schema version 8).

A day's partition is made ahead - today's and tomorrow's, by the log writer, before the
first batch of the day - so that retention can drop a whole day (``DROP TABLE``) instead
of deleting millions of rows and vacuuming after them. A row that no day's partition
takes (a partition that could not be made: a lock held too long, no right to create
tables) goes to the default partition: a batch never fails for want of a partition, and
retention deletes such rows one by one. SQLite is not partitioned.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["DAY_US", "Partitions", "day_of", "drop_days_before", "partition_days"]

log = logging.getLogger("calguard.alerts.log")

DAY_US = 86_400 * 1_000_000
_PREFIX = "input_blocks_p"
_NAME = re.compile(rf"^{_PREFIX}(\d{{8}})$")
_RETRY_S = 60.0  # after a failure, the next attempt (not at every batch)
_LOCK_TIMEOUT = "2s"  # a partition waits for no long reader: the batch goes on regardless


def day_of(us: int) -> int:
    """The start of the UTC day holding ``us``."""
    return us - us % DAY_US


def _name(day_us: int) -> str:
    return _PREFIX + datetime.fromtimestamp(day_us / 1e6, UTC).strftime("%Y%m%d")


def _day(name: str) -> int | None:
    found = _NAME.match(name)
    if found is None:
        return None
    day = datetime.strptime(found.group(1), "%Y%m%d").replace(tzinfo=UTC)
    return int(day.timestamp()) * 1_000_000


class Partitions:
    """Makes today's and tomorrow's partitions once a day (the writer calls ``ahead``)."""

    def __init__(self) -> None:
        self.ready_until = 0  # partitions exist for logged_us below this
        self._retry_at = 0.0

    async def ahead(self, engine: AsyncEngine, now_us: int) -> None:
        if engine.dialect.name != "postgresql" or now_us + DAY_US < self.ready_until:
            return
        if time.monotonic() < self._retry_at:
            return
        today = day_of(now_us)
        try:
            for day in (today, today + DAY_US):
                async with engine.begin() as conn:
                    await _make(conn, day)
        except SQLAlchemyError as exc:  # the rows go to the default partition meanwhile
            self._retry_at = time.monotonic() + _RETRY_S
            log.error("cannot make the day's partition of input_blocks: %s", _short(exc))
            return
        self.ready_until = today + 2 * DAY_US


async def _make(conn: AsyncConnection, day: int) -> None:
    await conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
    exists = await conn.execute(text("SELECT to_regclass(:n)"), {"n": _name(day)})
    if exists.scalar() is not None:
        return
    await conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {_name(day)} PARTITION OF input_blocks "
            f"FOR VALUES FROM ({day}) TO ({day + DAY_US})"
        )
    )


async def partition_days(conn: AsyncConnection) -> list[int]:
    """The days that have a partition, oldest first."""
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'input_blocks'::regclass"
        )
    )
    return sorted(d for (name,) in rows if (d := _day(str(name))) is not None)


async def drop_days_before(conn: AsyncConnection, cutoff_us: int) -> list[int]:
    """Drop the partitions of whole days before ``cutoff_us``; the days dropped."""
    dropped = []
    for day in await partition_days(conn):
        if day + DAY_US <= cutoff_us:
            await conn.execute(text(f"DROP TABLE {_name(day)}"))
            dropped.append(day)
    return dropped


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
