"""calguard.config — what pharmacists and site managers own, read from TOML.

The drug library (loading, validation in a pharmacist's words, the built-in default),
the site config's checks, and how drivers and sinks declare their options.

Floor 1 of 4: imports only ``calguard.monitor``.
    calguard (shell) -> simulators, alerts -> drivers -> config -> monitor
"""

from calguard.config.loader import (
    BUILTIN,
    LoadResult,
    builtin_text,
    check_library,
    load_library,
    parse_library,
)
from calguard.config.schema import CLASSES, PRIORITIES, RULES, RuleSpec
from calguard.monitor.library import (
    ConfiguredQuantity,
    LabelMatch,
    Library,
    Product,
    RuleConfig,
    Salt,
)

__all__ = [
    "BUILTIN",
    "CLASSES",
    "PRIORITIES",
    "RULES",
    "ConfiguredQuantity",
    "LabelMatch",
    "Library",
    "LoadResult",
    "Product",
    "RuleConfig",
    "RuleSpec",
    "Salt",
    "builtin_text",
    "check_library",
    "load_library",
    "parse_library",
]

if __name__ != "calguard.config":  # the repository's folder imported under its own name
    raise ImportError(
        f"CalGuard installs one name: import calguard.config, not {__name__} "
        "(from an installed calguard: pip install -e .)"
    )
