"""The DICOM TLS port's server context: PS3.15 B.1 "BCP 195" secure transport
connection profile (TLS 1.2 or newer, forward-secret AEAD cipher suites only)."""

from __future__ import annotations

import ssl

from ..config.model import DicomConfig

# BCP 195 (RFC 9325) recommended TLS 1.2 suites; TLS 1.3 suites are all acceptable.
BCP195_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")


class TlsConfigError(Exception):
    """The DICOM TLS certificate, key or CA cannot be used."""


def server_context(cfg: DicomConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
        if cfg.tls_ca is not None:
            ctx.load_verify_locations(str(cfg.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"DICOM TLS: cannot load [dicom] tls_cert={cfg.tls_cert}, tls_key={cfg.tls_key}"
            f"{f', tls_ca={cfg.tls_ca}' if cfg.tls_ca else ''}: {exc}") from exc
    return ctx
