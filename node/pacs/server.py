"""Listening sockets (plain and TLS) and one thread per association.

No reactor threads and no polling: each accepted connection gets its own thread that
blocks on its socket (see association.py for the figures). Stopping closes the
listeners and every open connection, then joins the threads.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Callable

from .wire import end_connections, shut, tune

log = logging.getLogger("medfed.dicom")

Handler = Callable[[socket.socket, tuple[str, int], bool], None]


class AssociationServer:
    """Accepts connections on ``(host, port)`` and runs ``handler(sock, address, tls)``
    on a thread per connection; the handler rejects what is over its limit itself
    (``open_count``: how many this server serves now)."""

    def __init__(self, handler: Handler, *, handshake_timeout: float = 30.0) -> None:
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self._listeners: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._accept_threads: list[threading.Thread] = []
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Bind and start accepting; returns the bound port. Raises OSError with the
        address in the message when the port is taken."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen for DICOM on {host}:{port}: "
                                     f"{exc.strerror}") from exc
        sock.listen(128)
        self._listeners.append((sock, tls))
        thread = threading.Thread(target=self._accept_loop, args=(sock, tls), daemon=True,
                                  name=f"dicom-accept-{sock.getsockname()[1]}")
        self._accept_threads.append(thread)
        thread.start()
        return int(sock.getsockname()[1])

    @property
    def open_count(self) -> int:
        """Connections this server's threads serve now (the one asking included)."""
        with self._lock:
            return len(self._conns)

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        while not self._stopping:
            try:
                conn, addr = listener.accept()
            except OSError:
                return  # closed by stop()
            tune(conn)
            thread = threading.Thread(target=self._run, args=(conn, addr, tls), daemon=True,
                                      name=f"dicom-assoc-{addr[0]}:{addr[1]}")
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self._conns[id(conn)] = (conn, thread)
            thread.start()

    def _run(self, conn: socket.socket, addr: tuple[str, int],
             tls: ssl.SSLContext | None) -> None:
        sock: socket.socket = conn
        try:
            if tls is not None:
                conn.settimeout(self.handshake_timeout)
                sock = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                with self._lock:
                    self._conns[id(conn)] = (sock, self._conns[id(conn)][1])
                sock.do_handshake()
            self.handler(sock, addr, tls is not None)
        except (ssl.SSLError, OSError) as exc:
            log.info("DICOM connection from %s ended: %s", addr[0], exc)
        except Exception:
            log.exception("DICOM association from %s failed", addr[0])
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self._conns.pop(id(conn), None)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for sock, _tls in self._listeners:
            shut(sock)
            sock.close()
        for thread in self._accept_threads:
            thread.join(timeout)
        with self._lock:
            conns = list(self._conns.values())
        end_connections(conns, timeout)
        self._listeners.clear()
        self._accept_threads.clear()
