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

from fedrisk.crypto.ckks import KeyHolderContext
from fedrisk.crypto.encrypted_matvec import EncryptedVector, context_fingerprint, decrypt_ciphertexts
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
def context() -> KeyHolderContext:
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
    model = train_vertical_lr(guest.loc[train_ids], {TAX: host.loc[train_ids]}, context=context, transcript=transcript, keep_bytes=True, max_epochs=30)
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
    assert masked.shape == true_gradient.shape == (10,)  # one value per feature, no more
    assert np.median(np.abs(masked)) > 2.0**40  # masks are uniform in ±2^46, true sums are < 2^15
    assert np.min(np.abs(masked - true_gradient)) > 1e6
    # and neither the ciphertexts nor anything else the bank got carries it as float64 (an exact 0.0 — the
    # unmasked values are multiples of about 2^-8, so one comes out 0 in roughly one run in ten — is eight
    # zero bytes, which every SEAL ciphertext header holds: not a finding)
    for rec in _records(transcript, receiver=BANK):
        assert not any(np.float64(g).tobytes() in rec.data for g in true_gradient if g != 0.0)
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
    assert not holder_context.is_key_holder and not holder_context.tenseal_context.is_private()
    with pytest.raises(CryptoError):
        decrypt_ciphertexts(holder_context, residual.ciphertexts)


def test_coordinator_holds_no_secret_key(trained, context):
    model, transcript = trained
    coordinator = model.coordinator_
    assert not coordinator.context.is_key_holder and not coordinator.context.tenseal_context.is_private()
    with pytest.raises(ValueError):
        ts.ckks_vector(coordinator.context.tenseal_context, [1.0, 2.0]).decrypt()
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
    model = train_vertical_lr(guest.loc[train_ids], {TAX: covered.loc[covered.index.intersection(train_ids)]}, context=context, max_epochs=25)
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
    public = context.public_context()
    holder = FeatureHolderLR(public, name=TAX)
    holder.setup(host.loc[ids].to_numpy(), np.ones(len(ids), bool), plan)
    bank.record_feature_count(TAX, holder.n_features_in_, holder.layout_.n_ciphertexts)
    scores = holder.scores()
    total = EncryptedScoreSum(scores.fingerprint, TAX, 0, scores.n_values, scores.ciphertexts)
    control, residual = bank.receive_scores(total)
    holder.control(control)
    # an actively cheating holder echoes the encrypted residual back as its "product"
    n_products = holder.layout_.n_ciphertexts
    sizes = holder.layout_.group_sizes
    echo = (residual.ciphertexts * n_products)[:n_products]
    cheat = EncryptedMaskedGradient(residual.fingerprint, TAX, 0, 10, echo, sizes)
    with pytest.raises(ProtocolError, match="not a packed product"):
        bank.decrypt_gradient(cheat)
    with pytest.raises(ProtocolError, match="announced"):  # same values, more ciphertexts than announced at setup
        bank.decrypt_gradient(EncryptedMaskedGradient(residual.fingerprint, TAX, 0, 10, echo[:1] * 5, (2, 2, 2, 2, 2)))
    honest = holder.gradient(residual)
    holder.update(bank.decrypt_gradient(honest))
    with pytest.raises(ProtocolError):  # once per epoch
        bank.decrypt_gradient(honest)
    holder.close()


# --------------------------------------------------------------------------- what a feature holder gets back
#
# The reviewer's attack: a feature holder knows its own rows, the masks it added and
# which rows feed each value it gets back, so every returned value is one linear
# equation in the residual d (d = σ(z) − y on the training rows). With one value per
# slot (the packing's partial sums) it has thousands of equations and solves for d;
# with one value per feature it has m, and d — hence the labels — stays hidden.

ATTACK_ROWS = 3000
SLOTS = 4096


