"""How a driver or sink declares the options it takes in the site config.

The declaration lives here, with the site config that checks it, so that the drivers and
sinks (a floor above) depend on ``config`` and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OptionSpec"]


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option a driver accepts in the site config: its type, default and meaning."""

    kind: type
    default: Any
    help: str
    minimum: float | None = None  # for a number: the least value that makes sense
