"""Who is asking: the local user behind a DICOMweb request, and the 401/403 otherwise.

The web app's ``authenticate(request)`` (session cookie or bearer token) decides who the
caller is. Every federated request is made for a registered local user
(``node.users``): role and department come from the user's record, the purpose is one
the record allows (``treatment`` when allowed, else the first), and other sites see only
the user's pseudonymous handle.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from aiohttp import web

from node.users import User, UserRefused, resolve_user

Authenticate = Callable[[web.Request], Union[Any, Awaitable[Any]]]
PREFERRED_PURPOSE = "treatment"


@dataclass(frozen=True)
class Requester:
    user: User
    purpose: str

    @property
    def handle(self) -> str:
        return self.user.handle

    @property
    def cache_key(self) -> tuple[str, str, str, str]:
        """What a release decision depends on: decrypted data is never shared across these."""
        return (self.user.handle, self.user.role, self.user.department, self.purpose)


def unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text="DICOMweb needs a login: send 'Authorization: Bearer <token>' (medfed user "
             "login) or the web app's session cookie",
        headers={"WWW-Authenticate": 'Bearer realm="medfed"'})


def _purpose(principal: Any, user: User) -> str:
    stated = getattr(principal, "purpose", "") or ""
    if stated:
        if not user.may_state(stated):
            raise UserRefused("purpose_not_allowed",
                              f"user {user.name!r} may not state purpose {stated!r}")
        return str(stated)
    if user.may_state(PREFERRED_PURPOSE):
        return PREFERRED_PURPOSE
    if not user.purposes:
        raise UserRefused("no_purpose", f"user {user.name!r} may state no purpose; an "
                                        "administrator sets one with 'medfed user add --purpose'")
    return user.purposes[0]


async def requester_for(request: web.Request, authenticate: Authenticate, node: Any) -> Requester:
    """The caller as a local user record, or raise 401 (no login) / 403 (user refused)."""
    principal = authenticate(request)
    if inspect.isawaitable(principal):
        principal = await principal
    if principal is None:
        raise unauthorized()
    try:
        user = principal if isinstance(principal, User) else getattr(principal, "user", None)
        if not isinstance(user, User):
            name = user if isinstance(user, str) else getattr(principal, "name", "")
            user = await asyncio.to_thread(resolve_user, node.users, str(name),
                                           audit=node.audit, via="dicomweb")
        return Requester(user, _purpose(principal, user))
    except UserRefused as exc:
        raise web.HTTPForbidden(text=exc.reason) from None
