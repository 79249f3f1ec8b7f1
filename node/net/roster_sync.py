"""Spreading roster versions between members over the peer API.

A node pushes its roster to a peer when it has a newer one (e.g. right after joining:
the bootstrap peer does not know the new member yet and learns it from the CA-signed
roster the newcomer brings) and pulls from peers to catch up after being offline.
"""

from __future__ import annotations

from node.net.client import PeerClient
from node.net.errors import PeerProtocolError
from node.net.roster import Member, RosterError
from node.net.rosterbook import RosterBook
from node.net.server import ROSTER_PATH


async def push_roster(client: PeerClient, book: RosterBook, member: Member, *,
                      timeout: float) -> bool:
    """Offer our roster to ``member``; True if the peer now holds our version (or newer)."""
    answer = await client.call(member, "POST", ROSTER_PATH, book.signed.to_dict(),
                               timeout=timeout)
    version = answer.get("version")
    return isinstance(version, int) and version >= book.current.version


async def pull_roster(client: PeerClient, book: RosterBook, member: Member, *,
                      timeout: float) -> bool:
    """Fetch ``member``'s roster and adopt it if it is CA-signed and newer."""
    answer = await client.call(member, "GET", ROSTER_PATH, timeout=timeout)
    try:
        return book.offer(answer)
    except RosterError as exc:
        raise PeerProtocolError(member.node_id, f"sent an unacceptable roster: {exc}") from exc


async def announce(client: PeerClient, book: RosterBook, bootstrap_address: str, *,
                   timeout: float) -> bool:
    """After joining: push our roster to the member listening at ``host:port``."""
    member = book.current.member_at(bootstrap_address)
    if member is None:
        raise RosterError(f"no active member listens at {bootstrap_address} according to the "
                          "roster in the member bundle; check the --bootstrap address")
    return await push_roster(client, book, member, timeout=timeout)