def _parse_returned(data: bytes) -> tuple[dict, list[bytes]]:
    """Parse a frame by hand (magic, version, kind, fingerprint, JSON header, blobs): trust no class."""
    import json
    import struct

    assert data[:4] == b"FRSK" and data[4] == 2  # 16-byte fingerprint from byte 9
    (hlen,) = struct.unpack_from("<I", data, 25)
    header = json.loads(data[29 : 29 + hlen])
    pos = 29 + hlen
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    blobs = []
    for _ in range(count):
        (blen,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        blobs.append(data[pos : pos + blen])
        pos += blen
    assert pos == len(data)
    return header, blobs


def _numbers(value) -> list:
    """Every number in a JSON value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [x for v in items for x in _numbers(v)]


def _equations(Z, sizes, received, offsets, *, per_feature: bool, reduced: bool = True):
    """The feature holder's linear system in d: one row per value it received.

    ``per_feature``: value f is Σ_rows Z[row, f]·d[row] plus its mask — the mean of
    its slot offsets if the product was reduced (every slot a total, one shared
    mask), their sum if the bank summed the slots. Otherwise (one value per slot, interleaved layout of
    :mod:`fedrisk.crypto.encrypted_matvec`): slot t of a group of F features holds
    feature (t mod F) over rows c·S + ((t + k) mod S), k < F, plus the slot's own mask.
    """
    from scipy import sparse

    n, _ = Z.shape
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if per_feature:
        per_slot = [offsets[g * SLOTS : (g + 1) * SLOTS].reshape(SLOTS // F, F) for g, F in enumerate(sizes)]
        masks = np.concatenate([s.mean(axis=0) if reduced else s.sum(axis=0) for s in per_slot])
        return sparse.csr_matrix(Z.T), received - masks
    rows, cols, vals = [], [], []
    t = np.arange(SLOTS)
    for g, (start, F) in enumerate(zip(starts, sizes)):
        for c in range(-(-n // SLOTS)):
            for k in range(F):
                r = c * SLOTS + (t + k) % SLOTS
                ok = r < n
                rows.append(g * SLOTS + t[ok])
                cols.append(r[ok])
                vals.append(Z[r[ok], start + t[ok] % F])
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(sizes) * SLOTS, n))
    return A, received - offsets


def _attack(A, b, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Least squares for d, then labels: y = 1 where d < 0 (by sign, or the base-rate share of the most negative)."""
    from scipy.sparse.linalg import lsqr

    d_hat = lsqr(A, b, atol=1e-14, btol=1e-14, iter_lim=20_000)[0]
    by_sign = (d_hat < 0).astype(int)
    k = int(round(y.mean() * y.size))
    by_rank = np.zeros(y.size, dtype=int)
    by_rank[np.argsort(d_hat)[:k]] = 1
    return max(float((by_sign == y).mean()), float((by_rank == y).mean())), d_hat


def _one_epoch(credit, secret, galois: bool):
    """A real epoch 0 (real ciphertexts, every payload serialised); returns what each side holds."""
    guest, host, train_ids, _ = credit
    ids = train_ids[:ATTACK_ROWS]
    bank = LabelHolderLR(secret, name=BANK, max_epochs=3, random_state=0)
    plan = bank.setup(guest.loc[ids].drop(columns="y").to_numpy(), guest.loc[ids, "y"].to_numpy(), {TAX: np.ones(len(ids), bool)})
    public = secret.public_context(minimal=not galois)
    holder = FeatureHolderLR(public, name=TAX)
    holder.setup(host.loc[ids].to_numpy(), np.ones(len(ids), bool), TrainingPlan.from_bytes(plan.to_bytes(), context=public))
    bank.record_feature_count(TAX, holder.n_features_in_, holder.layout_.n_ciphertexts)
    scores = EncryptedScores.from_bytes(holder.scores().to_bytes(), context=secret)
    total = EncryptedScoreSum(scores.fingerprint, TAX, 0, scores.n_values, scores.ciphertexts)
    control, residual = bank.receive_scores(EncryptedScoreSum.from_bytes(total.to_bytes(), context=secret))
    holder.control(EpochControl.from_bytes(control.to_bytes(), context=public))
    product = holder.gradient(EncryptedResidual.from_bytes(residual.to_bytes(), context=public)).to_bytes()
    returned = bank.decrypt_gradient(EncryptedMaskedGradient.from_bytes(product, context=secret)).to_bytes()
    y_train = guest.loc[ids, "y"].to_numpy()[plan.train_mask]
    return bank, holder, returned, y_train


def _margin(base: float, n: int) -> float:
    """Four standard errors of an accuracy near the base rate on n labels."""
    return 4.0 * float(np.sqrt(base * (1.0 - base) / n))


@pytest.fixture(scope="module")
def no_galois_context() -> KeyHolderContext:
    return make_context(galois=False)


@pytest.mark.parametrize("galois", [True, False], ids=["packed", "no-galois-fallback"])
def test_feature_holder_gets_one_value_per_feature_and_cannot_solve_for_d(credit, context, no_galois_context, galois):
    secret = context if galois else no_galois_context
    _, holder, returned, y = _one_epoch(credit, secret, galois)
    m = holder.n_features_in_
    header, blobs = _parse_returned(returned)
    assert all(len(b) % 8 == 0 for b in blobs)
    floats = np.concatenate([np.frombuffer(b, dtype="<f8") for b in blobs])
    assert floats.size == m == 10  # exactly its m gradient values, nothing else
    assert sorted(_numbers(header)) == sorted([header["epoch"], header["n"]]) and header["n"] == m  # no numbers hide in the header
    Z = holder._Z[holder._train]  # the feature holder's own rows, in d's order
    A, b = _equations(Z, holder.layout_.group_sizes, floats, holder._mask.offsets, per_feature=True, reduced=galois)
    accuracy, _ = _attack(A, b, y)
    base = max(y.mean(), 1 - y.mean())
    assert accuracy <= base + _margin(base, y.size), (accuracy, base)
    holder.update(MaskedGradient.from_bytes(returned, context=holder.context))  # and the epoch completes
    assert np.all(np.isfinite(holder.last_gradient_))
    holder.close()


@pytest.mark.parametrize("galois", [True, False], ids=["packed", "no-galois-fallback"])
def test_the_attack_recovers_the_labels_when_every_slot_is_returned(credit, context, no_galois_context, galois, monkeypatch):
    """Mutation: plant the old behaviour — the bank returns every decrypted slot, and the
    packed product keeps per-slot partial sums — and the same attack reads the labels."""
    import functools

    import fedrisk.models.vertical_lr as vlr
    from fedrisk.crypto.encrypted_matvec import EncryptedMatVec

    monkeypatch.setattr(vlr, "reduce_product", lambda values, sizes, slots, reduced: np.asarray(values))
    if galois:
        monkeypatch.setattr(vlr, "EncryptedMatVec", functools.partial(EncryptedMatVec, reduce=False))
    secret = context if galois else no_galois_context
    _, holder, returned, y = _one_epoch(credit, secret, galois)
    _, blobs = _parse_returned(returned)
    floats = np.concatenate([np.frombuffer(b, dtype="<f8") for b in blobs])
    assert floats.size == holder.layout_.n_ciphertexts * SLOTS
    Z = holder._Z[holder._train]
    A, b = _equations(Z, holder.layout_.group_sizes, floats, holder._mask.offsets, per_feature=False)
    accuracy, _ = _attack(A, b, y)
    assert accuracy > 0.95, accuracy
    holder.close()


def _epoch_zero(credit, secret, **bank_params):
    guest, host, train_ids, _ = credit
    ids = train_ids[:2000]
    bank = LabelHolderLR(secret, max_epochs=3, **bank_params)
    plan = bank.setup(guest.loc[ids].drop(columns="y").to_numpy(), guest.loc[ids, "y"].to_numpy(), {TAX: np.ones(len(ids), bool)})
    public = secret.public_context()
    holder = FeatureHolderLR(public, name=TAX)
    holder.setup(host.loc[ids].to_numpy(), np.ones(len(ids), bool), plan)
    bank.record_feature_count(TAX, holder.n_features_in_, holder.layout_.n_ciphertexts)
    scores = holder.scores()
    control, residual = bank.receive_scores(EncryptedScoreSum(scores.fingerprint, TAX, 0, scores.n_values, scores.ciphertexts))
    holder.control(control)
    return bank, holder, residual


def test_bank_refuses_a_product_declaring_more_values_than_the_feature_count(credit, context):
    import dataclasses

    bank, holder, residual = _epoch_zero(credit, context)
    honest = holder.gradient(residual)
    m = holder.n_features_in_
    assert honest.groups == (8, 2) and honest.n_values == m == 10
    # one more value than m: by the declared count, or by the groups' sizes
    with pytest.raises(ProtocolError, match="returning 11 values, more than its 10 features"):
        bank.decrypt_gradient(dataclasses.replace(honest, n_values=m + 1))
    with pytest.raises(ProtocolError, match="returning 16 values, more than its 10 features"):
        bank.decrypt_gradient(dataclasses.replace(honest, groups=(8, 8)))
    with pytest.raises(ProtocolError, match="returning 4096 values"):  # the old per-slot return
        bank.decrypt_gradient(dataclasses.replace(honest, groups=(4096,), ciphertexts=honest.ciphertexts[:1]))
    # a layout that is not a power-of-two group with F·L = S
    with pytest.raises(ProtocolError, match="powers of two"):
        bank.decrypt_gradient(dataclasses.replace(honest, groups=(6, 4)))
    with pytest.raises(ProtocolError, match="powers of two"):
        bank.decrypt_gradient(dataclasses.replace(honest, groups=(8192,)))
    with pytest.raises(ProtocolError, match="fixed at setup is 10"):
        bank.decrypt_gradient(dataclasses.replace(honest, groups=(8,), n_values=8, ciphertexts=honest.ciphertexts[:1]))
    # the count is fixed once: a feature holder cannot raise it later
    with pytest.raises(ProtocolError, match="fixed at 10"):
        bank.record_feature_count(TAX, 11)
    # a count as large as the training rows would let one product determine d
    guest, _, train_ids, _ = credit
    small = LabelHolderLR(context)
    ids = train_ids[:400]
    small.setup(guest.loc[ids].drop(columns="y").to_numpy(), guest.loc[ids, "y"].to_numpy(), {TAX: np.ones(400, bool)})
    with pytest.raises(ProtocolError, match="training rows"):
        small.record_feature_count(TAX, small.n_train_)
    # none of the refusals used up the epoch: the honest product is still answered, with m values
    masked = bank.decrypt_gradient(honest)
    assert masked.values.shape == (m,)
    holder.update(masked)
    holder.close()


def test_a_product_falsely_declared_reduced_still_yields_no_partial_sum(credit, context):
    """A feature holder that skips the rotate-and-sum but declares its product reduced gets
    back, per feature, the mean of its L slots: total / L — never a slot's partial sum."""
    from fedrisk.crypto.encrypted_matvec import EncryptedMatVec

    bank, holder, residual = _epoch_zero(credit, context, flood_std=0.0)  # no flooding: compare exactly
    holder.close()
    Z = holder._Z[holder._train]
    sizes = holder.layout_.group_sizes
    with EncryptedMatVec(Z, holder.context, reduce=False) as lazy:  # partial sums in every slot
        blobs, state = lazy.mask(lazy.compute(EncryptedVector(residual.fingerprint, residual.n_values, residual.ciphertexts)))
    lie = EncryptedMaskedGradient(residual.fingerprint, TAX, 0, 10, tuple(blobs), sizes, True)
    got = bank.decrypt_gradient(lie).values
    masks = np.concatenate([state.offsets[g * 4096 : (g + 1) * 4096].reshape(-1, F).mean(axis=0) for g, F in enumerate(sizes)])
    d = decrypt_ciphertexts(context, residual.ciphertexts, residual.n_values)  # the bank's own view of d
    copies = 4096 // np.repeat(sizes, sizes)  # L of each feature
    np.testing.assert_allclose(got - masks, Z.T @ d / copies, atol=1e-3)
