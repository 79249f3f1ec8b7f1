"""C-GET and C-MOVE from a running node, with dcmtk getscu / movescu / storescp."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless
from pynetdicom import build_role
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from node.synth.generate import generate, iter_datasets
from tests.dicom_tools import DCMTK, dcmtk, free_port, scu, wait_listening


@pytest.fixture
def loaded(start_node, tmp_path: Path):  # type: ignore[no-untyped-def]
    viewer_port = free_port()
    node = start_node(destinations={"VIEWER": ("127.0.0.1", viewer_port)})
    synth = generate(tmp_path / "in", patients=2, studies=1, series=2, slices=5, rows=64, cols=64)
    dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r", "127.0.0.1",
          node.dicom_port, tmp_path / "in", check=True)
    sent = {}
    for f in synth.files:
        ds = pydicom.dcmread(f)
        sent[ds.SOPInstanceUID] = ds
    return node, sent, viewer_port


def _study_series(sent):  # type: ignore[no-untyped-def]
    ds = next(iter(sent.values()))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID


def _received(folder: Path) -> dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, folder.iterdir())}


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_getscu_levels_byte_identical(loaded, tmp_path: Path, level: str) -> None:
    node, sent, _ = loaded
    study, series = _study_series(sent)
    keys = ["-k", f"QueryRetrieveLevel={level}", "-k", f"StudyInstanceUID={study}"]
    want = {u for u, d in sent.items() if d.StudyInstanceUID == study}
    if level in ("SERIES", "IMAGE"):
        keys += ["-k", f"SeriesInstanceUID={series}"]
        want = {u for u in want if sent[u].SeriesInstanceUID == series}
    if level == "IMAGE":
        two = sorted(want)[:2]
        keys += ["-k", "SOPInstanceUID=" + "\\".join(two)]
        want = set(two)
    out = tmp_path / "out"
    out.mkdir()
    proc = dcmtk("getscu", "-aet", "GETSCU", "-aec", "MEDFED", "-S", *keys, "-od", out,
                 "127.0.0.1", node.dicom_port)
    assert proc.returncode == 0, proc.stderr
    got = _received(out)
    assert set(got) == want
    for uid, ds in got.items():
        assert ds.PixelData == sent[uid].PixelData


@contextmanager
def _viewer(out: Path, port: int) -> Iterator[None]:
    """A dcmtk storescp as the C-MOVE destination VIEWER, writing into ``out``."""
    out.mkdir()
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "VIEWER", "-od", str(out),
                            str(port)], stderr=subprocess.PIPE)
    try:
        wait_listening(port)
        yield
    finally:
        scp.terminate()
        scp.wait(10)


def test_movescu_to_storescp(loaded, tmp_path: Path) -> None:
    node, sent, viewer_port = loaded
    study, _ = _study_series(sent)
    out = tmp_path / "viewer"
    with _viewer(out, viewer_port):
        proc = dcmtk("movescu", "-d", "-aet", "MOVESCU", "-aec", "MEDFED", "-aem", "VIEWER", "-S",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                     "127.0.0.1", node.dicom_port)
    assert proc.returncode == 0, proc.stderr
    want = {u for u, d in sent.items() if d.StudyInstanceUID == study}
    got = _received(out)
    assert set(got) == want
    assert all(got[u].PixelData == sent[u].PixelData for u in want)
    final = (proc.stderr + proc.stdout).rsplit("Received Final Move Response", 1)[1]
    assert re.search(r"Completed Suboperations\s*:\s*10\b", final), final
    assert re.search(r"Failed Suboperations\s*:\s*(0|none)\b", final), final


def test_move_to_unknown_destination_fails_clearly(loaded) -> None:
    node, sent, _ = loaded
    study, _ = _study_series(sent)
    proc = dcmtk("movescu", "-v", "-aet", "MOVESCU", "-aec", "MEDFED", "-aem", "NOWHERE", "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                 "127.0.0.1", node.dicom_port)
    text = proc.stderr + proc.stdout
    assert "MoveDestinationUnknown" in text


def _store_rle(node) -> pydicom.Dataset:  # type: ignore[no-untyped-def]
    ds = next(iter_datasets(patients=1, series=1, slices=1, rows=32, cols=32, seed=5,
                            transfer_syntax=RLELossless))
    ae = scu(contexts=[(CTImageStorage, [RLELossless])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    return ds


def _get_with(node, ds, syntaxes):  # type: ignore[no-untyped-def]
    """C-GET one instance offering only ``syntaxes`` for receiving it."""
    received = []

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append((event.context.transfer_syntax, event.dataset))
        return 0

    from pynetdicom import AE, evt
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for syntax in syntaxes:  # one context per syntax, as viewers that offer choices do
        ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    statuses = [s for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    return received, statuses[-1]


def test_get_sends_stored_syntax_when_accepted(start_node) -> None:
    node = start_node()
    ds = _store_rle(node)
    received, final = _get_with(node, ds, [RLELossless, ExplicitVRLittleEndian])
    assert final.Status == 0x0000
    assert [ts for ts, _ in received] == [RLELossless]


def test_get_transcodes_when_receiver_wants_uncompressed(start_node) -> None:
    node = start_node()
    ds = _store_rle(node)
    received, final = _get_with(node, ds, [ExplicitVRLittleEndian])
    assert final.Status == 0x0000
    assert [ts for ts, _ in received] == [ExplicitVRLittleEndian]
    original = ds.copy()
    original.decompress()
    assert received[0][1].PixelData == original.PixelData


def test_move_pending_responses_are_consistent(loaded, tmp_path: Path) -> None:
    """C-MOVE sends the next sub-operation before its (rate-limited, optional) pending
    response: every response the requester sees still adds up, and the final one
    counts every instance."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    node, sent, viewer_port = loaded
    study, _ = _study_series(sent)
    out = tmp_path / "viewer"
    with _viewer(out, viewer_port):
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(MOVE)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
        assert assoc.is_established
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        responses = [rsp for rsp, _ in assoc.send_c_move(query, "VIEWER", MOVE)]
        assoc.release()
    want = {u for u, d in sent.items() if d.StudyInstanceUID == study}
    assert set(_received(out)) == want
    *pending, final = responses
    done = 0
    for rsp in pending:
        assert rsp.Status == 0xFF00
        counts = (rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations,
                  rsp.NumberOfWarningSuboperations, rsp.NumberOfRemainingSuboperations)
        assert sum(counts) == len(want) and counts[1:3] == (0, 0)
        assert counts[0] >= done
        done = counts[0]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(want)
    assert final.NumberOfFailedSuboperations == 0
