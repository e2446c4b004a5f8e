"""Vertical logistic regression over CKKS: accuracy on the real split, privacy of the payloads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tenseal as ts
from scipy.stats import ks_2samp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from fedrisk.crypto.encrypted_matvec import context_fingerprint, decrypt_ciphertexts
from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError
from fedrisk.models.metrics import auc, ks
from fedrisk.models.vertical_lr import (
    PAYLOAD_TYPES,
    CoordinatorLR,
    EncryptedMaskedGradient,
    EncryptedResidual,
    EncryptedScores,
    EncryptedScoreSum,
    EpochControl,
    FeatureHolderLR,
    LabelHolderLR,
    MaskedGradient,
    TrainingPlan,
    WireRecord,
    content_class_of,
    make_context,
    train_vertical_lr,
)

BANK, TAX = "bank", "tax_bureau"


@pytest.fixture(scope="module")
def context() -> ts.Context:
    return make_context()


@pytest.fixture(scope="module")
def credit(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id")
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id")
    train_ids, test_ids = train_test_split(guest.index.to_numpy(), stratify=guest["y"], random_state=42, test_size=0.2)
    return guest, host, train_ids, test_ids


@pytest.fixture(scope="module")
def trained(credit, context):
    guest, host, train_ids, _ = credit
    transcript: list[WireRecord] = []
    model = train_vertical_lr(
        guest.loc[train_ids], {TAX: host.loc[train_ids]}, context=context, transcript=transcript, keep_bytes=True, max_epochs=30
    )
    return model, transcript


# --------------------------------------------------------------------------- accuracy


def test_federated_auc_matches_scikit_learn_on_the_joined_table(credit, trained):
    guest, host, train_ids, test_ids = credit
    model, _ = trained
    joined = guest.join(host.add_prefix("host_"))
    features = [c for c in joined.columns if c != "y"]
    sk = LogisticRegression(max_iter=5000).fit(joined.loc[train_ids, features], joined.loc[train_ids, "y"])
    y_test = guest.loc[test_ids, "y"].to_numpy()
    auc_sklearn = roc_auc_score(y_test, sk.predict_proba(joined.loc[test_ids, features])[:, 1])
    p = model.predict_proba(guest.loc[test_ids], {TAX: host.loc[test_ids]})[:, 1]
    auc_federated = auc(y_test, p)
    assert abs(auc_sklearn - 0.714) < 0.002  # the README's reference figure
    assert abs(auc_federated - auc_sklearn) <= 0.003
    # the encrypted scoring path and the plaintext one agree
    p_plain = model.predict_proba(guest.loc[test_ids], {TAX: host.loc[test_ids]}, secure=False)[:, 1]
    np.testing.assert_allclose(p, p_plain, atol=1e-5)
    record = model.model_record()
    assert record["parts"] == {BANK: 13, TAX: 10}
    assert model.n_epochs_ <= 30 and model.bytes_per_epoch_ > 0


# --------------------------------------------------------------------------- privacy on the wire


def _records(transcript, **match):
    return [r for r in transcript if all(getattr(r, k) == v for k, v in match.items())]


def test_every_payload_is_declared_and_relayed_with_its_content_class(trained):
    _, transcript = trained
    assert transcript
    for rec in transcript:
        cls = PAYLOAD_TYPES[rec.data[5:9]]
        assert rec.content_class == cls.content_class == content_class_of(rec.data)
        assert rec.n_bytes == len(rec.data)


def test_bank_receives_only_aggregates_and_ciphertexts(trained):
    _, transcript = trained
    to_bank = _records(transcript, receiver=BANK)
    assert {r.kind for r in to_bank} == {"EncryptedScoreSum", "EncryptedMaskedGradient"}
    assert {r.content_class for r in to_bank} <= {"aggregate", "ciphertext"}
    assert {r.content_class for r in _records(transcript, sender=TAX, receiver=BANK)} == {"ciphertext"}


def test_masked_gradient_hides_the_true_gradient(trained, context):
    model, transcript = trained
    holder = model.feature_holders_[TAX]
    last = model.n_epochs_ - 1
    (sent,) = _records(transcript, sender=TAX, receiver=BANK, epoch=last)
    (returned,) = _records(transcript, sender=BANK, receiver=TAX, kind="MaskedGradient", epoch=last)
    true_gradient = holder.last_gradient_  # X_kᵀd, known only to the feature holder
    masked = MaskedGradient.from_bytes(returned.data, context=context).values
    assert np.median(np.abs(masked)) > 2.0**30  # slots are ~2^36 masks, true partial sums are < 2^10
    # the per-feature sums the bank could form differ from the gradient by a huge mask
    per_feature = holder.layout_.unpack(masked)
    assert np.min(np.abs(per_feature - true_gradient)) > 1e6
    # and neither the ciphertexts nor anything else the bank got carries it as float64
    for rec in _records(transcript, receiver=BANK):
        assert not any(np.float64(g).tobytes() in rec.data for g in true_gradient)
    emg = EncryptedMaskedGradient.from_bytes(sent.data, context=context)
    assert emg.party == TAX and emg.nbytes > 100_000


def test_feature_holders_receive_ciphertexts_public_bits_and_their_own_masked_gradient(trained):
    model, transcript = trained
    to_holder = _records(transcript, receiver=TAX)
    assert {r.content_class for r in to_holder} == {"ciphertext", "public", "masked"}
    for rec in to_holder:
        if rec.content_class == "ciphertext":
            assert rec.kind == "EncryptedResidual"
        if rec.content_class == "masked":
            assert MaskedGradient.from_bytes(rec.data).party == TAX
    # the residual is readable by nobody but the key holder
    rec = _records(transcript, receiver=TAX, kind="EncryptedResidual")[0]
    residual = EncryptedResidual.from_bytes(rec.data)
    holder_context = model.feature_holders_[TAX].context
    assert not holder_context.is_private()
    with pytest.raises(CryptoError):
        decrypt_ciphertexts(holder_context, residual.ciphertexts)


def test_coordinator_holds_no_secret_key(trained, context):
    model, transcript = trained
    coordinator = model.coordinator_
    assert not coordinator.context.is_private()
    with pytest.raises(ValueError):
        ts.ckks_vector(coordinator.context, [1.0, 2.0]).decrypt()
    rec = _records(transcript, sender=TAX, receiver="coordinator")[0]
    with pytest.raises(CryptoError):
        decrypt_ciphertexts(coordinator.context, EncryptedScores.from_bytes(rec.data).ciphertexts)
    with pytest.raises(CryptoError):
        CoordinatorLR(context, label_holder=BANK, feature_holders=[TAX])


def test_relay_enforces_routes_and_contexts(trained):
    model, transcript = trained
    coordinator = model.coordinator_
    masked = _records(transcript, kind="MaskedGradient")[0].data
    scores = _records(transcript, kind="EncryptedScores")[0].data
    with pytest.raises(ProtocolError):
        coordinator.relay(TAX, BANK, masked)  # a masked value never travels to the bank
    with pytest.raises(ProtocolError):
        coordinator.relay(BANK, TAX, scores)
    foreign = EpochControl(context_fingerprint(make_context(galois=False)), 0, False, False, False)
    with pytest.raises(ContextMismatchError):
        coordinator.relay(BANK, TAX, foreign.to_bytes())


def test_bank_decrypts_each_product_once(trained, context):
    model, transcript = trained
    bank = model.label_holder_
    rec = _records(transcript, kind="EncryptedMaskedGradient")[0]
    with pytest.raises(ProtocolError):  # training is over: no epoch is open for decryption
        bank.decrypt_gradient(EncryptedMaskedGradient.from_bytes(rec.data, context=context))


def test_payloads_round_trip(context):
    fp = context_fingerprint(context)
    plan = TrainingPlan(fp, BANK, (TAX, "platform"), np.array([True, False, True] * 5), 1e-4, 3.0, 20)
    back = TrainingPlan.from_bytes(plan.to_bytes(), context=context)
    assert back.feature_holders == plan.feature_holders and np.array_equal(back.train_mask, plan.train_mask)
    ctl = EpochControl(fp, 3, True, False, True)
    assert EpochControl.from_bytes(ctl.to_bytes()) == ctl
    mg = MaskedGradient(fp, TAX, 2, np.arange(8.0))
    np.testing.assert_array_equal(MaskedGradient.from_bytes(mg.to_bytes()).values, mg.values)
    with pytest.raises(ProtocolError):
        EpochControl.from_bytes(mg.to_bytes())
    assert {cls.content_class for cls in PAYLOAD_TYPES.values()} == {"ciphertext", "masked", "public", "aggregate"}


# --------------------------------------------------------------------------- coverage and early stopping


def test_partial_coverage_trains_and_uses_the_indicator(credit, context):
    guest, host, train_ids, test_ids = credit
    rng = np.random.default_rng(7)
    # thin files default more often: the tax bureau knows 60 % of SMEs, fewer of the defaulters
    y = guest["y"]
    keep = rng.random(len(guest)) < np.where(y.to_numpy() == 1, 0.45, 0.64)
    covered = host.loc[keep]
    train_share = keep[guest.index.get_indexer(train_ids)].mean()
    assert 0.55 < train_share < 0.65
    model = train_vertical_lr(
        guest.loc[train_ids], {TAX: covered.loc[covered.index.intersection(train_ids)]}, context=context, max_epochs=25
    )
    bank = model.label_holder_
    assert bank.feature_names_[-1] == f"covered:{TAX}"
    indicator = bank.coef_[-1]
    assert indicator < -0.05  # covered SMEs are safer: the indicator carries weight
    y_test = guest.loc[test_ids, "y"].to_numpy()
    test_cover = covered.loc[covered.index.intersection(test_ids)]
    p = model.predict_proba(guest.loc[test_ids], {TAX: test_cover})[:, 1]
    bank_only = LogisticRegression(max_iter=5000).fit(guest.loc[train_ids].drop(columns="y"), guest.loc[train_ids, "y"])
    auc_bank_only = roc_auc_score(y_test, bank_only.predict_proba(guest.loc[test_ids].drop(columns="y"))[:, 1])
    assert auc(y_test, p) > auc_bank_only + 0.02


def test_early_stopping_keeps_the_best_epoch(context):
    rng = np.random.default_rng(0)
    n = 2000
    train = np.ones(n, dtype=bool)
    train[rng.permutation(n)[:600]] = False
    a, delta = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(a + 2 * delta)))).astype(int)
    # the signal δ lives in the cross-party direction c − a, learnt slowly, and is
    # reversed on the validation rows: validation AUC peaks early, then falls
    c = a + 0.1 * np.where(train, delta, -delta)
    bank, holder = pd.DataFrame({"a": a, "y": y}), pd.DataFrame({"c": c})
    model = train_vertical_lr(bank, {"fh": holder}, context=context, max_epochs=40, patience=3, tol=0, train_mask=train)
    val_auc = [h["val_auc"] for h in model.history_]
    val_loss = [h["val_loss"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmin(val_loss))  # log-loss chooses: PDs must be calibrated
    assert model.best_epoch_ < model.n_epochs_ == model.best_epoch_ + 3
    assert val_loss[-1] > val_loss[model.best_epoch_] + 0.001
    z = model.decision_function(bank[~train], {"fh": holder[~train]})
    assert auc(y[~train], z) == pytest.approx(val_auc[model.best_epoch_], abs=1e-3)


# --------------------------------------------------------------------------- metrics


def test_auc_and_ks_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(11)
    y = (rng.random(3000) < 0.25).astype(int)
    for scores in (rng.normal(size=3000) + y, np.round(rng.normal(size=3000) + y, 1)):  # continuous, heavy ties
        assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(y, scores)
        assert ks(y, scores) == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-12)
        assert ks(y, scores) == pytest.approx(ks_2samp(scores[y == 1], scores[y == 0]).statistic, abs=1e-12)
    with pytest.raises(ValueError):
        auc(np.zeros(5), np.arange(5.0))


def test_bank_refuses_to_decrypt_something_that_is_not_a_product(credit, context):
    guest, host, train_ids, _ = credit
    ids = train_ids[:3000]
    bank = LabelHolderLR(context, max_epochs=3)
    plan = bank.setup(guest.loc[ids].drop(columns="y").to_numpy(), guest.loc[ids, "y"].to_numpy(), {TAX: np.ones(len(ids), bool)})
    public = ts.context_from(context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True))
    holder = FeatureHolderLR(public, name=TAX)
    holder.setup(host.loc[ids].to_numpy(), np.ones(len(ids), bool), plan)
    bank.record_feature_count(TAX, holder.n_features_in_, holder.layout_.n_ciphertexts)
    scores = holder.scores()
    total = EncryptedScoreSum(scores.fingerprint, TAX, 0, scores.n_values, scores.ciphertexts)
    control, residual = bank.receive_scores(total)
    holder.control(control)
    # an actively cheating holder echoes the encrypted residual back as its "product"
    n_products = holder.layout_.n_ciphertexts
    echo = (residual.ciphertexts * n_products)[:n_products]
    cheat = EncryptedMaskedGradient(residual.fingerprint, TAX, 0, n_products * 4096, echo)
    with pytest.raises(ProtocolError, match="not a packed product"):
        bank.decrypt_gradient(cheat)
    with pytest.raises(ProtocolError, match="announced"):
        bank.decrypt_gradient(EncryptedMaskedGradient(residual.fingerprint, TAX, 0, 4096, echo[:1] * (n_products + 1)))
    honest = holder.gradient(residual)
    holder.update(bank.decrypt_gradient(honest))
    with pytest.raises(ProtocolError):  # once per epoch
        bank.decrypt_gradient(honest)
    holder.close()
