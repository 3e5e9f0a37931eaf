"""Replay driver: event-format v1 JSON Lines from a file or standard input.

Lines are read as bytes with a cap, so a single enormous line (a corrupted export, a
binary file by mistake) is refused without ever being held in memory whole.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson
from calguard.config.options import OptionSpec
from calguard.drivers.base import Driver, Inbound
from calguard.monitor.errors import DriverError
from calguard.monitor.events import MAX_LINE_BYTES

__all__ = ["OversizeLine", "ReplayDriver", "read_lines"]

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


class ReplayDriver(Driver):
    """``replay:///path/file.jsonl``: a JSON Lines file as live input. With ``follow`` the
    file is read like ``tail -f`` (bedside documentation exported by another system);
    without it, the driver ends at the end of the file."""

    scheme = "replay"
    options: ClassVar[dict[str, OptionSpec]] = {
        "follow": OptionSpec(bool, True, "keep reading lines appended to the file"),
        "poll": OptionSpec(
            float,
            0.2,
            "seconds between looks for new lines when following",
            minimum=0.01,
            maximum=60.0,
        ),
    }

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = Path(self.parts.path)
        self._stream: BinaryIO | None = None
        self._offset = 0  # where to resume after a reconnect
        self._partial = b""
        self._line_no = 0

    async def _open(self) -> None:
        try:
            self._stream = self.path.open("rb")  # closed in _close
        except OSError as exc:
            raise DriverError(f"cannot open {self.path}: {exc.strerror}", source=self.url) from exc
        self._stream.seek(self._offset)

    async def _read(self) -> list[Inbound]:
        assert self._stream is not None
        while True:
            chunk = self._stream.readline(MAX_LINE_BYTES + 1)
            self._offset = self._stream.tell()
            if not chunk or not (chunk.endswith(b"\n") or len(chunk) > MAX_LINE_BYTES):
                self._partial += chunk  # a line still being written: wait for its end
                if not self.config["follow"]:
                    raise DriverError("end of the file", source=self.url)
                await asyncio.sleep(self.config["poll"])
                continue
            line = (self._partial + chunk).rstrip(b"\r\n")
            self._partial = b""
            self._line_no += 1
            if line.strip():
                return [self._inbound(line)]

    def _inbound(self, line: bytes) -> Inbound:
        source = f"{self.path}:{self._line_no}"
        if len(line) > MAX_LINE_BYTES:
            return Inbound(source, line[:1024], problem=f"the line is over {MAX_LINE_BYTES} bytes")
        try:
            return Inbound(source, line, orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            return Inbound(source, line, problem=f"not valid JSON ({exc})")

    async def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
