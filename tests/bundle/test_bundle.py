"""Series bundle: round trips, streaming, tamper/truncation detection, no PHI, bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tracemalloc

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import dcmread
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from node.bundle.stream import (
    BundleDecoder,
    BundleEncoder,
    BundleError,
    BundleFormatError,
    BundleKeyError,
    BundleTamperedError,
    iter_bundle_chunks,
    new_bundle_key,
    read_bundle,
    write_bundle,
)
from node.bundle import native
from node.bundle.format import (
    HEADER_SIZE,
    MAGIC,
    BundleHeader,
    order_instances,
    pixel_region,
    shuffle16,
    unshuffle16,
    unshuffle16_into,
)

ABYTES = 17
SMALL_CHUNK = 512


@pytest.fixture(autouse=True, params=["native", "public-api"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both decode paths: libsodium and zstd called through the cffi
    modules pynacl and python-zstandard ship (into our buffers), and their public APIs
    (the fallback for builds without those modules)."""
    if request.param == "public-api":
        monkeypatch.setattr(native, "NATIVE_SODIUM", False)
        monkeypatch.setattr(native, "NATIVE_ZSTD", False)
    return str(request.param)


def test_the_native_decode_path_is_available_here() -> None:
    """The fast path is what this environment runs (the fallback is not silently taken)."""
    import nacl._sodium
    import zstandard._cffi

    assert nacl._sodium.lib.crypto_secretstream_xchacha20poly1305_pull
    assert zstandard._cffi.lib.ZSTD_decompressStream
PHI = [b"DOE^JANE", b"PID-4711", b"19631224", b"ACC-99881"]


def ct_instance(seed: int, side: int = 64) -> bytes:
    """Noisy 12-bit pixels behind a minimal Part-10 prefix and PixelData OW element."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(1064 + rng.normal(0, 12, (side, side)), 0, 4095).astype("<u2").tobytes()
    return bytes(128) + b"DICM" + b"\xe0\x7f\x10\x00OW\x00\x00" + len(pixels).to_bytes(4, "little") + pixels


def pydicom_instance(number: int, z: float, with_icon: bool = False) -> tuple[bytes, Dataset]:
    """A real Part-10 CT file written by pydicom, carrying PHI in the usual tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PHI[0].decode(), PHI[1].decode()
    ds.PatientBirthDate, ds.AccessionNumber = PHI[2].decode(), PHI[3].decode()
    ds.Modality, ds.InstanceNumber = "CT", number
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if with_icon:
        icon = Dataset()
        icon.Rows = icon.Columns = 8
        icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 16, 16, 15, 0
        icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
        icon.PixelData = np.arange(64, dtype="<u2").tobytes()
        ds.IconImageSequence = DicomSequence([icon])
    ds.PixelData = np.random.default_rng(number).integers(0, 4096, 32 * 32).astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def make_bundle(instances: list[bytes], key: bytes, **options: object) -> bytes:
    out = io.BytesIO()
    info = write_bundle(instances, out, key, **{"chunk_size": SMALL_CHUNK, **options})  # type: ignore[arg-type]
    data = out.getvalue()
    assert info.stored_bytes == len(data) and info.bundle_id == hashlib.sha256(data).hexdigest()
    return data


def decode(data: bytes, key: bytes, expected_id: str | None = None) -> list[bytes]:
    return list(read_bundle(io.BytesIO(data), key, expected_id, read_size=333))


@pytest.fixture(scope="module")
def key() -> bytes:
    return new_bundle_key()


@pytest.fixture(scope="module")
def instances() -> list[bytes]:
    return [ct_instance(i) for i in range(4)] + [b"", b"odd-length", ct_instance(9, side=16)]


@pytest.fixture(scope="module")
def bundle(instances: list[bytes], key: bytes) -> bytes:
    return make_bundle(instances, key)


def chunk_bounds(data: bytes) -> list[int]:
    """Offsets where each encrypted chunk starts, plus the end."""
    size = BundleHeader.from_bytes(data).chunk_size + ABYTES
    return list(range(HEADER_SIZE, len(data), size)) + [len(data)]


