"""Login, sessions, CSRF, lockout, open redirects and the audit trail of the web port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import yarl

from node.audit.verify import verify
from node.identity import NodeIdentity
from node.web.principal import Principal
from node.web.service import WebService
from node.web.sessions import LoginThrottle, SessionStore

from web_support import (PASSWORD, add_users, browser, login, page_csrf, sse_events, web_config,
                         web_node)


async def test_nothing_without_login_and_a_login_session(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web):
        async with browser() as client:
            resp = await client.get(web.url + "search?modality=CT", allow_redirects=False)
            assert resp.status == 303
            target = yarl.URL(resp.headers["Location"])
            assert target.path == "/login" and target.query["next"] == "/search?modality=CT"
            resp = await client.get(web.url + "dicomweb/studies")
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            for path in ("audit", "admin", "viewer", "app-config.js", "search"):
                resp = await client.get(web.url + path, allow_redirects=False)
                assert resp.status == 303 and resp.headers["Location"].startswith("/login"), path
            for path in ("api/search?modality=CT", "api/jobs/x/events", "api/jobs/x/file",
                         "dicomweb/studies/1.2/series"):
                assert (await client.get(web.url + path)).status == 401, path
            assert (await client.post(web.url + "api/jobs", json={})).status == 401
            assert (await client.get(web.url + "static/app.css")).status == 200   # public

            # a session id planted before login (fixation) must not become the session
            client.cookie_jar.update_cookies({"medfed-session": "planted-by-attacker"})
            resp = await login(client, web.url, "alice", next_path="/search")
            assert resp.status == 303 and resp.headers["Location"] == "/search"
            cookie = resp.cookies["medfed-session"]
            assert cookie.value != "planted-by-attacker" and len(cookie.value) >= 40
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert not cookie["secure"]   # plain HTTP on loopback; TLS is tested separately
            home = await client.get(web.url)    # / is the search page
            assert home.status == 200 and home.url.path == "/search" and "alice" in await home.text()
            assert home.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in home.headers["Content-Security-Policy"]

        async with browser() as other:
            other.cookie_jar.update_cookies({"medfed-session": "planted-by-attacker"})
            resp = await other.get(web.url, allow_redirects=False)
            assert resp.status == 303


async def test_csrf_origin_and_logout(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web), browser() as client:
        # the login form itself needs the token of a page this server rendered
        resp = await client.post(web.url + "login", data={"username": "alice",
                                                          "password": PASSWORD, "csrf": "x"})
        assert resp.status == 403
        assert (await login(client, web.url, "alice")).status == 303
        csrf = await page_csrf(client, web.url)
        resp = await client.post(web.url + "logout", data={"csrf": "wrong"},
                                 allow_redirects=False)
        assert resp.status == 403
        resp = await client.post(web.url + "logout", data={"csrf": csrf},
                                 headers={"Origin": "https://evil.example"},
                                 allow_redirects=False)
        assert resp.status == 403
        assert (await client.get(web.url + "search", allow_redirects=False)).status == 200
        resp = await client.post(web.url + "logout", data={"csrf": csrf}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
        assert (await client.get(web.url + "search", allow_redirects=False)).status == 303


async def test_open_redirects_are_refused(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web):
        for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example",
                     "javascript:alert(1)", "/\r\nSet-Cookie: x=1", " //evil.example"):
            async with browser() as client:
                resp = await login(client, web.url, "alice", next_path=evil)
                assert resp.status == 303
                assert resp.headers["Location"] == "/", evil
                assert "x" not in resp.cookies
        async with browser() as client:   # an encoded local path stays a local path
            resp = await login(client, web.url, "alice", next_path="/%0d%0aSet-Cookie:x")
            assert resp.headers["Location"].startswith("/%0")


async def test_lockout_after_failures_and_audit_without_secrets(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web):
        async with browser() as client:
            for _ in range(5):
                resp = await login(client, web.url, "alice", password="not the password")
                assert resp.status == 401
                assert "Unknown user name or wrong password" in await resp.text()
            resp = await login(client, web.url, "alice")   # right password, but locked
            assert resp.status == 429
            assert "Too many failed sign-in attempts" in await resp.text()
            resp = await login(client, web.url, "nobody", password="whatever1234")
            assert resp.status == 401
        async with browser() as client:
            assert (await login(client, web.url, "rob")).status == 303  # others unaffected
        assert node.audit is not None
        node.audit.sync()
    text = cfg.audit_path.read_text()
    assert '"action":"web.login"' in text and '"outcome":"locked"' in text
    assert text.count('"outcome":"failed"') == 6
    for secret in ("alice", "nobody", "not the password", PASSWORD):
        assert secret not in text
    report = verify(cfg.audit_path, NodeIdentity.load(cfg.key_dir).verify_key)
    assert report.ok


def _principal() -> Principal:
    return Principal("alice", "u-1", "clinician", "radiology", ("treatment",), "session")


def test_sessions_end_when_idle_and_are_bounded() -> None:
    now = [1000.0]
    store = SessionStore(idle_s=60, absolute_s=600, max_sessions=2, secure=True,
                         clock=lambda: now[0])
    assert store.cookie_name.startswith("__Host-")
    first = store.create(_principal())
    now[0] += 59
    assert store.get(first.sid) is first           # used in time: stays alive
    now[0] += 61
    assert store.get(first.sid) is None            # idle too long: gone for good
    a, b, c = (store.create(_principal()) for _ in range(3))
    assert store.get(a.sid) is None and store.get(c.sid) is c and len(store) == 2
    for _ in range(10):   # busy all along: 590 s
        now[0] += 59
        assert store.get(c.sid) is c
    now[0] += 59
    assert store.get(c.sid) is None                # absolute lifetime reached
    assert store.get("") is None


def test_throttle_locks_then_releases() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_failures=3, window_s=100, lockout_s=50, clock=lambda: now[0])
    assert not throttle.failed("u") and not throttle.failed("u")
    assert throttle.failed("u")
    assert throttle.locked_for("u") == 50
    now[0] += 51
    assert throttle.locked_for("u") == 0
    assert not throttle.failed("u")


async def test_bearer_tokens_are_judged_alone(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    good = Principal("tool", "u-tool", "researcher", "lab", ("research",), "token")

    async def lookup(token: str) -> Principal | None:
        return good if token == "good-token" else None

    async with web_node(cfg, web=WebService(token_lookup=lookup)) as (node, web), \
            browser() as client:
        resp = await client.get(web.url + "search", headers={"Authorization": "Bearer good-token"},
                                allow_redirects=False)
        assert resp.status == 200 and "tool" in await resp.text()
        assert (await login(client, web.url, "alice")).status == 303
        for header in ("Bearer bad-token", "Basic YWxpY2U6eA==", "Bearer "):
            resp = await client.get(web.url + "dicomweb/studies",
                                    headers={"Authorization": header})
            assert resp.status == 401, header
        resp = await client.post(web.url + "logout", headers={"Authorization": "Bearer x"},
                                 allow_redirects=False)
        assert resp.status == 401
        assert (await client.get(web.url + "search", allow_redirects=False)).status == 200


async def test_tokens_from_the_node_token_store(tmp_path: Path) -> None:
    """`medfed user login` tokens work as bearer tokens; revoked ones and disabled users do not."""
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with web_node(cfg) as (node, web), browser() as client:
        token = await asyncio.to_thread(node.tokens.issue_token, "alice")
        bearer = {"Authorization": f"Bearer {token}"}
        resp = await client.get(web.url + "search", headers=bearer, allow_redirects=False)
        assert resp.status == 200 and "alice" in await resp.text()
        await asyncio.to_thread(node.tokens.revoke, token)
        resp = await client.get(web.url + "search", headers=bearer, allow_redirects=False)
        assert resp.status == 401
        # a disabled user's open session can no longer search
        assert (await login(client, web.url, "alice")).status == 303
        await asyncio.to_thread(node.users.set_disabled, "alice", True)
        events = await sse_events(await client.get(web.url + "api/search?modality=CT"))
        assert events[0][0] == "failed"
