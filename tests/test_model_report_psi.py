"""Population stability (PSI) of the score and each party's partial score between two books (`fedrisk score watch`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.errors import DataValidationError
from fedrisk.models.report import population_stability
from fedrisk.scoring.portfolio import book_stability


def _reference_psi(expected: np.ndarray, actual: np.ndarray, bins: int, floor: float = 1e-4) -> float:
    """PSI with pandas' quantile cut: an independent implementation of the same definition."""
    _, edges = pd.qcut(expected, bins, retbins=True, duplicates="drop")
    edges[0], edges[-1] = -np.inf, np.inf
    e = (
        pd.Series(pd.cut(expected, edges, right=True)).value_counts(sort=False).reindex(pd.cut(expected, edges).categories, fill_value=0).to_numpy()
        / expected.size
    )
    a = pd.Series(pd.cut(actual, edges, right=True)).value_counts(sort=False).reindex(pd.cut(expected, edges).categories, fill_value=0).to_numpy() / actual.size
    e, a = np.maximum(e, floor), np.maximum(a, floor)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.fixture(scope="module")
def books(default_credit_dir):
    """Two books of real scores: the default-credit bank's partial log-odds on two disjoint sets of clients.

    The 'current' book is drawn from riskier clients (PAY_0 ≥ 1 over-represented) so its tax-bureau
    partial shifts, while the bank's own block moves less.
    """
    from sklearn.linear_model import LogisticRegression

    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id")
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    y = guest.pop("y")
    X = pd.concat([guest, host.add_prefix("h_")], axis=1)
    lr = LogisticRegression(max_iter=2000).fit(X, y)
    w = pd.Series(lr.coef_.ravel(), index=X.columns)
    bank_part = guest.to_numpy() @ w[guest.columns].to_numpy()
    tax_part = host.to_numpy() @ w[[f"h_{c}" for c in host.columns]].to_numpy()
    z = lr.intercept_[0] + bank_part + tax_part
    frame = pd.DataFrame({"sme_id": guest.index.astype(str), "previous_pd": 1 / (1 + np.exp(-z)), "partial_bank": bank_part, "partial_tax_bureau": tax_part})
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(frame))
    base = frame.iloc[idx[:10000]].reset_index(drop=True)
    rest = frame.iloc[idx[10000:]]
    risky = host.loc[rest["sme_id"].astype(int), "x5"].to_numpy() > 0.5  # PAY_0 (standardised): late payers
    current = pd.concat([rest[risky], rest[~risky].iloc[:4000]]).reset_index(drop=True)
    stable = rest.iloc[:8000].reset_index(drop=True)
    return base, current, stable


def test_psi_matches_an_independent_implementation(books):
    base, current, stable = books
    for col in ("previous_pd", "partial_bank", "partial_tax_bureau"):
        for other in (current, stable):
            got = population_stability(base[col].to_numpy(), other[col].to_numpy(), bins=10)
            assert got["psi"] == pytest.approx(_reference_psi(base[col].to_numpy(), other[col].to_numpy(), 10), rel=1e-9, abs=1e-12)
            assert sum(b["expected_pct"] for b in got["bins"]) == pytest.approx(100.0)
            assert sum(b["actual_pct"] for b in got["bins"]) == pytest.approx(100.0)


def test_psi_separates_a_shifted_book_from_a_stable_one(books):
    base, current, stable = books
    shifted = book_stability(base, current.rename(columns={"previous_pd": "current_pd"}))
    same = book_stability(base, stable)
    assert set(shifted) == {"pd", "partial_bank", "partial_tax_bureau"}
    for key in shifted:
        assert same[key]["psi"] < 0.02 and same[key]["verdict"] == "stable"
    assert shifted["partial_tax_bureau"]["psi"] > 0.25 and shifted["partial_tax_bureau"]["verdict"] == "significant shift"
    assert shifted["pd"]["psi"] > 0.10
    # the shift was made on the tax bureau's data: its partial moves more than the bank's own block
    assert shifted["partial_tax_bureau"]["psi"] > shifted["partial_bank"]["psi"]


def test_psi_bad_input_is_one_line():
    with pytest.raises(DataValidationError, match="at least 10 baseline values") as err:
        population_stability(np.arange(5.0), np.arange(5.0))
    assert "\n" not in str(err.value)
    with pytest.raises(DataValidationError, match="at least 2 bins"):
        population_stability(np.arange(50.0), np.arange(5.0), bins=1)


def _fedrisk(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("fedrisk")
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(exe), "score", "watch", *args], capture_output=True, text=True, timeout=120, env=env)


def test_score_watch_compares_two_books(books, tmp_path):
    base, current, _ = books
    base.to_csv(tmp_path / "base.csv", index=False)
    current.to_csv(tmp_path / "current.csv", index=False)
    done = _fedrisk(str(tmp_path / "current.csv"), "--baseline", str(tmp_path / "base.csv"), "--no-rescore", "--out-dir", str(tmp_path / "w"), "--json")
    assert done.returncode == 0, done.stderr[-800:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    expected = book_stability(base, current)
    assert summary["psi"] == {k: round(v["psi"], 6) for k, v in expected.items()}
    assert json.loads((tmp_path / "w" / "psi.json").read_text())["partial_tax_bureau"]["psi"] == pytest.approx(expected["partial_tax_bureau"]["psi"])
    # bad input: one line
    bad = _fedrisk(str(tmp_path / "current.csv"), "--no-rescore", "--out-dir", str(tmp_path / "w2"))
    assert bad.returncode != 0 and "--baseline" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
