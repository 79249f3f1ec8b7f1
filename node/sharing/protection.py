"""How strongly a bundle can be protected with the members the federation has now.

Pure rule (no I/O), stated in the README:

- share holders  n = min(shares_n, members - 1)       (never the owner)
- threshold      k = min(shares_k, n), raised to 2 when n >= 2
                 (no single other site may ever decrypt alone)
- replicas       r = min(replicas, members - 1)
- fewer than 3 members (n < 2): no bundle is shared at all; publishing waits, with a
  warning, until a third site joins.

When the federation grows, bundles split below the configured k-of-n (or with fewer
replicas) are re-shared / re-replicated up to the new sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_MEMBERS = 3


@dataclass(frozen=True)
class Protection:
    members: int
    k: int
    n: int
    replicas: int
    configured: tuple[int, int, int]   # (k, n, replicas) from [federation]

    @property
    def possible(self) -> bool:
        return self.members >= MIN_MEMBERS

    @property
    def reduced(self) -> bool:
        return (self.k, self.n, self.replicas) != self.configured

    def warning(self) -> str:
        """'' when the configured protection is met; else what is used and why."""
        ck, cn, cr = self.configured
        if not self.possible:
            return (f"federation has {self.members} member(s): series are not shared until at "
                    f"least {MIN_MEMBERS} sites are members (keys are split k-of-n with k >= 2 "
                    "among the other sites, so that no single site can decrypt)")
        if not self.reduced:
            return ""
        return (f"federation too small for the configured protection ({ck}-of-{cn} key shares, "
                f"{cr} replicas): with {self.members} members using {self.k}-of-{self.n} and "
                f"{self.replicas} replica(s); re-shared automatically as members join")


def protection_for(members: int, shares_k: int, shares_n: int, replicas: int) -> Protection:
    others = max(0, members - 1)
    n = min(shares_n, others)
    k = min(shares_k, n)
    if n >= 2:
        k = max(k, 2)
    return Protection(members, k, n, min(replicas, others), (shares_k, shares_n, replicas))
