"""Turning a failed listen into a message that names the port and the config key to change."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class PortUnavailableError(Exception):
    """A port the node must listen on is taken or not allowed; the message says which."""


def _os_error(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def unavailable(exc: BaseException, *, service: str, host: str, port: int,
                config_key: str) -> PortUnavailableError | None:
    """The clear error for ``exc`` when it is a bind failure, else None."""
    os_error = _os_error(exc)
    if os_error is None:
        return None
    where = f"{host}:{port}"
    if os_error.errno == errno.EADDRINUSE:
        return PortUnavailableError(
            f"the {service} port {where} is already in use (another medfed node or another "
            f"program listens there); stop it or choose another port: {config_key} in the "
            "node's medfed.toml")
    if os_error.errno == errno.EACCES:
        return PortUnavailableError(
            f"the {service} port {where} is not allowed for this user (ports below 1024 need "
            f"root or CAP_NET_BIND_SERVICE); choose a port of 1024 or above: {config_key}")
    if os_error.errno == errno.EADDRNOTAVAIL:
        return PortUnavailableError(
            f"the {service} address {host} is not an address of this host; fix {config_key}")
    return None


async def listening(start: Callable[[], Awaitable[T]], *, service: str, host: str, port: int,
                    config_key: str) -> T:
    """Run ``start`` (a listen); a bind failure becomes PortUnavailableError."""
    try:
        return await start()
    except Exception as exc:
        clear = unavailable(exc, service=service, host=host, port=port, config_key=config_key)
        if clear is None:
            raise
        raise clear from exc
