"""The node's current roster: the one place the server and client ask "is this a member?".

Newer CA-signed versions replace the current one (and are persisted, so a restart does
not roll back a revocation); older or equal versions are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from node.net.files import write_atomic
from node.net.roster import Member, Roster, RosterError, SignedRoster, Status, verify_roster


class RosterBook:
    def __init__(self, ca_cert: x509.Certificate, signed: SignedRoster, *,
                 path: Path | None = None) -> None:
        self.ca_cert = ca_cert
        self._signed = verify_roster(signed.to_dict(), ca_cert)
        self._path = path
        self._listeners: list[Callable[[Roster], None]] = []

    @classmethod
    def load(cls, path: Path, ca_cert: x509.Certificate) -> "RosterBook":
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RosterError(f"cannot read roster {path}: {exc.strerror}; "
                              "run 'medfed join' with a member bundle first") from exc
        return cls(ca_cert, verify_roster(data, ca_cert), path=path)

    @property
    def signed(self) -> SignedRoster:
        return self._signed

    @property
    def current(self) -> Roster:
        return self._signed.roster

    def status(self, node_id: str) -> Status:
        return self.current.status(node_id)

    def member(self, node_id: str) -> Member | None:
        return self.current.member(node_id)

    def subscribe(self, listener: Callable[[Roster], None]) -> None:
        """Called with each newly adopted roster (e.g. to drop DHT contacts of revoked nodes)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Roster], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def offer(self, data: bytes | Mapping[str, Any] | SignedRoster) -> bool:
        """Adopt ``data`` if it is CA-signed and strictly newer; raises RosterError if forged."""
        doc = data.to_dict() if isinstance(data, SignedRoster) else data
        candidate = verify_roster(doc, self.ca_cert)
        if candidate.roster.version <= self.current.version:
            return False
        if self._path is not None:
            write_atomic(self._path, candidate.to_json())
        self._signed = candidate
        for listener in self._listeners:
            listener(candidate.roster)
        return True
