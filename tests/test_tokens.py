"""Signed command tokens: ``calguard login`` and ``logout``, the keys outside the database,
what a verifier refuses and why, and key rotation that keeps earlier tokens valid until
they expire."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from calguard.alerts.accounts import Accounts

from calguard.tokens import MAX_TTL_S, KeyRing, TokenError, issue, verify
from tests.people import PASSWORD, QUICK, add_staff, keyring, tampered, token

ROOT = Path(__file__).parent.parent


def calguard(*args: str, env: dict[str, str], stdin: str = "") -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "calguard", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_login_writes_a_private_short_lived_token_and_logout_removes_it(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await add_staff(db)
    env = {"CALGUARD_DATA_DIR": str(tmp_path / "data"),
           "CALGUARD_TOKEN_FILE": str(tmp_path / "home" / "token")}  # fmt: skip
    code, out, err = calguard("login", "--user", "charge1", "--ttl", "2 h", "--password-stdin",
                              "--db", db, env=env, stdin=PASSWORD + "\n")  # fmt: skip
    assert code == 0, err
    assert out.startswith("logged in as charge1 (charge-nurse) until ")
    path = tmp_path / "home" / "token"
    raw = path.read_text().strip()
    assert raw not in out + err and PASSWORD not in out + err
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    keys = keyring(tmp_path / "data")
    assert mode(keys.directory) == 0o700
    (kid,) = keys.kids()
    assert {mode(p) for p in keys.directory.iterdir()} == {0o600}
    tokens = {p.name for p in keys.directory.iterdir() if p.name.startswith("token-")}
    assert tokens == {f"token-{kid}.key", f"token-{kid}.pub"}

    claims = verify(raw, keys.verifying_keys(time.time()), time.time())
    assert (claims.sub, claims.role, claims.kid) == ("charge1", "charge-nurse", kid)
    assert claims.exp - claims.iat == 7200 and len(claims.jti) == 32
    assert jwt.get_unverified_header(raw) == {"alg": "EdDSA", "kid": kid, "typ": "JWT"}

    code, out, err = calguard("logout", env=env)
    assert (code, out.strip()) == (0, "logged out") and not path.exists()
    code, out, _ = calguard("login", "--user", "charge1", "--password-stdin", "--db", db,
                            env=env, stdin="not the password\n")  # fmt: skip
    assert code == 1 and not path.exists()


def test_a_token_lives_at_most_12_hours(tmp_path: Path) -> None:
    code, _, err = calguard("login", "--ttl", "13 h", env={})
    assert code == 2 and "from 1 min to 12 h" in err
    with pytest.raises(TokenError, match="at most 12 h"):
        issue(KeyRing(tmp_path), "rn1", "nurse", ttl_s=MAX_TTL_S + 1, now_s=time.time())


def test_what_a_verifier_refuses_and_why(tmp_path: Path) -> None:
    keys = keyring(tmp_path)
    now = time.time()
    good = token(keys, "rn1")
    known = keys.verifying_keys(now)
    assert verify(good, known, now).sub == "rn1"

    expired = token(keys, "rn1", ttl_s=600, now_s=now - 3600)
    cases = {
        "token expired at 20": expired,
        "signature invalid": tampered(good, role="charge-nurse"),
        "not a signed token": "rn1",
        "no token": None,
    }
    # a token made with a secret someone chose (HS256), or with no signature at all
    kid = jwt.get_unverified_header(good)["kid"]
    claims = {"sub": "rn1", "role": "prescriber", "iat": int(now), "exp": int(now) + 60,
              "jti": "x"}  # fmt: skip
    cases["signature invalid: signed with 'HS256'"] = jwt.encode(
        claims, "guessed secret long enough for HS256 keys", algorithm="HS256",
        headers={"kid": kid},
    )  # fmt: skip
    cases["signature invalid: signed with 'none'"] = jwt.encode(
        claims, None, algorithm="none", headers={"kid": kid}
    )
    other_site = token(keyring(tmp_path / "elsewhere"), "rn1")
    cases["signed by an unknown key"] = other_site
    for why, bad in cases.items():
        with pytest.raises(TokenError, match=why):
            verify(bad, known, now)


def test_after_a_rotation_earlier_tokens_hold_until_they_expire(tmp_path: Path) -> None:
    keys = keyring(tmp_path)
    now = time.time()
    before = token(keys, "charge1", ttl_s=MAX_TTL_S)
    (first,) = keys.kids()
    second = keys.rotate(now + 1)
    after = token(keys, "charge1")
    assert jwt.get_unverified_header(after)["kid"] == second
    for held in (before, after):  # both verify now
        assert verify(held, keys.verifying_keys(now), now).sub == "charge1"
    # the first key verifies until every token it can have signed has expired ...
    assert first in keys.verifying_keys(now + MAX_TTL_S - 60)
    assert first not in keys.verifying_keys(now + MAX_TTL_S + 60)
    # ... and the next rotation after that deletes it
    keys.rotate(now + MAX_TTL_S + 60)
    assert first not in keys.kids() and not list(keys.directory.glob(f"token-{first}.*"))
    with pytest.raises(TokenError, match=f"signed by an unknown key \\('{first}'\\)"):
        verify(before, keys.verifying_keys(now), now)


def test_a_key_others_can_read_is_not_used_to_sign(tmp_path: Path) -> None:
    keys = keyring(tmp_path)
    token(keys, "rn1")
    (kid,) = keys.kids()
    (keys.directory / f"token-{kid}.key").chmod(0o644)
    with pytest.raises(TokenError, match=r"open to other users \(mode 0644\)"):
        token(keys, "rn1")


def test_keys_rotate_from_the_command_line(tmp_path: Path) -> None:
    env = {"CALGUARD_DATA_DIR": str(tmp_path)}
    code, out, err = calguard("keys", "rotate", env=env)
    assert code == 0, err
    (kid,) = keyring(tmp_path).kids()
    assert kid in out and "previous key verifies until its tokens expire" in out


async def test_a_disabled_account_cannot_log_in(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    await add_staff(db, {"rn2": "nurse"})
    async with Accounts(db, hasher=QUICK) as accounts:
        await accounts.disable("rn2")
    env = {"CALGUARD_DATA_DIR": str(tmp_path), "CALGUARD_TOKEN_FILE": str(tmp_path / "token")}
    code, _, err = calguard("login", "--user", "rn2", "--password-stdin", "--db", db, env=env,
                            stdin=PASSWORD + "\n")  # fmt: skip
    assert code == 1 and "account rn2 is disabled" in err and not (tmp_path / "token").exists()
