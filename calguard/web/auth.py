"""Who is at the station: logging in with a CalGuard account, the session, CSRF, bearer tokens.

A login in the browser is ``calguard login`` done by the station: the password is checked
against the accounts of the monitor's log database (``Accounts.authenticate``: Argon2id,
in a worker thread), and the station signs the same short-lived token
(``calguard.tokens.issue``) with the keys of this machine. The token is the session: it
travels in a cookie the page's scripts cannot read (HttpOnly), that the browser sends to
this station only (SameSite=Strict; the cookie's name carries the port, since cookies do
not tell ports apart). Every request checks it as the monitor checks a command
(``CommandGuard.check``: signature, expiry, account enabled, role unchanged, password not
changed since), so ``calguard user disable`` ends a browser session too. The API takes the
token of ``calguard login`` as ``Authorization: Bearer``.

A request that changes something and comes with the cookie must carry the CSRF token
(``X-CSRF-Token``): an HMAC of the token's id under a key this station process draws at
start, which a page of this station reads from ``/api/session`` and no other site can
read; the request's ``Origin``, when the browser sends one, must be the station's own.

Viewing the ward needs no login: a wall display must not go blank when a session ends.
Acting does, always.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from hashlib import sha256

from starlette.requests import Request
from starlette.responses import Response

from calguard.alerts.accounts import AccountError, Accounts, AuthenticationError
from calguard.guard import CommandGuard
from calguard.monitor.errors import LogError
from calguard.tokens import TokenError, issue

__all__ = ["Person", "Refused", "Sessions"]

log = logging.getLogger(__name__)

_FAILURES = 5  # failed logins of one account within _FAILURE_WINDOW_S ...
_FAILURE_WINDOW_S = 300.0
_LOCKOUT_S = 60.0  # ... make it wait this long before the next try
_HASHING = 2  # logins checked at once (Argon2id takes tens of MB each)
_MAX_FIELD = 1024


class Refused(Exception):
    """A request refused, with its HTTP status and the reason for the person who asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Person:
    """Someone logged in: their account, role, and the token that proves it."""

    name: str
    role: str
    expires: int  # seconds since the epoch
    token: str
    jti: str
    by_cookie: bool


