"""HL7 v2 driver: an MLLP listener for pump gateways and the hospital's ADT feed.

    mllp://127.0.0.1:2575

One listener reads, on any connection:

- IHE PCD-01 ``ORU^R01`` and PCD-10 ``ORU^R42`` (pump telemetry; ``drivers/pcd01.py``),
- IHE PCD-04 ``ORU^R40`` (pump alarms; ``drivers/pcd04_in.py``),
- ``ADT^A01/A02/A03/A04/A08/A11/A13`` (the infant in each bed; ``drivers/adt.py``).

Every message is answered once the monitor has given its verdict on what came out of it:
``AA`` when every input was accepted, ``AE`` with the reasons (MSA-3, one ERR each)
otherwise - also for a message that cannot be read at all, which is logged with its bytes.
The acknowledgement is built and escaped by python-hl7. Codes come from the IHE PCD
Technical Framework (docs/protocols.md section 2), not from demo code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import hl7
import orjson
from calguard.config.options import OptionSpec
from calguard.drivers.adt import ADT_EVENTS, AdtView, translate_adt
from calguard.drivers.base import Driver, Inbound
from calguard.drivers.hl7v2 import HL7Problem, Message, hl7_time
from calguard.drivers.pcd01 import translate_pcd01
from calguard.drivers.pcd04_in import AlarmBoard, translate_pcd04
from calguard.monitor.errors import DriverError
from calguard.monitor.timeutil import to_datetime
from hl7.mllp import start_hl7_server

__all__ = [
    "HL7Problem",
    "Input",
    "MllpDriver",
    "Translation",
    "acknowledgement",
    "hl7_time",
    "translate_message",
]

log = logging.getLogger(__name__)

_READS = "ORU^R01 and ORU^R42 (PCD-01, PCD-10), ORU^R40 (PCD-04), ADT^" + "/".join(ADT_EVENTS)
_MAX_ERR = 10  # ERR segments in one acknowledgement
_MSA_TEXT = 80  # MSA-3's length in HL7 v2.5+


@dataclass
class Input:
    """One input a message gives the monitor: an event, or a problem (naming a pump
    channel when it concerns one). ``accepted`` runs once the monitor has used it."""

    obj: dict[str, Any] | None = None
    problem: str | None = None
    pump: tuple[str, str] | None = None
    accepted: Callable[[], None] | None = None

    def label(self) -> str:
        """What the input concerns, to begin its reason in an AE: "pump P7 channel A: "."""
        obj = self.obj or {}
        if obj.get("type") == "reading" or self.pump:
            pump, channel = self.pump or (obj.get("pump"), obj.get("channel"))
            return f"pump {pump} channel {channel}: "
        if obj.get("type") == "patient":
            return f"bed {obj.get('bed')}: "
        return ""


@dataclass
class Translation:
    inputs: list[Input] = field(default_factory=list)
    note: str | None = None  # said in MSA-3 of an AA (why nothing came of a message)


def translate_message(
    message: Message, board: AlarmBoard, view: AdtView, *, zone: tzinfo | None = None
) -> Translation:
    """What the monitor is given for one message; ``HL7Problem`` if it is unusable."""
    code, trigger = message.kind
    if code == "ORU" and trigger in ("R01", "R42"):
        return _telemetry(message, board, zone)
    if code == "ORU" and trigger == "R40":
        return _alarm(message, board, zone)
    if code == "ADT":
        if trigger not in ADT_EVENTS:
            return Translation(note=f"ADT^{trigger} is not used by CalGuard")
        return _admission(message, trigger, view, zone)
    shown = message.field(message.msh, 9) or "empty"
    raise HL7Problem(f"MSH-9 is {shown!r}; CalGuard reads {_READS}")


def _telemetry(message: Message, board: AlarmBoard, zone: tzinfo | None) -> Translation:
    result = translate_pcd01(message, zone=zone)
    out = Translation()
    for item in result.readings:
        reading = dict(item.reading)
        alarm = board.alarm_of(item.pump, item.channel, item.vmd, item.kind, item.alarm)
        if alarm is not None:
            reading["alarm"] = alarm

        def remember(
            r: dict[str, Any] = reading,
            v: int = item.vmd,
            k: str = item.kind,
            own: str | None = item.alarm,
        ) -> None:
            board.remember(r, v, k, own)

        out.inputs.append(Input(obj=reading, accepted=remember))
    for pump, reason in result.problems:
        out.inputs.append(Input(problem=reason, pump=pump))
    if not out.inputs:
        out.note = "no infusion data in this message: nothing CalGuard monitors"
    return out


def _alarm(message: Message, board: AlarmBoard, zone: tzinfo | None) -> Translation:
    report = translate_pcd04(message, zone=zone)
    if report is None:
        return Translation(note="not an infusion pump's alarm: nothing CalGuard monitors")
    pump, readings = board.apply(report)
    if readings:
        return Translation([Input(obj=r) for r in readings])
    if report.active:
        channel = chr(ord("A") + report.vmd - 1) if 1 <= report.vmd <= 26 else "A"
        reason = (
            f"{report.name} alarm (PCD-04) before any reading of this pump: its channels and "
            "rate are unknown; its first reading will carry the alarm"
        )
        return Translation([Input(problem=reason, pump=(pump, channel))])
    return Translation(
        note=f"the {report.name} alarm of pump {pump} ended; no reading of it is known"
    )


def _admission(message: Message, trigger: str, view: AdtView, zone: tzinfo | None) -> Translation:
    changes, notes = translate_adt(message, trigger, view, zone=zone)
    out = Translation(note="; ".join(notes) or None)
    for change in changes:

        def seen(bed: str = change.bed, patient: str | None = change.patient) -> None:
            view.note(bed, patient)

        out.inputs.append(Input(obj=change.event, accepted=seen))
    return out


# -- acknowledgements -------------------------------------------------------------------------

_ack_ids = itertools.count(1)


def _stamp(now_us: int) -> str:
    return to_datetime(now_us).strftime("%Y%m%d%H%M%S") + "+0000"


def acknowledgement(
    message: Message | None,
    code: str,
    now_us: int,
    reasons: Sequence[str] = (),
    *,
    note: str | None = None,
    control_id: str = "",
) -> str:
    """An HL7 ACK built by python-hl7: MSA-1 ``AA``/``AE`` for MSH-10 of the message, the
    reason (or a note) in MSA-3 and each reason in an ERR segment. ``message`` None: a
    message that could not be parsed, answered for ``control_id`` as far as it was found."""
    try:
        reply = _create_ack(message.raw if message is not None else None, code, control_id)
    except (IndexError, KeyError, TypeError):  # an MSH too short for python-hl7's ACK
        assert message is not None
        reply = _create_ack(None, code, message.control_id)
    reply.segment("MSH").assign_field(_stamp(now_us), 7)
    text = "; ".join(reasons) if reasons else note
    if text:
        reply.segment("MSA").assign_field(_escape(_shorten(text, _MSA_TEXT)), 3)
    for reason in reasons[:_MAX_ERR]:
        err = reply.create_segment([reply.create_field(["ERR"])])
        err.assign_field("207", 3, 1, 1)
        err.assign_field("Application internal error", 3, 1, 2)
        err.assign_field("HL70357", 3, 1, 3)
        err.assign_field("E", 4)
        err.assign_field(_escape(_shorten(reason, 250)), 8)
        reply.append(err)
    return str(reply).rstrip("\r") + "\r"


def _create_ack(source: Any, code: str, control_id: str) -> Any:
    if source is None:  # a message that could not be parsed: answered for its control id
        source = hl7.parse("MSH|^~\\&|||||||ACK^^ACK|" + _escape(control_id) + "|P|2.6")
    with warnings.catch_warnings():
        # python-hl7 0.4.5 calls datetime.utcnow(), deprecated since Python 3.12; MSH-7 is
        # set from the monitor's clock just after
        warnings.simplefilter("ignore", DeprecationWarning)
        return source.create_ack(
            code, message_id=f"CG{next(_ack_ids):010d}", application="CALGUARD", facility="CALGUARD"
        )


_ENCODING = hl7.parse("MSH|^~\\&")  # python-hl7 escapes with a message's separators


#: the acknowledgement is ASCII: typography in CalGuard's reasons is written plainly, and a
#: character beyond Latin-1 (which python-hl7's \\Xhh\\ escape cannot carry) becomes "?"
_PLAIN = str.maketrans(
    {
        "\u2014": "-",
        "\u2013": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u00b5": "u",
    }
)


def _escape(text: str) -> str:
    clean = " ".join(text.translate(_PLAIN).split())  # no CR/LF inside a field
    clean = "".join(c if ord(c) < 0x100 else "?" for c in clean)
    return str(_ENCODING.escape(clean))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _control_id(block: bytes) -> str:
    """MSH-10 of a message that could not be parsed, if it can be found at all."""
    first = block.split(b"\r", 1)[0].decode("ascii", "replace")
    fields = first.split("|")
    return fields[9] if first.startswith("MSH") and len(fields) > 9 else ""


# -- the listener ---------------------------------------------------------------------------


class MllpDriver(Driver):
    scheme = "mllp"
    options: ClassVar[dict[str, OptionSpec]] = {
        "encoding": OptionSpec(str, "utf-8", "character encoding of the messages"),
        "max_message_bytes": OptionSpec(
            int, 1 << 20, "larger messages are refused", minimum=4096, maximum=1 << 26
        ),
        "time_zone": OptionSpec(
            str,
            "",
            "the IANA time zone (e.g. Europe/Amsterdam) of senders whose timestamps carry no "
            "UTC offset; empty: such timestamps are refused",
        ),
        "ack_timeout": OptionSpec(
            float,
            10.0,
            "seconds to wait for the monitor's verdict on a message before answering AE",
            minimum=0.1,
            maximum=300.0,
        ),
    }

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.host = self.parts.hostname or "127.0.0.1"
        self.port = self.parts.port or 2575
        self.zone: tzinfo | None = None
        if self.config["time_zone"]:
            try:
                self.zone = ZoneInfo(self.config["time_zone"])
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise DriverError(
                    f"time_zone {self.config['time_zone']!r} is not an IANA time zone: {exc}",
                    source=url,
                ) from None
        self.board = AlarmBoard()  # outlives connections: a gateway reconnects
        self.view = AdtView()
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
                    await self._submit(source, b"", [Input(problem=f"MLLP framing error: {exc}")])
                    continue
                reply = await self._message(source, block)
                writer.writeblock(reply.encode("ascii", "replace"))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection ended: %s", source, exc)
        finally:
            writer.close()

    async def _message(self, source: str, block: bytes) -> str:
        """Translate, hand every input to the monitor, wait for its verdicts, answer."""
        message: Message | None = None
        try:
            message = Message(block.decode(self.config["encoding"]))
            translation = translate_message(message, self.board, self.view, zone=self.zone)
        except (UnicodeDecodeError, HL7Problem) as exc:
            reason = str(exc)
            self.stats.count("rejected")
            await self._submit(source, block, [Input(problem=reason)])
            return acknowledgement(
                message, "AE", self.clock.now_us(), [reason], control_id=_control_id(block)
            )
        refusals = await self._submit(source, block, translation.inputs)
        if refusals:
            self.stats.count("rejected")
        code = "AE" if refusals else "AA"
        return acknowledgement(message, code, self.clock.now_us(), refusals, note=translation.note)

    async def _submit(self, source: str, block: bytes, inputs: list[Input]) -> list[str]:
        """Queue the inputs for the monitor and wait for its verdict on each (the monitor
        calls ``Inbound.on_verdict`` once it has applied an input); the reasons of those it
        refused. An input with no verdict within ``ack_timeout`` counts as refused.

        The answer also waits until the inputs are durable (in the database or the local
        spool): an AA tells the gateway it may forget the message, so after an AA nothing
        may be lost, not even to a kill -9 of the monitor. No durability within
        ``ack_timeout`` is an AE: the gateway keeps the message and sends it again."""
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[str | None]] = []
        durable: asyncio.Future[None] = loop.create_future()

        def kept(f: asyncio.Future[None] = durable) -> None:
            if not f.done():
                f.set_result(None)

        for index, item in enumerate(inputs):
            verdict: asyncio.Future[str | None] = loop.create_future()
            waits.append(verdict)

            def settle(reason: str | None, f: asyncio.Future[str | None] = verdict) -> None:
                if not f.done():
                    f.set_result(reason)

            raw = orjson.dumps(item.obj) if item.obj is not None else block
            last = index == len(inputs) - 1  # durable with all before it: one wait
            await self._queue.put(  # back-pressure on the gateway when the monitor lags
                Inbound(
                    source,
                    raw,
                    item.obj,
                    item.problem,
                    item.pump,
                    on_verdict=settle,
                    on_durable=kept if last else None,
                    durable_soon=last,
                )
            )
        if not inputs:
            kept()
        try:
            async with asyncio.timeout(self.config["ack_timeout"]):
                verdicts = [await w for w in waits]
                await durable
        except TimeoutError:
            return [
                f"the monitor did not confirm the message within {self.config['ack_timeout']:g} s"
                " (its verdict, or the input kept in its log)"
            ]
        refusals = []
        for item, reason in zip(inputs, verdicts, strict=True):
            if reason is None:
                if item.accepted is not None:
                    item.accepted()
            else:
                refusals.append(f"{item.label()}{reason}")
        return refusals
