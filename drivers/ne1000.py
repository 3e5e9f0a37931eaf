"""The New Era NE-500/NE-1000 RS-232 protocol (manual 1200-01 section 10, 1200-02 section 8).

Basic mode:  command  ``[address]<command>\\r``
             response ``STX <address:2><status>[data] ETX``
Safe mode:   both ways ``STX <length> <data> <CRC hi> <CRC lo> ETX``, where the length
             counts the bytes after STX (itself, the data, the CRC and ETX) and the CRC is
             CRC-16/XMODEM (CCITT polynomial 0x1021, initial 0) over the data. The pump
             also sends alarm packets unprompted.

``FrameParser`` turns a byte stream into frames and garbage, resynchronising on STX: a
safe-mode packet is delimited by its length byte (its CRC may contain 0x02 or 0x03), a
basic-mode one by ETX. Nothing here does I/O; the driver and the simulator share it.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass

__all__ = [
    "ALARMS",
    "LARGEST_DIAMETER_MM",
    "MAX_TRAVEL_MM_MIN",
    "STATUSES",
    "FrameParser",
    "Response",
    "crc16_xmodem",
    "encode_basic_command",
    "encode_safe_packet",
    "format_number",
    "max_rate_ml_h",
    "parse_response",
    "parse_volume",
]

STX, ETX, CR = 0x02, 0x03, 0x0D
#: prompt status characters -> what CalGuard calls them
STATUSES = {
    "I": "infusing",
    "W": "withdrawing",
    "S": "stopped",
    "P": "paused",
    "T": "pause phase",
    "U": "waiting for user trigger",
    "X": "purging",
}
#: alarm type after "A?" -> CalGuard's alarm name
ALARMS = {
    "R": "reset",  # power was interrupted
    "S": "occlusion",  # motor stalled
    "T": "comms-timeout",  # safe mode communications time out
    "E": "program-error",
    "O": "phase-out-of-range",
}
ERRORS = ("?", "?NA", "?OOR", "?COM", "?IGN")
RATE_UNITS = {"UM": "ul/min", "MM": "ml/min", "UH": "ul/h", "MH": "ml/h"}
_MAX_SAFE_LENGTH = 80  # no response the pump sends is longer


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0, no reflection, no final XOR): what
    ``binascii.crc_hqx`` computes from a start value of 0, in C."""
    return binascii.crc_hqx(data, 0)


def encode_basic_command(address: int | None, command: str) -> bytes:
    prefix = "" if address is None else str(address)
    return f"{prefix}{command}\r".encode("ascii")


def encode_safe_packet(data: bytes) -> bytes:
    """``STX len data crc_hi crc_lo ETX`` (commands to, and responses from, the pump)."""
    crc = crc16_xmodem(data)
    return bytes([STX, len(data) + 4]) + data + bytes([crc >> 8, crc & 0xFF, ETX])


