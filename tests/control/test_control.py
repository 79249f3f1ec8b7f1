"""The local control API of a running node (Unix socket), over real federations.

The federation runs on its own event-loop thread, like `medfed run` in another process:
the test's ControlClient and `medfed fetch` (typer CliRunner) block on the socket while
the node serves them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from node.cli.main import app
from node.control import control_socket_path
from node.control.client import (Actor, ControlClient, ControlFailed, ControlRefused,
                                  ControlUnavailable, UnixHTTPConnection)
from node.control.server import ControlService
from node.control.unixsock import ControlSocketError
from node.keyshare.service import KeyShareService
from node.node import Node
from node.query.service import FederatedQueryService
from node.replica.service import ReplicaService
from node.sharing.publisher import PublisherService, PublisherSettings
from node.store.ingest_local import encode_part10, ingest_dataset
from node.synth.generate import iter_datasets
from node.testing.loop_thread import LoopThread
from node.testing.nodes import loopback_config
from node.users import UserStore
from node.testing.federation import LocalFederation, start_federation
from tests.sharing.test_sharing_publish import _configure, _expected  # same k/n/r and de-identified bytes

NAMES = ["owner", "b", "c", "d", "e", "f"]
PASSWORD = "correct horse battery"


@dataclass
class Running:
    loop: LoopThread
    fed: LocalFederation
    owner: Node
    requester: Node
    bundle_id: str
    expected: list[bytes]     # de-identified Part-10 bytes, computed independently
    clinician: Actor          # users of the requester, logged in (token from its TokenStore)
    admin: Actor

    def client(self, node: Node) -> ControlClient:
        return ControlClient(control_socket_path(node.cfg.data_dir))


def _services(i: int, name: str) -> list[Any]:
    return [KeyShareService(), ReplicaService(), PublisherService(PublisherSettings(), run_jobs=False),
            FederatedQueryService(), ControlService()]


async def _publish(owner: Node) -> tuple[str, list[bytes]]:
    raws = []
    for ds in iter_datasets(patients=1, studies=1, series=1, slices=6, rows=32, cols=32):
        await ingest_dataset(owner.store, owner.files, ds)
        raws.append(encode_part10(ds))
    publisher = owner.service("publisher")
    assert isinstance(publisher, PublisherService) and publisher.catalog is not None
    assert await publisher.run_due() == 1
    (entry,) = await publisher.catalog.entries()
    return entry.bundle_id, raws


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    loop = LoopThread("control-fed")
    root = tmp_path_factory.mktemp("ctl")
    fed = loop.call(start_federation(root, NAMES, configure=_configure, services=_services))
    try:
        owner = fed.nodes[0]
        bundle_id, raws = loop.call(_publish(owner))
        requester = fed.nodes[5]
        requester.users.add_user("dr-ctl", "clinician", "radiology", PASSWORD)
        requester.users.add_user("it-ops", "admin", "it", PASSWORD)
        requester.users.add_user("dr-cli", "clinician", "radiology", PASSWORD)
        clinician = Actor("dr-ctl", requester.tokens.issue_token("dr-ctl", 3600), "treatment")
        admin = Actor("it-ops", requester.tokens.issue_token("it-ops", 3600), "operations")
        yield Running(loop, fed, owner, requester, bundle_id, _expected(owner, raws), clinician,
                      admin)
    finally:
        loop.call(fed.stop())
        loop.close()


def _audit(node: Node) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.cfg.audit_path.read_text().splitlines()]


def _raw(path: Path, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    conn = UnixHTTPConnection(path, 10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# -- the federation, running ------------------------------------------------------------
def test_status_route_reports_the_running_node(running: Running) -> None:
    node = running.owner
    doc = running.client(node).status()     # an administrator's call: the OS user suffices
    assert doc["node_id"] == node.node_id and doc["name"] == "owner"
    assert doc["ports"] == {"dicom": node.ports.dicom, "peer": node.ports.peer, "dht": node.ports.dht,
                            "web": node.ports.web}
    counts = running.loop.call(node.store.counts())
    assert doc["counts"]["instances"] == counts.instances == 6
    assert doc["members"] == len(NAMES)
    assert doc["pending_jobs"] == counts.pending_jobs
    mode = os.lstat(control_socket_path(node.cfg.data_dir)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    last = [e for e in _audit(node) if e["action"] == "control.status"][-1]
    assert (last["actor"], last["outcome"]) == (f"uid:{os.getuid()}", "ok")


def test_client_fetch_writes_byte_identical_deidentified_files(running: Running, tmp_path: Path) -> None:
    events: list[tuple[int, int]] = []
    client = running.client(running.requester)
    result = client.fetch(f"{running.owner.node_id}:{running.bundle_id}", tmp_path / "out", running.clinician,
                          progress=lambda b, n: events.append((b, n)))
    assert result["source"] == "owner" and result["instances"] == 6
    outputs = [Path(p) for p in result["outputs"]]
    assert all(p.parent == tmp_path / "out" / running.bundle_id for p in outputs)
    assert sorted(p.read_bytes() for p in outputs) == running.expected
    assert events and events[-1] == (result["stored_bytes"], 6)
    assert [b for b, _ in events] == sorted(b for b, _ in events)
    entry = [e for e in _audit(running.requester) if e["action"] == "control.fetch"][-1]
    assert (entry["actor"], entry["outcome"], entry["subject"]) == ("dr-ctl", "ok", running.bundle_id)

    # by keyed UID would need the DHT; as a volume the node writes one NIfTI file
    result = client.fetch(running.bundle_id, tmp_path / "vol", running.clinician, fmt="nifti")
    assert [Path(p).name for p in result["outputs"]] == [f"{running.bundle_id}.nii.gz"]


def test_fetch_failures_carry_the_node_s_reason_and_write_nothing(running: Running, tmp_path: Path) -> None:
    client = running.client(running.requester)
    ref = f"{running.owner.node_id}:{running.bundle_id}"
    with pytest.raises(ControlFailed, match="owning site refused") as refused:
        client.fetch(ref, tmp_path / "adm", running.admin)  # owner policy: admins get counts only
    assert refused.value.kind == "FetchRefused" and not (tmp_path / "adm").exists()
    taken = tmp_path / "taken" / running.bundle_id
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ControlFailed, match="already exists") as sink:
        client.fetch(ref, tmp_path / "taken", running.clinician)
    assert sink.value.kind == "SinkError" and os.listdir(taken) == ["keep.txt"]
    with pytest.raises(ControlRefused, match="series reference") as bad_ref:
        client.fetch("not-a-ref!", tmp_path / "x", running.clinician)
    assert bad_ref.value.status == 400
    with pytest.raises(ControlRefused, match="no valid login") as forged:
        client.fetch(ref, tmp_path / "x", Actor("dr-ctl", "mft_not-a-token", "treatment"))
    assert forged.value.status == 401
    with pytest.raises(ControlRefused, match="may not state purpose") as purpose:
        client.fetch(ref, tmp_path / "x", Actor("it-ops", running.admin.token, "treatment"))
    assert (purpose.value.status, purpose.value.code) == (403, "purpose_not_allowed")
    status, doc = _raw(client.socket_path, "POST", "/v1/fetch",
                       json.dumps({"ref": ref, "out": "relative/dir",
                                   **running.clinician.to_json()}).encode())
    assert (status, doc["error"]) == (400, "bad_out") and "absolute" in doc["reason"]
    outcomes = [(e["outcome"], e["detail"].get("kind") or e["detail"].get("code"))
                for e in _audit(running.requester) if e["action"] == "control.fetch"]
    assert ("failed", "FetchRefused") in outcomes and ("refused", "bad_ref") in outcomes


def test_query_route_answers_like_the_query_service(running: Running) -> None:
    from node.query.model import FederatedQuery

    client = running.client(running.requester)
    doc = client.query({"level": "study"}, running.clinician, broadcast=True, deadline_s=10)
    direct = running.loop.call(running.requester.service("federated-query").query(  # type: ignore[union-attr]
        FederatedQuery(level="study"), broadcast=True, deadline_s=10,
        user=running.requester.users.get("dr-ctl"), purpose="treatment"))
    assert sorted(s["site"] for s in doc["sites"]) == sorted(NAMES)
    assert all(s["status"] == "ok" for s in doc["sites"])
    assert doc["patients"] == direct.to_json()["patients"] and len(doc["patients"]) == 1
    assert doc["patients"][0]["sites"] == ["owner"]
    with pytest.raises(ControlRefused, match="unknown query field") as bad:
        client.query({"colour": "red"}, running.clinician)
    assert bad.value.status == 400
    assert [e["outcome"] for e in _audit(running.requester) if e["action"] == "control.query"][-2:] == [
        "ok", "refused"]


def _config_file(node: Node, path: Path) -> Path:
    """The TOML the hospital's `medfed run` would have been started with."""
    path.write_text(f'[node]\nname = "{node.cfg.name}"\ndata_dir = "{node.cfg.data_dir}"\n'
                    f'[peer]\nport = {node.ports.peer}\n[dht]\nport = {node.ports.dht}\n')
    return path


