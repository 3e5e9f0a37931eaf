"""The MQTT sink's retained state, signed: what a central station reads from the broker
when it connects must be the monitor's word, or be seen not to be.

Whoever may publish on ``<prefix>/alerts/active/B1`` (a broker without the ACL, a stolen
account) could otherwise blank a bed with a retained ``[]``. So the sink ``seal``s each
retained payload - the bed's state, its presence - with Ed25519: the signed body names the
topic it was signed for (a genuine state of B2 copied onto B1 fails) and the time, and a
station ``unseal``s it with the monitor's public key. The payload::

    {"body": "<the JSON text signed>", "key": "<key id>", "sig": "<base64 signature>"}
    body: {"topic": "<prefix>/alerts/active/B1", "t": "2026-...Z", "data": [...]}

The body is carried as the very text that was signed, so checking it never depends on
serialising JSON again (protocols.md section 3.3 shows it in a few lines of Python). The
private key is ``<data dir>/keys/state-ed25519.key`` (the directory 0700, the files 0600:
other parts keep their keys beside it), made at the first start; the stations need
``state-ed25519.pub``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path
from urllib.parse import quote, unquote

import orjson
from calguard.alerts.log import default_data_dir
from calguard.alerts.private import FILE_MODE, create_private_file, private_dir, tighten
from calguard.drivers.clock import SystemClock
from calguard.monitor.timeutil import format_ts
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "Untrusted",
    "bed_of_level",
    "bed_topic",
    "default_state_key",
    "key_id",
    "load_public_key",
    "load_state_key",
    "public_key_file",
    "seal",
    "unseal",
]


def bed_topic(prefix: str, bed: str) -> str:
    """A bed's retained-state topic: its name percent-encoded (RFC 3986) into one topic
    level, so that a name charted as ``B9/x`` or ``B#`` is neither two levels nor a
    wildcard (paho refuses to publish to one, and a station would never see it)."""
    return f"{prefix}/alerts/active/{quote(bed, safe='')}"


def bed_of_level(level: str) -> str:
    """The bed a state topic's last level names (``bed_topic`` reversed)."""
    return unquote(level)


class Untrusted(Exception):
    """A retained message the monitor did not sign for its topic; the message says how."""


def default_state_key() -> Path:
    """The signing key of the retained states (other parts keep their keys beside it)."""
    return default_data_dir() / "keys" / "state-ed25519.key"


def public_key_file(private: Path) -> Path:
    return private.with_suffix(".pub")


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key, in each signed payload: which key signed it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def seal(key: Ed25519PrivateKey, topic: str, data: object, t: str | None = None) -> bytes:
    """``data`` as the payload of ``topic``: signed, with the topic and the time (now, or
    ``t``)."""
    stamp = t if t is not None else format_ts(SystemClock().now_us())
    body = orjson.dumps({"topic": topic, "t": stamp, "data": data})
    signature = base64.b64encode(key.sign(body)).decode()
    return orjson.dumps({"body": body.decode(), "key": key_id(key.public_key()), "sig": signature})


def unseal(key: Ed25519PublicKey, topic: str, payload: bytes) -> tuple[str, object]:
    """The time and data of a payload that ``key`` signed for ``topic``; else ``Untrusted``."""
    try:
        outer = orjson.loads(payload)
        body = outer["body"].encode()
        signature = base64.b64decode(outer["sig"], validate=True)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, binascii.Error):
        raise Untrusted("it is not a signed state") from None
    try:
        key.verify(signature, body)
    except InvalidSignature:
        if outer.get("key") != key_id(key):
            raise Untrusted(
                f"it is signed with the key {outer.get('key')!r}, not the monitor's {key_id(key)}"
            ) from None
        raise Untrusted("its signature does not match it") from None
    inner = orjson.loads(body)
    if not isinstance(inner, dict) or inner.get("topic") != topic:
        signed_for = inner.get("topic") if isinstance(inner, dict) else None
        raise Untrusted(f"it was signed for another topic ({signed_for!r})")
    return str(inner.get("t")), inner.get("data")


def load_state_key(path: Path) -> Ed25519PrivateKey:
    """The signing key in ``path``; made there at first use, with its public half beside it.
    ``OSError`` or ``ValueError`` saying what is wrong."""
    if not path.exists():
        _make_state_key(path)
    tighten(path, FILE_MODE, "the state signing key")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    public, pem = public_key_file(path), _public_pem(key.public_key())
    if not public.exists() or public.read_bytes() != pem:  # lost, or another key's
        _write_private(public, pem)  # the stations' copy, made again from the key
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A monitor's public key (its ``state-ed25519.pub``); ``OSError`` or ``ValueError``."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def _make_state_key(path: Path) -> None:
    """A fresh key, linked into place: of two processes making it at once, one wins."""
    private_dir(path.parent)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    partial = _written_beside(path, pem)
    try:
        os.link(partial, path)
    except FileExistsError:
        return
    finally:
        partial.unlink(missing_ok=True)
    _write_private(public_key_file(path), _public_pem(key.public_key()))


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) whole or not at all."""
    os.replace(_written_beside(path, data), path)


def _written_beside(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path``, on disk."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    create_private_file(partial)
    with partial.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return partial
