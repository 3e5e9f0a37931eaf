"""The demo's accounts: a new user logs in at the demo's station without setting anything up.

Made in the demo's own training log only (never a ward's), with a fresh random password
each run, printed by ``calguard demo``: a nurse, who may acknowledge and pause, and a
charge nurse, who may also override a high alarm (the built-in library's permissions).
"""

from __future__ import annotations

import secrets

from calguard.alerts.accounts import Accounts

__all__ = ["DEMO_ACCOUNTS", "demo_accounts"]

DEMO_ACCOUNTS = (("demo-charge", "charge-nurse"), ("demo-nurse", "nurse"))


async def demo_accounts(url: str) -> list[tuple[str, str, str]]:
    """(name, role, password) of each demo account, made or given a new password now."""
    made = []
    async with Accounts(url) as accounts:
        known = await accounts.snapshot()
        for name, role in DEMO_ACCOUNTS:
            password = secrets.token_urlsafe(9)  # 12 characters: a password the rules take
            account = known.get(name)
            if account is None:
                await accounts.add(name, role, password)
            else:
                await accounts.passwd(name, password)
                if account.disabled:
                    await accounts.enable(name)
            made.append((name, account.role if account is not None else role, password))
    return made
