"""Who is asking: the authenticated principal of a DICOMweb request, and the 401 otherwise.

The web app's ``authenticate(request)`` (session cookie or bearer token) decides who the
caller is; this module only reads what a federated request needs from its answer: the
user's pseudonymous handle (what other sites see), role, department and purpose.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from aiohttp import web

Authenticate = Callable[[web.Request], Union[Any, Awaitable[Any]]]
DEFAULT_PURPOSE = "treatment"


@dataclass(frozen=True)
class Requester:
    name: str            # login name at this node (home-site audit only)
    handle: str          # pseudonymous id sent to other sites
    role: str
    department: str
    purpose: str
    record: Any = None   # the user record, when the principal carries one

    @property
    def cache_key(self) -> tuple[str, str, str, str]:
        """What a release decision depends on: decrypted data is never shared across these."""
        return (self.handle, self.role, self.department, self.purpose)


def requester_of(principal: Any) -> Requester:
    """Read a principal: its ``user`` record, or the same attributes on itself."""
    record = getattr(principal, "user", None)
    source = record if record is not None and not isinstance(record, str) else principal
    name = str(getattr(source, "name", "") or getattr(principal, "name", "") or record or "")
    handle = str(getattr(source, "handle", "") or name)
    return Requester(name=name, handle=handle, role=str(getattr(source, "role", "clinician")),
                     department=str(getattr(source, "department", "") or "radiology"),
                     purpose=_purpose(principal),
                     record=source if source is not principal else record)


def _purpose(principal: Any) -> str:
    """The stated purpose, else treatment when the user may state it, else their first."""
    stated = getattr(principal, "purpose", "")
    if stated:
        return str(stated)
    allowed = tuple(getattr(principal, "purposes", ()) or ())
    if not allowed or DEFAULT_PURPOSE in allowed:
        return DEFAULT_PURPOSE
    return str(allowed[0])


def unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text="DICOMweb needs a login: send 'Authorization: Bearer <token>' (medfed user "
             "login) or the web app's session cookie",
        headers={"WWW-Authenticate": 'Bearer realm="medfed"'})


async def requester_for(request: web.Request, authenticate: Authenticate) -> Requester:
    """The caller, or raise 401."""
    principal = authenticate(request)
    if inspect.isawaitable(principal):
        principal = await principal
    if principal is None:
        raise unauthorized()
    who = requester_of(principal)
    if not who.handle:
        raise unauthorized()
    return who
