"""A receiver process (``python -m node.pacs.receivers.worker FD``): serves the storage
associations the node's main process hands it over the channel on descriptor FD.

Each association runs on its own thread, as in the main process (server.py); the
instance is decoded, validated, journalled and written here, and its rows and audit
entries go to the main process (remote.py). It stops when told to (after a final
checkpoint) or when the main process goes away (its journal is then replayed at the
node's next start).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...logsetup import setup_logging
from ...store.files import ObjectFiles
from ..association import Association, Message, serve_messages, unsupported
from ..ingest import Ingestor
from ..journal import Journal
from ..store_scp import StoreHandler
from ..wire import PduSocket, end_connections
from .channel import Calls, Channel, ChannelClosed, Sequential
from .messages import Handoff
from .remote import RemoteAudit, RemoteLedger

log = logging.getLogger("medfed.dicom")


@dataclass(frozen=True)
class Settings:
    """What the main process tells a receiver when it starts it."""

    index: int
    files_root: str
    journal_dir: str | None      # None: durability other than "full"
    journal_key: str
    journal_seq: int             # replayed up to here by the main process
    series_idle_s: float
    network_timeout_s: float
    dimse_timeout_s: float
    log_file: str | None
    log_level: str

    def to_json(self) -> dict[str, Any]:
        return {"op": "settings", **self.__dict__}

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> "Settings":
        fields = {k: m[k] for k in cls.__dataclass_fields__}
        return cls(**fields)


class Receiver:
    def __init__(self, channel: Channel, settings: Settings) -> None:
        self.channel = channel
        self.settings = settings
        self.call_timeout_s = max(settings.dimse_timeout_s, 10.0)
        self.calls = Calls(channel, timeout_s=self.call_timeout_s)
        files = ObjectFiles(Path(settings.files_root))
        journal = Journal(Path(settings.journal_dir)) if settings.journal_dir else None
        self.ledger = RemoteLedger(self.calls)
        self.ingestor = Ingestor(None, files, series_idle_s=settings.series_idle_s,
                                 journal=journal, ledger=self.ledger,
                                 journal_key=settings.journal_key)
        self.store = StoreHandler(files, self.ingestor, RemoteAudit(self.ledger))
        self._lock = threading.Lock()
        self._open: dict[int, tuple[socket.socket, threading.Thread]] = {}

    def start(self) -> None:
        journal = self.ingestor.journal
        if journal is not None:
            journal.prepare()   # once per receiver: later flushes are data only
            self.ingestor.resume_journal(self.settings.journal_seq)

    def run(self) -> None:
        """Read the channel until the main process closes it."""
        self.channel.send({"op": "ready", "pid": os.getpid()})
        try:
            while True:
                message, fds = self.channel.receive()
                op = message.get("op")
                if op == "reply":
                    self.calls.answer(message)
                elif op == "assoc" and len(fds) == 2:
                    self._start_association(Handoff.from_json(message), *fds)
                elif op == "stop":
                    threading.Thread(target=self._stop, name="receiver-stop",
                                     daemon=True).start()
                else:
                    for fd in fds:
                        socket.close(fd)
                    log.warning("receiver %d: unexpected message %r ignored",
                                self.settings.index, op)
        except ChannelClosed:
            pass
        self.calls.close()
        self._close_associations()

    def _start_association(self, handoff: Handoff, fd: int, channel_fd: int) -> None:
        sock = socket.socket(fileno=fd)
        link = Channel(socket.socket(fileno=channel_fd))
        thread = threading.Thread(target=self._serve, args=(handoff, sock, link),
                                  daemon=True, name=f"receiver-assoc-{handoff.peer_host}")
        with self._lock:
            self._open[id(sock)] = (sock, thread)
        thread.start()

    def _serve(self, handoff: Handoff, sock: socket.socket, link: Channel) -> None:
        self.ledger.bind(Sequential(link, self.call_timeout_s))
        try:
            sock.settimeout(self.settings.network_timeout_s)
            io = PduSocket(sock, max_receive=handoff.max_receive)
            io.max_send = handoff.max_send
            io.prime(handoff.buffered)
            assoc = Association(io, handoff.calling_ae, handoff.called_ae, handoff.peer_host,
                                handoff.presentation_contexts(),
                                dimse_timeout=self.settings.dimse_timeout_s,
                                network_timeout=self.settings.network_timeout_s)
            serve_messages(assoc, self.store.sink_for, self._dispatch)
        except Exception:
            log.exception("receiver %d: association from %s failed", self.settings.index,
                          handoff.peer_host)
        finally:
            self.ledger.bind(None)
            link.close()   # the main process sees the association end
            sock.close()
            with self._lock:
                self._open.pop(id(sock), None)

    def _dispatch(self, assoc: Association, msg: Message) -> None:
        if not self.store.answer(assoc, msg):
            unsupported(assoc, msg)

    def _close_associations(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            open_now = list(self._open.values())
        end_connections(open_now, timeout_s)

    def _stop(self) -> None:
        """Told to stop: end the associations, checkpoint, then say so."""
        self._close_associations()
        try:
            self.ingestor.close()
        finally:
            try:
                self.channel.send({"op": "stopped"})
            except ChannelClosed:
                pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process stops us
    channel = Channel(socket.socket(fileno=int(argv[0])))
    try:
        message, _fds = channel.receive()
        settings = Settings.from_json(message)
    except (ChannelClosed, KeyError, TypeError, ValueError) as exc:
        print(f"medfed receiver: no settings from the node ({exc})", file=sys.stderr)
        return 2
    setup_logging(Path(settings.log_file) if settings.log_file else None, settings.log_level)
    receiver = Receiver(channel, settings)
    try:
        receiver.start()
    except OSError as exc:
        log.error("receiver %d cannot start: %s", settings.index, exc)
        channel.send({"op": "failed", "reason": str(exc)})
        return 1
    receiver.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
