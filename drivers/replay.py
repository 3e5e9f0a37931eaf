"""Replay driver: event-format v1 JSON Lines from a file or standard input.

Lines are read as bytes with a cap, so a single enormous line (a corrupted export, a
binary file by mistake) is refused without ever being held in memory whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from monitor.events import MAX_LINE_BYTES

__all__ = ["OversizeLine", "read_lines"]

_KEEP = 64 * 1024  # what the log keeps of an oversize line (plus its size and hash)


@dataclass(frozen=True, slots=True)
class OversizeLine:
    """A line longer than the cap: its first bytes, its full size and its SHA-256."""

    head: bytes
    size: int
    sha256: str


def read_lines(
    stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | OversizeLine]]:
    """Yield ``(line_number, line)`` for every non-blank line, without its line ending."""
    line_no = 0
    while True:
        chunk = stream.readline(max_bytes + 1)
        if not chunk:
            return
        line_no += 1
        if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
            yield line_no, _drain(stream, chunk, max_bytes)
            continue
        line = chunk.rstrip(b"\r\n")
        if line.strip():
            yield line_no, line


def _drain(stream: BinaryIO, first: bytes, max_bytes: int) -> OversizeLine:
    digest = hashlib.sha256(first)
    size = len(first)
    head = first[:_KEEP]
    while not first.endswith(b"\n"):
        first = stream.readline(max_bytes + 1)
        if not first:
            break
        digest.update(first)
        size += len(first)
    return OversizeLine(head, size, digest.hexdigest())
