"""Load and validate a drug library, explaining every problem to the pharmacist.

Validation happens here and only here. Every problem found is collected (not just the
first), each naming the file, the key, what was found and what is expected, in words a
pharmacist can act on::

    nicu.toml: rules.rate-volume.limit: "2 ml/h" is 0.03333 ml/min, outside the plausible
    range 0.1-10 ml/min for this setting; did you mean "2 ml/min"?

A "did you mean" never proposes another dose for what was understood: it re-spells a
number written without a unit or with a misspelt one, or offers the usual unit for a value
that is implausible as written. mEq and % w/v are read (or refused) with their one meaning,
never swapped for mmol or mg/ml (``calguard.monitor.units``).

Besides problems, a library has warnings: a rule switched off, a technical rule's section
taken from the built-in library, and every setting looser than the clinical reference's
default (``calguard.config.departures``). Care-area profiles are checked as the library is
(``calguard.config.profiles``); ``profile`` picks the one a unit runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from calguard.config.departures import alarm_departures, rule_departures
from calguard.config.profiles import profile_tables
from calguard.config.schema import (
    CLASSES,
    PRIORITIES,
    RULES,
    ClassListSetting,
    IntSetting,
    QuantitySetting,
    RuleSpec,
    permissions,
)
from calguard.monitor import units
from calguard.monitor.errors import ConfigError, ConfigProblem, QuantityError
from calguard.monitor.library import (
    PROFILE_MARK,
    AlarmPolicy,
    ConfiguredQuantity,
    Library,
    Permissions,
    Product,
    RuleConfig,
    Salt,
    normalise_label,
)
from calguard.monitor.timeutil import format_duration
from calguard.monitor.units import Kind

__all__ = [
    "BUILTIN",
    "LoadResult",
    "builtin_text",
    "check_library",
    "load_library",
    "parse_library",
]

BUILTIN = "built-in"
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_TOP_KEYS = ("library", "matching", "salts", "products", "rules", "alarms", "profiles")
_PRODUCT_KEYS = ("id", "name", "aliases", "class", "salt", "concentration", "elemental_calcium")
# a stated elemental calcium content may differ this much from salt x concentration
# (the label rounds: 9.3 mg/ml is 0.2320 mmol/ml, printed 0.2325)
_ELEMENTAL_TOLERANCE = 0.01


def builtin_text() -> str:
    return resources.files("calguard.config").joinpath("default_library.toml").read_text("utf-8")


@dataclass
class LoadResult:
    library: Library | None
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)


def load_library(path: str | Path | None = None, profile: str | None = None) -> Library:
    """The library at ``path`` (the built-in one when None), as the care-area ``profile``
    has it when one is named; ``ConfigError`` if unusable."""
    result = check_library(path, profile)
    if result.library is None:
        raise ConfigError(result.problems)
    return result.library


def check_library(path: str | Path | None = None, profile: str | None = None) -> LoadResult:
    if path is None:
        return parse_library(builtin_text(), BUILTIN, profile)
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        return LoadResult(None, [ConfigProblem(source, "", "file not found")])
    except UnicodeDecodeError as exc:
        return LoadResult(None, [ConfigProblem(source, "", f"not UTF-8 text ({exc.reason})")])
    except OSError as exc:
        return LoadResult(None, [ConfigProblem(source, "", f"cannot be read ({exc.strerror})")])
    return parse_library(text, source, profile)


def parse_library(text: str, source: str, profile: str | None = None) -> LoadResult:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return LoadResult(None, [ConfigProblem(source, "", f"not valid TOML: {exc}")])
    checker = _Checker(source, reference=None if source == BUILTIN else reference_library())
    library = checker.build(doc, text, profile)
    if checker.problems:
        return LoadResult(None, checker.problems, checker.warnings)
    return LoadResult(library, [], checker.warnings)


@cache
def reference_library() -> Library:
    """The built-in library: the clinical reference a unit's library departs from."""
    library = parse_library(builtin_text(), BUILTIN).library
    if library is None:  # tests/test_library.py holds the built-in library to loading
        raise RuntimeError("the built-in library does not load")
    return library


def library_version(doc: dict[str, Any]) -> str:
    """Hash of the library's content: comments and layout do not change it, values do."""
    canonical = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


_PAUSE = QuantitySetting(units.DURATION, 10e6, 15 * 60e6, "min")
_ESCALATE = QuantitySetting(units.DURATION, 30e6, 24 * 3600e6, "min")
_OVERRIDE = QuantitySetting(units.DURATION, 60e6, 7 * 24 * 3600e6, "h")


