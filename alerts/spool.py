"""The local spool: where the log writer keeps batches while the database cannot take them.

A directory of append-only segment files, one directory per log database (named by the
database's identity, so that spooled rows can only ever be drained into the database
they were written for). A segment starts with an 8-byte magic and holds records::

    4 bytes   length of the payload, big-endian
    4 bytes   CRC-32 of the payload
    payload   one batch of log rows (JSON, written by ``calguard.alerts.log``)

``append`` returns only once the record is on disk (``fsync`` of the file, and of the
directory when it created a segment): that is what lets the monitor acknowledge the
inputs of the batch upstream. A record torn by a crash or a power cut fails its length or
its CRC; it was never reported durable, and opening the spool cuts it off. ``next`` and
``consumed`` drain records in order; a segment is deleted once all of it is drained (a
deletion lost in a power cut only means records drained twice, which the log's batch
numbers make harmless).

Everything here blocks (file I/O and fsync): the log writer calls it in a worker thread,
one call at a time.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from calguard.alerts.private import FILE_MODE, private_dir

__all__ = ["SPOOL_MAGIC", "Spool", "SpoolError", "SpoolRecord"]

log = logging.getLogger(__name__)

SPOOL_MAGIC = b"CGSPOOL1"
_HEADER = struct.Struct(">II")
_MAX_RECORD = 1 << 30  # a length beyond this is damage, not a batch
_SUFFIX = ".spool"


class SpoolError(Exception):
    """The spool cannot take a record (disk full, read-only, I/O error, or at its cap)."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One record read back, and where the next one starts."""

    segment: Path
    start: int
    end: int
    payload: bytes


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int  # bytes of whole records (a torn write may have left more on disk)
    records: int
    consumed: int = 0
    sealed: bool = False  # no more appends: left by an earlier run, full, or damaged
    damaged: bool = False  # bytes after ``size`` that are no record: kept, never deleted


