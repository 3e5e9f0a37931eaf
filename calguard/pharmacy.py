"""The pharmacist's lifecycle of the drug library: one API for the command line and the
pharmacy's page. Who may take which step, and what each step needs:

- **draft**: a library text checked as ``calguard config check`` checks it, every profile
  included. A problem refuses it; its warnings (a rule off, a setting looser than the
  clinical reference) are listed by key. Any logged-in account may draft.
- **approve**: a pharmacist's account, proven by its signed token (``calguard login``),
  and every warning of the draft acknowledged by its key: a departure from the reference
  is approved knowingly or not at all.
- **publish**: an approved version, to units (their site configs). Each unit's profile
  must be in the library; a unit whose site config asks for four eyes
  (``[site] four_eyes = true``) needs two pharmacists: the publisher may not be its only
  approver.
- **rollback**: to each unit, the version it was published before its newest one (or the
  one named), under the same rules as a publication.

Every step is recorded with its audit entry (``calguard.alerts.library_store``); a running
monitor of a unit switches to what is published to it within seconds
(``calguard.library_watch``). The built-in library is the clinical reference itself and
needs no approval; a unit's own library always does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from calguard.alerts.accounts import Account, AccountError, Accounts
from calguard.alerts.library_store import LibraryStore, Running, Step
from calguard.config.loader import LoadResult, parse_library, reference_library
from calguard.config.site import Site
from calguard.monitor.errors import CalGuardError, ConfigProblem
from calguard.monitor.library import PROFILE_MARK, Library
from calguard.monitor.timeutil import format_ts
from calguard.tokens import KeyRing, verify

__all__ = [
    "PHARMACIST",
    "Checked",
    "DraftRefused",
    "LifecycleError",
    "Person",
    "Pharmacy",
    "Unit",
    "UnitStatus",
    "check",
    "is_approved",
    "is_reference",
]

PHARMACIST = "pharmacist"


class LifecycleError(CalGuardError):
    """A step refused: the message says why and what would let it through."""


@dataclass(frozen=True)
class Person:
    """Who takes a step: an account whose token was verified and which may act now."""

    name: str
    role: str


@dataclass(frozen=True)
class Unit:
    """A unit a library is published to: its site config's name, the care-area profile it
    runs, and whether publishing to it needs two pharmacists."""

    name: str
    profile: str | None = None
    four_eyes: bool = False

    @classmethod
    def of_site(cls, site: Site) -> Unit:
        return cls(site.name, site.profile, site.four_eyes)


@dataclass
class Checked:
    """A library text as checked: its content hash, and the library when it loads."""

    version: str
    library: Library | None
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)


@dataclass(frozen=True)
class UnitStatus:
    unit: str
    published: Step | None  # the newest publication or rollback
    running: Running | None  # what its newest monitor session runs
    approved: bool  # the running library was approved (or is the built-in one)

    @property
    def switch_pending(self) -> bool:
        """Published, and its monitor runs another version (not yet switched, or refused)."""
        if self.published is None or self.running is None or self.running.ended_us is not None:
            return False
        return self.running.version.partition(PROFILE_MARK)[0] != self.published.version


class DraftRefused(LifecycleError):
    """A library text with problems: ``checked`` lists them."""

    def __init__(self, checked: Checked) -> None:
        self.checked = checked
        super().__init__(f"{len(checked.problems)} problem(s): nothing was recorded")


def _checked(result: LoadResult) -> Checked:
    version = result.library.content_version if result.library is not None else "?"
    return Checked(version, result.library, list(result.problems), list(result.warnings))


def check(text: str, source: str) -> Checked:
    """A library text as ``calguard config check`` sees it."""
    return _checked(parse_library(text, source))


def is_reference(library: Library) -> bool:
    """The built-in library: the clinical reference itself, approved as it ships."""
    return library.content_version == reference_library().content_version


async def is_approved(store: LibraryStore, version: str) -> bool:
    """Whether a pharmacist approved this library (any profile of it) in the log; the
    built-in one is the clinical reference: approved as it ships."""
    content = version.partition(PROFILE_MARK)[0]
    if content == reference_library().content_version:
        return True
    return bool(await store.approvals(content))


class Pharmacy:
    """The lifecycle of one log database's libraries (an async context manager)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        keys: KeyRing | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = LibraryStore(url)
        self.accounts = Accounts(url)
        self.keys = keys or KeyRing()
        self.wall = wall
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Pharmacy:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.store)
            await stack.enter_async_context(self.accounts)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    # -- who ----------------------------------------------------------------------------------

    async def person(self, token: str) -> Person:
        """The account a token proves, if it may act now: its signature, expiry, and the
        account as it is now (enabled, the same role, unchanged since the token was
        issued). ``TokenError`` or ``AccountError`` naming the cause."""
        now = self.wall()
        claims = verify(token, self.keys.verifying_keys(now), now)
        account = await self.accounts.get(claims.sub)
        _may_act(account, claims.role, claims.iat)
        return Person(account.name, account.role)

    # -- reading ------------------------------------------------------------------------------

    async def checked(self, ref: str, profile: str | None = None) -> Checked:
        """A version of the log (a prefix will do) as checked now."""
        version = await self.store.resolve(ref)
        text = await self.store.content(version)
        return _checked(parse_library(text, version, profile))

    async def library(self, ref: str, profile: str | None = None) -> Library:
        """A version of the log as ``profile`` has it; ``LifecycleError`` if it cannot load."""
        found = await self.checked(ref, profile)
        if found.library is None:
            problems = "; ".join(str(p) for p in found.problems)
            raise LifecycleError(f"{ref} does not load as profile {profile}: {problems}")
        return found.library

    async def history(self, unit: str | None = None) -> list[Step]:
        return await self.store.steps(unit=unit)

    async def status(self) -> list[UnitStatus]:
        out = []
        for unit in await self.store.units():
            running = await self.store.running(unit)
            approved = running is not None and await is_approved(self.store, running.version)
            out.append(UnitStatus(unit, await self.store.published(unit), running, approved))
        return out

    # -- the steps ----------------------------------------------------------------------------

    async def draft(self, text: str, source: str, person: Person) -> tuple[Checked, Step]:
        """Check a library text and keep it as a draft; ``LifecycleError`` if it has a
        problem (the ``Checked`` it raises with lists them)."""
        found = check(text, source)
        if found.library is None:
            raise DraftRefused(found)
        detail = {"source": source, "warnings": [w.key for w in found.warnings]}
        step = await self.store.record(
            "draft",
            found.version,
            actor=person.name,
            role=person.role,
            detail=detail,
            library=found.library,
        )
        return found, step

    async def approve(self, ref: str, person: Person, acknowledged: Collection[str]) -> Step:
        """A pharmacist's approval of a drafted version, every warning acknowledged."""
        _pharmacist(person, "approve")
        version = await self.store.resolve(ref)
        steps = await self.store.steps(version=version)
        if not any(s.step == "draft" for s in steps):
            raise LifecycleError(f"{version} was never drafted: calguard library draft FILE first")
        if any(s.step == "approve" and s.actor == person.name for s in steps):
            raise LifecycleError(f"{version} is approved by {person.name} already")
        found = await self.checked(version)
        if found.library is None:
            raise DraftRefused(found)
        warned = {w.key: w.message for w in found.warnings}
        unknown = sorted(set(acknowledged) - set(warned))
        if unknown:
            raise LifecycleError(
                f"{', '.join(unknown)}: not a warning of {version}; its warnings are "
                + (", ".join(warned) or "none")
            )
        missing = [w for w in found.warnings if w.key not in acknowledged]
        if missing:
            listed = "\n".join(f"  {w.key}: {w.message}" for w in missing)
            raise LifecycleError(
                f"{version} has {len(missing)} warning(s) not acknowledged; approving it "
                f"needs each one (--acknowledge KEY):\n{listed}"
            )
        said = [{"key": key, "message": message} for key, message in warned.items()]
        return await self.store.record(
            "approve", version, actor=person.name, role=person.role, detail={"acknowledged": said}
        )

    async def publish(self, ref: str, person: Person, units: Sequence[Unit]) -> list[Step]:
        """An approved version to each unit; all or none (every unit is checked first)."""
        _pharmacist(person, "publish")
        version = await self.store.resolve(ref)
        plans = [await self._plan(version, person, unit) for unit in units]
        return [await self._record("publish", version, person, *plan) for plan in plans]

    async def rollback(
        self, person: Person, units: Sequence[Unit], to: str | None = None
    ) -> list[Step]:
        """To each unit, the version it ran before its newest publication (or ``to``)."""
        _pharmacist(person, "roll back")
        plans = []
        for unit in units:
            target = await self.store.resolve(to) if to else await self._previous(unit)
            plans.append((target, await self._plan(target, person, unit)))
        return [await self._record("rollback", v, person, *plan) for v, plan in plans]

    async def _previous(self, unit: Unit) -> str:
        published = [
            s.version
            for s in await self.store.steps(unit=unit.name)
            if s.step in ("publish", "rollback")
        ]
        if not published:
            raise LifecycleError(f"nothing was published to {unit.name}: nothing to roll back")
        earlier = [v for v in published if v != published[-1]]
        if not earlier:
            raise LifecycleError(
                f"{unit.name} was only ever published {published[-1]}: nothing to roll back to"
            )
        return earlier[-1]

    async def _plan(
        self, version: str, person: Person, unit: Unit
    ) -> tuple[Unit, dict[str, object]]:
        """What publishing ``version`` to ``unit`` records, once it is allowed."""
        approvers = sorted({s.actor for s in await self.store.approvals(version)})
        if not approvers:
            raise LifecycleError(f"{version} is not approved: calguard library approve first")
        if unit.four_eyes and set(approvers) <= {person.name}:
            raise LifecycleError(
                f"{unit.name} asks for four eyes: {version} is approved by {person.name} "
                "only; a second pharmacist must publish it (or approve it too)"
            )
        found = await self.checked(version, unit.profile)
        if found.library is None:
            problems = "; ".join(f"{p.key}: {p.message}" for p in found.problems)
            raise LifecycleError(f"{version} cannot run on {unit.name}: {problems}")
        current = await self.store.published(unit.name)
        detail: dict[str, object] = {
            "approved_by": approvers,
            "four_eyes": unit.four_eyes,
            "previous": current.version if current is not None else None,
        }
        return unit, detail

    async def _record(
        self, step: str, version: str, person: Person, unit: Unit, detail: dict[str, object]
    ) -> Step:
        return await self.store.record(
            step,
            version,
            actor=person.name,
            role=person.role,
            unit=unit.name,
            profile=unit.profile,
            detail=detail,
        )


def _pharmacist(person: Person, what: str) -> None:
    if person.role != PHARMACIST:
        raise LifecycleError(
            f"only a pharmacist may {what} a library; {person.name} is {person.role}"
        )


def _may_act(account: Account, role: str, issued_s: int) -> None:
    """The account as it is now against the token that names it (as the monitor's guard
    checks a command's)."""
    if account.disabled:
        raise AccountError(f"account {account.name} is disabled")
    if account.role != role:
        raise AccountError(
            f"account {account.name} is now {account.role}, not {role} as the token says: "
            "log in again"
        )
    if issued_s < account.changed_us // 1_000_000:
        raise AccountError(
            f"account {account.name} was changed at {format_ts(account.changed_us)}, after "
            "this token was issued: log in again"
        )
