"""The lookup scenario as a global list of steps, the same for any number of workers.

The same choices as ``sim.scenarios.lookup`` in one process, from the same seeds: nodes
join in the same waves (``sim.grid.join_waves``: the nodes of one wave at the same
moment, each through 4 random members that joined before the wave); at each stage every
node publishes its record in the same batches of ``PUBLISH_BATCH`` at a time, then
``queries`` lookups from random members for random published keys, one after another;
with ``--down F`` the same victims are taken down and the lookups repeated.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from sim.grid import join_waves
from sim.options import SimOptions
from sim.scenarios.lookup import PUBLISH_BATCH, stages

JOIN_SEEDS = 4
DOWN = "down"     # label of the lookups measured with nodes down


@dataclass(frozen=True)
class Step:
    op: str                       # "join" | "publish" | "lookup" | "kill"
    nodes: tuple[int, ...]        # the nodes that act (kill: the victims)
    via: tuple[tuple[int, ...], ...] = ()   # join: per node, earlier members to join through
    owner: int = -1               # lookup: whose record is looked up
    label: str = ""               # lookup: the measurement it belongs to (stage size, DOWN)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Step":
        return cls(str(doc["op"]), tuple(doc["nodes"]), tuple(tuple(v) for v in doc["via"]),
                   int(doc["owner"]), str(doc["label"]))


class PlanError(ValueError):
    """The scenario cannot be split across workers (yet)."""


def lookup_plan(opts: SimOptions) -> list[Step]:
    if opts.scenario != "lookup":
        raise PlanError(f"--workers supports the lookup scenario only so far, not "
                        f"{opts.scenario!r}; run it with --workers 1")
    rng = random.Random(opts.seed)
    steps: list[Step] = []
    joined = 1
    for size in stages(opts.nodes):
        for start, stop in join_waves(max(1, joined), size):     # as SimGrid.join_range
            vias = tuple(tuple(random.Random(opts.seed * 7919 + i).sample(
                range(start), min(JOIN_SEEDS, start))) for i in range(start, stop))
            steps.append(Step("join", tuple(range(start, stop)), vias))
        for start in range(0, size, PUBLISH_BATCH):              # as lookup.run
            steps.append(Step("publish", tuple(range(start, min(size, start + PUBLISH_BATCH)))))
        joined = size
        steps += _lookups(opts.queries, list(range(size)), list(range(size)), rng, str(size))
    if opts.down:
        count = min(opts.nodes, round(opts.down * opts.nodes))
        victims = sorted(random.Random(opts.seed + 7).sample(range(opts.nodes), count))
        steps.append(Step("kill", tuple(victims)))
        live = [i for i in range(opts.nodes) if i not in set(victims)]
        steps += _lookups(opts.queries, list(range(opts.nodes)), live, rng, DOWN)
    return steps


def _lookups(count: int, published: list[int], live: list[int], rng: random.Random,
             label: str) -> list[Step]:
    out = []
    for _ in range(count):
        owner = rng.choice(published)
        out.append(Step("lookup", (rng.choice(live),), owner=owner, label=label))
    return out
