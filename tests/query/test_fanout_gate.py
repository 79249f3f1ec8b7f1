"""fan_out's concurrency bound and hedging, in virtual time (no dependence on the host's speed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from node.query.fanout import FanOutSettings, fan_out
from sim.vclock import run_virtual


def _sites(n: int) -> list[Any]:
    return [SimpleNamespace(node_id=f"{i:064x}", name=f"site-{i}") for i in range(n)]


def _run(sites: list[Any], settings: FanOutSettings, seconds_for: dict[str, float],
         default_s: float) -> tuple[list[Any], dict[str, int], int, float]:
    """Every site answers after its own delay; returns answers, requests per site, the
    most requests in flight at once, and the virtual seconds the fan-out took."""
    asked: dict[str, int] = {}
    flight = {"now": 0, "peak": 0}

    async def ask(site: Any, _left: float) -> dict[str, Any]:
        asked[site.name] = asked.get(site.name, 0) + 1
        flight["now"] += 1
        flight["peak"] = max(flight["peak"], flight["now"])
        try:
            await asyncio.sleep(seconds_for.get(site.name, default_s))
        finally:
            flight["now"] -= 1
        return {"level": "count", "rows": [], "counts": {"studies": 1}}

    async def main() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        answers = [a async for a in fan_out(sites, ask, settings)]
        return answers, loop.time() - start

    answers, took = run_virtual(main())
    return answers, asked, flight["peak"], took


def test_at_most_max_parallel_requests_are_in_flight_and_the_bound_is_used() -> None:
    answers, asked, peak, took = _run(_sites(40), FanOutSettings(deadline_s=30, hedge_after_s=5,
                                                                  max_parallel=4), {}, 0.2)
    assert len(answers) == 40 and all(a.status == "ok" for a in answers)
    assert peak == 4
    assert 1.9 < took < 2.2          # 10 waves of 0.2 s


def test_waiting_for_a_free_slot_does_not_count_towards_the_hedge() -> None:
    """450 planned sites asked 32 at a time: a site still queued after ``hedge_after_s``
    has not been slow, its request has not left yet. A hedge then would only queue a
    second copy of it and push every later site further back."""
    answers, asked, peak, took = _run(_sites(60), FanOutSettings(deadline_s=30, hedge_after_s=0.5,
                                                                  max_parallel=2), {}, 0.1)
    assert all(a.status == "ok" and not a.hedged for a in answers)
    assert sum(asked.values()) == 60 and peak == 2
    assert took < 3.2                # 30 waves of 0.1 s, nothing asked twice


def test_a_slow_site_is_hedged_once_its_request_has_been_out_hedge_after_s() -> None:
    sites = _sites(3)
    answers, asked, _peak, took = _run(sites, FanOutSettings(deadline_s=30, hedge_after_s=0.5,
                                                              max_parallel=8),
                                       {"site-1": 3.0}, 0.1)
    by = {a.site.name: a for a in answers}
    assert asked == {"site-0": 1, "site-1": 2, "site-2": 1}
    assert by["site-1"].hedged and not by["site-0"].hedged
    assert took >= 3.0               # both of site-1's requests take 3 s
