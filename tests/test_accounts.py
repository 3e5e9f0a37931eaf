"""People's accounts in the log database, on SQLite and PostgreSQL: Argon2id hashes that
nothing shows, checked names and passwords, disabling, new passwords, rehashing when the
parameters rise, and ``calguard user`` as an administrator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from calguard.alerts.accounts import Account, AccountError, Accounts, AuthenticationError
from calguard.alerts.log import normalise_db_url
from calguard.alerts.schema import users
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.people import PASSWORD, QUICK

ROOT = Path(__file__).parent.parent


async def hashes(url: str) -> dict[str, str]:
    engine = create_async_engine(normalise_db_url(url))
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(users.c.name, users.c.password_hash))).all()
    finally:
        await engine.dispose()
    return {r.name: r.password_hash for r in rows}


async def test_an_account_keeps_an_argon2id_hash_and_its_role(db_url: str) -> None:
    async with Accounts(db_url) as accounts:  # the production parameters
        added = await accounts.add("rn42", "nurse", PASSWORD)
        listed = await accounts.snapshot()
    assert listed == {"rn42": added} and added.role == "nurse" and not added.disabled
    digest = (await hashes(db_url))["rn42"]
    assert digest.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in digest
    assert "hash" not in repr(added) and PASSWORD not in repr(added)


async def test_the_password_decides_and_a_disabled_account_cannot_log_in(db_url: str) -> None:
    async with Accounts(db_url, hasher=QUICK) as accounts:
        await accounts.add("charge1", "charge-nurse", PASSWORD)
        assert (await accounts.authenticate("charge1", PASSWORD)).role == "charge-nurse"
        with pytest.raises(AuthenticationError) as wrong:
            await accounts.authenticate("charge1", PASSWORD + "!")
        with pytest.raises(AuthenticationError) as unknown:
            await accounts.authenticate("nobody", PASSWORD)
        assert str(wrong.value) == str(unknown.value) == "unknown user or wrong password"

        before = await accounts.get("charge1")
        await accounts.disable("charge1")
        with pytest.raises(AccountError, match="account charge1 is disabled"):
            await accounts.authenticate("charge1", PASSWORD)
        disabled = await accounts.get("charge1")
        assert disabled.disabled and disabled.state == "disabled"
        assert disabled.changed_us > before.changed_us  # tokens issued before no longer hold
        await accounts.enable("charge1")
        assert not (await accounts.authenticate("charge1", PASSWORD)).disabled

        await accounts.passwd("charge1", "a new long passphrase")
        with pytest.raises(AuthenticationError):
            await accounts.authenticate("charge1", PASSWORD)
        assert (await accounts.authenticate("charge1", "a new long passphrase")).name == "charge1"


@pytest.mark.parametrize(
    ("name", "role", "password", "why"),
    [
        ("RN42", "nurse", PASSWORD, "not an account name"),
        ("rn 42", "nurse", PASSWORD, "not an account name"),
        ("r", "nurse", PASSWORD, "not an account name"),
        ("rñ42", "nurse", PASSWORD, "not an account name"),
        ("rn42" + "x" * 40, "nurse", PASSWORD, "not an account name"),
        ("rn42", "surgeon", PASSWORD, "'surgeon' is not a role"),
        ("rn42", "nurse", "short", "at least 10 characters"),
    ],
)
async def test_names_roles_and_passwords_are_checked(
    tmp_path: Path, name: str, role: str, password: str, why: str
) -> None:
    async with Accounts(f"sqlite:///{tmp_path / 'log.sqlite3'}", hasher=QUICK) as accounts:
        with pytest.raises(AccountError, match=why) as refused:
            await accounts.add(name, role, password)
        assert await accounts.snapshot() == {}
    assert password not in str(refused.value) or password == PASSWORD


async def test_a_name_is_taken_once_and_unknown_names_cannot_be_changed(tmp_path: Path) -> None:
    async with Accounts(f"sqlite:///{tmp_path / 'log.sqlite3'}", hasher=QUICK) as accounts:
        await accounts.add("dr7", "prescriber", PASSWORD)
        with pytest.raises(AccountError, match="'dr7' exists already"):
            await accounts.add("dr7", "nurse", PASSWORD)
        for change in (accounts.disable("dr8"), accounts.passwd("dr8", PASSWORD)):
            with pytest.raises(AccountError, match="no account 'dr8'"):
                await change
        assert [a.role for a in (await accounts.snapshot()).values()] == ["prescriber"]


async def test_a_password_hashed_with_older_parameters_is_rehashed_at_login(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    async with Accounts(url, hasher=QUICK) as older:
        await older.add("rn1", "nurse", PASSWORD)
    assert (await hashes(url))["rn1"].startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    async with Accounts(url) as newer:
        await newer.authenticate("rn1", PASSWORD)
        assert (await newer.get("rn1")).changed_us == (await newer.get("rn1")).created_us
    assert (await hashes(url))["rn1"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")


async def test_an_unknown_name_costs_a_full_hash(tmp_path: Path) -> None:
    """Answering "no such user" faster than "wrong password" would tell which names exist.
    (A lower bound only: a loaded machine makes both slower, never faster.)"""
    hasher = PasswordHasher(time_cost=4, memory_cost=65536, parallelism=1)
    async with Accounts(f"sqlite:///{tmp_path / 'log.sqlite3'}", hasher=hasher) as accounts:
        start = time.perf_counter()
        hasher.hash(PASSWORD)
        one_hash = time.perf_counter() - start
        start = time.perf_counter()
        with pytest.raises(AuthenticationError):
            await accounts.authenticate("nobody", PASSWORD)
        assert time.perf_counter() - start > one_hash / 3


def calguard(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "calguard", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_an_administrator_manages_accounts_from_the_command_line(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'log.sqlite3'}"]
    code, out = calguard("user", "add", "rn42", "--role", "nurse", "--password-stdin", *db,
                         stdin=PASSWORD + "\n")  # fmt: skip
    said = [x for x in out.splitlines() if "a new audit key was made" not in x]  # the first use
    assert (code, said) == (0, ["account rn42 added: nurse"])
    code, out = calguard("user", "passwd", "rn42", "--password-stdin", *db,
                         stdin="another long passphrase\n")  # fmt: skip
    assert code == 0 and "password changed" in out and "another" not in out
    assert calguard("user", "disable", "rn42", *db)[0] == 0
    code, out = calguard("user", "list", *db)
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "ROLE", "STATE", "CHANGED", "(UTC)"]
    assert out.splitlines()[1].split()[:3] == ["rn42", "nurse", "disabled"]
    assert "$argon2" not in out and PASSWORD not in out


@pytest.mark.postgres
async def test_accounts_on_postgresql_come_with_the_log_schema(pg_url: str) -> None:
    """The first ``calguard user add`` on a fresh database makes the whole log schema."""
    async with Accounts(pg_url, hasher=QUICK) as accounts:
        await accounts.add("pharm1", "pharmacist", PASSWORD)
    async with Accounts(pg_url, migrate=False) as reader:
        (found,) = (await reader.snapshot()).values()
    assert isinstance(found, Account) and (found.name, found.role) == ("pharm1", "pharmacist")


async def test_every_change_of_an_account_is_audited_and_an_edit_of_the_table_is_found(
    db_url: str,
) -> None:
    """``user add``, ``disable``, ``enable``, ``passwd`` are audit entries holding the row's
    digest: the log verifies; a role raised, an account enabled, a password hash swapped or
    an account added or deleted straight in the table fails the ``accounts`` check."""
    from calguard.alerts.audit import verify_chain

    async with Accounts(db_url, hasher=QUICK) as accounts:
        await accounts.add("rn1", "nurse", PASSWORD)
        await accounts.add("rn2", "nurse", PASSWORD)
        await accounts.disable("rn2")
        await accounts.enable("rn2")
        await accounts.passwd("rn1", PASSWORD + "x")
        await accounts.disable("rn2")
    report = await verify_chain(db_url)
    assert report.ok, [c.problems for c in report.failed]
    assert report.checks["accounts"].summary == "2 account(s) match their latest audit entries"

    engine = create_async_engine(normalise_db_url(db_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                users.update().where(users.c.name == "rn1").values(role="prescriber")
            )
            await conn.execute(users.update().where(users.c.name == "rn2").values(disabled=False))
        found = (await verify_chain(db_url)).checks["accounts"].problems
        assert len(found) == 2 and all("differs from its audited state" in p for p in found)
        async with engine.begin() as conn:
            await conn.execute(users.delete().where(users.c.name == "rn2"))
            row = {"name": "ghost", "role": "charge-nurse", "password_hash": "x",
                   "disabled": False, "created_us": 1, "changed_us": 1}  # fmt: skip
            await conn.execute(users.insert(), [row])
    finally:
        await engine.dispose()
    found = (await verify_chain(db_url)).checks["accounts"].problems
    assert any("ghost has no audit entry" in p for p in found)
    assert any("rn2 was deleted outside calguard user" in p for p in found)
