"""A user's own audit trail at this node, and (for admins) the node's status.

The trail lists this node's audit entries that name the user's handle: their logins,
searches and transfers, and the answers this site served them. Other users' entries
are never shown, whatever the request asks. Entries hold no PHI (see node.audit.log).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from aiohttp import web

from node.audit.entry import AuditEntry
from node.audit.read import recent_entries
from node.audit.verify import verify

from .audit import audit_web
from .keys import NODE_KEY
from .pages import render
from .principal import Principal, authenticate

TRAIL_LIMIT = 200


def mine(handle: str):  # type: ignore[no-untyped-def]
    """Entries whose actor is the user: 'handle' (web) or '<node>/handle' (served queries)."""
    def match(entry: AuditEntry) -> bool:
        return entry.actor == handle or entry.actor.endswith("/" + handle)
    return match


async def _me(request: web.Request) -> Principal:
    principal = await authenticate(request)
    assert principal is not None   # the gate lets no anonymous request reach here
    return principal


async def trail_page(request: web.Request) -> web.StreamResponse:
    principal = await _me(request)
    node = request.config_dict[NODE_KEY]
    if node.audit is not None:
        node.audit.sync()
    entries = await asyncio.to_thread(recent_entries, node.cfg.audit_path, mine(principal.handle),
                                      limit=TRAIL_LIMIT)
    audit_web(request, "trail", "ok", entries=len(entries))
    return render(request, "trail.html", title="My audit trail", entries=entries,
                  limit=TRAIL_LIMIT)


async def _status(node: Any) -> dict[str, Any]:
    counts = await node.store.counts()
    doc: dict[str, Any] = {"counts": asdict(counts), "ports": asdict(node.ports), "members": [],
                           "roster_version": None, "dht": None, "replicas": None}
    if node.membership is not None:
        roster = node.membership.roster.current
        doc["roster_version"] = roster.version
        doc["members"] = [{"name": m.name, "node_id": m.node_id, "peer": m.peer_address,
                           "me": m.node_id == node.node_id} for m in roster.active()]
        doc["revoked"] = len(getattr(roster, "revoked", ()))
    if node.dht is not None:
        routing = node.dht.routing
        doc["dht"] = {"contacts": len(routing), "buckets": len(routing.buckets),
                      "lonely": len(routing.lonely_buckets())}
    replica = node.service("replica")
    if replica is not None:
        bundles, placed, short = await replica.ledger.summary()
        doc["replicas"] = {"bundles": bundles, "placed": placed, "short": short}
    return doc


async def admin_page(request: web.Request) -> web.StreamResponse:
    principal = await _me(request)
    if not principal.is_admin:
        audit_web(request, "admin", "denied")
        return render(request, "error.html", status=403, title="Not allowed",
                      error="The node status page is for administrators of this node.")
    node = request.config_dict[NODE_KEY]
    status = await _status(node)
    if node.audit is not None:
        node.audit.sync()
    report = await asyncio.to_thread(verify, node.cfg.audit_path, node.identity.verify_key)
    audit_web(request, "admin", "ok", audit_ok=report.ok)
    return render(request, "admin.html", title="Node status", node_status=status, report=report,
                  node_id=node.node_id)


def add_trail_routes(app: web.Application) -> None:
    app.router.add_get("/audit", trail_page)
    app.router.add_get("/admin", admin_page)
