"""The federation operator's folder: the CA, the federation secrets and the current roster.

Run by whoever admits hospitals (``medfed federation create|admit|revoke``). The folder
holds the CA private key and the plain federation secrets, so it belongs on an offline or
well-guarded machine; only member bundles and roster files leave it. Every change takes a
lock so two admissions cannot issue the same roster version.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from node.net.admission import AdmissionError, AdmissionRequest, MemberBundle
from node.net.encoding import EncodingError
from node.net.fedsecrets import FederationSecrets, seal_secrets
from node.net.files import write_atomic
from node.net.pki import (CA, PKIError, cert_from_pem, cert_to_pem, create_ca, csr_from_pem,
                          fingerprint, issue_node_cert, key_from_pem, key_to_pem)
from node.net.roster import (Roster, RosterError, SignedRoster, first_roster, sign_roster,
                             verify_roster)

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
SECRETS = "federation-secrets.json"
ROSTER = "roster.json"
LOCK = ".lock"


class FederationError(Exception):
    """The operator folder is missing, incomplete or would be overwritten."""


@dataclass(frozen=True)
class FederationInfo:
    name: str
    directory: Path
    ca_fingerprint: str
    roster_version: int
    members: int


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_federation(directory: Path, name: str, *, ca_days: int = 3650,
                      secrets: FederationSecrets | None = None) -> FederationInfo:
    """``secrets``: only the simulator passes its own (seeded, for repeatable runs)."""
    name = name.strip()
    if not 0 < len(name) <= 64 or not name.isprintable():
        raise FederationError("federation name must be 1-64 printable characters")
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        if (directory / CA_KEY).exists() or (directory / ROSTER).exists():
            raise FederationError(f"{directory} already holds a federation; refusing to "
                                  "overwrite its CA (use a new folder)")
        key, cert = create_ca(name, days=ca_days)
        signed = sign_roster(first_roster(name, cert, int(time.time())), key)
        write_atomic(directory / SECRETS, (secrets or FederationSecrets.generate()).to_bytes(),
                     private=True)
        write_atomic(directory / CA_CERT, cert_to_pem(cert))
        write_atomic(directory / ROSTER, signed.to_json())
        write_atomic(directory / CA_KEY, key_to_pem(key), private=True)  # last: marks "complete"
    return FederationInfo(name, directory, fingerprint(cert), 1, 0)


def _load(directory: Path) -> tuple[CA, FederationSecrets, SignedRoster]:
    try:
        cert = cert_from_pem((directory / CA_CERT).read_bytes())
        ca = CA(key_from_pem((directory / CA_KEY).read_bytes()), cert)
        secrets = FederationSecrets.from_bytes((directory / SECRETS).read_bytes())
        signed = verify_roster((directory / ROSTER).read_bytes(), cert)
    except OSError as exc:
        raise FederationError(f"{directory} is not a complete federation folder "
                              f"({exc.filename}: {exc.strerror}); run 'medfed federation "
                              "create' first") from exc
    except (PKIError, EncodingError, RosterError) as exc:
        raise FederationError(f"federation folder {directory} is damaged: {exc}") from exc
    return ca, secrets, signed


def federation_info(directory: Path) -> FederationInfo:
    ca, _, signed = _load(directory)
    roster = signed.roster
    return FederationInfo(roster.federation, directory, fingerprint(ca.cert), roster.version,
                          len(roster.active()))


def current_roster(directory: Path) -> SignedRoster:
    return _load(directory)[2]


def operator_ca(directory: Path) -> CA:
    """The CA of the operator's folder (to hand a roster over to a member)."""
    return _load(directory)[0]


def _publish(directory: Path, ca: CA, roster: Roster) -> SignedRoster:
    signed = sign_roster(roster, ca.key)
    write_atomic(directory / ROSTER, signed.to_json())
    return signed


def admit(directory: Path, request_json: bytes, *, name: str | None = None,
          cert_days: int = 730) -> MemberBundle:
    """Check a node's admission request, issue its certificate and a roster that lists it."""
    return admit_many(directory, [(request_json, name)], cert_days=cert_days)[0]


def admit_many(directory: Path, requests: Sequence[tuple[bytes, str | None]], *,
               cert_days: int = 730) -> list[MemberBundle]:
    """Admit several nodes under one new roster version (a simulator builds 500 at once)."""
    parsed = [AdmissionRequest.from_json(data) for data, _ in requests]
    members = [req.member(name) for req, (_, name) in zip(parsed, requests)]
    with _locked(directory):
        ca, secrets, signed = _load(directory)
        roster = signed.roster
        for member in members:
            if any(m.name == member.name and m.node_id != member.node_id
                   for m in roster.active()):
                raise AdmissionError(f"another member is already called {member.name!r}")
            try:
                roster = roster.with_member(member, int(time.time()))
            except RosterError as exc:
                raise AdmissionError(str(exc)) from exc
        certs = [issue_node_cert(ca.key, ca.cert, csr_from_pem(req.csr_pem.encode("ascii")),
                                 m.node_id, m.name, days=cert_days)
                 for req, m in zip(parsed, members)]
        roster = replace(roster, version=signed.roster.version + 1)
        published = _publish(directory, ca, roster)
    ca_pem = cert_to_pem(ca.cert).decode("ascii")
    return [MemberBundle(roster.federation, m.node_id, cert_to_pem(cert).decode("ascii"), ca_pem,
                         published, seal_secrets(secrets, m.box_key))
            for m, cert in zip(members, certs)]


def revoke(directory: Path, node_id: str) -> SignedRoster:
    """Publish a roster that revokes ``node_id``; push it to members to take effect."""
    with _locked(directory):
        ca, _, signed = _load(directory)
        return _publish(directory, ca, signed.roster.with_revoked(node_id, int(time.time())))
