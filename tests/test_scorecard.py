"""Vertical scorecard bundles: each party's part alone, signed, and scoring exactly as the trained model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedrisk.crypto.signing import SigningIdentity
from fedrisk.errors import CryptoError, DataValidationError
from fedrisk.models.bundle import write_model_bundle
from fedrisk.models.scorecard import (
    FeatureHolderScorecard,
    LabelHolderScorecard,
    feature_holder_bundle,
    label_holder_bundle,
    load_scorecard,
)
from fedrisk.models.vertical_lr import make_context, train_vertical_lr

BANK, TAX = "bank", "tax_bureau"


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(3)
    n = 3000
    ids = [f"sme{i:05d}" for i in range(n)]
    xb = rng.normal(size=(n, 3))
    xt = rng.normal(size=(n, 4))
    z = xb @ [0.8, -0.5, 0.2] + xt @ [1.0, 0.0, -0.7, 0.3] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    bank = pd.DataFrame(xb, index=pd.Index(ids, name="id"), columns=["b0", "b1", "b2"]).assign(y=y)
    covered = rng.random(n) < 0.7
    tax = pd.DataFrame(xt, index=pd.Index(ids, name="id"), columns=["t0", "t1", "t2", "t3"])[covered]
    model = train_vertical_lr(bank, {TAX: tax}, context=make_context(), max_epochs=20)
    return model, bank, tax


def _write(tmp_path, name, arrays, meta):
    signer = SigningIdentity.generate()
    folder = write_model_bundle(tmp_path / name, arrays, meta, signer)
    return folder, signer.public_key_bytes


def test_bundles_score_exactly_as_the_trained_model(trained, tmp_path):
    model, bank, tax = trained
    lh_folder, lh_key = _write(tmp_path, "bank", *label_holder_bundle(model.label_holder_, run_id="r1"))
    fh_folder, fh_key = _write(tmp_path, "tax", *feature_holder_bundle(model.feature_holders_[TAX], run_id="r1", label_holder=BANK))
    lh = load_scorecard(lh_folder, [lh_key])
    fh = load_scorecard(fh_folder, [fh_key])
    assert isinstance(lh, LabelHolderScorecard) and isinstance(fh, FeatureHolderScorecard)

    expected = model.decision_function(bank, {TAX: tax}, secure=False)
    covered = bank.index.isin(tax.index)
    u = np.full(len(bank), np.nan)
    u[covered] = fh.partial_score(tax.loc[bank.index[covered]].to_numpy())
    got = lh.decision_function(bank.drop(columns="y").to_numpy(), {TAX: u})
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_each_bundle_holds_only_its_own_part(trained, tmp_path):
    model, _, _ = trained
    lh_folder, _ = _write(tmp_path, "bank", *label_holder_bundle(model.label_holder_, run_id="r1"))
    meta = json.loads((lh_folder / "model.json").read_text())
    assert meta["features"] == ["b0", "b1", "b2"]
    assert meta["feature_holders"] == {TAX: 4}  # a count, never the tax bureau's coefficients
    assert not any(name.startswith("t") for name in meta["features"])
    fh_folder, _ = _write(tmp_path, "tax", *feature_holder_bundle(model.feature_holders_[TAX], run_id="r1", label_holder=BANK))
    fh_meta = json.loads((fh_folder / "model.json").read_text())
    assert fh_meta["features"] == ["t0", "t1", "t2", "t3"]


def test_a_tampered_or_foreign_bundle_is_refused(trained, tmp_path):
    model, _, _ = trained
    folder, key = _write(tmp_path, "bank", *label_holder_bundle(model.label_holder_, run_id="r1"))
    with pytest.raises(CryptoError):
        load_scorecard(folder, [SigningIdentity.generate().public_key_bytes])
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CryptoError):
        load_scorecard(folder, [key])


def test_wrong_shapes_and_unknown_parties_are_clear_errors(trained):
    model, bank, _ = trained
    arrays, meta = label_holder_bundle(model.label_holder_, run_id="r1")
    from fedrisk.models.scorecard import scorecard_from_arrays

    lh = scorecard_from_arrays(arrays, meta)
    with pytest.raises(DataValidationError, match="reads 3 features"):
        lh.decision_function(np.zeros((2, 5)), {TAX: [0.1, None]})
    with pytest.raises(DataValidationError, match="not part of this model"):
        lh.decision_function(np.zeros((2, 3)), {TAX: [0.1, None], "platform": [0.0, 0.0]})
