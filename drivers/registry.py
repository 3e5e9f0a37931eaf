"""Drivers by URL scheme, imported only when used, extensible by the entry-point group
``calguard.drivers`` (name = scheme, value = ``module:Class``). One lookup turns every
failure into one clear ``DriverError``."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from calguard.drivers.base import Driver
from calguard.monitor.clock import Clock
from calguard.monitor.errors import DriverError

__all__ = ["BUILTIN_DRIVERS", "driver_class", "open_driver"]

BUILTIN_DRIVERS = {
    "serial": "calguard.drivers.serial:SerialDriver",
    "mqtt": "calguard.drivers.mqtt:MqttDriver",
    "mqtts": "calguard.drivers.mqtt:MqttDriver",
    "mllp": "calguard.drivers.hl7:MllpDriver",
    "replay": "calguard.drivers.replay:ReplayDriver",
    "virtual": "calguard.drivers.virtual:VirtualDriver",
}


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="calguard.drivers")}


def driver_class(url: str) -> type[Driver]:
    scheme = urlsplit(url).scheme
    known = {**_plugins(), **BUILTIN_DRIVERS}
    target = known.get(scheme)
    if target is None:
        raise DriverError(
            f"no driver for the scheme {scheme!r}; known: {', '.join(sorted(known))}", source=url
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise DriverError(
            f"the {scheme!r} driver ({target}) cannot be loaded: {exc}", source=url
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverError(f"{target} is not a CalGuard driver", source=url)
    return cls


def open_driver(url: str, *, clock: Clock | None = None, **options: Any) -> Driver:
    """A driver for this URL (not yet opened: use ``async with`` or ``inputs()``)."""
    return driver_class(url)(url, clock=clock, **options)
