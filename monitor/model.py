"""The ward as the engine knows it: beds (infants), lines (vascular access devices) and
pump channels, with what the rules need derived once per change.

Plain mutable objects with ``__slots__``: the engine updates them in place on the hot path.
All times are integer microseconds; all quantities are floats in canonical units.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from calguard.monitor.dose import DoseLedger
from calguard.monitor.library import LabelMatch

__all__ = [
    "CENTRAL_KINDS",
    "PERIPHERAL_KINDS",
    "Bed",
    "ChannelKey",
    "ChannelState",
    "LineState",
    "Ward",
]

PERIPHERAL_KINDS = frozenset({"piv", "midline", "io"})
CENTRAL_KINDS = frozenset({"picc", "uvc", "cvc"})
ARTERIAL_KINDS = frozenset({"uac", "arterial"})
ChannelKey = tuple[str, str]
_SEQ_WINDOW = 32


@dataclass(slots=True, eq=False)
class Bed:
    bed: str
    ledger: DoseLedger
    weight_kg: float | None = None
    birth: int | None = None
    patient: str | None = None
    lines: set[str] = field(default_factory=set)
    dose_rate: dict[ChannelKey, float] = field(default_factory=dict)  # mmol/min per channel
    ceftriaxone_last: int | None = None  # last moment ceftriaxone was given or infused
    unknown_medication: tuple[int, str] | None = None  # (t, label) of an unknown calcium drug


@dataclass(slots=True, eq=False)
class LineState:
    line: str
    bed: str | None = None  # None until a `line` event documents the line
    kind: str | None = None
    site: str | None = None
    tip_confirmed: bool = False
    inserted: int = 0
    channels: set[ChannelKey] = field(default_factory=set)
    last_patency_t: int | None = None
    last_patency_result: str | None = None
    last_pass_t: int | None = None
    last_site_check_t: int | None = None
    last_site_grade: int = 0
    last_site_findings: tuple[str, ...] = ()
    last_site_abnormal: bool = False
    abnormal_while_calcium: bool = False
    carried_calcium: bool = False
    calcium_on: bool = False
    session_start: int | None = None  # start of calcium on this line (short pauses ignored)
    calcium_off_since: int | None = None

    @property
    def documented(self) -> bool:
        return self.kind is not None

    @property
    def peripheral(self) -> bool:
        """Peripheral for calcium: piv, midline, io, or a central kind whose tip is unconfirmed."""
        return self.kind in PERIPHERAL_KINDS or (
            self.kind in CENTRAL_KINDS and not self.tip_confirmed
        )

    @property
    def arterial(self) -> bool:
        return self.kind in ARTERIAL_KINDS

    def describe(self) -> str:
        where = f", {self.site}" if self.site else ""
        return f"line {self.line} ({self.kind}{where})"


@dataclass(slots=True, eq=False)
class ChannelState:
    pump: str
    channel: str
    line: str | None = None
    latest_t: int | None = None  # the engine's time of the latest reading (the monitor's clock)
    latest_device_t: int | None = None  # the pump's own time of it, for ordering its readings
    device_skewed: bool = False  # that time was off the monitor's clock by over the tolerance
    behind_since: int | None = None  # since when its readings arrive behind the monitor's clock
    lag_base: int | None = None  # its smallest delay seen (pump clock offset; calguard.monitor.lag)
    lag_period: int = -1  # the input-lag period it was last sampled in
    # (seq, the pump's time) of the latest readings: a redelivery repeats both
    seqs: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=_SEQ_WINDOW))
    max_seq: int = -1
    label: str | None = None
    match: LabelMatch | None = None
    rate_ml_min: float = 0.0
    rate_text: str = "0 ml/h"
    concentration_mg_ml: float | None = None  # the reading's, else the product's
    reading_concentration: float | None = None  # the latest reading's own, if it had one
    status: str = "stopped"
    mode: str = "continuous"
    alarm: str | None = None
    signature: tuple[object, ...] = ()
    # derived
    calcium: bool = False  # the drug is calcium (known product or an unknown calcium label)
    delivering: bool = False  # status infusing with a rate above zero
    run_start: int | None = None  # start of the current calcium run (short pauses ignored)
    run_line: str | None = None
    stopped_t: int | None = None  # when calcium last stopped on this channel
    stale_watch: bool = False  # the last reading was infusing calcium
    offline: bool = False  # the pump said so (MQTT Will); a reading says otherwise
    dose_bed: str | None = None  # the bed this channel's calcium is counted for
    # pressure trend
    pressure_rate: float | None = None
    pressure_baseline: float | None = None
    pressure_last: float | None = None
    elevated_since: int | None = None
    # alert and timer keys of the per-reading rules, built once
    k_stale: tuple[str, ChannelKey] = ("", ("", ""))
    k_invalid: tuple[str, ChannelKey] = ("", ("", ""))
    k_pressure: tuple[str, ChannelKey] = ("", ("", ""))

    def __post_init__(self) -> None:
        key = (self.pump, self.channel)
        self.k_stale = ("telemetry-stale", key)
        self.k_invalid = ("telemetry-invalid", key)
        self.k_pressure = ("pressure-trend", key)

    @property
    def key(self) -> ChannelKey:
        return (self.pump, self.channel)

    @property
    def name(self) -> str:
        return f"{self.pump}/{self.channel}"

    @property
    def calcium_delivering(self) -> bool:
        return self.calcium and self.delivering

    @property
    def drug_class(self) -> str:
        return self.match.drug_class if self.match else "neutral"

    @property
    def drug_name(self) -> str:
        return self.label or "an unlabelled drug"

    def seen(self, seq: int, t: int) -> bool:
        """This very reading again (same seq, same time): a redelivery. Sequence numbers
        normally rise: only a number not above the highest needs a look."""
        return seq <= self.max_seq and (seq, t) in self.seqs

    def seq_known(self, seq: int) -> bool:
        """The seq was used by another reading: the pump restarted its counter."""
        return seq <= self.max_seq and any(s == seq for s, _ in self.seqs)

    def remember_seq(self, seq: int, t: int) -> None:
        self.seqs.append((seq, t))
        if seq > self.max_seq:
            self.max_seq = seq

    def forget_seqs(self) -> None:
        self.seqs.clear()
        self.max_seq = -1


class Ward:
    """Beds, lines and channels, created on first mention."""

    __slots__ = ("beds", "channels", "dose_window_us", "lines", "pumps")

    def __init__(self, dose_window_us: int) -> None:
        self.dose_window_us = dose_window_us
        self.beds: dict[str, Bed] = {}
        self.lines: dict[str, LineState] = {}
        self.channels: dict[ChannelKey, ChannelState] = {}
        self.pumps: dict[str, int] = {}  # every pump with a channel here: how many it has

    def bed(self, bed: str) -> Bed:
        state = self.beds.get(bed)
        if state is None:
            state = self.beds[bed] = Bed(bed, DoseLedger(self.dose_window_us))
        return state

    def line(self, line: str) -> LineState:
        state = self.lines.get(line)
        if state is None:
            state = self.lines[line] = LineState(line)
        return state

    def channel(self, pump: str, channel: str) -> ChannelState:
        key = (pump, channel)
        state = self.channels.get(key)
        if state is None:
            state = self.channels[key] = ChannelState(pump, channel)
            self.pumps[pump] = self.pumps.get(pump, 0) + 1
        return state

    def documented_line(self, ch: ChannelState) -> LineState | None:
        """The channel's line if it is documented (kind and bed known), else None."""
        if ch.line is None:
            return None
        line = self.lines.get(ch.line)
        return line if line is not None and line.documented else None

    def bed_of(self, ch: ChannelState) -> Bed | None:
        line = self.documented_line(ch)
        return self.beds.get(line.bed) if line is not None and line.bed is not None else None

    def channels_on(self, line: LineState) -> list[ChannelState]:
        return [self.channels[key] for key in sorted(line.channels)]

    def lines_of(self, bed: Bed) -> list[LineState]:
        return [self.lines[name] for name in sorted(bed.lines)]
