"""What `medfed status` says about the federation: roster, members, publishing, shares.

Built from a running node (through the control socket) or, when the node is not
running, from its files (roster, jobs table, sharing catalogue) without contact times.
Pure assembly: the callers do the I/O and hand the pieces in.
"""

from __future__ import annotations

import time
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.net.gossip import GossipState
from node.net.roster import Roster
from node.sharing.protection import protection_for


def roster_status(roster: Roster, own_id: str, gossip: GossipState | None,
                  dht_contacts: dict[str, str] | None = None) -> dict[str, Any]:
    """``dht_contacts``: node id -> "ip:port" of the running DHT's routing table (None:
    not running)."""
    contacts = gossip.contacts if gossip is not None else {}
    members = []
    for m in roster.members:
        contact = contacts.get(m.node_id)
        members.append({
            "name": m.name, "node_id": m.node_id, "peer_address": m.peer_address,
            "dht_address": m.dht_address, "self": m.node_id == own_id,
            "status": roster.status(m.node_id),
            "last_contact": contact.last_ok if contact else 0.0,
            "last_error": contact.last_error if contact else "",
            "their_version": contact.their_version if contact else 0,
            "in_dht": None if dht_contacts is None else m.node_id in dht_contacts,
            "dht_contact": (dht_contacts or {}).get(m.node_id, "")})
    revoked = roster.status(own_id) == "revoked"
    return {"federation": roster.federation, "version": roster.version,
            "adopted_at": gossip.adopted_at if gossip is not None else 0.0,
            "active": len(roster.active()), "revoked_here": revoked, "members": members}


def protection_status(cfg: Any, active_members: int) -> dict[str, Any]:
    fed = cfg.federation
    sized = protection_for(active_members, fed.shares_k, fed.shares_n, fed.replicas)
    return {"k": sized.k, "n": sized.n, "replicas": sized.replicas,
            "configured": list(sized.configured), "possible": sized.possible,
            "warning": sized.warning()}


def bundle_health(entries: list[Any], roster: Roster, target_n: int,
                  target_r: int) -> dict[str, Any]:
    """Shares and replicas of this node's own published bundles against the targets."""
    active = {m.node_id for m in roster.active()}
    published = [e for e in entries if e.reached("published")]
    def live(holders: Any) -> int:
        return sum(1 for h in holders if h in active)
    return {
        "bundles": len(entries), "published": len(published),
        "unpublished": len(entries) - len(published),
        "shares_below_target": sum(1 for e in published if live(e.share_holders) < target_n),
        "replicas_below_target": sum(1 for e in published if live(e.replica_holders) < target_r),
        "holders_gone": sum(1 for e in published
                            if live(e.share_holders) < len(e.share_holders)
                            or live(e.replica_holders) < len(e.replica_holders))}


def age(when: float, now: float | None = None) -> str:
    """'12 s ago' style for a wall-clock time; 'never' for 0."""
    if not when:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - when)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


PUBLISH_BACKLOG_SQL = ("SELECT last_error, count(*) FROM jobs WHERE kind='publish' "
                       "AND state IN ('pending','running') GROUP BY last_error")


async def publish_backlog(store: Any) -> dict[str, Any]:
    """Pending publish jobs and the distinct reasons the last attempts failed."""
    rows = await store.fetchall(PUBLISH_BACKLOG_SQL)
    return {"pending": sum(int(r[1]) for r in rows),
            "reasons": [{"reason": str(r[0]), "jobs": int(r[1])} for r in rows if r[0]]}


async def node_federation_status(node: Any) -> dict[str, Any] | None:
    """The federation section of a running node's status (None: not a member)."""
    membership = node.membership
    if membership is None:
        return None
    roster = membership.roster.current
    dht = node.dht
    in_dht = ({c.id.hex(): f"{c.ip}:{c.port}" for c in dht.routing.contacts()}
              if dht is not None and dht.running else None)
    doc = {"roster": roster_status(roster, node.node_id,
                                   node.gossip.state if node.gossip is not None else None,
                                   in_dht),
           "protection": protection_status(node.cfg, len(roster.active())),
           "publish": await publish_backlog(node.store),
           "peer_connections": node.peer.connections() if node.peer is not None else {}}
    publisher = node.service("publisher")
    if publisher is not None and getattr(publisher, "catalog", None) is not None:
        target = doc["protection"]
        doc["bundles"] = bundle_health(await publisher.catalog.entries(), roster,
                                       target["n"], target["replicas"])
        doc["publish"]["recent_errors"] = [{"at": at, "reason": reason}
                                           for at, reason in publisher.last_errors[-5:]]
    return doc
