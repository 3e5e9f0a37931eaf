"""Anchors: the audit chain's head, kept outside the database, so that entries cut from the
chain's end - or the whole chain deleted - are found.

An anchor is one JSON line::

    {"log": "<log identity>", "seq": 1044, "hash": "<the entry's MAC>",
     "t": "2026-11-29T08:45:35.123456Z", "t_us": 1795941935123456, "key": "<key id>",
     "mac": "<HMAC-SHA256 of log, seq, hash and t_us with the audit key>"}

The log writer appends one to ``<data dir>/audit/anchors`` (0600, opened ``O_APPEND``,
fsynced) after its first commit, then within ``interval`` seconds (10) of each move of the
head, and when the log closes; and hands it to ``publish`` (the monitor keeps the newest
one retained on its MQTT broker, ``calguard.alerts.anchor_mqtt``). One file serves every
log of the host: each line names its log's identity. ``calguard audit verify`` checks the
chain against the newest anchor of its log: a chain that ends before the anchored entry
was cut, and one whose entry differs from the anchored MAC was rewritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from calguard.alerts.chain import AuditKey, Head
from calguard.alerts.private import FILE_MODE, private_dir
from calguard.monitor.timeutil import format_ts

__all__ = [
    "DEFAULT_INTERVAL_S",
    "Anchor",
    "AnchorScan",
    "Anchorer",
    "append_anchor",
    "scan_anchors",
]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
_DOMAIN = b"calguard-anchor-v1\n"
_REPEAT_S = 60.0  # how often a lasting failure to anchor is said again


@dataclass(frozen=True)
class Anchor:
    log: str
    seq: int
    hash: str
    t_us: int
    key_id: str
    mac: str = ""

    @classmethod
    def make(cls, key: AuditKey, log_id: str, head: Head, t_us: int) -> Anchor:
        unsigned = cls(log_id, head.seq, head.hash, t_us, key.id)
        return dataclasses.replace(unsigned, mac=unsigned.expected_mac(key))

    def expected_mac(self, key: AuditKey) -> str:
        fields = orjson.dumps([self.log, self.seq, self.hash, self.t_us])
        return hmac.new(key.secret, _DOMAIN + fields, hashlib.sha256).hexdigest()

    def holds(self, key: AuditKey) -> bool:
        return hmac.compare_digest(self.mac, self.expected_mac(key))

    @property
    def time(self) -> str:
        return format_ts(self.t_us)

    def line(self) -> bytes:
        return orjson.dumps(
            {
                "log": self.log,
                "seq": self.seq,
                "hash": self.hash,
                "t": self.time,
                "t_us": self.t_us,
                "key": self.key_id,
                "mac": self.mac,
            }
        )

    @classmethod
    def parse(cls, line: bytes | str) -> Anchor:
        """``ValueError`` for anything but an anchor line."""
        try:
            d = orjson.loads(line)
            values = (d["log"], d["seq"], d["hash"], d["t_us"], d["key"], d["mac"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not an anchor: {exc}") from None
        if not all(isinstance(v, int if i in (1, 3) else str) for i, v in enumerate(values)):
            raise ValueError("not an anchor: a field has the wrong type")
        return cls(*values)


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append one line and make it durable (blocking)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, anchor.line() + b"\n")  # one write: lines of two processes never mix
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class AnchorScan:
    """What an anchor file says about one log."""

    newest: Anchor | None = None
    anchors: int = 0
    problems: list[str] = field(default_factory=list)


def scan_anchors(lines: Iterable[bytes], log_id: str, keys: Mapping[str, AuditKey]) -> AnchorScan:
    """The newest anchor (highest entry) of ``log_id`` whose MAC holds, and what is wrong
    with the others of that log (other logs' lines are not looked at)."""
    scan = AnchorScan()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            anchor = Anchor.parse(line)
        except ValueError:
            if log_id.encode() in line:
                scan.problems.append(f"line {number} is not an anchor (damaged or edited)")
            continue
        if anchor.log != log_id:
            continue
        scan.anchors += 1
        key = keys.get(anchor.key_id)
        if key is None:
            scan.problems.append(
                f"line {number} (entry {anchor.seq}, {anchor.time}) was made with key "
                f"{anchor.key_id}, which was not given"
            )
        elif not anchor.holds(key):
            scan.problems.append(
                f"line {number} (entry {anchor.seq}, {anchor.time}) does not match its HMAC "
                "(forged or edited)"
            )
        elif scan.newest is None or (anchor.seq, anchor.t_us) > (scan.newest.seq, scan.newest.t_us):
            scan.newest = anchor
    return scan


class Anchorer:
    """Anchors a log writer's chain head: after the first commit, then within ``interval``
    seconds of each move, and at close. Never raises: a failure is logged (the monitor's
    alarming comes first) and the anchor tried again at the next interval."""

    def __init__(
        self,
        key: AuditKey,
        log_id: str,
        path: Path,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        publish: Callable[[Anchor], None] | None = None,
    ) -> None:
        self.key, self.log_id, self.path = key, log_id, path
        self.interval, self.publish = interval, publish
        self.head: Head | None = None  # the newest head this writer made
        self.anchored: Head | None = None
        self._at = -1e9
        self._failed_said = -1e9

    async def moved(self, head: Head) -> None:
        self.head = head
        await self.tick()

    async def tick(self) -> None:
        """Anchor the head if it moved since the last anchor and the interval is over (the
        writer calls this on each of its rounds, commits or not)."""
        if self.head != self.anchored and time.monotonic() - self._at >= self.interval:
            await self.anchor()

    async def anchor(self) -> None:
        """Anchor the newest head now, unless it is anchored already."""
        head = self.head
        if head is None or head == self.anchored:
            return
        self._at = time.monotonic()
        anchor = Anchor.make(self.key, self.log_id, head, time.time_ns() // 1000)
        try:
            await asyncio.to_thread(append_anchor, self.path, anchor)
            self.anchored = head
        except OSError as exc:  # tried again at the next interval
            if self._at - self._failed_said >= _REPEAT_S:
                log.error("cannot write the audit anchor to %s: %s", self.path, exc)
                self._failed_said = self._at
        if self.publish is not None:
            try:
                self.publish(anchor)
            except Exception:  # an outside copy must never stop the log writer
                log.exception("publishing the audit anchor failed")