# --- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 25])
def test_round_trip_keeps_bytes_order_and_boundaries(count: int, key: bytes) -> None:
    items = [ct_instance(i, side=24 + i) for i in range(count)]
    data = make_bundle(items, key)
    assert decode(data, key, hashlib.sha256(data).hexdigest()) == items


def test_multi_chunk_round_trip_with_odd_instances(instances: list[bytes], bundle: bytes, key: bytes) -> None:
    assert len(chunk_bounds(bundle)) > 5
    assert decode(bundle, key) == instances


@pytest.mark.parametrize(("level", "shuffle"), [(3, True), (1, False), (-3, True)])
def test_round_trip_with_other_codec_settings(instances: list[bytes], key: bytes, level: int, shuffle: bool) -> None:
    data = make_bundle(instances, key, level=level, shuffle=shuffle, chunk_size=4096)
    header = BundleHeader.from_bytes(data)
    assert (header.level, header.shuffle, header.chunk_size) == (level, shuffle, 4096)
    assert decode(data, key) == instances


def test_pydicom_files_round_trip_through_a_file(tmp_path, key: bytes) -> None:  # type: ignore[no-untyped-def]
    files = [pydicom_instance(n, -float(n))[0] for n in range(1, 6)]
    path = tmp_path / "series.bundle"
    with path.open("wb") as out:
        info = write_bundle(files, out, key)
    assert (info.instances, info.plain_bytes) == (5, sum(map(len, files)))
    with path.open("rb") as inp:
        assert list(read_bundle(inp, key, info.bundle_id)) == files


def test_decoder_yields_instances_before_the_end(key: bytes) -> None:
    items = [ct_instance(i, side=256) for i in range(6)]  # zstd emits output per 128 KiB block
    data = make_bundle(items, key)
    decoder = BundleDecoder(key)
    got: list[bytes] = []
    first_seen_at = None
    for at in range(0, len(data), 997):
        got += decoder.feed(data[at : at + 997])
        if got and first_seen_at is None:
            first_seen_at = at
    got += decoder.finish()
    assert got == items
    assert first_seen_at is not None and first_seen_at < len(data) // 2
    assert decoder.info.instances == 6 and decoder.info.bundle_id == hashlib.sha256(data).hexdigest()


def test_encoder_streams_chunks_as_instances_arrive(key: bytes) -> None:
    encoder = BundleEncoder(key, chunk_size=SMALL_CHUNK)
    pieces = list(iter_bundle_chunks((ct_instance(i, side=256) for i in range(5)), encoder))
    assert len(pieces) > 2 and pieces[0].startswith(MAGIC)
    assert encoder.info.bundle_id == hashlib.sha256(b"".join(pieces)).hexdigest()


async def test_bundle_streams_over_a_loopback_socket(key: bytes) -> None:
    items = [ct_instance(i) for i in range(8)]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        encoder = BundleEncoder(key, chunk_size=SMALL_CHUNK)
        for piece in iter_bundle_chunks(items, encoder):
            writer.write(piece)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        decoder, got = BundleDecoder(key), []
        while data := await asyncio.wait_for(reader.read(1000), 5):
            got += decoder.feed(data)
        got += decoder.finish()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert got == items


# --- tampering -----------------------------------------------------------------


def test_wrong_key_is_rejected(bundle: bytes) -> None:
    with pytest.raises(BundleTamperedError, match="wrong key"):
        decode(bundle, new_bundle_key())


