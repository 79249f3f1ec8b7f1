"""Query values that hold about ``k`` matches at any archive size (``bench.scale``'s
``[~10]`` / ``[~100]`` rows), chosen in Python from the archive's own values.

- Date ranges: from a random study's day, whole days while they hold about ``k``
  studies; when that day alone holds ``k`` or more (31 studies a day at 10^7), the
  range ends inside the day instead: ``StudyDate=D`` with a ``StudyTime`` range over
  ``k`` consecutive studies of that day. Without the combined date-time extended
  negotiation a node matches StudyDate and StudyTime independently (PS3.4
  C.2.2.2.5), which for a single date is exactly "that day between these times"; a
  multi-day range cannot end inside a day that way, so it is made of whole days.
- Name prefixes: ``PREFIX*`` = the longest prefix of a random patient's name that
  matches at least ``k`` studies, the best of many tries (fewest matches >= k); the
  count is the node's PN wildcard semantics (case-insensitive match on the whole value).
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class DateTerm:
    """A StudyDate value and, when the range ends inside one day, a StudyTime range."""

    date: str
    time: str | None
    expected: int       # matches the term holds in the values it was chosen from

    def keys(self) -> dict[str, str]:
        return {"StudyDate": self.date, **({"StudyTime": self.time} if self.time else {})}


def date_terms(studies: list[tuple[str, str]], rng: random.Random, repeat: int, k: int
               ) -> list[DateTerm]:
    """``repeat`` terms holding about ``k`` of ``studies`` ((StudyDate, StudyTime) pairs)."""
    pairs = sorted((d, t) for d, t in studies if d)
    if not pairs:
        return [DateTerm("19000101", None, 0)] * repeat
    per_day = Counter(d for d, _ in pairs)
    days = sorted(per_day)
    cum = list(accumulate(per_day[d] for d in days))
    out = []
    for _ in range(repeat):
        i = rng.randrange(max(1, len(pairs) - k + 1))   # k studies from it on
        day = pairs[i][0]
        start = bisect.bisect_left(days, day)
        if per_day[day] >= k:
            # k consecutive studies of that day, from the chosen one (or earlier)
            first = bisect.bisect_left(pairs, (day, ""))
            j = min(i, first + per_day[day] - k)
            t1, t2 = pairs[j][1], pairs[j + k - 1][1]
            held = sum(1 for d, t in pairs[first:first + per_day[day]] if t1 <= t <= t2)
            out.append(DateTerm(day, f"{t1}-{t2}", held))
            continue
        before = cum[start - 1] if start else 0
        # whole days from `day`: the end day whose running total is closest to k
        end = min(range(start, len(days)), key=lambda e: (abs(cum[e] - before - k), e))
        out.append(DateTerm(f"{day}-{days[end]}", None, cum[end] - before))
    return out


def name_prefixes(names: list[tuple[str, int]], rng: random.Random, repeat: int, k: int,
                  tries: int = 200) -> list[tuple[str, int]]:
    """``repeat`` (``PREFIX*``, matches) pairs from ``names`` ((PatientName, studies) per
    patient): the longest prefix of a random patient's name matching >= k studies, the
    one with the fewest matches among ``tries`` patients (stops at <= 1.1 k)."""
    per_name: Counter[str] = Counter()
    for name, n in names:
        per_name[name.lower().replace("%", "").replace("_", "")] += n
    keys = sorted(per_name)
    cum = [0, *accumulate(per_name[x] for x in keys)]

    def count(prefix: str) -> int:
        return cum[bisect.bisect_left(keys, prefix + "\U0010ffff")] - cum[
            bisect.bisect_left(keys, prefix)]

    patients = [x.lower().replace("%", "").replace("_", "") for x, _ in names]
    out = []
    for _ in range(repeat):
        best: tuple[int, str] | None = None
        for _try in range(tries):
            name = rng.choice(patients)
            cut = len(name)
            while cut > 0 and count(name[:cut]) < k:
                cut -= 1
            n = count(name[:cut])
            if best is None or n < best[0]:
                best = (n, name[:cut])
            if n <= k + k // 10:
                break
        assert best is not None
        out.append((best[1].upper() + "*", best[0]))
    return out
