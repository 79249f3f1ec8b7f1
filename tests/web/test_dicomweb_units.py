"""The pure parts of DICOMweb: metadata conversion, content negotiation, query parsing,
the bounded memory cache of remote series."""

from __future__ import annotations

import asyncio

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.pacs.qr_attributes import QueryLevel
from node.store.ingest_local import encode_part10
from node.web.dicomweb.accept import choose_bytes, choose_instances, choose_rendered
from node.web.dicomweb.errors import NotAcceptable
from node.web.dicomweb.instances import InstanceView
from node.web.dicomweb.memory_cache import MemorySink, SeriesCache, SeriesTooLarge
from node.web.dicomweb.metadata import _fast, _general
from node.web.dicomweb.qido_query import QidoError, parse_qido
from node.web.dicomweb.uids import BadUid, checked_uid


def _rich(charset: str = "ISO_IR 192") -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = "Müller^Jürgen=ミュラー^ユルゲン" if charset == "ISO_IR 192" else "Smith^Jo"
    ds.PatientID = "P1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PixelSpacing = [0.5, 0.25]
    ds.SliceThickness = "1.25"
    ds.InstanceNumber = 7
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 2, 16, 1
    ds.add_new(0x00091001, "LO", "private text")
    ds.FrameIncrementPointer = 0x00181063
    ds.ImageComments = "line one\\with backslash kept"
    ds.add_new(0x00283010, "SQ", Sequence([Dataset(), Dataset()]))
    ds[0x00283010].value[0].LUTDescriptor = [4, 0, 16]
    ds[0x00283010].value[0].LUTData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    ds[0x00283010].value[1].LUTExplanation = "second"
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 8)       # top-level bulk
    ds.PixelData = b"\x00\x01" * 4
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return encode_part10(ds)


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_fast_metadata_equals_pydicom(charset: str) -> None:
    view = InstanceView("1", "2", "3", "4", ExplicitVRLittleEndian, data=_rich(charset))
    fast, general = _fast(view, "http://h/dicomweb"), _general(view, "http://h/dicomweb")
    # PS3.18 F.2.5: an empty value inside a multi-valued attribute is null (pydicom: "")
    assert fast["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", None]
    fast["00080008"]["Value"][2] = ""
    assert fast == general
    assert fast["00420011"]["BulkDataURI"].endswith("/bulk/00420011")
    assert "InlineBinary" in fast["00283010"]["Value"][0]["00283006"]


def test_negotiation() -> None:
    assert choose_instances(None, {ExplicitVRLittleEndian}, single=False) == "multipart"
    assert choose_instances('multipart/related; type="application/dicom"; transfer-syntax=*',
                            {"1.2.840.10008.1.2.4.50"}, single=False) == "multipart"
    with pytest.raises(NotAcceptable):
        choose_instances('multipart/related; type="application/dicom"; '
                         'transfer-syntax=1.2.840.10008.1.2.1', {"1.2.840.10008.1.2.4.50"},
                         single=False)
    with pytest.raises(NotAcceptable):
        choose_instances("application/dicom", {ExplicitVRLittleEndian}, single=False)
    assert choose_bytes("application/octet-stream", ExplicitVRLittleEndian) == (
        "single", "application/octet-stream")
    assert choose_bytes('multipart/related; type="image/jpeg"', "1.2.840.10008.1.2.4.50") == (
        "multipart", "image/jpeg")
    assert choose_rendered("image/png, image/jpeg") == "image/png"
    with pytest.raises(NotAcceptable):
        choose_rendered("image/gif")


def test_qido_parsing() -> None:
    q = parse_qido(QueryLevel.STUDY, [("00100020", "P1"), ("StudyInstanceUID", "1.2,1.3"),
                                      ("includefield", "StudyDescription,00081030"),
                                      ("limit", "5"), ("offset", "2")])
    assert q.filters == {"PatientID": "P1", "StudyInstanceUID": "1.2\\1.3"}
    assert (q.limit, q.offset) == (5, 2)
    assert q.identifier.QueryRetrieveLevel == "STUDY"
    for bad in ([("Nonsense", "x")], [("limit", "-1")], [("PatientID", "a"), ("PatientID", "b")],
                [("fuzzymatching", "maybe")], [("includefield", "ffff0000")]):
        with pytest.raises(QidoError):
            parse_qido(QueryLevel.STUDY, bad)
    assert checked_uid("1.2.840.10008", "x") == "1.2.840.10008"
    for bad in ("", "..", "1..2", "1.2/3", "1.2.", "a.b", "1" * 65):
        with pytest.raises(BadUid):
            checked_uid(bad, "x")


async def test_series_cache_is_bounded_and_shares_fetches() -> None:
    one = _rich("ISO_IR 100")
    cache = SeriesCache(max_bytes=len(one) * 3)
    calls: list[str] = []

    def fetcher(name: str, count: int):  # type: ignore[no-untyped-def]
        async def fetch() -> list[bytes]:
            calls.append(name)
            await asyncio.sleep(0)
            return [one] * count
        return fetch

    a, b = await asyncio.gather(cache.get("a", fetcher("a", 2)), cache.get("a", fetcher("a", 2)))
    assert a is b and calls == ["a"] and cache.size == 2 * len(one)
    await cache.get("b", fetcher("b", 1))
    await cache.get("c", fetcher("c", 1))            # over the bound: "a" goes
    assert "a" not in cache and "b" in cache and cache.size <= cache.max_bytes
    with pytest.raises(SeriesTooLarge):
        await cache.get("d", fetcher("d", 4))
    assert "d" not in cache
    sink = MemorySink(max_bytes=len(one))
    sink.add(one)
    with pytest.raises(SeriesTooLarge):
        sink.add(one)
    assert sink.commit() == []                      # a too-large series leaves nothing


class _Principal:
    def __init__(self, user: str, purpose: str = "") -> None:
        self.user, self.purpose = user, purpose


class _Site:
    def __init__(self, path) -> None:  # type: ignore[no-untyped-def]
        from node.users import UserStore
        self.users = UserStore(path)
        self.audit = None


async def test_requests_are_made_for_a_local_user_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from node.web.dicomweb.requester import requester_for

    site = _Site(tmp_path / "users.sqlite")
    site.users.add_user("carol", "researcher", "oncology", "a long enough password")
    site.users.add_user("dave", "clinician", "radiology", "a long enough password")
    request = make_mocked_request("GET", "/dicomweb/studies")

    async def who(principal):  # type: ignore[no-untyped-def]
        return await requester_for(request, lambda _r: principal, site)

    carol = await who(_Principal("carol"))
    assert (carol.user.role, carol.purpose) == ("researcher", "research")
    dave = await who(_Principal("dave"))
    assert dave.purpose == "treatment" and dave.handle != "dave"
    with pytest.raises(web.HTTPForbidden):
        await who(_Principal("dave", purpose="research"))     # not a purpose dave may state
    with pytest.raises(web.HTTPForbidden):
        await who(_Principal("nobody"))
    with pytest.raises(web.HTTPUnauthorized):
        await who(None)
