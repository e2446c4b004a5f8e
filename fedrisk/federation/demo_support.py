"""What the demos share: the demo federation's parties, live scoring, offline PDs and the model report.

:mod:`fedrisk.federation.demo` (``fedrisk demo``) and
:mod:`fedrisk.federation.stacking` (``fedrisk demo --model stacking``) both
import this module; neither imports the other's helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrisk.errors import FedriskError

VERTICAL_PARTIES = {"bank": "label_holder", "tax_bureau": "feature_holder", "platform": "feature_holder"}
VALIDATION = {"fraction": 0.2, "seed": 42}


def centralised_reference(data, train_by_row: np.ndarray, model: str = "vertical_lr", trees: int = 10) -> dict[str, float]:
    """The same kind of model on the joined table, same rows, same split: what no party may build."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from fedrisk.models.metrics import auc, ks
    from fedrisk.data.datasplit import evaluation_mask

    blocks = [data.bank.feature_matrix()]
    for table in (data.tax_bureau, data.platform):
        position = {sme: i for i, sme in enumerate(table.ids)}
        rows = np.array([position.get(sme, -1) for sme in data.bank.ids])
        X = np.full((rows.size, len(table.feature_names)), np.nan)
        X[rows >= 0] = table.feature_matrix()[rows[rows >= 0]]
        blocks += [X, (rows >= 0).astype(float)[:, None]]
    X = np.column_stack(blocks)
    y = np.asarray(data.bank.labels)
    train = train_by_row
    # Reported on the same rows as the federation's metrics: the evaluation half of the hold-out.
    report = evaluation_mask(y, train, int(VALIDATION["seed"]))
    if model == "secureboost":
        boosted = HistGradientBoostingClassifier(max_iter=trees, max_depth=3, learning_rate=0.3, max_bins=32, early_stopping=False)
        p = boosted.fit(X[train], y[train]).predict_proba(X[report])[:, 1]
        return {"auc": float(auc(y[report], p)), "ks": float(ks(y[report], p))}
    mean = np.nanmean(X[train], axis=0)
    std = np.nanstd(X[train], axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    Z = np.nan_to_num((X - mean) / std)
    p = LogisticRegression(max_iter=5000).fit(Z[train], y[train]).predict_proba(Z[report])[:, 1]
    return {"auc": float(auc(y[report], p)), "ks": float(ks(y[report], p))}


def score_live(
    run_dir: Path,
    result: dict,
    data,
    tables: dict[str, Path],
    train_by_row: np.ndarray,
    *,
    model: str = "vertical_lr",
    scoring_dir: str = "scoring",
    arrays: dict | None = None,
    rows: np.ndarray | None = None,
) -> dict:
    """Deploy the trained model to the scoring node and decide live on the bank's evaluation rows.

    Starts each feature holder's party scoring service (its own table, the IDs it
    aligned, mTLS) and the bank's sandboxed scoring node on loopback, sends one
    application per SME of the evaluation rows, and compares every decision's PD
    with the same model scored offline from the signed bundles. For SecureBoost
    the parties answer the direction at each of their splits (``TREE_ROUTING``)
    and the node routes the bank's trees with them.
    """
    from fedrisk.crypto.pki import load_federation_pki
    from fedrisk.models.metrics import auc
    from fedrisk.parties.alignment import allow_list_path
    from fedrisk.data.datasplit import evaluation_mask
    from fedrisk.scoring.client import ScoringClient
    from fedrisk.scoring.deploy import start_scoring_deployment
    from fedrisk.v1 import scoring_pb2 as pb

    run_id = result.get("run_id", run_dir.name)
    bundles = {party: Path(path) for party, path in result["bundles"].items()}
    holders = [p for p in VERTICAL_PARTIES if VERTICAL_PARTIES[p] == "feature_holder"]
    pki = load_federation_pki(run_dir / "pki")
    trusted = run_dir / "coordinator" / "signing_keys.json"
    y = np.asarray(data.bank.labels)
    if rows is None:  # default: the evaluation half of the held-out rows
        rows = np.flatnonzero(evaluation_mask(y, train_by_row, int(VALIDATION["seed"])))
    ids = data.bank.ids[rows]
    revenue = 12.0 * data.bank.features["monthly_inflow"].to_numpy()[rows]  # what the applicant declares
    deployment = start_scoring_deployment(
        pki=pki,
        trusted_keys=trusted,
        bank_bundle=bundles["bank"],
        party_bundles={p: bundles[p] for p in holders},
        party_tables={p: tables[p] for p in holders},
        allow_lists={p: allow_list_path(run_dir / "parties" / p, run_id) for p in holders},
        state_dir=run_dir / scoring_dir,
        bank_table=tables["bank"],
        policy=portfolio_policy(run_dir),
    )
    try:
        with ScoringClient(deployment.node.address, ca=pki.ca_cert) as client:
            client.wait_ready(timeout=30)
            sandbox = client.describe().sandbox
            applications = (
                pb.Application(application_id=f"demo-{i}", sme_id=str(sme), declared_annual_revenue=float(rev))
                for i, (sme, rev) in enumerate(zip(ids, revenue))
            )
            decisions = list(client.score_stream(applications, timeout=300))
    finally:
        deployment.stop()
    pd_live = np.array([d.probability_of_default for d in decisions])
    # The same model offline: each party's signed bundle scored in this process.
    keys = [bytes.fromhex(k) for k in json.loads(trusted.read_text()).values()]
    offline = offline_secureboost_pd if model == "secureboost" else offline_scorecard_pd
    pd_offline = offline(bundles, keys, data, holders, ids, data.bank.feature_matrix()[rows])
    outcomes = [pb.Outcome.Name(d.outcome) for d in decisions]
    latency = np.array([d.latency_ms for d in decisions])
    if arrays is not None:  # the bank's own view of the live decisions, for the model report and the stack
        arrays.update(rows=rows, pd_live=pd_live, pd_offline=pd_offline, outcomes=outcomes, latency=latency)
    return {
        "applications": len(decisions),
        "approve": outcomes.count("APPROVE"),
        "decline": outcomes.count("DECLINE"),
        "refer": outcomes.count("REFER"),
        "degraded": int(sum(d.degraded for d in decisions)),
        "auc_live": float(auc(y[rows], pd_live)),
        "max_abs_pd_diff_vs_offline": float(np.max(np.abs(pd_live - pd_offline))),
        "mean_pd": float(pd_live.mean()),
        "node_latency_p50_ms": float(np.percentile(latency, 50)),
        "node_latency_p99_ms": float(np.percentile(latency, 99)),
        "sandbox": sandbox,
    }


def portfolio_policy(run_dir: Path) -> Path:
    """The default credit policy with a portfolio job's fan-out deadline.

    The demo streams its whole evaluation book at once, as ``fedrisk score
    batch`` does; the default 40 ms per call is a live loan system's budget,
    and on a loaded 2-core machine a burst would fall back for a few SMEs.
    """
    import re

    from fedrisk.scoring.policy import default_policy_path

    text, found = re.subn(r"(?m)^deadline_ms = \d+(\.\d+)?", "deadline_ms = 2000", default_policy_path().read_text())
    if found != 1:
        raise FedriskError("the default policy has no single [unavailable] deadline_ms to raise for the demo")
    path = run_dir / "scoring-policy.toml"
    path.write_text(text)
    return path


def party_rows(table, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in a party's table (-1 where it does not hold the SME) and its feature matrix."""
    position = {sme: i for i, sme in enumerate(table.ids)}
    return np.array([position.get(sme, -1) for sme in ids]), table.feature_matrix()


def offline_scorecard_pd(bundles: dict[str, Path], keys: list[bytes], data, holders: list[str], ids: np.ndarray, X_bank: np.ndarray) -> np.ndarray:
    """The scorecard's PD from the signed bundles: each party's partial score on its own rows."""
    from fedrisk.models.scorecard import LabelHolderScorecard, load_scorecard

    bank = load_scorecard(bundles["bank"], keys)
    if not isinstance(bank, LabelHolderScorecard):
        raise FedriskError("the bank's scorecard bundle is a feature holder's part")
    parts = {}
    for party in holders:
        scorecard = load_scorecard(bundles[party], keys)
        where, X = party_rows(getattr(data, party), ids)
        u = np.full(ids.size, np.nan)
        u[where >= 0] = scorecard.partial_score(X[where[where >= 0]])
        parts[party] = u
    return bank.predict_proba(X_bank, parts)


def offline_secureboost_pd(bundles: dict[str, Path], keys: list[bytes], data, holders: list[str], ids: np.ndarray, X_bank: np.ndarray) -> np.ndarray:
    """SecureBoost's PD from the signed bundles: each party routes its own splits on its own rows (defaults where it has none)."""
    from fedrisk.models.bundle import load_model_bundle
    from fedrisk.models.secureboost import (
        answer_splits,
        load_feature_holder_bundle,
        load_label_holder_bundle,
    )

    trees = load_label_holder_bundle(*load_model_bundle(bundles["bank"], keys))
    answers = {}
    for party in holders:
        arrays, meta = load_model_bundle(bundles[party], keys)
        table = load_feature_holder_bundle(arrays, meta)
        where, X = party_rows(getattr(data, party), ids)
        X_party = np.full((ids.size, len(table.feature_names)), np.nan)  # an SME it does not hold: every split on its default
        columns = [list(getattr(data, party).feature_names).index(f) for f in table.feature_names]
        X_party[where >= 0] = X[where[where >= 0]][:, columns]
        answers[party] = answer_splits(table, X_party, fingerprint=str(meta.get("context_fingerprint", "")))
    return trees.predict_proba(X_bank, answers)[:, 1]


def leave_out_pd(model: str, bundles: dict, keys: list[bytes], data, holders: list[str], drop: str, ids: np.ndarray, X_bank: np.ndarray) -> np.ndarray:
    """The trained model's PD with party ``drop`` left out: scored as if it covered no SME (no retraining)."""
    if model == "vertical_lr":
        return offline_scorecard_pd(bundles, keys, data, [p for p in holders if p != drop], ids, X_bank)
    from fedrisk.models.bundle import load_model_bundle
    from fedrisk.models.secureboost import answer_splits, load_feature_holder_bundle, load_label_holder_bundle

    trees = load_label_holder_bundle(*load_model_bundle(bundles["bank"], keys))
    answers = {}
    for party in holders:
        arrays, meta = load_model_bundle(bundles[party], keys)
        table = load_feature_holder_bundle(arrays, meta)
        X_party = np.full((ids.size, len(table.feature_names)), np.nan)
        if party != drop:
            where, X = party_rows(getattr(data, party), ids)
            columns = [list(getattr(data, party).feature_names).index(f) for f in table.feature_names]
            X_party[where >= 0] = X[where[where >= 0]][:, columns]
        answers[party] = answer_splits(table, X_party, fingerprint=str(meta.get("context_fingerprint", "")))
    return trees.predict_proba(X_bank, answers)[:, 1]


def write_model_report(
    run_dir: Path,
    run_id: str,
    data,
    parties,
    y: np.ndarray,
    train_by_row: np.ndarray,
    y_eval: np.ndarray,
    p_model: np.ndarray,
    p_base: dict | None,
    without: dict,
    *,
    auc_bank_only: float | None,
    model: str = "stacking",
):
    """``runs/<id>/model_report.html`` + ``.json`` from the bank's side."""
    from fedrisk.models.report import bank_iv, build_model_report, leave_out_contributions

    bank_names = list(data.bank.feature_names)
    X_train = data.bank.feature_matrix()[train_by_row]
    iv = bank_iv(X_train, y[train_by_row], bank_names, min_bin_size=max(20, int(train_by_row.sum()) // 100))
    party_info = {p.name: {"role": p.role, "features": list(getattr(data, p.name).feature_names)} for p in parties}
    contributions = leave_out_contributions(
        y_eval, p_model, without, method="party's block removed from the trained model (scored as not covering the SME), no retraining"
    )
    note = "Evaluated on the evaluation half of the bank's held-out rows (never used for training, early stopping or the meta-learner)."
    if auc_bank_only is not None:
        note += f" Bank-only model (retrained without every feature holder): validation AUC {auc_bank_only:.4f}."
    return build_model_report(
        run_dir,
        y=y_eval,
        pd_=p_model,
        model=model,
        run_id=run_id,
        parties=party_info,
        bank="bank",
        iv=iv,
        contributions=contributions,
        base_learners=p_base,
        note=note,
    )
