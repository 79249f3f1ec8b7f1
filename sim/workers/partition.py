"""Which worker runs which node: round robin, so every stage of a growing federation
(the first N/8 nodes, then N/4 …) is spread over all workers."""

from __future__ import annotations

from sim.grid import virtual_host


def owner(i: int, workers: int) -> int:
    return i % workers


def local_nodes(n: int, index: int, workers: int) -> list[int]:
    return [i for i in range(n) if owner(i, workers) == index]


def host_owners(n: int, workers: int) -> dict[str, int]:
    """Virtual host address -> the worker that runs it."""
    return {virtual_host(i): owner(i, workers) for i in range(n)}
