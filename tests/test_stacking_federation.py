"""``algorithm = "stacking"`` in a run config: each base protocol under its own run id, over the in-process grid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrisk.audit import build_report
from fedrisk.audit.run_files import collect_ledgers
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings

GUEST_SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(13)}, "id_format": "opaque"}
HOST_SCHEMA = {"id_column": "id", "features": {f"x{i}": "float" for i in range(10)}, "id_format": "opaque"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("stacking-fed")
    pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").iloc[:1500].to_csv(root / "guest.csv", index=False)
    pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").iloc[:1500].to_csv(root / "host.csv", index=False)
    parties = [
        PartySettings("bank", "label_holder", str(root / "guest.csv"), GUEST_SCHEMA, str(root / "parties" / "bank")),
        PartySettings("tax_bureau", "feature_holder", str(root / "host.csv"), HOST_SCHEMA, str(root / "parties" / "tax_bureau")),
    ]
    config = {
        "mode": "vertical",
        "algorithm": "stacking",
        "epochs": 3,
        "trees": 2,
        "depth": 2,
        "run-dir": str(root),
        "parties": "bank,tax_bureau",
        "fedrisk-run-id": "stk",
        "party-timeout": 300.0,
    }
    server_app(InProcessGrid(parties), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=config))
    return root, json.loads((root / "coordinator" / "result.json").read_text())


def test_each_base_learner_runs_under_its_own_run_id_with_its_own_bundles(run):
    root, result = run
    assert result["status"] == "ok" and result["algorithm"] == "stacking", result.get("error")
    assert result["base_learners"] == ["vertical_lr", "secureboost"]
    for base in ("vertical_lr", "secureboost"):
        assert result["base"][base]["run_id"] == f"stk.{base}"
        bundles = result["bundles"][base]
        assert set(bundles) == {"bank", "tax_bureau"}
        assert all(f"stk.{base}" in str(path) and Path(path).is_dir() for path in bundles.values())
    assert "intersection" not in json.dumps(result)


def test_every_ledger_verifies_for_every_run_id(run):
    root, _ = run
    ledgers, keys = collect_ledgers([root])
    for run_id in ("stk", "stk.vertical_lr", "stk.secureboost"):
        report = build_report(ledgers, root / f"audit-{run_id}", trusted_keys=keys, run_id=run_id)
        assert report.ok, [str(f) for f in report.findings][:5]
