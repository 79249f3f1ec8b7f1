"""Audit entries for web actions: actor is the user's pseudonymous handle, never PHI."""

from __future__ import annotations

from aiohttp import web

from .keys import NODE_KEY, PRINCIPAL_KEY

Scalar = str | int | float | bool


def audit_web(request: web.Request, action: str, outcome: str, subject: str = "", *,
              actor: str | None = None, **detail: Scalar) -> None:
    """Append ``web.<action>`` to the node's audit log (client address included)."""
    node = request.config_dict[NODE_KEY]
    if node.audit is None:
        return
    if actor is None:
        principal = request.get(PRINCIPAL_KEY)
        actor = principal.handle if principal is not None else "anonymous"
    peer = request.remote or "unknown"
    node.audit.append(f"web.{action}", actor[:64], outcome, subject, addr=peer[:64], **detail)
