"""Membership and trust: CA, admission, roster, secrets, assertions, request signing, users."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from node.identity import NodeIdentity
from node.net.admission import AdmissionError, MemberBundle
from node.net.assertion import (AssertionRefused, UserAssertion, accept_assertion,
                                issue_assertion, verify_assertion)
from node.net.federation import (CA_KEY, SECRETS, FederationError, admit,
                                 create_federation, current_roster, revoke)
from node.net.fedsecrets import FederationSecrets, SecretsError, open_secrets
from node.net.membership import (MembershipPaths, create_request, install_bundle,
                                 load_membership)
from node.net.nonces import NonceCache
from node.net.pki import PKIError, check_issued_by, create_ca, node_id_of_cert
from node.net.reqsign import (RequestRefused, check_signature, check_window, parse_headers,
                              sign_request)
from node.net.roster import RosterError, sign_roster, verify_roster
from node.net.rosterbook import RosterBook
from node.net.testbed import build_federation
from node.users import AuthenticationFailed, UserError, UserStore


@pytest.fixture()
def fed(tmp_path: Path):
    operator, nodes = build_federation(tmp_path, ["alpha", "beta", "gamma"])
    yield operator, nodes
    for node in nodes:
        node.sock.close()


def _request(tmp_path: Path, name: str = "delta") -> tuple[NodeIdentity, MembershipPaths, bytes]:
    identity = NodeIdentity.generate()
    paths = MembershipPaths.under(tmp_path / name)
    req = create_request(identity, paths, name=name, peer_address="127.0.0.1:40001",
                         dht_address="127.0.0.1:40002", dicom_ae="DELTA")
    return identity, paths, req.to_json()


# -- federation folder, CA, certificates -------------------------------------
def test_create_federation_writes_private_ca_and_refuses_overwrite(tmp_path: Path) -> None:
    info = create_federation(tmp_path / "op", "Regional Imaging Network")
    for name in (CA_KEY, SECRETS):
        mode = stat.S_IMODE((tmp_path / "op" / name).stat().st_mode)
        assert mode == 0o600, f"{name} must be owner-only, is {oct(mode)}"
    assert current_roster(tmp_path / "op").roster.federation_id == info.ca_fingerprint
    key_before = (tmp_path / "op" / CA_KEY).read_bytes()
    with pytest.raises(FederationError, match="already holds a federation"):
        create_federation(tmp_path / "op", "Another")
    assert (tmp_path / "op" / CA_KEY).read_bytes() == key_before


def test_node_cert_carries_node_id_and_fails_against_foreign_ca(fed) -> None:
    _, (alpha, *_rest) = fed
    cert = alpha.membership.node_cert
    assert node_id_of_cert(cert) == alpha.identity.node_id_hex
    check_issued_by(cert, alpha.membership.ca_cert)
    _, foreign_ca = create_ca("Foreign")
    with pytest.raises(PKIError, match="not issued by this federation"):
        check_issued_by(cert, foreign_ca)


# -- admission ---------------------------------------------------------------
def test_tampered_admission_request_is_refused(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    _, _, data = _request(tmp_path)
    doc = json.loads(data)
    doc["peer_address"] = "10.6.6.6:443"   # an attacker redirects the new member's traffic
    with pytest.raises(AdmissionError, match="signature"):
        admit(tmp_path / "op", json.dumps(doc).encode())
    assert current_roster(tmp_path / "op").roster.version == 1


@pytest.mark.parametrize("bad", [b"", b"[]", b"{not json", b'{"kind": "other"}'])
def test_malformed_admission_request_gets_clear_error(tmp_path: Path, bad: bytes) -> None:
    create_federation(tmp_path / "op", "Net")
    with pytest.raises(AdmissionError, match="malformed admission request"):
        admit(tmp_path / "op", bad)


def test_admit_and_join_round_trip(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    identity, paths, data = _request(tmp_path)
    bundle = admit(tmp_path / "op", data, name="St Delta")
    membership = install_bundle(bundle.to_json(), identity, paths)
    me = membership.roster.member(identity.node_id_hex)
    assert me is not None and me.name == "St Delta" and me.peer_address == "127.0.0.1:40001"
    reloaded = load_membership(identity, paths)
    assert reloaded.secrets == membership.secrets
    assert reloaded.roster.current.version == 2
    assert stat.S_IMODE(paths.sealed_secrets.stat().st_mode) == 0o600


def test_bundle_for_another_node_is_refused_and_nothing_written(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    _, _, data = _request(tmp_path, "delta")
    bundle = admit(tmp_path / "op", data).to_json()
    other, other_paths, _ = _request(tmp_path, "epsilon")
    with pytest.raises(AdmissionError, match="another node"):
        install_bundle(bundle, other, other_paths)
    assert not other_paths.node_cert.exists() and not other_paths.roster.exists()


def test_bundle_with_unexpected_ca_fingerprint_is_refused(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    identity, paths, data = _request(tmp_path)
    bundle = admit(tmp_path / "op", data).to_json()
    with pytest.raises(AdmissionError, match="fingerprint"):
        install_bundle(bundle, identity, paths, expected_ca_fingerprint="00" * 32)
    assert not paths.ca_cert.exists()


def test_revoked_node_cannot_be_readmitted(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    identity, _, data = _request(tmp_path)
    admit(tmp_path / "op", data)
    revoke(tmp_path / "op", identity.node_id_hex)
    with pytest.raises(AdmissionError, match="revoked"):
        admit(tmp_path / "op", data)


# -- roster ------------------------------------------------------------------
def test_roster_signed_by_wrong_key_is_refused(fed) -> None:
    _, (alpha, *_rest) = fed
    book = alpha.membership.roster
    forger_key, _ = create_ca("Net")
    forged = sign_roster(book.current.with_revoked(alpha.identity.node_id_hex, 1), forger_key)
    with pytest.raises(RosterError, match="not signed by this federation's CA"):
        book.offer(forged)
    assert book.status(alpha.identity.node_id_hex) == "member"


def test_roster_edited_after_signing_is_refused(fed) -> None:
    _, (alpha, *_rest) = fed
    doc = alpha.membership.roster.signed.to_dict()
    doc["roster"]["version"] += 5
    doc["roster"]["revoked"] = [alpha.identity.node_id_hex]
    with pytest.raises(RosterError, match="not signed"):
        verify_roster(doc, alpha.membership.ca_cert)


def test_older_roster_does_not_replace_newer_and_newer_persists(fed) -> None:
    operator, (alpha, beta, gamma) = fed
    book = alpha.membership.roster
    old = book.signed
    newer = revoke(operator, gamma.identity.node_id_hex)
    assert book.offer(newer) is True
    assert book.status(gamma.identity.node_id_hex) == "revoked"
    assert book.offer(old) is False
    assert book.current.version == newer.roster.version
    reloaded = RosterBook.load(alpha.membership.paths.roster, alpha.membership.ca_cert)
    assert reloaded.status(gamma.identity.node_id_hex) == "revoked"


@pytest.mark.parametrize("bad", [b"", b"null", b'{"roster": 1, "signature": "AA=="}', b"\xff"])
def test_malformed_roster_gets_roster_error(fed, bad: bytes) -> None:
    _, (alpha, *_rest) = fed
    with pytest.raises(RosterError):
        alpha.membership.roster.offer(bad)


# -- sealed federation secrets -----------------------------------------------
def test_sealed_secrets_open_only_with_the_right_node_key(tmp_path: Path) -> None:
    create_federation(tmp_path / "op", "Net")
    identity, _, data = _request(tmp_path)
    bundle = admit(tmp_path / "op", data)
    plain = FederationSecrets.from_bytes((tmp_path / "op" / SECRETS).read_bytes())
    assert open_secrets(bundle.sealed_secrets, identity) == plain
    with pytest.raises(SecretsError, match="not sealed to this node"):
        open_secrets(bundle.sealed_secrets, NodeIdentity.generate())
    assert plain.index_key.hex() not in bundle.to_json().decode()
    assert "hidden" in repr(plain) and plain.index_key.hex() not in repr(plain)


def test_bundle_parsing_rejects_garbage() -> None:
    with pytest.raises(AdmissionError, match="malformed member bundle"):
        MemberBundle.from_json(b'{"kind": "medfed-member-bundle-v1"}')


# -- user assertions -----------------------------------------------------------
def _assertion(node, **kw) -> UserAssertion:
    args = dict(user="u-1234", role="clinician", department="Radiology", purpose="treatment",
                now=time.time())
    args.update(kw)
    return issue_assertion(node.identity, **args)


def test_assertion_round_trip_verifies(fed) -> None:
    _, (alpha, beta, _) = fed
    a = _assertion(alpha)
    parsed = accept_assertion(json.loads(json.dumps(a.to_dict())), beta.membership.roster.current,
                              alpha.identity.node_id_hex, now=time.time())
    assert parsed == a


def test_expired_assertion_refused_but_small_skew_tolerated(fed) -> None:
    _, (alpha, beta, _) = fed
    roster = beta.membership.roster.current
    a = _assertion(alpha, now=1_000_000, ttl_s=60)
    verify_assertion(a, roster, alpha.identity.node_id_hex, now=1_000_060 + 10, skew_s=30)
    with pytest.raises(AssertionRefused) as err:
        verify_assertion(a, roster, alpha.identity.node_id_hex, now=1_000_060 + 31, skew_s=30)
    assert err.value.code == "assertion_expired" and err.value.status == 403


def test_assertion_with_raised_role_is_refused(fed) -> None:
    _, (alpha, beta, _) = fed
    doc = _assertion(alpha, role="researcher", purpose="research").to_dict()
    doc["role"], doc["purpose"] = "clinician", "treatment"
    with pytest.raises(AssertionRefused) as err:
        accept_assertion(doc, beta.membership.roster.current, alpha.identity.node_id_hex,
                         now=time.time())
    assert err.value.code == "assertion_bad_signature"


def test_assertion_presented_by_other_site_or_from_non_member_refused(fed) -> None:
    _, (alpha, beta, gamma) = fed
    roster = beta.membership.roster.current
    with pytest.raises(AssertionRefused) as err:
        verify_assertion(_assertion(alpha), roster, gamma.identity.node_id_hex, now=time.time())
    assert err.value.code == "assertion_wrong_site"
    stranger = NodeIdentity.generate()
    fake = issue_assertion(stranger, user="u-x", role="admin", department="IT",
                           purpose="operations", now=time.time())
    with pytest.raises(AssertionRefused) as err:
        verify_assertion(fake, roster, stranger.node_id_hex, now=time.time())
    assert err.value.code == "assertion_not_member"


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("role"), lambda d: d.update(role="superuser"),
    lambda d: d.update(expires_at="soon"), lambda d: d.update(signature="zz"),
    lambda d: d.update(expires_at=d["issued_at"] + 10 ** 6)])
def test_malformed_assertion_refused(fed, mutate) -> None:
    _, (alpha, beta, _) = fed
    doc = _assertion(alpha).to_dict()
    mutate(doc)
    with pytest.raises(AssertionRefused) as err:
        accept_assertion(doc, beta.membership.roster.current, alpha.identity.node_id_hex,
                         now=time.time())
    assert err.value.code == "malformed_assertion" and err.value.reason


def test_issue_assertion_rejects_unknown_role(fed) -> None:
    _, (alpha, *_rest) = fed
    with pytest.raises(ValueError, match="role must be one of"):
        _assertion(alpha, role="janitor")


# -- request signing and nonces (pure) ---------------------------------------
def test_request_signature_binds_method_path_and_body() -> None:
    me, peer = NodeIdentity.generate(), NodeIdentity.generate()
    signed = sign_request(me, peer.node_id_hex, "POST", "/v1/query", b'{"a":1}', now=100,
                          lifetime_s=60)
    parsed = parse_headers(signed.to_headers())
    check_signature(parsed, me.verify_key, "POST", "/v1/query", b'{"a":1}')
    for method, path, body, code in (("GET", "/v1/query", b'{"a":1}', "bad_signature"),
                                     ("POST", "/v1/other", b'{"a":1}', "bad_signature"),
                                     ("POST", "/v1/query", b'{"a":2}', "body_mismatch")):
        with pytest.raises(RequestRefused) as err:
            check_signature(parsed, me.verify_key, method, path, body)
        assert err.value.code == code


def test_request_window_checks() -> None:
    me = NodeIdentity.generate()
    signed = parse_headers(sign_request(me, me.node_id_hex, "GET", "/", b"", now=1000,
                                        lifetime_s=60).to_headers())
    check_window(signed, now=1050, max_lifetime_s=60, skew_s=5)
    cases = ((1066, 60, "expired"), (990, 60, "not_yet_valid"), (1000, 30, "bad_lifetime"))
    for now, max_life, code in cases:
        with pytest.raises(RequestRefused) as err:
            check_window(signed, now=now, max_lifetime_s=max_life, skew_s=5)
        assert err.value.code == code


def test_missing_signature_headers_named() -> None:
    with pytest.raises(RequestRefused) as err:
        parse_headers({"X-Medfed-From": "ab"})
    assert err.value.code == "missing_signature" and "X-Medfed-Nonce" in err.value.reason


def test_nonce_cache_detects_replay_purges_and_fails_closed_when_full() -> None:
    cache = NonceCache(capacity=2)
    assert cache.remember("a", "n1", until=10, now=0) == "new"
    assert cache.remember("a", "n1", until=10, now=5) == "replay"
    assert cache.remember("b", "n1", until=10, now=5) == "new"
    assert cache.remember("c", "n2", until=10, now=5) == "full"
    assert cache.remember("c", "n2", until=30, now=11) == "new"   # old entries expired
    assert len(cache) == 1


# -- local users ---------------------------------------------------------------
def test_users_argon2_password_check(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    user = store.add_user("dr.house", "clinician", "Radiology", "correct horse battery")
    assert user.handle.startswith("u-") and user.handle != user.name
    reopened = UserStore(tmp_path / "users.sqlite")
    assert reopened.authenticate("dr.house", "correct horse battery") == user
    with pytest.raises(AuthenticationFailed) as wrong:
        reopened.authenticate("dr.house", "correct horse battery!")
    with pytest.raises(AuthenticationFailed) as unknown:
        reopened.authenticate("nobody", "correct horse battery")
    assert str(wrong.value) == str(unknown.value)
    raw = (tmp_path / "users.sqlite").read_bytes()
    assert b"correct horse battery" not in raw and b"$argon2id$" in raw
    assert stat.S_IMODE((tmp_path / "users.sqlite").stat().st_mode) == 0o600


def test_disabled_user_cannot_log_in(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    store.add_user("r1", "researcher", "Cardiology", "long enough pw")
    store.set_disabled("r1", True)
    with pytest.raises(AuthenticationFailed):
        store.authenticate("r1", "long enough pw")


@pytest.mark.parametrize("name,role,dept,pw,msg", [
    ("bad name", "clinician", "Rad", "long enough pw", "user name"),
    ("ok", "surgeon", "Rad", "long enough pw", "role must be"),
    ("ok", "admin", "", "long enough pw", "department"),
    ("ok", "admin", "IT", "short", "password must be")])
def test_add_user_rejects_bad_input_and_writes_nothing(tmp_path: Path, name, role, dept, pw,
                                                        msg) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    with pytest.raises(UserError, match=msg):
        store.add_user(name, role, dept, pw)
    assert store.list_users() == []


def test_duplicate_user_refused(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    store.add_user("a1", "admin", "IT", "long enough pw")
    with pytest.raises(UserError, match="already exists"):
        store.add_user("a1", "clinician", "Rad", "another long pw")
    assert [u.role for u in store.list_users()] == ["admin"]
