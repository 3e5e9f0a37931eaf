"""``calguard alerts`` and ``calguard ack|pause|reset|override``: a central station's view
and actions, over the MQTT topics of the monitor's alarm sink (protocols.md section 3).

``calguard alerts`` shows only what the monitor signed: a retained state that is not
signed with the monitor's key for its own topic (a forgery, another monitor's) is named
and left out, and the command exits non-zero. It logs in as the driver does (user,
password from an environment variable, TLS with a CA and a client certificate)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from calguard.alerts.signed_state import (
    Untrusted,
    bed_of_level,
    bed_topic,
    default_state_key,
    load_public_key,
    public_key_file,
    unseal,
)
from calguard.alerts.sinks.mqtt import presence_topic
from calguard.drivers.clock import SystemClock
from calguard.drivers.mqtt_link import LINK_OPTIONS, broker_address, password, tls_context
from calguard.monitor.timeutil import parse_ts
from calguard.tokens import TokenError, default_token_file, holder, read_token

__all__ = ["Access", "access", "send_action", "show_alerts"]

log = logging.getLogger("calguard")
_RANK = {"high": 0, "medium": 1, "low": 2}
_QUIET_S = 0.3  # after the presence, this long without a message and all are in
_PRESENCE_S = 5.0
#: a presence signed longer ago than this is not taken as a running monitor's (the sink
#: signs it every 10 s; stations' clocks are expected to be within a few seconds, NTP)
MAX_PRESENCE_AGE_S = 30.0  # how long the retained presence may take to arrive


@dataclass(frozen=True)
class Access:
    """How the command line logs in to the broker (the options of the MQTT driver, see
    ``drivers/mqtt_link.py``), and the monitor's public key it trusts (default: the one in
    this machine's data directory, where a monitor running here keeps it)."""

    username: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    monitor_key: str | None = None

    def link(self) -> dict[str, Any]:
        """The values of the driver's link options (``LINK_OPTIONS``)."""
        given = ("username", "password_env", "ca_file", "cert_file", "key_file")
        defaults = {k: spec.default for k, spec in LINK_OPTIONS.items()}
        return defaults | {k: getattr(self, k) for k in given}

    def monitor_key_file(self) -> Path:
        return Path(self.monitor_key) if self.monitor_key else public_key_file(default_state_key())


def access(args: argparse.Namespace) -> Access:
    """The log-in and trust options of ``calguard alerts``; the user and password default to
    ``CALGUARD_MQTT_USER`` and ``CALGUARD_MQTT_PASSWORD``."""
    env_password = "CALGUARD_MQTT_PASSWORD" if "CALGUARD_MQTT_PASSWORD" in os.environ else None
    return Access(
        username=args.username or os.environ.get("CALGUARD_MQTT_USER"),
        password_env=args.password_env or env_password,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        monitor_key=getattr(args, "monitor_key", None),
    )


def _client(host: str, port: int, access: Access, tls: bool) -> aiomqtt.Client:
    """A client of the broker, logged in and over TLS as ``access`` says (``ValueError`` when
    its password or a TLS file cannot be had)."""
    link = access.link()
    username, secret, context = link["username"], password(link), tls_context(link, tls)
    return aiomqtt.Client(
        host,
        port,
        identifier=f"calguard-cli-{uuid.uuid4().hex[:8]}",
        username=username,
        password=secret,
        tls_context=context,
        timeout=10,
    )


