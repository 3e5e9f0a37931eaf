"""The sessions of a log: which runs it holds (live, training, demo, replay; which site),
and how a command picks the ones it looks at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calguard.alerts.log import default_db_url, normalise_db_url, redact_url, short_error
from calguard.alerts.schema import alert_transitions, input_blocks, inputs, sessions
from calguard.monitor.errors import LogError
from sqlalchemy import BigInteger, cast, func, select, union_all
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["MODES", "WARD", "SessionFilter", "SessionInfo", "list_sessions"]

#: live: a ward's monitor; training: a site config on a training clock; demo; replay
MODES = ("live", "training", "demo", "replay")
#: every session but training and demo ones: what a ward's reports count by default
WARD = "ward"


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a command looks at: one by number, or by site and mode. ``mode``
    None: any; the default, ``WARD``, is every session but training and demo ones (a
    ward's live runs, and replays of real shifts)."""

    session: int | None = None
    site: str | None = None
    mode: str | None = WARD

    def query(self) -> Any:
        which = select(sessions.c.id)
        if self.session is not None:
            return which.where(sessions.c.id == self.session)
        if self.site is not None:
            which = which.where(sessions.c.site == self.site)
        if self.mode == WARD:
            which = which.where(sessions.c.mode.not_in(("training", "demo")))
        elif self.mode is not None:
            which = which.where(sessions.c.mode == self.mode)
        return which


@dataclass(frozen=True)
class SessionInfo:
    id: int
    mode: str
    site: str | None
    source: str
    started_us: int
    ended_us: int | None
    inputs: int
    alerts: int


async def list_sessions(url: str | None, which: SessionFilter | None = None) -> list[SessionInfo]:
    """The sessions the filter picks (default: all), oldest first, with their counts."""
    which = which or SessionFilter(mode=None)
    # inputs are rows, and readings in blocks (schema version 8: calguard.alerts.blocks)
    both = union_all(
        select(inputs.c.session_id, func.count().label("n")).group_by(inputs.c.session_id),
        select(input_blocks.c.session_id, func.sum(input_blocks.c.rows).label("n")).group_by(
            input_blocks.c.session_id
        ),
    ).subquery()
    counted_inputs = (
        select(both.c.session_id, cast(func.sum(both.c.n), BigInteger).label("n"))
        .group_by(both.c.session_id)
        .subquery()
    )
    counted_alerts = (
        select(alert_transitions.c.session_id, func.count().label("n"))
        .group_by(alert_transitions.c.session_id)
        .subquery()
    )
    query = (
        select(
            sessions.c.id,
            sessions.c.mode,
            sessions.c.site,
            sessions.c.source,
            sessions.c.started_us,
            sessions.c.ended_us,
            func.coalesce(counted_inputs.c.n, 0),
            func.coalesce(counted_alerts.c.n, 0),
        )
        .outerjoin(counted_inputs, counted_inputs.c.session_id == sessions.c.id)
        .outerjoin(counted_alerts, counted_alerts.c.session_id == sessions.c.id)
        .where(sessions.c.id.in_(which.query()))
        .order_by(sessions.c.id)
    )
    engine = create_async_engine(normalise_db_url(url or default_db_url()))
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    except (SQLAlchemyError, OSError) as exc:  # OSError: the server does not answer
        raise LogError(
            f"cannot read {redact_url(url or default_db_url())}: {short_error(exc)}"
        ) from exc
    finally:
        await engine.dispose()
    return [SessionInfo(*row) for row in rows]
