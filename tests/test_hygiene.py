"""What CalGuard leaves on disk and on screen: the data directory and every folder in it
0700, the SQLite log (with its -wal and -shm), spool segments, the audit key and the
anchor file 0600 - whatever the umask; a key found readable by others is tightened; and
no command prints the database's password, not even when PostgreSQL does not answer."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from calguard.alerts.log import (
    AlertLog,
    default_anchor_file,
    default_audit_key,
    default_data_dir,
    default_spool_dir,
    redact_url,
    short_error,
    training_db_url,
)
from calguard.alerts.spool import Spool
from calguard.config import load_library
from calguard.monitor.records import InputRecord

from calguard.cli import main
from tests.brokers import free_port

EXAMPLE = Path(__file__).parent.parent / "examples" / "quickstart.jsonl"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory not made yet, under a umask that would leave everything open."""
    path = tmp_path / "calguard-data"
    monkeypatch.setenv("CALGUARD_DATA_DIR", str(path))
    for name in ("CALGUARD_SPOOL_DIR", "CALGUARD_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    old = os.umask(0)
    try:
        yield path
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_directory_and_what_it_keeps_are_for_this_user_only() -> None:
    async def log_something(url: str | None) -> dict[Path, int]:
        async with AlertLog(url) as log:
            db = Path(log.url.split(":///", 1)[1])
            reader = sqlite3.connect(db)  # a reader keeps the -wal and -shm files there
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM inputs").fetchall()
                await log.start_session("live", "hygiene", load_library())
                log.add_input(InputRecord.from_raw("{}", "test", "accepted", t_us=1))
                await log.flush()
                return {p: mode(p) for p in db.parent.glob(db.name + "*")}
            finally:
                reader.close()

    while_open = asyncio.run(log_something(None))  # the default: the data directory's log
    asyncio.run(log_something(training_db_url()))
    spool = Spool(default_spool_dir() / "a-database", 1 << 20)
    spool.append(b"a batch")
    spool.close()
    data = default_data_dir()
    assert {p.name.split(".", 1)[1] for p in while_open} == {
        "sqlite3",
        "sqlite3-wal",
        "sqlite3-shm",
    }
    assert set(while_open.values()) == {0o600}
    folders = [data, data / "keys", data / "audit", data / "training", default_spool_dir()]
    folders.append(default_spool_dir() / "a-database")
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    files = [default_audit_key(), default_anchor_file(), data / "calguard.sqlite3"]
    files += [data / "training" / "calguard-training.sqlite3"]
    files += list((default_spool_dir() / "a-database").glob("*.spool"))
    assert len(files) == 5
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}


def test_an_audit_key_others_can_read_is_tightened_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def open_log() -> None:
        async with AlertLog(None):
            pass

    asyncio.run(open_log())
    key = default_audit_key()
    os.chmod(key, 0o644)
    asyncio.run(open_log())
    assert mode(key) == 0o600
    assert f"the audit key {key} was readable by others (mode 644): now 600" in caplog.text


# -- no password on screen ---------------------------------------------------------------------


@pytest.fixture
def calguard(capsys: pytest.CaptureFixture[str]) -> Iterator[object]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    yield run
    root.handlers[:], root.level = handlers, level  # main() set its own up


def test_no_command_prints_the_database_password_when_postgresql_does_not_answer(
    calguard: object, tmp_path: Path
) -> None:
    db = f"postgresql://ward:s3cret-pw@127.0.0.1:{free_port()}/calguard"  # nobody listens
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\ndb = "{db}"\n[[drivers]]\nurl = "virtual://bedside"\n')
    commands = [
        ["export", "--db", db],
        ["report", "--db", db],
        ["sessions", "--db", db],
        ["audit", "verify", "--db", db],
        ["audit", "export", "--db", db],
        ["replay", str(EXAMPLE), "--db", db],
        ["run", "--site", str(site)],
    ]
    for command in commands:
        code, out = calguard(*command)  # type: ignore[operator]
        assert code == 3, (command, out)
        assert "s3cret" not in out, (command, out)
        assert "ward:***@127.0.0.1" in out, (command, out)  # said which log, without it
        assert "Traceback" not in out, (command, out)


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("postgresql://ward:s3cret@db:5432/x", "postgresql://ward:***@db:5432/x"),
        ("postgresql+asyncpg://ward:s3cr@t/x@db/x", "postgresql+asyncpg://ward:***@db/x"),
        ("postgresql://db/x?user=ward&password=s3cret", "postgresql://db/x?user=ward&password=***"),
        (
            "cannot read postgresql://ward:s3cret@db/x: connection refused",
            "cannot read postgresql://ward:***@db/x: connection refused",
        ),
        ("sqlite+aiosqlite:////var/lib/calguard/log.sqlite3", None),
        ("mqtt://127.0.0.1:1883/calguard/nicu", None),
    ],
)
def test_one_redaction_for_every_url_shown(shown: str, expected: str | None) -> None:
    assert redact_url(shown) == (expected or shown)
    assert short_error(RuntimeError(shown)) == (expected or shown)
