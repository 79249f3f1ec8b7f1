"""Local users of a node: records (argon2id passwords), short-lived tokens, and the signed
assertion a federated request carries for one of them.

- ``UserStore`` / ``User`` (``store``): who may log in, role, department, allowed purposes.
- ``TokenStore`` (``tokens``): ``issue_token(user, ttl_s)``, ``verify_token(token)``,
  ``revoke(token)``, ``revoke_user(name)``; only hashes are stored.
- ``resolve_user`` / ``user_assertion`` (``assertions``): the one way to build a request's
  assertion from a user record; ``UserRefused`` for unknown, disabled, wrong purpose.
"""

from .assertions import UserRefused, resolve_user, user_assertion
from .store import (MAX_PASSWORD, MIN_PASSWORD, ROLE_PURPOSES, AuthenticationFailed, User,
                    UserError, UserStore)
from .tokens import DEFAULT_TTL_S as TOKEN_TTL_S, TokenStore

__all__ = ["AuthenticationFailed", "MAX_PASSWORD", "MIN_PASSWORD", "ROLE_PURPOSES", "TOKEN_TTL_S",
           "TokenStore", "User", "UserError", "UserRefused", "UserStore", "resolve_user",
           "user_assertion"]
