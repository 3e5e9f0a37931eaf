"""Load a site config with the real driver and sink registries behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calguard.alerts.sinks import sink_class
from calguard.config import site as _site
from calguard.config.site import Site
from calguard.drivers.registry import driver_class

__all__ = ["load_site"]


def load_site(
    path: str | Path, *, db_default: str | None = "default", doc: dict[str, Any] | None = None
) -> Site:
    """Read and check a site config (``ConfigError`` listing every problem); ``doc``: its
    document already read (a unit of a hospital config, ``calguard.units``)."""
    return _site.load_site(
        path, drivers=driver_class, sinks=sink_class, db_default=db_default, doc=doc
    )
