"""The lookahead of conservative synchronisation: no message is faster than this."""

from __future__ import annotations

from sim.netmodel import NetModel

# Windows are this much narrower than the minimum latency: events that asyncio runs
# together (within its clock resolution, 1 ns) may read a clock a hair early.
MARGIN_S = 1e-6


class LookaheadError(ValueError):
    """The network model allows a zero delay, so workers cannot run ahead of each other."""


def min_one_way_s(model: NetModel) -> float:
    """The smallest one-way delay ``model.delay`` can return (seconds): jitter subtracts
    from the smallest base latency; bandwidth and slow hosts only add."""
    base = model.latency_ms if model.regions == 1 else min(model.latency_ms, model.between_ms[0])
    return (base - model.jitter_ms) / 1000.0


def window_s(model: NetModel) -> float:
    """Width of one synchronisation window; raises ``LookaheadError`` when the model's
    minimum one-way latency leaves nothing to run ahead with."""
    low = min_one_way_s(model)
    if low <= 2 * MARGIN_S:
        raise LookaheadError(
            f"--workers needs a minimum one-way latency > 0 (latency {model.latency_ms} ms "
            f"- jitter {model.jitter_ms} ms = {low * 1000:g} ms here): workers exchange "
            "messages only at barriers one minimum latency apart; lower the jitter or "
            "raise the latency, or run with --workers 1")
    return low - MARGIN_S
