"""asyncio MQTT clients at CalGuard's guarantees: which one drains a backlog fastest?

    python benchmarks/bench_clients.py [--messages 30000] [--repeat 3]   # gmqtt: pip install gmqtt

The guarantees: QoS 1, a persistent session (MQTT 5, clean start off) and a manual
acknowledgement - a PUBACK only once the application says the message is safe (CalGuard:
once its log holds it). Here "safe" is simulated as CalGuard's log gives it: once per
burst, after the event loop has turned (a future resolved by a task of its own), so that
acknowledgements are late and batched as in the monitor. Each client parses the JSON of
every message and nothing else.

- ``aiomqtt``: aiomqtt 2.5 / paho-mqtt 2 as they ship, acknowledging by hand
  (``manual_ack_set``); takes what has arrived in bursts, as the driver does.
- ``aiomqtt-lean``: the same, on the driver's receive path (``drivers/mqtt_wire.py``).
- ``gmqtt``: gmqtt (asyncio ``Protocol``), ``optimistic_acknowledgement=False``: it sends
  the PUBACK when the ``on_message`` coroutine returns, so each message is a task that
  waits for its burst to be safe.
- ``*-auto``: each client acknowledging on receipt (not CalGuard's guarantee), for scale.

Every kind drains the same MESSAGES queued readings; medians of REPEAT rounds, with the
CPU time of this process a message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.drivers.mqtt import _Inbox
from calguard.drivers.mqtt_wire import manual_acks

from benchmarks.bench_mqtt import PREFIX, Rate, publish_backlog, session_client, subscribe_once
from tests.brokers import Broker

TOPICS = (f"{PREFIX}/pumps/+/telemetry", f"{PREFIX}/events/+")


class Safe:
    """Acknowledgements as CalGuard's log gives them: everything noted until the loop
    turns becomes safe together, in order."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []
        self.batch: asyncio.Future[None] | None = None

    def after(self, callback: Callable[[], None]) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._release)
        self.pending.append(callback)

    def _release(self) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback()

    def next_batch(self) -> asyncio.Future[None]:
        """A future that is done when the current batch is safe (gmqtt awaits it)."""
        if self.batch is None or self.batch.done():
            batch = asyncio.get_running_loop().create_future()
            self.batch = batch
            self.after(lambda: batch.set_result(None))
        return self.batch


async def aiomqtt_drain(port: int, client_id: str, rate: Rate, *, lean: bool, auto: bool) -> None:
    client = session_client(port, client_id, burst=True, lean=lean)
    inbox = _Inbox.latest
    assert inbox is not None
    if not auto and not lean:
        manual_acks(client)
    safe = Safe()
    async with client:
        for topic in TOPICS:
            await client.subscribe(topic, qos=1)
        paho = client._client
        messages = aiter(client.messages)
        while rate.count < rate.expected:
            burst = [await anext(messages), *inbox.take(256)]
            for message in burst:
                orjson.loads(message.payload)  # type: ignore[arg-type]
                rate.add()
            if not auto:
                due = [(m.mid, m.qos) for m in burst]
                safe.after(lambda due=due: [paho.ack(mid, qos) for mid, qos in due])  # type: ignore[misc]


async def gmqtt_drain(port: int, client_id: str, rate: Rate, *, auto: bool) -> None:
    import gmqtt  # type: ignore[import-not-found]

    safe = Safe()
    client = gmqtt.Client(
        client_id,
        clean_session=False,
        optimistic_acknowledgement=auto,
        session_expiry_interval=3600,
        receive_maximum=5000,
    )

    async def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        orjson.loads(payload)
        rate.add()
        if not auto:
            await safe.next_batch()  # the PUBACK goes when this returns
        return 0

    def on_message_auto(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        orjson.loads(payload)
        rate.add()
        return 0

    client.on_message = on_message_auto if auto else on_message
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
    for topic in TOPICS:
        client.subscribe(topic, qos=1)
    await rate.done.wait()
    await client.disconnect()


async def subscribe_gmqtt(port: int, client_id: str) -> None:
    import gmqtt

    client = gmqtt.Client(client_id, clean_session=False, session_expiry_interval=3600)
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
    for topic in TOPICS:
        client.subscribe(topic, qos=1)
    await asyncio.sleep(0.5)  # the SUBACKs
    await client.disconnect()


Drain = Callable[[int, str, Rate], Awaitable[None]]
KINDS: dict[str, Drain] = {
    "aiomqtt": lambda p, c, r: aiomqtt_drain(p, c, r, lean=False, auto=False),
    "aiomqtt-lean": lambda p, c, r: aiomqtt_drain(p, c, r, lean=True, auto=False),
    "gmqtt": lambda p, c, r: gmqtt_drain(p, c, r, auto=False),
    "aiomqtt-auto": lambda p, c, r: aiomqtt_drain(p, c, r, lean=False, auto=True),
    "gmqtt-auto": lambda p, c, r: gmqtt_drain(p, c, r, auto=True),
}


async def one(port: int, kind: str, run: int, messages: int) -> Rate:
    client_id = f"clients-{kind}-{run}"
    if kind.startswith("gmqtt"):
        await subscribe_gmqtt(port, client_id)
    else:
        await subscribe_once(port, client_id)
    await publish_backlog(port, messages)
    rate = Rate(messages + 1)  # the bedside message too
    await asyncio.wait_for(KINDS[kind](port, client_id, rate), 300)
    return rate


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    kinds = list(KINDS)
    try:
        import gmqtt  # noqa: F401
    except ImportError:
        print("gmqtt is not installed (pip install gmqtt): measuring aiomqtt only")
        kinds = [k for k in kinds if not k.startswith("gmqtt")]
    gc.collect()
    gc.freeze()
    rates: dict[str, list[Rate]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(Path(directory) / "mosquitto", persistence=False).start()
        try:
            for run in range(args.repeat):
                for kind in kinds:
                    rates[kind].append(await one(broker.port, kind, run, args.messages))
                print(
                    f"  round {run + 1}: "
                    + ", ".join(f"{k} {rates[k][-1].whole:,.0f}" for k in kinds),
                    flush=True,
                )
        finally:
            broker.stop()
    print(f"{args.messages} queued QoS 1 readings drained, medians of {args.repeat}:")
    for kind in kinds:
        whole = statistics.median(r.whole for r in rates[kind])
        cpu = statistics.median(r.cpu_us for r in rates[kind])
        print(f"  {kind:<14}{whole:>10,.0f} msg/s   {cpu:6.1f} µs CPU a message")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
