"""The one way a node vouches for a local user: a signed assertion built from the user record.

Every federated request (CLI, control socket, web, DICOMweb, DICOM C-FIND/C-GET to the
federation AE title) is made for a registered local user. Role and department come from
that user's record, never from the caller; the purpose must be one the record allows. Other
sites then see only the user's pseudonymous handle.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from node.identity import NodeIdentity
from node.net.assertion import DEFAULT_TTL_S, UserAssertion, issue_assertion

from .store import User, UserStore


class UserRefused(Exception):
    """This request cannot be made for this user; ``code`` names why in one word."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Audit(Protocol):
    def append(self, event: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> Any: ...


def resolve_user(users: UserStore, name: str, *, audit: _Audit | None = None,
                 via: str = "cli") -> User:
    """The enabled user called ``name``; raises UserRefused (audited as ``user.refused``)."""
    user = users.get(name) if isinstance(name, str) else None
    if user is None:
        refusal = UserRefused("unknown_user", f"no local user {str(name)[:64]!r} at this node; "
                                              "an administrator adds one with 'medfed user add'")
    elif user.disabled:
        refusal = UserRefused("user_disabled", f"user {name!r} is disabled at this node")
    else:
        return user
    if audit is not None:
        audit.append("user.refused", str(name)[:64], "refused", code=refusal.code, via=via)
    raise refusal


def user_assertion(identity: NodeIdentity, user: User, purpose: str, *,
                   now: float | None = None, ttl_s: int = DEFAULT_TTL_S) -> UserAssertion:
    """Sign the assertion for ``user`` stating ``purpose``: role and department from the record."""
    if user.disabled:
        raise UserRefused("user_disabled", f"user {user.name!r} is disabled at this node")
    if not user.may_state(purpose):
        allowed = ", ".join(user.purposes) or "none"
        raise UserRefused("purpose_not_allowed",
                          f"user {user.name!r} ({user.role}) may not state purpose {purpose!r} "
                          f"(allowed: {allowed}); an administrator sets this with "
                          "'medfed user add --purpose'")
    return issue_assertion(identity, user=user.handle, role=user.role,
                           department=user.department, purpose=purpose,
                           now=time.time() if now is None else now, ttl_s=ttl_s)
