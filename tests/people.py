"""The ward's people for the tests: accounts in a test's own log database, token keys in
its own data directory, tokens as ``calguard login`` writes them, and the guard a live
monitor checks commands with.

The accounts are hashed with Argon2id at a small memory cost, so that a test adding a
handful of them takes milliseconds; the hashing is the real one (``tests/test_accounts.py``
checks the production parameters).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from argon2 import PasswordHasher
from calguard.alerts.accounts import Accounts

from calguard.guard import CommandGuard
from calguard.tokens import KeyRing, issue, write_token

PASSWORD = "correct horse battery staple"
STAFF = {"rn1": "nurse", "charge1": "charge-nurse", "dr7": "prescriber", "pharm1": "pharmacist"}
QUICK = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


async def add_staff(db_url: str, staff: dict[str, str] | None = None) -> None:
    async with Accounts(db_url, hasher=QUICK) as accounts:
        for name, role in (staff or STAFF).items():
            await accounts.add(name, role, PASSWORD)


def keyring(data_dir: Path) -> KeyRing:
    """The token keys where ``calguard`` keeps them with ``CALGUARD_DATA_DIR=data_dir``."""
    return KeyRing(data_dir / "keys")


def token(keys: KeyRing, name: str, *, ttl_s: int = 3600, now_s: float | None = None) -> str:
    """A token for one of ``STAFF``, as ``calguard login`` would sign it."""
    return issue(
        keys, name, STAFF[name], ttl_s=ttl_s, now_s=time.time() if now_s is None else now_s
    )


def token_file(keys: KeyRing, path: Path, name: str) -> Path:
    write_token(path, token(keys, name))
    return path


def tampered(raw: str, **changes: object) -> str:
    """The token with its claims changed and its signature kept."""
    header, payload, signature = raw.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=")
    return f"{header}.{body.decode()}.{signature}"


def guard(db_url: str, keys: KeyRing) -> CommandGuard:
    """What a live monitor of this log checks commands with."""
    return CommandGuard(Accounts(db_url, migrate=False), keys)
