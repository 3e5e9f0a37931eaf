"""Signed command tokens: the proof of who acts on an alarm, carried by every command.

``calguard login`` checks a person's password against the accounts and writes a
short-lived token (a JWT: ``sub`` the account, ``role``, ``iat``, ``exp``, ``jti``; the
key id in the header's ``kid``) to a file only its owner can read. ``calguard ack`` and
the other actions send it with the command; the live monitor verifies it
(``calguard.guard``) before anything is applied.

Why EdDSA (Ed25519) rather than HS256: with HS256 the key that checks a token is the key
that makes one, so every monitor process of a ward (several share its broker and database)
would hold the power to mint a token for any account. With Ed25519 a verifier needs only
the public keys; the private key is used by ``calguard login`` and ``calguard keys
rotate`` alone. Signing and checking cost tens of microseconds: nothing beside a command's
round trip.

Keys live outside the database, in ``<data dir>/keys/`` (0700, files 0600): whoever can
read the database (a backup, a report) must not be able to mint tokens. Other parts of
CalGuard keep their own keys there too, so these are ``token-<kid>.key`` (PKCS#8 PEM) and
``token-<kid>.pub``. A key id is its creation time and a random suffix, so ids sort by
age and the newest key is the current one. ``rotate`` makes a new current key; an older
key keeps verifying until every token it can have signed has expired (its successor's
creation plus the longest lifetime, 12 h), and is deleted at a rotation after that.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import secrets
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from calguard.alerts.log import default_data_dir
from calguard.alerts.private import private_dir
from calguard.monitor.errors import CalGuardError
from calguard.monitor.events import ROLES
from calguard.monitor.timeutil import format_ts

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "Claims",
    "KeyRing",
    "TokenError",
    "UnknownKeyError",
    "default_keys_dir",
    "default_token_file",
    "holder",
    "issue",
    "read_token",
    "remove_token",
    "verify",
    "write_token",
]

ALGORITHM = "EdDSA"
DEFAULT_TTL_S = 3600
MAX_TTL_S = 12 * 3600
_LEEWAY_S = 60  # a token may be dated this much ahead of the verifier's clock
_KID_TIME = "%Y%m%dT%H%M%S%fZ"  # to the microsecond: two rotations in a second still sort
_KID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")
_CLAIMS = ("sub", "role", "iat", "exp", "jti")


class TokenError(CalGuardError):
    """A token, a token file or a key could not be made or used; the message says why."""


class UnknownKeyError(TokenError):
    """A token names a key id the verifier does not hold (rotated out, or not yet read)."""

    def __init__(self, message: str, kid: object) -> None:
        super().__init__(message)
        self.kid = kid


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says."""

    sub: str  # the account
    role: str
    iat: int  # seconds since the epoch
    exp: int
    jti: str
    kid: str
    #: when it was issued, in microseconds (``iat_us``): an account changed in the same
    #: second as a login is told from one changed after it; None in a token without it
    iat_us: int | None = None


def default_keys_dir() -> Path:
    return default_data_dir() / "keys"


