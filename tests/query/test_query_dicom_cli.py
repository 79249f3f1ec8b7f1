"""The federation's DICOM face (dcmtk findscu to the FEDERATION AE) and `medfed query`."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import typer
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from node.cli.query import register
from node.testing.federation import LocalFederation
from tests.dicom_tools import DCMTK
from tests.query_support import audit_entries, federation, query_services

T = TypeVar("T")
PASSWORD = "a long test password"


async def _findscu(port: int, called: str, out: Path) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    keys = ["QueryRetrieveLevel=STUDY", "PatientID", "StudyInstanceUID", "ModalitiesInStudy",
            "StudyDate", "NumberOfStudyRelatedSeries", "RetrieveAETitle", "InstitutionName"]
    args = ["-S", "-aet", "FINDSCU", "-aec", called, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    proc = await asyncio.create_subprocess_exec(
        str(DCMTK / "findscu"), *args, "127.0.0.1", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (stdout + stderr).decode()
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


async def test_cfind_to_the_federation_ae_answers_from_every_site(tmp_path: Path) -> None:
    fed, data = await federation(tmp_path, ["a", "b", "c"], with_dicom=True,
                                 services=lambda i, n: query_services(i, n, dicom=True))
    try:
        a = fed.nodes[0]
        found = await _findscu(a.ports.dicom, "FEDERATION", tmp_path / "fed")
        by_site: dict[str, set[str]] = {}
        for ds in found:
            site = str(ds.InstitutionName)
            assert ds.RetrieveAETitle == a.cfg.dicom.federation_ae_title  # a answers it
            assert str(ds.PatientID) in data["abc".index(site)].pseudonyms
            assert ds.ModalitiesInStudy == "CT" and int(ds.NumberOfStudyRelatedSeries) == 2
            assert len(str(ds.StudyDate)) == 8
            by_site.setdefault(site, set()).add(str(ds.StudyInstanceUID))
        assert by_site == {name: set(d.keyed_studies) for name, d in zip("abc", data)}

        local = await _findscu(a.ports.dicom, a.cfg.dicom.ae_title, tmp_path / "local")
        assert len(local) == len(data[0].keyed_studies)
        assert all(str(ds.PatientID).startswith("MRN") for ds in local)  # own data, own IDs
        viewer = a.users.get("viewer")        # [dicom.users] FINDSCU = "viewer"
        assert viewer is not None and audit_entries(fed.nodes[1])[-1]["actor"].endswith(
            "/" + viewer.handle)
    finally:
        await fed.stop()


class _FederationThread:
    """A federation whose event loop runs in a background thread (the CLI runs its own)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _home_config(tmp_path: Path, fed: LocalFederation) -> Path:
    """A TOML config for node 'a' whose data folder holds its keys and membership."""
    a = fed.nodes[0]
    shutil.copytree(tmp_path / "a" / "federation", a.cfg.data_dir / "federation")
    a.identity.save(a.cfg.key_dir)
    path = tmp_path / "a.toml"
    path.write_text(f'[node]\nname = "a"\ndata_dir = "{a.cfg.data_dir}"\n'
                    '[federation]\nquery_deadline_s = 5.0\n')
    return path


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """medfed (test harness)."""

    register(app)
    return app


def test_medfed_query_json_against_a_running_federation(tmp_path: Path) -> None:
    runner = CliRunner()
    bg = _FederationThread()
    fed: LocalFederation | None = None
    try:
        fed, data = bg.run(federation(tmp_path, ["a", "b", "c"]))
        config = _home_config(tmp_path, fed)
        cli_user = fed.nodes[0].users.add_user("cli-user", "clinician", "radiology", PASSWORD)
        args = ["query", "--config", str(config), "--json", "--all", "--user", "cli-user",
                "--password-stdin"]

        def run(extra: list[str]) -> dict[str, Any]:
            result = runner.invoke(_cli(), args + extra, input=PASSWORD + "\n")
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        # node a's daemon runs (and holds its audit log): a is asked over its peer API
        doc = run([])
        assert [(s["site"], s["status"]) for s in doc["sites"]] == [
            ("a", "ok"), ("b", "ok"), ("c", "ok")]
        assert {p["pseudonym"] for p in doc["patients"]} == set().union(
            *(d.pseudonyms for d in data))
        assert audit_entries(fed.nodes[0])[-1]["actor"].endswith("/" + cli_user.handle)

        # node a stopped: the CLI answers for a from its SQLite and audits in its log
        bg.run(fed.nodes[0].stop())
        fed.down.add(0)
        doc = run(["--body-part", "CHEST"])
        assert [s["status"] for s in doc["sites"]] == ["ok", "ok", "ok"]
        chest = {uid for d in data for uid, part in d.keyed_studies.items() if part == "CHEST"}
        assert {r["study_uid"] for p in doc["patients"] for r in p["records"]} == chest
        assert audit_entries(fed.nodes[0])[-1]["detail"]["query_level"] == "study"

        token = fed.nodes[0].tokens.issue_token("cli-user", 60)
        table = runner.invoke(_cli(), ["query", "--config", str(config)],
                              env={"MEDFED_TOKEN": token})
        assert table.exit_code == 0 and "PSN-" in table.stdout and "sites" in table.stdout
        bad = runner.invoke(_cli(), ["query", "--config", str(config), "--modality", "C;T"],
                            env={"MEDFED_TOKEN": token})
        assert bad.exit_code == 2 and "modality" in bad.output
    finally:
        if fed is not None:
            bg.run(fed.stop())
        bg.close()
