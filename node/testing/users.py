"""Local users for tests, the demo and the simulator: one call gives a node a user record."""

from __future__ import annotations

import secrets
from typing import Any

from node.users import User, UserStore


def local_user(node: Any, name: str = "dr.test", *, role: str = "clinician",
               department: str = "radiology", purposes: tuple[str, ...] = ()) -> User:
    """The user ``name`` at ``node`` (a Node, or anything with ``users`` / ``cfg``), added
    with a random password when missing; purposes default to the role's."""
    store: UserStore = node.users if hasattr(node, "users") else UserStore(node.cfg.users_path)
    existing = store.get(name)
    if existing is not None:
        return existing
    return store.add_user(name, role, department, secrets.token_urlsafe(16), purposes)
