"""Collecting k shares from holders in parallel, widening to stand-by candidates on failure.

Why waves: the requester does not know who holds the current split (churn and repair move
shares), only the candidates in XOR order. It asks the first ``wave`` at once and, for
every one that fails or holds nothing, asks the next candidate, until one split has k
shares, the candidates run out, or the deadline passes. Each failure is kept with its
reason so the final error tells an operator what happened.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from node.keyshare.shamir import Share
from node.net.errors import PeerError, PeerRefused, PeerTimeout, PeerUnreachable


class KeyUnavailable(Exception):
    """Too few key shares could be collected to decrypt a bundle (the message says why)."""


class NotHeld(Exception):
    """The asked node holds no current share of the bundle."""


Ask = Callable[[str], Awaitable[Share]]


@dataclass
class Tally:
    shares: dict[bytes, list[Share]] = field(default_factory=dict)   # split_id -> shares
    failures: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)

    def add(self, share: Share) -> list[Share] | None:
        """Record; returns the split's shares once it has k distinct ones."""
        group = self.shares.setdefault(share.split_id, [])
        if all(s.x != share.x for s in group):
            group.append(share)
        return group if len(group) >= share.k else None

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, NotHeld):
            self.failures["held no current share"] += 1
        elif isinstance(exc, PeerRefused):
            self.failures["refused"] += 1
            if exc.reason not in self.refusals:
                self.refusals.append(exc.reason)
        elif isinstance(exc, (PeerUnreachable, PeerTimeout)):
            self.failures["unreachable or too slow"] += 1
        elif isinstance(exc, PeerError):
            self.failures["answered wrongly"] += 1
        else:
            self.failures[f"failed ({type(exc).__name__})"] += 1

    def best(self) -> int:
        return max((len(g) for g in self.shares.values()), default=0)

    def explain(self, bundle_id: str, k: int, why: str = "") -> str:
        parts = [f"{count} {what}" for what, count in sorted(self.failures.items())]
        detail = "; ".join(parts) or "no candidate holders in the roster"
        refusals = f" Refusal reasons: {' | '.join(self.refusals[:3])}." if self.refusals else ""
        return (f"only {self.best()} of {k} key shares could be collected for bundle "
                f"{bundle_id[:16]}…{why} (holders: {detail}).{refusals} The bundle stays "
                "encrypted; retry when more share holders are online.")


async def gather_shares(bundle_id: str, candidates: Sequence[str], ask: Ask, *, k: int,
                        wave: int, deadline_s: float) -> tuple[list[Share], Tally]:
    """k shares of one split, or KeyUnavailable. ``ask`` raises on any failure."""
    tally = Tally()
    queue = list(candidates)
    running: set[asyncio.Task[Share]] = set()

    def launch(count: int) -> None:
        for _ in range(min(count, len(queue))):
            running.add(asyncio.ensure_future(ask(queue.pop(0))))

    launch(max(wave, k))
    try:
        async with asyncio.timeout(deadline_s):
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    exc = task.exception()
                    if exc is not None:
                        tally.fail(exc)
                        launch(1)
                        continue
                    group = tally.add(task.result())
                    if group is not None:
                        return group, tally
    except TimeoutError:
        tally.failures["did not answer in time"] += len(running)
        raise KeyUnavailable(tally.explain(bundle_id, k, f" within {deadline_s:.1f}s")) from None
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    raise KeyUnavailable(tally.explain(bundle_id, k))
