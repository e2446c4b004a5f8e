"""Parties started on their own with ``fedrisk node start``; the run submitted with ``fedrisk train --superlink``.

The way a bank, a tax bureau and a federation operator run it on three hosts,
here on loopback: the operator's SuperLink (TLS, node authentication), each
party's node as its own ``fedrisk node start`` process with only its own
table, and the run submitted to the SuperLink's Control API by a third
process that reads no party's data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from node_cli import node_start_argv

from fedrisk.crypto.pki import create_node_auth_keypair
from fedrisk.federation.local import LocalFederation

pytestmark = pytest.mark.e2e

FEDERATION = """
[federation]
name = "two-hosts"
mode = "vertical"
algorithm = "vertical_lr"

[algorithm]
epochs = 2

[[parties]]
name = "bank"
role = "label_holder"
data = "/elsewhere/bank.csv"        # on the bank's host: not read here
id-column = "id"
label-column = "y"

[[parties]]
name = "tax_bureau"
role = "feature_holder"
data = "/elsewhere/tax.csv"
id-column = "id"
"""


def test_parties_on_their_own_nodes_train_through_a_remote_superlink(tmp_path, default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").head(1500)
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").iloc[300:1800]
    (tmp_path / "bank_host").mkdir()
    (tmp_path / "tax_host").mkdir()
    guest.to_csv(tmp_path / "bank_host" / "bank.csv", index=False)
    host.to_csv(tmp_path / "tax_host" / "tax.csv", index=False)
    (tmp_path / "federation.toml").write_text(FEDERATION)

    nodes: list[subprocess.Popen] = []
    with LocalFederation(tmp_path / "operator", [], {}) as operator:  # just the SuperLink
        try:
            for name, role, folder, label in (("bank", "label_holder", "bank_host", "y"), ("tax_bureau", "feature_holder", "tax_host", None)):
                private, public = create_node_auth_keypair(tmp_path / folder / "nodekey", name)
                operator.register_node_key(name, public)
                argv = node_start_argv(
                    name=name,
                    role=role,
                    data=tmp_path / folder / ("bank.csv" if label else "tax.csv"),
                    label_column=label,
                    superlink=f"127.0.0.1:{operator.fleet_port}",
                    root_certificates=operator.ca_cert,
                    auth_key=private,
                    state_dir=tmp_path / folder / "state",
                )
                nodes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
            train = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fedrisk.cli",
                    "train",
                    str(tmp_path / "federation.toml"),
                    "--json",
                    "--runs-dir",
                    str(tmp_path / "coordinator_runs"),
                    "--superlink",
                    f"127.0.0.1:{operator.control_port}",
                    "--root-certificates",
                    str(operator.ca_cert),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp_path / "operator",
            )
        finally:
            for proc in nodes:
                os.killpg(proc.pid, signal.SIGTERM)
            codes = [proc.wait(timeout=30) for proc in nodes]
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "vertical"
    # The analyst's summary comes through the coordinator, which never learns the overlap; the bank's host has it.
    assert summary["intersection"] is None and "intersection" not in summary["coordinator"]
    from fedrisk.parties.alignment import read_alignment_report

    assert read_alignment_report(tmp_path / "bank_host" / "state", summary["coordinator"]["run_id"])["intersection"] == {"tax_bureau": 1200}
    assert summary["auc_federated"] > 0.6
    assert summary["ledger_verified"] is None  # the ledgers are on the parties' hosts...
    assert codes == [0, 0]  # ...and each node stopped cleanly on SIGTERM
    # ...where each party's own ledger and bundle are
    for folder in ("bank_host", "tax_host"):
        assert (tmp_path / folder / "state" / "ledger.sqlite").exists()
        assert list((tmp_path / folder / "state" / "models").iterdir())


def test_node_start_names_a_bad_flag(tmp_path):
    (tmp_path / "t.csv").write_text("id,x0\na,1\n")
    completed = subprocess.run(
        node_start_argv(
            name="tax",
            role="feature_holder",
            data=tmp_path / "t.csv",
            id_column=None,
            label_column="x0",
            superlink="127.0.0.1:1",
            root_certificates=tmp_path / "t.csv",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "label-column: a feature holder has no labels" in completed.stderr
