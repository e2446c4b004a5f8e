"""Encrypted FedAvg over real gRPC+TLS: SuperLink and three SuperNodes on loopback.

Three banks hold the FATE horizontal split of the UCI default-credit data
(8,000 rows each).  The same processes run CKKS-encrypted FedAvg and then
plaintext FedAvg with the same seed; the encrypted model's AUC on the common
hold-out must be within 0.002 of the plaintext one (CKKS noise is ~1e-7 on
the weights) and at least 0.72.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.federation.federation_file import load_federation_file
from fedrisk.federation.local import LocalFederation
from fedrisk.federation.train import party_settings_for, run_config_for, weighted_final_metrics
from fedrisk.models.bundle import load_model_bundle
from fedrisk.models.metrics import auc
from fedrisk.models.neural import ModelSpec

pytestmark = pytest.mark.e2e

FEDERATION = """
[federation]
name = "default-credit-3-banks"
mode = "horizontal"
algorithm = "fedavg"

[algorithm]
rounds = 3
model = "mlp"
hidden-units = 32
learning-rate = 0.01
seed = 11

[validation]
table = "{data}/default_credit_homo_test.csv"

[[parties]]
name = "bank_a"
role = "bank"
data = "{data}/default_credit_homo_guest.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "bank_b"
role = "bank"
data = "{data}/default_credit_homo_host_1.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "bank_c"
role = "bank"
data = "{data}/default_credit_homo_host_2.csv"
id-column = "id"
label-column = "y"
"""


def _holdout_auc(bundle_dir: Path, trusted_key: bytes, test_csv: Path) -> float:
    """Score the hold-out with a bank's signed bundle, outside the federation."""
    import torch

    arrays, meta = load_model_bundle(bundle_dir, [trusted_key])
    frame = pd.read_csv(test_csv)
    x = frame[meta["features"]].to_numpy(dtype=np.float64)
    x = (x - arrays["scaler.mean"]) / arrays["scaler.std"]
    net = ModelSpec.from_dict(meta["model"]).build(seed=0)
    net.load_state_arrays({k.removeprefix("net."): v for k, v in arrays.items() if k.startswith("net.")})
    with torch.no_grad():
        p = net.predict_proba(x)
    return auc(frame["y"].to_numpy(), p)


@pytest.fixture(scope="module")
def fedavg_runs(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("horizontal")
    fed_file = root / "federation.toml"
    fed_file.write_text(FEDERATION.format(data=default_credit_dir))
    fed = load_federation_file(fed_file)
    run_dir = root / "run"
    results = {}
    with LocalFederation(run_dir, party_settings_for(fed, run_dir), run_config_for(fed)) as federation:
        assert federation.tls
        for aggregation in ("ckks", "plain"):
            config = run_config_for(fed, aggregation=aggregation)
            config["fedrisk-run-id"] = f"e2e-{aggregation}"
            results[aggregation] = federation.run(run_config=config, timeout=900)
    return run_dir, results, default_credit_dir


def test_encrypted_fedavg_matches_plaintext(fedavg_runs):
    run_dir, results, data_dir = fedavg_runs
    he, plain = results["ckks"], results["plain"]
    auc_he = weighted_final_metrics(he["final"])["auc_federated"]
    auc_plain = weighted_final_metrics(plain["final"])["auc_federated"]
    assert auc_he >= 0.72
    assert abs(auc_he - auc_plain) <= 0.002

    # The same figure recomputed outside the federation from a bank's signed bundle.
    identity = run_dir / "parties" / "bank_a"
    from fedrisk.crypto.signing import SigningIdentity

    key = SigningIdentity.load(identity / "identity_ed25519.key").public_key_bytes
    bundle = Path(he["final"]["bank_a"]["bundle"])
    assert abs(_holdout_auc(bundle, key, data_dir / "default_credit_homo_test.csv") - auc_he) < 1e-6


def test_coordinator_never_held_a_secret_key(fedavg_runs):
    run_dir, results, _ = fedavg_runs
    he = results["ckks"]
    assert he["key_holder"] == "bank_a"
    # Only the banks keep a secret aggregation context, each 0600 in its own folder.
    for bank in ("bank_a", "bank_b", "bank_c"):
        secret = run_dir / "parties" / bank / "ckks_aggregation.secret"
        assert secret.exists()
        assert secret.stat().st_mode & 0o777 == 0o600
    assert not list((run_dir / "coordinator").glob("*.secret"))


def test_every_update_crossing_the_party_line_was_a_ciphertext(fedavg_runs):
    _, results, _ = fedavg_runs
    he = results["ckks"]
    # The coordinator's aggregator refuses anything but ciphertext in CKKS mode;
    # each round therefore completed only on ciphertexts, ~16 bytes per parameter
    # (two values per complex CKKS slot) against 8 for plaintext float64.
    n_params = he["n_params"]
    per_round = he["rounds"][-1]["bytes"]
    # 3 updates up + 3 aggregates down (+ the stats aggregate) per round.
    assert per_round / (6 * n_params) > 12
    assert he["key_fingerprint"] != "-"


def test_ledgers_of_the_encrypted_run_verify_and_the_plaintext_run_is_flagged(fedavg_runs):
    from fedrisk.audit import verify_run
    from fedrisk.audit.run_files import collect_ledgers

    run_dir, _, _ = fedavg_runs
    ledgers, keys = collect_ledgers([run_dir])
    assert len(ledgers) == 4  # the coordinator and three banks, each its own file
    assert keys is not None and set(keys) == {"coordinator", "bank_a", "bank_b", "bank_c"}
    assert verify_run(ledgers, trusted_keys=keys, run_id="e2e-ckks") == []
    plain = verify_run(ledgers, trusted_keys=keys, run_id="e2e-plain")
    assert plain and {f.field for f in plain} == {"content_class"}
    assert all("plaintext crossed the party line" in f.message for f in plain)
