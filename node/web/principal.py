"""Who is asking the web port: one answer for the session cookie and for a bearer token.

The web app, the OHIF viewer and DICOMweb all ask ``authenticate(request)``; nothing
else decides who a request belongs to. A browser carries the session cookie, a tool
(dicomweb-client, OHIF opened with ``?token=``) carries ``Authorization: Bearer``.
A request that offers a bearer header is judged by the token alone: a bad token is no
login even when a session cookie rides along.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from .keys import ACCOUNTS_KEY, PRINCIPAL_KEY, SESSION_KEY, SESSIONS_KEY, Unset

if TYPE_CHECKING:
    from node.users import User

Via = Literal["session", "token"]


@dataclass(frozen=True)
class Principal:
    """A logged-in local user of this node, as far as the web port is concerned."""

    user: str                  # login name: shown to the user, never sent to other sites
    handle: str                # pseudonymous id: what assertions and audit entries carry
    role: str
    department: str
    purposes: tuple[str, ...]  # purposes of use this user may state in a request
    via: Via
    record: "User | None" = field(default=None, compare=False, repr=False)  # as at login

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


Authenticate = Callable[[web.Request], Awaitable["Principal | None"]]


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header ('' when the header is malformed)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def authenticate(request: web.Request) -> Principal | None:
    """The request's user, or None. Cached on the request: ask as often as you like."""
    cached = request.get(PRINCIPAL_KEY, Unset)
    if cached is not Unset:
        return cached  # type: ignore[return-value]
    principal: Principal | None = None
    token = bearer_token(request)
    if token is not None:
        if token:
            principal = await request.config_dict[ACCOUNTS_KEY].principal_for_token(token)
    else:
        sessions = request.config_dict[SESSIONS_KEY]
        session = sessions.get(request.cookies.get(sessions.cookie_name, ""))
        if session is not None:
            request[SESSION_KEY] = session
            principal = session.principal
    request[PRINCIPAL_KEY] = principal
    return principal