class Spool:
    """Bounded, durable, ordered: records appended with fsync and drained in order."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = 64 << 20) -> None:
        if max_bytes < 1024:
            raise ValueError("a spool needs at least 1 KiB")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1024, min(segment_bytes, max_bytes // 4))
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # open on the last segment while it takes appends
        self._cursor = (0, len(SPOOL_MAGIC))  # (segment index, offset) of the next record
        self.pending = 0  # records appended and not yet consumed

    # -- opening --------------------------------------------------------------------------

    def open(self) -> None:
        """Find the records a previous run left (cutting off a torn last record)."""
        self.close()
        self._segments, self.pending, self._cursor = [], 0, (0, len(SPOOL_MAGIC))
        if not self.directory.is_dir():
            return
        paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        for path in paths:
            segment = self._scan(path, last=path == paths[-1])
            if segment is not None:
                self._segments.append(segment)
                self.pending += segment.records
        for segment in self._segments:  # a damaged one with no whole record goes at once
            if segment.records == 0:
                segment.path.rename(segment.path.with_suffix(".damaged"))
        self._segments = [s for s in self._segments if s.records]
        if self.pending:
            log.warning(
                "spool %s: %d batch(es) left by an earlier run wait to be written",
                self.directory,
                self.pending,
            )

    def _scan(self, path: Path, *, last: bool) -> _Segment | None:
        data = path.read_bytes()
        if not data.startswith(SPOOL_MAGIC):
            if len(data) < len(SPOOL_MAGIC) and SPOOL_MAGIC.startswith(data):
                path.unlink()  # created, then the process died before its magic was synced
                return None
            raise SpoolError(f"{path} is not a CalGuard spool segment; move it away")
        offset, records = len(SPOOL_MAGIC), 0
        while (end := _record_end(data, offset)) is not None:
            offset, records = end, records + 1
        damaged = False
        if offset < len(data) and last:  # the end of the last segment: a torn write
            log.warning(
                "spool %s: %d byte(s) of a record torn by a crash cut off (never acknowledged)",
                path,
                len(data) - offset,
            )
            with path.open("r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
        elif offset < len(data):  # inside the spool: damage, not a torn write
            log.critical(
                "spool %s: damaged at byte %d; the %d byte(s) after it are NOT drained (the "
                "file is kept as *.damaged once the records before it are in the log)",
                path,
                offset,
                len(data) - offset,
            )
            damaged = True
        if records == 0 and not damaged:
            path.unlink()
            return None
        return _Segment(path, offset, records, sealed=True, damaged=damaged)

    # -- appending ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    def append(self, payload: bytes) -> None:
        """Write one record and make it durable; ``SpoolError`` if it cannot be."""
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self.size + len(record) > self.max_bytes:
            raise SpoolError(
                f"the spool {self.directory} is full ({_mib(self.size)} of {_mib(self.max_bytes)})"
            )
        try:
            segment = self._writable(len(record))
            assert self._fd is not None
            try:
                _write_all(self._fd, record)
                os.fsync(self._fd)
            except OSError:
                self._undo(segment)
                raise
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise SpoolError(f"cannot write the spool {self.directory}: {why}") from exc
        segment.size += len(record)
        segment.records += 1
        self.pending += 1

    def _writable(self, size: int) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if last is not None and not last.sealed and last.size + size <= self.segment_bytes:
            return last
        if last is not None:
            last.sealed = True
        self._close_fd()
        fresh = not self.directory.is_dir()
        private_dir(self.directory)  # 0700, as the segments are 0600: the log's rows
        number = int(last.path.stem) + 1 if last is not None else 1
        path = self.directory / f"{number:012d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        try:
            _write_all(fd, SPOOL_MAGIC)
            os.fsync(fd)
            _fsync_dir(self.directory)  # the new name must survive a power cut too
            if fresh:
                _fsync_dir(self.directory.parent)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd = fd
        segment = _Segment(path, len(SPOOL_MAGIC), 0)
        self._segments.append(segment)
        return segment

    def _undo(self, segment: _Segment) -> None:
        """Cut off a partly written record; if even that fails, append elsewhere next time
        (the torn bytes then lie after ``size``, where readers stop)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError:
            segment.sealed = True
            self._close_fd()

    # -- draining -------------------------------------------------------------------------

    def next(self) -> SpoolRecord | None:
        """The oldest record not yet consumed, or None."""
        index, offset = self._cursor
        while index < len(self._segments):
            segment = self._segments[index]
            if offset < segment.size:
                with segment.path.open("rb") as f:
                    f.seek(offset)
                    length, crc = _HEADER.unpack(f.read(_HEADER.size))
                    payload = f.read(length)
                if len(payload) != length or zlib.crc32(payload) != crc:
                    raise SpoolError(f"{segment.path}: the record at byte {offset} is damaged")
                return SpoolRecord(segment.path, offset, offset + _HEADER.size + length, payload)
            index, offset = index + 1, len(SPOOL_MAGIC)
        self.pending = 0  # nothing left to read, whatever the count said
        return None

    def set_aside(self) -> None:
        """The segment at the read cursor is damaged: rename it ``*.damaged`` (kept for
        forensics, never drained) and go on with the next one."""
        index, _ = self._cursor
        if index >= len(self._segments):
            return
        segment = self._segments.pop(index)
        if index == len(self._segments):
            self._close_fd()
        segment.path.rename(segment.path.with_suffix(".damaged"))
        self.pending -= segment.records - segment.consumed
        self._cursor = (index, len(SPOOL_MAGIC))

    def consumed(self, record: SpoolRecord) -> None:
        """The record is in the database: move on, and delete the segments drained."""
        index = next(i for i, s in enumerate(self._segments) if s.path == record.segment)
        self._cursor = (index, record.end)
        self._segments[index].consumed += 1
        self.pending -= 1
        while self._segments:
            first = self._segments[0]
            index, offset = self._cursor
            if index == 0 and offset < first.size:
                break  # records of it still to drain
            if len(self._segments) == 1:
                self._close_fd()  # all drained: the next append starts a fresh segment
            if first.damaged:
                first.path.rename(first.path.with_suffix(".damaged"))
            else:
                first.path.unlink(missing_ok=True)
            self._segments.pop(0)
            self._cursor = (index - 1, offset) if index > 0 else (0, len(SPOOL_MAGIC))

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _record_end(data: bytes, offset: int) -> int | None:
    """Where the record at ``offset`` ends, if it is whole and intact."""
    if offset + _HEADER.size > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    end: int = offset + _HEADER.size + length
    if length > _MAX_RECORD or end > len(data):
        return None
    if zlib.crc32(data[offset + _HEADER.size : end]) != crc:
        return None
    return end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