async def show_alerts(
    broker: str,
    bed: str | None,
    priority: str | None,
    as_json: bool,
    *,
    access: Access | None = None,
    max_age: float = MAX_PRESENCE_AGE_S,
) -> int:
    access = access or Access()
    try:
        address = broker_address(urlsplit(broker), access.link())
        client = _client(address.host, address.port, access, address.tls)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    host, port, prefix = address.host, address.port, address.prefix
    try:
        presence_raw, states = await _retained(client, prefix)
    except aiomqtt.MqttError as exc:
        log.error("cannot reach the broker %s:%s: %s", host, port, exc)
        return 3
    if presence_raw is None:
        log.error("%s", _offline(None, prefix))  # nothing there to trust or not
        return 3
    monitor = _monitor_key(access.monitor_key_file())
    if monitor is None:
        return 2
    try:
        signed_at, presence = unseal(monitor, presence_topic(prefix), presence_raw)
    except Untrusted as exc:
        log.error(
            "the monitor's presence under %r is not signed by the monitor (%s): nothing shown",
            prefix,
            exc,
        )
        return 3
    offline = _offline(presence, prefix) or _stale(signed_at, prefix, max_age)
    if offline is not None:
        # a dead monitor must never look like a quiet ward
        log.error("%s", offline)
        return 3
    assert isinstance(presence, dict)
    latest = presence.get("beds")
    alarms, untrusted = _trusted(
        monitor,
        prefix,
        states,
        bed,
        latest if isinstance(latest, dict) else None,
        _us(signed_at) or 0,
    )
    _print_rows(alarms, bed, priority, as_json, prefix, quiet=not untrusted)
    for name, why in sorted(untrusted.items()):
        log.error(
            "the retained state of %s is not signed by the monitor (%s): not shown", name, why
        )
    return 3 if untrusted else 0


def _replayed(t: str, listed: object, presence_us: int) -> str | None:
    """Why a genuine signed state is not the bed's current one, or None."""
    at = _us(t)
    if at is None:
        return "its time cannot be read"
    if isinstance(listed, str):
        latest = _us(listed)
        if latest is not None and at < latest:
            return f"it was signed at {t}, before the bed's latest state ({listed}): a replay"
        return None
    if at < presence_us:
        return f"it was signed at {t} and the monitor's presence does not list it: a replay"
    return None


def _monitor_key(path: Path) -> Ed25519PublicKey | None:
    """The monitor's public key, or None (said why)."""
    try:
        return load_public_key(path)
    except FileNotFoundError:
        log.error(
            "no public key of the monitor at %s: give --monitor-key FILE (a copy of the "
            "monitor's <data dir>/keys/state-ed25519.pub); without it nothing read from the "
            "broker can be trusted",
            path,
        )
    except (OSError, ValueError) as exc:
        log.error("the monitor's public key %s cannot be read: %s", path, exc)
    return None


async def _retained(client: aiomqtt.Client, prefix: str) -> tuple[bytes | None, dict[str, bytes]]:
    """The retained presence and every bed's retained state, as they came."""
    presence: bytes | None = None
    states: dict[str, bytes] = {}
    async with client:
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
            payload = _raw(message.payload)
            if str(message.topic) == presence_topic(prefix):
                presence = payload
            else:
                states[bed_of_level(str(message.topic).rsplit("/", 1)[-1])] = payload
    return presence, states


def _us(ts: str) -> int | None:
    try:
        return parse_ts(ts)
    except ValueError:
        return None


def _stale(signed_at: str, prefix: str, max_age: float) -> str | None:
    """Why a signed presence is too old to vouch for the states (a monitor that stopped
    signing: gone, cut off, or an old presence replayed), or None."""
    at = _us(signed_at)
    if at is None:
        return f"the monitor's presence under {prefix!r} carries no readable time: not trusted"
    age = (SystemClock().now_us() - at) / 1e6
    if age <= max_age:
        return None
    return (
        f"the monitor's presence under {prefix!r} was last signed at {signed_at}, "
        f"{age:.0f} s ago (it signs it every few seconds): the monitor may be gone or cut "
        "off, or this is an old presence replayed; the alarms are not shown as current"
    )


