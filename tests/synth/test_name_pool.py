"""The synthetic archive's patient names (``node.synth.name_pool``): a hospital's variety,
common names common, the same names in every process."""

from __future__ import annotations

import random
from collections import Counter

from node.synth.metadata import archive_records
from node.synth.name_pool import FAMILY_NAMES, GIVEN_NAMES, name_pool


def test_pool_sizes_and_zipf_like_shares() -> None:
    pool = name_pool()
    assert len(set(pool.family.names)) == FAMILY_NAMES
    assert len(set(pool.female.names)) == len(set(pool.male.names)) == GIVEN_NAMES
    assert pool.family.names[0] == "SMITH"
    assert 0.005 < pool.family.share("SMITH") < 0.015      # about 1 %, as in real registers
    tail = pool.family.share(pool.family.names[-1])
    assert tail < pool.family.share("SMITH") / 1000


def test_names_are_pn_values_with_many_distinct_family_names() -> None:
    rng = random.Random(5)
    pool = name_pool()
    names = [pool.patient_name(rng, female=i % 2 == 0) for i in range(20_000)]
    parts = [n.split("^") for n in names]
    assert all(len(p) in (2, 3) and all(x.isalpha() and x.isupper() for x in p) for p in parts)
    middle = sum(len(p) == 3 for p in parts) / len(parts)
    assert 0.35 < middle < 0.45
    family = Counter(p[0] for p in parts)
    assert len(family) > 8_000                    # most family names belong to few patients
    assert family.most_common(1)[0][1] < 0.02 * len(names)


def test_the_archive_is_deterministic() -> None:
    a = [r.patient.name for r in archive_records(3000, seed=7)]
    b = [r.patient.name for r in archive_records(3000, seed=7)]
    assert a == b and len(set(a)) > 5