def test_medfed_fetch_uses_the_socket_while_the_node_holds_its_ports(running: Running,
                                                                     tmp_path: Path) -> None:
    node = running.requester
    probe = socket.socket()
    with pytest.raises(OSError):       # what the in-process path would have run into
        probe.bind(("127.0.0.1", node.ports.peer))
    probe.close()
    config = _config_file(node, tmp_path / "medfed.toml")
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["fetch", f"{running.owner.node_id}:{running.bundle_id}", "--out",
                                      str(out), "--config", str(config), "--user", "dr-cli",
                                      "--password-stdin"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "fetched 6 instances" in result.output
    assert sorted(p.read_bytes() for p in (out / running.bundle_id).iterdir()) == running.expected
    assert [e["actor"] for e in _audit(node) if e["action"] == "control.fetch"][-1] == "dr-cli"
    token = node.tokens.issue_token("dr-cli", 60)
    refused = CliRunner().invoke(app, ["fetch", "zz", "--out", str(out), "--config", str(config)],
                                 env={"MEDFED_TOKEN": token})
    assert refused.exit_code == 1 and "series reference" in " ".join(refused.output.split())


def test_garbage_on_the_socket_gets_4xx_and_the_node_keeps_running(running: Running) -> None:
    path = control_socket_path(running.owner.cfg.data_dir)
    who = running.clinician.to_json()
    status, doc = _raw(path, "POST", "/v1/fetch", b"{not json", {"Content-Type": "application/json"})
    assert (status, doc["error"]) == (400, "bad_json")
    status, doc = _raw(path, "POST", "/v1/fetch", b"[1, 2]")
    assert (status, doc["error"]) == (400, "bad_json") and "object" in doc["reason"]
    status, doc = _raw(path, "GET", "/v1/nope")
    assert status == 404 and "no control route" in doc["reason"]
    status, doc = _raw(path, "GET", "/v1/fetch")
    assert status == 405
    huge = json.dumps({"query": {}, "pad": "x" * 100_000, **who}).encode()
    status, doc = _raw(path, "POST", "/v1/query", huge)
    assert status == 413 and doc["reason"]
    status, doc = _raw(path, "POST", "/v1/query", json.dumps({"query": {}, "user": "dr-ctl",
                                                             "purpose": "treatment"}).encode())
    assert (status, doc["error"]) == (401, "no_token")              # a user but no login
    with socket.socket(socket.AF_UNIX) as raw:                       # not HTTP at all
        raw.settimeout(5)
        raw.connect(str(path))
        raw.sendall(b"\x16\x03\x01garbage\r\n\r\n")
        assert raw.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert running.client(running.owner).status()["node_id"] == running.owner.node_id
    refused = [e for e in _audit(running.owner) if e["outcome"] == "refused" and
               e["action"].startswith("control.")]
    assert {e["action"] for e in refused} >= {"control.fetch", "control.unknown", "control.query"}


# -- lifecycle of the socket file (a stand-alone node is enough) --------------------------
def _standalone(tmp_path: Path) -> Node:
    return Node(loopback_config(tmp_path / "solo"), with_dicom=False, services=[ControlService()])


async def _status(path: Path) -> dict[str, Any]:
    return await asyncio.to_thread(ControlClient(path).status)


async def test_a_stale_socket_from_a_crash_is_replaced_and_removed_at_stop(tmp_path: Path) -> None:
    node = _standalone(tmp_path)
    path = control_socket_path(node.cfg.data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the node refuses an open folder
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(str(path))          # bound, then the process "died": the file stays
    crashed.close()
    stale = os.lstat(path).st_ino
    assert not ControlClient(path).is_running()
    await node.start()
    try:
        assert os.lstat(path).st_ino != stale and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        doc = await _status(path)
        assert doc["node_id"] == node.node_id and doc["members"] == 0
        assert await asyncio.to_thread(ControlClient(path).is_running)
    finally:
        await node.stop()
    assert not path.exists()
    with pytest.raises(ControlUnavailable, match="no node is running"):
        await _status(path)


async def test_a_live_socket_or_a_foreign_file_is_never_taken_over(tmp_path: Path) -> None:
    first, second = _standalone(tmp_path), _standalone(tmp_path)
    path = control_socket_path(first.cfg.data_dir)
    await first.start()
    try:
        service = ControlService()
        with pytest.raises(ControlSocketError, match="another medfed node is answering"):
            await service.start(second)
        assert (await _status(path))["node_id"] == first.node_id
    finally:
        await first.stop()
    path.write_text("operator's notes")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await ControlService().start(second)
    assert path.read_text() == "operator's notes"


async def test_routes_that_need_the_federation_say_so_on_a_standalone_node(tmp_path: Path) -> None:
    node = _standalone(tmp_path)
    await node.start()
    try:
        client = ControlClient(control_socket_path(node.cfg.data_dir))
        node.users.add_user("dr-solo", "clinician", "radiology", PASSWORD)
        me = Actor("dr-solo", node.tokens.issue_token("dr-solo", 60), "treatment")
        with pytest.raises(ControlRefused, match="no federated-query service") as query:
            await asyncio.to_thread(client.query, {}, me)
        with pytest.raises(ControlRefused, match="join a federation") as fetch:
            await asyncio.to_thread(client.fetch, "ab" * 32, tmp_path / "out", me)
        assert (query.value.status, fetch.value.status) == (503, 409)
    finally:
        await node.stop()
    assert not (tmp_path / "out").exists()


def test_medfed_fetch_falls_back_in_process_when_no_node_answers(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(str(control_socket_path(data)))     # left behind by a crashed daemon
    crashed.close()
    config = tmp_path / "medfed.toml"
    config.write_text(f'[node]\nname = "solo"\ndata_dir = "{data}"\n[dicom]\nport = 0\n'
                      '[peer]\nport = 0\n[dht]\nport = 0\n')
    UserStore(data / "users.sqlite").add_user("dr-solo", "clinician", "radiology", PASSWORD)
    result = CliRunner().invoke(app, ["fetch", "ab" * 32, "--out", str(tmp_path / "o"), "--config",
                                      str(config), "--user", "dr-solo", "--password-stdin"],
                                input=PASSWORD + "\n")
    # the in-process path ran (its own check, before any port is bound) and says what to do
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "not a federation member; join a federation first ('medfed join')" in said
    assert not (tmp_path / "o").exists()
