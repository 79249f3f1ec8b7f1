"""The main process's side: starts the receiver processes, hands them storage
associations, and answers their claims, commits, checkpoints and audit entries.

One thread (``dicom-ledger``) reads every channel - each receiver's control channel
and one channel per handed-over association - through one selector and answers in
order: a commit is one relaxed SQLite transaction (~0.2 ms), and the metadata writer is
single anyway. One thread and not one per receiver: two reader threads in this process
handed the interpreter lock back and forth (a reply's ``sendall`` took 0.44 ms on
average, measured with cProfile at 4 senders). A claim that must wait for another
ingest of the same instance is answered later by the thread that releases it, so the
reader never blocks on one. A receiver that dies (kill -9, a crash) loses only what
it had not acknowledged: its claims are released, its journal is replayed here, and a
fresh receiver takes its place.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...audit.errors import AuditWriteError
from ..ingest import Ingestor
from ..journal import Journal
from ..ledger import JOURNAL_KEY, LocalLedger
from .channel import Channel, ChannelClosed
from .messages import Handoff, record_from_json, result_to_json, stored_from_json, \
    stored_to_json
from .worker import Settings

log = logging.getLogger("medfed.dicom")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
RESTARTS_PER_MINUTE = 5


def receiver_count(configured: int) -> int:
    """``[dicom] receivers``: -1 = one per CPU core up to 4 when there are two or more
    cores (with one core a second process only adds hand-offs); 0 = none."""
    if configured >= 0:
        return configured
    cores = os.cpu_count() or 1
    return min(cores, 4) if cores > 1 else 0


def journal_dir(data_dir: Path, index: int) -> Path:
    return data_dir / f"journal-r{index}"


def journal_key(index: int) -> str:
    return f"{JOURNAL_KEY}.r{index}"


@dataclass
class _Receiver:
    index: int
    channel: Channel | None = None
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    active: int = 0                      # associations it serves now
    starts: list[float] = field(default_factory=list)


@dataclass
class _Link:
    """One handed-over association's channel, and the claims made on it."""

    receiver: _Receiver
    channel: Channel
    claims: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReceiverPool:
    """``count`` receiver processes for one DICOM service."""

    def __init__(self, count: int, *, ingestor: Ingestor, audit: Any, data_dir: Path,
                 journal: bool, network_timeout_s: float, dimse_timeout_s: float,
                 log_file: Path | None) -> None:
        if not isinstance(ingestor.ledger, LocalLedger):
            raise TypeError("receivers commit through the main process's own store")
        self.ledger: LocalLedger = ingestor.ledger
        self.ingestor = ingestor
        self.audit = audit
        self.data_dir = data_dir
        self.journal = journal
        self.network_timeout_s = network_timeout_s
        self.dimse_timeout_s = dimse_timeout_s
        self.log_file = log_file
        self._receivers = [_Receiver(i) for i in range(count)]
        self._lock = threading.Lock()
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._to_register: list[tuple[Channel, object]] = []
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Replay each receiver's journal, start the processes, wait until they are
        ready (or the timeout: the main process then serves alone). Returns how many
        are ready."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dicom-ledger")
        self._thread.start()
        for rec in self._receivers:
            self._launch(rec)
        deadline = time.monotonic() + timeout_s
        for rec in self._receivers:
            if not rec.ready.wait(max(0.0, deadline - time.monotonic())):
                log.warning("DICOM receiver %d did not start within %.0f s; the main "
                            "process serves its share", rec.index, timeout_s)
        return self.ready_count

    @property
    def ready_count(self) -> int:
        return sum(1 for r in self._receivers if r.ready.is_set())

    @property
    def active(self) -> int:
        return sum(r.active for r in self._receivers)

    def pids(self) -> list[int]:
        return [r.process.pid for r in self._receivers
                if r.process is not None and r.ready.is_set()]

    def describe(self) -> dict[str, Any]:
        """For `medfed status`: how many there are, which run, what they serve now."""
        return {"configured": len(self._receivers), "ready": self.ready_count,
                "pids": self.pids(), "associations": self.active}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Each receiver ends its associations, checkpoints its journal and exits."""
        with self._lock:
            self._stopping = True
        for rec in self._receivers:
            if rec.channel is not None:
                try:
                    rec.channel.send({"op": "stop"})
                except ChannelClosed:
                    pass
        deadline = time.monotonic() + timeout_s
        for rec in self._receivers:
            proc = rec.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("DICOM receiver %d did not stop in time; killed (its journal "
                            "is replayed at the next start)", rec.index)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout_s)
            self._thread = None
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _launch(self, rec: _Receiver) -> None:
        folder = journal_dir(self.data_dir, rec.index) if self.journal else None
        seq = 0
        if folder is not None:
            restored, seq = self.ingestor.replay(Journal(folder), journal_key(rec.index))
            if restored:
                log.warning("restored %d instance(s) from DICOM receiver %d's journal",
                            restored, rec.index)
        settings = Settings(
            index=rec.index, files_root=str(self.ingestor.files.root),
            journal_dir=str(folder) if folder is not None else None,
            journal_key=journal_key(rec.index), journal_seq=seq,
            series_idle_s=self.ingestor.series_idle_s,
            network_timeout_s=self.network_timeout_s, dimse_timeout_s=self.dimse_timeout_s,
            log_file=str(self.log_file) if self.log_file else None,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()))
        channel, theirs = Channel.pair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.pacs.receivers.worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        rec.channel, rec.process, rec.active = channel, proc, 0
        rec.ready.clear()
        rec.starts = [t for t in rec.starts if t > time.monotonic() - 60] + [time.monotonic()]
        channel.send(settings.to_json())
        self._register(channel, rec)

    # -- hand-over --------------------------------------------------------------
    def hand_over(self, sock: socket.socket, handoff: Handoff) -> bool:
        """Give the association to the ready receiver with the fewest; False when
        none can take it (the caller serves it). The caller then only closes its
        own descriptor."""
        with self._lock:
            ready = [r for r in self._receivers if r.ready.is_set() and r.channel]
            if not ready or self._stopping:
                return False
            rec = min(ready, key=lambda r: r.active)
            rec.active += 1
        ours, theirs = Channel.pair()
        try:
            assert rec.channel is not None
            rec.channel.send({"op": "assoc", **handoff.to_json()},
                             fds=(sock.fileno(), theirs.fileno()))
        except ChannelClosed:   # the receiver went away just now
            ours.close()
            with self._lock:
                rec.active -= 1
            return False
        finally:
            theirs.close()
        # registered once sent: what the receiver writes first waits in the socket
        self._register(ours, _Link(rec, ours))
        return True

    # -- the ledger thread ----------------------------------------------------------
    def _register(self, channel: Channel, owner: object) -> None:
        with self._lock:
            self._to_register.append((channel, owner))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _loop(self) -> None:
        while True:
            with self._lock:
                stopping = self._stopping
                adding, self._to_register = self._to_register, []
            for channel, owner in adding:
                self._selector.register(channel.sock, selectors.EVENT_READ, (channel, owner))
            if stopping and not any(r.process is not None and r.process.poll() is None
                                    for r in self._receivers) and not adding:
                return
            for key, _events in self._selector.select():
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                channel, owner = key.data
                try:
                    message, fds = channel.receive()
                except ChannelClosed:
                    message, fds = {"op": "stopped"}, []
                for fd in fds:
                    socket.close(fd)
                if message.get("op") == "stopped":   # closed, or checkpointed and done
                    self._selector.unregister(channel.sock)
                    channel.close()   # a stopped receiver exits when it sees this
                    self._closed(owner)
                    continue
                try:
                    if isinstance(owner, _Link):
                        self._answer_link(owner, message)
                    else:
                        self._answer_control(owner, message)  # type: ignore[arg-type]
                except Exception:
                    log.exception("DICOM receivers: a request failed")

    def _closed(self, owner: object) -> None:
        if isinstance(owner, _Link):   # the association ended (or its receiver died)
            with owner.lock:
                held, owner.claims = owner.claims, set()
            for sop in held:
                self.ledger.claims.release(sop)
            with self._lock:
                owner.receiver.active = max(0, owner.receiver.active - 1)
            return
        rec: _Receiver = owner  # type: ignore[assignment]
        rec.ready.clear()
        threading.Thread(target=self._died, args=(rec, rec.process), daemon=True,
                         name=f"dicom-receiver-{rec.index}-exit").start()

    def _died(self, rec: _Receiver, proc: subprocess.Popen[bytes] | None) -> None:
        """A receiver's control channel closed: wait for its exit, then (unless the
        node is stopping) replay its journal and start a fresh one."""
        if proc is None:
            return
        code = proc.wait()
        with self._lock:
            stopping = self._stopping
        if stopping:
            self._wake()
            return
        log.error("DICOM receiver %d (pid %d) exited with code %s; its associations were "
                  "cut, nothing they had acknowledged is lost", rec.index, proc.pid, code)
        if len(rec.starts) >= RESTARTS_PER_MINUTE:
            log.error("DICOM receiver %d restarted %d times within a minute; not "
                      "restarted again (the main process serves its share)", rec.index,
                      len(rec.starts))
            return
        try:
            self._launch(rec)
        except Exception as exc:
            log.error("DICOM receiver %d could not be restarted: %s", rec.index, exc)

    def _answer_control(self, rec: _Receiver, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "ready":
            rec.ready.set()
            return
        if op == "failed":
            log.error("DICOM receiver %d could not start: %s", rec.index, m.get("reason"))
            return
        reply: dict[str, Any] = {"op": "reply", "id": m.get("id")}
        try:
            if op == "journal_seq":
                reply["seq"] = self.ledger.journal_seq(str(m["key"]))
            elif op == "persist":
                self.ledger.persist_journal_seq(str(m["key"]), int(m["upto"]))
            else:
                reply["error"] = f"unknown request {op!r}"
        except Exception as exc:
            log.error("DICOM receiver %d: %s failed: %s", rec.index, op, exc)
            reply["error"] = f"{op} failed on the node: {type(exc).__name__}"
        assert rec.channel is not None
        try:
            rec.channel.send(reply)
        except ChannelClosed:
            pass

    def _answer_link(self, link: _Link, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "claim":
            self._claim(link, int(m["id"]), str(m["sop"]))
        elif op == "release":
            self._release(link, str(m["sop"]))
        elif op == "audit":
            try:
                self.audit.append(str(m["action"]), str(m["actor"]), str(m["outcome"]),
                                  str(m.get("subject", "")), **dict(m.get("detail") or {}))
            except AuditWriteError as exc:
                log.error("audit entry of a DICOM receiver not written: %s", exc)
        elif op == "commit":
            reply: dict[str, Any] = {"op": "reply", "id": m.get("id")}
            try:
                record = record_from_json(m["record"])
                result = self.ledger.commit(
                    record, stored_from_json(m["stored"]),  # type: ignore[arg-type]
                    str(m["source"]), [(str(a), str(b), float(c)) for a, b, c in m["jobs"]],
                    relaxed=bool(m["relaxed"]))
                self._release(link, record.instance.sop_uid)  # a commit ends its claim
                self.ingestor.last_received = time.monotonic()
                reply["result"] = result_to_json(result)
            except Exception as exc:
                log.error("DICOM receiver %d: commit failed: %s", link.receiver.index, exc)
                reply["error"] = f"commit failed on the node: {type(exc).__name__}"
            try:
                link.channel.send(reply)
            except ChannelClosed:
                pass
        else:
            log.warning("DICOM receiver %d: unknown request %r ignored",
                        link.receiver.index, op)

    def _release(self, link: _Link, sop: str) -> None:
        with link.lock:
            held = sop in link.claims
            link.claims.discard(sop)
        if held:
            self.ledger.claims.release(sop)

    def _claim(self, link: _Link, call_id: int, sop: str) -> None:
        def granted() -> None:
            with link.lock:
                link.claims.add(sop)
            try:
                known = self.ledger.store.instance_file_sync(sop)
                link.channel.send({"op": "reply", "id": call_id,
                                   "known": stored_to_json(known)})
            except ChannelClosed:
                self._release(link, sop)
            except Exception as exc:
                log.error("DICOM receiver %d: claim failed: %s", link.receiver.index, exc)
                self._release(link, sop)
                try:
                    link.channel.send({"op": "reply", "id": call_id,
                                       "error": f"claim failed on the node: "
                                                f"{type(exc).__name__}"})
                except ChannelClosed:
                    pass

        self.ledger.claims.acquire(sop, granted)
