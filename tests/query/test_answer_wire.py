"""The streamed query answer is accepted only whole: cut, altered, reordered or
miscounted answers are refused (``node.query.answer_wire``)."""

from __future__ import annotations

import pytest

from node.query.answer_wire import AnswerWriter, encode_answer, read_answer
from node.query.fanout import AnswerError

ROWS = [{"patient": f"PSN-{i:04d}", "study_uid": f"2.25.{i}", "modalities": ["CT"]}
        for i in range(40)]
DOC = {"level": "deidentified", "counts": {"patients": 40, "studies": "<5", "series": 80},
       "rows": ROWS, "truncated": True}


def _streamed(batches: list[list[dict[str, object]]]) -> tuple[AnswerWriter, list[bytes]]:
    writer = AnswerWriter()
    return writer, [writer.head("deidentified", DOC["counts"]),
                    *(writer.rows_chunk(b) for b in batches)]


def test_a_whole_answer_reads_back_as_written() -> None:
    doc = read_answer(encode_answer(DOC))
    assert {k: doc[k] for k in DOC} == DOC and doc["rows_sent"] == 40
    writer, parts = _streamed([ROWS[:16], [], ROWS[16:]])
    assert read_answer(b"".join(parts) + writer.tail(True))["rows"] == ROWS
    empty = read_answer(encode_answer({"level": "count", "counts": {"patients": "<5"}}))
    assert empty["rows"] == [] and empty["truncated"] is False


def test_every_cut_short_answer_is_refused() -> None:
    data = encode_answer(DOC)
    for end in range(len(data)):
        with pytest.raises(AnswerError):
            read_answer(data[:end])


def test_an_altered_byte_anywhere_is_refused() -> None:
    data = encode_answer(DOC)
    for at in range(0, len(data), 7):
        changed = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
        with pytest.raises(AnswerError):
            read_answer(changed)


def test_batches_delivered_out_of_order_are_refused() -> None:
    writer, parts = _streamed([ROWS[:20], ROWS[20:]])
    tail = writer.tail(False)
    head, first, second = parts
    # still valid JSON with every row: only the digest tells the order was changed
    swapped = head + second.lstrip(b",") + b"," + first + tail
    with pytest.raises(AnswerError, match="digest"):
        read_answer(swapped)


def test_an_answer_that_miscounts_its_rows_is_refused() -> None:
    writer, parts = _streamed([ROWS])
    writer.rows = 41      # a writer bug: the digest is right, the count is not
    with pytest.raises(AnswerError, match="40 rows"):
        read_answer(b"".join(parts) + writer.tail(False))
