"""How a running monitor learns that a library was published to its unit, and takes it.

**Polling the log database**, every 5 s, rather than a retained MQTT message: the database
is where a publication is recorded, with its approval and its audit entry, so what the
monitor reads there is what was signed off; every monitor with a durable log already
reads that database (a unit without MQTT learns of it as well); and five seconds are
nothing beside a pharmacist's publication. A monitor without a log database runs the
library it was started with. A version that cannot run here (its text does not hash to
it, it was never approved, the unit's profile is not in it, or the engine refuses it) is
said loudly once and left; the monitor goes on with what it runs.

**The switch is an input of the monitor's own**, logged like every input (event type
``library``), at the instant it happened::

    {"t": "2026-11-21T10:00:00.250Z", "type": "library", "version": "sha256:…#picu",
     "profile": "picu", "previous": "sha256:…#picu", "content": "<the library's text>"}

A replay of the log (``calguard export`` then ``calguard replay``) switches at the same
instant to the same library and gives the same alert lines. The text travels whole, so a
replay needs no database; a switch whose text does not hash to its version is refused.
From outside (a driver's input) such a line is refused like any unknown type.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from calguard.alerts.library_store import SWITCH, LibraryStore
from calguard.config.loader import parse_library
from calguard.config.site import Site
from calguard.monitor.errors import CalGuardError, EventError
from calguard.monitor.library import Library
from calguard.monitor.timeutil import format_ts
from calguard.pharmacy import is_approved, is_reference

__all__ = [
    "POLL_S",
    "SWITCH",
    "LibraryWatch",
    "switch_input",
    "switched_library",
    "unapproved",
]

log = logging.getLogger(__name__)
POLL_S = 5.0


async def unapproved(site: Site) -> str | None:
    """Why ``calguard run`` may not start on the site's library, or None: a library a
    pharmacist approved in the site's log, or the built-in one (the clinical reference as it
    ships), may. A training clock is training: never refused."""
    library = site.library
    if site.speed != 1 or is_reference(library):
        return None
    why = "the site has no log database, where approvals are kept"
    if site.db is not None:
        try:
            async with LibraryStore(site.db or None) as store:
                if await is_approved(store, library.version):
                    return None
        except CalGuardError as exc:
            why = f"the log cannot be read ({exc})"
        else:
            why = f"no pharmacist approved it in {store.display_url}"
    return (
        f"the drug library {library.version} ({library.source}) is not approved: {why}. "
        "Draft, approve and publish it (calguard library draft|approve|publish), or start "
        "with --allow-unapproved: the library-unapproved alarm then stays raised until an "
        "approved library is published"
    )


def switch_input(library: Library, previous: Library, t_us: int) -> dict[str, object]:
    """The logged input of a switch to ``library`` at ``t_us``."""
    return {
        "t": format_ts(t_us),
        "type": SWITCH,
        "version": library.version,
        "profile": library.profile,
        "previous": previous.version,
        "content": library.text,
    }


def switched_library(obj: dict[str, object]) -> Library:
    """The library a logged switch names, from its own text; ``EventError`` if the text
    does not load, or loads to another version than the one named."""
    version, content, profile = obj.get("version"), obj.get("content"), obj.get("profile")
    if not isinstance(version, str) or not isinstance(content, str):
        raise EventError("content", None, "a library switch carries its version and its text")
    if profile is not None and not isinstance(profile, str):
        raise EventError("profile", profile, "a profile's name, or null")
    result = parse_library(content, version.partition("#")[0], profile)
    if result.library is None:
        first = result.problems[0] if result.problems else "?"
        raise EventError("content", None, f"the library does not load ({first})")
    if result.library.version != version:
        raise EventError(
            "version", version, f"the text carried is version {result.library.version}"
        )
    return result.library


class LibraryWatch:
    """Polls the log for the version published to ``unit`` and hands it, loaded as the
    unit's ``profile``, to the monitor."""

    def __init__(
        self, url: str | None, unit: str, profile: str | None, *, interval_s: float = POLL_S
    ) -> None:
        self.url, self.unit, self.profile = url, unit, profile
        self.interval_s = interval_s
        self._left: set[str] = set()  # versions said not to run here: not tried again
        self._unreadable: str | None = None

    async def run(self, running: Callable[[], Library], switch: Callable[[Library], bool]) -> None:
        """For ever: what is published to the unit, once it differs from what ``running``
        says, goes to ``switch`` (False: the monitor could not take it)."""
        async with LibraryStore(self.url, migrate=False) as store:
            while True:
                library = await self._poll(store, running())
                if library is not None and not switch(library):
                    self._leave(library.content_version, "the monitor could not switch to it")
                await asyncio.sleep(self.interval_s)

    async def _poll(self, store: LibraryStore, running: Library) -> Library | None:
        """One look at the log. A monitor stopping meanwhile lets the look finish (a query
        cut off in the middle can leave its connection, and the database's files, open);
        stopped again, it cuts it off."""
        poll = asyncio.ensure_future(self._published(store, running))
        try:
            return await asyncio.shield(poll)
        except asyncio.CancelledError:
            try:
                await poll
            finally:
                poll.cancel()
            raise

    async def _published(self, store: LibraryStore, running: Library) -> Library | None:
        try:
            step = await store.published(self.unit)
            if step is None or step.version in (running.content_version, *self._left):
                return None
            text = await store.content(step.version)
            approved = await is_approved(store, step.version)
        except CalGuardError as exc:  # the database is away: the next poll tries again
            if str(exc) != self._unreadable:
                log.warning("library watch of %s: %s", self.unit, exc)
            self._unreadable = str(exc)
            return None
        self._unreadable = None
        if not approved:
            self._leave(step.version, "it is published but no pharmacist approved it")
            return None
        result = parse_library(text, step.version, self.profile)
        if result.library is None:
            problems = "; ".join(str(p) for p in result.problems)
            self._leave(step.version, f"it does not load as this unit's library: {problems}")
            return None
        if result.library.content_version != step.version:
            self._leave(step.version, f"its text in the log is {result.library.content_version}")
            return None
        log.warning(
            "library %s published to %s by %s at %s: switching to it",
            result.library.version,
            self.unit,
            step.actor,
            format_ts(step.t_us),
        )
        return result.library

    def _leave(self, version: str, why: str) -> None:
        self._left.add(version)
        log.error(
            "library %s was published to %s, but this monitor does not run it: %s; it goes on "
            "with the library it runs",
            version,
            self.unit,
            why,
        )
