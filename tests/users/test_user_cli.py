"""`medfed user login` / `medfed query` as a user: roles come from the user record."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.main import app
from node.testing.federation import LocalFederation
from tests.query.test_query_dicom_cli import _FederationThread, _home_config
from tests.query_support import audit_entries, federation

PW = "a long test password"


def test_queries_are_made_for_registered_users_with_their_own_role(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    monkeypatch.setenv("MEDFED_TOKEN_DIR", str(tmp_path / "tokens"))
    monkeypatch.delenv("MEDFED_TOKEN", raising=False)
    runner = CliRunner()
    bg = _FederationThread()
    fed: LocalFederation | None = None
    try:
        policy = {"rule": [{"name": "clinicians", "site": "*", "role": "clinician",
                            "level": "deidentified"},
                           {"name": "others", "site": "*", "level": "count"}]}
        fed, _data = bg.run(federation(tmp_path, ["a", "b"], policies={"b": policy}))
        config = str(_home_config(tmp_path, fed))
        b = fed.nodes[1]

        # no such user: refused before anything is signed, and audited at the home node
        bg.run(fed.nodes[0].stop())
        fed.down.add(0)
        nobody = runner.invoke(app, ["query", "--config", config, "--user", "nosuchuser",
                                     "--password-stdin", "--json"], input=PW + "\n")
        assert nobody.exit_code == 1 and "login refused" in nobody.output
        assert not [e for e in audit_entries(b) if e["outcome"] == "ok"]
        refused = audit_entries(fed.nodes[0], "user.refused")
        assert refused and refused[-1]["actor"] == "nosuchuser"

        added = runner.invoke(app, ["user", "add", "res1", "--role", "researcher",
                                    "--department", "oncology", "--config", config,
                                    "--password-stdin"], input=PW + "\n")
        assert added.exit_code == 0, added.output
        login = runner.invoke(app, ["user", "login", "res1", "--config", config,
                                    "--password-stdin"], input=PW + "\n")
        assert login.exit_code == 0 and "logged in" in login.output
        (saved,) = (tmp_path / "tokens").iterdir()
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600

        # the researcher cannot claim clinical care: no --role, and the purpose is checked
        claim = runner.invoke(app, ["query", "--config", config, "--purpose", "treatment",
                                    "--all", "--json"])
        assert claim.exit_code == 1 and "may not state purpose 'treatment'" in claim.output
        assert "--role" not in runner.invoke(app, ["query", "--help"]).output

        ok = runner.invoke(app, ["query", "--config", config, "--all", "--json"])
        assert ok.exit_code == 0, ok.output
        sites = {s["site"]: s for s in json.loads(ok.stdout)["sites"]}
        assert (sites["b"]["status"], sites["b"]["level"]) == ("ok", "count")
        served = [e for e in audit_entries(b) if e["outcome"] == "ok"][-1]
        assert (served["detail"]["role"], served["detail"]["purpose"]) == ("researcher", "research")

        disabled = runner.invoke(app, ["user", "disable", "res1", "--config", config])
        assert disabled.exit_code == 0 and "1 token(s) revoked" in disabled.output
        after = runner.invoke(app, ["query", "--config", config, "--all", "--json"])
        assert after.exit_code == 1 and "medfed user login" in after.output
    finally:
        if fed is not None:
            bg.run(fed.stop())
        bg.close()
