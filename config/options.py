"""How a driver or sink declares the options it takes in the site config, and how values
are checked against the declaration.

The declaration lives here, with the site config that checks it, so that the drivers and
sinks (a floor above) depend on ``config`` and never the other way round. A driver's URL
parameters (``serial:///dev/ttyUSB0?baud=19200``) are declared the same way and read with
``parse_query`` by the driver and by the site config alike, so both agree on what a URL
means. Every message is written for the person who edits the site config.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["PUMP_OPTIONS", "OptionSpec", "check_options", "parse_query", "table_values"]

_WORDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a text",
    list: "a list",
}
_INTEGER = re.compile(r"[+-]?\d+\Z")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option a driver accepts in the site config: its type, default and meaning, and
    the values that make sense."""

    kind: type
    default: Any
    help: str
    minimum: float | None = None  # for a number: the least value that makes sense
    maximum: float | None = None  # for a number: the greatest
    choices: tuple[Any, ...] = ()  # when given, the only values allowed
    #: a list of tables: the keys of each (a callable default of a key is called with
    #: its table, see ``table_values``)
    table: Mapping[str, OptionSpec] | None = None
    required: bool = False  # a key of such a table that every table must give
    unique: bool = False  # a key of such a table whose values must differ between tables

    def problem(self, value: object, shown: str | None = None) -> str | None:
        """What is wrong with ``value``, or None when it fits. ``shown`` is how the message
        quotes the value (default: as TOML would write it)."""
        shown = shown if shown is not None else _show(value)
        if not _fits(value, self.kind):
            expected = "a list of tables" if self.table is not None else _WORDS[self.kind]
            return f"{shown} — {expected} is expected ({self.help})"
        if self.choices and value not in self.choices:
            return f"{shown} — one of {_listed(self.choices)} is expected ({self.help})"
        if (self.minimum is None and self.maximum is None) or not isinstance(value, int | float):
            return None
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if low <= value <= high:
            return None
        words = _WORDS[self.kind]
        if self.maximum is None:
            return f"{shown} — {words} of at least {low:g} is expected ({self.help})"
        if self.minimum is None:
            return f"{shown} — {words} of at most {high:g} is expected ({self.help})"
        return f"{shown} — {words} from {low:g} to {high:g} is expected ({self.help})"


#: The keys of a pump table that say what a pump carries, for the drivers whose pumps do
#: not say it themselves (a serial line: the pump knows its address, not its drug). The
#: site config checks ``drug`` against the drug library and ``concentration`` as a mass
#: per volume wherever a pump table declares them; pump ids must differ across the site.
PUMP_OPTIONS: dict[str, OptionSpec] = {
    "pump": OptionSpec(str, None, "the pump's id in alerts", unique=True),
    "channel": OptionSpec(str, "A", "the channel's id in alerts"),
    "drug": OptionSpec(str, None, "the drug label, as the drug library names the product"),
    "concentration": OptionSpec(str, None, 'the concentration in the syringe, e.g. "20 mg/ml"'),
}


def check_options(
    values: Mapping[str, Any], specs: Mapping[str, OptionSpec], owner: str, noun: str = "option"
) -> Iterator[tuple[str, str]]:
    """(key, message) for every value that does not fit its spec: unknown keys, wrong types,
    values out of range; a list of tables is checked table by table, with the keys its
    tables must give and the values that must differ between them. ``owner`` names what
    takes these options in the messages ("for the serial driver")."""
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            yield name, f"unknown {noun} {owner}; {_expected(name, specs)}"
            continue
        problem = spec.problem(value)
        if problem is not None:
            yield name, problem
        elif spec.table is not None:
            yield from _check_tables(name, value, spec.table, owner)


def _check_tables(
    name: str, tables: list[Any], specs: Mapping[str, OptionSpec], owner: str
) -> Iterator[tuple[str, str]]:
    seen: dict[str, dict[object, int]] = {key: {} for key, s in specs.items() if s.unique}
    for index, table in enumerate(tables):
        key = f"{name}[{index}]"
        if not isinstance(table, dict):
            yield key, f"{_show(table)} — a table ([[{name}]] with its keys) is expected"
            continue
        problems = [
            (f"{key}.{sub}", message)
            for sub, message in check_options(table, specs, f"in a {name} table", "key")
        ]
        problems += [
            (f"{key}.{sub}", f"is missing ({spec.help})")
            for sub, spec in specs.items()
            if spec.required and sub not in table
        ]
        yield from problems
        for sub, values in seen.items():
            value = _unique_value(table, sub, specs, not problems)
            first = values.setdefault(value, index)
            if value is not None and first != index:
                yield (
                    f"{key}.{sub}",
                    f"{_show(value)} is also the {sub} of {name}[{first}] "
                    f"({specs[sub].help}); each must be different",
                )


def _unique_value(
    table: Mapping[str, Any], key: str, specs: Mapping[str, OptionSpec], fits: bool
) -> object:
    """The value of ``key`` to compare between tables: as given, if it fits, or its default
    when the whole table fits (two pumps may default alike); None when there is none."""
    if key in table:
        return table[key] if specs[key].problem(table[key]) is None else None
    return table_values(table, specs)[key] if fits else None


def table_values(table: Mapping[str, Any], specs: Mapping[str, OptionSpec]) -> dict[str, Any]:
    """A checked table with the defaults of the keys it leaves out. A callable default is
    called with the table (a pump's id made from its address)."""
    values = {}
    for key, spec in specs.items():
        if key in table:
            values[key] = table[key]
        else:
            values[key] = spec.default(table) if callable(spec.default) else spec.default
    return values


def parse_query(
    query: str, specs: Mapping[str, OptionSpec], options: Mapping[str, OptionSpec] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The typed values of a URL's query (``baud=19200&mode=safe``), the defaults for the
    parameters it leaves out, and what is wrong with it: unknown or repeated parameters,
    values of the wrong type or out of range. ``options``: what the table next to the URL
    takes, so that an option written into the URL is pointed to its place."""
    values = {name: spec.default for name, spec in specs.items()}
    problems: list[str] = []
    given: set[str] = set()
    for name, text in parse_qsl(query, keep_blank_values=True):
        spec = specs.get(name)
        if spec is None:
            if options and name in options:
                problems.append(
                    f'"{name}" is an option, not a URL parameter: write {name} = ... '
                    "in the table, next to url"
                )
            else:
                problems.append(f'unknown URL parameter "{name}"; {_expected(name, specs)}')
            continue
        if name in given:
            problems.append(f'the URL gives "{name}" twice; give it once')
            continue
        given.add(name)
        value = _from_text(text, spec.kind)
        problem = spec.problem(value, f"{name}={text}")
        if problem is None:
            values[name] = value
        else:
            problems.append(problem)
    return values, problems


def _from_text(text: str, kind: type) -> object:
    """A URL parameter's text as ``kind``; the text itself when it is not one."""
    if kind is int and _INTEGER.match(text):
        return int(text)
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    if kind is bool:
        return _BOOLEANS.get(text.lower(), text)
    return text


def _expected(name: str, specs: Mapping[str, OptionSpec]) -> str:
    if not specs:
        return "this URL takes none"
    close = difflib.get_close_matches(name, list(specs), n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f"expected one of {', '.join(specs)}{hint}"


def _fits(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _listed(choices: tuple[Any, ...]) -> str:
    return ", ".join(str(c) for c in choices)
