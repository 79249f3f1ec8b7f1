"""Scenario "revocation": how long until every member refuses a revoked site.

The operator revokes one random site (``medfed federation revoke``: a new CA-signed
roster) and hands the roster to one other random member, as ``medfed federation
publish --to`` does. From there only the members' own roster gossip spreads it (push to
``roster_push_fanout`` members on adoption, and to the revoked site; anti-entropy every
``roster_pull_interval_s`` with ``roster_pull_peers`` members). A member refuses the
site from the moment it adopts the roster (its peer API checks every caller against it),
so the figure is the time from the hand-over until the last member adopted it. At the
end the revoked site calls a few members, which must refuse it (``refused``), and it
must itself know that it was revoked.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from node.net.errors import PeerError, PeerRefused
from node.net.federation import revoke
from node.net.roster import Roster
from sim.context import SimContext
from sim.report import latency_summary

SUMMARY = ("The operator revokes one site and hands the roster to one member: time until "
           "every member refuses the site (roster gossip), vs N.")
PATIENCE_S = 3600.0   # give up waiting after one simulated hour (reported as not reached)
CHECKS = 3            # members the revoked site then tries to call


async def _refusals(victim: Any, members: list[Any]) -> tuple[int, int]:
    refused = accepted = 0
    for node in members:
        target = node.membership.roster.current.member(node.node_id)
        try:
            await victim.client.call(target, "POST", "/v1/query", {}, timeout=5.0)
            accepted += 1
        except PeerRefused as exc:
            refused += exc.code == "revoked"
        except PeerError:
            pass
    return refused, accepted


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    grid = await ctx.grid(bootstrap="none")   # the DHT plays no part in roster gossip
    rng = random.Random(o.seed)
    try:
        await grid.settle(30.0)               # every member's first gossip round is over
        victim_i = rng.randrange(o.nodes)
        entry_i = rng.choice([i for i in range(o.nodes) if i != victim_i])
        victim = grid.nodes[victim_i]
        adopted: dict[int, float] = {}
        everyone = asyncio.Event()
        started = ctx.now()

        def listener(i: int) -> Any:
            def on_roster(roster: Roster) -> None:
                if roster.status(victim.node_id) == "revoked" and i not in adopted:
                    adopted[i] = ctx.now() - started
                    if len(adopted) == o.nodes:
                        everyone.set()
            return on_roster

        for i, node in enumerate(grid.nodes):
            node.membership.roster.subscribe(listener(i))    # type: ignore[union-attr]
        signed = revoke(grid.fed.operator_dir, victim.node_id)
        ctx.progress.phase("roster spreading", 1)
        # the hand-over itself (the operator's one call) is not part of the figure
        entry = grid.nodes[entry_i]
        entry.membership.roster.offer(signed)                # type: ignore[union-attr]
        try:
            await asyncio.wait_for(everyone.wait(), PATIENCE_S)
        except asyncio.TimeoutError:
            pass
        ctx.progress.advance()
        members = [i for i in range(o.nodes) if i != victim_i]
        times = [adopted[i] * 1000 for i in members if i in adopted]
        ctx.samples["adopted_ms"] = times
        for i in sorted(adopted):
            ctx.point("members_refusing_over_time", round(adopted[i], 4),
                      sum(1 for t in adopted.values() if t <= adopted[i]))
        checks = rng.sample(members, min(CHECKS, len(members)))
        refused, accepted = await _refusals(victim, [grid.nodes[i] for i in checks])
        gossip = victim.gossip
        return {
            "members": len(members), "revoked_site": victim_i, "entry_site": entry_i,
            "roster_version": signed.roster.version,
            "members_refusing": len(times),
            "all_refuse": len(times) == len(members),
            "all_refuse_s": round(max(times) / 1000, 4) if len(times) == len(members) else None,
            "adoption_ms": latency_summary(times),
            "revoked_site_knows": bool(gossip is not None and gossip.revoked),
            "revoked_site_learned_s": (round(adopted[victim_i], 4) if victim_i in adopted
                                       else None),
            "refusal_checks": len(checks), "refused": refused, "accepted": accepted,
            "push_fanout": entry.cfg.federation.roster_push_fanout,
            "pull_interval_s": entry.cfg.federation.roster_pull_interval_s,
        }
    finally:
        await grid.stop()
