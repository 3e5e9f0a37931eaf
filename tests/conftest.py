"""Fixtures shared by the suite.

PostgreSQL: tests marked ``postgres`` get a fresh database created on the server named by
``CALGUARD_TEST_PG_URL`` (default: the local server, trust auth) and dropped afterwards.
A missing server fails those tests with instructions; it never skips them. Developers
without PostgreSQL can deselect them explicitly with ``-m "not postgres"``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from config import Library, load_library

PG_URL = os.environ.get("CALGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def library() -> Library:
    return load_library()


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is needed for this test and is not reachable at {PG_URL} ({exc}). "
            "Start it (pg_ctlcluster 15 main start), point CALGUARD_TEST_PG_URL at a server, "
            "or deselect these tests with -m 'not postgres'.",
            pytrace=False,
        )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"calguard_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
