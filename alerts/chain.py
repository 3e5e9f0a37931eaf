"""The audit chain's entries: every alert transition, every person's action (refused ones
too), every alarm line a sink gave up, and a digest of every batch of inputs - each entry
keyed with an HMAC that links it to the one before.

    mac(n) = HMAC-SHA256(key, "calguard-audit-v1" + JSON[n, session, t_us, kind, actor,
                                                     payload, subject, digest, mac(n-1)])

A plain hash chain proves nothing against someone who can write the database: they edit a
row and hash every later row again. The key lives outside the database
(``<data dir>/keys/audit.key``, 0600, made on first use), so that rewriting the chain
needs the key too. Entries are numbered without gaps; the log writer appends them
(``link``) in the transaction that commits the rows they cover: a transition entry names
its ``alert_transitions`` row (session and seq) and holds the SHA-256 of that row as
stored; an ``inputs`` entry names a batch's ``inputs`` rows (session, first and last seq)
and holds the SHA-256 of them all (a reading kept in a block, ``calguard.alerts.blocks``,
counts as the row it decodes to). Verifying (``calguard.alerts.audit``) recomputes both
from the tables, so that editing a table the chain does not hold is found as well.

Entries written before the chain was keyed (schema versions 2 to 5) stay verifiable as
"legacy, unkeyed": plain SHA-256 links (``legacy_hash``). The first keyed entry
(``keyed-start``) records where they end and which table rows predate it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import operator
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from calguard.alerts.private import FILE_MODE, create_private_file, private_dir, tighten

__all__ = [
    "GENESIS",
    "INPUTS",
    "KEYED_START",
    "TRANSITION",
    "AuditKey",
    "AuditKeyError",
    "Entry",
    "Head",
    "RowsDigest",
    "Subject",
    "entry_mac",
    "inputs_entries",
    "inputs_rows",
    "legacy_hash",
    "link",
    "load_key",
    "row_digest",
    "rows_digest",
    "transition_subject",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
TRANSITION, INPUTS, KEYED_START = "transition", "inputs", "keyed-start"
_DOMAIN = b"calguard-audit-v1\n"
_KEY_BYTES = 32
_ROWS_OF_INPUTS = "input row(s),"


class AuditKeyError(Exception):
    """The audit key cannot be read or made (the log translates it into ``LogError``)."""


@dataclass(frozen=True)
class AuditKey:
    secret: bytes
    path: Path | None = None

    @property
    def id(self) -> str:
        """A short name of the key, stored with each entry: which key to verify it with."""
        return hashlib.sha256(b"calguard audit key id\n" + self.secret).hexdigest()[:16]


def load_key(path: Path, *, create: bool) -> AuditKey:
    """The key in ``path`` (64 hex digits); with ``create``, made there if it is missing."""
    try:
        if create and not path.exists():
            _make_key(path)
        text = path.read_text("ascii").strip()
        tighten(path, FILE_MODE, "the audit key")
    except FileNotFoundError:
        raise AuditKeyError(f"no audit key at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(f"cannot read the audit key {path}: {exc}") from exc
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < _KEY_BYTES:
        raise AuditKeyError(f"{path} is not an audit key ({_KEY_BYTES * 2} hex digits expected)")
    return AuditKey(secret, path)


def _make_key(path: Path) -> None:
    """Write a fresh key beside ``path`` and link it into place: of two processes making
    the key at once, one wins and both use its key."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    create_private_file(tmp)
    try:
        with tmp.open("w", encoding="ascii") as f:
            f.write(secrets.token_hex(_KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        log.warning("a new audit key was made: %s (keep a copy in a safe place)", path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Entry(NamedTuple):
    """An entry to append: what it says, before it has a number and a MAC."""

    session_id: int | None
    t_us: int
    kind: str
    actor: str | None
    payload: str
    subject: str | None = None  # the table rows it covers (transitions, inputs)
    digest: str | None = None  # SHA-256 of those rows as stored


@dataclass(frozen=True)
class Head:
    """The newest entry of a chain (seq 0 and ``GENESIS``: an empty chain); ``key_id``
    None: unkeyed (empty, or a legacy entry)."""

    seq: int = 0
    hash: str = GENESIS
    key_id: str | None = None


def entry_mac(key: AuditKey, seq: int, entry: Entry, prev: str) -> str:
    e = entry
    fields = [seq, e.session_id, e.t_us, e.kind, e.actor, e.payload, e.subject, e.digest, prev]
    return hmac.new(key.secret, _DOMAIN + orjson.dumps(fields), hashlib.sha256).hexdigest()


def legacy_hash(seq: int, t_us: int, kind: str, actor: str | None, payload: str, prev: str) -> str:
    """The unkeyed SHA-256 link of entries written before the chain was keyed."""
    text = f"{seq}\n{t_us}\n{kind}\n{actor or ''}\n{payload}\n{prev}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link(head: Head, entries: Iterable[Entry], key: AuditKey) -> tuple[list[tuple[Any, ...]], Head]:
    """The rows (``AUDIT_COLUMNS`` order) that append ``entries`` after ``head``."""
    rows: list[tuple[Any, ...]] = []
    seq, prev = head.seq, head.hash
    for e in entries:
        seq += 1
        mac = entry_mac(key, seq, e, prev)
        chained = (seq, e.session_id, e.t_us, e.kind, e.actor, e.payload, prev, mac, key.id)
        rows.append((*chained, e.subject, e.digest))
        prev = mac
    return rows, (Head(seq, prev, key.id) if rows else head)


# -- what an entry covers ----------------------------------------------------------------------


def rows_digest(rows: list[tuple[Any, ...]]) -> str:
    """SHA-256 of table rows as one compact JSON array of arrays, column values in the
    log's insert order (one orjson call: the digest costs the writer ~0.5 µs a row)."""
    return hashlib.sha256(orjson.dumps(rows)).hexdigest()


def row_digest(row: tuple[Any, ...]) -> str:
    return rows_digest([row])


class RowsDigest:
    """``rows_digest`` fed one row at a time (the verifier reads rows as they come)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(b"[")
        self._rows = 0

    def add(self, row: Sequence[Any]) -> None:
        if self._rows:
            self._hash.update(b",")
        self._hash.update(orjson.dumps(tuple(row)))
        self._rows += 1

    def hexdigest(self) -> str:
        whole = self._hash.copy()
        whole.update(b"]")
        return whole.hexdigest()


class Subject(NamedTuple):
    """The rows an entry covers: ``table`` rows of ``session`` with seq first..last."""

    table: str
    session: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.table}:{self.session}:{self.first}-{self.last}"

    @classmethod
    def parse(cls, text: str | None) -> Subject | None:
        try:
            table, session, span = (text or "").split(":")
            first, last = span.split("-")
            return cls(table, int(session), int(first), int(last))
        except ValueError:
            return None


def inputs_rows(payload: str) -> int | None:
    """How many rows an ``inputs`` entry covers (its payload says so first)."""
    count, _, rest = payload.partition(" ")
    return int(count) if count.isdigit() and rest.startswith(_ROWS_OF_INPUTS) else None


def transition_subject(session: int | None, seq: int) -> str:
    return str(Subject("alert_transitions", session or 0, seq, seq))


def inputs_entries(rows: list[tuple[Any, ...]], t_us: int) -> list[Entry]:
    """One ``inputs`` entry per session of a batch's input rows (``INPUT_COLUMNS`` order:
    session first, seq second), covering them all, in order."""
    entries: list[Entry] = []
    for session, group in itertools.groupby(rows, key=operator.itemgetter(0)):
        run = list(group)
        first, last = run[0][1], run[-1][1]
        subject = Subject("inputs", session, first, last)
        payload = f"{len(run)} {_ROWS_OF_INPUTS} seq {first}-{last} of session {session}"
        entries.append(Entry(session, t_us, INPUTS, None, payload, str(subject), rows_digest(run)))
    return entries
