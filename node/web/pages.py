"""Server-rendered pages: one jinja2 environment, autoescaped, templates shipped in the package."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .keys import PAGES_KEY, PRINCIPAL_KEY, SESSION_KEY


class Pages:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.env = Environment(loader=PackageLoader("node.web", "templates"),
                               autoescape=select_autoescape(["html"]),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def html(self, request: web.Request, template: str, **context: Any) -> str:
        session = request.get(SESSION_KEY)
        base = {"node_name": self.node_name, "principal": request.get(PRINCIPAL_KEY),
                "csrf": session.csrf if session is not None else "", "path": request.path,
                "title": "", "error": "", "notice": ""}
        return self.env.get_template(template).render({**base, **context})


def render(request: web.Request, template: str, *, status: int = 200,
           **context: Any) -> web.Response:
    """A page as an HTML response (never cached: pages may show patient data)."""
    body = request.config_dict[PAGES_KEY].html(request, template, **context)
    return web.Response(text=body, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})
