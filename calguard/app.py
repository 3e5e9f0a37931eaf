"""The live monitor: drivers -> pipeline -> engine -> outputs, on an injected clock.

One ``asyncio.TaskGroup`` holds a named task per driver and a clock task. Each driver's
task applies its inputs to the engine as they arrive: the engine is synchronous and
asyncio runs one task at a time, so inputs are applied in arrival order with no queue
(a queue hop cost more than the rules themselves: measured). The clock task sleeps until
the next timer is due and then feeds a ``clock`` event (logged like any input), so that
replaying a live session's log gives the same alerts the live run gave; an input that
brings a deadline earlier wakes it. ``stop()`` parks the drivers between inputs, lets the
log make what was processed durable (so that it is acknowledged upstream), then cancels
them; the caller's ``AlertLog`` context flushes the rest of the log.

Durability and the log's health are inputs like any other. An input a driver wants
acknowledged (``Inbound.on_durable``: an MQTT PUBACK) is acknowledged once the log has it
in the database or in its local spool. A log task reports the log's state as a ``monitor``
event, logged and replayable, that the engine turns into the ``log-unavailable`` alarm:
raised while rows go to the spool, escalated to high when even the spool cannot be
written, cleared once the spool is drained. Alarming never waits for the log.

The drug library is followed the same way. A library task (``calguard.library_watch``)
polls the log for what a pharmacist published to the unit and switches the engine to it
between two inputs (``switch_library``: logged, replayable, every alert line after it
carrying the new version); a monitor started on a library no pharmacist approved reports
so as a ``monitor`` event (the ``library-unapproved`` alarm) until an approved one is
published. The sinks' presence says which library runs.

So is the monitor's own lag behind its inputs: once a second a lag task reads the
engine's receive-side sensor and reports, as a ``monitor`` event, whether the monitor runs
behind its inputs and by how much (``calguard.lag``: the ``monitor-lagging`` alarm, and
``telemetry-stale`` held meanwhile for readings that are queued, not missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence

import orjson

from calguard.alerts.accounts import AccountError
from calguard.alerts.log import AlertLog, LogStatus
from calguard.alerts.sinks.base import MAX_COMMAND_BYTES, Delivery, Sink
from calguard.alerts.snapshots import PendingSnapshot, save_snapshot, snapshot_loop
from calguard.drivers.base import Driver, Inbound
from calguard.guard import CommandGuard
from calguard.lag import PERIOD_S as LAG_PERIOD_S
from calguard.lag import LagReporter
from calguard.library_watch import LibraryWatch, switch_input
from calguard.monitor.clock import Clock
from calguard.monitor.engine import Engine
from calguard.monitor.events import ALARM_ACTIONS
from calguard.monitor.library import Library
from calguard.monitor.rules.system import LAG_KEY, LOG_KEY, UNAPPROVED_KEY
from calguard.monitor.snapshot import to_snapshot
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import AlertTransition
from calguard.pipeline import Pipeline
from calguard.tokens import TokenError

__all__ = ["Monitor"]

log = logging.getLogger(__name__)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait; cancel again a task that has not stopped (a cancellation can be
    lost in a race inside a library), so that stopping never hangs."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning("re-cancelling %s", ", ".join(t.get_name() for t in pending))


Output = Callable[[AlertTransition, str], None]
_CHECKPOINT_EVERY = 500  # inputs between chances for the log writer to catch up
_NEVER = 1 << 62
#: what a command may carry into its action event (event-format: actions on alarms); the
#: person (``by``) and ``role`` are the verified token's, never the sender's
_COMMAND_FIELDS = ("alert", "reason", "duration", "note")
_DRIVER_ACTION = (
    "an action on an alarm is taken only as a command with a signed token (calguard login, "
    "then calguard ack|pause|reset|override), never from a device's or a file's input"
)
_OWN_CONDITION = (
    "a monitor event states the monitor's own condition (its log, its library, its lag); it "
    "is never taken from a device's or a file's input"
)
_SINK_FLUSH_S = 3.0  # at a stop, how long the sinks may take to deliver what they hold
_LOG_FLUSH_S = 5.0  # at a stop, how long the log may take to make the last inputs durable
_DETAIL_CHARS = 200  # the longest detail a monitor event carries (event-format bound)


class Monitor:
    def __init__(
        self,
        library: Library,
        drivers: Sequence[Driver],
        *,
        clock: Clock,
        log: AlertLog | None = None,
        outputs: Sequence[Output] = (),
        engine: Engine | None = None,
        sinks: Sequence[Sink] = (),
        guard: CommandGuard | None = None,
        file_actions: bool = False,
        library_watch: LibraryWatch | None = None,
        approved: bool = True,
    ) -> None:
        self.library = library
        self.drivers = list(drivers)
        self.clock = clock
        self.log = log
        self.outputs = list(outputs)
        self.engine = engine or Engine(library)
        self.pipeline = Pipeline(self.engine, log)
        self.sinks = list(sinks)
        for sink in self.sinks:
            sink.on_undelivered = self._undelivered
            sink.bed_states = self._bed_states
            sink.presence = self._running_library
            if sink.takes_commands:
                sink.on_command = self.command
                sink.before_command = self.settle_command
        if guard is None and any(sink.takes_commands for sink in self.sinks):
            guard = CommandGuard.of_log(log)  # the accounts of this log's database
        #: checks each command's token and account; None: this monitor takes no commands
        self.guard = guard
        #: actions on alarms in the drivers' inputs are applied (a demo's or a training
        #: scenario's files); live, people act only by commands that prove who they are
        self.file_actions = file_actions
        self.processed = 0
        self._stopping = asyncio.Event()
        self._timer_moved = asyncio.Event()
        self._sleeping_until = _NEVER  # the deadline the clock task sleeps towards
        self._running = False
        self._stamp_second, self._stamp_prefix = -1, ""
        self._parked = asyncio.Event()  # never set: where drivers wait once stopping
        active = self.engine.active.get(LOG_KEY)
        #: what the engine was last told of the log: (unavailable, still recorded)
        self._log_reported = (active is not None, active is None or active.priority != "high")
        #: follows what is published to the unit (None: runs the library it started with)
        self.library_watch = library_watch
        self._approved = approved
        #: how often a snapshot of the engine and alarm state is logged (calguard.alerts
        #: .snapshots), and at a clean stop; 0: never. ``calguard run`` sets it for a live
        #: session, whose restart begins from the latest one
        self.snapshot_period_s = 0.0
        #: what the engine was last told: the library runs unapproved
        self._unapproved_reported = UNAPPROVED_KEY in self.engine.active
        #: whether it runs behind its inputs, and by how much (calguard.lag)
        lag_us = self.engine.rules.ctx.input_lag_us
        lagging = LAG_KEY in self.engine.active
        self._lag = LagReporter(
            self.engine.input_lag, active=lagging, lag_us=lag_us, speed=clock.speed
        )

    def stop(self) -> None:
        """Ask ``run`` to finish: the drivers stop between two inputs."""
        self._stopping.set()

    def take_snapshot(self) -> PendingSnapshot | None:
        """The engine's and the alarm layer's state now, between two inputs (the event loop
        runs one thing at a time), with the last input it includes; None before any."""
        log_ = self.log
        if log_ is None or log_.session_id is None or self.engine.now is None:
            return None
        alarms = self.pipeline.alarms
        state = to_snapshot(self.engine, alarms.state() if alarms is not None else None)
        return PendingSnapshot(state, log_.session_id, log_.input_seq)

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("the monitor is already running")
        self._running = True
        self._report_unapproved(not self._approved)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._feed(driver), name=f"driver {driver.url}")
                    for driver in self.drivers
                ]
                tasks.append(group.create_task(self._clock_loop(), name="clock"))
                tasks.append(group.create_task(self._watch_lag(), name="input lag"))
                if self.log is not None:
                    tasks.append(group.create_task(self._watch_log(self.log), name="log state"))
                if self.guard is not None:
                    tasks.append(group.create_task(self.guard.run(), name="accounts"))
                if self.library_watch is not None:
                    watch = self.library_watch.run(lambda: self.engine.library, self.switch_library)
                    tasks.append(group.create_task(watch, name="library"))
                if self.log is not None and self.snapshot_period_s:
                    loop = snapshot_loop(
                        self.log,
                        self.take_snapshot,
                        self.snapshot_period_s,
                        inputs=lambda: self.processed,
                    )
                    tasks.append(group.create_task(loop, name="snapshots"))
                senders = [group.create_task(s.run(), name=f"sink {s.url}") for s in self.sinks]
                await self._stopping.wait()
                if self.log is not None:  # what was processed is acknowledged before the
                    with contextlib.suppress(TimeoutError):  # drivers' connections close
                        async with asyncio.timeout(_LOG_FLUSH_S):
                            await self.log.flush()
                    if self.snapshot_period_s:  # a clean stop: the restart begins here
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(_LOG_FLUSH_S):
                                await save_snapshot(self.log, self.take_snapshot)
                await _cancel(tasks)
                for sink in self.sinks:  # what the last inputs raised still goes out
                    await sink.flushed(within=_SINK_FLUSH_S)
                await _cancel(senders)
        finally:
            self._running = False

    async def _feed(self, driver: Driver) -> None:
        """A driver's inputs, a burst (what one read gave) at a time: each input applied,
        answered and handed to the log for its acknowledgement, in order. What concerns
        the other tasks - an earlier deadline for the clock task, the log's back-pressure -
        is looked at once per burst, before this task next waits: none of them runs
        before that anyway."""
        async with contextlib.aclosing(driver.bursts()) as bursts:
            async for burst in bursts:
                before = self.processed
                for item in burst:
                    self._process(item)
                    self.processed += 1
                    if item.on_verdict is not None:
                        item.on_verdict(self.pipeline.refusal)  # the word on this very input
                    if item.on_durable is not None:
                        if self.log is not None:
                            self.log.after_durable(item.on_durable, soon=item.durable_soon)
                        else:
                            item.on_durable()  # no log was asked for: nothing to wait for
                    if self._stopping.is_set():
                        self._timers_moved()
                        await self._parked.wait()  # stopping: take no more; run() cancels us
                self._timers_moved()
                if self.log is not None and (
                    self.processed // _CHECKPOINT_EVERY != before // _CHECKPOINT_EVERY
                ):
                    await self.log.checkpoint()

    def _timers_moved(self) -> None:
        due = self.pipeline.next_due()
        if due is not None and due < self._sleeping_until:
            self._timer_moved.set()  # an earlier deadline: the clock task must know

    async def _clock_loop(self) -> None:
        clock, pipeline = self.clock, self.pipeline
        while True:
            due = pipeline.next_due()
            self._sleeping_until = _NEVER if due is None else due
            self._timer_moved.clear()
            delay = None if due is None else max(0.0, (due - clock.now_us()) / 1e6 / clock.speed)
            try:  # asyncio.timeout: Python 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(delay):
                    await self._timer_moved.wait()
            except TimeoutError:
                self._tick(due)

    async def _watch_log(self, alert_log: AlertLog) -> None:
        status = alert_log.status
        self._report_log(status)
        while True:
            status = await alert_log.status_changed(status)
            self._report_log(status)

    def _report_log(self, status: LogStatus) -> None:
        """The log's state, as an input of the monitor's own: logged like any input (in the
        spool while the database is away), so a replay of the log gives the same alarm."""
        state = (status.state != "ok", status.state != "unrecorded")
        if state == self._log_reported:
            return
        self._log_reported = state
        event: dict[str, object] = {
            "t": format_ts(self.clock.now_us()),
            "type": "monitor",
            "condition": "log-unavailable",
            "active": state[0],
            "recorded": state[1],
        }
        detail = "".join(c for c in status.reason or "" if c.isprintable()).strip()
        if state[0] and detail:
            event["detail"] = detail[:_DETAIL_CHARS]
        if not state[1]:
            log.critical("NOTHING IS BEING RECORDED: %s; monitoring goes on", status.reason)
        self.emit(self.pipeline.feed_object(event, raw=orjson.dumps(event), source="monitor"))

    async def _watch_lag(self) -> None:
        """Once a period: is the monitor behind its inputs? Said as a ``monitor`` event of
        its own (logged: a replay raises, holds and clears monitor-lagging as we did)."""
        while True:
            await asyncio.sleep(LAG_PERIOD_S / self.clock.speed)
            connected = all(driver.state == "connected" for driver in self.drivers)
            event = self._lag.update(self.clock.now_us(), connected, self.engine.library)
            if event is not None:
                raw = orjson.dumps(event)
                self.emit(self.pipeline.feed_object(event, raw=raw, source="monitor"))
                self._timer_moved.set()  # a shorter hold brings stale deadlines earlier

    def switch_library(self, library: Library) -> bool:
        """Run ``library`` from now on (a pharmacist published it to this unit): logged as
        an input of the monitor's own, so a replay switches too; the alarm of an unapproved
        library ends (only an approved library is published). False, with the reason
        logged, when the engine cannot take it: the running library stays."""
        running = self.engine.library
        now = self.clock.now_us()
        obj = switch_input(library, running, now)
        transitions = self.pipeline.switch(library, raw=orjson.dumps(obj), source="library", t=now)
        self.emit(transitions)
        refusal = self.pipeline.refusal
        if refusal is not None:
            log.error("library %s not taken: %s", library.version, refusal)
            return False
        log.warning("now running library %s (was %s)", library.version, running.version)
        self.library = library
        self._report_unapproved(False)
        self._timer_moved.set()  # the deadlines are the new library's
        for sink in self.sinks:
            sink.announce()
        return True

    def _report_unapproved(self, unapproved: bool) -> None:
        """Whether the library runs without a pharmacist's approval, as an input of the
        monitor's own (logged: a replay raises and clears the alarm as the live run did)."""
        if unapproved == self._unapproved_reported:
            return
        self._unapproved_reported = unapproved
        event: dict[str, object] = {
            "t": format_ts(self.clock.now_us()),
            "type": "monitor",
            "condition": "library-unapproved",
            "active": unapproved,
            "detail": self.engine.library.version,
        }
        if unapproved:
            log.critical(
                "the drug library %s was never approved by a pharmacist: monitoring goes on, "
                "with the library-unapproved alarm, until an approved one is published",
                self.engine.library.version,
            )
        self.emit(self.pipeline.feed_object(event, raw=orjson.dumps(event), source="monitor"))

    def _running_library(self) -> dict[str, object]:
        """What the sinks' presence says this monitor runs."""
        library = self.engine.library
        return {"library": library.version, "profile": library.profile}

    def _process(self, item: Inbound) -> None:
        now = self.clock.now_us()
        if item.problem is not None:
            transitions = self.pipeline.feed_problem(
                item.raw, item.problem, source=item.source, pump=item.pump, t=now
            )
        elif isinstance(item.obj, dict) and item.obj.get("type") == "monitor":
            # the monitor's own condition (its log, its library, its lag) is the monitor's
            # to state: one from outside could hold every telemetry-stale or end an alarm.
            # Kept as a wire problem: never warm-started from, replayed as refused
            transitions = self.pipeline.feed_problem(
                item.raw, _OWN_CONDITION, source=item.source, t=now
            )
        elif not self.file_actions and _is_action(item.obj):
            assert isinstance(item.obj, dict)
            transitions = self.pipeline.refuse_command(
                item.raw, _DRIVER_ACTION, action=str(item.obj["type"]), source=item.source, t=now
            )
        elif isinstance(item.obj, dict):
            # the monitor's clock is the time: stamp the input on arrival (over whatever a
            # sender wrote there) and log it so stamped, so a replay decides as we did
            obj = {**item.obj, "received": self._stamp(now)}
            obj.pop("clock_speed", None)  # ours to say, like "received"
            if self.clock.speed != 1:  # a training clock: a delay of the machine is
                obj["clock_speed"] = self.clock.speed  # speed x longer in ward time
            transitions = self.pipeline.feed_object(
                obj, raw=orjson.dumps(obj), source=item.source, received_us=now
            )
        else:
            transitions = self.pipeline.feed_object(item.obj, raw=item.raw, source=item.source)
        self.emit(transitions)

    def _stamp(self, us: int) -> str:
        """``format_ts`` for the receive stamp of every input, with the whole second's
        text kept: formatting a timestamp from scratch cost more than the rules do."""
        second, micro = divmod(us, 1_000_000)
        if second != self._stamp_second:
            self._stamp_second, self._stamp_prefix = second, format_ts(second * 1_000_000)[:-1]
        return f"{self._stamp_prefix}.{micro:06d}Z" if micro else f"{self._stamp_prefix}Z"

    def _tick(self, due: int | None) -> None:
        """A timer is due: move the engine's time on with a (logged) clock event."""
        now = self.clock.now_us()
        if due is None or self.engine.now is None or now < due:
            return
        event = {"t": format_ts(now), "type": "clock"}
        self.emit(self.pipeline.feed_object(event, raw=orjson.dumps(event), source="clock"))

    async def settle_command(self, raw: bytes) -> None:
        """Before ``command``: a valid token of an account not read yet waits for its lookup."""
        if self.guard is None or len(raw) > MAX_COMMAND_BYTES:
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and "token" in obj:
            await self.guard.settle(obj["token"])

    def command(self, raw: bytes, source: str) -> str | None:
        """A person's command from a central station (``{"action": "ack", "alert": ...,
        "token": ...}``). The token is checked first (``CommandGuard``: signature, key,
        expiry, the account and its role); the action then names the token's account as
        ``by`` and its ``role``, is stamped with the monitor's clock and goes through the
        pipeline like any input (logged, audited, replayable), where the library's
        permissions decide on the role, as a replay will. Returns None if applied, else
        the reason. A refused command is logged without its token: a credential is never
        written to the log."""
        if len(raw) > MAX_COMMAND_BYTES:
            obj, why = None, f"a command of {len(raw)} bytes: at most {MAX_COMMAND_BYTES} are read"
        else:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                obj, why = None, f"not JSON: {exc}"
            else:
                why = "a JSON object is expected"
        if not isinstance(obj, dict):
            # what cannot be read as a command is kept by its size and digest: it may be
            # huge, and it may hold a token that must not reach the log
            digest = hashlib.sha256(raw).hexdigest()
            raw = orjson.dumps({"command_bytes": len(raw), "sha256": digest})
        if isinstance(obj, dict):
            event, why = self._action(obj)
            if event is not None:
                self.emit(self.pipeline.feed_object(event, raw=orjson.dumps(event), source=source))
                self._timer_moved.set()  # a pause or override brings a deadline
                return self.pipeline.refusal  # the verdict on this very command
            if "token" in obj:
                raw = orjson.dumps({**obj, "token": "withheld"})
            action = obj.get("action")
            if isinstance(action, str) and action in ALARM_ACTIONS:  # audited as refused
                now = self.clock.now_us()
                self.emit(
                    self.pipeline.refuse_command(raw, why, action=action, source=source, t=now)
                )
                return why
        self.emit(self.pipeline.feed_problem(raw, why, source=source, t=self.clock.now_us()))
        return why

    def _action(self, command: dict[str, object]) -> tuple[dict[str, object] | None, str]:
        """The action event of a command whose token holds, or None and why not."""
        action = command.get("action")
        if action not in ALARM_ACTIONS:
            return None, f"action {action!r}: one of {', '.join(ALARM_ACTIONS)} is expected"
        if "by" in command:
            return None, (
                'a command names no one in "by": who acts is the account you log in as '
                "(calguard login)"
            )
        if self.guard is None:
            return None, "this monitor takes no commands (it checks no accounts)"
        try:
            person = self.guard.check(command.get("token"))
        except (TokenError, AccountError) as exc:
            return None, str(exc)
        # only the fields an action has: a "received", "clock_speed" or "t" in a command
        # is the sender's to claim, never ours to apply (the monitor's clock is the time)
        fields = {k: v for k, v in command.items() if k in _COMMAND_FIELDS}
        now = format_ts(self.clock.now_us())
        event = {"t": now, "type": action, **fields, "by": person.sub, "role": person.role}
        return {**event, "received": now}, ""

    def _undelivered(self, sink: Sink, item: Delivery, reason: str) -> None:
        log.error("%s: alarm line not delivered (%s): %s", sink.url, reason, item.line)
        if self.log is not None:
            self.log.add_undelivered(sink.url, item.tr.t, reason, item.line)

    def emit(self, transitions: list[AlertTransition]) -> None:
        """Log the lines, print them and hand them to every sink."""
        for tr in transitions:
            line = tr.to_json()
            if self.log is not None:
                self.log.add_transition(tr, line)
            for output in self.outputs:
                try:
                    output(tr, line)
                except Exception:  # an output must never stop the monitor
                    log.exception("an alert output failed")
            if self.sinks:
                item = self._delivery(tr, line)
                for sink in self.sinks:
                    sink.submit(item)

    def _bed_states(self) -> dict[str, tuple[dict[str, object], ...]]:
        """Every bed's active alarms now (beds without one are absent)."""
        alarms = self.pipeline.alarms
        if alarms is None:
            return {}
        states: dict[str, list[dict[str, object]]] = {}
        for a in alarms.active():
            bed = a.last.description.bed or "unassigned"
            states.setdefault(bed, []).append(a.snapshot(alarms.policy.audiences))
        return {bed: tuple(state) for bed, state in states.items()}

    def _delivery(self, tr: AlertTransition, line: str) -> Delivery:
        bed = tr.description.bed
        alarms = self.pipeline.alarms
        state: tuple[dict[str, object], ...] = ()
        if alarms is not None:
            audiences = alarms.policy.audiences
            state = tuple(a.snapshot(audiences) for a in alarms.of_bed(bed))
        return Delivery(tr, line, state, bed or "unassigned")


def _is_action(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("type") in ALARM_ACTIONS
