"""Serial driver for New Era NE-500/NE-1000 syringe pumps (RS-232, up to 100 on a line).

    serial:///dev/ttyUSB0?baud=19200&mode=safe

Every ``poll_interval`` each configured address is asked for its status, its rate (``RAT``)
and its dispensed volume (``DIS``); the answers become one reading, stamped with the
injected clock. A pump carries no drug name: the site config maps each address to its pump
id, channel, drug and concentration. Between polls the driver listens, so the unprompted
alarm packets of safe mode are reported at once.

A motor stall (``A?S``) is an ``occlusion`` alarm. The pump reports an alarm only once and
stops, so the driver keeps reporting the occlusion until the pump runs again. Garbage,
split frames, CRC errors and time outs are counted and retried once; a pump that still
does not answer produces no reading, so the engine's ``telemetry-stale`` fires; an answer
that cannot be understood raises ``telemetry-invalid``. A port that fails or disappears is
a ``DriverError``: the base class reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import serial
import serial_asyncio_fast
from calguard.config.options import (
    PUMP_OPTIONS,
    OptionSpec,
    check_options,
    parse_query,
    table_values,
)
from calguard.drivers.base import Driver, Inbound
from calguard.drivers.ne1000 import (
    LARGEST_DIAMETER_MM,
    FrameParser,
    Garbage,
    Response,
    encode_basic_command,
    encode_safe_packet,
    max_rate_ml_h,
    parse_response,
    parse_volume,
)
from calguard.monitor.errors import DriverError
from calguard.monitor.timeutil import format_ts

__all__ = ["PumpMapping", "SerialDriver"]

log = logging.getLogger(__name__)
_STATUS = {
    "infusing": "infusing",
    "purging": "infusing",  # delivering (fast): never "not infusing"
    "withdrawing": "stopped",
    "stopped": "stopped",
    "paused": "paused",
    "pause phase": "paused",
    "waiting for user trigger": "paused",
}
_INTER_BYTE_TIMEOUT = 0.5  # the manual's packet inter-byte time out


#: what a [[drivers.pumps]] table says: an address on the line, and what that pump carries
PUMP_TABLE: dict[str, OptionSpec] = {
    "address": OptionSpec(
        int, None, "the address set on the pump, 0-99", 0, 99, required=True, unique=True
    ),
    **PUMP_OPTIONS,
    "pump": OptionSpec(
        str,
        lambda table: f"NE{table['address']:02d}",
        'the pump\'s id in alerts (default "NE" and the address: NE07)',
        unique=True,
    ),
}
BAUD_RATES = (300, 1200, 2400, 9600, 19200)  # what the pump can be set to
#: the most bytes one exchange puts on the line: a safe-mode DIS command and its answer
_EXCHANGE_BYTES = 32
_SAFE_TIMEOUT_MAX = 255  # SAF <n>: the longest time out the pumps take, in seconds


@dataclass(frozen=True, slots=True)
class PumpMapping:
    """Which pump answers at an address, and what it carries (from the site config)."""

    address: int
    pump: str
    channel: str = "A"
    drug: str | None = None
    concentration: str | None = None

    @classmethod
    def from_config(cls, item: Mapping[str, Any]) -> PumpMapping:
        """A checked [[drivers.pumps]] table (see ``SerialDriver.config_problems``)."""
        values = table_values(item, PUMP_TABLE)
        return cls(**values)


def _fits(command: str, response: Response) -> bool:
    """Whether a response can be the answer to this command."""
    if response.alarm is not None or response.error is not None:
        return True  # an alarm replaces any answer once; an error answers any command
    if command == "RAT":
        return response.rate() is not None
    if command == "DIS":
        return parse_volume(response.data) is not None
    if command == "":
        return response.data == ""
    return True


class SerialDriver(Driver):
    scheme = "serial"
    url_params: ClassVar[dict[str, OptionSpec]] = {
        "baud": OptionSpec(int, 19200, "the line's speed, as set on the pumps", choices=BAUD_RATES),
        "mode": OptionSpec(
            str,
            "basic",
            "safe: packets with a CRC, and the pumps stop if the monitor falls silent",
            choices=("basic", "safe"),
        ),
        "protocol": OptionSpec(str, "ne1000", "the pumps' protocol", choices=("ne1000", "ne500")),
    }
    options: ClassVar[dict[str, OptionSpec]] = {
        "pumps": OptionSpec(
            list,
            [],
            "one [[drivers.pumps]] table for each address: address, pump, channel, drug, "
            "concentration",
            table=PUMP_TABLE,
        ),
        "poll_interval": OptionSpec(
            float, 2.0, "seconds between polls of all pumps", minimum=0.05, maximum=30.0
        ),
        "response_timeout": OptionSpec(
            float, 0.5, "seconds to wait for each answer", minimum=0.05, maximum=10.0
        ),
        "safe_timeout": OptionSpec(
            int,
            0,
            "safe mode: arm the pump's communications time out, in seconds (0: leave it)",
            minimum=0,
            maximum=_SAFE_TIMEOUT_MAX,
        ),
    }

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        problems = self.config_problems(url, kwargs)
        if problems:
            raise DriverError("; ".join(f"{k}: {m}" for k, m in problems), source=url)
        params, _ = parse_query(self.parts.query, self.url_params)
        self.path = self.parts.path
        self.baud: int = params["baud"]
        self.safe = params["mode"] == "safe"
        self.pumps = [PumpMapping.from_config(item) for item in self.config["pumps"]]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = FrameParser(safe=self.safe)
        self._frames: list[bytes | Garbage] = []
        self._latched: dict[int, str] = {}
        self._answering: dict[int, bool] = {}
        self._seq: dict[int, int] = {}
        self._next_poll_us = 0  # on the injected clock: a training speed-up polls faster

    @classmethod
    def config_problems(cls, url: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Everything wrong with this URL and these options, as (key, message): a URL that
        names no device or a bad parameter, no pump, a bad pump table or timing, time outs
        that the line's speed or the pumps' safe mode cannot keep."""
        parts = urlsplit(url)
        params, wrong = parse_query(parts.query, cls.url_params, cls.options)
        problems = [("url", message) for message in wrong]
        if parts.netloc or not parts.path.strip("/"):
            problems.append(
                (
                    "url",
                    f"{url} — a device path is expected after three slashes, "
                    "e.g. serial:///dev/ttyUSB0",
                )
            )
        known = {key: value for key, value in options.items() if key in cls.options}
        problems += check_options(known, cls.options, "for the serial driver")
        if options.get("pumps") in (None, []):
            problems.append(
                ("pumps", "no pump on this line: add a [[drivers.pumps]] table for each address")
            )
        if problems:
            return problems
        config = {key: options.get(key, spec.default) for key, spec in cls.options.items()}
        return _timing_problems(params["baud"], params["mode"], len(config["pumps"]), config)

    # -- lifecycle ----------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                url=self.path, baudrate=self.baud
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DriverError(f"cannot open the port: {exc}", source=self.url) from exc
        self._parser = FrameParser(safe=self.safe)
        self._frames.clear()
        self._next_poll_us = self.clock.now_us()
        if self.safe and self.config["safe_timeout"]:
            for pump in self.pumps:  # put each pump in safe mode with the time out armed
                command = f"SAF{self.config['safe_timeout']}"
                self._write(encode_basic_command(pump.address, command))
                await self._answer(pump.address)

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        if self.safe and self.config["safe_timeout"]:
            # a clean stop must not make the pumps alarm and stop: leave safe mode (SAF0)
            for pump in self.pumps:
                self._write(encode_safe_packet(f"{pump.address}SAF0".encode("ascii")), writer)
        writer.close()
        with contextlib.suppress(OSError, serial.SerialException, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()

    # -- reading ------------------------------------------------------------------------

    async def _read(self) -> list[Inbound]:
        clock = self.clock
        while True:  # listen for unprompted alarm packets until the next poll is due
            wait = (self._next_poll_us - clock.now_us()) / 1e6 / clock.speed
            if wait <= 0:
                break
            frame = await self._frame(wait)
            if isinstance(frame, bytes):
                unprompted = self._unprompted(frame)
                if unprompted:
                    return unprompted
        interval_us = round(self.config["poll_interval"] * 1e6)
        self._next_poll_us = max(self._next_poll_us + interval_us, clock.now_us())
        items: list[Inbound] = []
        for pump in self.pumps:
            items += await self._poll(pump)
        return items

    async def _poll(self, pump: PumpMapping) -> list[Inbound]:
        status = await self._ask(pump, "")
        rate = await self._ask(pump, "RAT") if isinstance(status, Response) else status
        volume = await self._ask(pump, "DIS") if isinstance(rate, Response) else rate
        answers = [status, rate, volume]
        for answer in answers:
            if isinstance(answer, str):  # garbage twice: the pump said something unusable
                return [self._problem(pump, answer)]
        if None in answers:
            self._note_answering(pump, False)
            return []  # silence: no reading, so the engine's stale timer runs
        self._note_answering(pump, True)
        assert (
            isinstance(status, Response)
            and isinstance(rate, Response)
            and isinstance(volume, Response)
        )
        alarm = status.alarm or rate.alarm or volume.alarm
        if status.status == "purging":
            # a purge drives the plunger at full speed whatever rate is programmed: report
            # what is delivered, the maximum for this syringe, never the programmed rate
            fastest = max_rate_ml_h(await self._diameter(pump))
            return [
                self._reading(
                    pump, status, f"{fastest:.0f} ml/h", parse_volume(volume.data), alarm, "bolus"
                )
            ]
        if rate.error or rate.rate() is None:
            if alarm is None:
                return [self._problem(pump, f"RAT answered {rate.data!r}, which is not a rate")]
            # an alarm in place of the rate (a firmware that sends no data with it): the
            # alarm is never lost; a stalled pump delivers nothing, so its rate is 0
            return [self._reading(pump, status, "0 ml/h", parse_volume(volume.data), alarm)]
        return [
            self._reading(pump, status, rate.rate() or "0 ml/h", parse_volume(volume.data), alarm)
        ]

    async def _diameter(self, pump: PumpMapping) -> float:
        """The pump's syringe inside diameter (mm), asked with DIA; the largest syringe if
        the answer is unusable (so a purge is never under-reported)."""
        answer = await self._ask(pump, "DIA")
        if isinstance(answer, Response) and not answer.error:
            with contextlib.suppress(ValueError):
                diameter = float(answer.data)
                if 0.1 <= diameter <= 50:
                    return diameter
        return LARGEST_DIAMETER_MM

    async def _ask(self, pump: PumpMapping, command: str) -> Response | str | None:
        """Ask once, and once more after garbage or silence - only once for a pump that
        was already silent, so that dead pumps do not delay the live ones' readings into
        staleness. Returns the response, None for silence, or why the answer was unusable."""
        problem: str | None = None
        attempts = 2 if self._answering.get(pump.address, True) else 1
        for _attempt in range(attempts):
            if self.safe:
                self._write(encode_safe_packet(f"{pump.address}{command}".encode("ascii")))
            else:
                self._write(encode_basic_command(pump.address, command))
            answer = await self._answer(pump.address, command)
            if isinstance(answer, Response):
                return answer
            problem = answer if isinstance(answer, str) else problem
            self.stats.count("retries")
        return problem

    async def _answer(self, address: int, command: str = "") -> Response | str | None:
        """The answer of ``address`` to ``command``. The protocol has no sequence numbers:
        an answer that does not fit the command is a late answer to an earlier, timed-out
        one, and is dropped instead of being taken for this one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config["response_timeout"]
        problem: str | None = None
        while (left := deadline - loop.time()) > 0:
            frame = await self._frame(left)
            if frame is None:
                break
            if isinstance(frame, Garbage):
                problem = f"{frame.reason}: {frame.data[:40]!r}"
                continue
            try:
                response = parse_response(frame)
            except ValueError as exc:
                self.stats.count("unparseable")
                problem = str(exc)
                continue
            if response.address != address:
                self._note_alarm(response)  # another pump's unprompted alarm: keep it
                continue
            if _fits(command, response):
                return response
            self._note_alarm(response)
            self.stats.count("late_answers")
        if problem is None:
            self.stats.count("timeouts")
        return problem

    async def _frame(self, wait: float) -> bytes | Garbage | None:
        """The next frame or garbage from the line, or None if nothing came in ``wait`` s."""
        assert self._reader is not None
        while not self._frames:
            try:  # asyncio.timeout: Python 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(min(wait, _INTER_BYTE_TIMEOUT)):
                    chunk = await self._reader.read(512)
            except TimeoutError:
                if self._parser.pending:  # half a frame and then nothing: it will not come
                    junk = self._parser.discard()
                    if junk is not None:
                        self.stats.count("garbage")
                        return junk
                wait -= _INTER_BYTE_TIMEOUT
                if wait <= 0:
                    return None
                continue
            except (OSError, serial.SerialException) as exc:
                raise DriverError(f"the port failed: {exc}", source=self.url) from exc
            if not chunk:
                raise DriverError("the port was closed (unplugged?)", source=self.url)
            for item in self._parser.feed(chunk):
                if isinstance(item, Garbage):
                    self.stats.count("crc_errors" if item.reason == "CRC error" else "garbage")
                    log.debug("%s: %s", self.url, item.reason)
                self._frames.append(item)
        return self._frames.pop(0)

    def _write(self, data: bytes, writer: asyncio.StreamWriter | None = None) -> None:
        for frame in self._frames:  # answers nobody waits for any more: too late to use
            if isinstance(frame, bytes):
                with contextlib.suppress(ValueError):
                    self._note_alarm(parse_response(frame))
        self._frames.clear()
        writer = writer or self._writer
        if writer is None:
            raise DriverError("the port is not open", source=self.url)
        try:
            writer.write(data)
        except (OSError, serial.SerialException) as exc:
            raise DriverError(f"cannot write to the port: {exc}", source=self.url) from exc

    # -- turning answers into events ------------------------------------------------------

    def _unprompted(self, frame: bytes) -> list[Inbound]:
        try:
            response = parse_response(frame)
        except ValueError:
            self.stats.count("unparseable")
            return []
        self._note_alarm(response)
        pump = next((p for p in self.pumps if p.address == response.address), None)
        if pump is None or response.alarm is None:
            return []
        return [self._reading(pump, response, "0 ml/h", None, response.alarm)]

    def _note_alarm(self, response: Response) -> None:
        if response.alarm == "occlusion":
            self._latched[response.address] = "occlusion"
            log.warning(
                "%s: pump %02d reports a motor stall (occlusion)", self.url, response.address
            )
        elif response.alarm is not None:
            log.warning(
                "%s: pump %02d reports alarm %s", self.url, response.address, response.alarm
            )

    def _note_answering(self, pump: PumpMapping, answering: bool) -> None:
        if self._answering.get(pump.address, True) != answering:
            level = logging.INFO if answering else logging.WARNING
            log.log(
                level,
                "%s: pump %02d (%s) %s",
                self.url,
                pump.address,
                pump.pump,
                "answers again" if answering else "does not answer",
            )
        self._answering[pump.address] = answering

    def _reading(
        self,
        pump: PumpMapping,
        status: Response,
        rate: str,
        volume: str | None,
        alarm: str | None,
        mode: str | None = None,
    ) -> Inbound:
        if status.status == "infusing":
            self._latched.pop(pump.address, None)  # running again: the stall is over
        if alarm == "occlusion":
            self._latched[pump.address] = "occlusion"
        alarm = alarm or self._latched.get(pump.address)
        if status.status == "purging":
            alarm = alarm or "purging"
        state = (
            "alarm"
            if alarm and alarm not in ("reset", "purging")
            else _STATUS.get(status.status or "", "stopped")
        )
        self._seq[pump.address] = self._seq.get(pump.address, 0) + 1
        event: dict[str, Any] = {
            "t": format_ts(self.clock.now_us()),
            "type": "reading",
            "pump": pump.pump,
            "channel": pump.channel,
            "rate": rate,
            "status": state,
            "seq": self._seq[pump.address],
        }
        for key, value in (
            ("drug", pump.drug),
            ("concentration", pump.concentration),
            ("volume_infused", volume),
            ("alarm", alarm),
            ("mode", mode),
        ):
            if value is not None:
                event[key] = value
        return Inbound(f"{self.url}#{pump.address:02d}", orjson.dumps(event), event)

    def _problem(self, pump: PumpMapping, reason: str) -> Inbound:
        self.stats.count("invalid")
        return Inbound(
            f"{self.url}#{pump.address:02d}", reason, problem=reason, pump=(pump.pump, pump.channel)
        )


def _timing_problems(
    baud: int, mode: str, pumps: int, config: Mapping[str, Any]
) -> list[tuple[str, str]]:
    problems = []
    exchange = _EXCHANGE_BYTES * 10 / baud  # 8N1: ten bits a byte
    if config["response_timeout"] < exchange:
        problems.append(
            (
                "response_timeout",
                f"{config['response_timeout']:g} — at {baud} baud a command and its answer "
                f"take up to {exchange:.2f} s on the line; wait at least that long",
            )
        )
    safe_timeout = config["safe_timeout"]
    if safe_timeout and mode != "safe":
        problems.append(
            (
                "safe_timeout",
                f"{safe_timeout} — the pumps' communications time out is a safe-mode "
                "feature: add mode=safe to the URL, or leave safe_timeout out",
            )
        )
    # a poll asks each pump three things, each once more after garbage or silence
    poll = pumps * 3 * 2 * config["response_timeout"]
    silence = max(config["poll_interval"], poll) + poll
    if safe_timeout and safe_timeout <= silence:
        problems.append(
            (
                "safe_timeout",
                f"{safe_timeout} — with {pumps} pump(s), poll_interval "
                f"{config['poll_interval']:g} and response_timeout "
                f"{config['response_timeout']:g} a pump may hear nothing for {silence:g} s, "
                "and then alarms and stops: make safe_timeout longer than that",
            )
        )
    return problems
