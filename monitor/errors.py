"""CalGuard's one exception tree.

Every error CalGuard raises on purpose is a ``CalGuardError``. Children are split by the
phase in which the problem was found, and each carries the context a person needs to act
on it (the file and key of a library, the field of an event, the pump of a frame)::

    CalGuardError
    ├── ConfigError          a drug library or site config that cannot be used
    ├── QuantityError        a quantity string: bad number, unknown unit, wrong dimension
    ├── EventError           an input that is not a valid event-format v1 event
    ├── LogError             the durable log (database) failed
    └── DriverError          a wire could not be opened, read or written
        └── ProtocolError    bytes arrived that do not follow the wire protocol

Third-party exceptions (pint, SQLAlchemy, pyserial, aiomqtt) are translated into these at
the boundary where they occur; nothing above that boundary catches a library's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CalGuardError",
    "ConfigError",
    "ConfigProblem",
    "DriverError",
    "EventError",
    "LogError",
    "ProtocolError",
    "QuantityError",
]


class CalGuardError(Exception):
    """Root of every error CalGuard raises on purpose."""


class QuantityError(CalGuardError, ValueError):
    """A quantity string could not be turned into a number in a known unit.

    ``reason`` says what is wrong with what was found ("a bare number", "'mg' is a mass");
    ``expected`` what the field needs ('a volume per time (e.g. "30 ml/h")'), when known.
    """

    def __init__(self, text: object, reason: str, expected: str | None = None) -> None:
        self.text = text
        self.reason = reason
        self.expected = expected
        super().__init__(f"{text!r}: {self.explain()}")

    def explain(self) -> str:
        return f"{self.reason}; {self.expected} is expected" if self.expected else self.reason


class EventError(CalGuardError, ValueError):
    """An input is not a valid event: which field, what was found, what is expected."""

    def __init__(
        self,
        field: str | None,
        found: object,
        expected: str,
        *,
        line_no: int | None = None,
    ) -> None:
        self.field = field
        self.found = found
        self.expected = expected
        self.line_no = line_no
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"line {self.line_no}: " if self.line_no is not None else ""
        if self.field is None:
            return f"{where}{self.expected}"
        if self.found is None:
            return f"{where}field {self.field!r} is missing; {self.expected}"
        found = self.found if isinstance(self.found, str) else repr(self.found)
        if isinstance(self.found, str):
            found = '"' + _shorten(self.found) + '"'
        return f"{where}field {self.field!r}: {found} — {self.expected}"

    def at_line(self, line_no: int) -> EventError:
        return EventError(self.field, self.found, self.expected, line_no=line_no)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a config file, worded for the pharmacist who edits it."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.key}: {self.message}"
            if self.key
            else f"{self.file}: {self.message}"
        )


class ConfigError(CalGuardError):
    """A drug library or site config has problems; ``problems`` lists every one found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")


class LogError(CalGuardError):
    """The durable log could not be opened or written."""


class DriverError(CalGuardError):
    """A driver could not open, read or write its wire. ``source`` names the device URL."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ProtocolError(DriverError):
    """Bytes or messages arrived that do not follow the wire protocol."""


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
