"""The drug library as frozen, validated value objects.

A ``Library`` is built only by ``config.loader`` (which explains every problem in a
pharmacist's words); once built, every quantity in it is already converted to its
canonical unit and the engine never touches pint again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from calguard.monitor import units
from calguard.monitor.events import ALARM_ACTIONS, ROLES
from calguard.monitor.transitions import PRIORITY_RANK
from calguard.monitor.units import CALCIUM_MG_PER_MMOL, Kind

__all__ = [
    "PROFILE_MARK",
    "AlarmPolicy",
    "ConfiguredQuantity",
    "LabelMatch",
    "Library",
    "Permissions",
    "Product",
    "RuleConfig",
    "Salt",
]


@dataclass(frozen=True, slots=True)
class ConfiguredQuantity:
    """A quantity as the pharmacist wrote it, with its canonical value."""

    text: str
    unit: str
    kind: Kind
    value: float  # canonical unit of ``kind``

    def show(self, canonical_value: float) -> str:
        """Express a canonical value in the unit this quantity was written in, never
        rounded onto or past this quantity (the limit it is shown against)."""
        return units.format_quantity(canonical_value, self.kind, self.unit, limit=self.value)

    @property
    def us(self) -> int:
        """A duration in whole microseconds."""
        return round(self.value)


@dataclass(frozen=True, slots=True)
class Salt:
    name: str
    elemental_fraction: float  # mg elemental calcium per mg of salt


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    aliases: tuple[str, ...]
    drug_class: str
    salt: Salt | None = None
    concentration: ConfiguredQuantity | None = None
    gluconate_fraction: float = 0.093

    @property
    def is_calcium(self) -> bool:
        return self.drug_class == "calcium"

    @property
    def is_gluconate(self) -> bool:
        return self.salt is not None and self.salt.name == "gluconate"

    @property
    def gluconate_equivalent(self) -> float:
        """mg of calcium gluconate carrying the calcium of 1 mg of this product's salt."""
        return self.salt.elemental_fraction / self.gluconate_fraction if self.salt else 1.0

    def elemental_mmol_per_mg(self) -> float:
        """mmol elemental calcium in 1 mg of this product's salt."""
        return self.salt.elemental_fraction / CALCIUM_MG_PER_MMOL if self.salt else 0.0


@dataclass(frozen=True, slots=True)
class RuleConfig:
    rule_id: str
    enabled: bool
    priority: str | None
    quantities: Mapping[str, ConfiguredQuantity] = field(default_factory=dict)
    ints: Mapping[str, int] = field(default_factory=dict)
    class_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def q(self, key: str) -> ConfiguredQuantity:
        return self.quantities[key]


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """What a pump's drug label means: a product, or an unknown (maybe calcium) drug."""

    label: str
    product: Product | None
    mentions_calcium: bool

    @property
    def is_calcium(self) -> bool:
        """Calcium, known or not: an unknown calcium label is never assumed safe."""
        return self.product.is_calcium if self.product else self.mentions_calcium

    @property
    def drug_class(self) -> str:
        if self.product is not None:
            return self.product.drug_class
        return "calcium" if self.mentions_calcium else "neutral"


_SPACES = re.compile(r"\s+")
_MATCH_CACHE_MAX = 4096


def normalise_label(label: str) -> str:
    """A drug label as it is matched: Unicode compatibility forms (NFKC: full-width
    letters, ligatures), case, accents and invisible characters folded, letters that look
    Latin but are Cyrillic or Greek folded to the Latin ones, spacing collapsed. A label
    that only *looks* like "Calcium gluconate 10%" (its C and a written in Cyrillic)
    then matches it: it can never pass as an unknown, neutral drug."""
    # look-alikes first, in either case (casefold would turn Greek capital mu into mu,
    # then the table could not tell it from a Latin u), then once more after casefold
    text = unicodedata.normalize("NFKC", label).translate(_CONFUSABLES).casefold()
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if unicodedata.category(c) not in _DROPPED)
    return _SPACES.sub(" ", text.translate(_CONFUSABLES).strip())


#: combining marks (accents after NFKD), format characters (zero-width joiners, marks of
#: direction), controls and unassigned code points: nothing a person sees on the pump
_DROPPED = frozenset({"Mn", "Me", "Cf", "Cc", "Cn", "Co", "Cs"})

