"""Simulated New Era NE-1000 pumps on a pseudo-terminal, byte-exact to the manual.

``PumpBus`` opens a pty pair and answers, on the master side, like up to 100 daisy-chained
pumps would: basic or safe mode, the safe-mode communications time out, and alarms as the
manual (1200-02 section 8.4) has them: an alarm is held until it is acknowledged, either by
being sent in the response to a valid command (which still answers a query with its data)
or at the keypad, where the nurse clears it to restart the pump. Safe mode's unprompted
alarm packets do not acknowledge it. A stalled pump stays stopped until it is restarted.

The driver (or a terminal program) opens ``bus.path``: a stable symlink to the slave side,
so that an "unplugged" bus that is plugged back in keeps its path, like a USB adapter does.

Faults are injected, not imagined: ``inject`` writes garbage, ``split`` sends responses a
byte at a time, ``corrupt`` damages the next responses, ``silence`` mutes a pump, ``stall``
and ``power_cycle`` raise the pump's own alarms, ``unplug``/``replug`` pull the cable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import tty
from dataclasses import dataclass, field
from pathlib import Path

from calguard.drivers.clock import SystemClock
from calguard.drivers.ne1000 import (
    CR,
    FrameParser,
    Garbage,
    encode_safe_packet,
    format_number,
)
from calguard.monitor.clock import Clock

__all__ = ["PumpBus", "SimulatedPump"]

log = logging.getLogger(__name__)
_UNITS_PER_ML_MIN = {"MH": 60.0, "MM": 1.0, "UH": 60_000.0, "UM": 1000.0}
_ALARM_CODES = {"reset": "R", "occlusion": "S", "comms-timeout": "T", "program-error": "E"}
_QUERIES = ("", "RAT", "DIS", "DIA")  # commands that change nothing


@dataclass
class SimulatedPump:
    """One pump's state. Rates are kept in the pump's own units, as the real one does."""

    address: int
    rate: float = 0.0
    units: str = "MH"
    status: str = "S"  # I infusing, S stopped, P paused, ...
    infused_ml: float = 0.0
    withdrawn_ml: float = 0.0
    diameter_mm: float = 14.43
    alarm: str | None = None  # alarm type letter, held until acknowledged
    silent: bool = False
    _last_us: int | None = field(default=None, repr=False)

    def advance(self, now_us: int) -> None:
        if self._last_us is not None and self.status == "I":
            minutes = (now_us - self._last_us) / 60e6
            self.infused_ml += self.rate / _UNITS_PER_ML_MIN[self.units] * minutes
        self._last_us = now_us

    def raise_alarm(self, kind: str) -> None:
        self.alarm = _ALARM_CODES[kind]
        if kind in ("occlusion", "comms-timeout", "reset"):
            self.status = "S"  # these stop the pump and its program

    def restart(self) -> None:
        """At the keypad: the nurse clears the alarm message (acknowledging it) and presses
        Run. A held alarm no host has read is gone with it, as on the real pump."""
        self.alarm = None
        self.status = "I"

    def alarm_report(self) -> str:
        """Safe mode's unprompted alarm packet; it does not acknowledge the alarm."""
        return f"{self.address:02d}A?{self.alarm}"

    def answer(self, command: str) -> str:
        """The response data (address, status, data) to one command.

        A held alarm takes the status's place and is acknowledged by being sent. It must be
        acknowledged before any data is changed or the pump is started, so with it a query
        is answered (``00A?S0.500MH``) but a RUN or a new setting is not carried out."""
        if self.alarm is None:
            return f"{self.address:02d}{self.status}{self._data(command)}"
        alarm, self.alarm = self.alarm, None
        data = self._data(command) if command in _QUERIES else ""
        return f"{self.address:02d}A?{alarm}{data}"

    def _data(self, command: str) -> str:
        if command == "":
            return ""
        if command == "RAT":
            return f"{format_number(self.rate)}{self.units}"
        if command.startswith("RAT"):
            value, units = command[3:-2], command[-2:]
            if units not in _UNITS_PER_ML_MIN or not value.replace(".", "", 1).isdigit():
                return "?"
            self.rate, self.units = float(value), units
            return ""
        if command == "DIS":
            return f"I{format_number(self.infused_ml)}W{format_number(self.withdrawn_ml)}ML"
        if command == "RUN":
            self.status = "I"
            return ""
        if command == "PUR":  # purge: full speed until stopped
            self.status = "X"
            return ""
        if command in ("STP", "STOP"):
            self.status = "P" if self.status == "I" else "S"
            return ""
        if command == "CLDINF":
            self.infused_ml = 0.0
            return ""
        if command.startswith("DIA"):
            if command == "DIA":
                return format_number(self.diameter_mm)
            return ""
        if command.startswith(("VOL", "DIR", "SAF")):
            return ""
        return "?"


