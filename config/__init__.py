"""What pharmacists own: the drug library (products, limits, timers, priorities)."""

from config.library import ConfiguredQuantity, LabelMatch, Library, Product, RuleConfig, Salt
from config.loader import (
    BUILTIN,
    LoadResult,
    builtin_text,
    check_library,
    load_library,
    parse_library,
)
from config.schema import CLASSES, PRIORITIES, RULES, RuleSpec

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
