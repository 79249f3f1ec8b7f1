"""``[dicom] home_pacs`` in medfed.toml: the AE title "fetch to home PACS" moves series to."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config.model import ConfigError, parse_config


def _raw(home: str) -> dict:  # type: ignore[type-arg]
    return {"node": {"name": "a"}, "dicom": {"ae_title": "NODE", "home_pacs": home,
                                             "destinations": {"PACS": "10.0.0.5:104"}}}


def test_home_pacs_names_a_destination(tmp_path: Path) -> None:
    cfg = parse_config(_raw("PACS"), tmp_path)
    assert cfg.dicom.home_pacs == "PACS"
    assert cfg.dicom.destination(cfg.dicom.home_pacs).port == 104  # type: ignore[union-attr]
    assert parse_config(_raw(""), tmp_path).dicom.home_pacs == ""


def test_home_pacs_that_is_no_destination_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"home_pacs.*\[dicom.destinations\]"):
        parse_config(_raw("ELSEWHERE"), tmp_path)
