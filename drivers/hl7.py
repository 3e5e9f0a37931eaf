"""HL7 v2 driver: an MLLP listener for IHE PCD-01 ``ORU^R01`` from pump gateways.

    mllp://127.0.0.1:2575

Clinical pumps (BD Alaris, B. Braun Space, ...) reach hospital systems through their vendor
gateways as HL7 v2.6 ``ORU^R01`` (profile IHE_PCD_001) over MLLP. Each OBX row carries one
metric: OBX-3 its MDC code, OBX-4 the containment path ``<MDS>.<VMD>.<channel>.<metric>``,
OBX-5 the value, OBX-6 the MDC unit. The VMD (one infusion module of the pump) is the pump
channel CalGuard knows: VMD 1 is channel A, VMD 2 channel B. The pump is MSH-3's
universal id (EUI-64) or, without one, its namespace id.

Every message is answered: ``AA`` when it became readings, ``AE`` with the reason
otherwise (also logged; when the pump is known the reason raises telemetry-invalid).
Codes come from the IHE PCD Technical Framework (protocols.md section 2), not from demo code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import hl7
import orjson
from calguard.config.options import OptionSpec
from calguard.drivers.base import Driver, Inbound
from calguard.monitor.errors import DriverError
from calguard.monitor.timeutil import format_ts
from hl7.mllp import start_hl7_server

__all__ = ["MllpDriver", "Pcd01", "ack", "translate_pcd01"]

log = logging.getLogger(__name__)

# OBX-3 codes (IHE PCD TF vol. 2 rev. 9.0, RTMMS)
MDC_PUMP_INFUSING_STATUS = "184519"
MDC_FLOW_FLUID_PUMP = "157784"  # programmed rate
MDC_VOL_FLUID_DELIV_TOTAL = "157993"
MDC_DRUG_NAME_LABEL = "184514"
MDC_CONC_DRUG = "157760"
# OBX-6 unit codes -> unit strings CalGuard's units module reads
MDC_UNITS = {
    "265266": "ml/h",  # MDC_DIM_MILLI_L_PER_HR
    "265234": "ml/min",  # MDC_DIM_MILLI_L_PER_MIN
    "263762": "ml",  # MDC_DIM_MILLI_L
    "264306": "mg/ml",  # MDC_DIM_MILLI_G_PER_ML
    "263875": "kg",  # MDC_DIM_KILO_G
}
_HL7_TS = re.compile(r"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)?(?:\.(\d{1,4}))?([+-]\d{4})?\Z")


class HL7Problem(Exception):
    """A message CalGuard cannot use; the text goes into the AE acknowledgement."""


@dataclass
class Pcd01:
    """What one PCD-01 message said: its readings, and per-channel problems."""

    control_id: str
    sender: tuple[str, str]
    pump: str
    bed: str | None
    readings: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (channel, reason)


def hl7_time(value: str) -> str:
    """``20261121080310+0000`` -> ``2026-11-21T08:03:10+00:00``; an offset is required."""
    m = _HL7_TS.match(value.strip())
    if m is None:
        raise HL7Problem(f"{value!r} is not an HL7 timestamp (YYYYMMDDHHMM[SS][+ZZZZ])")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    if offset is None:
        raise HL7Problem(
            f"the time {value!r} has no UTC offset; CalGuard does not guess time zones"
        )
    frac = f".{fraction}" if fraction else ""
    return f"{year}-{month}-{day}T{hour}:{minute}:{second or '00'}{frac}{offset[:3]}:{offset[3:]}"


def _components(value: str, separator: str) -> list[str]:
    return value.split(separator)


def translate_pcd01(text: str) -> Pcd01:
    """Map an IHE PCD-01 ORU^R01 to readings; ``HL7Problem`` if the message is unusable."""
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except Exception as exc:  # python-hl7 raises plain ParseException/KeyError/IndexError
        raise HL7Problem(f"not an HL7 v2 message ({exc.__class__.__name__})") from None
    comp = str(msh(2))[0] if str(msh(2)) else "^"

    def f(segment: Any, n: int) -> str:
        try:
            return str(segment(n))
        except (IndexError, KeyError):
            return ""

    control_id = f(msh, 10)
    kind = _components(f(msh, 9), comp)
    if kind[:2] != ["ORU", "R01"]:
        raise HL7Problem(f"MSH-9 is {f(msh, 9)!r}; CalGuard reads ORU^R01 (IHE PCD-01)")
    sender_ids = _components(f(msh, 3), comp)
    pump = (sender_ids[1] if len(sender_ids) > 1 and sender_ids[1] else sender_ids[0]).strip()
    if not pump:
        raise HL7Problem("MSH-3 names no sending device")
    sent = hl7_time(f(msh, 7))
    bed = None
    with contextlib.suppress(KeyError, IndexError):
        location = _components(f(message.segment("PV1"), 3), comp)
        bed = location[2] if len(location) > 2 and location[2] else None
    observed = sent
    with contextlib.suppress(KeyError, IndexError):
        obr_time = f(message.segment("OBR"), 7)
        if obr_time:
            observed = hl7_time(obr_time)
    result = Pcd01(control_id, (f(msh, 3), f(msh, 4)), pump, bed)
    channels: dict[str, dict[str, Any]] = {}
    for obx in message.segments("OBX") if _has(message, "OBX") else []:
        code = _components(f(obx, 3), comp)[0]
        path = f(obx, 4).split(".")
        if len(path) < 2 or not path[1].isdigit() or path[1] == "0":
            continue  # the MDS itself
        channel = chr(ord("A") + int(path[1]) - 1) if 1 <= int(path[1]) <= 26 else path[1]
        slot = channels.setdefault(channel, {})
        value = message.unescape(f(obx, 5))
        unit = _unit(_components(f(obx, 6), comp))
        if code == MDC_PUMP_INFUSING_STATUS:
            state = value.split(comp)[-1].strip().lower()
            slot["status"] = "infusing" if state == "pump-status-infusing" else "stopped"
        elif code == MDC_FLOW_FLUID_PUMP:
            slot["rate"] = _quantity(value, unit, code)
        elif code == MDC_VOL_FLUID_DELIV_TOTAL:
            slot["volume_infused"] = _quantity(value, unit, code)
        elif code == MDC_CONC_DRUG:
            slot["concentration"] = _quantity(value, unit, code)
        elif code == MDC_DRUG_NAME_LABEL and value.strip():
            slot["drug"] = value.strip()
        if f(obx, 14):
            slot.setdefault("t", hl7_time(f(obx, 14)))
    for channel, slot in sorted(channels.items()):
        if not slot:
            continue
        if "rate" not in slot:
            result.problems.append(
                (channel, "no programmed rate (MDC_FLOW_FLUID_PUMP) for this channel")
            )
            continue
        reading = {
            "t": slot.pop("t", observed),
            "type": "reading",
            "pump": pump,
            "channel": channel,
        }
        reading.update(slot)
        if isinstance(reading["rate"], HL7Problem):
            result.problems.append((channel, str(reading["rate"])))
            continue
        bad = [v for v in reading.values() if isinstance(v, HL7Problem)]
        if bad:
            result.problems.append((channel, str(bad[0])))
            continue
        result.readings.append(reading)
    if not result.readings and not result.problems:
        raise HL7Problem("no pump channel with observations in this message")
    return result


def _has(message: Any, name: str) -> bool:
    try:
        message.segments(name)
    except KeyError:
        return False
    return True


def _unit(parts: list[str]) -> str | None:
    code = parts[0] if parts else ""
    if code in MDC_UNITS:
        return MDC_UNITS[code]
    if len(parts) >= 6 and parts[5] == "UCUM" and parts[3]:
        return parts[3]  # the UCUM alternate; the units module checks it
    return None


def _quantity(value: str, unit: str | None, code: str) -> str | HL7Problem:
    if unit is None:
        return HL7Problem(f"observation {code} has a unit CalGuard does not know")
    return f"{value.strip()} {unit}"


_escape = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}
)
_ack_ids = itertools.count(1)


def ack(
    code: str, control_id: str, sender: tuple[str, str], now: str, reason: str | None = None
) -> str:
    """An HL7 v2.6 ACK: MSA-1 AA/AE/AR for MSH-10 of the message; the reason in MSA-3 and ERR."""
    stamp = now.replace("-", "").replace(":", "").replace("T", "")[:14] + "+0000"
    segments = [
        f"MSH|^~\\&|CALGUARD|CALGUARD|{sender[0]}|{sender[1]}|{stamp}||ACK^R01^ACK|"
        f"CG{next(_ack_ids):08d}|P|2.6",
        f"MSA|{code}|{control_id.translate(_escape)}"
        + (f"|{reason.translate(_escape)}" if reason else ""),
    ]
    if reason:
        segments.append(
            f"ERR|||207^Application internal error^HL70357|E||||{reason.translate(_escape)}"
        )
    return "\r".join(segments) + "\r"


class MllpDriver(Driver):
    scheme = "mllp"
    options: ClassVar[dict[str, OptionSpec]] = {
        "encoding": OptionSpec(str, "utf-8", "character encoding of the messages"),
        "max_message_bytes": OptionSpec(
            int, 1 << 20, "larger messages are refused", minimum=4096, maximum=1 << 26
        ),
    }

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.host = self.parts.hostname or "127.0.0.1"
        self.port = self.parts.port or 2575
        self._server: asyncio.Server | None = None
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=10_000)
        self._connections: set[asyncio.Task[None]] = set()

    async def _open(self) -> None:
        try:
            self._server = await start_hl7_server(
                self._connected,
                self.host,
                self.port,
                limit=self.config["max_message_bytes"],
                encoding=self.config["encoding"],
            )
        except OSError as exc:
            raise DriverError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}", source=self.url
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one the OS chose

    async def _read(self) -> list[Inbound]:
        return [await self._queue.get()]

    async def _close(self) -> None:
        server, self._server = self._server, None
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            server.close()
            await server.wait_closed()

    def _connected(self, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        return self._serve(reader, writer)  # type: ignore[return-value]  # start_hl7_server awaits it

    async def _serve(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername")
        source = f"{self.url}#{peer[0]}:{peer[1]}" if peer else self.url
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    return  # the gateway hung up
                except (ValueError, hl7.mllp.InvalidBlockError) as exc:
                    self.stats.count("bad_frames")
                    await self._put(Inbound(source, b"", problem=f"MLLP framing error: {exc}"))
                    continue
                reply = await self._message(source, block)
                writer.writeblock(reply.encode("ascii", "replace"))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection ended: %s", source, exc)
        finally:
            writer.close()

    async def _message(self, source: str, block: bytes) -> str:
        now = format_ts(self.clock.now_us())
        try:
            text = block.decode(self.config["encoding"])
            message = translate_pcd01(text)
        except (UnicodeDecodeError, HL7Problem) as exc:
            reason = str(exc)
            self.stats.count("rejected")
            await self._put(Inbound(source, block, problem=reason))
            control = _control_id(block)
            return ack("AE", control, ("", ""), now, reason)
        for reading in message.readings:
            await self._put(Inbound(source, orjson.dumps(reading), reading))
        for channel, reason in message.problems:
            await self._put(Inbound(source, block, problem=reason, pump=(message.pump, channel)))
        if message.problems and not message.readings:
            return ack(
                "AE",
                message.control_id,
                message.sender,
                now,
                "; ".join(r for _, r in message.problems),
            )
        return ack("AA", message.control_id, message.sender, now)

    async def _put(self, item: Inbound) -> None:
        await self._queue.put(item)  # back-pressure on the gateway when the monitor lags


def _control_id(block: bytes) -> str:
    """MSH-10 of a message that could not be parsed, if it can be found at all."""
    first = block.split(b"\r", 1)[0].decode("ascii", "replace")
    fields = first.split("|")
    return fields[9] if first.startswith("MSH") and len(fields) > 9 else ""
