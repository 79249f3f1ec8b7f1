"""A node's side of membership: ask to join, install the operator's bundle, load it at start.

Installing checks every piece of the bundle against what the node already holds (its
node key, its TLS key) and against the CA before anything is written, so a wrong or
tampered bundle leaves the node exactly as it was.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.identity import NodeIdentity
from node.net.admission import AdmissionError, AdmissionRequest, MemberBundle
from node.net.fedsecrets import FederationSecrets, SecretsError, open_secrets
from node.net.files import write_atomic
from node.net.pki import (PKIError, cert_from_pem, check_issued_by, csr_to_pem, fingerprint,
                          key_from_pem, key_to_pem, make_csr, new_key, node_id_of_cert)
from node.net.roster import Member, RosterError, SignedRoster, verify_roster
from node.net.rosterbook import RosterBook
from node.net.tls import TLSFiles, client_context, server_context


@dataclass(frozen=True)
class MembershipPaths:
    tls_key: Path
    node_cert: Path
    ca_cert: Path
    roster: Path
    sealed_secrets: Path

    @classmethod
    def under(cls, directory: Path) -> "MembershipPaths":
        """Default layout: ``<data_dir>/federation/…``."""
        return cls(directory / "tls.key", directory / "node.crt", directory / "ca.crt",
                   directory / "roster.json", directory / "federation-secrets.sealed")

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles(self.tls_key, self.node_cert, self.ca_cert)


@dataclass(frozen=True)
class Membership:
    ca_cert: x509.Certificate
    node_cert: x509.Certificate
    roster: RosterBook
    secrets: FederationSecrets
    paths: MembershipPaths

    def server_tls(self) -> ssl.SSLContext:
        return server_context(self.paths.tls)

    def client_tls(self) -> ssl.SSLContext:
        return client_context(self.paths.tls)


def create_request(identity: NodeIdentity, paths: MembershipPaths, *, name: str,
                   peer_address: str, dht_address: str, dicom_ae: str) -> AdmissionRequest:
    """Make (or reuse) the node's TLS key and sign an admission request for the operator."""
    if paths.tls_key.exists():
        key = key_from_pem(paths.tls_key.read_bytes())
    else:
        key = new_key()
        write_atomic(paths.tls_key, key_to_pem(key), private=True)
    csr = make_csr(key, identity.node_id_hex)
    draft = AdmissionRequest(name, identity.verify_key, identity.box_public_key, peer_address,
                             dht_address, dicom_ae, csr_to_pem(csr).decode("ascii"),
                             int(time.time()))
    draft.member()  # validates addresses, AE title and name before anything is sent
    return draft.signed_by(identity)


def _public_der(holder: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    return holder.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def install_bundle(bundle_json: bytes | MemberBundle, identity: NodeIdentity,
                   paths: MembershipPaths, *, expected_ca_fingerprint: str | None = None,
                   roster_file: Path | None = None) -> Membership:
    """Verify a member bundle completely, then write it; raises AdmissionError if unfit.

    ``roster_file``: a file on this machine that holds exactly the bundle's signed roster
    (the testbed: the operator's published one). The node's roster is then a hard link
    to it, not a new copy: N members on one machine write the O(N) roster once, not N
    times. Adopting a newer roster later replaces the link (``write_atomic``), so the
    file each node reads stays its own."""
    bundle = bundle_json if isinstance(bundle_json, MemberBundle) \
        else MemberBundle.from_json(bundle_json)
    try:
        ca_cert = cert_from_pem(bundle.ca_cert_pem.encode("ascii"))
        node_cert = cert_from_pem(bundle.node_cert_pem.encode("ascii"))
        if expected_ca_fingerprint and fingerprint(ca_cert) != expected_ca_fingerprint.lower():
            raise AdmissionError("the bundle's CA fingerprint is not the one the operator "
                                 "gave you; do not join, ask the operator")
        check_issued_by(node_cert, ca_cert)
        if node_id_of_cert(node_cert) != identity.node_id_hex:
            raise AdmissionError("this bundle was issued for another node")
        tls_key = key_from_pem(paths.tls_key.read_bytes())
        if _public_der(node_cert) != _public_der(tls_key):
            raise AdmissionError("the bundle's certificate is not for this node's TLS key "
                                 "(was the admission request made on this machine?)")
        signed = verify_roster(bundle.roster, ca_cert)
        me = signed.roster.member(identity.node_id_hex)
        if me is None or me != Member.for_identity(identity, me.name, me.peer_address,
                                                   me.dht_address, me.dicom_ae):
            raise AdmissionError("the bundle's roster does not list this node with its keys")
        secrets = open_secrets(bundle.sealed_secrets, identity)
    except (PKIError, RosterError, SecretsError, OSError, UnicodeEncodeError) as exc:
        raise AdmissionError(f"member bundle refused: {exc}") from exc
    write_atomic(paths.ca_cert, bundle.ca_cert_pem.encode("ascii"))
    write_atomic(paths.node_cert, bundle.node_cert_pem.encode("ascii"))
    write_atomic(paths.sealed_secrets, bundle.sealed_secrets, private=True)
    book = _install_roster(paths.roster, ca_cert, signed, roster_file)
    return Membership(ca_cert, node_cert, book, secrets, paths)


def _install_roster(path: Path, ca_cert: x509.Certificate, signed: SignedRoster,
                    shared: Path | None = None) -> RosterBook:
    """Keep an already-installed newer roster (re-joining must not roll back revocations)."""
    if path.exists():
        try:
            book = RosterBook.load(path, ca_cert)
            book.offer(signed)
            return book
        except RosterError:
            pass  # a roster from another CA or a damaged file: replace it
    if shared is None or not _link(shared, path):
        write_atomic(path, signed.to_json())
    return RosterBook(ca_cert, signed, path=path)


def _link(shared: Path, path: Path) -> bool:
    """Hard-link ``path`` to ``shared``; False (write a copy instead) if impossible."""
    path.unlink(missing_ok=True)
    try:
        os.link(shared, path)
    except OSError:
        return False
    return True


def load_membership(identity: NodeIdentity, paths: MembershipPaths) -> Membership:
    """What a node needs at start; raises AdmissionError naming the missing/broken piece."""
    try:
        ca_cert = cert_from_pem(paths.ca_cert.read_bytes())
        node_cert = cert_from_pem(paths.node_cert.read_bytes())
        check_issued_by(node_cert, ca_cert)
        if node_id_of_cert(node_cert) != identity.node_id_hex:
            raise AdmissionError(f"{paths.node_cert} belongs to another node")
        book = RosterBook.load(paths.roster, ca_cert)
        secrets = open_secrets(paths.sealed_secrets.read_bytes(), identity)
    except OSError as exc:
        raise AdmissionError(f"node has not joined a federation ({exc.filename}: "
                             f"{exc.strerror}); run 'medfed join'") from exc
    except (PKIError, RosterError, SecretsError) as exc:
        raise AdmissionError(f"federation membership files are unusable: {exc}") from exc
    return Membership(ca_cert, node_cert, book, secrets, paths)
