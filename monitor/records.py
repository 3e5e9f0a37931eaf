"""What the durable log keeps of one input: its text, its fate and its context."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["InputRecord"]


@dataclass(slots=True)
class InputRecord:
    """One input as the log keeps it."""

    source: str
    status: str
    raw: str
    raw_bytes: int
    raw_sha256: str | None = None
    t_us: int | None = None
    line_no: int | None = None
    reason: str | None = None
    event_type: str | None = None
    pump: str | None = None
    channel: str | None = None
    bed: str | None = None
    line: str | None = None

    @classmethod
    def from_raw(cls, raw: bytes | str, source: str, status: str, **fields: Any) -> InputRecord:
        """Keep the input as text; when that is not its exact bytes, keep their hash too."""
        if isinstance(raw, str):
            return cls(source, status, raw, len(raw.encode("utf-8")), **fields)
        try:
            return cls(source, status, raw.decode("utf-8"), len(raw), **fields)
        except UnicodeDecodeError:
            digest = hashlib.sha256(raw).hexdigest()
            shown = raw.decode("utf-8", errors="backslashreplace")
            return cls(source, status, shown, len(raw), digest, **fields)
