"""Snapshots: the engine's whole state in plain values, so a restart need not replay a week.

A warm start used to rebuild the ward by replaying every input of the dose window and a
week of documentation (32.5 s and 1 GB for an hour of 500 channels; impossible at 4,000).
A snapshot is what that replay would rebuild - the ward model, the dose ledgers with their
index, the timers, the alert book with its ids, the rules' own state, and (given by the
caller, who owns it) the alarm layer's - as a dict of JSON values: restored and fed the
inputs after it, an engine gives the very alert lines the engine it was taken from gives.

Why not pickle: a snapshot outlives the code that made it (a restart is often an upgrade),
and a restart must never trust what it cannot check. So the format is explicit and
versioned (``FORMAT``, ``VERSION``), carries the *shape* of the state it holds (a digest
of the state classes' fields: a CalGuard whose engine keeps other state refuses it rather
than guess), and every value is checked on the way in. ``SnapshotError`` says why a
snapshot was refused; the warm start then falls back to the full replay, and says so.

Derived values are not stored but made again: a channel's drug match (from its label,
under the library starting), the alert and timer keys, each pump's list of channels.
Tuples travel as lists and come back as tuples; every dict keeps its order (the order the
engine met its subjects is the order it evaluates them in).
"""

from __future__ import annotations

import hashlib
import math
import types
from collections.abc import Callable, Hashable
from dataclasses import fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from calguard.monitor.dose import DoseLedger
from calguard.monitor.engine import Engine
from calguard.monitor.errors import EventError
from calguard.monitor.library import Library
from calguard.monitor.model import Bed, ChannelState, LineState
from calguard.monitor.rules.inputs import _Strays
from calguard.monitor.timers import TimerQueue
from calguard.monitor.transitions import ActiveAlert, AlertBook, Description

__all__ = ["FORMAT", "VERSION", "SnapshotError", "alarm_state", "from_snapshot", "to_snapshot"]

FORMAT, VERSION = "calguard-engine-snapshot", 1
#: fields made again on restore rather than stored
_DERIVED = frozenset({"match", "k_stale", "k_invalid", "k_pressure"})
#: fields with their own encoding
_SPECIAL = frozenset({"seqs", "signature", "ledger", "lines", "dose_rate", "channels"})


class SnapshotError(ValueError):
    """A snapshot this CalGuard does not understand or cannot trust: never restored."""


def _shape() -> str:
    """A digest of the state classes' fields and slots: changes when what they hold does."""
    parts = [
        f"{cls.__name__}.{f.name}:{f.type}"
        for cls in (Bed, LineState, ChannelState, _Strays)
        for f in fields(cls)
    ]
    parts += [
        f"{cls.__name__}.{s}" for cls in (DoseLedger, TimerQueue, AlertBook) for s in cls.__slots__
    ]
    parts += [f"ActiveAlert.{f.name}" for f in fields(ActiveAlert)]
    parts += [f"Description.{f.name}" for f in fields(Description)]
    parts += ["RuleContext.input_lag_us"]  # the rules' own state beside the strays
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


SHAPE = _shape()


# -- out --------------------------------------------------------------------------------------


def to_snapshot(engine: Engine, alarms: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's state between two inputs (plain values, sharing nothing with the engine:
    it may be serialised elsewhere while the engine runs on). ``alarms``: the alarm layer's
    ``state()``, kept beside it. ``ValueError`` if the engine has no time yet or holds
    transitions not handed out (the caller takes them first)."""
    if engine.now is None or engine.book.pending:
        raise ValueError("a snapshot is taken between two inputs of an engine that has run")
    ward, book = engine.ward, engine.book
    heap, queued, target, generation = engine.timers.state()
    return {
        "format": FORMAT,
        "version": VERSION,
        "shape": SHAPE,
        "library": engine.library.version,
        "now": engine.now,
        "window_us": ward.dose_window_us,
        "beds": [_plain(b, Bed) for b in ward.beds.values()],
        "lines": [_plain(x, LineState) for x in ward.lines.values()],
        "channels": [_plain(c, ChannelState) for c in ward.channels.values()],
        "pumps": list(ward.pumps.items()),
        "timers": {
            "heap": [[due, g, _out(key)] for due, g, key in heap],
            "queued": [[_out(k), due, g] for k, (due, g) in queued.items()],
            "target": [[_out(k), due] for k, due in target.items()],
            "generation": generation,
        },
        "book": {
            "library": book.library,
            "next_id": book.next_id,
            "active": [_alert_out(a) for a in book.active.values()],
        },
        "strays": [
            [src, s.count, s.last, s.last_t] for src, s in engine.rules.inputs.sources.items()
        ],
        # the lag the monitor last reported (monitor-lagging): stale timers wait for it
        "input_lag_us": engine.rules.ctx.input_lag_us,
        "alarms": alarms,
    }


def _plain(obj: Any, cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _NAMES[cls]:
        value = getattr(obj, name)
        if name in _SPECIAL:
            value = _special(name, value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _special(name: str, value: Any) -> Any:
    if name == "ledger":
        return value.state()
    if name == "seqs":  # (seq, time) pairs: the first, then differences (short numbers)
        flat: list[int] = []
        prev = (0, 0)
        for seq, t in value:
            flat += (seq - prev[0], t - prev[1])
            prev = (seq, t)
        return flat
    if name == "signature":  # (match, rate, concentration, status, mode, alarm)
        return list(value[1:]) if value else None
    if name == "dose_rate":
        return [[p, c, rate] for (p, c), rate in value.items()]
    return sorted(list(v) if isinstance(v, tuple) else v for v in value)  # sets, sorted


def _out(key: Hashable) -> Any:
    return [_out(k) for k in key] if isinstance(key, tuple) else key


def _alert_out(a: ActiveAlert) -> list[Any]:
    d = a.description
    text = [d.message, d.bed, d.line, d.pump, d.channel, d.value, d.limit]
    return [a.alert, a.rule, _out(a.key), a.priority, a.raised_t, text]


# -- in ---------------------------------------------------------------------------------------


def alarm_state(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """The alarm layer's part of a snapshot (for ``AlarmManager.restore_state``)."""
    alarms = snapshot.get("alarms")
    return alarms if isinstance(alarms, dict) else None