class Sessions:
    """Logins, sessions and the checks each request goes through."""

    def __init__(
        self,
        guard: CommandGuard | None,
        accounts: Accounts | None,
        *,
        ttl_s: int,
    ) -> None:
        self.guard = guard
        self.accounts = accounts
        self.ttl_s = ttl_s
        self.cookie = "calguard_session"  # the station adds its port once it listens
        self._csrf_key = secrets.token_bytes(32)  # per process: a restart asks the page again
        self._revoked: dict[str, int] = {}  # jti -> expiry: logged out before it expired
        self._failures: dict[str, deque[float]] = {}
        self._hashing = asyncio.Semaphore(_HASHING)

    @property
    def available(self) -> str | None:
        """None if people can log in here, else why not."""
        if self.guard is None or self.accounts is None:
            return "this monitor keeps no log database, where the accounts are: nobody can log in"
        return None

    # -- who is asking ---------------------------------------------------------------------

    def person(self, request: Request) -> Person | None:
        """The person the request proves to be, or None (no token, or one that no longer
        holds: the reason is logged at debug level, the page simply shows "log in")."""
        try:
            return self._check(request)
        except Refused as exc:
            log.debug("web session not accepted: %s", exc.message)
            return None

    def require(self, request: Request, *, write: bool) -> Person:
        """The person, or ``Refused``; a change made with the cookie needs the CSRF token."""
        person = self._check(request)
        if person is None:
            raise Refused(401, "log in first: actions need a CalGuard account")
        if write and person.by_cookie:
            self._check_csrf(request, person)
        return person

    def _check(self, request: Request) -> Person | None:
        header = request.headers.get("authorization", "")
        by_cookie = not header
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused(401, "Authorization: Bearer TOKEN is expected (calguard login)")
            token = token.strip()
        else:
            token = request.cookies.get(self.cookie, "")
            if not token:
                return None
        if self.guard is None:
            raise Refused(401, self.available or "")
        try:
            claims = self.guard.check(token)
        except (TokenError, AccountError) as exc:
            raise Refused(401, str(exc)) from None
        if claims.jti in self._revoked:
            raise Refused(401, "this session was logged out: log in again")
        return Person(claims.sub, claims.role, claims.exp, token, claims.jti, by_cookie)

    def csrf(self, person: Person) -> str:
        return hmac.new(self._csrf_key, person.jti.encode(), sha256).hexdigest()

    def _check_csrf(self, request: Request, person: Person) -> None:
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own:
            raise Refused(403, f"a request from {origin} may not act at this station")
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent.encode(), self.csrf(person).encode()):
            raise Refused(
                403, "the page's CSRF token is missing or stale (the monitor restarted?): reload"
            )

    # -- logging in and out ------------------------------------------------------------------

    async def login(self, name: object, password: object, client: str) -> Person:
        """Check the password and sign a token; ``Refused`` says why not."""
        if self.available is not None:
            raise Refused(503, self.available)
        assert self.accounts is not None and self.guard is not None
        if not isinstance(name, str) or not isinstance(password, str):
            raise Refused(400, 'a JSON object with "user" and "password" texts is expected')
        if not 0 < len(name) <= _MAX_FIELD or len(password) > _MAX_FIELD:
            raise Refused(400, "the user name or password is too long or empty")
        self._throttle(name)
        try:
            async with self._hashing:
                account = await self.accounts.authenticate(name, password)
        except AuthenticationError as exc:
            self._failed(name)
            log.warning("web login refused for %r from %s: %s", name, client, exc)
            raise Refused(401, str(exc)) from None
        except AccountError as exc:
            log.warning("web login refused for %r from %s: %s", name, client, exc)
            raise Refused(403, str(exc)) from None
        except LogError as exc:
            log.error("web login of %r: %s", name, exc)
            raise Refused(503, f"the accounts cannot be read now: {exc}") from None
        try:
            token = issue(
                self.guard.keys, account.name, account.role, ttl_s=self.ttl_s, now_s=time.time()
            )
        except TokenError as exc:
            log.error("web login of %s: no token could be signed: %s", account.name, exc)
            raise Refused(503, f"no token could be signed: {exc}") from None
        await self.guard.settle(token)  # an account added since the monitor last read them
        self._failures.pop(name, None)
        try:
            claims = self.guard.check(token)
        except (TokenError, AccountError) as exc:
            raise Refused(503, f"the monitor cannot check the session yet: {exc}") from None
        log.info(
            "%s (%s) logged in at the central station from %s", claims.sub, claims.role, client
        )
        return Person(claims.sub, claims.role, claims.exp, token, claims.jti, True)

    def logout(self, person: Person) -> None:
        now = time.time()
        self._revoked = {j: exp for j, exp in self._revoked.items() if exp > now}
        self._revoked[person.jti] = person.expires
        log.info("%s logged out of the central station", person.name)

    def set_cookie(self, response: Response, person: Person) -> None:
        response.set_cookie(
            self.cookie,
            person.token,
            max_age=max(0, person.expires - int(time.time())),
            path="/",
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")

    def _throttle(self, name: str) -> None:
        failures = self._failures.get(name)
        if failures is None:
            return
        now = time.monotonic()
        while failures and failures[0] < now - _FAILURE_WINDOW_S:
            failures.popleft()
        if len(failures) >= _FAILURES and now - failures[-1] < _LOCKOUT_S:
            wait = _LOCKOUT_S - (now - failures[-1])
            raise Refused(429, f"too many failed logins for {name!r}: try again in {wait:.0f} s")

    def _failed(self, name: str) -> None:
        if len(self._failures) > 10_000:  # a flood of made-up names: forget, never grow
            self._failures.clear()
        self._failures.setdefault(name, deque(maxlen=_FAILURES)).append(time.monotonic())