def test_every_header_bit_flip_is_rejected(bundle: bytes, key: bytes) -> None:
    for bit in range(HEADER_SIZE * 8):
        data = bytearray(bundle)
        data[bit // 8] ^= 1 << (bit % 8)
        expected = BundleFormatError if bit < len(MAGIC) * 8 else BundleError
        if bit >= (HEADER_SIZE - 24) * 8:  # secretstream header: only authentication notices
            expected = BundleTamperedError
        with pytest.raises(expected):
            decode(bytes(data), key)


def test_every_chunk_byte_flip_is_rejected(bundle: bytes, key: bytes) -> None:
    for position in range(HEADER_SIZE, len(bundle)):
        data = bytearray(bundle)
        data[position] ^= 0x10
        with pytest.raises(BundleTamperedError):
            decode(bytes(data), key)


def test_swapped_dropped_and_repeated_chunks_are_rejected(bundle: bytes, key: bytes) -> None:
    bounds = chunk_bounds(bundle)
    chunks = [bundle[a:b] for a, b in zip(bounds, bounds[1:])]
    head = bundle[:HEADER_SIZE]
    variants = [
        chunks[1:2] + chunks[0:1] + chunks[2:],
        chunks[:1] + chunks[2:1:-1] + chunks[1:2] + chunks[3:],
        chunks[:2] + chunks[3:],
        chunks[:2] + chunks[1:],
        chunks[:-2] + chunks[-1:],
    ]
    for variant in variants:
        with pytest.raises(BundleTamperedError):
            decode(head + b"".join(variant), key)


def test_truncation_anywhere_is_rejected(bundle: bytes, key: bytes) -> None:
    boundaries = set(chunk_bounds(bundle)[:-1])
    for cut in range(len(bundle)):
        if cut < HEADER_SIZE:
            with pytest.raises(BundleFormatError, match="shorter than its 44-byte header"):
                decode(bundle[:cut], key)
        elif cut in boundaries:
            with pytest.raises(BundleTamperedError, match="truncated"):
                decode(bundle[:cut], key)
        else:
            with pytest.raises(BundleTamperedError):
                decode(bundle[:cut], key)


def test_appended_data_is_rejected(bundle: bytes, key: bytes) -> None:
    last_chunk = bundle[chunk_bounds(bundle)[-2] :]
    for tail in (b"\0", b"x" * (SMALL_CHUNK + ABYTES + 1), last_chunk, bundle):
        with pytest.raises(BundleTamperedError):
            decode(bundle + tail, key)


def test_data_after_a_full_size_final_chunk_is_rejected(key: bytes) -> None:
    noise = np.random.default_rng(8).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    for size in range(1200):  # incompressible bytes move the stored size one byte at a time
        data = make_bundle([noise[:size]], key)
        if (len(data) - HEADER_SIZE) % (SMALL_CHUNK + ABYTES) == 0:
            break
    else:
        pytest.fail("no bundle with a full-size final chunk found")
    assert decode(data, key) == [noise[:size]]
    with pytest.raises(BundleTamperedError, match="data after its final chunk"):
        decode(data + b"\0", key)


def test_bundle_id_pins_the_ciphertext(instances: list[bytes], bundle: bytes, key: bytes) -> None:
    again = make_bundle(instances, key)
    assert again != bundle  # fresh secretstream nonce every time
    other_id = hashlib.sha256(again).hexdigest()
    assert other_id != hashlib.sha256(bundle).hexdigest()
    with pytest.raises(BundleTamperedError, match="expected"):
        decode(bundle, key, other_id)
    assert decode(bundle, key, hashlib.sha256(bundle).hexdigest().upper()) == instances
    with pytest.raises(BundleError, match="64 hexadecimal"):
        BundleDecoder(key, expected_id="abc")


def test_failed_decoder_refuses_further_input(bundle: bytes, key: bytes) -> None:
    decoder = BundleDecoder(new_bundle_key())
    with pytest.raises(BundleTamperedError):
        decoder.feed(bundle)
    with pytest.raises(BundleError, match="already finished or failed"):
        decoder.feed(b"more")


# --- header and bad input ------------------------------------------------------


def test_header_holds_only_documented_fields_and_no_phi(key: bytes) -> None:
    files = [pydicom_instance(n, float(n))[0] for n in range(1, 4)]
    assert all(phi in files[0] for phi in PHI)
    out = io.BytesIO()
    info = write_bundle(files, out, key, chunk_size=4096, level=3)
    data = out.getvalue()
    h = info.header
    rebuilt = MAGIC + bytes([1, 1, 3, h.window_log, 1, 0, 0, 0]) + (4096).to_bytes(4, "big") + h.stream_header
    assert data[:HEADER_SIZE] == rebuilt == h.to_bytes()
    assert not any(phi in data for phi in PHI)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ((8, 2), "version 2 is not supported"),
        ((9, 7), "codec 7"),
        ((12, 2), "unknown flags"),
        ((13, 1), "unknown flags"),
        ((11, 40), "window log 40"),
    ],
)
def test_bad_header_fields_have_clear_errors(bundle: bytes, key: bytes, patch: tuple[int, int], message: str) -> None:
    data = bytearray(bundle)
    data[patch[0]] = patch[1]
    with pytest.raises(BundleFormatError, match=message):
        decode(bytes(data), key)


