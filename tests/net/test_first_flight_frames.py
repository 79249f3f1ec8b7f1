"""Framing of first-flight connections (pure): any split of the stream reads the same."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from node.net.firstflight.frames import MAGIC, MAX_MESSAGE, FrameError, FrameReader, frame


@given(st.lists(st.binary(max_size=3000), max_size=8), st.lists(st.integers(1, 400), min_size=1))
def test_messages_survive_any_split(messages: list[bytes], cuts: list[int]) -> None:
    stream = MAGIC + b"".join(frame(m) for m in messages)
    reader = FrameReader(expect_magic=True)
    got: list[bytes] = []
    at, i = 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[at:at + step])
        at, i = at + step, i + 1
    assert got == messages and reader.buffered == 0


@pytest.mark.parametrize("start", [b"\x16\x03\x01", b"MFF2", b"X"])
def test_a_wrong_start_is_refused_as_soon_as_it_shows(start: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader(expect_magic=True).feed(start)


def test_a_partial_magic_waits() -> None:
    reader = FrameReader(expect_magic=True)
    assert reader.feed(MAGIC[:2]) == [] and reader.feed(MAGIC[2:] + frame(b"hi")) == [b"hi"]


def test_no_message_larger_than_noise_allows() -> None:
    assert len(frame(b"x" * MAX_MESSAGE)) == MAX_MESSAGE + 2
    with pytest.raises(FrameError):
        frame(b"x" * (MAX_MESSAGE + 1))
