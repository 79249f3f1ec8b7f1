"""`medfed init --host/--advertise`, `join` messages and `--ca-fingerprint`, as a hospital runs them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from node.config.model import load_config
from tests.cli.node_process import running
from tests.cli.test_cli import medfed
from tests.dicom_tools import free_port


def test_readme_example_listens_on_every_interface_and_admits_the_modality(tmp_path: Path) -> None:
    # the README's "Running a node" example, word for word (folder aside)
    made = medfed("init", tmp_path / "srv", "--name", "St Example", "--ae-title", "STEXAMPLE",
                  "--dicom-port", 11112, "--allow", "CT01@10.1.2.3", "--allow", "PACS@10.1.2.4",
                  "--destination", "VIEWER=10.1.2.50:11113")
    assert made.returncode == 0, made.stderr
    cfg = load_config(tmp_path / "srv" / "medfed.toml")
    assert cfg.dicom.host == cfg.peer_host == "0.0.0.0"   # reachable from 10.1.2.3, not loopback only
    assert cfg.dicom.is_allowed("CT01", "10.1.2.3") and not cfg.dicom.is_allowed("CT01", "10.9.9.9")
    assert cfg.advertise_host and cfg.advertise_host not in ("0.0.0.0", "")
    assert cfg.peer_advertise == f"{cfg.advertise_host}:8443"


def test_advertised_address_goes_into_the_admission_request(tmp_path: Path) -> None:
    made = medfed("init", tmp_path / "n", "--host", "0.0.0.0", "--advertise",
                  "medfed.st-example.org", "--peer-port", 9443, "--dht-port", 9468)
    assert made.returncode == 0, made.stderr
    assert "other sites reach it at medfed.st-example.org" in made.stdout
    config = tmp_path / "n" / "medfed.toml"
    assert tomllib.loads(config.read_text())["node"]["advertise"] == "medfed.st-example.org"
    asked = medfed("join", "--config", config, "--request", tmp_path / "req.json")
    assert asked.returncode == 0, asked.stderr
    request = json.loads((tmp_path / "req.json").read_text())
    assert request["peer_address"] == "medfed.st-example.org:9443"
    assert request["dht_address"] == "medfed.st-example.org:9468"

    # a wildcard with no advertised address cannot be dialled: say what to set
    config.write_text(config.read_text().replace('advertise = "medfed.st-example.org"',
                                                 'advertise = ""'))
    wild = medfed("join", "--config", config, "--request", tmp_path / "req2.json")
    assert wild.returncode == 2 and "[node] advertise" in wild.stderr
    assert not (tmp_path / "req2.json").exists()


def test_join_needs_the_fingerprint_and_a_missing_bootstrap_is_not_a_failure(tmp_path: Path) -> None:
    created = medfed("federation", "create", tmp_path / "op", "--name", "Net")
    assert created.returncode == 0, created.stderr
    fingerprint = created.stdout.split("CA fingerprint")[1].split()[0]
    peer_port = free_port()
    medfed("init", tmp_path / "a", "--host", "127.0.0.1", "--peer-port", peer_port)
    config = tmp_path / "a" / "medfed.toml"
    medfed("join", "--config", config, "--request", tmp_path / "a.req")
    admitted = medfed("federation", "admit", tmp_path / "a.req", "--out", tmp_path / "a.bundle",
                      "--dir", tmp_path / "op")
    assert admitted.returncode == 0, admitted.stderr

    blind = medfed("join", "--config", config, "--bundle", tmp_path / "a.bundle")
    assert blind.returncode == 2 and "--ca-fingerprint is required" in " ".join(blind.stderr.split())
    wrong = medfed("join", "--config", config, "--bundle", tmp_path / "a.bundle",
                   "--ca-fingerprint", "00" * 32)
    assert wrong.returncode == 1 and "not joined" in wrong.stderr
    assert not (tmp_path / "a" / "data" / "federation" / "roster.json").exists()

    # the first site has nobody to bootstrap to; a dead bootstrap is a warning, not "join failed"
    joined = medfed("join", "--config", config, "--bundle", tmp_path / "a.bundle",
                    "--ca-fingerprint", fingerprint, "--bootstrap", f"127.0.0.1:{peer_port}",
                    timeout=120)
    assert joined.returncode == 0, joined.stderr
    assert "joined" in joined.stdout and "join failed" not in joined.stdout + joined.stderr
    said = " ".join(joined.stderr.split())
    assert "did not answer" in said and "offers its roster to the members itself" in said
    status = medfed("status", "--config", config, "--json")
    doc = json.loads(status.stdout)
    assert doc["live"] is False and doc["federation"]["roster"]["active"] == 1
    assert "series are not shared until at least 3" in doc["federation"]["protection"]["warning"]


def test_init_refuses_a_port_that_cannot_exist_before_writing_anything(tmp_path: Path) -> None:
    made = medfed("init", tmp_path / "n", "--dht-port", 84610)
    assert made.returncode == 2 and "--dht-port" in made.stderr
    assert not (tmp_path / "n").exists()


def test_join_on_a_running_node_says_to_restart_it(tmp_path: Path) -> None:
    created = medfed("federation", "create", tmp_path / "op", "--name", "Net")
    fingerprint = created.stdout.split("CA fingerprint")[1].split()[0]
    assert medfed("init", tmp_path / "a", "--host", "127.0.0.1", "--dicom-port", free_port(),
                  "--http-port", free_port(), "--peer-port", free_port(),
                  "--dht-port", free_port()).returncode == 0
    config = tmp_path / "a" / "medfed.toml"
    with running(config):                  # running, unjoined
        assert medfed("join", "--config", config, "--request", tmp_path / "a.req").returncode == 0
        assert medfed("federation", "admit", tmp_path / "a.req", "--out", tmp_path / "a.bundle",
                      "--dir", tmp_path / "op").returncode == 0
        joined = medfed("join", "--config", config, "--bundle", tmp_path / "a.bundle",
                        "--ca-fingerprint", fingerprint)
        assert joined.returncode == 0, joined.stderr
        said = " ".join(joined.stderr.split())
        assert "running without the federation" in said and "start it again" in said
    stopped = medfed("join", "--config", config, "--bundle", tmp_path / "a.bundle",
                     "--ca-fingerprint", fingerprint)
    assert stopped.returncode == 0 and "Start the node with 'medfed run" in " ".join(
        stopped.stdout.split())
