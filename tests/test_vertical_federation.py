"""Vertical federation (PSI + encrypted logistic regression) through the fedrisk ServerApp and ClientApps.

The ServerApp and the parties' ClientApps run in one process over
:class:`~fedrisk.federation.inprocess.InProcessGrid`: the same code as the
Deployment Engine, minus the transport, with a tap that sees every message
that would cross a party line. Assertions are on those messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tenseal as ts
from flwr.app import Context, RecordDict
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedrisk.crypto.ckks import VERTICAL_LR, PublicContext
from fedrisk.errors import PartyUnavailableError
from fedrisk.wire.exchange import read_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.models.bundle import load_model_bundle
from fedrisk.models.scorecard import load_scorecard
from fedrisk.parties.settings import PartySettings

GUEST_SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(13)}, "id_format": "opaque"}
HOST_SCHEMA = {"id_column": "id", "features": {f"x{i}": "float" for i in range(10)}, "id_format": "opaque"}


def _signing_key(state_dir: Path) -> bytes:
    from fedrisk.crypto.signing import SigningIdentity

    return SigningIdentity.load(state_dir / "identity_ed25519.key").public_key_bytes


def _run(tmp_path: Path, parties: list[PartySettings], *, tap=None, grid_hook=None, **config) -> dict:
    run_config = {
        "mode": "vertical",
        "algorithm": "vertical_lr",
        "run-dir": str(tmp_path),
        "parties": ",".join(p.name for p in parties),
        "fedrisk-run-id": "vertical",
        "party-timeout": 120.0,
        **config,
    }
    grid = InProcessGrid(parties, tap=tap)
    if grid_hook is not None:
        grid_hook(grid)
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    return json.loads((tmp_path / "coordinator" / "result.json").read_text())


@pytest.fixture(scope="module")
def credit(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv")
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv")
    train_ids, test_ids = train_test_split(guest["id"].to_numpy(), test_size=0.2, stratify=guest["y"], random_state=42)
    return guest.set_index("id"), host.set_index("id"), train_ids, test_ids


@pytest.fixture(scope="module")
def federated(tmp_path_factory, credit):
    """The real vertical split: the parties hold only the 80 % training rows; the hold-out stays out."""
    guest, host, train_ids, _ = credit
    root = tmp_path_factory.mktemp("vertical")
    guest.loc[train_ids].reset_index().to_csv(root / "guest.csv", index=False)
    # The feature holder's table in its own order, as it would be.
    host.loc[train_ids].sample(frac=1.0, random_state=1).reset_index().to_csv(root / "host.csv", index=False)
    parties = [
        PartySettings("bank", "label_holder", str(root / "guest.csv"), GUEST_SCHEMA, str(root / "parties" / "bank"), {"fraction": 0.1, "seed": 3}),
        PartySettings("tax_bureau", "feature_holder", str(root / "host.csv"), HOST_SCHEMA, str(root / "parties" / "tax_bureau")),
    ]
    seen: list[tuple[str, int, object]] = []
    result = _run(root, parties, tap=lambda d, n, m: seen.append((d, n, m)), epochs=40)
    return root, result, seen


def test_federated_auc_on_the_hold_out_matches_scikit_learn_on_the_joined_table(federated, credit):
    root, result, _ = federated
    guest, host, train_ids, test_ids = credit
    from fedrisk.parties.alignment import read_alignment_report

    # The coordinator never learns the overlap; the label holder does, on its own side.
    assert result["status"] == "ok" and "intersection" not in result
    assert read_alignment_report(root / "parties" / "bank", "vertical")["intersection"] == {"tax_bureau": len(train_ids)}

    # Score the hold-out outside the federation with each party's signed bundle.
    bank = load_scorecard(Path(result["bundles"]["bank"]), [_signing_key(root / "parties" / "bank")])
    tax = load_scorecard(Path(result["bundles"]["tax_bureau"]), [_signing_key(root / "parties" / "tax_bureau")])
    partial = tax.partial_score(host.loc[test_ids, list(tax.features)].to_numpy())
    z = bank.decision_function(guest.loc[test_ids, list(bank.features)].to_numpy(), {"tax_bureau": partial})
    y_test = guest.loc[test_ids, "y"].to_numpy()
    auc_federated = roc_auc_score(y_test, z)

    joined = guest.merge(host, left_index=True, right_index=True, how="left", suffixes=("", "_tax"))
    features = [c for c in joined.columns if c != "y"]
    reference = LogisticRegression(max_iter=5000).fit(joined.loc[train_ids, features], joined.loc[train_ids, "y"])
    auc_reference = roc_auc_score(y_test, reference.predict_proba(joined.loc[test_ids, features])[:, 1])
    assert auc_reference > 0.70
    print(f"hold-out AUC federated {auc_federated:.5f}, scikit-learn {auc_reference:.5f}")
    assert abs(auc_federated - auc_reference) <= 0.003, (auc_federated, auc_reference)
    # and the federation beat the bank alone on its own validation rows
    assert result["final"]["auc_federated"] > result["final"]["auc_bank_only"] + 0.03


def test_every_message_across_the_party_line_is_ciphertext_masked_or_public(federated):
    _, result, seen = federated
    classes: dict[str, set[str]] = {"to_party": set(), "to_coordinator": set()}
    steps_with_data: dict[str, set[str]] = {}
    for direction, _, msg in seen:
        exchange = read_content(msg.content)
        header = exchange.header
        classes[direction].add(header.content_class)
        if exchange.blobs:
            assert header.content_class in {"ciphertext", "masked", "public", "aggregate"}
            steps_with_data.setdefault(header.content_class, set()).add(header.step)
            if header.content_class in {"ciphertext", "masked"}:
                assert header.key_fingerprint != "-", header
    assert "plaintext" not in classes["to_party"] | classes["to_coordinator"]
    # Public payloads are only the plan and the public contexts, and the label holder's
    # residual/scores/gradients never travel as anything but ciphertext or masked values.
    assert steps_with_data["public"] == {"vlr.plan", "vlr.join"}
    assert {"vlr.scores", "vlr.residual", "vlr.product", "vlr.products"} <= steps_with_data["ciphertext"]
    assert {"vlr.masked_products"} <= steps_with_data["masked"]
    assert steps_with_data["aggregate"] == {"vlr.score_sum"}


def test_the_feature_holder_receives_no_labels_and_the_coordinator_no_secret_key(federated, credit):
    _, result, seen = federated
    guest, _, train_ids, _ = credit
    labels = guest.loc[train_ids, "y"].to_numpy()
    label_patterns = {labels.astype("<f8").tobytes()[:4096], labels.astype(np.int8).tobytes()[:4096]}
    for direction, node_id, msg in seen:
        exchange = read_content(msg.content)
        if exchange.header.receiver == "tax_bureau":
            for blob in exchange.blobs.values():
                assert not any(p in blob for p in label_patterns)
        if exchange.header.step == "vlr.plan":
            coordinator = PublicContext.from_bytes(exchange.blob("coordinator_context"), expect=VERTICAL_LR).tenseal_context
            feature_holder = PublicContext.from_bytes(exchange.blob("feature_holder_context"), expect=VERTICAL_LR).tenseal_context
            assert feature_holder.has_galois_keys() and not coordinator.has_galois_keys()
            for context in (coordinator, feature_holder):
                assert not context.is_private()
                with pytest.raises(ValueError):
                    ts.ckks_vector(context, [1.0]).decrypt()


def test_psi_messages_hold_no_ids_nor_id_hashes(federated, credit):
    _, _, seen = federated
    _, _, train_ids, _ = credit
    probes = []
    for raw in train_ids[:200]:
        text = str(raw).encode()
        probes += [text, hashlib.sha256(text).digest()[:16]]
    for _, _, msg in seen:
        exchange = read_content(msg.content)
        if exchange.header.step.startswith("psi.") or exchange.header.step.startswith("vertical."):
            for blob in exchange.blobs.values():
                assert not any(p in blob for p in probes[1::2])  # no raw hashes of IDs
                assert exchange.header.content_class in {"masked", "ciphertext"}


def test_each_party_bundle_holds_only_its_own_block(federated):
    root, result, _ = federated
    arrays, meta = load_model_bundle(Path(result["bundles"]["bank"]), [_signing_key(root / "parties" / "bank")])
    assert meta["status"] == "final" and meta["feature_holders"] == {"tax_bureau": 10}
    assert arrays["coef"].shape == (13,)
    arrays, meta = load_model_bundle(Path(result["bundles"]["tax_bureau"]), [_signing_key(root / "parties" / "tax_bureau")])
    assert meta["features"] == [f"x{i}" for i in range(10)] and arrays["coef"].shape == (10,)


def test_ledgers_of_every_party_verify_with_zero_findings(federated):
    from fedrisk.audit import verify_run
    from fedrisk.audit.run_files import collect_ledgers

    root, _, _ = federated
    ledgers, keys = collect_ledgers([root])
    assert len(ledgers) == 3
    assert verify_run(ledgers, trusted_keys=keys, run_id="vertical") == []


# --------------------------------------------------------------------------- bad input


def _small_parties(tmp_path: Path, credit, *, host_frame=None, rows: int = 1200) -> list[PartySettings]:
    guest, host, train_ids, _ = credit
    ids = train_ids[:rows]
    guest.loc[ids].reset_index().to_csv(tmp_path / "guest.csv", index=False)
    frame = host.loc[ids].reset_index() if host_frame is None else host_frame
    frame.to_csv(tmp_path / "host.csv", index=False)
    return [
        PartySettings("bank", "label_holder", str(tmp_path / "guest.csv"), GUEST_SCHEMA, str(tmp_path / "parties" / "bank")),
        PartySettings("tax_bureau", "feature_holder", str(tmp_path / "host.csv"), HOST_SCHEMA, str(tmp_path / "parties" / "tax_bureau")),
    ]


def test_duplicate_ids_at_a_feature_holder_are_named(tmp_path, credit):
    _, host, train_ids, _ = credit
    frame = host.loc[train_ids[:300]].reset_index()
    frame.loc[17, "id"] = frame.loc[3, "id"]
    with pytest.raises(PartyUnavailableError, match=r"tax_bureau failed at step 'psi.blind'.*host.csv.*duplicate"):
        _run(tmp_path, _small_parties(tmp_path, credit, host_frame=frame))


def test_a_feature_holder_with_zero_overlap_is_a_clear_error(tmp_path, credit):
    _, host, _, test_ids = credit
    with pytest.raises(PartyUnavailableError, match="zero overlap"):
        _run(tmp_path, _small_parties(tmp_path, credit, host_frame=host.loc[test_ids[:300]].reset_index()))
    result = json.loads((tmp_path / "coordinator" / "result.json").read_text())
    assert result["status"] == "error" and "tax_bureau" in result["error"]


def test_a_party_that_leaves_mid_training_is_named_and_checkpoints_stay(tmp_path, credit):
    parties = _small_parties(tmp_path, credit)
    state = {}

    def leave_at_epoch_3(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step == "vlr.residual" and header.round == 3:
            state["grid"].offline.add(1001)  # the tax bureau's node

    with pytest.raises(PartyUnavailableError, match="tax_bureau"):
        _run(tmp_path, parties, tap=leave_at_epoch_3, grid_hook=lambda g: state.setdefault("grid", g), epochs=20, patience=50)
    # Both parties keep their block at the best epoch reached, signed and loadable.
    for party in ("bank", "tax_bureau"):
        folder = tmp_path / "parties" / party / "models" / "vertical"
        arrays, meta = load_model_bundle(folder, [_signing_key(tmp_path / "parties" / party)])
        assert meta["status"] == "checkpoint"
        assert np.any(arrays["coef"] != 0)


def test_vertical_validation_on_a_separate_table_is_refused(tmp_path):
    from fedrisk.errors import ConfigError
    from fedrisk.federation.federation_file import load_federation_file

    (tmp_path / "g.csv").write_text("id,y,x0\na,0,1\nb,1,2\n")
    (tmp_path / "h.csv").write_text("id,x0\na,1\n")
    (tmp_path / "f.toml").write_text(
        '[federation]\nmode = "vertical"\n[validation]\ntable = "g.csv"\n'
        '[[parties]]\nname = "bank"\nrole = "label_holder"\ndata = "g.csv"\nid-column = "id"\nlabel-column = "y"\n'
        '[[parties]]\nname = "tax"\nrole = "feature_holder"\ndata = "h.csv"\nid-column = "id"\n'
    )
    with pytest.raises(ConfigError, match=r"^validation.table: vertical"):
        load_federation_file(tmp_path / "f.toml")
