"""Charts drawn on the server as SVG: the bed's 24 h, and the alarm burden per day and bed.

SVG text, no charting library and no script: a chart is part of the page the moment it
arrives, prints as it shows, and reads the same to the tests as to people. Priorities are
told by colour, by hatching and by a letter (H, M, L), never by colour alone; every mark
has a title that a pointer shows (the time in the site's zone, and what happened).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from html import escape
from zoneinfo import ZoneInfo

from calguard.monitor.timeutil import to_datetime
from calguard.monitor.units import format_number
from calguard.web.history import BedHistory, Mark

__all__ = ["PRIORITIES", "bar_chart", "bed_chart"]

PRIORITIES = ("high", "medium", "low")
_COLOUR = {"high": "#c62828", "medium": "#f9a825", "low": "#1e88e5"}
_LETTER = {"high": "H", "medium": "M", "low": "L"}
_SERIES = ("#1b5e20", "#4a148c", "#006064", "#bf360c", "#263238", "#880e4f")
_DASHES = ("", "6 3", "2 2", "8 3 2 3", "1 3", "10 4")
_W, _LEFT, _RIGHT = 1000, 78, 12
_HOUR_US = 3_600_000_000
_CHAR_W = 6.6  # about how wide a character of the charts' 12 px text is
_DEFS = (
    "<defs>"
    '<pattern id="hatch-high" width="6" height="6" patternUnits="userSpaceOnUse">'
    '<path d="M0 0L6 6M6 0L0 6" stroke="#fff" stroke-width="1"/></pattern>'
    '<pattern id="hatch-medium" width="6" height="6" patternUnits="userSpaceOnUse">'
    '<path d="M0 6L6 0" stroke="#fff" stroke-width="1"/></pattern>'
    '<pattern id="hatch-low" width="6" height="6" patternUnits="userSpaceOnUse">'
    '<circle cx="3" cy="3" r="1" fill="#fff"/></pattern>'
    "</defs>"
)


def _local(us: int, tz: ZoneInfo, fmt: str = "%d %b %H:%M") -> str:
    return to_datetime(us).astimezone(tz).strftime(fmt)


def _title(us: int, tz: ZoneInfo, text: str) -> str:
    utc = to_datetime(us).strftime("%H:%M:%S UTC")
    return f"<title>{escape(_local(us, tz, '%d %b %H:%M:%S'))} ({utc}): {escape(text)}</title>"


class _Axis:
    """Time to x over the chart's width."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, max(end, start + 1)

    def x(self, t: int) -> float:
        span = _W - _LEFT - _RIGHT
        return _LEFT + span * (min(max(t, self.start), self.end) - self.start) / (
            self.end - self.start
        )


def _hour_ticks(axis: _Axis, tz: ZoneInfo) -> list[int]:
    """Whole local hours within the axis (every third over a day), as times."""
    every = max(1, (axis.end - axis.start) // (8 * _HOUR_US))
    first = to_datetime(axis.start).astimezone(tz).replace(minute=0, second=0, microsecond=0)
    ticks, t = [], first + timedelta(hours=1)
    while (us := int(t.timestamp() * 1_000_000)) <= axis.end:
        if t.astimezone(tz).hour % every == 0:
            ticks.append(us)
        t += timedelta(hours=1)
    return ticks


def _time_grid(axis: _Axis, tz: ZoneInfo, top: float, bottom: float, labels: bool) -> list[str]:
    out = []
    for t in _hour_ticks(axis, tz):
        x = axis.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        if labels:
            text = escape(_local(t, tz, "%H:%M"))
            out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{text}</text>')
    return out


def _panel(top: float, height: float, title: str) -> list[str]:
    return [
        f'<rect x="{_LEFT}" y="{top}" width="{_W - _LEFT - _RIGHT}" height="{height}" '
        'fill="#fff" stroke="#999"/>',
        f'<text x="{_LEFT}" y="{top - 6}" font-weight="bold">{escape(title)}</text>',
    ]


def _limit_line(y: float, text: str) -> list[str]:
    return [
        f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" stroke="#c62828" '
        'stroke-width="2" stroke-dasharray="8 4" class="limit"/>',
        f'<text x="{_W - _RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#c62828">'
        f"{escape(text)}</text>",
    ]


def _legend(top: float, items: list[tuple[str, str, str]]) -> list[str]:
    """(text, colour, dashes) from the right end of the panel's title row leftwards."""
    out, x = [], float(_W - _RIGHT)
    for text, colour, dash in reversed(items):
        x -= len(text) * _CHAR_W
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{x - 26:.1f}" y1="{top - 10}" x2="{x - 4:.1f}" y2="{top - 10}" '
            f'stroke="{colour}" stroke-width="2"{dashes}/>'
            f'<text x="{x:.1f}" y="{top - 6}" fill="{colour}">{escape(text)}</text>'
        )
        x -= 40
    return out


