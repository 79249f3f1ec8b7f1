"""Local user tokens and the user-bound assertion (pure store logic on a real SQLite file)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.identity import NodeIdentity
from node.net.assertion import ASSERTION_DOMAIN
from node.net.encoding import signed_bytes
from node.identity import verify_signature
from node.users import TokenStore, UserError, UserRefused, UserStore, resolve_user, user_assertion

PW = "correct horse battery"


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    store = UserStore(tmp_path / "users.sqlite")
    store.add_user("dr.a", "clinician", "Radiology", PW)
    store.add_user("res.b", "researcher", "Oncology", PW)
    return TokenStore(store)


def test_token_verifies_to_its_user_and_only_its_hash_is_stored(tokens: TokenStore,
                                                                 tmp_path: Path) -> None:
    token = tokens.issue_token("dr.a", 600)
    user = tokens.verify_token(token)
    assert user is not None and (user.name, user.role) == ("dr.a", "clinician")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("users.sqlite*"))
    assert token.encode() not in raw and token[4:].encode() not in raw
    assert stat.S_IMODE((tmp_path / "users.sqlite").stat().st_mode) == 0o600
    assert tokens.verify_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert tokens.verify_token("not a token") is None and tokens.verify_token("") is None


def test_tokens_expire_and_are_revoked(tokens: TokenStore) -> None:
    token = tokens.issue_token("dr.a", 60, now=1_000)
    assert tokens.verify_token(token, now=1_059) is not None
    assert tokens.verify_token(token, now=1_060) is None             # expired
    live = tokens.issue_token("dr.a", 600)
    assert tokens.revoke(live) and tokens.verify_token(live) is None
    assert not tokens.revoke(live)
    again = [tokens.issue_token("res.b", 600) for _ in range(2)]
    assert tokens.revoke_user("res.b") == 2
    assert all(tokens.verify_token(t) is None for t in again)


def test_a_disabled_or_unknown_user_has_no_working_token(tokens: TokenStore) -> None:
    token = tokens.issue_token("dr.a", 600)
    tokens.users.set_disabled("dr.a", True)
    assert tokens.verify_token(token) is None                        # at once, not at expiry
    with pytest.raises(UserError, match="no enabled user"):
        tokens.issue_token("dr.a", 600)
    with pytest.raises(UserError, match="no enabled user"):
        tokens.issue_token("nobody", 600)
    with pytest.raises(UserError, match="lifetime"):
        tokens.issue_token("res.b", 10**9)


def test_assertion_takes_role_and_department_from_the_record(tokens: TokenStore,
                                                             tmp_path: Path) -> None:
    node = NodeIdentity.generate()
    researcher = tokens.users.get("res.b")
    assert researcher is not None and researcher.purposes == ("research",)
    made = user_assertion(node, researcher, "research")
    assert (made.user, made.role, made.department) == (researcher.handle, "researcher", "Oncology")
    assert verify_signature(node.verify_key, signed_bytes(ASSERTION_DOMAIN, made.claims()),
                            made.signature)
    with pytest.raises(UserRefused, match="may not state purpose 'treatment'") as wrong:
        user_assertion(node, researcher, "treatment")   # a researcher cannot claim clinical care
    assert wrong.value.code == "purpose_not_allowed"
    both = tokens.users.add_user("dr.c", "clinician", "ER", PW, ["treatment", "research"])
    assert user_assertion(node, both, "research").role == "clinician"
    with pytest.raises(UserError, match="purpose must be one of"):
        tokens.users.add_user("dr.d", "clinician", "ER", PW, ["fun"])


class _Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, dict[str, object]]] = []

    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: object) -> None:
        self.entries.append((action, actor, outcome, detail))


def test_unknown_and_disabled_users_are_refused_and_audited(tokens: TokenStore) -> None:
    audit = _Audit()
    with pytest.raises(UserRefused, match="medfed user add") as unknown:
        resolve_user(tokens.users, "nosuchuser", audit=audit, via="cli")
    tokens.users.set_disabled("dr.a", True)
    with pytest.raises(UserRefused) as disabled:
        resolve_user(tokens.users, "dr.a", audit=audit)
    assert (unknown.value.code, disabled.value.code) == ("unknown_user", "user_disabled")
    assert [(e[0], e[1], e[3]["code"]) for e in audit.entries] == [
        ("user.refused", "nosuchuser", "unknown_user"), ("user.refused", "dr.a", "user_disabled")]
    user = tokens.users.get("dr.a")
    assert user is not None
    with pytest.raises(UserRefused, match="disabled"):
        user_assertion(NodeIdentity.generate(), user, "treatment")


def test_a_users_file_from_before_purposes_still_opens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "users.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT PRIMARY KEY, handle TEXT NOT NULL UNIQUE, "
                   "role TEXT NOT NULL, department TEXT NOT NULL, password_hash TEXT NOT NULL, "
                   "created_at INTEGER NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO users VALUES ('old', 'u-1', 'researcher', 'R', 'x', 1, 0)")
    user = UserStore(path).get("old")
    assert user is not None and user.purposes == ("research",)
