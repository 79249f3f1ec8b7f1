"""`medfed deid` before joining: a site-local key, pseudonyms that link within the site only."""

from __future__ import annotations

import stat
from pathlib import Path

import pydicom

from tests.cli.test_cli import medfed


def _ids(folder: Path) -> set[tuple[str, str]]:
    return {(str(ds.PatientID), str(ds.StudyInstanceUID))
            for ds in (pydicom.dcmread(p) for p in folder.rglob("*.dcm"))}


def test_deid_runs_before_joining_with_a_stable_site_local_key(tmp_path: Path) -> None:
    assert medfed("init", tmp_path / "n", "--host", "127.0.0.1").returncode == 0
    config = tmp_path / "n" / "medfed.toml"
    made = medfed("synth", tmp_path / "in", "--patients", 1, "--series", 1, "--slices", 2,
                  "--size", 32)
    assert made.returncode == 0, made.stderr
    first = medfed("deid", tmp_path / "in", tmp_path / "out1", "--config", config)
    assert first.returncode == 0, first.stdout + first.stderr     # refused before this change
    said = " ".join(first.stdout.split())
    assert "site-local" in said and "link within this site only" in said and "done 2" in said
    key = tmp_path / "n" / "data" / "keys" / "site-deid.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = medfed("deid", tmp_path / "in", tmp_path / "out2", "--config", config)
    assert again.returncode == 0
    originals = {(str(ds.PatientID), str(ds.StudyInstanceUID))
                 for ds in (pydicom.dcmread(p) for p in (tmp_path / "in").rglob("*.dcm"))}
    assert _ids(tmp_path / "out1") == _ids(tmp_path / "out2")       # links within the site
    assert not _ids(tmp_path / "out1") & originals                  # and is de-identified

    assert medfed("init", tmp_path / "other", "--host", "127.0.0.1").returncode == 0
    other = medfed("deid", tmp_path / "in", tmp_path / "out3", "--config",
                   tmp_path / "other" / "medfed.toml")
    assert other.returncode == 0
    assert not _ids(tmp_path / "out3") & _ids(tmp_path / "out1")    # not across sites
