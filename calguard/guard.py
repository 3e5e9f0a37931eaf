"""Who may act: the live monitor's check of a command's token and of the account it names.

A command from a central station carries a signed token (``calguard.tokens``). Before the
monitor applies it, the guard checks the token (signature, key id, expiry) and then the
account the token names: it must exist, be enabled, still hold the token's role, and not
have changed (password, role or state) since the token was issued, so that ``calguard user
passwd`` or ``disable`` ends the tokens already handed out. What each role may do to which
alarm is the alarm layer's to say (``AlarmManager.act``, on the action's ``role``): only
it knows each alarm's rule and priority, and so a replay of the log decides the same.

A command is answered at once and never waits on the database. The guard keeps the
accounts in memory: read at start, again every 2 s, and at once (at most every few
seconds) when a token names an account it does not know yet. When the database cannot be
read, the accounts as last read are used and the log says so: an outage of the database
does not lock the nurses out. The public keys are read again with each refresh, and when a
token names a key id not seen yet (a rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from calguard.alerts.accounts import Account, AccountError, Accounts
from calguard.alerts.log import AlertLog
from calguard.monitor.errors import LogError
from calguard.monitor.timeutil import format_ts
from calguard.tokens import Claims, KeyRing, TokenError, UnknownKeyError, verify

__all__ = ["CommandGuard"]

log = logging.getLogger(__name__)
#: how often the accounts are read again: a disabled account or a new password ends its
#: tokens within this (the users table is small: a read costs about a millisecond)
REFRESH_S = 2.0
_LOOKUP_GAP_S = 2.0  # the accounts are read at most this often (unknown names ask for it)
_READ_TIMEOUT_S = 10.0
_SETTLE_S = 5.0  # how long a command of an account not yet read waits for the lookup


class CommandGuard:
    """``check`` a command's token (synchronous, from memory); ``run`` keeps the accounts
    and keys fresh. ``accounts`` None: there is no accounts database (a monitor without a
    log), and no command can be checked. ``wall``: the wall clock tokens are dated by (a
    training monitor's ward clock runs faster; tokens do not)."""

    def __init__(
        self,
        accounts: Accounts | None,
        keys: KeyRing,
        *,
        wall: Callable[[], float] = time.time,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.accounts = accounts
        self.keys = keys
        self.wall = wall
        self.refresh_s = refresh_s
        #: set once the accounts have been read, or found unreadable (see ``problem``)
        self.ready = asyncio.Event()
        self.problem: str | None = None  # why the accounts cannot be read now
        self._view: dict[str, Account] | None = None
        self._read_at = 0.0  # when the view was read (wall clock)
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._kids_seen: set[str] = set()  # every key id in the directory then
        self._keys_read_once = False  # the keys were read (and their absence said) before
        self._lookup = asyncio.Event()
        self._fresh = asyncio.Event()  # set (and replaced) each time the accounts are read

    @classmethod
    def of_log(cls, alert_log: AlertLog | None) -> CommandGuard:
        """The accounts of the monitor's own log database, the keys of the data directory."""
        accounts = None if alert_log is None else Accounts(alert_log.url, migrate=False)
        return cls(accounts, KeyRing())

    # -- the check -----------------------------------------------------------------------------

    def check(self, token: object) -> Claims:
        """The token's claims if its account may act now; else ``TokenError`` or
        ``AccountError`` naming the cause."""
        claims = self._verify(token)
        if self._view is None:
            raise AccountError(
                f"the accounts could not be read ({self.problem or 'not yet'}): no command "
                "can be checked; try again in a moment"
            )
        account = self._view.get(claims.sub)
        if account is None:
            self._lookup.set()
            raise AccountError(
                f"account {claims.sub} is not known to this monitor (looking it up now): "
                "try again in a moment"
            )
        if account.disabled:
            raise AccountError(f"account {account.name} is disabled")
        if account.role != claims.role:
            raise AccountError(
                f"account {account.name} is now {account.role}, not {claims.role} as the "
                "token says: log in again"
            )
        # a token without iat_us counts whole seconds: one of the second the account
        # changed in may be older than the change, so it goes too
        issued = claims.iat_us if claims.iat_us is not None else claims.iat * 1_000_000
        if issued < account.changed_us or (
            claims.iat_us is None and issued // 1_000_000 == account.changed_us // 1_000_000
        ):
            raise AccountError(
                f"account {account.name} was changed at {format_ts(account.changed_us)}, "
                "after this token was issued: log in again"
            )
        if self.problem is not None:
            log.warning(
                "command by %s checked against the accounts as read at %s (%s)",
                account.name,
                format_ts(int(self._read_at * 1e6)),
                self.problem,
            )
        return claims

    async def settle(self, token: object, within: float = _SETTLE_S) -> None:
        """Before ``check``: the account of a valid token that this monitor does not know yet
        (added since the accounts were last read) is looked up now, so that a new nurse's
        first command is checked against it rather than refused. Only a token that verifies
        can make it wait: a made-up name needs the signing key."""
        try:
            claims = self._verify(token)
        except TokenError:
            return  # check() says why
        if self._view is None or claims.sub in self._view or self.accounts is None:
            return
        fresh = self._fresh
        self._lookup.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await fresh.wait()

    def _verify(self, token: object) -> Claims:
        try:
            return verify(token, self._keys, self.wall())
        except UnknownKeyError as exc:
            # a key made since they were read (the first login, a rotation)? A made-up id
            # costs no more than a look at the directory, a key seen before not even that
            if exc.kid in self._kids_seen or not self.keys.has(exc.kid):
                raise
        self._read_keys()
        return verify(token, self._keys, self.wall())

    def _read_keys(self) -> None:
        try:
            self._kids_seen = set(self.keys.kids())
            keys = self.keys.verifying_keys(self.wall())
        except TokenError as exc:
            log.error("token keys: %s; tokens are checked against the keys read before", exc)
            return
        if not keys and (self._keys or not self._keys_read_once):
            log.warning(
                "no token keys in %s: every command is refused until one is made "
                "(the first calguard login, or calguard keys rotate)",
                self.keys.directory,
            )
        self._keys, self._keys_read_once = keys, True

    # -- keeping fresh -------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the accounts and keys now, then every ``refresh_s`` and on demand."""
        if self.accounts is None:
            self._read_keys()
            self._unreadable("this monitor has no log database, where the accounts are kept")
            return
        try:
            async with self.accounts:
                while True:
                    self._read_keys()
                    await self._refresh(self.accounts)
                    await asyncio.sleep(_LOOKUP_GAP_S)  # a flood of made-up names is no
                    await self._next_refresh()  # flood of reads
        except LogError as exc:  # the database cannot even be named: nothing to retry
            self._unreadable(str(exc))

    async def _refresh(self, accounts: Accounts) -> None:
        at = self.wall()
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                view = await accounts.snapshot()
        except LogError as exc:
            self._unreadable(str(exc))
            return
        except TimeoutError:
            self._unreadable(f"the accounts database did not answer in {_READ_TIMEOUT_S:g} s")
            return
        except Exception as exc:  # reading the accounts must never stop the monitor
            log.exception("reading the accounts failed")
            self._unreadable(f"reading the accounts failed: {exc!r}")
            return
        if self.problem is not None:
            log.warning("the accounts can be read again (%s)", accounts.display_url)
        self._view, self._read_at, self.problem = view, at, None
        self.ready.set()
        self._fresh.set()
        self._fresh = asyncio.Event()

    async def _next_refresh(self) -> None:
        """Until the next refresh is due, or an unknown name asks for one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self.refresh_s - _LOOKUP_GAP_S)):
                await self._lookup.wait()
        self._lookup.clear()

    def _unreadable(self, why: str) -> None:
        if self.problem != why:
            if self._view is not None:
                log.error(
                    "%s: commands are checked against the accounts as read at %s",
                    why,
                    format_ts(int(self._read_at * 1e6)),
                )
            else:
                log.error("%s: every command is refused until the accounts can be read", why)
        self.problem = why
        self.ready.set()
        self._fresh.set()
        self._fresh = asyncio.Event()
