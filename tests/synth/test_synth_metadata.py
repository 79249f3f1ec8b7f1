"""``medfed synth --metadata-only`` as a PACS team would run it: init a node, fill its
store (stopped), check ``medfed status``, start it and query it over DICOM; retrieving
a synthetic instance fails with a clear status (there is no pixel data)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet)

from node.config.model import load_config
from node.testing.nodes import NodeThread
from tests.cli.test_cli import medfed
from tests.dicom_tools import scu


def test_metadata_only_archive_is_queried_and_refuses_retrieval(tmp_path: Path) -> None:
    assert medfed("init", tmp_path / "n", "--allow", "PYNETDICOM@127.0.0.1",
                  "--dicom-port", 0).returncode == 0
    cfg_path = tmp_path / "n" / "medfed.toml"
    proc = medfed("synth", "--metadata-only", "--instances", 3000, "--config", cfg_path)
    assert proc.returncode == 0, proc.stderr
    assert "3,000 synthetic instances" in proc.stdout
    status = medfed("status", "--config", cfg_path)
    assert status.returncode == 0 and "3000" in status.stdout.replace(",", "")
    refused = medfed("synth", "--metadata-only", "--instances", 0, "--config", cfg_path)
    assert refused.returncode == 2 and "at least 1" in refused.stderr

    node = NodeThread(load_config(cfg_path)).start()
    try:
        ae = scu()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = "CT"
        query.NumberOfStudyRelatedInstances = ""
        found = [ds for st, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                 if st and st.Status == 0xFF00]
        assert found and all(int(ds.NumberOfStudyRelatedInstances) > 0 for ds in found)
        get = Dataset()
        get.QueryRetrieveLevel = "STUDY"
        get.StudyInstanceUID = found[0].StudyInstanceUID
        statuses = [st for st, _ in assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet)
                    if st]
        assoc.release()
    finally:
        node.stop()
    final = statuses[-1]
    assert final.Status == 0xC000 and "synthetic" in str(final.get("ErrorComment", ""))