def from_snapshot(snapshot: dict[str, Any], library: Library) -> Engine:
    """An engine in the snapshot's state, running ``library``. Taken under another library,
    the state is evaluated again under this one at the snapshot's instant, as a published
    library would be (``Engine.swap``). ``SnapshotError`` for a snapshot of another format,
    version or shape, a value of the wrong type, or a library the engine cannot take."""
    try:
        return _restore(snapshot, library)
    except SnapshotError:
        raise
    except EventError as exc:  # Engine.swap's refusal: a longer dose window
        raise SnapshotError(
            f"cannot run library {library.version} on it: {exc.describe()}"
        ) from exc
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SnapshotError(f"a malformed snapshot: {type(exc).__name__}: {exc}") from exc


def _restore(snap: dict[str, Any], library: Library) -> Engine:
    if not isinstance(snap, dict) or snap.get("format") != FORMAT:
        raise SnapshotError("not a CalGuard engine snapshot")
    if snap.get("version") != VERSION:
        raise SnapshotError(
            f"format version {snap.get('version')!r}; this CalGuard reads {VERSION}"
        )
    if snap.get("shape") != SHAPE:
        raise SnapshotError("made by a CalGuard whose engine holds other state")
    engine = Engine(library)
    now, window = _int(snap["now"]), _int(snap["window_us"])
    ward = engine.ward
    ward.dose_window_us = window
    ward.beds = {b.bed: b for b in (_bed(d) for d in _list(snap["beds"]))}
    ward.lines = {x.line: x for x in (_line(d) for d in _list(snap["lines"]))}
    channels = [_channel(d, library) for d in _list(snap["channels"])]
    ward.channels = {c.key: c for c in channels}
    ward.pumps = {str(p): _int(n) for p, n in _list(snap["pumps"])}
    for ch in channels:  # each pump's channels, in the order made (Engine._channels_of)
        engine._pump_channels.setdefault(ch.pump, []).append(ch)
    if sum(ward.pumps.values()) != len(channels) or len(ward.channels) != len(channels):
        raise SnapshotError("the pumps' channel counts do not match the channels")
    t = snap["timers"]
    engine.timers.restore(
        (
            [(_int(due), _int(g), _key(k)) for due, g, k in _list(t["heap"])],
            {_key(k): (_int(due), _int(g)) for k, due, g in _list(t["queued"])},
            {_key(k): _int(due) for k, due in _list(t["target"])},
            _int(t["generation"]),
        )
    )
    book = snap["book"]
    active = [_alert(d) for d in _list(book["active"])]
    engine.book.restore(_str(book["library"]), _int(book["next_id"]), active)
    engine.rules.inputs.sources = {
        _str(src): _Strays(_int(n), _str(last), _int(last_t))
        for src, n, last, last_t in _list(snap["strays"])
    }
    engine.rules.ctx.input_lag_us = _int(snap["input_lag_us"])
    engine.now = now
    if snap["library"] != library.version:  # as a pharmacist's publication at that instant
        engine.swap(library, now)
    return engine


def _bed(d: dict[str, Any]) -> Bed:
    bed = Bed(_str(d["bed"]), DoseLedger.from_state(d["ledger"]))
    _fill(bed, d, Bed)
    bed.lines = {_str(x) for x in _list(d["lines"])}
    bed.dose_rate = {(_str(p), _str(c)): _num(r) for p, c, r in _list(d["dose_rate"])}
    return bed


