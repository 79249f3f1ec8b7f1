"""The first byte a client sent, without taking it off the socket (``MSG_PEEK``).

The peer port serves TLS and first-flight connections; which one a connection is must be
known before ``loop.start_tls`` takes the socket over, and bytes already read could not be
given back to it. Peeking on a duplicate of the socket's descriptor leaves them in place.
"""

from __future__ import annotations

import asyncio
import os
import socket


async def first_byte(transport: asyncio.Transport, timeout: float) -> bytes | None:
    """The first byte (b"" at end of stream or without a socket), None after ``timeout``."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return b""
    loop = asyncio.get_running_loop()
    dup = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        dup.setblocking(False)
        found: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if found.done():
                return
            try:
                found.set_result(dup.recv(1, socket.MSG_PEEK))
            except BlockingIOError:
                return
            except OSError:
                found.set_result(b"")

        loop.add_reader(dup.fileno(), readable)
        try:
            return await asyncio.wait_for(found, timeout)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(dup.fileno())
    finally:
        dup.close()
