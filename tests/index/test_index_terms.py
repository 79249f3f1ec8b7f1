"""Pure index logic: terms a site holds, coarse counts, a query's indexed terms, the
intersection of candidate sets."""

from __future__ import annotations

import os
from datetime import date

import pytest

from node.deid.actions import pseudonym
from node.dht.index_keys import IndexKeys
from node.index.publisher import IndexPublisher
from node.index.terms import (MODALITY_BODYPART, MODALITY_MONTH, PATIENT, ModalityMonthRow,
                              ModalityPartRow, PatientRow, TermRows, coarse_count, index_terms,
                              is_coarse, study_month)
from node.query.dht_planner import IndexedTerm, candidates, indexed_terms, months_between
from node.query.model import FederatedQuery

KEYS = IndexKeys(os.urandom(32))
LINK = os.urandom(32)


def test_coarse_count_rounds_up_to_a_power_of_two() -> None:
    assert [coarse_count(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 1000)] == \
        [0, 1, 2, 4, 4, 8, 8, 16, 1024]
    assert all(is_coarse(coarse_count(n)) for n in range(2000))
    assert not is_coarse(3) and not is_coarse(6)
    with pytest.raises(ValueError):
        coarse_count(-1)


def test_terms_of_a_site_are_keyed_summed_and_coarse() -> None:
    rows = TermRows(
        patients=(PatientRow("MRN1", "HOSP", 3), PatientRow("MRN2", "", 1)),
        modality_parts=(ModalityPartRow("CT", "CHEST", 2), ModalityPartRow("ct", "chest", 1)),
        modality_months=(ModalityMonthRow("MR", "202403", 5),))
    terms = index_terms(rows, KEYS, LINK)
    p1 = KEYS.patient_key(pseudonym("MRN1", "HOSP", LINK))
    assert terms.counts[p1] == 4 and terms.kinds[p1] == PATIENT
    ct_chest = KEYS.modality_bodypart_key("CT", "CHEST")
    assert terms.counts[ct_chest] == 4  # 2 + 1 summed, then coarsened
    assert terms.counts[KEYS.modality_month_key("MR", "2024-03")] == 8
    assert terms.kind_totals() == {PATIENT: 2, MODALITY_BODYPART: 1, MODALITY_MONTH: 1}
    assert terms.skipped == 0


def test_rows_that_cannot_be_keys_are_skipped_not_guessed() -> None:
    rows = TermRows(
        patients=(PatientRow("  ", "", 1), PatientRow("OK1", "", 1)),
        modality_parts=(ModalityPartRow("CT", "", 1),
                        ModalityPartRow("CT", "LEFT KNEE SIDE VIEW, SEE NOTES", 1)),
        modality_months=(ModalityMonthRow("CT", "", 1), ModalityMonthRow("CT", "2024131", 1),
                         ModalityMonthRow("CT", "202413", 1)))
    terms = index_terms(rows, KEYS, LINK)
    assert len(terms.counts) == 1 and terms.skipped == 6


def test_zero_counts_publish_nothing() -> None:
    terms = index_terms(TermRows(patients=(PatientRow("MRN1", "", 0),)), KEYS, LINK)
    assert terms.counts == {}


def test_study_month_accepts_month_or_date_only() -> None:
    assert study_month("20240315") == "2024-03" and study_month("202403") == "2024-03"
    for bad in ("2024-03-15", "2024", "abcdefgh"):
        with pytest.raises(ValueError):
            study_month(bad)


def test_months_between_spans_years() -> None:
    assert months_between(date(2023, 11, 20), date(2024, 2, 1)) == \
        ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert months_between(date(2024, 5, 1), date(2024, 5, 31)) == ["2024-05"]


def test_indexed_terms_of_queries() -> None:
    today = date(2025, 6, 1)
    psn = pseudonym("MRN1", "HOSP", LINK)
    q = FederatedQuery(patient_pseudonym=psn, modality="CT", body_part="CHEST",
                       study_date_from=date(2024, 1, 5), study_date_to=date(2024, 3, 1))
    terms = indexed_terms(q, KEYS, today=today)
    assert [t.kind for t in terms] == [PATIENT, MODALITY_BODYPART, MODALITY_MONTH]
    assert terms[0].keys == (KEYS.patient_key(psn),)
    assert len(terms[2].keys) == 3
    # open-ended range runs to today; too long a range is not used (wider plan, not wrong)
    open_q = FederatedQuery(modality="MR", study_date_from=date(2025, 3, 9))
    assert len(indexed_terms(open_q, KEYS, today=today)[0].keys) == 4
    long_q = FederatedQuery(modality="MR", study_date_from=date(2020, 1, 1))
    assert indexed_terms(long_q, KEYS, today=today) == []
    # no modality: body part and dates alone are not indexed
    assert indexed_terms(FederatedQuery(body_part="CHEST", study_date_from=date(2025, 1, 1)),
                         KEYS, today=today) == []
    assert indexed_terms(FederatedQuery(patient_name="DOE*"), KEYS, today=today) == []


def test_candidates_must_hold_every_term() -> None:
    a, b, c, d = (bytes([i]) * 32 for i in range(4))
    terms = [IndexedTerm(PATIENT, (a,)), IndexedTerm(MODALITY_MONTH, (b, c))]
    found = {a: {"n1", "n2", "n3"}, b: {"n1"}, c: {"n2", "n4"}, d: {"n3"}}
    assert candidates(terms, found) == {"n1", "n2"}
    assert candidates(terms, {a: {"n1"}}) == set()
    assert candidates([], found) == set()


def test_publisher_refuses_bad_settings() -> None:
    for kwargs in ({"poll_s": 0}, {"republish_s": -1}, {"parallel": 0}):
        with pytest.raises(ValueError, match="index publisher"):
            IndexPublisher(**kwargs)  # type: ignore[arg-type]