def test_encoder_refuses_bad_input(key: bytes) -> None:
    with pytest.raises(BundleKeyError):
        BundleEncoder(b"short")
    with pytest.raises(BundleKeyError):
        BundleDecoder("not bytes" * 4)  # type: ignore[arg-type]
    with pytest.raises(BundleFormatError, match="chunk size 100"):
        BundleEncoder(key, chunk_size=100)
    with pytest.raises(BundleFormatError, match="zstd level 40"):
        BundleEncoder(key, level=40)
    encoder = BundleEncoder(key)
    with pytest.raises(BundleError, match="instance 0 is str"):
        encoder.add("text")  # type: ignore[arg-type]
    encoder.finish()
    with pytest.raises(BundleError, match="already finished"):
        encoder.add(b"late")


def test_oversized_instance_is_refused(key: bytes) -> None:
    data = make_bundle([b"x" * 5000], key)
    with pytest.raises(BundleFormatError, match="exceeds the 4096-byte limit"):
        decoder = BundleDecoder(key, max_instance_bytes=4096)
        decoder.feed(data)
        decoder.finish()


# --- pure helpers --------------------------------------------------------------


def test_pixel_region_matches_pydicom_and_skips_icons() -> None:
    for with_icon in (False, True):
        raw, ds = pydicom_instance(3, 0.0, with_icon=with_icon)
        offset, length = pixel_region(raw)
        assert raw[offset : offset + length] == ds.PixelData
        assert dcmread(io.BytesIO(raw)).PixelData == ds.PixelData
    assert pixel_region(b"no pixel data here") == (0, 0)
    assert pixel_region(b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff") == (0, 0)  # undefined length


def test_shuffle_is_reversible_and_groups_byte_planes() -> None:
    words = np.array([0x0102, 0x0304, 0x0506], dtype="<u2").tobytes()
    assert shuffle16(words) == bytes([2, 4, 6, 1, 3, 5])
    region = np.random.default_rng(5).integers(0, 65536, 999).astype("<u2").tobytes()
    assert unshuffle16(shuffle16(region)) == region


def test_unshuffle_into_writes_exactly_its_region_across_sizes() -> None:
    """The decoder unshuffles each slice's planes from one reused scratch into the
    instance buffer: regions grow and shrink (a CT slice, a smaller localizer, another
    slice); a stale scratch length, or a write outside the region, would show up here."""
    rng = np.random.default_rng(7)
    scratch = bytearray(0)
    for words in (1000, 10, 4000, 1, 4000):
        region = rng.integers(0, 65536, words).astype("<u2").tobytes()
        planes = shuffle16(region)
        if len(scratch) < len(planes):
            scratch = bytearray(len(planes))
        scratch[:len(planes)] = planes
        buffer = bytearray(b"head" + bytes(len(region)) + b"tail")
        unshuffle16_into(memoryview(scratch)[:len(planes)], buffer, 4)
        assert buffer == b"head" + region + b"tail"


def test_decoded_instances_are_independent_buffers(key: bytes) -> None:
    """The decoder hands out each instance's own buffer (no copy into bytes): what the
    caller does with one must not touch another or the decoder's state."""
    instances = [ct_instance(i) for i in range(5)]
    stored = b"".join(iter_bundle_chunks(instances, encoder := BundleEncoder(key, chunk_size=SMALL_CHUNK)))
    decoder = BundleDecoder(key, expected_id=encoder.info.bundle_id)
    marker = b"overwritten by the caller"
    handed: list[bytearray] = []
    seen: list[bytes] = []

    def take(batch: list[bytearray]) -> None:
        for instance in batch:
            seen.append(bytes(instance))
            instance[:] = marker               # the caller owns it now
            handed.append(instance)

    for i in range(0, len(stored), 700):
        take(decoder.feed(stored[i : i + 700]))
    take(decoder.finish())
    assert seen == instances                   # each was whole when handed out
    assert all(x == marker for x in handed)    # and the decoder never wrote to it again


def test_released_buffers_are_reused_and_filled_afresh(key: bytes) -> None:
    """A buffer handed back with ``release`` carries a later instance of the same size,
    overwritten completely (nothing of the earlier instance shows through)."""
    # 80 KB slices: zstd hands out a block (<= 128 KiB) only once it is whole
    instances = [ct_instance(i, side=200) for i in range(8)] + [b"short one"] + [ct_instance(99, side=200)]
    stored = b"".join(iter_bundle_chunks(instances, encoder := BundleEncoder(key, chunk_size=4096)))
    decoder = BundleDecoder(key, expected_id=encoder.info.bundle_id)
    seen: list[bytes] = []
    buffers: set[int] = set()

    def take(batch: list[bytearray]) -> None:
        for instance in batch:
            seen.append(bytes(instance))
            buffers.add(id(instance))
            instance[:] = bytes(len(instance))      # scribbled over before it goes back
            decoder.release(instance)

    for i in range(0, len(stored), 5000):
        take(decoder.feed(stored[i : i + 5000]))
    take(decoder.finish())
    assert seen == instances
    assert len(buffers) < len(instances)            # reused, not one per instance


def test_unshuffle_into_matches_unshuffle16() -> None:
    region = np.random.default_rng(3).integers(0, 4096, 5000).astype("<u2").tobytes()
    out = bytearray(b"x" * 6 + bytes(len(region)) + b"yz")
    unshuffle16_into(shuffle16(region), out, 6)
    assert bytes(out) == b"x" * 6 + region + b"yz"


def test_order_follows_position_along_the_normal() -> None:
    axial = [1, 0, 0, 0, 1, 0]
    slices = [(1, [0, 0, 5.0], axial), (2, [0, 0, -5.0], axial), (3, [0, 0, 0.0], axial)]
    assert order_instances(slices) == [1, 2, 0]
    sagittal = [0, 1, 0, 0, 0, -1]  # normal = -x
    slices = [(1, [3.0, 0, 0], sagittal), (2, [1.0, 0, 0], sagittal), (3, [2.0, 0, 0], sagittal)]
    assert order_instances(slices) == [0, 2, 1]


def test_order_falls_back_to_instance_number() -> None:
    axial, coronal = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]
    missing = [(3, [0, 0, 1.0], axial), (None, None, None), (1, [0, 0, 3.0], axial), (2, None, axial)]
    assert order_instances(missing) == [2, 3, 0, 1]
    mixed = [(2, [0, 0, 0.0], axial), (1, [0, 0, 1.0], coronal)]
    assert order_instances(mixed) == [1, 0]
    assert order_instances([]) == []
    ties = [(2, [0, 0, 1.0], axial), (1, [0, 0, 1.0], axial), (1, [0, 0, 1.0], axial)]
    assert order_instances(ties) == [1, 2, 0]


