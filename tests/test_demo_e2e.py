"""``fedrisk demo --json`` end to end: the vertical story over real gRPC with TLS on loopback.

Runs the command as a user would (a subprocess), on a small synthetic SME book:
SuperLink, one SuperNode and one warm party process per party, PSI, encrypted
vertical logistic regression, the audit ledgers verified. Asserts on the
summary the command prints and on what it leaves behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    runs = tmp_path_factory.mktemp("demo-runs")
    env = {**os.environ, "COLUMNS": "120"}
    completed = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "demo", "--json", "--rows", "12000", "--epochs", "8", "--runs-dir", str(runs)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]), completed.stderr


def test_summary_has_the_promised_fields(demo):
    summary, _ = demo
    for key in (
        "mode",
        "parties",
        "rounds",
        "auc_federated",
        "auc_plain",
        "seconds",
        "intersection",
        "auc_bank_only",
        "auc_centralized",
        "ks_federated",
        "bytes_exchanged",
        "ledger_verified",
        "ledger_entries",
    ):
        assert key in summary, key
    assert summary["mode"] == "vertical"
    assert summary["parties"] == ["bank", "tax_bureau", "platform"]
    assert Path(summary["run_dir"], "summary.json").exists()


def test_the_federation_beats_the_bank_alone(demo):
    summary, _ = demo
    assert summary["auc_federated"] >= summary["auc_bank_only"] + 0.05
    # the tax bureau knows ~90 % and the platform ~60 % of the bank's SMEs
    overlap = summary["intersection"]
    assert 0.85 * 12000 < overlap["tax_bureau"] < 0.95 * 12000
    assert 0.55 * 12000 < overlap["platform"] < 0.65 * 12000
    assert set(summary["bytes_exchanged"]) == {"bank", "tax_bureau", "platform"}


def test_live_decisions_equal_the_model_offline(demo):
    summary, _ = demo
    live = summary["scoring"]
    assert live["applications"] > 500  # the bank's evaluation rows, one application each
    assert live["approve"] + live["refer"] + live["decline"] == live["applications"]
    assert live["max_abs_pd_diff_vs_offline"] < 1e-9  # the deployed node scores exactly the trained model
    assert live["auc_live"] == pytest.approx(summary["auc_federated"], abs=1e-9)
    assert live["degraded"] == 0
    assert live["sandbox"] in ("bwrap", "namespaces", "rlimits")


def test_every_ledger_of_the_run_verifies_with_zero_findings(demo):
    summary, _ = demo
    assert summary["ledger_verified"] is True
    assert summary["ledger_findings"] == []
    run_dir = Path(summary["run_dir"])
    ledgers = sorted(run_dir.glob("**/ledger.sqlite"))
    assert len(ledgers) == 4  # coordinator, bank, tax bureau, platform
    assert summary["ledger_entries"] > 100
    assert Path(summary["audit_report"]).exists()
    verify = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "audit", "verify", str(run_dir), "--run-id", summary["run_id"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_it_ran_over_tls_with_node_authentication_and_stopped_everything(demo):
    summary, stderr = demo
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "pki" / "ca.pem").exists() or any((run_dir / "pki").glob("*ca*"))
    assert "TLS on, node authentication" in stderr.replace("\n", " ")
    leftover = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes still running: {leftover.stdout}"
