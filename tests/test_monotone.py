"""Monotone constraints declared by each feature's owner: vertical LR signs, SecureBoost directions.

The constraint must hold on the trained model (checked on a grid of each
constrained feature with every other feature held fixed, over real rows), and
the unconstrained model must break it on the same data — so the check can fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.errors import ConfigError
from fedrisk.models.secureboost import VerticalSecureBoost
from fedrisk.models.secureboost_tree import PlainSecureBoost
from fedrisk.models.vertical_lr import VerticalLogisticRegression

ROWS = 1500


def _violations(predict, frame: pd.DataFrame, feature: str, direction: int, grid: np.ndarray) -> int:
    preds = []
    for v in grid:
        g = frame.copy()
        g[feature] = v
        preds.append(predict(g))
    steps = np.diff(np.stack(preds), axis=0) * direction
    return int(np.sum(steps < -1e-12))


def _synthetic(seed: int = 1, n: int = 3000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    z = np.sin(2.5 * X[:, 0]) + X[:, 1] - X[:, 2] ** 2
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return X, y


def test_plain_secureboost_monotone_holds_and_fails_without_it():
    X, y = _synthetic()
    grid = np.linspace(-3, 3, 41)
    cols = ["x0", "x1", "x2", "x3"]
    frame = pd.DataFrame(X[:150], columns=cols)
    counts = {}
    for label, mono in (("free", None), ("constrained", {"x0": 1, "x2": -1})):
        m = PlainSecureBoost(n_trees=10, monotone=mono).fit(X, y)
        counts[label] = sum(_violations(lambda f: m.decision_function(f.to_numpy()), frame, c, d, grid) for c, d in (("x0", 1), ("x2", -1)))
    assert counts["constrained"] == 0
    assert counts["free"] > 100, counts  # the data is far from monotone: the check has teeth


@pytest.fixture(scope="module")
def tables(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id").iloc[:ROWS]
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    return guest, host


@pytest.mark.slow  # about 20-30 s: encrypted trees under constraints
def test_vertical_secureboost_enforces_each_owners_directions(tables):
    guest, host = tables
    # bank: BILL_AMT1 (x1) declared decreasing; tax bureau: LIMIT_BAL (x0) decreasing, AGE (x4) increasing
    mono = {"bank": {"x1": -1}, "tax_bureau": {"x0": -1, "x4": 1}}
    model = VerticalSecureBoost(n_trees=4, max_depth=3, n_bins=16, monotone=mono).fit(guest, {"tax_bureau": host})
    free = VerticalSecureBoost(n_trees=4, max_depth=3, n_bins=16).fit(guest, {"tax_bureau": host})
    rows = guest.index[:120]
    found = {}
    for name, m in (("constrained", model), ("free", free)):
        total = 0
        for party, feat, d in (("bank", "x1", -1), ("tax_bureau", "x0", -1), ("tax_bureau", "x4", 1)):
            src = guest if party == "bank" else host
            grid = np.quantile(src[feat], np.linspace(0, 1, 17))
            if party == "bank":
                pred = lambda g: m.decision_function(g, {"tax_bureau": host.loc[rows]})  # noqa: E731
                total += _violations(pred, guest.loc[rows], feat, d, grid)
            else:
                pred = lambda h: m.decision_function(guest.loc[rows], {"tax_bureau": h})  # noqa: E731
                total += _violations(pred, host.loc[rows], feat, d, grid)
        found[name] = total
    assert found["constrained"] == 0, found
    assert found["free"] > 0, found
    # and the constrained model still learns: it splits on features and beats the base rate
    assert model.model_.n_trees == 4


def test_vertical_lr_signs_are_projected_at_each_owner(tables):
    guest, host = tables
    free = VerticalLogisticRegression(max_epochs=8, validation_fraction=0.0).fit(guest, {"tax_bureau": host})
    bank_free = dict(zip(free.label_holder_.feature_names_, free.label_holder_.coef_, strict=False))
    host_free = dict(zip(host.columns, free.feature_holders_["tax_bureau"].coef_, strict=True))
    # declare the opposite of what the data wants for one feature per owner, and the natural sign for another
    fb = max(bank_free, key=lambda k: abs(bank_free[k]) if not k.startswith("covered:") else -1)
    fh = max(host_free, key=lambda k: abs(host_free[k]))
    other = next(k for k in host_free if k != fh and abs(host_free[k]) > 1e-3)
    signs = {"bank": {fb: -int(np.sign(bank_free[fb]))}, "tax_bureau": {fh: -int(np.sign(host_free[fh])), other: int(np.sign(host_free[other]))}}
    model = VerticalLogisticRegression(max_epochs=8, validation_fraction=0.0, monotone=signs).fit(guest, {"tax_bureau": host})
    bank_c = dict(zip(model.label_holder_.feature_names_, model.label_holder_.coef_, strict=False))
    host_c = dict(zip(host.columns, model.feature_holders_["tax_bureau"].coef_, strict=True))
    assert signs["bank"][fb] * bank_c[fb] >= 0.0
    assert signs["tax_bureau"][fh] * host_c[fh] >= 0.0
    assert signs["tax_bureau"][other] * host_c[other] > 0.0  # a natural sign stays free to move
    assert signs["bank"][fb] * bank_free[fb] < 0 and signs["tax_bureau"][fh] * host_free[fh] < 0  # they were violated


def test_bad_constraints_give_one_line(tables):
    guest, host = tables
    cases = [
        (lambda: VerticalLogisticRegression(max_epochs=1, monotone={"tax_bureau": {"nope": 1}}).fit(guest, {"tax_bureau": host}), "unknown feature 'nope'"),
        (lambda: VerticalLogisticRegression(max_epochs=1, monotone={"platform": {"x0": 1}}).fit(guest, {"tax_bureau": host}), "unknown party 'platform'"),
        (lambda: VerticalSecureBoost(n_trees=1, monotone={"tax_bureau": {"nope": 1}}).fit(guest, {"tax_bureau": host}), "unknown feature 'nope'"),
        (lambda: VerticalSecureBoost(n_trees=1, monotone={"bank": {"x0": 2}}).fit(guest, {"tax_bureau": host}), "must be +1, -1 or 0"),
        (lambda: PlainSecureBoost(n_trees=1, monotone={"zz": 1}).fit(guest.drop(columns="y").to_numpy(), guest["y"].to_numpy()), "unknown feature 'zz'"),
    ]
    for run, words in cases:
        with pytest.raises(ConfigError) as err:
            run()
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