#: lower-case Cyrillic and Greek letters drawn like Latin ones (Unicode's confusables for
#: the letters that can spell a drug name), after casefold; written as escapes so that a
#: reviewer sees which is which
_CONFUSABLE_LOWER = {
    # Cyrillic
    "\u0430": "a",  # cyrillic small letter a
    "\u0432": "b",  # cyrillic small letter ve
    "\u0441": "c",  # cyrillic small letter es
    "\u0501": "d",  # cyrillic small letter komi de
    "\u0435": "e",  # cyrillic small letter ie
    "\u04bb": "h",  # cyrillic small letter shha
    "\u0456": "i",  # cyrillic small letter byelorussian-ukrainian i
    "\u0458": "j",  # cyrillic small letter je
    "\u043a": "k",  # cyrillic small letter ka
    "\u04cf": "l",  # cyrillic small letter palochka
    "\u043c": "m",  # cyrillic small letter em
    "\u043d": "h",  # cyrillic small letter en
    "\u043e": "o",  # cyrillic small letter o
    "\u0440": "p",  # cyrillic small letter er
    "\u051b": "q",  # cyrillic small letter qa
    "\u0455": "s",  # cyrillic small letter dze
    "\u0442": "t",  # cyrillic small letter te
    "\u0443": "y",  # cyrillic small letter u
    "\u051d": "w",  # cyrillic small letter we
    "\u0445": "x",  # cyrillic small letter ha
    "\u04af": "y",  # cyrillic small letter straight u
    "\u0475": "v",  # cyrillic small letter izhitsa
    # Greek
    "\u03b1": "a",  # greek small letter alpha
    "\u03b2": "b",  # greek small letter beta
    "\u03b5": "e",  # greek small letter epsilon
    "\u03b7": "n",  # greek small letter eta
    "\u03b9": "i",  # greek small letter iota
    "\u03ba": "k",  # greek small letter kappa
    "\u03bd": "v",  # greek small letter nu
    "\u03bf": "o",  # greek small letter omicron
    "\u03c1": "p",  # greek small letter rho
    "\u03c4": "t",  # greek small letter tau
    "\u03c5": "u",  # greek small letter upsilon
    "\u03c7": "x",  # greek small letter chi
    "\u03f2": "c",  # greek lunate sigma symbol
    "\u03f3": "j",  # greek letter yot
    "\u03bc": "u",  # greek small letter mu (capital: M)
    # Latin look-alikes
    "\u0261": "g",  # latin small letter script g
    "\u0131": "i",  # latin small letter dotless i
    "\u2113": "l",  # script small l
}
#: capitals drawn like Latin capitals (not always the capital of the small letter's
#: look-alike: Greek capital mu is an M, its small letter a u)
_CONFUSABLE_UPPER = {
    # Cyrillic capitals
    "\u0410": "A",  # cyrillic capital letter a
    "\u0412": "B",  # cyrillic capital letter ve
    "\u0421": "C",  # cyrillic capital letter es
    "\u0415": "E",  # cyrillic capital letter ie
    "\u041d": "H",  # cyrillic capital letter en
    "\u0406": "I",  # cyrillic capital letter byelorussian-ukrainian i
    "\u0408": "J",  # cyrillic capital letter je
    "\u041a": "K",  # cyrillic capital letter ka
    "\u041c": "M",  # cyrillic capital letter em
    "\u041e": "O",  # cyrillic capital letter o
    "\u0420": "P",  # cyrillic capital letter er
    "\u0405": "S",  # cyrillic capital letter dze
    "\u0422": "T",  # cyrillic capital letter te
    "\u0425": "X",  # cyrillic capital letter ha
    "\u04ae": "Y",  # cyrillic capital letter straight u
    "\u051a": "Q",  # cyrillic capital letter qa
    "\u051c": "W",  # cyrillic capital letter we
    # Greek capitals
    "\u0391": "A",  # greek capital letter alpha
    "\u0392": "B",  # greek capital letter beta
    "\u0395": "E",  # greek capital letter epsilon
    "\u0396": "Z",  # greek capital letter zeta
    "\u0397": "H",  # greek capital letter eta
    "\u0399": "I",  # greek capital letter iota
    "\u039a": "K",  # greek capital letter kappa
    "\u039c": "M",  # greek capital letter mu
    "\u039d": "N",  # greek capital letter nu
    "\u039f": "O",  # greek capital letter omicron
    "\u03a1": "P",  # greek capital letter rho
    "\u03a4": "T",  # greek capital letter tau
    "\u03a5": "Y",  # greek capital letter upsilon
    "\u03a7": "X",  # greek capital letter chi
}
_CONFUSABLES = str.maketrans({**_CONFUSABLE_LOWER, **_CONFUSABLE_UPPER})


