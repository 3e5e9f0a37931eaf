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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from calguard.config import Library, load_library

from tests.brokers import Broker
from tests.pgcluster import PgCluster

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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto of this test's own, on a free loopback port."""
    b = Broker(tmp_path / "mosquitto").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own CalGuard data directory and token file (keys, anchors, spool, the
    default log), in its environment and so in its subprocesses': nothing reads or writes
    the real ~/.local/share/calguard or ~/.config/calguard. A test may set its own."""
    data = tmp_path_factory.mktemp("calguard-data")
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(data))
    monkeypatch.setenv("CALGUARD_TOKEN_FILE", str(data / "token"))
    monkeypatch.delenv("CALGUARD_AUDIT_KEY", raising=False)
    monkeypatch.delenv("CALGUARD_SPOOL_DIR", raising=False)
    return data


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaves a task running or a file descriptor open (a driver, a port)."""
    before = _fds()
    yield
    current = asyncio.current_task()
    for _ in range(50):  # let cancelled tasks finish their clean-up
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            break
        await asyncio.sleep(0.02)
    assert not pending, f"tasks left running: {[t.get_name() for t in pending]}"
    leaked = _fds() - before
    for _ in range(50):
        if not leaked:
            break
        await asyncio.sleep(0.02)
        leaked = _fds() - before
    assert not leaked, f"file descriptors left open: {sorted(_describe(fd) for fd in leaked)}"


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _describe(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own (initdb/pg_ctl on a free loopback port), for
    tests that stop and start the server; removed afterwards."""
    cluster = PgCluster().init().start()
    try:
        yield cluster
    finally:
        cluster.remove()
