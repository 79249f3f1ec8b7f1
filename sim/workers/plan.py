"""The lookup scenario as a global list of steps, the same for any number of workers.

The same choices as ``sim.scenarios.lookup`` in one process, from the same seeds: nodes
join one after another through 4 random earlier members; at each stage every node
publishes its record (here all at once, not one after another), then ``queries``
lookups from random members for random published keys, one after another; with
``--down F`` the same victims are taken down and the lookups repeated.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from sim.options import SimOptions
from sim.scenarios.lookup import stages

JOIN_SEEDS = 4
DOWN = "down"     # label of the lookups measured with nodes down


@dataclass(frozen=True)
class Step:
    op: str                       # "join" | "publish" | "lookup" | "kill"
    nodes: tuple[int, ...]        # the nodes that act (kill: the victims)
    via: tuple[int, ...] = ()     # join: earlier members to join through
    owner: int = -1               # lookup: whose record is looked up
    label: str = ""               # lookup: the measurement it belongs to (stage size, DOWN)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Step":
        return cls(str(doc["op"]), tuple(doc["nodes"]), tuple(doc["via"]), int(doc["owner"]),
                   str(doc["label"]))


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
        for i in range(max(1, joined), size):
            via = random.Random(opts.seed * 7919 + i).sample(range(i), min(JOIN_SEEDS, i))
            steps.append(Step("join", (i,), tuple(via)))
        steps.append(Step("publish", tuple(range(size))))
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
