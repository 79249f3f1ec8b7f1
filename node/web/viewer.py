"""The OHIF viewer, served by the node at its own root with the node's own app-config.js.

The bootstrap unpacks the pinned ``@ohif/app`` tarball's prebuilt ``dist/`` into a cache
folder; this module serves it. OHIF keeps its root paths (``/viewer``, ``/assets/…``,
``/app.bundle.*.js``), so nothing in its bundles needs rewriting; the web app's own
pages own the few paths OHIF would show a study list at (``/`` is the search page).
The shipped app-config.js (a public demo server) is never served: ours points OHIF's
DICOMweb data source at this node's ``/dicomweb/`` on the same origin, turns off the
first-visit tour and the investigational-use dialog. index.html gets one script of the
node's (``/static/ohif-link.js``): a "Find similar cases" link for the study on screen. SPA routes (no file extension)
fall back to index.html; a missing asset is a 404; nothing outside the folder is served.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiohttp import web

from .keys import NODE_KEY, SETTINGS_KEY
from .pages import render

OHIF_VERSION = "3.13.2"
ENV_DIR = "MEDFED_OHIF_DIR"
REPO_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "ohif" / OHIF_VERSION / "dist"
# OHIF compiles codecs to WebAssembly, runs web workers from blob: URLs and sets a few
# inline styles; everything still comes from this origin only.
OHIF_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' "
            "'wasm-unsafe-eval' blob:; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' data: blob:; "
            "media-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'")
NO_SERVICE_WORKER = ("navigator.serviceWorker && navigator.serviceWorker.getRegistrations()"
                     ".then(function (rs) { rs.forEach(function (r) { r.unregister(); }); });\n")
TOURS_SHOWN = ("basicViewerTour",)
SIMILAR_LINK_JS = "/static/ohif-link.js"   # a "Find similar cases" link on the viewer page


def installed_ohif_dir() -> Path | None:
    """Where the bootstrap unpacked OHIF (``$MEDFED_OHIF_DIR`` overrides), if it did."""
    candidate = Path(os.environ[ENV_DIR]) if os.environ.get(ENV_DIR) else REPO_CACHE
    return candidate if (candidate / "index.html").is_file() else None


def app_config_js(node_name: str) -> str:
    """OHIF's window.config for this node: one DICOMweb source, this node's /dicomweb/."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "medfed",
        "configuration": {
            "friendlyName": f"{node_name} (medfed federation)", "name": "medfed",
            "wadoUriRoot": "__ROOT__", "qidoRoot": "__ROOT__", "wadoRoot": "__ROOT__",
            "qidoSupportsIncludeField": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False, "supportsWildcard": True, "staticWado": False,
            "singlepart": "bulkdata,video", "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": False, "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"}, "showErrorDetails": "dev",
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "medfed", "dataSources": [source],
    }
    text = json.dumps(config, indent=2).replace('"__ROOT__"', "window.location.origin + '/dicomweb'")
    tours = json.dumps(list(TOURS_SHOWN))
    return ("// medfed: OHIF configuration served by this node (the shipped one is never used).\n"
            "(function () {\n  try {\n"
            "    var shown = JSON.parse(localStorage.getItem('shownTours') || '[]');\n"
            f"    {tours}.forEach(function (t) {{ if (shown.indexOf(t) < 0) shown.push(t); }});\n"
            "    localStorage.setItem('shownTours', JSON.stringify(shown));\n"
            "  } catch (e) { /* storage disabled: the tour may show once */ }\n})();\n"
            f"window.config = {text};\n")


def _inside(root: Path, tail: str) -> Path | None:
    """The file ``tail`` names under ``root``, or None (traversal, symlinks out, folders)."""
    if "\x00" in tail or "\\" in tail or ".." in tail.split("/"):
        return None
    candidate = (root / tail.lstrip("/")).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


async def ohif(request: web.Request) -> web.StreamResponse:
    """Everything the web app's own routes do not claim: OHIF's files and SPA routes."""
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPNotFound()
    root = request.config_dict[SETTINGS_KEY].ohif_dir
    tail = request.match_info["tail"]
    if root is None:
        if tail.startswith("viewer"):
            return render(request, "error.html", status=503, title="Viewer not installed",
                          error="The OHIF viewer is not installed on this node. The PACS team "
                                "installs it with scripts/bootstrap.sh.")
        raise web.HTTPNotFound()
    headers = {"Content-Security-Policy": OHIF_CSP}
    if tail == "app-config.js":
        return web.Response(text=app_config_js(request.config_dict[NODE_KEY].cfg.name),
                            content_type="application/javascript",
                            headers={**headers, "Cache-Control": "no-store"})
    if tail == "init-service-worker.js":
        return web.Response(text=NO_SERVICE_WORKER, content_type="application/javascript",
                            headers=headers)
    if tail == "sw.js":
        raise web.HTTPNotFound()
    found = _inside(root.resolve(), tail)
    if found is not None:
        cache = "public, max-age=31536000, immutable" if ".bundle." in found.name else "no-cache"
        return web.FileResponse(found, headers={**headers, "Cache-Control": cache})
    if ("." in tail.rsplit("/", 1)[-1] or ".." in tail.split("/")
            or tail.startswith(("assets/", "api/", "dicomweb", "static/"))):
        raise web.HTTPNotFound()
    return web.Response(text=index_html(root), content_type="text/html",
                        headers={**headers, "Cache-Control": "no-store"})


def index_html(root: Path) -> str:
    """OHIF's index.html with the node's link to "find similar cases" (issue 14) added."""
    text = (root / "index.html").read_text(encoding="utf-8")
    return text.replace("</head>", f'<script src="{SIMILAR_LINK_JS}" defer></script></head>', 1)


def add_viewer_routes(app: web.Application) -> None:
    """Register last: the catch-all must not shadow any other route."""
    app.router.add_route("*", "/{tail:.*}", ohif)