def _y_labels(top: float, height: float, high: float, unit: str) -> list[str]:
    out = []
    for share in (0.0, 0.5, 1.0):
        y = top + height - share * height
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(format_number(high * share))} {escape(unit)}</text>"
        )
    return out


def _steps(
    points: Sequence[tuple[int, float]], axis: _Axis, y: Callable[[float], float], end: int
) -> str:
    """A rate holds until the next reading: a step line, drawn to the end of the window."""
    coords: list[str] = []
    for i, (t, v) in enumerate(points):
        nxt = points[i + 1][0] if i + 1 < len(points) else end
        coords += [f"{axis.x(t):.1f},{y(v):.1f}", f"{axis.x(nxt):.1f},{y(v):.1f}"]
    return " ".join(coords)


def bed_chart(h: BedHistory, tz: ZoneInfo) -> str:
    """The bed's last 24 h: rates against the limit, calcium against the daily limit, and
    alarms and bedside checks as marks, on one time axis (the site's local time)."""
    axis = _Axis(h.start, h.end)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} 600" class="chart" '
        f'role="img" aria-label="bed {escape(h.bed)}, last 24 h" font-size="12" '
        'font-family="sans-serif">',
        _DEFS,
        f"<title>Bed {escape(h.bed)}: the last 24 h to {escape(_local(h.end, tz))} "
        f"({escape(tz.key)})</title>",
    ]
    out += _rate_panel(h, axis, tz, 40, 200)
    out += _dose_panel(h, axis, tz, 290, 140)
    out += _marks_panel(h, axis, tz, 470, 90)
    out.append("</svg>")
    return "".join(out)


def _rate_panel(h: BedHistory, axis: _Axis, tz: ZoneInfo, top: float, height: float) -> list[str]:
    limit_h = h.rate_limit_ml_min * 60
    peak = max((v * 60 for pts in h.rates.values() for _, v in pts), default=0.0)
    high = max(limit_h * 1.25, peak * 1.1, 1.0)

    def y(ml_min: float) -> float:
        return top + height - min(ml_min * 60 / high, 1.0) * height

    out = _panel(top, height, "rate of each channel (ml/h) against the limit")
    out += _time_grid(axis, tz, top, top + height, labels=False)
    out += _y_labels(top, height, high, "ml/h")
    limit_text = (
        f"limit {format_number(limit_h)} ml/h ({format_number(h.rate_limit_ml_min)} ml/min)"
    )
    out += _limit_line(y(h.rate_limit_ml_min), limit_text)
    legend = []
    for i, (name, points) in enumerate(sorted(h.rates.items())):
        colour, dash = _SERIES[i % len(_SERIES)], _DASHES[i % len(_DASHES)]
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<polyline class="rate" data-channel="{escape(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="2"{dashes} points="{_steps(points, axis, y, h.end)}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        legend.append((f"{name} now {format_number(points[-1][1] * 60)} ml/h", colour, dash))
    out += _legend(top, legend)
    if not h.rates:
        why = "no readings in the log" if h.logged else "no log: rates are not kept"
        out.append(f'<text x="{_LEFT + 10}" y="{top + height / 2}">{escape(why)}</text>')
    return out


def _dose_panel(h: BedHistory, axis: _Axis, tz: ZoneInfo, top: float, height: float) -> list[str]:
    peak = max((v for _, v in h.dose), default=0.0)
    high = max(h.dose_limit * 1.1, peak * 1.1)

    def y(value: float) -> float:
        return top + height - min(value / high, 1.0) * height if high else top + height

    out = _panel(
        top, height, "calcium given from the chart's start (mmol/kg), against the daily limit"
    )
    out += _time_grid(axis, tz, top, top + height, labels=False)
    out += _y_labels(top, height, high, "mmol/kg")
    out += _limit_line(y(h.dose_limit), f"limit {h.dose_limit_text}")
    if h.dose:
        coords = " ".join(f"{axis.x(t):.1f},{y(v):.1f}" for t, v in h.dose)
        out.append(
            f'<polyline class="dose" fill="none" stroke="#1b5e20" stroke-width="2" '
            f'points="{coords}"><title>calcium given</title></polyline>'
        )
    else:
        why = "no weight: the dose cannot be counted per kg" if h.weight_kg is None else "none"
        out.append(f'<text x="{_LEFT + 10}" y="{top + height / 2}">{escape(why)}</text>')
    return out


