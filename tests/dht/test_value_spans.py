"""``node.dht.value_spans``: the rest of a holder's records cut into ranges read side by
side — every publisher id above the first page is in exactly one range."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from node.dht.value_spans import PAGES_PER_SPAN, page_budget, spans_after

ids = st.binary(min_size=32, max_size=32)


@given(last=ids, seen=st.integers(0, 20), most=st.integers(1, 16), probes=st.lists(ids, max_size=30))
def test_ranges_cover_everything_above_the_first_page_exactly_once(
        last: bytes, seen: int, most: int, probes: list[bytes]) -> None:
    spans = spans_after(last, seen, most)
    if last == b"\xff" * 32:
        assert spans == []
        return
    assert 1 <= len(spans) <= most
    assert spans[0].after == last and spans[-1].upto is None
    for a, b in zip(spans, spans[1:]):
        assert a.upto == b.after and a.after < b.after       # contiguous, ascending
    for pid in probes + [last, b"\xff" * 32]:
        holders = [s for s in spans if s.holds(pid)]
        assert len(holders) == (1 if pid > last else 0)


def test_the_first_pages_density_sets_how_many_ranges() -> None:
    # 7 records up to 1/256 of the id space: ~255 pages left -> as many ranges as allowed
    dense = spans_after(bytes([1]) + b"\x00" * 31, 7, 8)
    assert len(dense) == 8
    # 7 records up to half the space: ~1 page left -> one range
    sparse = spans_after(bytes([128]) + b"\x00" * 31, 7, 8)
    assert len(sparse) == 1
    # 7 records up to 1/16: ~15 pages left -> 15 / PAGES_PER_SPAN ranges
    middle = spans_after(bytes([16]) + b"\x00" * 31, 7, 8)
    assert len(middle) == -(-15 // PAGES_PER_SPAN)


def test_a_range_ends_at_the_first_record_of_the_next() -> None:
    first, second = spans_after(bytes([1]) + b"\x00" * 31, 7, 2)
    assert first.upto is not None and first.passed(first.upto) and not first.passed(first.after)
    assert not second.passed(b"\xff" * 32)          # the last range runs to the end


def test_page_budget_keeps_a_holder_within_its_total() -> None:
    assert page_budget(64, 8) == 7 and 1 + 8 * page_budget(64, 8) <= 64
    assert page_budget(64, 1) == 63
    assert page_budget(2, 8) == 1                    # at least one page per range
    with pytest.raises(ValueError):
        spans_after(b"\x00" * 32, 7, 0)
