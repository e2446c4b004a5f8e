"""Benchmark: the federated credit-scorecard workflow against its plaintext references.

On the UCI default-credit vertical split (FATE's files: the bank holds ``y`` and 13
features, one feature holder ``tax_bureau`` 10 features), stratified 80/20 hold-out
(``random_state=42``), in one run:

* **Federated WOE binning and IV** (:class:`fedrisk.models.woe.VerticalWOE`: the
  bank's labels encrypted under its BFV key, the feature holder's encrypted per-bin
  event counts from the histogram kernel, WOE/IV at the bank, WOE applied locally)
  on the training rows, against :class:`fedrisk.models.woe.PlainWOE` on the joined
  training table with the same bins → ``iv_max_abs_diff`` (goal ≤ 1e-6).
* **Scorecard**: vertical logistic regression over the encrypted protocol
  (:class:`fedrisk.models.vertical_lr.VerticalLogisticRegression`) on the WOE
  table, each party's coefficient signs constrained by its owner (negative: a
  higher WOE means a lower default rate) → ``auc_scorecard``; scikit-learn's
  ``LogisticRegression`` on the same WOE table and the same training rows →
  ``auc_sklearn_woe`` (goal: scorecard within 0.005).
* ``monotone_violations``: declared monotone constraints broken by the trained
  models — adjacent merged WOE bins whose event rate goes against the declared
  direction, scorecard coefficients with the wrong sign, and (unless
  ``--no-trees``) pairs of grid points where a monotone-constrained vertical
  SecureBoost's prediction moves against a feature's declared direction (goal 0).
* **Points** (:class:`fedrisk.models.points.PointsScorecard`, PDO 20, 600 points at
  50 : 1): ``points_table_rows`` (rows of every party's points table, bins plus the
  bank's base row) and ``score_matches_logodds`` — the summed points of every
  held-out row, from the raw features, equal ``offset − factor·z`` of the trained
  LR's log-odds ``z`` to 1e-9 (``points_score_max_abs_diff``).
* ``auc_base`` / ``auc_stacking``: from ``fedrisk.models.stacking.benchmark_stacking``
  when it is importable (it receives ``guest``, ``host``, ``train``, ``test`` —
  DataFrames indexed by ``id`` and the two ID arrays — and returns a dict with
  those two keys); else ``null``.

Prints one JSON object (the last stdout line).

Usage::

    python benchmarks/scorecard.py [--quick] [--rows N] [--bins B] [--min-bin-size M] [--data DIR] [--no-trees]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from fedrisk.models.metrics import auc
from fedrisk.models.woe import PlainWOE, VerticalWOE

log = logging.getLogger("fedrisk.bench.scorecard")
BANK, HOLDER = "bank", "tax_bureau"


def data_dir(given: str | None) -> Path:
    """``--data``, else ``$FEDRISK_SHARED_DATA/default_credit``, else ``../shared/data/default_credit``."""
    if given:
        return Path(given)
    env = os.environ.get("FEDRISK_SHARED_DATA")
    root = Path(__file__).resolve().parents[1]
    for base in ([Path(env)] if env else []) + [root.parent / "shared" / "data", root.parent.parent / "shared" / "data"]:
        if (base / "default_credit").is_dir():
            return base / "default_credit"
    raise SystemExit("default-credit data not found: pass --data or set FEDRISK_SHARED_DATA")


def load(folder: Path, rows: int | None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    guest = pd.read_csv(folder / "default_credit_hetero_guest.csv").set_index("id")
    host = pd.read_csv(folder / "default_credit_hetero_host.csv").set_index("id")
    if rows is not None and rows < len(guest):
        keep, _ = train_test_split(guest.index.to_numpy(), train_size=rows, stratify=guest["y"], random_state=seed)
        guest = guest.loc[keep]
    return guest, host.loc[guest.index]


def _rate_violations(table: Any, direction: str) -> int:
    """Adjacent merged bins whose event rate goes against ``direction`` (NaN bucket excluded)."""
    g = int(np.max(table.groups)) + 1
    rate = np.asarray(table.events[:g]) / np.maximum(np.asarray(table.sizes[:g]), 1.0)
    step = np.diff(rate)
    if direction == "increasing":
        return int(np.sum(step < 0))
    if direction == "decreasing":
        return int(np.sum(step > 0))
    return min(int(np.sum(step < 0)), int(np.sum(step > 0)))  # "auto": whichever direction was chosen


def _stacking(guest: pd.DataFrame, host: pd.DataFrame, train: np.ndarray, test: np.ndarray, **extra: Any) -> tuple[Any, Any]:
    try:
        from fedrisk.models.stacking import benchmark_stacking  # written alongside (issue 14, item 4)
    except ImportError:
        return None, None
    kwargs = {"guest": guest, "host": host, "train": train, "test": test, **extra}
    accepted = inspect.signature(benchmark_stacking).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    out = benchmark_stacking(**kwargs)
    return out.get("auc_base"), out.get("auc_stacking")


def _tree_violations(
    guest: pd.DataFrame, host: pd.DataFrame, train: np.ndarray, test: np.ndarray, monotone_bank: dict[str, int], monotone_host: dict[str, int], trees: int
) -> tuple[int, float]:
    """Monotone-constrained vertical SecureBoost: violations on a grid of each constrained feature, and its AUC."""
    from fedrisk.models.secureboost import VerticalSecureBoost

    model = VerticalSecureBoost(n_trees=trees, max_depth=3, n_bins=32, learning_rate=0.3, monotone={BANK: monotone_bank, HOLDER: monotone_host})
    model.fit(guest.loc[train], {HOLDER: host.loc[train]})
    y_test = guest.loc[test, "y"].to_numpy()
    auc_sb = auc(y_test, model.predict_proba(guest.loc[test], {HOLDER: host.loc[test]})[:, 1])
    rng = np.random.default_rng(0)
    sample = rng.choice(test, size=min(200, len(test)), replace=False)
    violations = 0
    for party, cons in ((BANK, monotone_bank), (HOLDER, monotone_host)):
        for feat, sign in cons.items():
            frame = guest if party == BANK else host
            grid = np.quantile(frame.loc[train, feat], np.linspace(0.0, 1.0, 21))
            preds = []
            for v in grid:
                g, h = guest.loc[sample].copy(), host.loc[sample].copy()
                (g if party == BANK else h)[feat] = v
                preds.append(model.decision_function(g, {HOLDER: h}))
            steps = np.diff(np.stack(preds), axis=0) * sign
            violations += int(np.sum(steps < -1e-9))
    return violations, auc_sb


def run(args: argparse.Namespace) -> dict[str, Any]:
    guest, host = load(data_dir(args.data), args.rows)
    train, test = train_test_split(guest.index.to_numpy(), test_size=0.2, stratify=guest["y"], random_state=42)
    bank_feats = [c for c in guest.columns if c != "y"]
    host_feats = list(host.columns)
    y_train, y_test = guest.loc[train, "y"].to_numpy(), guest.loc[test, "y"].to_numpy()
    # every party declares "auto": merge toward a monotone event rate in whichever direction the data has
    mono = {BANK: {f: "auto" for f in bank_feats}, HOLDER: {f: "auto" for f in host_feats}}

    t0 = time.perf_counter()
    fed = VerticalWOE(n_bins=args.bins, min_bin_size=args.min_bin_size, monotone=mono).fit(
        guest.loc[train, bank_feats].to_numpy(),
        y_train,
        {HOLDER: (host.loc[train, host_feats].to_numpy(), np.ones(len(train), dtype=bool))},
        bank_feature_names=bank_feats,
        holder_feature_names={HOLDER: host_feats},
    )
    woe_seconds = time.perf_counter() - t0
    woe_bytes = sum(len(d) for *_, d in fed.transcript_)

    joined = guest.join(host.add_prefix("h_"))
    ref = PlainWOE(n_bins=args.bins, min_bin_size=args.min_bin_size, monotone={**{f: "auto" for f in bank_feats}, **{"h_" + f: "auto" for f in host_feats}})
    ref.fit(joined.loc[train, bank_feats + ["h_" + f for f in host_feats]].to_numpy(), y_train, feature_names=bank_feats + ["h_" + f for f in host_feats])
    fed_iv = {**fed.iv_[BANK], **{"h_" + k: v for k, v in fed.iv_[HOLDER].items()}}
    iv_diff = max(abs(fed_iv[k] - ref.iv_[k]) for k in ref.iv_)

    # WOE tables: bank applies its own, the feature holder its own (locally)
    bank_woe = fed.label_holder_.own_model_
    fh = fed.feature_holders_[HOLDER]
    Wb_train, Wb_test = bank_woe.transform(guest.loc[train, bank_feats].to_numpy()), bank_woe.transform(guest.loc[test, bank_feats].to_numpy())
    Wh_train, Wh_test = fh.transform(), fh.transform(host.loc[test, host_feats].to_numpy())
    # the same table from the plaintext reference (sanity: must be identical)
    W_ref = ref.transform(joined.loc[test, bank_feats + ["h_" + f for f in host_feats]].to_numpy())
    woe_table_diff = float(np.max(np.abs(np.hstack([Wb_test, Wh_test]) - W_ref)))

    from fedrisk.models.vertical_lr import VerticalLogisticRegression

    signs = {BANK: {f: -1 for f in bank_feats}, HOLDER: {f: -1 for f in host_feats}}
    t1 = time.perf_counter()
    lr = VerticalLogisticRegression(C=args.C, max_epochs=args.epochs, patience=args.epochs, validation_fraction=0.0, monotone=signs)
    bank_df = pd.DataFrame(Wb_train, columns=bank_feats, index=pd.Index(train, name="id"))
    bank_df["y"] = y_train
    host_df = pd.DataFrame(Wh_train, columns=host_feats, index=pd.Index(train, name="id"))
    lr.fit(bank_df, {HOLDER: host_df})
    lr_seconds = time.perf_counter() - t1
    bank_test = pd.DataFrame(Wb_test, columns=bank_feats, index=pd.Index(test, name="id"))
    bank_test["y"] = y_test
    host_test = pd.DataFrame(Wh_test, columns=host_feats, index=pd.Index(test, name="id"))
    auc_sc = auc(y_test, lr.predict_proba(bank_test, {HOLDER: host_test})[:, 1])

    sk = LogisticRegression(C=args.C, max_iter=2000).fit(np.hstack([Wb_train, Wh_train]), y_train)
    auc_sk = auc(y_test, sk.predict_proba(np.hstack([Wb_test, Wh_test]))[:, 1])

    # points scorecard: each party's table from its own block; the summed points must be the LR's log-odds on the scale
    from fedrisk.models.points import PointsScorecard

    card = PointsScorecard.from_woe_model(fed, lr)
    score = card.score({BANK: guest.loc[test, bank_feats], HOLDER: host.loc[test, host_feats]})
    z_test = lr.decision_function(bank_test, {HOLDER: host_test}, secure=False)
    points_diff = float(np.max(np.abs(score - card.scale.score_of_log_odds(z_test))))
    points_rows = {p: int(len(card.points_table(p))) for p in card.parts}

    violations = 0
    for party, tables in fed.label_holder_.tables_.items():
        for t in tables:
            violations += _rate_violations(t, mono[party].get(t.name, "none"))
    coef = {
        BANK: dict(zip(lr.label_holder_.feature_names_, lr.label_holder_.coef_, strict=False)),
        HOLDER: dict(zip(host_feats, lr.feature_holders_[HOLDER].coef_, strict=True)),
    }
    for party, cons in signs.items():
        violations += sum(1 for f, s in cons.items() if s * coef[party][f] < -1e-12)

    result: dict[str, Any] = {
        "rows": int(len(guest)),
        "rows_train": int(len(train)),
        "features": len(bank_feats) + len(host_feats),
        "bins": args.bins,
        "min_bin_size": args.min_bin_size,
        "iv_max_abs_diff": float(iv_diff),
        "woe_table_max_abs_diff": woe_table_diff,
        "auc_scorecard": round(auc_sc, 6),
        "auc_sklearn_woe": round(auc_sk, 6),
        "auc_gap": round(auc_sk - auc_sc, 6),
        "monotone_violations": int(violations),
        "iv_top": fed.iv_table()[:5],
        "woe_seconds": round(woe_seconds, 3),
        "woe_bytes": int(woe_bytes),
        "scorecard_seconds": round(lr_seconds, 3),
        "scorecard_epochs": int(lr.n_epochs_),
        "points_table_rows": sum(points_rows.values()),
        "points_table_rows_by_party": points_rows,
        "points_score_max_abs_diff": points_diff,
        "score_matches_logodds": bool(points_diff <= 1e-9),
    }
    if not args.no_trees:
        mono_tree_bank = {"x0": 1}  # PAY_6: later payment status, more default
        mono_tree_host = {"x0": -1, "x5": 1}  # LIMIT_BAL down, PAY_0 up
        tv, auc_sb = _tree_violations(guest, host, train, test, mono_tree_bank, mono_tree_host, args.trees)
        result["monotone_violations"] += tv
        result["tree_monotone_violations"] = tv
        result["auc_secureboost_monotone"] = round(auc_sb, 6)
    log.info("scorecard results: %s", json.dumps(result))
    try:
        base, stack = _stacking(guest, host, train, test, n_trees=args.trees, epochs=args.epochs)
    except Exception as exc:  # noqa: BLE001 - the stacking half must not cost the scorecard figures
        base, stack = None, None
        result["stacking_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    result["auc_base"] = base
    result["auc_stacking"] = stack
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6,000 rows, 5 trees")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--min-bin-size", type=int, default=100)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--trees", type=int, default=30)
    ap.add_argument("--no-trees", action="store_true", help="skip the monotone SecureBoost check")
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", action="store_true", help="(accepted for `fedrisk bench`; output is always JSON)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows = args.rows or 6000
        args.trees = min(args.trees, 5)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