#: roles by priority: who may take one action on alarms of each priority
RolesByPriority = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Permissions:
    """Which roles may act on which alarms: ``actions[action][priority]`` are the roles that
    may ``ack``, ``pause``, ``reset`` or ``override`` an alarm of that priority, and
    ``rules[rule][action]`` replaces them for one rule's alarms (an exception the library
    states, such as an arterial line that only a prescriber may override)."""

    actions: Mapping[str, RolesByPriority]
    rules: Mapping[str, Mapping[str, RolesByPriority]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.actions) != set(ALARM_ACTIONS):
            raise ValueError(f"roles for each of {', '.join(ALARM_ACTIONS)} are needed")
        tables = list(self.actions.values())
        for rule, exceptions in self.rules.items():
            if not set(exceptions) <= set(ALARM_ACTIONS):
                raise ValueError(f"rule {rule}: the actions are {', '.join(ALARM_ACTIONS)}")
            tables += exceptions.values()
        for by_priority in tables:
            if set(by_priority) != set(PRIORITY_RANK):
                raise ValueError(f"roles for each priority ({', '.join(PRIORITY_RANK)}) are needed")
            unknown = set().union(*by_priority.values()) - set(ROLES)
            if unknown:
                raise ValueError(f"{', '.join(sorted(unknown))}: the roles are {', '.join(ROLES)}")

    def roles(self, action: str, rule: str, priority: str) -> frozenset[str]:
        """The roles that may take ``action`` on an alarm of ``rule`` at ``priority``."""
        exception = self.rules.get(rule, {}).get(action)
        return (exception if exception is not None else self.actions[action])[priority]


@dataclass(frozen=True)
class AlarmPolicy:
    """How alerts become alarms (IEC 60601-1-8): audio pause and escalation per priority,
    which priorities latch, the audiences of escalation, coded override reasons, and which
    roles may act on which alarms."""

    pause: Mapping[str, ConfiguredQuantity]  # by priority
    escalate_after: Mapping[str, ConfiguredQuantity]  # by priority
    audiences: tuple[str, ...]  # bedside first
    latching: frozenset[str]  # priorities
    override_reasons: tuple[str, ...]
    override_max: ConfiguredQuantity
    permissions: Permissions


#: what separates a library's content hash from the profile a unit runs of it
PROFILE_MARK = "#"


@dataclass(frozen=True)
class Library:
    """A drug library as one unit runs it: the whole document's content hash, and when the
    unit runs one of its care-area profiles, the profile's name after it
    (``sha256:9a07e6a01af8928a#picu``): ``version`` is what every alert line carries,
    ``content_version`` what a pharmacist approves (every profile of the document at once).
    """

    name: str
    version: str
    source: str
    text: str
    salts: Mapping[str, Salt]
    products: tuple[Product, ...]
    rules: Mapping[str, RuleConfig]
    calcium_keywords: tuple[str, ...]
    alarms: AlarmPolicy
    #: the care-area profile this library is the effective one of (None: the base)
    profile: str | None = None
    #: every profile of the document: name -> description
    profiles: Mapping[str, str] = field(default_factory=dict)
    #: the settings the profile sets ("rules.rate-volume.limit", ...)
    overridden: frozenset[str] = frozenset()
    _aliases: tuple[tuple[str, Product], ...] = field(init=False, repr=False)
    _cache: dict[str, LabelMatch] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = [
            (normalise_label(alias), p) for p in self.products for alias in (p.name, *p.aliases)
        ]
        pairs.sort(key=lambda pair: -len(pair[0]))  # longest name wins
        object.__setattr__(self, "_aliases", tuple(pairs))
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    def match(self, label: str) -> LabelMatch:
        """Match a pump drug label to a product (see event-format.md, matching)."""
        hit = self._cache.get(label)
        if hit is not None:
            return hit
        norm = normalise_label(label)
        product = None
        for alias, candidate in self._aliases:
            if norm.startswith(alias) and (
                len(norm) == len(alias) or not norm[len(alias)].isalpha()
            ):
                product = candidate
                break
        # a label still in another script after folding, matching no product, cannot be
        # read for the calcium keywords: never assumed neutral, it is a possible calcium
        # label (product-unknown while it infuses) until the library names it
        mentions = any(k in norm for k in self.calcium_keywords) or (
            product is None and any(c.isalpha() and not c.isascii() for c in norm)
        )
        result = LabelMatch(label, product, mentions)
        if len(self._cache) >= _MATCH_CACHE_MAX:
            self._cache.clear()
        self._cache[label] = result
        return result

    def rule(self, rule_id: str) -> RuleConfig:
        return self.rules[rule_id]

    @property
    def content_version(self) -> str:
        """The content hash of the whole document, whatever profile this is of."""
        return self.version.partition(PROFILE_MARK)[0]

    @property
    def calcium_products(self) -> tuple[Product, ...]:
        return tuple(p for p in self.products if p.is_calcium)