# --- memory --------------------------------------------------------------------


def test_200_mb_stream_stays_within_40_mb(key: bytes) -> None:
    rng = np.random.default_rng(3)
    slices = [
        np.clip(1024 + 40 * np.sin(i + np.arange(512 * 512) / 9000) + rng.normal(0, 12, 512 * 512), 0, 4095)
        .astype("<u2")
        .tobytes()
        for i in range(4)
    ]
    prefix = bytes(128) + b"DICM" + b"\xe0\x7f\x10\x00OW\x00\x00" + (512 * 512 * 2).to_bytes(4, "little")
    count = 400  # 400 x 512 KiB = 210 MB
    sent, received = hashlib.sha256(), hashlib.sha256()
    tracemalloc.start()
    try:
        encoder, decoder = BundleEncoder(key), BundleDecoder(key)
        got = 0
        for i in range(count):  # writer -> reader, one instance at a time
            instance = prefix + i.to_bytes(4, "little") + slices[i % 4][4:]
            sent.update(instance)
            outputs = decoder.feed(encoder.add(instance))
            del instance
            for out in outputs:
                received.update(out)
                got += 1
        for out in decoder.feed(encoder.finish()) + decoder.finish():
            received.update(out)
            got += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == count and sent.digest() == received.digest()
    assert decoder.info.plain_bytes > 200_000_000
    assert peak < 40 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
