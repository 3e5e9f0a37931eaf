"""RFC 3339 timestamps <-> integer microseconds since the Unix epoch (UTC), and time
spans in words for people.

The engine counts time in whole microseconds so that timer arithmetic is exact: a site
check at 08:03:00 plus 60 min is 09:03:00 to the microsecond, with no float rounding.
Timestamps must carry an offset; a naive one is refused, never assumed to be UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import lru_cache

from calguard.monitor.errors import QuantityError

__all__ = [
    "HOUR_US",
    "MINUTE_US",
    "SECOND_US",
    "format_duration",
    "format_ts",
    "parse_ts",
    "to_datetime",
]

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
_DAY_US = 86_400 * SECOND_US
_EARLIEST_US = -2_208_988_800 * SECOND_US  # 1900-01-01T00:00:00Z
_LATEST_US = 32_503_680_000 * SECOND_US  # 3000-01-01T00:00:00Z

_RFC3339 = re.compile(  # ASCII digits only (re.ASCII): "٢٠٢٦-..." is not a time
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\Z", re.ASCII)


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
    if not _EARLIEST_US <= us < _LATEST_US:
        # checked here, at the boundary: 9999-12-31T23:59:59-23:59 is year 10000 in UTC,
        # which no date type can hold; nothing later may meet a time it cannot print
        raise QuantityError(text, "the time is outside the years 1900 to 2999")
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


# How a span is worded: below each bound, in (big unit, small unit) rounded to the small
# unit's resolution. Two units at most: "1 h 30 min" is read at a glance, "1 h 30 min 12 s"
# is not, and a nurse never needs the seconds of a span longer than a few minutes.
_SPANS = (
    (2 * MINUTE_US, None, "s", SECOND_US),  # "90 s"
    (HOUR_US, ("min", MINUTE_US), "s", SECOND_US),  # "2 min", "2 min 30 s"
    (72 * HOUR_US, ("h", HOUR_US), "min", MINUTE_US),  # "4 h", "1 h 30 min", "48 h"
)


def format_duration(us: float) -> str:
    """A time span for people: "0.6 s", "90 s", "2 min 30 s", "1 h 30 min", "4 h", "3 days 2 h".

    The one place a span of engine time (microseconds) becomes words; nothing shown to a
    person carries raw microseconds. Below 10 s to a tenth of a second, then whole seconds,
    minutes or hours (at most two units); a negative span gets a minus sign.
    """
    if us < 0:
        return "-" + format_duration(-us)
    if us < 10 * SECOND_US:
        tenths = round(us / (SECOND_US / 10))
        if tenths < 100:
            whole, frac = divmod(tenths, 10)
            return f"{whole}.{frac} s" if frac else f"{whole} s"
    for bound, big, small, resolution in _SPANS:
        n = round(us / resolution)  # whole small units; may round up into the next band
        if n * resolution >= bound:
            continue
        if big is None:
            return f"{n} {small}"
        name, size = big
        per = size // resolution
        return _two(n // per, name, n % per, small)
    hours = round(us / HOUR_US)
    days, rest = divmod(hours, 24)
    if days >= 730:  # a clock decades off: the years are what a person needs to read
        return f"about {round(days / 365.25)} years"
    return _two(days, "day" if days == 1 else "days", rest, "h")


def _two(big: int, big_name: str, small: int, small_name: str) -> str:
    return f"{big} {big_name} {small} {small_name}" if small else f"{big} {big_name}"
