"""The landing page and the app's static files."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web


STATIC_DIR = Path(__file__).parent / "static"


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/search")


def add_home_routes(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)
