"""Notification sinks by URL scheme, imported only when used; extensible by the entry-point
group ``calguard.sinks`` (name = scheme, value = ``module:Class``)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from calguard.alerts.sinks.base import Delivery, Refused, Sink, SinkError

__all__ = ["BUILTIN_SINKS", "Delivery", "Refused", "Sink", "SinkError", "open_sink", "sink_class"]

BUILTIN_SINKS = {
    "terminal": "calguard.alerts.sinks.simple:TerminalSink",
    "jsonlog": "calguard.alerts.sinks.simple:JsonLogSink",
    "http": "calguard.alerts.sinks.webhook:WebhookSink",
    "https": "calguard.alerts.sinks.webhook:WebhookSink",
    "mqtt": "calguard.alerts.sinks.mqtt:MqttSink",
    "mqtts": "calguard.alerts.sinks.mqtt:MqttSink",
    "mllp": "calguard.alerts.sinks.pcd04:Pcd04Sink",
}


def sink_class(url: str) -> type[Sink]:
    scheme = urlsplit(url).scheme
    known = {**{ep.name: ep.value for ep in entry_points(group="calguard.sinks")}, **BUILTIN_SINKS}
    target = known.get(scheme)
    if target is None:
        raise ValueError(
            f"{url}: no sink for the scheme {scheme!r}; known: {', '.join(sorted(known))}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{url}: the {scheme!r} sink ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ValueError(f"{url}: {target} is not a CalGuard sink")
    return cls


def open_sink(url: str, **options: Any) -> Sink:
    return sink_class(url)(url, **options)