def _trusted(
    monitor: Ed25519PublicKey,
    prefix: str,
    states: dict[str, bytes],
    bed: str | None,
    latest: dict[str, object] | None,
    presence_us: int,
) -> tuple[dict[str, list[dict[str, object]]], dict[str, str]]:
    """The alarms of each bed (of ``bed`` only, if given) whose state the monitor signed,
    and why each other bed's state cannot be trusted. ``latest``: when the monitor signed
    each bed's current state, as its presence says (None from a monitor that does not say):
    an older signed state is a replay; one the presence does not list must be newer than
    the presence."""
    alarms: dict[str, list[dict[str, object]]] = {}
    untrusted: dict[str, str] = {}
    for name, raw in states.items():
        if bed is not None and name != bed:
            continue
        try:
            t, data = unseal(monitor, bed_topic(prefix, name), raw)
        except Untrusted as exc:
            untrusted[name] = str(exc)
            continue
        why = None if latest is None else _replayed(t, latest.get(name), presence_us)
        if why is not None:
            untrusted[name] = why
            continue
        alarms[name] = [a for a in data if isinstance(a, dict)] if isinstance(data, list) else []
    return alarms, untrusted


def _print_rows(
    alarms: dict[str, list[dict[str, object]]],
    bed: str | None,
    priority: str | None,
    as_json: bool,
    prefix: str,
    *,
    quiet: bool,
) -> None:
    """The alarms, by priority then time; ``quiet``: say so when there are none (never when
    a bed's state could not be read: that is not a quiet ward)."""
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
        return
    if not rows:
        if quiet:
            print(
                f"no active alarms{f' at {bed}' if bed else ''} (monitor online under {prefix!r})"
            )
        return
    print(
        f"{'PRIORITY':<9}{'SINCE':<10}{'ALERT':<10}{'STATE':<14}{'RULE':<26}{'BED':<5}{'TO':<14}MESSAGE"
    )
    for a in rows:
        print(
            f"{str(a.get('priority', '')).upper():<9}{str(a.get('t', ''))[11:19]:<10}"
            f"{a.get('alert', ''):<10}{a.get('state', ''):<14}{a.get('rule', ''):<26}"
            f"{a.get('bed', '-') or '-':<5}{a.get('audience', ''):<14}{a.get('message', '')}"
        )


def _raw(payload: object) -> bytes:
    return payload if isinstance(payload, bytes) else str(payload or "").encode()


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


async def send_action(
    broker: str, args: argparse.Namespace, *, access: Access | None = None
) -> int:
    """The action, with the token of ``calguard login`` as the proof of who acts (the
    monitor takes the person and the role from it, never from what is typed)."""
    if args.by is not None:
        log.error(
            "--by is no longer taken: who acts is the account you log in as "
            "(calguard login --user NAME), then run this again without --by"
        )
        return 2
    try:
        token = read_token(Path(args.token_file) if args.token_file else default_token_file())
    except TokenError as exc:
        log.error("%s", exc)
        return 1
    access = access or Access()
    try:
        address = broker_address(urlsplit(broker), access.link())
        client = _client(address.host, address.port, access, address.tls)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    host, port, prefix = address.host, address.port, address.prefix
    ident = f"cli-{uuid.uuid4().hex[:12]}"
    command: dict[str, object] = {
        "id": ident,
        "action": args.command,
        "alert": args.alert,
        "token": token,
    }
    for key in ("reason", "duration", "note"):
        value = getattr(args, key, None)
        if value is not None:
            command[key] = value
    try:
        async with client:
            await client.subscribe(f"{prefix}/commands/results", qos=1)
            await client.publish(f"{prefix}/commands", orjson.dumps(command), qos=1)
            async with asyncio.timeout(args.wait):
                async for message in client.messages:
                    try:
                        result = orjson.loads(_raw(message.payload))
                    except orjson.JSONDecodeError:
                        continue  # not an answer of the monitor's, nor ours
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
        print(f"{args.command}: {args.alert} by {holder(token)}: done")
        return 0
    print(f"{args.command}: {args.alert}: refused: {result.get('reason')}")
    return 1
