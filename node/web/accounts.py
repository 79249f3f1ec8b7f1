"""The node's local users as the web port sees them: password login and bearer tokens.

Passwords are checked by the node's ``UserStore`` (argon2id), bearer tokens by its
``TokenStore`` (``medfed user login`` issues them). Both are synchronous and hashing is
CPU-bound, so they run in a thread. Every action re-reads the user's record
(``current``), so disabling a user stops their open sessions too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from node.users import AuthenticationFailed, TokenStore, User, UserRefused, UserStore, resolve_user

from .principal import Principal, Via

TokenLookup = Callable[[str], Awaitable["Principal | None"]]
MAX_TOKEN = 512


def principal_of(user: User, via: Via) -> Principal:
    return Principal(user.name, user.handle, user.role, user.department, tuple(user.purposes),
                     via, record=user)


def restored_principal(accounts: "Accounts", name: str) -> Principal | None:
    """The session principal of a user a stored session names, if they may still log in
    (blocking)."""
    try:
        return principal_of(resolve_user(accounts.users, name, via="web"), "session")
    except UserRefused:
        return None


class Accounts:
    def __init__(self, users: UserStore, tokens: TokenStore, *,
                 token_lookup: TokenLookup | None = None) -> None:
        """``token_lookup`` replaces the token store (tests of the bearer path)."""
        self.users = users
        self.tokens = tokens
        self._token_lookup = token_lookup

    async def login(self, name: str, password: str) -> Principal:
        """The user's principal; raises AuthenticationFailed (same for every reason)."""
        user = await asyncio.to_thread(self.users.authenticate, name, password)
        return principal_of(user, "session")

    async def handle_of(self, name: str) -> str | None:
        """The pseudonymous handle of a user name, for audit entries of failed logins."""
        user = await asyncio.to_thread(self.users.get, name)
        return user.handle if user is not None else None

    async def principal_for_token(self, token: str) -> Principal | None:
        if len(token) > MAX_TOKEN:
            return None
        if self._token_lookup is not None:
            return await self._token_lookup(token)
        user = await asyncio.to_thread(self.tokens.verify_token, token)
        return principal_of(user, "token") if user is not None else None

    async def current(self, principal: Principal, audit: object = None) -> User:
        """The user's record as it is now; raises UserRefused when disabled or removed."""
        return await asyncio.to_thread(resolve_user, self.users, principal.user,
                                       audit=audit, via="web")  # type: ignore[arg-type]


__all__ = ["Accounts", "AuthenticationFailed", "TokenLookup", "UserRefused", "principal_of"]
