"""Vertical SecureBoost through the fedrisk ServerApp and ClientApps (PSI, then encrypted boosting).

Same code as the Deployment Engine over :class:`~fedrisk.federation.inprocess.InProcessGrid`,
with a tap on every message that would cross a party line. The federated model,
rebuilt from the parties' signed bundles, is compared with the plaintext
single-machine reference of the same algorithm trained on the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedrisk.wire.exchange import read_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.wire.payload_batch import batch_items
from fedrisk.federation.server_app import app as server_app
from fedrisk.models.bundle import load_model_bundle
from fedrisk.models.secureboost import answer_splits, load_feature_holder_bundle, load_label_holder_bundle
from fedrisk.models.secureboost_tree import PlainSecureBoost
from fedrisk.parties.settings import PartySettings

GUEST_SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(13)}, "id_format": "opaque"}
HOST_SCHEMA = {"id_column": "id", "features": {f"x{i}": "float" for i in range(10)}, "id_format": "opaque"}
TREES, DEPTH = 6, 3


def _key(state_dir: Path) -> bytes:
    from fedrisk.crypto.signing import SigningIdentity

    return SigningIdentity.load(state_dir / "identity_ed25519.key").public_key_bytes


@pytest.fixture(scope="module")
def boosted(tmp_path_factory, default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id").iloc[:8000]
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").iloc[:8000]
    train_ids, test_ids = train_test_split(guest.index.to_numpy(), test_size=0.25, stratify=guest["y"], random_state=42)
    known = host.sample(frac=0.7, random_state=5).index  # the tax bureau knows 70 % of the SMEs
    covered = host.loc[known.intersection(train_ids)]  # ...and the federation trains on the training ones
    root = tmp_path_factory.mktemp("secureboost")
    guest.loc[train_ids].reset_index().to_csv(root / "guest.csv", index=False)
    covered.sample(frac=1.0, random_state=3).reset_index().to_csv(root / "host.csv", index=False)
    parties = [
        PartySettings("bank", "label_holder", str(root / "guest.csv"), GUEST_SCHEMA, str(root / "parties" / "bank"), {"fraction": 0.1, "seed": 1}),
        PartySettings("tax_bureau", "feature_holder", str(root / "host.csv"), HOST_SCHEMA, str(root / "parties" / "tax_bureau")),
    ]
    seen = []
    run_config = {
        "mode": "vertical",
        "algorithm": "secureboost",
        "trees": TREES,
        "depth": DEPTH,
        "run-dir": str(root),
        "parties": "bank,tax_bureau",
        "fedrisk-run-id": "sb",
        "party-timeout": 300.0,
    }
    server_app(
        InProcessGrid(parties, tap=lambda d, n, m: seen.append((d, m))), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)
    )
    result = json.loads((root / "coordinator" / "result.json").read_text())
    return root, result, seen, guest, host, covered, train_ids, test_ids, known


def test_federated_trees_score_the_hold_out_like_the_plaintext_reference(boosted):
    root, result, _, guest, host, covered, train_ids, test_ids, known = boosted
    assert result["status"] == "ok" and result["algorithm"] == "secureboost"
    from fedrisk.parties.alignment import read_alignment_report

    # The coordinator never learns the overlap; the label holder does, on its own side.
    assert "intersection" not in result
    assert read_alignment_report(root / "parties" / "bank", "sb")["intersection"] == {"tax_bureau": len(covered)}
    assert len(result["trees"]) == TREES

    arrays, meta = load_model_bundle(Path(result["bundles"]["bank"]), [_key(root / "parties" / "bank")])
    model = load_label_holder_bundle(arrays, meta)
    arrays, meta = load_model_bundle(Path(result["bundles"]["tax_bureau"]), [_key(root / "parties" / "tax_bureau")])
    routing = load_feature_holder_bundle(arrays, meta)
    # Score the hold-out as the scoring node will: the tax bureau answers its splits on its own rows.
    host_rows = host.reindex(test_ids).where(pd.Series(np.isin(test_ids, known), index=test_ids), axis=0)
    answers = answer_splits(routing, host_rows.to_numpy(), fingerprint=meta["context_fingerprint"])
    assert list(model.feature_names) == [f"x{i}" for i in range(13)]  # the declared order, kept
    z_fed = model.decision_function(guest.loc[test_ids, list(model.feature_names)].to_numpy(), {"tax_bureau": answers})

    # The same algorithm on one machine, on exactly the rows the bank trained on
    # (its table minus the validation rows it held out for the joint model's metrics).
    from fedrisk.data.datasplit import training_mask

    bank_rows = guest.loc[train_ids]
    rows = bank_rows.index[training_mask(bank_rows["y"].to_numpy(), {"fraction": 0.1, "seed": 1})]
    joined = bank_rows.loc[rows].drop(columns="y").join(covered.add_prefix("t_"), how="left")
    reference = PlainSecureBoost(n_trees=TREES, max_depth=DEPTH).fit(joined.to_numpy(), bank_rows.loc[rows, "y"].to_numpy())
    test_joined = guest.loc[test_ids].drop(columns="y").join(host_rows.add_prefix("t_"), how="left")
    z_ref = reference.model_.decision_function(test_joined.to_numpy())
    y = guest.loc[test_ids, "y"].to_numpy()
    auc_fed, auc_ref = roc_auc_score(y, z_fed), roc_auc_score(y, z_ref)
    print(f"hold-out AUC federated {auc_fed:.4f}, reference {auc_ref:.4f}, bank only {result['final']['auc_bank_only']:.4f}")
    assert auc_fed > 0.72
    # Same splits up to the gradients' quantisation in the gains: the scores agree to rounding.
    assert abs(auc_fed - auc_ref) < 0.002, (auc_fed, auc_ref)
    assert np.corrcoef(z_fed, z_ref)[0, 1] > 0.999
    assert result["final"]["auc_federated"] > result["final"]["auc_bank_only"]


def test_feature_holders_get_only_masked_histogram_ciphertexts_and_public_protocol_items(boosted):
    _, _, seen, *_ = boosted
    to_feature_holder, to_bank = set(), set()
    for direction, msg in seen:
        exchange = read_content(msg.content)
        header = exchange.header
        assert header.content_class != "plaintext"
        if header.step not in ("sb.round", "sb.bank"):
            continue
        for item in batch_items(exchange):
            (to_feature_holder if header.receiver == "tax_bureau" else to_bank).add((item.content_class, _kind(item.data)))
    # Feature holders: masked histograms under their own key (ciphertext) and public decisions/done.
    assert to_feature_holder <= {("ciphertext", "SMHB"), ("public", "SDEC"), ("public", "SDON")}
    assert ("ciphertext", "SMHB") in to_feature_holder
    # The bank: masked totals, the encrypted bins, public partitions/answers — never per-row values.
    assert to_bank <= {("masked", "SMTT"), ("public", "SPRT"), ("ciphertext", "SLAY"), ("public", "SANS")}
    assert ("masked", "SMTT") in to_bank


def _kind(data: bytes) -> str:
    from fedrisk.crypto.frames import peek_frame

    return peek_frame(data)[0].decode()


def test_ledgers_verify_and_record_every_round(boosted):
    from fedrisk.audit import verify_run
    from fedrisk.audit.run_files import collect_ledgers

    root, result, *_ = boosted
    ledgers, keys = collect_ledgers([root])
    assert verify_run(ledgers, trusted_keys=keys, run_id="sb") == []
    # a split on a feature holder's feature costs a partition round before the bank can evaluate its left child
    assert result["rounds"] <= TREES * (2 * DEPTH + 1) + 2
