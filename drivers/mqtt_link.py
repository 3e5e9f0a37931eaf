"""What the MQTT driver and the MQTT alarm sink share: the broker's address and topic
prefix from the URL (``mqtt://host:1883/calguard/nicu``, ``mqtts://`` for TLS), and the
log-in and TLS options with their set-up. Problems are ``ValueError``s with a message a
site's administrator can act on; each caller turns them into its own error."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import SplitResult

from calguard.config.options import OptionSpec

__all__ = ["LINK_OPTIONS", "BrokerAddress", "broker_address", "password", "tls_context"]

LINK_OPTIONS: dict[str, OptionSpec] = {
    "username": OptionSpec(str, None, "broker user"),
    "password_env": OptionSpec(str, None, "environment variable holding the password"),
    "ca_file": OptionSpec(str, None, "CA certificate(s) to verify the broker (TLS)"),
    "cert_file": OptionSpec(str, None, "client certificate (TLS)"),
    "key_file": OptionSpec(str, None, "client key (TLS)"),
    "keepalive": OptionSpec(int, 15, "seconds between keepalive pings", minimum=5, maximum=600),
}


class BrokerAddress(NamedTuple):
    host: str
    port: int
    prefix: str
    tls: bool


def broker_address(parts: SplitResult, config: Mapping[str, Any]) -> BrokerAddress:
    tls = parts.scheme == "mqtts" or config["ca_file"] is not None
    prefix = parts.path.strip("/")
    if not prefix:
        raise ValueError("the URL needs a topic prefix, e.g. mqtt://host:1883/calguard/nicu")
    return BrokerAddress(
        parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), prefix, tls
    )


def password(config: Mapping[str, Any]) -> str | None:
    name = config["password_env"]
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"the environment variable {name} (the MQTT password) is not set")
    return value


def tls_context(config: Mapping[str, Any], tls: bool) -> ssl.SSLContext | None:
    if not tls:
        return None
    try:
        context = ssl.create_default_context(cafile=config["ca_file"])
        if config["cert_file"]:
            context.load_cert_chain(config["cert_file"], config["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS set-up failed: {exc}") from exc
    return context
