"""DICOM TLS (PS3.15 B.1, BCP 195 profile) on the second port, driven by dcmtk's +tls."""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from node.synth.generate import generate
from node.testing.nodes import NodeThread, loopback_config
from tests.dicom_tools import dcmtk


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool = False):  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                          subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert, key) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("Hospital DICOM CA", ca_key, None, ca_key, ca=True)
    ca_crt, _ = _write(folder, "ca", ca, ca_key)
    server_key, client_key = _key(), _key()
    server_crt, server_pem = _write(folder, "server", _cert("127.0.0.1", server_key, ca.subject,
                                                            ca_key), server_key)
    client_crt, client_pem = _write(folder, "client", _cert("modality", client_key, ca.subject,
                                                            ca_key), client_key)
    return {"ca": ca_crt, "server_crt": server_crt, "server_key": server_pem,
            "client_crt": client_crt, "client_key": client_pem}


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory, pki):  # type: ignore[no-untyped-def]
    cfg = loopback_config(tmp_path_factory.mktemp("tlsnode"))
    cfg = replace(cfg, dicom=replace(cfg.dicom, tls_port=0, tls_cert=pki["server_crt"],
                                     tls_key=pki["server_key"], tls_ca=pki["ca"]))
    node = NodeThread(cfg).start()
    yield node
    node.stop()


def _tls_args(pki: dict[str, Path]) -> list[str | Path]:
    return ["+tls", pki["client_key"], pki["client_crt"], "+cf", pki["ca"]]


def test_storescu_findscu_over_tls(tls_node, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = tls_node.node.dicom.tls_port
    assert port and port != tls_node.dicom_port
    generate(tmp_path / "in", patients=1, studies=1, series=1, slices=3, rows=32, cols=32)
    proc = dcmtk("storescu", *_tls_args(pki), "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                 "127.0.0.1", port, tmp_path / "in")
    assert proc.returncode == 0, proc.stderr
    assert tls_node.call(tls_node.node.store.counts()).instances == 3
    proc = dcmtk("findscu", *_tls_args(pki), "-aet", "FINDSCU", "-aec", "MEDFED", "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                 "127.0.0.1", port)
    assert proc.returncode == 0, proc.stderr
    assert "StudyInstanceUID" in proc.stderr + proc.stdout
    tls_node.node.audit.sync()
    entries = [json.loads(line) for line in tls_node.cfg.audit_path.read_text().splitlines()]
    assert any(e["action"] == "dicom.associate" and e.get("detail", e).get("tls")
               for e in entries), "TLS associations are audited as such"


def test_client_without_certificate_is_refused(tls_node, pki) -> None:  # type: ignore[no-untyped-def]
    port = tls_node.node.dicom.tls_port
    proc = dcmtk("echoscu", "+tla", "+cf", pki["ca"], "-aet", "ECHOSCU", "-aec", "MEDFED",
                 "127.0.0.1", port)
    assert proc.returncode != 0
    proc = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "MEDFED", "127.0.0.1", port)
    assert proc.returncode != 0, "plain DICOM must not work on the TLS port"
    # Neither attempt harmed the service: TLS with a certificate and plain DICOM work.
    assert dcmtk("echoscu", *_tls_args(pki), "-aet", "ECHOSCU", "-aec", "MEDFED",
                 "127.0.0.1", port).returncode == 0
    assert dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "MEDFED", "127.0.0.1",
                 tls_node.dicom_port).returncode == 0


def test_allowlist_applies_on_the_tls_port(tls_node, pki) -> None:  # type: ignore[no-untyped-def]
    proc = dcmtk("echoscu", *_tls_args(pki), "-aet", "INTRUDER", "-aec", "MEDFED",
                 "127.0.0.1", tls_node.node.dicom.tls_port)
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
