"""Diagnostics on standard error: time, level and logger on every line, or JSON for IT.

    2026-11-29T08:45:35.123Z WARNING calguard.live: mqtt://…: reconnecting in 2 s
    {"t":"2026-11-29T08:45:35.123Z","level":"WARNING","logger":"calguard.live","message":…}

Times are UTC with milliseconds, so an operator can lay them beside the alert lines and
the broker's and database's own logs.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import orjson

__all__ = ["FORMATS", "setup_logging"]

FORMATS = ("text", "json")


def _utc(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "t": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: int, form: str = "text", stream: TextIO | None = None) -> None:
    """Route every logger to standard error in ``form`` ("text" or "json")."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