def _builtin_alarm(key: str, priority: str | None) -> str:
    table = tomllib.loads(builtin_text())["alarms"]
    value = table[key] if priority is None else table[key][priority]
    return json.dumps(value)


def _builtin_value(rule_id: str, key: str) -> object:
    try:
        return tomllib.loads(builtin_text())["rules"][rule_id][key]
    except KeyError:
        return None


def _near(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def _misspelt(unit: str, usual: str) -> bool:
    """``unit`` (one CalGuard cannot read) looks like a slip of the keys for ``usual``."""
    typed = unit.replace(" ", "").lower()
    return difflib.SequenceMatcher(None, typed, usual.lower()).ratio() >= 0.8


class _Profile(NamedTuple):
    description: str
    rules: dict[str, RuleConfig]
    touched: frozenset[str]


class _Checker:
    """Collects problems while building the library objects. ``prefix`` goes before every
    key it reports (a profile's settings); ``reference``: the library whose defaults a
    looser setting is warned against (None for the built-in library itself)."""

    def __init__(self, source: str, *, prefix: str = "", reference: Library | None = None) -> None:
        self.source = source
        self.prefix = prefix
        self.reference = reference
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.source, self.prefix + key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.source, self.prefix + key, message))

    # -- top level ------------------------------------------------------------------------

    def build(self, doc: dict[str, Any], text: str, profile: str | None = None) -> Library | None:
        for key in doc:
            if key not in _TOP_KEYS:
                self.problem(
                    key,
                    f"unknown section; expected one of {', '.join(_TOP_KEYS)}"
                    + _near(key, _TOP_KEYS),
                )
        meta = self.table(doc, "library", required=True)
        name = self.string(meta, "library.name", "name", required=True) or "?"
        fmt = meta.get("format", 1)
        if fmt != 1:
            self.problem("library.format", f"{fmt!r} — this CalGuard reads library format 1")
        matching = self.table(doc, "matching", required=False)
        keywords = self.string_list(matching, "matching.calcium_keywords", "calcium_keywords")
        if not keywords:
            self.problem(
                "matching.calcium_keywords",
                'missing or empty; list the words that mark a calcium label, e.g. ["calcium"]',
            )
        salts = self.salts(self.table(doc, "salts", required=True))
        products = self.products(doc.get("products"), salts)
        rules_table = self.table(doc, "rules", required=True)
        rules = self.rules(rules_table)
        alarms = self.alarms(self.table(doc, "alarms", required=True))
        if alarms is not None and self.reference is not None:
            alarm_departures(alarms, self.reference, self.warn)
        profiles = self.profiles(doc.get("profiles"), rules_table)
        if profile is not None and profile not in (doc.get("profiles") or {}):
            have = ", ".join(profiles) or "none"
            self.problem("profiles", f'no profile "{profile}" in this library (it has: {have})')
        if self.problems or alarms is None:
            return None
        version, overridden = library_version(doc), frozenset[str]()
        if profile is not None:
            rules, overridden = profiles[profile].rules, profiles[profile].touched
            version += PROFILE_MARK + profile
        return Library(
            name=name,
            version=version,
            source=self.source,
            text=text,
            salts=salts,
            products=tuple(products),
            rules=rules,
            calcium_keywords=tuple(k.lower() for k in keywords),
            alarms=alarms,
            profile=profile,
            profiles={name: p.description for name, p in profiles.items()},
            overridden=overridden,
        )

    def profiles(self, value: object, rules_table: dict[str, Any]) -> dict[str, _Profile]:
        """Each care-area profile's rules, checked as the library's are; a problem or a
        warning the library's own rules gave already is not said again for a profile."""
        said = {(p.key, p.message) for p in (*self.problems, *self.warnings)}
        out: dict[str, _Profile] = {}
        for table in profile_tables(value, rules_table, self.problem):
            prefix = f"profiles.{table.name}."
            sub = _Checker(self.source, prefix=prefix, reference=self.reference)
            configs = sub.rules(table.rules)
            for found, into in ((sub.problems, self.problems), (sub.warnings, self.warnings)):
                into += [p for p in found if (p.key.removeprefix(prefix), p.message) not in said]
            if not sub.problems:
                out[table.name] = _Profile(table.description, configs, table.touched)
        return out

    # -- alarm policy -----------------------------------------------------------------------

    def alarms(self, table: dict[str, Any]) -> AlarmPolicy | None:
        if not table:
            return None  # "section is missing" was said
        known = (
            "pause",
            "escalate_after",
            "audiences",
            "latching",
            "override_reasons",
            "override_max",
            "permissions",
        )
        for key in table:
            if key not in known:
                self.problem(f"alarms.{key}", "unknown key; expected one of " + ", ".join(known))
        per: dict[str, dict[str, ConfiguredQuantity]] = {}
        for key, setting in (("pause", _PAUSE), ("escalate_after", _ESCALATE)):
            sub = self.table(table, key, required=False)
            per[key] = {}
            for priority in PRIORITIES:
                value = sub.get(priority)
                if value is None:
                    self.problem(
                        f"alarms.{key}.{priority}",
                        f"is missing; the built-in default is {_builtin_alarm(key, priority)}",
                    )
                    continue
                q = self.quantity(f"alarms.{key}.{priority}", value, setting)
                if q is not None:
                    per[key][priority] = q
        audiences = self.string_list(table, "alarms.audiences", "audiences")
        if not audiences:
            self.problem("alarms.audiences", 'at least the bedside is expected, e.g. ["bedside"]')
        latching = self.string_list(table, "alarms.latching", "latching")
        for priority in latching:
            if priority not in PRIORITIES:
                self.problem("alarms.latching", f"{priority!r} — one of {', '.join(PRIORITIES)}")
        reasons = self.string_list(table, "alarms.override_reasons", "override_reasons")
        if not reasons:
            self.problem("alarms.override_reasons", "at least one coded reason is expected")
        override_max = None
        if "override_max" not in table:
            self.problem(
                "alarms.override_max",
                f"is missing; the built-in default is {_builtin_alarm('override_max', None)}",
            )
        else:
            override_max = self.quantity("alarms.override_max", table["override_max"], _OVERRIDE)
        allowed = self.permissions(table.get("permissions"))
        if override_max is None or allowed is None:
            return None
        if len(per["pause"]) < 3 or len(per["escalate_after"]) < 3:
            return None
        return AlarmPolicy(
            pause=per["pause"],
            escalate_after=per["escalate_after"],
            audiences=tuple(audiences),
            latching=frozenset(latching),
            override_reasons=tuple(reasons),
            override_max=override_max,
            permissions=allowed,
        )

    def permissions(self, table: object) -> Permissions | None:
        """Who may act on alarms; a library from before accounts takes the built-in roles."""
        if table is None:
            self.warn("alarms.permissions", "section is missing; the built-in roles apply")
            table = tomllib.loads(builtin_text())["alarms"]["permissions"]
        if not isinstance(table, dict):
            self.problem(
                "alarms.permissions", "a table of actions and the roles that may take them"
            )
            return None
        return permissions(table, self.problem)

    # -- typed accessors ------------------------------------------------------------------

    def table(self, parent: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                self.problem(key, "section is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"{value!r} — a table ([{key}]) is expected")
            return {}
        return value

    def string(self, table: dict[str, Any], path: str, key: str, *, required: bool) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                self.problem(path, "is missing; a text value is expected")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"{value!r} — a non-empty text value is expected")
            return None
        return value.strip()

    def string_list(self, table: dict[str, Any], path: str, key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.problem(path, f"{value!r} — a list of non-empty texts is expected")
            return []
        return [v.strip() for v in value]

    def quantity(
        self, path: str, value: object, setting: QuantitySetting
    ) -> ConfiguredQuantity | None:
        kind = setting.kind
        try:
            number, unit = units.split_quantity(value)
            if not unit:
                raise QuantityError(value, "a bare number")
            canonical = units.to_canonical(number, unit, kind, percent_wv=True)
        except QuantityError as exc:
            found = f'"{value}"' if isinstance(value, str) else repr(value)
            self.problem(
                path,
                f"{found} — {exc.reason}; {kind.describe()} is expected"
                + self.suggest(value, setting, readable=False),
            )
            return None
        if not setting.low <= canonical <= setting.high:
            bound = setting.high if canonical > setting.high else setting.low
            shown = _show(canonical, kind, setting.hint, bound)  # visibly outside the bound
            low = _show(setting.low, kind, setting.hint)
            high = _show(setting.high, kind, setting.hint)
            self.problem(
                path,
                f'"{value}" is {shown}, outside the plausible range {low} to {high} '
                f"for this setting{self.suggest(value, setting, readable=True)}",
            )
            return None
        return ConfiguredQuantity(str(value), unit, kind, canonical)

    @staticmethod
    def suggest(value: object, setting: QuantitySetting, *, readable: bool) -> str:
        """'did you mean "2 ml/min"?': the same number in the usual unit, only when nothing
        was understood (a bare number; a misspelt unit), so that the hint cannot change a
        dose. ``readable``: the value was read and is implausible as written (a slip between
        ml/h and ml/min?): then the hint names the usual unit, never a value."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return ""
        try:
            number, written = (
                (float(value), "") if not isinstance(value, str) else units.split_quantity(value)
            )
        except QuantityError:
            return ""
        if readable and units.own_notation(written):
            return ""  # 6 mEq/kg is 3 mmol/kg: even a unit named could read as "6 mmol/kg"
        if readable:
            # it was understood, and is implausible as written: proposing the same number in
            # another unit would propose another dose (2 ml/h is not 2 ml/min, 6 mEq/kg not
            # 6 mmol/kg): say which unit such settings are written in, never a value
            return f"; check the unit: this setting is usually written in {setting.hint}"
        # not read: a unit of another meaning, or a word that is no slip of the usual unit
        slip = not units.is_unit(written) and _misspelt(written, setting.hint)
        if not readable and written and not slip:
            return ""
        for unit in dict.fromkeys((setting.hint, setting.kind.canonical)):
            if isinstance(value, str) and value.strip().endswith(unit):
                continue
            if setting.kind is units.DURATION and unit != setting.hint:
                continue  # the engine's microseconds are not a unit anyone writes
            canonical = number * units.unit_factor(unit, setting.kind)
            if setting.low <= canonical <= setting.high:
                typed = units.format_number(number, significant=15)  # the number as written
                return f'; did you mean "{typed} {unit}"?'
        return ""

    # -- salts and products ---------------------------------------------------------------

    def salts(self, table: dict[str, Any]) -> dict[str, Salt]:
        salts: dict[str, Salt] = {}
        for name, body in table.items():
            path = f"salts.{name}"
            if not isinstance(body, dict):
                self.problem(path, "a table with elemental_calcium_fraction is expected")
                continue
            fraction = body.get("elemental_calcium_fraction")
            if (
                isinstance(fraction, bool)
                or not isinstance(fraction, int | float)
                or not 0 < fraction < 1
            ):
                self.problem(
                    f"{path}.elemental_calcium_fraction",
                    f"{fraction!r} — a fraction between 0 and 1 is expected "
                    "(0.093 = 9.3 mg Ca per 100 mg)",
                )
                continue
            for key in body:
                if key != "elemental_calcium_fraction":
                    self.problem(
                        f"{path}.{key}", "unknown key; expected elemental_calcium_fraction"
                    )
            salts[name] = Salt(name, float(fraction))
        if "gluconate" not in salts:
            self.problem(
                "salts.gluconate", "is missing; CalGuard's limits are written for calcium gluconate"
            )
        return salts

    def products(self, value: object, salts: dict[str, Salt]) -> list[Product]:
        if value is None:
            self.problem("products", "no products; at least the calcium products are expected")
            return []
        if not isinstance(value, list):
            self.problem("products", "an array of tables ([[products]]) is expected")
            return []
        products: list[Product] = []
        seen_ids: set[str] = set()
        seen_names: dict[str, str] = {}
        gluconate = salts["gluconate"].elemental_fraction if "gluconate" in salts else 0.093
        for index, body in enumerate(value):
            product = self.product(index, body, salts, gluconate)
            if product is None:
                continue
            if product.id in seen_ids:
                self.problem(f"products[{product.id}].id", "is used by another product too")
            seen_ids.add(product.id)
            for alias in (product.name, *product.aliases):
                norm = normalise_label(alias)
                other = seen_names.get(norm)
                if other is not None and other != product.id:
                    self.problem(
                        f"products[{product.id}]",
                        f'the name "{alias}" is also used by product {other}; '
                        "a pump label must mean one product",
                    )
                seen_names[norm] = product.id
            products.append(product)
        if not any(p.is_calcium for p in products):
            self.problem(
                "products", "no product of class calcium; CalGuard would recognise no calcium"
            )
        return products

    def product(
        self, index: int, body: object, salts: dict[str, Salt], gluconate: float
    ) -> Product | None:
        if not isinstance(body, dict):
            self.problem(f"products[{index}]", "a table is expected")
            return None
        pid = body.get("id")
        label = pid if isinstance(pid, str) else str(index)
        path = f"products[{label}]"
        before = len(self.problems)
        if not isinstance(pid, str) or not _ID.match(pid):
            self.problem(
                f"{path}.id",
                f"{pid!r} — a short id of lower-case letters, digits and - is expected",
            )
        for key in body:
            if key not in _PRODUCT_KEYS:
                self.problem(
                    f"{path}.{key}",
                    f"unknown key; expected one of {', '.join(_PRODUCT_KEYS)}"
                    + _near(key, _PRODUCT_KEYS),
                )
        name = self.string(body, f"{path}.name", "name", required=True)
        aliases = self.string_list(body, f"{path}.aliases", "aliases")
        drug_class = body.get("class")
        if drug_class not in CLASSES:
            self.problem(
                f"{path}.class", f"{drug_class!r} — one of {', '.join(CLASSES)} is expected"
            )
        salt = concentration = None
        salt_name = body.get("salt")
        if salt_name is not None:
            salt = salts.get(salt_name) if isinstance(salt_name, str) else None
            if salt is None:
                self.problem(
                    f"{path}.salt",
                    f"{salt_name!r} — one of the [salts] is expected: {', '.join(salts)}",
                )
        if "concentration" in body:
            concentration = self.quantity(
                f"{path}.concentration",
                body["concentration"],
                QuantitySetting(units.CONCENTRATION, 0.1, 500.0, "mg/ml"),
            )
        if drug_class == "calcium":
            if salt_name is None:
                self.problem(
                    f"{path}.salt",
                    "is missing; a calcium product needs its salt (gluconate, chloride)",
                )
            if "concentration" not in body:
                self.problem(f"{path}.concentration", 'is missing; e.g. "100 mg/ml"')
        if "elemental_calcium" in body and salt is not None and concentration is not None:
            self.elemental(path, body["elemental_calcium"], salt, concentration)
        if len(self.problems) > before or name is None or not isinstance(pid, str):
            return None
        return Product(
            id=pid,
            name=name,
            aliases=tuple(aliases),
            drug_class=str(drug_class),
            salt=salt,
            concentration=concentration,
            gluconate_fraction=gluconate,
        )

    def elemental(self, path: str, value: object, salt: Salt, conc: ConfiguredQuantity) -> None:
        stated = self.quantity(
            f"{path}.elemental_calcium",
            value,
            QuantitySetting(units.SUBSTANCE_PER_VOLUME, 0.001, 5.0, "mmol/ml"),
        )
        if stated is None:
            return
        derived = conc.value * salt.elemental_fraction / units.CALCIUM_MG_PER_MMOL
        if abs(stated.value - derived) > _ELEMENTAL_TOLERANCE * derived:
            self.problem(
                f"{path}.elemental_calcium",
                f'"{value}" does not agree with {conc.text} of the {salt.name} salt, which carries '
                f"{units.format_number(derived)} mmol/ml; "
                "check the concentration, the salt or this value",
            )

    # -- rules ----------------------------------------------------------------------------

    def rules(self, table: dict[str, Any]) -> dict[str, RuleConfig]:
        for rule_id in table:
            if rule_id not in RULES:
                self.problem(f"rules.{rule_id}", f"unknown rule id{_near(rule_id, list(RULES))}")
        configs: dict[str, RuleConfig] = {}
        for rule_id, spec in RULES.items():
            body = table.get(rule_id)
            if body is None and spec.technical:
                # a technical rule added after the library was written (clock-skew, ...):
                # the built-in settings, said loudly, so an older library still loads
                body = _builtin_rule(rule_id)
                self.warn(
                    f"rules.{rule_id}",
                    "section is missing; the built-in settings are used "
                    f"({_describe_section(body)}); copy it from calguard config init to own it",
                )
            if body is None:
                self.problem(
                    f"rules.{rule_id}",
                    "section is missing; copy it from the built-in library (calguard config init) "
                    "or write enabled = false",
                )
                continue
            if not isinstance(body, dict):
                self.problem(f"rules.{rule_id}", "a table is expected")
                continue
            config = self.rule(spec, body)
            if config is not None:
                configs[rule_id] = config
        self.cross_checks(configs)
        if self.reference is not None:
            rule_departures(configs, self.reference, self.warn)
        return configs

    def rule(self, spec: RuleSpec, body: dict[str, Any]) -> RuleConfig | None:
        base = f"rules.{spec.rule_id}"
        allowed = ["enabled", *(["priority"] if spec.priority else []), *spec.settings]
        for key in body:
            if key not in allowed:
                self.problem(
                    f"{base}.{key}",
                    f"unknown key; expected one of {', '.join(allowed)}{_near(key, allowed)}",
                )
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            self.problem(f"{base}.enabled", f"{enabled!r} — true or false is expected")
        elif not enabled:
            self.warn(base, "this rule is DISABLED; CalGuard will not check it")
        priority = body.get("priority", spec.priority)
        if spec.priority and priority not in PRIORITIES:
            self.problem(
                f"{base}.priority", f"{priority!r} — one of {', '.join(PRIORITIES)} is expected"
            )
        quantities: dict[str, ConfiguredQuantity] = {}
        ints: dict[str, int] = {}
        lists: dict[str, tuple[str, ...]] = {}
        for key, setting in spec.settings.items():
            path = f"{base}.{key}"
            if key not in body:
                default = _builtin_value(spec.rule_id, key)
                self.problem(path, f"is missing; the built-in default is {json.dumps(default)}")
                continue
            value = body[key]
            if isinstance(setting, QuantitySetting):
                q = self.quantity(path, value, setting)
                if q is not None:
                    quantities[key] = q
            elif isinstance(setting, IntSetting):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not setting.low <= value <= setting.high
                ):
                    self.problem(
                        path,
                        f"{value!r} — a whole number from {setting.low} to {setting.high} "
                        "is expected",
                    )
                else:
                    ints[key] = value
            elif isinstance(setting, ClassListSetting):
                lists[key] = self.class_list(path, value)
        return RuleConfig(
            spec.rule_id,
            bool(enabled),
            priority if spec.priority else None,
            quantities,
            ints,
            lists,
        )

    def class_list(self, path: str, value: object) -> tuple[str, ...]:
        allowed = [c for c in CLASSES if c not in ("calcium", "neutral")]
        if not isinstance(value, list):
            self.problem(
                path, f"{value!r} — a list of drug classes is expected ({', '.join(allowed)})"
            )
            return ()
        for item in value:
            if item not in allowed:
                self.problem(path, f"{item!r} — one of {', '.join(allowed)} is expected")
        return tuple(v for v in value if v in allowed)

    def cross_checks(self, rules: dict[str, RuleConfig]) -> None:
        def ordered(rule_id: str, low: str, high: str, what: str) -> None:
            cfg = rules.get(rule_id)
            if cfg is None or not {low, high} <= cfg.quantities.keys():
                return  # already reported
            if cfg.q(high).value <= cfg.q(low).value:
                self.problem(
                    f"rules.{rule_id}.{high}",
                    f'"{cfg.q(high).text}" must be {what} "{cfg.q(low).text}" ({low})',
                )

        ordered("site-check-overdue", "medium_after", "high_after", "later than")
        ordered("rate-weight", "bolus_medium", "bolus_high", "above")
        cp = rules.get("concentration-peripheral")
        keys = {"continuous_limit", "any_mode_limit"}
        if (
            cp
            and keys <= cp.quantities.keys()
            and cp.q("continuous_limit").value > cp.q("any_mode_limit").value
        ):
            self.problem(
                "rules.concentration-peripheral.continuous_limit",
                "is above any_mode_limit; the continuous limit should be the stricter one",
            )
        co = rules.get("incompatible-coinfusion")
        if co:
            overlap = set(co.class_lists.get("high", ())) & set(co.class_lists.get("medium", ()))
            if overlap:
                self.problem(
                    "rules.incompatible-coinfusion",
                    f"{sorted(overlap)} listed as both high and medium",
                )


def _show(value: float, kind: Kind, unit: str, limit: float | None = None) -> str:
    """A setting's value or bound for the person editing the file; a span in words."""
    if kind is units.DURATION and limit is None:
        return format_duration(round(value))
    return units.format_quantity(value, kind, unit, limit=limit)


@cache
def _builtin_rules() -> dict[str, Any]:
    rules = tomllib.loads(builtin_text()).get("rules", {})
    return rules if isinstance(rules, dict) else {}


def _builtin_rule(rule_id: str) -> dict[str, Any] | None:
    body = _builtin_rules().get(rule_id)
    return dict(body) if isinstance(body, dict) else None


def _describe_section(body: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in (body or {}).items()) or "none"
