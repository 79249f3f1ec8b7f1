"""The web port: TLS with the hospital's certificate, plain HTTP only on loopback, and
no path between the web port and the peer API in either direction."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from node.config.model import ConfigError, parse_config
from node.net.errors import PeerRefused
from node.testing.federation import start_federation
from node.web.service import WebService
from node.web.tls import WebConfigError

from web_support import add_users, browser, login, page_csrf, self_signed, web_config, web_node


async def test_tls_with_the_hospital_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    cfg = web_config(tmp_path / "n", http_cert=cert, http_key=key)
    add_users(cfg.data_dir)
    trust = ssl.create_default_context(cafile=str(cert))
    async with web_node(cfg) as (node, web):
        assert web.url.startswith("https://127.0.0.1:")
        async with browser(connector=aiohttp.TCPConnector(ssl=trust)) as client:
            resp = await login(client, web.url, "alice")
            assert resp.status == 303
            cookie = resp.cookies["__Host-medfed-session"]
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
            home = await client.get(web.url)
            assert home.status == 200
            assert home.headers["Strict-Transport-Security"].startswith("max-age=")
        async with aiohttp.ClientSession() as plain:   # plain HTTP to the TLS port: no page
            with pytest.raises(aiohttp.ClientError):
                await plain.get(web.url.replace("https://", "http://"))


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain HTTP only on loopback"):
        parse_config({"http": {"host": "0.0.0.0"}}, tmp_path)
    with pytest.raises(ConfigError, match="both cert and key"):
        parse_config({"http": {"host": "0.0.0.0", "cert": "web.crt"}}, tmp_path)
    cfg = parse_config({"http": {"host": "0.0.0.0", "cert": "tls/web.crt", "key": "tls/web.key",
                                 "session_idle_s": 600}}, tmp_path)
    assert cfg.http_cert == (tmp_path / "tls/web.crt").resolve() and cfg.http_session_idle_s == 600
    assert parse_config({"http": {"host": "127.0.0.1"}}, tmp_path).http_cert is None


async def test_web_service_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n", http_host="0.0.0.0")
    with pytest.raises(WebConfigError, match="plain HTTP is served only on loopback"):
        async with web_node(cfg):
            pass


async def test_web_port_and_peer_port_never_cross(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path / "fed", ["home", "other"],
                                 services=lambda i, name: [WebService()] if i == 0 else [])
    try:
        home, other = fed.nodes
        add_users(home.cfg.data_dir)
        web = home.service("web")
        assert isinstance(web, WebService) and home.ports.web == web.port != home.ports.peer
        # a member, with its federation certificate and signed request, at the peer port:
        # the web app is not there
        assert other.client is not None
        me = fed.members[0].member
        for path in ("/login", "/", "/dicomweb/studies", "/static/app.css"):
            with pytest.raises(PeerRefused) as refused:
                await other.client.call(me, "GET", path, timeout=10)
            assert refused.value.status == 404, path
        # a logged-in browser at the web port: the peer API is not there
        async with browser() as client:
            assert (await login(client, web.url, "alice")).status == 303
            csrf = await page_csrf(client, web.url)
            resp = await client.post(web.url + "v1/query", json={"query": {}},
                                     headers={"X-CSRF-Token": csrf})
            assert resp.status == 404
        async with browser() as anonymous:
            resp = await anonymous.post(web.url + "v1/query", json={"query": {}})
            assert resp.status == 401
    finally:
        await fed.stop()
