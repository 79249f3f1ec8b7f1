"""One local socket between the main process and a receiver: JSON messages, file
descriptors beside them, and request/reply matching.

A ``SOCK_SEQPACKET`` Unix socket keeps message boundaries (no framing) and carries an
accepted connection's descriptor with the message that describes it (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from ..wire import shut

MAX_MESSAGE = 1 << 20


class ChannelClosed(Exception):
    """The process at the other end stopped (or the socket was closed)."""


class Channel:
    """Thread-safe sends; one thread receives (``receive``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @staticmethod
    def pair() -> tuple["Channel", socket.socket]:
        """This end, and the socket to hand to the child process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(ours), theirs

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.sendall(data)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> tuple[dict[str, Any], list[int]]:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if not data:
            for fd in fds:
                socket.close(fd)
            raise ChannelClosed("the other process closed the channel")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ChannelClosed("a message that is not an object")
        return message, fds

    def close(self) -> None:
        shut(self.sock)
        self.sock.close()


class Calls:
    """Requests waiting for their reply, by id (the receiving thread calls ``answer``)."""

    def __init__(self, channel: Channel, timeout_s: float) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, Pending] = {}
        self._closed = False

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` and wait for its reply; ChannelClosed if the other side is gone
        or does not answer within ``timeout_s``."""
        pending = Pending(self, op)
        with self._lock:
            if self._closed:
                raise ChannelClosed("the node's main process is gone")
            self._next += 1
            pending.call_id = self._next
            self._waiting[pending.call_id] = pending
        try:
            self.channel.send({"op": op, "id": pending.call_id, **fields})
        except ChannelClosed:
            self._forget(pending)
            raise
        return pending.result()

    def _forget(self, pending: "Pending") -> None:
        with self._lock:
            self._waiting.pop(pending.call_id, None)

    def answer(self, message: dict[str, Any]) -> None:
        with self._lock:
            pending = self._waiting.pop(int(message.get("id", 0)), None)
        if pending is not None:
            pending.reply = message
            pending.done.set()

    def close(self) -> None:
        """Wake every waiting caller with ChannelClosed."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting.values()), {}
        for pending in waiting:
            pending.done.set()


class Sequential:
    """Calls on a channel that one thread owns (an association's): the reply to a call
    is the next message on it, read by the calling thread itself - no reader thread,
    so no second thread to wake for every reply."""

    def __init__(self, channel: Channel, timeout_s: float) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self._next = 0
        channel.sock.settimeout(timeout_s)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.start(op, **fields).result()

    def start(self, op: str, **fields: Any) -> "Next":
        self._next += 1
        self.channel.send({"op": op, "id": self._next, **fields})
        return Next(self, op, self._next)


class Next:
    """A call on a ``Sequential`` channel whose reply is the next message."""

    def __init__(self, calls: Sequential, op: str, call_id: int) -> None:
        self.calls, self.op, self.call_id = calls, op, call_id
        self._reply: dict[str, Any] | None = None

    def result(self) -> dict[str, Any]:
        if self._reply is None:
            message, fds = self.calls.channel.receive()   # a timeout: ChannelClosed
            for fd in fds:
                socket.close(fd)
            if message.get("id") != self.call_id:
                raise ChannelClosed(f"an answer out of order to {self.op!r}")
            self._reply = message
        return self._reply


class Pending:
    """A request sent, its reply not yet read."""

    def __init__(self, calls: Calls, op: str) -> None:
        self.calls = calls
        self.op = op
        self.call_id = 0
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None

    def result(self) -> dict[str, Any]:
        if not self.done.wait(self.calls.timeout_s):
            self.calls._forget(self)
            raise ChannelClosed(f"no answer to {self.op!r} within "
                                f"{self.calls.timeout_s:.0f} s")
        if self.reply is None:
            raise ChannelClosed("the node's main process is gone")
        return self.reply
