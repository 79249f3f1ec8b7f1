"""TLS for the web port: the hospital's own certificate, not the federation's.

Browsers trust the hospital's PKI, not the federation CA, so the web port takes its
certificate and key from ``[http] cert/key``. Plain HTTP is allowed only on loopback
(a reverse proxy or a local demo); the config refuses anything else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from node.config.model import NodeConfig, is_loopback


class WebConfigError(Exception):
    """The web port cannot be served as configured (the message says what to change)."""


def web_ssl_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """The server context for [http], or None for plain HTTP on loopback."""
    if cfg.http_cert is None or cfg.http_key is None:
        if not is_loopback(cfg.http_host):
            raise WebConfigError(
                f"[http] host {cfg.http_host} needs cert and key: plain HTTP is served only "
                "on loopback (127.0.0.1)")
        return None
    return _context(cfg.http_cert, cfg.http_key)


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise WebConfigError(f"[http] cert/key: cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(f"[http] cert {cert} / key {key} cannot be used for TLS: "
                             f"{getattr(exc, 'reason', None) or exc}") from None
    return ctx