def _line(d: dict[str, Any]) -> LineState:
    line = LineState(_str(d["line"]))
    _fill(line, d, LineState)
    line.channels = {(_str(p), _str(c)) for p, c in _list(d["channels"])}
    return line


def _channel(d: dict[str, Any], library: Library) -> ChannelState:
    ch = ChannelState(_str(d["pump"]), _str(d["channel"]))
    _fill(ch, d, ChannelState)
    flat, seq, t = _list(d["seqs"]), 0, 0
    for i in range(0, len(flat) - 1, 2):
        seq, t = seq + _int(flat[i]), t + _int(flat[i + 1])
        ch.seqs.append((seq, t))
    ch.match = library.match(ch.label) if ch.label is not None else None
    signature = d["signature"]
    if signature is not None:
        rate, conc, status, mode, alarm = _list(signature)
        conc, alarm = _typed(conc, float | None, "conc"), _typed(alarm, str | None, "alarm")
        ch.signature = (ch.match, _num(rate), conc, _str(status), _str(mode), alarm)
    return ch


def _fill(obj: Any, d: dict[str, Any], cls: type) -> None:
    """Every plain field, checked against its declared type; a missing or unknown one
    refuses the snapshot (the shape digest should have: this is the second lock)."""
    if d.keys() != _NAMES[cls].keys():
        raise SnapshotError(f"{cls.__name__} fields differ: {sorted(d.keys() ^ _NAMES[cls])}")
    for name, where, check in _CHECKS[cls]:
        setattr(obj, name, check(d[name], where))


Check = Callable[[Any, str], Any]
_SCALARS: dict[Any, Callable[[Any], bool]] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
}


def _checker(hint: Any) -> Check:
    """A check (and conversion: lists back to tuples) for a field of this declared type,
    made once: a snapshot of 5,000 channels checks 150,000 values."""
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        scalars = [_SCALARS[a] for a in args if a in _SCALARS]
        tuples = [_checker(a) for a in args if get_origin(a) is tuple]

        def union(v: Any, where: str) -> Any:
            if any(ok(v) for ok in scalars):
                return v
            if tuples and isinstance(v, list):
                return tuples[0](v, where)
            raise SnapshotError(f"{where}: {v!r:.60} is not a {hint}")

        return union
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            each = _checker(args[0])
            return lambda v, where: tuple(each(x, where) for x in _list(v))
        parts = [_checker(a) for a in args]

        def fixed(v: Any, where: str) -> Any:
            if len(_list(v)) != len(parts):
                raise SnapshotError(f"{where}: {v!r:.60} is not a {hint}")
            return tuple(check(x, where) for check, x in zip(parts, v, strict=True))

        return fixed
    ok = _SCALARS[hint]  # a KeyError here, at import: a state field of a new kind

    def scalar(v: Any, where: str) -> Any:
        if not ok(v):
            raise SnapshotError(f"{where}: {v!r:.60} is not a {hint}")
        return v

    return scalar


def _typed(value: Any, hint: Any, where: str) -> Any:
    return _checker(hint)(value, where)


#: the stored fields of each state class (dict: ordered, and a set of keys to compare)
_NAMES: dict[type, dict[str, None]] = {
    cls: {f.name: None for f in fields(cls) if f.name not in _DERIVED}
    for cls in (Bed, LineState, ChannelState)
}
_CHECKS: dict[type, list[tuple[str, str, Check]]] = {
    cls: [
        (name, f"{cls.__name__}.{name}", _checker(hint))
        for name, hint in get_type_hints(cls).items()
        if name in _NAMES[cls] and name not in _SPECIAL
    ]
    for cls in (Bed, LineState, ChannelState)
}


def _key(v: Any) -> Hashable:
    key = tuple(_key(k) for k in v) if isinstance(v, list) else v
    if not isinstance(key, str | int | tuple):
        raise SnapshotError(f"not a timer or alert key: {v!r:.60}")
    return key


def _alert(d: Any) -> ActiveAlert:
    alert, rule, key, priority, raised_t, text = _list(d)
    if len(_list(text)) != 7 or not all(v is None or isinstance(v, str) for v in text):
        raise SnapshotError(f"an alert's description is not of its type: {text!r:.80}")
    description = Description(_str(text[0]), *text[1:])
    return ActiveAlert(
        _str(alert), _str(rule), _key(key), _str(priority), _int(raised_t), description
    )


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise SnapshotError(f"not a list: {v!r:.60}")
    return v


def _int(v: Any) -> int:
    if not _SCALARS[int](v):
        raise SnapshotError(f"{v!r:.60} is not an integer")
    return int(v)


def _num(v: Any) -> float:
    if not _SCALARS[float](v):
        raise SnapshotError(f"{v!r:.60} is not a number")
    return v  # type: ignore[no-any-return]  # checked: a finite int or float


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise SnapshotError(f"{v!r:.60} is not a text")
    return v
