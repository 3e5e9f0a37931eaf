"""RFC 3339 timestamps <-> integer microseconds since the Unix epoch (UTC).

The engine counts time in whole microseconds so that timer arithmetic is exact: a site
check at 08:03:00 plus 60 min is 09:03:00 to the microsecond, with no float rounding.
Timestamps must carry an offset; a naive one is refused, never assumed to be UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import lru_cache

from calguard.monitor.errors import QuantityError

__all__ = ["MINUTE_US", "SECOND_US", "format_ts", "parse_ts", "to_datetime"]

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
_DAY_US = 86_400 * SECOND_US

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\Z")


@lru_cache(maxsize=4096)
def _epoch_day(day: str) -> int:
    try:
        return (date.fromisoformat(day) - date(1970, 1, 1)).days
    except ValueError:
        raise QuantityError(day, "not a calendar date") from None


_recent: dict[str, int] = {}  # pumps reporting at 1 Hz share their timestamps


def parse_ts(text: object) -> int:
    """Parse an RFC 3339 timestamp with an offset into microseconds since the epoch."""
    if type(text) is str:
        hit = _recent.get(text)
        if hit is not None:
            return hit
    us = _parse_ts(text)
    if len(_recent) >= 4096:
        _recent.clear()
    _recent[text] = us  # type: ignore[index]  # _parse_ts accepted it, so it is a str
    return us


def _parse_ts(text: object) -> int:
    if not isinstance(text, str):
        raise QuantityError(text, "an RFC 3339 timestamp string is expected")
    m = _RFC3339.match(text)
    if m is None:
        if _NAIVE.match(text.strip()):
            raise QuantityError(text, 'the timestamp has no offset; add one, e.g. "Z" or "+01:00"')
        raise QuantityError(text, 'not an RFC 3339 timestamp such as "2026-11-21T08:00:00Z"')
    day, hh, mm, ss, frac, _z, sign, oh, om = m.groups()
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 59:
        raise QuantityError(text, "the time of day is out of range")
    us = _epoch_day(day) * _DAY_US + ((hour * 60 + minute) * 60 + second) * SECOND_US
    if frac:
        us += int((frac + "00000")[:6])
    if sign:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            raise QuantityError(text, "the offset is out of range")
        offset = (off_h * 60 + off_m) * MINUTE_US
        us -= offset if sign == "+" else -offset
    return us


def to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // SECOND_US, UTC).replace(microsecond=us % SECOND_US)


def format_ts(us: int) -> str:
    """``2026-11-21T08:03:10Z``; fractions only when present (milli- or microseconds)."""
    dt = to_datetime(us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    micro = us % SECOND_US
    if micro:
        text += f".{micro // 1000:03d}" if micro % 1000 == 0 else f".{micro:06d}"
    return text + "Z"
