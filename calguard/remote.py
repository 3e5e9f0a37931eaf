"""``calguard alerts`` and ``calguard ack|pause|reset|override``: a central station's view
and actions, over the MQTT topics of the monitor's alarm sink (protocols.md section 3)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from urllib.parse import urlsplit

import aiomqtt
import orjson

from calguard.alerts.sinks.mqtt import presence_topic

__all__ = ["send_action", "show_alerts"]

log = logging.getLogger("calguard")
_RANK = {"high": 0, "medium": 1, "low": 2}
_QUIET_S = 0.3  # after the presence, this long without a message and all are in
_PRESENCE_S = 5.0  # how long the retained presence may take to arrive


def _target(broker: str) -> tuple[str, int, str]:
    parts = urlsplit(broker)
    return parts.hostname or "127.0.0.1", parts.port or 1883, parts.path.strip("/")


def _client(host: str, port: int) -> aiomqtt.Client:
    return aiomqtt.Client(
        host,
        port,
        identifier=f"calguard-cli-{uuid.uuid4().hex[:8]}",
        username=os.environ.get("CALGUARD_MQTT_USER"),
        password=os.environ.get("CALGUARD_MQTT_PASSWORD"),
        timeout=10,
    )


async def show_alerts(broker: str, bed: str | None, priority: str | None, as_json: bool) -> int:
    host, port, prefix = _target(broker)
    alarms: dict[str, list[dict[str, object]]] = {}
    presence: object = None
    try:
        async with _client(host, port) as client:
            # the presence is subscribed last: the broker sends each subscription's retained
            # messages in order, so once it is here, every bed's state is too. Wait for it
            # as long as a loaded machine may need; only a missing one waits the whole time.
            await client.subscribe(f"{prefix}/alerts/active/+", qos=1)
            await client.subscribe(presence_topic(prefix), qos=1)
            messages = aiter(client.messages)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _PRESENCE_S
            while True:
                wait = _QUIET_S if presence is not None else deadline - loop.time()
                try:
                    message = await asyncio.wait_for(anext(messages), max(wait, 0.0))
                except TimeoutError:
                    break
                if not message.retain:
                    continue
                payload = _payload(message.payload)
                if str(message.topic) == presence_topic(prefix):
                    presence = payload
                elif isinstance(payload, list):
                    alarms[str(message.topic).rsplit("/", 1)[-1]] = payload
    except aiomqtt.MqttError as exc:
        log.error("cannot reach the broker %s:%s: %s", host, port, exc)
        return 3
    offline = _offline(presence, prefix)
    if offline is not None:
        # a dead monitor must never look like a quiet ward
        log.error("%s", offline)
        return 3
    rows = [
        a
        for name, items in sorted(alarms.items())
        for a in items
        if (bed is None or name == bed) and (priority is None or a.get("priority") == priority)
    ]
    rows.sort(key=lambda a: (_RANK.get(str(a.get("priority")), 3), str(a.get("t"))))
    if as_json:
        for a in rows:
            sys.stdout.write(orjson.dumps(a).decode() + "\n")
        return 0
    if not rows:
        print(f"no active alarms{f' at {bed}' if bed else ''} (monitor online under {prefix!r})")
        return 0
    print(
        f"{'PRIORITY':<9}{'SINCE':<10}{'ALERT':<10}{'STATE':<14}{'RULE':<26}{'BED':<5}{'TO':<14}MESSAGE"
    )
    for a in rows:
        print(
            f"{str(a.get('priority', '')).upper():<9}{str(a.get('t', ''))[11:19]:<10}"
            f"{a.get('alert', ''):<10}{a.get('state', ''):<14}{a.get('rule', ''):<26}"
            f"{a.get('bed', '-') or '-':<5}{a.get('audience', ''):<14}{a.get('message', '')}"
        )
    return 0


def _payload(raw: object) -> object:
    try:
        return orjson.loads(raw if isinstance(raw, bytes | str) else b"")
    except orjson.JSONDecodeError:
        return None


def _offline(presence: object, prefix: str) -> str | None:
    """Why the alarm states under ``prefix`` cannot be taken as the ward's, or None."""
    if not isinstance(presence, dict):
        return (
            f"no monitor publishes alarms under {prefix!r}: none is running with an mqtt "
            "sink there, or the prefix is wrong"
        )
    if presence.get("online") is True:
        return None
    if presence.get("lost"):
        return (
            f"monitor offline under {prefix!r}: it lost its broker connection "
            f"(it had been online since {presence.get('online_since', '?')}); "
            "the alarms shown by stations are not current"
        )
    return f"monitor offline under {prefix!r} since {presence.get('since', '?')}"


async def send_action(broker: str, args: argparse.Namespace) -> int:
    host, port, prefix = _target(broker)
    ident = f"cli-{uuid.uuid4().hex[:12]}"
    command: dict[str, object] = {
        "id": ident,
        "action": args.command,
        "alert": args.alert,
        "by": args.by,
    }
    for key in ("reason", "duration", "note"):
        value = getattr(args, key, None)
        if value is not None:
            command[key] = value
    try:
        async with _client(host, port) as client:
            await client.subscribe(f"{prefix}/commands/results", qos=1)
            await client.publish(f"{prefix}/commands", orjson.dumps(command), qos=1)
            async with asyncio.timeout(args.wait):
                async for message in client.messages:
                    result = orjson.loads(message.payload)
                    if isinstance(result, dict) and result.get("id") == ident:
                        break
    except TimeoutError:
        log.error(
            "no monitor answered on %s/commands within %g s: is one running with an mqtt sink?",
            prefix,
            args.wait,
        )
        return 3
    except aiomqtt.MqttError as exc:
        log.error("cannot reach the broker %s:%s: %s", host, port, exc)
        return 3
    if result.get("ok"):
        print(f"{args.command}: {args.alert} by {args.by}: done")
        return 0
    print(f"{args.command}: {args.alert}: refused: {result.get('reason')}")
    return 1
