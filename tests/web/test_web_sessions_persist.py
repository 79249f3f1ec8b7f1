"""Web sessions survive a restart of the node (hashed ids on disk), unless configured not to."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from node.users import UserStore
from node.web.principal import Principal
from node.web.session_book import FILE, SessionBook, session_key
from node.web.sessions import SessionStore

from web_support import add_users, browser, login, page_csrf, web_config, web_node


async def test_a_restart_keeps_sessions_and_the_file_holds_no_session_id(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    async with browser() as client:
        async with web_node(cfg) as (_node, web):
            resp = await login(client, web.url, "alice", next_path="/search")
            sid = resp.cookies["medfed-session"].value
            csrf = await page_csrf(client, web.url, "search")
        path = cfg.data_dir / "web" / FILE
        assert path.stat().st_mode & 0o777 == 0o600
        raw = path.read_bytes() + (path.with_name(FILE + "-wal").read_bytes()
                                   if path.with_name(FILE + "-wal").exists() else b"")
        assert sid.encode() not in raw
        with sqlite3.connect(path) as db:
            assert [r[0] for r in db.execute("SELECT key FROM sessions")] == [session_key(sid)]

        async with web_node(cfg) as (_node, web):      # the node again: same session
            page = await client.get(web.url + "search", allow_redirects=False)
            assert page.status == 200 and "alice" in await page.text()
            assert await page_csrf(client, web.url, "search") == csrf
            resp = await client.post(web.url + "logout", data={"csrf": csrf}, allow_redirects=False)
            assert resp.status == 303
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0

        async with web_node(cfg) as (_node, web):      # logged out stays logged out
            assert (await client.get(web.url + "search", allow_redirects=False)).status == 303


async def test_persist_sessions_false_logs_everybody_out_at_restart(tmp_path: Path) -> None:
    cfg = dataclasses.replace(web_config(tmp_path / "n"), http_persist_sessions=False)
    add_users(cfg.data_dir)
    async with browser() as client:
        async with web_node(cfg) as (_node, web):
            assert (await login(client, web.url, "alice")).status == 303
            assert (await client.get(web.url + "search", allow_redirects=False)).status == 200
        assert not (cfg.data_dir / "web" / FILE).exists()
        async with web_node(cfg) as (_node, web):
            assert (await client.get(web.url + "search", allow_redirects=False)).status == 303


def _principal(name: str = "alice") -> Principal:
    return Principal(name, "u-1", "clinician", "radiology", ("treatment",), "session")


def test_restored_sessions_keep_their_idle_and_absolute_limits(tmp_path: Path) -> None:
    now = [1_000_000.0]
    book = SessionBook(tmp_path / "s.sqlite")
    store = SessionStore(idle_s=60, absolute_s=600, book=book, clock=lambda: now[0])
    idle = store.create(_principal())
    busy = store.create(_principal())
    gone = store.create(_principal("bob"))
    for _ in range(4):
        now[0] += 50
        assert store.get(busy.sid) is busy      # used: last_seen written every 15 s or so
    restarted = SessionStore(idle_s=60, absolute_s=600, book=book, clock=lambda: now[0])
    users = {"alice": _principal()}              # bob was removed meanwhile
    assert restarted.restore(users.get) == 1
    assert restarted.get(idle.sid) is None       # 200 s idle: not restored
    assert restarted.get(gone.sid) is None       # user no longer there
    again = restarted.get(busy.sid)
    assert again is not None and again.csrf == busy.csrf and again.principal.user == "alice"
    now[0] += 61
    assert restarted.get(busy.sid) is None       # the idle timeout still ends it
    book.close()


def test_a_disabled_user_gets_no_session_back(tmp_path: Path) -> None:
    cfg = web_config(tmp_path / "n")
    add_users(cfg.data_dir)
    from node.web.accounts import Accounts, restored_principal
    users = UserStore(cfg.data_dir / "users.sqlite")
    accounts = Accounts(users, None)  # type: ignore[arg-type]
    assert restored_principal(accounts, "alice") is not None
    users.set_disabled("alice", True)
    assert restored_principal(accounts, "alice") is None
    assert restored_principal(accounts, "nobody") is None
