"""``bench.scale_narrow``: the held ``[~k]`` query values hold about k matches, also
where one day holds more than k studies (ranges end inside the day)."""

from __future__ import annotations

import random

from bench.scale_narrow import DateTerm, date_terms, name_prefixes


def held(term: DateTerm, studies: list[tuple[str, str]]) -> int:
    lo, _, hi = term.date.partition("-")
    hi = hi or lo
    t_lo, _, t_hi = (term.time or "-").partition("-")
    return sum(1 for d, t in studies if lo <= d <= hi
               and (term.time is None or t_lo <= t <= t_hi))


def test_sparse_days_give_whole_day_ranges_near_k() -> None:
    rng = random.Random(1)
    studies = [(f"2020{m:02d}{d:02d}", "120000") for m in range(1, 13) for d in range(1, 29, 3)]
    for term in date_terms(studies, rng, 20, 10):
        assert term.time is None and "-" in term.date
        assert held(term, studies) == term.expected and abs(term.expected - 10) <= 1


def test_a_day_holding_more_than_k_gives_a_time_range_inside_it() -> None:
    rng = random.Random(2)
    studies = [(f"202001{d:02d}", f"{h:02d}{m:02d}00") for d in range(1, 29)
               for h in range(8, 18) for m in (0, 20, 40)]   # 30 a day
    terms = date_terms(studies, rng, 20, 10)
    for term in terms:
        assert term.time is not None and "-" not in term.date
        assert held(term, studies) == term.expected == 10
    # k above one day's studies: whole days again (3 days = 90, 4 = 120 -> closest to 100)
    for term in date_terms(studies, rng, 10, 100):
        assert term.time is None and held(term, studies) == term.expected
        assert term.expected in (90, 120)


def test_name_prefixes_hold_at_least_k_and_close_to_it() -> None:
    rng = random.Random(3)
    names = [(f"FAM{i % 97:02d}^GIVEN{i % 13}^M{i % 7}", 1 + i % 3) for i in range(3000)]
    for prefix, n in name_prefixes(names, rng, 15, 10):
        assert prefix.endswith("*")
        stem = prefix[:-1].lower()
        assert n == sum(c for x, c in names if x.lower().startswith(stem))
        assert 10 <= n <= 30
