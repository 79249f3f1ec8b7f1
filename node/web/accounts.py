"""The node's local users as the web port sees them: password login and bearer tokens.

Passwords are checked by ``node.users.UserStore`` (argon2id). Bearer tokens are looked
up through one function, ``TokenLookup``, so the token store can change without the web
app noticing. Hashing is CPU-bound and the store is synchronous: both run in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from node.users import AuthenticationFailed, User, UserStore

from .principal import Principal, Via

TokenLookup = Callable[[str], Awaitable["Principal | None"]]

# What each role may give as its purpose of use in a federated query (the serving
# site's policy still decides what that purpose gets).
PURPOSES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "clinician": ("treatment", "research"),
    "researcher": ("research",),
    "admin": ("operations", "treatment"),
}


def users_path(data_dir: Path) -> Path:
    return data_dir / "users.sqlite"


def principal_of(user: User, via: Via) -> Principal:
    return Principal(user.name, user.handle, user.role, user.department,
                     PURPOSES_BY_ROLE.get(user.role, ()), via)


async def no_tokens(token: str) -> Principal | None:
    """Until a token store is configured no bearer token is valid."""
    return None


class Accounts:
    def __init__(self, users: UserStore, token_lookup: TokenLookup = no_tokens) -> None:
        self.users = users
        self._token_lookup = token_lookup

    @classmethod
    async def open(cls, data_dir: Path, token_lookup: TokenLookup | None = None) -> "Accounts":
        users = await asyncio.to_thread(UserStore, users_path(data_dir))
        return cls(users, token_lookup or no_tokens)

    async def login(self, name: str, password: str) -> Principal:
        """The user's principal; raises AuthenticationFailed (same for every reason)."""
        user = await asyncio.to_thread(self.users.authenticate, name, password)
        return principal_of(user, "session")

    async def handle_of(self, name: str) -> str | None:
        """The pseudonymous handle of a user name, for audit entries of failed logins."""
        user = await asyncio.to_thread(self.users.get, name)
        return user.handle if user is not None else None

    async def principal_for_token(self, token: str) -> Principal | None:
        if len(token) > 512:
            return None
        return await self._token_lookup(token)


__all__ = ["Accounts", "AuthenticationFailed", "TokenLookup", "principal_of", "users_path"]
