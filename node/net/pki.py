"""The federation's X.509 layer: a CA that admits nodes, and the certificates it issues.

TLS between nodes uses ECDSA P-256 keys and certificates, which every OpenSSL 3 / Python
``ssl`` build accepts for TLS 1.3. A node certificate names its node twice in the SAN:
``urn:medfed:node:<hex id>`` (what the server reads after the handshake) and a DNS name
derived from the id (what the client's hostname check pins, so a client reaches exactly the
member it meant to call). The node id itself is the hash of the node's Ed25519 key; the
admission request, signed with that key, is what binds it to this TLS key.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_URI_PREFIX = "urn:medfed:node:"
DNS_SUFFIX = "node.medfed"
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")


class PKIError(Exception):
    """A key, certificate or signing request is unusable for the federation."""


def node_dns_name(node_id_hex: str) -> str:
    """Hostname pinned by clients; the 64-hex id is split because DNS labels stop at 63."""
    return f"{node_id_hex[:32]}.{node_id_hex[32:]}.{DNS_SUFFIX}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError("private key file is not an unencrypted PEM key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PKIError("private key must be ECDSA P-256")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError("certificate is not valid PEM") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over DER, as IT staff compare it by phone when a node joins."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(common: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org[:64]),
                      x509.NameAttribute(NameOID.COMMON_NAME, common[:64])])


def create_ca(federation: str, *, days: int = 3650
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    name = _name(f"{federation} CA", federation)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_csr(key: ec.EllipticCurvePrivateKey, node_id_hex: str) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id_hex[:64])]))
            .sign(key, hashes.SHA256()))


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_from_pem(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError("certificate signing request is not valid PEM") from exc
    if not csr.is_signature_valid:
        raise PKIError("certificate signing request has a bad self-signature")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PKIError("certificate signing request must carry an ECDSA P-256 key")
    return csr


def issue_node_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                    csr: x509.CertificateSigningRequest, node_id_hex: str, name: str,
                    *, days: int = 730) -> x509.Certificate:
    if not _HEX_ID.match(node_id_hex):
        raise PKIError("node id must be 64 lowercase hex characters")
    federation = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(_name(name, str(federation))).issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id_hex),
                x509.DNSName(node_dns_name(node_id_hex))]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))


def node_id_of_cert(cert: x509.Certificate) -> str:
    """The node id a certificate was issued for (its SAN URI)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PKIError("certificate carries no medfed node id") from exc
    return node_id_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))


def node_id_from_uris(uris: list[str]) -> str:
    ids = [u[len(NODE_URI_PREFIX):] for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(ids) != 1 or not _HEX_ID.match(ids[0]):
        raise PKIError("certificate must carry exactly one valid medfed node id")
    return ids[0]


def node_id_from_peercert(peercert: dict[str, Any] | None) -> str:
    """The node id from ``ssl.SSLSocket.getpeercert()`` (verified by the handshake)."""
    if not peercert:
        raise PKIError("peer presented no certificate")
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    return node_id_from_uris(uris)


def check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise unless ``cert`` carries a valid signature by the CA and is within its dates."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PKIError("certificate was not issued by this federation's CA") from exc
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PKIError("certificate is outside its validity period")


def verify_with_ca(ca_cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = ca_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def sign_with_ca(ca_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return ca_key.sign(data, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class CA:
    """The operator's CA material, loaded together."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
