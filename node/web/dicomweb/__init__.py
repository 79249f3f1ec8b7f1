"""DICOMweb at the home node (QIDO-RS federated, WADO-RS local + remote, STOW-RS).

Mount on the web app with ``add_dicomweb(app, node, authenticate)``; see README
"DICOMweb" for the endpoints.
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from .context import DicomwebContext
from .memory_cache import DEFAULT_MAX_BYTES, SeriesCache
from .metadata import MetadataCache, stored_docs
from .metadata_store import MetadataFile, MetadataSweeper
from .requester import Authenticate
from .routes import dicomweb_routes

__all__ = ["add_dicomweb", "DicomwebContext"]


def web_service_url(node: Any) -> Callable[[], str]:
    """The node's web address as its "web" service states it (configured host, bound
    port, https with a certificate), once it listens; "" before (absolute-path URIs)."""
    def url() -> str:
        service = node.service("web") if hasattr(node, "service") else None
        return str(getattr(service, "url", "") or "").rstrip("/")
    return url


def add_dicomweb(app: web.Application, node: Any, authenticate: Authenticate, *,
                 prefix: str = "/dicomweb", public_url: str | Callable[[], str] | None = None,
                 cache_bytes: int = DEFAULT_MAX_BYTES) -> DicomwebContext:
    """Add the DICOMweb routes under ``prefix``. ``public_url`` (a URL, or a callable
    giving it once the port is known; default: the node's web service address) prefixes
    BulkDataURIs and RetrieveURLs; "" gives absolute-path URIs. Never the Host header."""
    if public_url is None:
        url = web_service_url(node)
    else:
        url = public_url if callable(public_url) else (lambda: public_url)  # type: ignore[misc]
    file = MetadataFile.for_node(node)
    ctx = DicomwebContext(node, authenticate, prefix.rstrip("/"), url,
                          series_cache=SeriesCache(cache_bytes),
                          metadata=MetadataCache(file=file))
    app.add_routes(dicomweb_routes(ctx))
    if file is not None:
        sweeper = MetadataSweeper(node, file, stored_docs)

        async def start(_app: web.Application) -> None:
            sweeper.start()

        async def stop(_app: web.Application) -> None:
            await sweeper.stop()
            file.close()
        app.on_startup.append(start)
        app.on_cleanup.append(stop)
        ctx.sweeper = sweeper
    return ctx