class PumpBus:
    """A pty with pumps behind it. Use as ``async with PumpBus(...) as bus``."""

    def __init__(
        self,
        pumps: list[SimulatedPump],
        *,
        safe: bool = False,
        clock: Clock | None = None,
        link: str | Path | None = None,
    ) -> None:
        self.pumps = {p.address: p for p in pumps}
        self.safe = safe
        self.clock: Clock = clock or SystemClock()
        self._dir = None if link else tempfile.TemporaryDirectory(prefix="calguard-ne1000-")
        self.path = str(link) if link else str(Path(self._dir.name) / "ttyNE1000")  # type: ignore[union-attr]
        self._master = self._slave = -1
        self._parser = FrameParser(safe=True)
        self._line = bytearray()
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.safe_timeout_s = 0
        self._last_packet_us = 0
        self.split_delay: float | None = None
        self._corrupt = 0
        self.received: list[bytes] = []  # every command, for byte-exact tests
        self.polled = asyncio.Event()  # set when a pump first answers: a host is on the line
        self.dropped_writes = 0

    async def __aenter__(self) -> PumpBus:
        self.plug()
        self._writer = asyncio.create_task(self._write_loop(), name="ne1000-sim-writer")
        self._watchdog = asyncio.create_task(self._safe_watchdog(), name="ne1000-sim-watchdog")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._writer, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.unplug()
        if self._dir is not None:
            self._dir.cleanup()

    # -- the cable ----------------------------------------------------------------------

    def plug(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: bytes as they are
        os.set_blocking(self._master, False)
        tmp = f"{self.path}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, self.path)
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    def unplug(self) -> None:
        if self._master < 0:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            os.close(fd)
        self._master = self._slave = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def replug(self) -> None:
        self.unplug()
        self.plug()

    # -- faults ---------------------------------------------------------------------------

    def inject(self, data: bytes) -> None:
        """Write bytes onto the line as if noise or another device sent them."""
        self._out.put_nowait(data)

    def corrupt(self, responses: int = 1) -> None:
        """Flip a bit in each of the next responses."""
        self._corrupt += responses

    def split(self, delay: float | None = 0.01) -> None:
        """Send responses a byte at a time with this gap (None: whole frames again)."""
        self.split_delay = delay

    def silence(self, address: int, silent: bool = True) -> None:
        self.pumps[address].silent = silent

    def stall(self, address: int) -> None:
        """The motor stalls (occlusion): alarm S, held until acknowledged, and the pump
        stops until it is restarted; announced at once in safe mode."""
        self._alarm(address, "occlusion")

    def power_cycle(self, address: int) -> None:
        self._alarm(address, "reset")

    def _alarm(self, address: int, kind: str) -> None:
        pump = self.pumps[address]
        pump.advance(self.clock.now_us())
        pump.raise_alarm(kind)
        if self.safe and not pump.silent:  # the Auto-Alarm packet
            self._send(pump.alarm_report())

    # -- the pump side of the wire ---------------------------------------------------------

    def _readable(self) -> None:
        try:
            chunk = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while nobody holds the slave open: nothing to read
        if self.safe:
            for item in self._parser.feed(chunk):
                if not isinstance(item, Garbage):
                    self._command(item)
        else:
            for byte in chunk:
                if byte == CR:
                    self._command(bytes(self._line))
                    self._line.clear()
                else:
                    self._line.append(byte)

    def _command(self, raw: bytes) -> None:
        self.received.append(raw)
        # the pump strips spaces and control characters and upper-cases (basic mode)
        text = "".join(
            ch for ch in raw.decode("ascii", "replace") if ch.isprintable() and ch != " "
        ).upper()
        digits = len(text) - len(text.lstrip("0123456789"))
        address = int(text[:digits]) if digits else 0
        command = text[digits:]
        pump = self.pumps.get(address)
        if pump is None or pump.silent:
            return  # nobody at that address answers
        self._last_packet_us = self.clock.now_us()
        self.polled.set()
        if command.startswith("SAF") and command[3:].isdigit():
            self.safe_timeout_s = int(command[3:])
            self.safe = self.safe_timeout_s > 0
        pump.advance(self.clock.now_us())
        self._send(pump.answer(command))

    def _send(self, data: str) -> None:
        body = data.encode("ascii")
        frame = encode_safe_packet(body) if self.safe else b"\x02" + body + b"\x03"
        if self._corrupt:
            self._corrupt -= 1
            middle = len(frame) // 2
            frame = frame[:middle] + bytes([frame[middle] ^ 0x01]) + frame[middle + 1 :]
        self._out.put_nowait(frame)

    async def _write_loop(self) -> None:
        while True:
            frame = await self._out.get()
            chunks = [frame[i : i + 1] for i in range(len(frame))] if self.split_delay else [frame]
            for chunk in chunks:
                if self._master >= 0:
                    try:
                        os.write(self._master, chunk)
                    except OSError:
                        self.dropped_writes += 1  # buffer full or cable pulled: lost, as on a wire
                if self.split_delay:
                    await asyncio.sleep(self.split_delay)

    async def _safe_watchdog(self) -> None:
        """The pump alarms and stops when no valid packet arrives within the SAF time out."""
        while True:
            await asyncio.sleep(0.25)
            if self.safe and self.safe_timeout_s and self._last_packet_us:
                silent_for = (self.clock.now_us() - self._last_packet_us) / 1e6
                if silent_for > self.safe_timeout_s:
                    self._last_packet_us = 0  # the timer restarts with the next valid packet
                    for pump in self.pumps.values():
                        if pump.status == "I":
                            self._alarm(pump.address, "comms-timeout")
