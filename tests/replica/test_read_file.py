"""``read_file``: the chunks both serving paths (owner, replica holder) send."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.replica.store import FIRST_READ, READ_CHUNK, read_file


async def _chunks(path: Path, start: int = 0, length: int | None = None) -> list[bytes]:
    return [c async for c in read_file(path, start, length)]


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * READ_CHUNK + 12345)
    path = tmp_path / "bundle"
    path.write_bytes(data)
    return path, data


async def test_first_chunk_is_small_then_whole_mebibytes(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    chunks = await _chunks(path)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks[:-1]] == [FIRST_READ] + [READ_CHUNK] * (len(chunks) - 2)
    assert FIRST_READ < READ_CHUNK


@pytest.mark.parametrize("start,length", [(0, 10), (5, FIRST_READ), (7, FIRST_READ + 1),
                                          (READ_CHUNK - 3, 2 * READ_CHUNK + 9), (100, None)])
async def test_ranges(blob: tuple[Path, bytes], start: int, length: int | None) -> None:
    path, data = blob
    want = data[start:] if length is None else data[start:start + length]
    assert b"".join(await _chunks(path, start, length)) == want


async def test_range_past_the_end_and_empty_file(blob: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = blob
    assert b"".join(await _chunks(path, len(data) - 4, 100)) == data[-4:]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert await _chunks(empty) == []


async def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await _chunks(tmp_path / "nothing")
