"""Asking every planned site at once, under one deadline, and streaming answers as they come.

A clinician waits for the slowest site only up to the deadline: then every site that has
not answered is reported as ``timeout`` and its request is cancelled. A site that has
not answered ``hedge_after_s`` after its request left gets a second request (a freshly
signed one, so a new nonce); the first answer wins and the other request is cancelled.
Concurrency is bounded by ``max_parallel`` requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.net.errors import PeerError, PeerRefused, PeerTimeout, PeerUnreachable
from node.net.reqsign import RequestRefused
from node.net.roster import Member

STATUSES = ("ok", "timeout", "denied", "error", "unreachable")
LEVELS = ("count", "deidentified", "identified")

Ask = Callable[[Member, float], Awaitable[dict[str, Any]]]   # (site, seconds left) -> answer


@dataclass
class SiteAnswer:
    site: Member
    status: str                     # one of STATUSES
    latency_ms: float
    level: str = ""                 # count | deidentified | identified (status ok)
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int | str] = field(default_factory=dict)
    reason: str = ""
    truncated: bool = False
    hedged: bool = False
    payload: dict[str, Any] = field(default_factory=dict)   # what another parser keeps


@dataclass(frozen=True)
class FanOutSettings:
    deadline_s: float = 5.0
    hedge_after_s: float = 1.0
    max_parallel: int = 32


class AnswerError(ValueError):
    """A site's answer does not have the shape of a query answer."""


def parse_answer(site: Member, doc: dict[str, Any], latency_ms: float) -> SiteAnswer:
    """Check the shape of a site's answer; never trust a peer's JSON blindly."""
    level = doc.get("level")
    rows, counts = doc.get("rows", []), doc.get("counts", {})
    if level not in LEVELS:
        raise AnswerError(f"answer level {str(level)[:20]!r} is not one of {', '.join(LEVELS)}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AnswerError("answer rows must be a list of objects")
    if not isinstance(counts, dict) or not all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in counts.values()):
        raise AnswerError("answer counts must map names to numbers or '<N'")
    if level != "count" and not all(isinstance(r.get("patient"), str) for r in rows):
        raise AnswerError("every answer row must name its patient pseudonym")
    return SiteAnswer(site, "ok", latency_ms, level, rows, counts,
                      truncated=bool(doc.get("truncated", False)))


Parse = Callable[[Member, dict[str, Any], float], SiteAnswer]


def _failure(site: Member, exc: BaseException, latency_ms: float) -> SiteAnswer:
    if isinstance(exc, (PeerRefused, RequestRefused)):
        status = "denied" if exc.status == 403 else "error"
        return SiteAnswer(site, status, latency_ms, reason=f"{exc.code}: {exc.reason}")
    if isinstance(exc, PeerTimeout):
        return SiteAnswer(site, "timeout", latency_ms, reason="no answer before the deadline")
    if isinstance(exc, PeerUnreachable):
        return SiteAnswer(site, "unreachable", latency_ms, reason=str(exc))
    if isinstance(exc, (PeerError, AnswerError)):
        return SiteAnswer(site, "error", latency_ms, reason=str(exc))
    return SiteAnswer(site, "error", latency_ms,
                      reason=f"query to this site failed ({type(exc).__name__})")


async def _cancel_all(tasks: set[asyncio.Future[Any]]) -> None:
    """Cancel and reap (a cancelled peer call closes its connection)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _SiteCall:
    """One site's request(s): the first, and a hedge if it is slow."""

    def __init__(self, site: Member, ask: Ask, gate: asyncio.Semaphore, end: float,
                 settings: FanOutSettings, hedge: bool, parse: Parse = parse_answer) -> None:
        self.site, self._ask, self._gate, self._end = site, ask, gate, end
        self._settings, self._hedge, self._parse = settings, hedge, parse
        self.started = asyncio.get_running_loop().time()

    def _ms(self) -> float:
        return round((asyncio.get_running_loop().time() - self.started) * 1000, 1)

    async def _attempt(self, sent: asyncio.Event | None = None) -> dict[str, Any]:
        async with self._gate:
            if sent is not None:
                sent.set()
            left = self._end - asyncio.get_running_loop().time()
            if left <= 0:
                raise PeerTimeout(self.site.node_id, "deadline passed before the request left")
            return await self._ask(self.site, left)

    async def run(self) -> SiteAnswer:
        # The hedge clock starts when the first request leaves, not while it waits for a
        # free slot: with 450 planned sites asked 32 at a time, most wait over a second
        # without being slow, and hedging them queued copies that only delayed the rest
        # (450 sites at 120 ms each: 480 requests instead of 450, 30 "hedged" answers).
        sent = asyncio.Event()
        first = asyncio.ensure_future(self._attempt(sent))
        tries = {first}
        hedged = False
        last: BaseException | None = None
        leaving = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({first, leaving}, return_when=asyncio.FIRST_COMPLETED)
            done, _ = await asyncio.wait(tries, timeout=self._settings.hedge_after_s)
            if not done and self._hedge:
                tries.add(asyncio.ensure_future(self._attempt()))
                hedged = True
            while tries:
                done, tries = await asyncio.wait(tries, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        answer = self._parse(self.site, task.result(), self._ms())
                        answer.hedged = hedged
                        return answer
                    if isinstance(exc, (PeerRefused, RequestRefused)):
                        return _failure(self.site, exc, self._ms())  # a refusal is an answer
                    last = exc
            assert last is not None
            return _failure(self.site, last, self._ms())
        except AnswerError as exc:
            return _failure(self.site, exc, self._ms())
        finally:
            await _cancel_all(tries | {leaving})


async def fan_out(sites: Sequence[Member], ask: Ask, settings: FanOutSettings, *,
                  hedge: Callable[[Member], bool] = lambda site: True,
                  parse: Parse = parse_answer) -> AsyncIterator[SiteAnswer]:
    """Yield one ``SiteAnswer`` per site, in the order they arrive, all within the deadline.
    ``parse`` checks one site's JSON (raise AnswerError); other requests than queries
    (similarity) bring their own."""
    gate = asyncio.Semaphore(max(1, settings.max_parallel))
    start = asyncio.get_running_loop().time()
    end = start + settings.deadline_s
    calls = {asyncio.ensure_future(_SiteCall(s, ask, gate, end, settings, hedge(s), parse).run()): s
             for s in sites}
    pending = set(calls)
    try:
        while pending:
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
        for task in pending:
            task.cancel()
        waited = round((asyncio.get_running_loop().time() - start) * 1000, 1)
        for task in pending:
            yield SiteAnswer(calls[task], "timeout", waited,
                             reason=f"no answer within the {settings.deadline_s:g}s deadline")
    finally:
        await _cancel_all(pending)