def format_number(value: float) -> str:
    """At most 4 digits and one point, at most 3 decimals: 0.500, 2.500, 500.0, 9999."""
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if len(text.replace(".", "")) <= 4:
            return text
    raise ValueError(f"{value} does not fit the pump's 4-digit number format")


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response: address, prompt status or alarm, and data (or an error code)."""

    address: int
    status: str | None  # one of STATUSES, when no alarm
    alarm: str | None  # one of ALARMS' values
    data: str
    error: str | None = None  # one of ERRORS

    def rate(self) -> str | None:
        """``RAT`` data such as ``2.500MH`` as an event quantity ``"2.500 ml/h"``."""
        data = self.data
        unit = RATE_UNITS.get(data[-2:])
        if unit is None or not _is_number(data[:-2]):
            return None
        return f"{data[:-2]} {unit}"


#: The NE-1000's fastest plunger travel, mm/min (its linear travel specification, as
#: New Era's rate tables imply: 36,765 ul/min for a 4.7 mm syringe). Purging (status X)
#: drives the plunger at this speed whatever the programmed rate.
MAX_TRAVEL_MM_MIN = 2120.0
#: when a pump's syringe diameter cannot be read: the largest syringe it takes (60 ml)
LARGEST_DIAMETER_MM = 26.59


def max_rate_ml_h(diameter_mm: float) -> float:
    """The rate at which a purge pushes a syringe of this inside diameter (ml/h)."""
    area_mm2 = math.pi * (diameter_mm / 2) ** 2
    return area_mm2 * MAX_TRAVEL_MM_MIN * 60 / 1000


def parse_volume(data: str) -> str | None:
    """``DIS`` data ``I1.250W0.000ML`` -> infused volume ``"1.250 ml"``."""
    if not data.startswith("I") or "W" not in data or data[-2:] not in ("ML", "UL"):
        return None
    infused = data[1 : data.index("W")]
    if not _is_number(infused):
        return None
    return f"{infused} {'ml' if data[-2:] == 'ML' else 'ul'}"


def _is_number(text: str) -> bool:
    return bool(text) and text.count(".") <= 1 and text.replace(".", "").isdigit()


def parse_response(data: bytes) -> Response:
    """``00SI1.250W0.000ML`` -> Response; ``ValueError`` when it is not a response."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not ASCII") from None
    if len(text) < 3 or not text[:2].isdigit() or not text.isprintable():
        raise ValueError(f"not a pump response: {text!r}")
    address, rest = int(text[:2]), text[2:]
    if rest.startswith("A?"):
        if len(rest) < 3 or rest[2] not in ALARMS:
            raise ValueError(f"unknown alarm: {text!r}")
        return Response(address, None, ALARMS[rest[2]], rest[3:])
    status = STATUSES.get(rest[0])
    if status is None:
        raise ValueError(f"unknown status {rest[0]!r}: {text!r}")
    body = rest[1:]
    error = body if body in ERRORS else None
    return Response(address, status, None, body, error)


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that were not a valid frame, and why."""

    data: bytes
    reason: str


class FrameParser:
    """Bytes in, frames (the data between the framing) and garbage out."""

    def __init__(self, *, safe: bool) -> None:
        self.safe = safe
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes | Garbage]:
        self._buffer += chunk
        out: list[bytes | Garbage] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def discard(self) -> Garbage | None:
        """Drop an incomplete frame (after the inter-byte time out)."""
        if not self._buffer:
            return None
        junk, self._buffer = bytes(self._buffer), bytearray()
        return Garbage(junk, "incomplete frame (time out between bytes)")

    def _next(self) -> bytes | Garbage | None:
        buf = self._buffer
        if not buf:
            return None
        start = buf.find(STX)
        if start != 0:
            junk = bytes(buf if start < 0 else buf[:start])
            del buf[: len(junk)]
            return Garbage(junk, "bytes outside a frame")
        return self._safe() if self.safe else self._basic()

    def _basic(self) -> bytes | Garbage | None:
        buf = self._buffer
        end = buf.find(ETX, 1)
        restart = buf.find(STX, 1)
        if restart > 0 and (end < 0 or restart < end):
            junk = bytes(buf[:restart])
            del buf[:restart]
            return Garbage(junk, "frame cut short by a new STX")
        if end < 0:
            return None
        frame = bytes(buf[1:end])
        del buf[: end + 1]
        return frame

    def _safe(self) -> bytes | Garbage | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length = buf[1]
        if (
            not 4 <= length <= _MAX_SAFE_LENGTH
        ):  # len + data (a status query may be empty) + CRC + ETX
            del buf[:1]
            return Garbage(b"\x02", f"impossible packet length {length}")
        total = 1 + length
        if len(buf) < total:
            return None
        packet = bytes(buf[:total])
        data, crc, etx = packet[2:-3], packet[-3:-1], packet[-1]
        if etx != ETX:
            del buf[:1]  # resynchronise on the next STX
            return Garbage(packet, "no ETX where the length byte says")
        if int.from_bytes(crc, "big") != crc16_xmodem(data):
            del buf[:total]
            return Garbage(packet, "CRC error")
        del buf[:total]
        return data
