"""TLS contexts for the peer port: TLS 1.3 only, both sides present federation certificates.

The server requires a client certificate issued by the federation CA (nothing else is
trusted: no system CAs). The client trusts only the CA too, and pins the server's
certificate to the node it meant to reach through the hostname check against the node's
DNS SAN (see ``pki.node_dns_name``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TLSSetupError(Exception):
    """The node's TLS key or certificates cannot be loaded."""


@dataclass(frozen=True)
class TLSFiles:
    key: Path        # node's ECDSA P-256 TLS key (PEM, 0600)
    cert: Path       # node certificate issued by the federation CA
    ca_cert: Path    # the federation CA certificate pinned at join


def _context(purpose: ssl.Purpose, files: TLSFiles) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=str(files.ca_cert))
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load TLS material ({files.cert}, {files.key}, "
                            f"{files.ca_cert}): {exc}. Re-run 'medfed join' with the member "
                            "bundle from the federation operator.") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """No TLS 1.3 session tickets (``num_tickets = 0``): nothing on the peer port resumes a
    session (asyncio and aiohttp keep none), so the tickets OpenSSL sends after the
    handshake (two by default, each sealed with the ticket key) were CPU and bytes in front
    of every new connection's first answer, for nothing."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, files)
    ctx.num_tickets = 0
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = _context(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = True
    return ctx
