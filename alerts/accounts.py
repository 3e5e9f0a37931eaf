"""People's accounts: who may act on alarms, and with which role.

Accounts live in the log database (table ``users``, schema version 5): one ward's
PostgreSQL then serves every monitor and station, and the accounts sit beside the actions
that name them. An account is disabled, never deleted, so that the log's names keep
meaning someone.

Passwords are hashed with Argon2id (argon2-cffi's ``PasswordHasher``: RFC 9106's
parameters, a random salt per hash, the parameters stored in the hash itself), which is
memory-hard and so expensive to guess offline from a stolen database. When the parameters
are raised in a later CalGuard, each password is rehashed at its owner's next successful
login. A name that has no account costs a hash all the same, so the time an answer takes
does not tell which names exist. Nothing here prints or logs a password or a hash; hashing
runs in a worker thread, so an event loop never stalls on it.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from calguard.alerts.chain import AuditKey, Entry, Head
from calguard.alerts.library_store import NO_SESSION, anchor_head, append_entry, audit_key
from calguard.alerts.log import (
    default_anchor_file,
    default_audit_key,
    default_db_url,
    normalise_db_url,
    redact_url,
    short_error,
)
from calguard.alerts.private import create_private_file, private_dir
from calguard.alerts.schema import log_identity, migrate_exclusively, users
from calguard.monitor.errors import CalGuardError, LogError
from calguard.monitor.events import ROLES
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "MIN_PASSWORD",
    "ROLES",
    "Account",
    "AccountError",
    "Accounts",
    "AuthenticationError",
    "account_digest",
    "check_name",
    "check_password",
]

log = logging.getLogger(__name__)
#: a short ASCII slug: rn42, dr.okafor, charge-1 (it is shown on every alarm line it acts on)
_NAME = re.compile(r"[a-z][a-z0-9._-]{1,31}")
MIN_PASSWORD = 10
_MAX_PASSWORD = 1024  # hashing a megabyte on request is a denial of service, not a password
_CONNECT_TIMEOUT_S = 5.0


class AccountError(CalGuardError):
    """An account could not be added, changed or used; the message says why."""


class AuthenticationError(AccountError):
    """The name and password do not match an account (one message for both: which of the
    two was wrong is not told)."""


@dataclass(frozen=True, slots=True)
class Account:
    """An account as the monitor and ``calguard user list`` see it: never its hash."""

    name: str
    role: str
    disabled: bool
    created_us: int
    changed_us: int  # the last change of password, role or state

    @property
    def state(self) -> str:
        return "disabled" if self.disabled else "enabled"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AccountError(
            f"{name!r} is not an account name: 2-32 characters, lower-case ASCII letters, "
            "digits, '.', '_' or '-', starting with a letter (e.g. rn42)"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > _MAX_PASSWORD:
        raise AccountError(f"a password has at most {_MAX_PASSWORD} characters")
    return password


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"{role!r} is not a role; one of {', '.join(ROLES)}")
    return role


class Accounts:
    """The accounts of one log database (an async context manager). ``migrate=False`` for
    a reader that must not change the schema (the live monitor: its log has migrated it)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        hasher: PasswordHasher | None = None,
        migrate: bool = True,
        audit_key: Path | None = None,
        anchor_file: Path | None = None,
    ) -> None:
        self.url = normalise_db_url(url or default_db_url())
        #: every change of an account is an entry of the keyed audit chain, with the digest
        #: of its row: a role or a state written straight into the table fails audit verify
        self.audit_key = audit_key or default_audit_key()
        self.anchor_file = anchor_file or default_anchor_file()
        self.hasher = hasher or PasswordHasher()  # Argon2id, RFC 9106 low-memory profile
        self._migrate = migrate
        self._engine: AsyncEngine | None = None

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    async def __aenter__(self) -> Accounts:
        if self._engine is not None:
            raise RuntimeError("Accounts is not re-entrant")
        self._engine = await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _open(self) -> AsyncEngine:
        file_sqlite = self.url.startswith("sqlite") and ":memory:" not in self.url
        options: dict[str, Any] = {}
        if file_sqlite:
            path = self.url.split(":///", 1)[-1].split("?", 1)[0]
            if path and self._migrate:  # a fresh install: made as the log makes its file
                await asyncio.to_thread(_private_file, path)
            options = {"poolclass": NullPool, "connect_args": {"timeout": _CONNECT_TIMEOUT_S}}
        elif self.url.startswith("postgresql"):
            options = {"pool_pre_ping": True, "connect_args": {"timeout": _CONNECT_TIMEOUT_S}}
        try:
            engine = create_async_engine(self.url, **options)
        except (SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
            raise LogError(f"cannot use the database {self.display_url}: {exc}") from exc
        if not self._migrate:
            return engine
        try:
            async with engine.begin() as conn:
                await migrate_exclusively(conn, _wall_us())
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            await engine.dispose()
            raise LogError(
                f"cannot open the database {self.display_url}: {short_error(exc)}"
            ) from exc
        return engine

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("use Accounts as `async with Accounts(url) as accounts:`")
        return self._engine

    # -- reading ------------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Account]:
        """Every account, by name (no hashes); ``LogError`` if the database cannot answer."""
        columns = [users.c[k] for k in ("name", "role", "disabled", "created_us", "changed_us")]
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(select(*columns).order_by(users.c.name))).all()
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"cannot read the accounts in {self.display_url}: {short_error(exc)}"
            ) from exc
        return {
            r.name: Account(r.name, r.role, bool(r.disabled), r.created_us, r.changed_us)
            for r in rows
        }

    async def get(self, name: str) -> Account:
        found = (await self.snapshot()).get(name)
        if found is None:
            raise AccountError(f"no account {name!r} in {self.display_url}")
        return found

    # -- changing -----------------------------------------------------------------------------

    async def add(self, name: str, role: str, password: str) -> Account:
        check_name(name)
        _check_role(role)
        check_password(password)
        digest = await asyncio.to_thread(self.hasher.hash, password)
        now = _wall_us()
        row = {
            "name": name,
            "role": role,
            "password_hash": digest,
            "disabled": False,
            "created_us": now,
            "changed_us": now,
        }
        try:
            key = audit_key(self.audit_key)
            async with self.engine.begin() as conn:
                await conn.execute(insert(users), [row])
                head, identity = await self._audited(conn, key, "add", name)
        except IntegrityError:
            raise AccountError(f"account {name!r} exists already") from None
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"cannot add {name!r} in {self.display_url}: {short_error(exc)}"
            ) from exc
        anchor_head(self.anchor_file, key, identity, head)
        return Account(name, role, False, now, now)

    async def disable(self, name: str) -> Account:
        return await self._change(name, disabled=True)

    async def enable(self, name: str) -> Account:
        return await self._change(name, disabled=False)

    async def passwd(self, name: str, password: str) -> Account:
        check_password(password)
        await self.get(name)  # an unknown name is said before the hash is paid for
        digest = await asyncio.to_thread(self.hasher.hash, password)
        return await self._change(name, password_hash=digest)

    async def _change(self, name: str, **values: object) -> Account:
        statement = update(users).where(users.c.name == name)
        what = (
            "passwd"
            if "password_hash" in values
            else "disable"
            if values.get("disabled")
            else "enable"
        )
        key = audit_key(self.audit_key)
        try:
            async with self.engine.begin() as conn:
                done = await conn.execute(statement.values(**values, changed_us=_wall_us()))
                if done.rowcount != 1:
                    raise AccountError(f"no account {name!r} in {self.display_url}")
                head, identity = await self._audited(conn, key, what, name)
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"cannot change {name!r} in {self.display_url}: {short_error(exc)}"
            ) from exc
        anchor_head(self.anchor_file, key, identity, head)
        return await self.get(name)

    # -- the audit ----------------------------------------------------------------------------

    async def _audited(
        self, conn: Any, key: AuditKey, what: str, name: str, by: str | None = None
    ) -> tuple[Head, str]:
        """The account's row as it now stands, as an audit entry (in the same transaction):
        ``account-<what>`` by the operating-system user who ran the command (or ``by``)."""
        row = (await conn.execute(select(users).where(users.c.name == name))).one()
        said = {"account": name, "role": row.role, "disabled": bool(row.disabled)}
        said["changed_us"] = row.changed_us
        entry = Entry(
            NO_SESSION,
            _wall_us(),
            f"account-{what}",
            by or f"local:{getpass.getuser()}",
            orjson.dumps(said).decode(),
            None,
            account_digest(row),
        )
        head = await append_entry(conn, entry, key)
        identity = (await conn.execute(select(log_identity.c.id))).scalar_one()
        return head, str(identity)

    # -- logging in ---------------------------------------------------------------------------

    async def authenticate(self, name: str, password: str) -> Account:
        """The account, if the password is its own and it is enabled; else
        ``AuthenticationError`` (unknown name or wrong password, alike) or ``AccountError``
        (disabled: said only to someone who knows the password)."""
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(users).where(users.c.name == name))).first()
        except (SQLAlchemyError, OSError) as exc:
            raise LogError(
                f"cannot read the accounts in {self.display_url}: {short_error(exc)}"
            ) from exc
        digest = _decoy(self.hasher) if row is None else row.password_hash
        matches = await asyncio.to_thread(self._verify, digest, password[:_MAX_PASSWORD])
        if row is None or not matches or len(password) > _MAX_PASSWORD:
            raise AuthenticationError("unknown user or wrong password")
        if row.disabled:
            raise AccountError(f"account {name} is disabled")
        if self.hasher.check_needs_rehash(row.password_hash):
            await self._rehash(name, password)
        return Account(name, row.role, False, row.created_us, row.changed_us)

    async def _rehash(self, name: str, password: str) -> None:
        """The same password under the hasher's parameters now (not a change of state)."""
        digest = await asyncio.to_thread(self.hasher.hash, password)
        try:
            key = audit_key(self.audit_key)
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(users).where(users.c.name == name).values(password_hash=digest)
                )
                head, identity = await self._audited(conn, key, "rehash", name, by=name)
        except (SQLAlchemyError, OSError, LogError) as exc:  # the login stands; next one retries
            log.warning("account %s: could not store the rehashed password: %s", name, exc)
        else:
            anchor_head(self.anchor_file, key, identity, head)
            log.info("account %s: password rehashed with the current Argon2id parameters", name)

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False


def _private_file(path: str) -> None:
    """The SQLite file (0600) in its folder (0700), before SQLite makes them with the umask's
    modes: the log holds patients' data."""
    file = Path(path).expanduser()
    private_dir(file.parent)
    create_private_file(file)


def _decoy(hasher: PasswordHasher) -> str:
    """A well-formed hash with the hasher's parameters that no password matches: checking
    an unknown name against it costs what checking a real account costs."""
    salt, digest = (
        base64.b64encode(bytes(n)).rstrip(b"=").decode() for n in (hasher.salt_len, hasher.hash_len)
    )
    return (
        f"$argon2id$v=19$m={hasher.memory_cost},t={hasher.time_cost},"
        f"p={hasher.parallelism}${salt}${digest}"
    )


def account_digest(row: Any) -> str:
    """SHA-256 of an account's row as stored (its password's hash included): what its
    latest audit entry holds, so that ``calguard audit verify`` finds a row edited outside
    ``calguard user``."""
    fields = (row.name, row.role, row.password_hash, bool(row.disabled), row.created_us)
    text = "\n".join(str(f) for f in (*fields, row.changed_us))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _wall_us() -> int:
    return time.time_ns() // 1000
