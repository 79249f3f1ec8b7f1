"""A federation built on one machine holds its O(N) roster once, not once per member.

Every member bundle used to carry its own copy of the roster, encoded, parsed and
written per member: N members cost O(N²) bytes and encoding (~400 kB a member at 1,000).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from node.identity import NodeIdentity
from node.net.federation import ROSTER, admit_many, create_federation, revoke
from node.net.membership import MembershipPaths, create_request, load_membership
from node.net.roster import RosterError, SignedRoster, verify_roster
from node.net.rosterbook import RosterBook
from node.net.testbed import build_federation


def _build(directory: Path, n: int):
    names = [f"site{i}" for i in range(n)]
    return build_federation(directory, names, address_for=lambda i: f"10.0.0.{i + 1}:4433")


def _distinct_roster_bytes(members) -> int:
    seen: dict[tuple[int, int], int] = {}
    for m in members:
        st = m.membership.paths.roster.stat()
        seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


@pytest.mark.parametrize("n", [3, 12])
def test_members_roster_files_are_one_file_whatever_the_size(tmp_path: Path, n: int) -> None:
    operator, members = _build(tmp_path, n)
    published = (operator / ROSTER).stat()
    assert _distinct_roster_bytes(members) == published.st_size   # one roster, not n
    assert published.st_nlink == n + 1
    for m in members:   # and each member reads it as its own, verified
        again = load_membership(m.identity, m.membership.paths)
        assert again.roster.current.member(m.identity.node_id_hex) is not None


def test_bundles_of_one_admission_share_one_roster_object(tmp_path: Path) -> None:
    operator = tmp_path / "op"
    create_federation(operator, "Shared Roster")
    requests = []
    for i in range(4):
        identity = NodeIdentity.generate()
        req = create_request(identity, MembershipPaths.under(tmp_path / f"n{i}"), name=f"n{i}",
                             peer_address=f"10.0.0.{i + 1}:4433",
                             dht_address=f"10.0.0.{i + 1}:4433", dicom_ae=f"N{i}")
        requests.append((req.to_json(), None))
    bundles = admit_many(operator, requests)
    assert all(b.roster is bundles[0].roster for b in bundles)
    assert len(bundles[0].roster.roster.active()) == 4


def test_a_member_adopting_a_newer_roster_leaves_the_others_files_alone(tmp_path: Path) -> None:
    operator, members = _build(tmp_path, 3)
    old_version = members[1].membership.roster.current.version
    newer = revoke(operator, members[2].identity.node_id_hex)
    assert members[0].membership.roster.offer(newer.to_json())
    ca = members[0].membership.ca_cert
    assert RosterBook.load(members[0].membership.paths.roster, ca).current.version == newer.roster.version
    assert RosterBook.load(members[1].membership.paths.roster, ca).current.version == old_version


def test_a_roster_object_is_checked_against_the_ca_like_a_document(tmp_path: Path) -> None:
    operator, members = _build(tmp_path, 2)
    book = members[0].membership.roster
    signed, ca = book.signed, book.ca_cert
    assert verify_roster(signed, ca).roster is signed.roster
    edited = SignedRoster(replace(signed.roster, version=signed.roster.version + 5),
                          signed.signature)
    with pytest.raises(RosterError, match="not signed"):
        verify_roster(edited, ca)
    assert not book.offer(signed)        # not newer: ignored
    with pytest.raises(RosterError):
        book.offer(edited)               # newer but forged: refused
    assert book.current.version == signed.roster.version
