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
from node.net.encoding import EncodingError, load_json_object
from node.net.roster import MAX_ROSTER_BYTES, Member, Roster, RosterError, SignedRoster, Status, verify_roster


class RosterBook:
    def __init__(self, ca_cert: x509.Certificate, signed: SignedRoster, *,
                 path: Path | None = None) -> None:
        self.ca_cert = ca_cert
        self._signed = verify_roster(signed, ca_cert)
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
        """Adopt ``data`` if it is CA-signed and strictly newer; raises RosterError if forged.
        A document that claims a version not newer than ours is ignored unchecked."""
        doc: bytes | Mapping[str, Any] | SignedRoster
        if isinstance(data, SignedRoster):
            doc, claimed = data, data.roster.version
        else:
            doc = _parsed(data)
            claimed = _version_of(doc)
        if claimed is not None and claimed <= self.current.version:
            return False   # not newer: nothing to check (a roster is O(members) to verify)
        candidate = verify_roster(doc, self.ca_cert)
        if candidate.roster.version <= self.current.version:
            return False
        if self._path is not None:
            write_atomic(self._path, candidate.to_json())
        self._signed = candidate
        for listener in self._listeners:
            listener(candidate.roster)
        return True


def _version_of(doc: bytes | Mapping[str, Any]) -> int | None:
    """The version a well-formed roster document claims (None: let verification say why not)."""
    body = doc.get("roster") if isinstance(doc, Mapping) else None
    version = body.get("version") if isinstance(body, Mapping) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _parsed(data: bytes | Mapping[str, Any]) -> bytes | Mapping[str, Any]:
    """Bytes parsed once (verification then works on the object); malformed bytes are
    left for ``verify_roster`` to refuse with its reason."""
    if isinstance(data, Mapping) or len(data) > MAX_ROSTER_BYTES:
        return data
    try:
        return load_json_object(data, "roster document")
    except EncodingError:
        return data