def _marks_panel(h: BedHistory, axis: _Axis, tz: ZoneInfo, top: float, height: float) -> list[str]:
    out = _panel(top, height, "alarms (H, M, L) and bedside checks (S site, P patency)")
    out += _time_grid(axis, tz, top, top + height, labels=True)
    for mark in h.alarms:
        out.append(_alarm_mark(mark, axis.x(mark.t), top + 8, tz))
    for mark in h.checks:
        x = axis.x(mark.t)
        site = mark.kind == "site_check"
        letter = "S" if site else "P"
        y = top + height - (28 if site else 56)  # a row each: checks at one time both show
        out.append(
            f'<g class="check" data-kind="{mark.kind}">{_title(mark.t, tz, mark.text)}'
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 18}" stroke="#333" '
            f'stroke-width="2"/><text x="{x:.1f}" y="{y + 28}" text-anchor="middle">{letter}'
            "</text></g>"
        )
    return out


def _alarm_mark(mark: Mark, x: float, y: float, tz: ZoneInfo) -> str:
    priority = mark.priority if mark.priority in _COLOUR else "medium"
    filled = mark.kind in ("raised", "escalated")
    fill = _COLOUR[priority] if filled else "#fff"
    return (
        f'<g class="alarm" data-state="{escape(mark.kind)}" data-priority="{priority}">'
        f"{_title(mark.t, tz, mark.text)}"
        f'<path d="M{x:.1f} {y}l7 14h-14z" fill="{fill}" stroke="{_COLOUR[priority]}" '
        f'stroke-width="2"/><text x="{x:.1f}" y="{y + 28}" text-anchor="middle">'
        f"{_LETTER[priority]}</text></g>"
    )


def bar_chart(
    title: str, groups: Iterable[tuple[str, dict[str, int]]], *, label_width: int = 110
) -> str:
    """Horizontal bars, one per group, stacked by priority (colour, hatching and the
    numbers written out): the report's alarms per day and per bed."""
    rows = list(groups)
    row_h, top = 22, 30
    height = top + row_h * max(len(rows), 1) + 30
    widest = max((sum(c.values()) for _, c in rows), default=0) or 1
    span = _W - label_width - 160
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" class="chart" '
        f'role="img" aria-label="{escape(title)}" font-size="12" font-family="sans-serif">',
        _DEFS,
        f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (name, counts) in enumerate(rows):
        y = top + i * row_h
        out.append(
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
        )
        x = float(label_width)
        for priority in PRIORITIES:
            n = counts.get(priority, 0)
            if not n:
                continue
            w = span * n / widest
            out.append(
                f'<g class="bar" data-priority="{priority}"><title>{escape(name)}: {n} '
                f"{priority}</title>"
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                f'fill="{_COLOUR[priority]}"/><rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" '
                f'height="{row_h - 6}" fill="url(#hatch-{priority})"/></g>'
            )
            x += w
        words = ", ".join(f"{counts.get(p, 0)} {_LETTER[p]}" for p in PRIORITIES if counts.get(p))
        out.append(
            f'<text x="{x + 6:.1f}" y="{y + 15}">{sum(counts.values())} ({escape(words)})</text>'
        )
    if not rows:
        out.append(f'<text x="{label_width}" y="{top + 15}">no alarms in this period</text>')
    legend_y = height - 10
    for i, priority in enumerate(PRIORITIES):
        x = label_width + i * 130
        box = f'x="{x}" y="{legend_y - 10}" width="14" height="12"'
        out.append(
            f'<rect {box} fill="{_COLOUR[priority]}"/><rect {box} fill="url(#hatch-{priority})"/>'
            f'<text x="{x + 18}" y="{legend_y}">{_LETTER[priority]} = {priority}</text>'
        )
    out.append("</svg>")
    return "".join(out)