def default_token_file() -> Path:
    """``CALGUARD_TOKEN_FILE``, else ``calguard/token`` in the user's configuration folder."""
    env = os.environ.get("CALGUARD_TOKEN_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "calguard" / "token"


# -- keys ----------------------------------------------------------------------------------


def _created(kid: str) -> float:
    stamp = dt.datetime.strptime(kid.split("-", 1)[0], _KID_TIME)
    return stamp.replace(tzinfo=dt.UTC).timestamp()


class KeyRing:
    """The token keys in one directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_keys_dir()

    def kids(self) -> list[str]:
        """The key ids present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p.name[len("token-") : -len(".pub")] for p in self.directory.glob("token-*.pub")]
        return sorted(kid for kid in found if _valid_kid(kid))

    def has(self, kid: object) -> bool:
        """Whether a key of this id is in the directory (verifying or not)."""
        return isinstance(kid, str) and _valid_kid(kid) and self._path(kid, "pub").exists()

    def verifying_keys(self, now_s: float) -> dict[str, Ed25519PublicKey]:
        """The public keys a token may be signed with now: the current one, and older ones
        until the tokens they can have signed have expired."""
        keep = [kid for kid, ends in self._lifetimes().items() if ends is None or now_s < ends]
        keys: dict[str, Ed25519PublicKey] = {}
        for kid in keep:
            path = self._path(kid, "pub")
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise TokenError(f"cannot read the token key {path}: {exc}") from exc
            if isinstance(key, Ed25519PublicKey):
                keys[kid] = key
        return keys

    def signing_key(self, now_s: float) -> tuple[str, Ed25519PrivateKey]:
        """The current key, made at first use."""
        kids = self.kids()
        kid = kids[-1] if kids else self.rotate(now_s)
        path = self._path(kid, "key")
        self._private(self.directory)
        self._private(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read the token key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise TokenError(f"{path} is not an Ed25519 key")
        return kid, key

    def rotate(self, now_s: float) -> str:
        """Make a new current key; delete the keys no token can be valid for any more."""
        self._make_directory()
        stamp = dt.datetime.fromtimestamp(now_s, dt.UTC).strftime(_KID_TIME)
        kid = f"{stamp}-{secrets.token_hex(4)}"
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_private(self._path(kid, "key"), private)
        _write_private(self._path(kid, "pub"), public)  # the public key last: then it is whole
        self._prune(now_s)
        return kid

    def _prune(self, now_s: float) -> None:
        for kid, ends in self._lifetimes().items():
            if ends is not None and now_s >= ends:
                for kind in ("pub", "key"):
                    self._path(kid, kind).unlink(missing_ok=True)

    def _lifetimes(self) -> dict[str, float | None]:
        """Each key id, and when the last token it can have signed expires: its successor's
        creation plus the longest lifetime (None for the current key)."""
        kids = self.kids()
        ends: dict[str, float | None] = {
            kid: _created(successor) + MAX_TTL_S for kid, successor in itertools.pairwise(kids)
        }
        if kids:
            ends[kids[-1]] = None
        return ends

    def _path(self, kid: str, kind: str) -> Path:
        return self.directory / f"token-{kid}.{kind}"

    def _make_directory(self) -> None:
        private_dir(self.directory)
        self._private(self.directory)

    def _private(self, path: Path) -> None:
        """Refuse a key (or the key directory) that others may read: it may have leaked."""
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            raise TokenError(f"cannot read the token key {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise TokenError(
                f"{path} is open to other users (mode {mode:04o}); chmod go-rwx it, and rotate "
                "the keys (calguard keys rotate) if someone may have read it"
            )


def _valid_kid(kid: str) -> bool:
    """A key id as ``rotate`` makes them (never a path of someone's choosing)."""
    if not _KID.fullmatch(kid):
        return False
    try:
        _created(kid)
    except ValueError:
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, whole or not at all."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


# -- tokens ----------------------------------------------------------------------------------


def issue(keys: KeyRing, name: str, role: str, *, ttl_s: int, now_s: float) -> str:
    """A token for ``name`` in ``role``, valid ``ttl_s`` seconds from ``now_s``."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise TokenError(f"a token lives at most {MAX_TTL_S // 3600} h")
    kid, key = keys.signing_key(now_s)
    iat = int(now_s)
    claims = {
        "sub": name,
        "role": role,
        "iat": iat,
        "exp": iat + ttl_s,
        "jti": uuid.uuid4().hex,
        "iat_us": int(now_s * 1_000_000),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


#: far more than a token of ours (about 400 characters); a longer one is not parsed
MAX_TOKEN_CHARS = 4096


def verify(token: object, keys: Mapping[str, Ed25519PublicKey], now_s: float) -> Claims:
    """The token's claims if it is well signed by a key of ``keys`` and valid at ``now_s``;
    else ``TokenError`` naming the cause."""
    if not isinstance(token, str) or not token:
        raise TokenError("no token: log in first (calguard login), then send the command")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"not a signed token: {len(token)} characters, a token has far fewer")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:  # any header PyJWT refuses (a non-text kid, a crit it lacks ...)
        raise TokenError("not a signed token: log in again (calguard login)") from None
    kid, alg = header.get("kid"), header.get("alg")
    if alg != ALGORITHM:
        raise TokenError(f"signature invalid: signed with {alg!r}, not {ALGORITHM}")
    if not isinstance(kid, str) or kid not in keys:
        raise UnknownKeyError(
            f"signed by an unknown key ({kid!r}): rotated out, or not this site's; "
            "log in again (calguard login)",
            kid,
        )
    try:
        claims = jwt.decode(
            token,
            keys[kid],
            algorithms=[ALGORITHM],
            options={"require": list(_CLAIMS), "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise TokenError("signature invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"the token has no {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"not a valid token: {exc}") from None
    return _valid(claims, kid, now_s)


def holder(token: str) -> str:
    """Whose token this says it is (unverified: for messages to its holder only)."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        return "?"
    return sub if isinstance(sub, str) else "?"


def _valid(claims: dict[str, object], kid: str, now_s: float) -> Claims:
    sub, role, iat, exp, jti = (claims[k] for k in _CLAIMS)
    if not (isinstance(sub, str) and isinstance(role, str) and isinstance(jti, str)):
        raise TokenError("the token's sub, role and jti must be texts")
    if not (type(iat) is int and type(exp) is int):
        raise TokenError("the token's iat and exp must be whole seconds")
    if exp <= now_s:
        raise TokenError(f"token expired at {format_ts(exp * 1_000_000)}; log in again")
    if iat > now_s + _LEEWAY_S:
        raise TokenError(
            f"token issued in the future ({format_ts(iat * 1_000_000)}): a clock is wrong"
        )
    if exp - iat > MAX_TTL_S:
        raise TokenError(f"the token lives longer than {MAX_TTL_S // 3600} h")
    if role not in ROLES:
        raise TokenError(f"the token's role {role!r} is not one of {', '.join(ROLES)}")
    iat_us = claims.get("iat_us")
    if iat_us is not None and not (type(iat_us) is int and iat_us // 1_000_000 == iat):
        raise TokenError("the token's iat_us does not match its iat")
    return Claims(sub, role, iat, exp, jti, kid, iat_us)


# -- the token file --------------------------------------------------------------------------


def write_token(path: Path, token: str) -> None:
    private_dir(path.parent)
    _write_private(path, token.encode() + b"\n")


def read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"not logged in (no token at {path}): run calguard login") from None
    except OSError as exc:
        raise TokenError(f"cannot read the token {path}: {exc.strerror}") from exc


def remove_token(path: Path) -> bool:
    """Forget the token; False if there was none."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
