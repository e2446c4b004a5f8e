"""``fedrisk demo``: a whole local federation on synthetic SME data.

The default is the product's main story, **vertical**: a bank (labels and its
own account data), the tax bureau and an e-commerce/utility platform hold
different columns about overlapping SMEs (:mod:`fedrisk.data.synthetic`).
Over real gRPC with TLS and node authentication on loopback they align their
rows by PSI and train an encrypted logistic scorecard; the demo then prints
bank-only vs federated vs centralised AUC and KS (the centralised model is
computed only because the demo generated every table), bytes per party and
time, verifies every audit ledger and writes ``summary.json`` and the report.

``--mode horizontal`` runs three banks with CKKS-encrypted FedAvg and, for
comparison, plaintext FedAvg on the same processes and seed.

``--model scorecard`` is the credit team's points scorecard: the federated WOE
binning and the vertical logistic regression on the WOE table, trained in one
process over the real encrypted protocols (not over the Deployment Engine, as
``fedrisk scorecard points``), converted to points; each party's signed bundle
holds its own points table only. The demo deploys them to the sandboxed scoring
node and the parties' scoring services, decides live on the held-out SMEs
(scores equal to the offline points tables), prints the bank's own points table
and writes it to ``runs/<id>/points_bank.csv`` — the other parties' tables stay
in their own bundles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedrisk.errors import FedriskError
from fedrisk.federation.local import LocalFederation
from fedrisk.federation.train import (
    audit_run,
    label_holder_intersection,
    new_run_dir,
    vertical_metrics,
    weighted_final_metrics,
    write_summary,
)
from fedrisk.parties.settings import PartySettings

BANKS = ("bank_a", "bank_b", "bank_c")
VERTICAL_PARTIES = {"bank": "label_holder", "tax_bureau": "feature_holder", "platform": "feature_holder"}
VALIDATION = {"fraction": 0.2, "seed": 42}


def run_demo(
    *,
    mode: str = "vertical",
    model: str = "vertical_lr",
    runs_dir: Path,
    rows: int,
    rounds: int,
    trees: int = 10,
    seed: int,
    console: Console | None = None,
) -> dict:
    """Run the demo federation (``vertical`` or ``horizontal``) and write ``runs/<run-id>/summary.json``."""
    from fedrisk.errors import ConfigError

    if mode == "vertical":
        if model not in ("vertical_lr", "secureboost", "stacking", "scorecard"):
            raise ConfigError(f"--model: expected 'vertical_lr', 'secureboost', 'stacking' or 'scorecard', got {model!r}")
        if model == "scorecard":
            return run_scorecard_demo(runs_dir=runs_dir, rows=rows, epochs=rounds, seed=seed, console=console)
        if model == "stacking":
            from fedrisk.federation.stacking import run_stacking_demo

            return run_stacking_demo(runs_dir=runs_dir, rows=rows, epochs=rounds, trees=trees, seed=seed, console=console)
        return run_vertical_demo(runs_dir=runs_dir, rows=rows, epochs=rounds, trees=trees, model=model, seed=seed, console=console)
    if mode == "horizontal":
        return run_horizontal_demo(runs_dir=runs_dir, rows=rows, rounds=rounds, seed=seed, console=console)
    raise ConfigError(f"--mode: expected 'vertical' or 'horizontal', got {mode!r}")


def _centralised_reference(data, train_by_row: np.ndarray, model: str = "vertical_lr", trees: int = 10) -> dict[str, float]:
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


def run_vertical_demo(
    *,
    runs_dir: Path,
    rows: int,
    epochs: int,
    seed: int,
    model: str = "vertical_lr",
    trees: int = 10,
    console: Console | None = None,
) -> dict:
    """Bank + tax bureau + platform: PSI and an encrypted model over gRPC+TLS; writes ``summary.json``."""
    from fedrisk.data.datasplit import training_mask
    from fedrisk.data.synthetic import PARTY_SCHEMAS, generate_sme_data

    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = new_run_dir(runs_dir, "demo")
    console.print(f"[bold]fedrisk demo[/bold] — vertical federation, run folder {run_dir}")
    data = generate_sme_data(rows, seed=seed)
    paths = data.write_csv(run_dir / "data")
    parties = [
        PartySettings(
            name=name,
            role=role,
            data=str(paths[name]),
            schema=PARTY_SCHEMAS[name].to_dict(),
            state_dir=str(run_dir / "parties" / name),
            validation=dict(VALIDATION),
        )
        for name, role in VERTICAL_PARTIES.items()
    ]
    if model == "secureboost":
        config = {"mode": "vertical", "algorithm": "secureboost", "trees": trees, "depth": 3, "bins": 32, "seed": seed}
        what = f"PSI and encrypted SecureBoost, {trees} trees of depth 3"
    else:
        config = {"mode": "vertical", "algorithm": "vertical_lr", "epochs": epochs, "seed": seed}
        what = f"PSI and encrypted vertical logistic regression, at most {epochs} epochs"
    with LocalFederation(run_dir, parties, config, log=console.print) as federation:
        with console.status(what):
            result = federation.run()
    # The bank (label holder) learned the overlap; the coordinator did not: read it from the bank's side.
    metrics = vertical_metrics(result, label_holder_intersection(parties, result))
    train_by_row = training_mask(np.asarray(data.bank.labels), VALIDATION)
    central = _centralised_reference(data, train_by_row, model, trees)
    live: dict = {}
    with console.status("live decisions: the sandboxed scoring node and each party's scoring service"):
        scoring = score_live(run_dir, result, data, paths, train_by_row, model=model, arrays=live)
    report = _vertical_model_report(run_dir, result, data, parties, train_by_row, live, model, metrics.get("auc_bank_only"))
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "mode": "vertical",
        "algorithm": model,
        "model": model,
        "parties": list(VERTICAL_PARTIES),
        "rows": rows,
        "rounds": metrics["epochs"],
        "auc_centralized": central["auc"],
        "ks_centralized": central["ks"],
        "auc_plain": central["auc"],
        **metrics,
        "bytes_exchanged": result.get("bytes_exchanged"),
        "bytes_total": result.get("bytes_total"),
        "seconds_training": result.get("seconds"),
        "scoring": scoring,
        "model_report": str(report.html_path),
        "model_report_json": str(report.json_path),
        **audit_run(run_dir, result.get("run_id", run_dir.name)),
        "seconds": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    _print_vertical(console, summary, run_dir)
    return summary


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
        policy=_portfolio_policy(run_dir),
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
    offline = _offline_secureboost_pd if model == "secureboost" else _offline_scorecard_pd
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


def _vertical_model_report(run_dir: Path, result: dict, data, parties, train_by_row: np.ndarray, live: dict, model: str, auc_bank_only):
    """``runs/<id>/model_report.html`` + ``.json``: the live PDs on the evaluation rows, the bank's IV, each party left out."""
    from fedrisk.federation.stacking import leave_out_pd, write_model_report

    trusted = run_dir / "coordinator" / "signing_keys.json"
    keys = [bytes.fromhex(k) for k in json.loads(trusted.read_text()).values()]
    y = np.asarray(data.bank.labels).astype(int)
    rows = live["rows"]
    bundles = {party: Path(path) for party, path in result["bundles"].items()}
    holders = [p for p in VERTICAL_PARTIES if VERTICAL_PARTIES[p] == "feature_holder"]
    ids, X_bank = data.bank.ids[rows], data.bank.feature_matrix()[rows]
    without = {p: leave_out_pd(model, bundles, keys, data, holders, p, ids, X_bank) for p in holders}
    return write_model_report(
        run_dir,
        result.get("run_id", run_dir.name),
        data,
        parties,
        y,
        train_by_row,
        y[rows],
        live["pd_live"],
        None,
        without,
        auc_bank_only=auc_bank_only,
        model=model,
    )


def _portfolio_policy(run_dir: Path) -> Path:
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


def _party_rows(table, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in a party's table (-1 where it does not hold the SME) and its feature matrix."""
    position = {sme: i for i, sme in enumerate(table.ids)}
    return np.array([position.get(sme, -1) for sme in ids]), table.feature_matrix()


def _offline_scorecard_pd(bundles: dict[str, Path], keys: list[bytes], data, holders: list[str], ids: np.ndarray, X_bank: np.ndarray) -> np.ndarray:
    """The scorecard's PD from the signed bundles: each party's partial score on its own rows."""
    from fedrisk.models.scorecard import LabelHolderScorecard, load_scorecard

    bank = load_scorecard(bundles["bank"], keys)
    if not isinstance(bank, LabelHolderScorecard):
        raise FedriskError("the bank's scorecard bundle is a feature holder's part")
    parts = {}
    for party in holders:
        scorecard = load_scorecard(bundles[party], keys)
        where, X = _party_rows(getattr(data, party), ids)
        u = np.full(ids.size, np.nan)
        u[where >= 0] = scorecard.partial_score(X[where[where >= 0]])
        parts[party] = u
    return bank.predict_proba(X_bank, parts)


def _offline_secureboost_pd(bundles: dict[str, Path], keys: list[bytes], data, holders: list[str], ids: np.ndarray, X_bank: np.ndarray) -> np.ndarray:
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
        where, X = _party_rows(getattr(data, party), ids)
        X_party = np.full((ids.size, len(table.feature_names)), np.nan)  # an SME it does not hold: every split on its default
        columns = [list(getattr(data, party).feature_names).index(f) for f in table.feature_names]
        X_party[where >= 0] = X[where[where >= 0]][:, columns]
        answers[party] = answer_splits(table, X_party, fingerprint=str(meta.get("context_fingerprint", "")))
    return trees.predict_proba(X_bank, answers)[:, 1]


def _print_vertical(console: Console, summary: dict, run_dir: Path) -> None:
    kind = "SecureBoost trees" if summary.get("model") == "secureboost" else "vertical scorecard"
    table = Table(title=f"fedrisk demo: bank + tax bureau + platform, encrypted {kind}")
    for column in ("model", "AUC", "KS"):
        table.add_column(column)
    rows = (
        ("bank only", "auc_bank_only", "ks_bank_only"),
        ("federated (CKKS)", "auc_federated", "ks_federated"),
        ("centralised (demo only)", "auc_centralized", "ks_centralized"),
    )
    for label, auc_key, ks_key in rows:
        table.add_row(label, f"{summary.get(auc_key, float('nan')):.4f}", f"{summary.get(ks_key, float('nan')):.4f}")
    console.print(table)
    traffic = Table(title="what crossed each party line (bytes)")
    for column in ("party", "sent to party", "received from party"):
        traffic.add_column(column)
    for party, counts in sorted((summary.get("bytes_exchanged") or {}).items()):
        traffic.add_row(party, f"{counts['sent_to_party']:,}", f"{counts['received_from_party']:,}")
    console.print(traffic)
    overlap = ", ".join(f"{p} {n:,}" for p, n in (summary.get("intersection") or {}).items())
    unit = "trees" if summary.get("model") == "secureboost" else "epochs"
    console.print(f"intersection with the bank: {overlap}; {summary['rounds']} {unit} in {summary.get('seconds_training', 0):.1f} s")
    live = summary.get("scoring") or {}
    if "applications" in live:
        console.print(
            f"live decisions ({live['sandbox']} sandbox): {live['applications']} applications — "
            f"{live['approve']} approve, {live['refer']} refer, {live['decline']} decline; "
            f"PD equals the offline model within {live['max_abs_pd_diff_vs_offline']:.1e}; "
            f"node p50 {live['node_latency_p50_ms']:.1f} ms, p99 {live['node_latency_p99_ms']:.1f} ms"
        )
    elif live:
        console.print(f"live decisions: {live['skipped']}")
    verdict = "[green]verified[/green]" if summary["ledger_verified"] else "[red]FINDINGS[/red]"
    console.print(f"audit ledgers: {summary['ledger_entries']} entries, {verdict}; report: {summary['audit_report']}")
    console.print(f"summary: {run_dir / 'summary.json'}")


SCORECARD_LIVE_APPLICATIONS = 400


def run_scorecard_demo(*, runs_dir: Path, rows: int, epochs: int, seed: int, console: Console | None = None) -> dict:
    """The points scorecard: train in-process, deploy each party's own points table, decide live, show the bank's table."""
    from fedrisk.models.points import render_points_table
    from fedrisk.models.metrics import auc
    from fedrisk.scoring.bundles import load_bank_model, parse_trusted_keys
    from fedrisk.scoring.client import ScoringClient
    from fedrisk.scoring.deploy import start_example_deployment
    from fedrisk.scoring.example import build_points_example
    from fedrisk.v1 import scoring_pb2 as pb

    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = new_run_dir(runs_dir, "demo-scorecard")
    console.print(f"[bold]fedrisk demo[/bold] — points scorecard, run folder {run_dir}")
    holdout = 0.2
    with console.status("federated WOE binning and vertical LR on the WOE table (in-process, encrypted protocols)"):
        ex = build_points_example(run_dir / "federation", rows=rows, seed=seed, max_epochs=epochs, holdout=holdout, run_id=run_dir.name)
    # The bank reads its own signed bundle: its own points table, nothing of another party's.
    from fedrisk.models.points import PartyPoints

    bank = load_bank_model(ex.bundles["bank"], parse_trusted_keys(ex.trusted_keys)).part
    if not isinstance(bank, PartyPoints):
        raise FedriskError("the bank's bundle for the scorecard demo is not a points table")
    table = bank.table()
    csv_path = run_dir / f"points_{bank.party}.csv"
    table.to_csv(csv_path, index=False, lineterminator="\n")
    assert ex.data is not None
    ids = [str(i) for i in ex.data.bank.ids[len(ex.data.bank.ids) - round(holdout * len(ex.data.bank.ids)) :]][:SCORECARD_LIVE_APPLICATIONS]
    y = dict(zip(ex.data.bank.ids.tolist(), np.asarray(ex.data.bank.labels).tolist()))
    with console.status("live decisions: the sandboxed scoring node and each party's scoring service"):
        deployment = start_example_deployment(ex, run_dir / "scoring", policy=_portfolio_policy(run_dir))
        try:
            with ScoringClient(deployment.node.address, ca=ex.pki.ca_cert) as client:
                client.wait_ready(timeout=30)
                sandbox = client.describe().sandbox
                applications = (pb.Application(application_id=f"demo-{i}", sme_id=sme, estimate_only=True) for i, sme in enumerate(ids))
                decisions = list(client.score_stream(applications, timeout=300))
        finally:
            deployment.stop()
    live = np.array([_exact_points(d) for d in decisions])
    offline = np.array([ex.offline_score[d.sme_id] for d in decisions])
    outcomes = [pb.Outcome.Name(d.outcome) for d in decisions]
    live_s: dict[str, object] = {
        "applications": len(decisions),
        "approve": outcomes.count("APPROVE"),
        "decline": outcomes.count("DECLINE"),
        "refer": outcomes.count("REFER"),
        "auc_live_holdout": float(auc(np.array([y[d.sme_id] for d in decisions]), live * -1.0)),
        "max_abs_score_diff_vs_offline": float(np.max(np.abs(live - offline))),
        "sandbox": sandbox,
    }
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "mode": "vertical",
        "algorithm": "points_scorecard",
        "model": "scorecard",
        "trained": "in-process (federated WOE binning, vertical LR on WOE; encrypted protocols, not the Deployment Engine)",
        "parties": list(VERTICAL_PARTIES),
        "rows": rows,
        "rows_trained": rows - round(holdout * rows),
        "scale": {**bank.scale.to_dict(), "factor": bank.scale.factor, "offset": bank.scale.offset},
        "points_table": str(csv_path),
        "points_table_rows": len(table),
        "scoring": live_s,
        "seconds": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    console.print(render_points_table(table, bank.party, bank.scale))
    console.print(
        f"live decisions ({sandbox} sandbox): {live_s['applications']} held-out SMEs — {live_s['approve']} approve, "
        f"{live_s['refer']} refer, {live_s['decline']} decline; score equals the offline points tables within "
        f"{live_s['max_abs_score_diff_vs_offline']:.1e}; AUC {live_s['auc_live_holdout']:.4f}; reasons in points, per party"
    )
    console.print(f"the bank's points table: {csv_path} (each feature holder's stays in its own bundle)")
    console.print(f"summary: {run_dir / 'summary.json'}")
    return summary


def _exact_points(decision) -> float:
    """The exact score a points decision carries (``Decision.points``)."""
    if not decision.points:
        raise FedriskError(f"decision {decision.application_id} carries no points score")
    return float(decision.points)


def _write_bank_shares(run_dir: Path, rows: int, seed: int) -> tuple[dict[str, Path], Path, dict]:
    from sklearn.model_selection import train_test_split

    from fedrisk.data.synthetic import BANK_SCHEMA, generate_sme_data

    frame = generate_sme_data(rows, seed=seed).bank.to_dataframe()
    label = BANK_SCHEMA.label_column
    pool, test = train_test_split(frame, test_size=0.2, random_state=seed, stratify=frame[label])
    rng = np.random.default_rng(seed)
    share = rng.integers(0, len(BANKS), size=len(pool))
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, bank in enumerate(BANKS):
        paths[bank] = data_dir / f"{bank}.csv"
        pool[share == i].to_csv(paths[bank], index=False)
    test_path = data_dir / "holdout.csv"
    test.to_csv(test_path, index=False)
    return paths, test_path, BANK_SCHEMA.to_dict()


def run_horizontal_demo(*, runs_dir: Path, rows: int, rounds: int, seed: int, console: Console | None = None) -> dict:
    """Three banks, CKKS-encrypted FedAvg then plaintext FedAvg; writes ``summary.json``."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = new_run_dir(runs_dir, "demo-horizontal")
    console.print(f"[bold]fedrisk demo[/bold] — run folder {run_dir}")
    paths, holdout, schema = _write_bank_shares(run_dir, rows, seed)
    parties = [
        PartySettings(
            name=bank,
            role="bank",
            data=str(path),
            schema=schema,
            state_dir=str(run_dir / "parties" / bank),
            validation={"table": str(holdout)},
        )
        for bank, path in paths.items()
    ]
    base = {"mode": "horizontal", "algorithm": "fedavg", "num-rounds": rounds, "model": "mlp", "hidden-units": 32, "seed": seed}
    results = {}
    with LocalFederation(run_dir, parties, {**base, "aggregation": "ckks"}, log=console.print) as federation:
        for aggregation in ("ckks", "plain"):
            config = {**base, "aggregation": aggregation, "fedrisk-run-id": f"{run_dir.name}-{aggregation}"}
            with console.status(f"training: FedAvg, {aggregation} aggregation, {rounds} rounds"):
                results[aggregation] = federation.run(run_config=config)
            metrics = weighted_final_metrics(results[aggregation]["final"])
            console.print(f"  {aggregation:>5}: AUC {metrics.get('auc_federated', float('nan')):.4f} in {results[aggregation]['seconds']:.1f} s")
    he, plain = results["ckks"], results["plain"]
    he_metrics, plain_metrics = weighted_final_metrics(he["final"]), weighted_final_metrics(plain["final"])
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "mode": "horizontal",
        "algorithm": "fedavg",
        "aggregation": "ckks",
        "parties": list(BANKS),
        "rows": rows,
        "rounds": rounds,
        "auc_federated": he_metrics.get("auc_federated"),
        "ks_federated": he_metrics.get("ks_federated"),
        "auc_plain": plain_metrics.get("auc_federated"),
        "key_fingerprint": he.get("key_fingerprint"),
        "n_params": he.get("n_params"),
        "bytes_exchanged": he.get("bytes_exchanged"),
        "bytes_exchanged_plain": plain.get("bytes_exchanged"),
        "seconds_he": he.get("seconds"),
        "seconds_plain": plain.get("seconds"),
        **audit_run(run_dir, f"{run_dir.name}-ckks"),
        "seconds": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    table = Table(title="fedrisk demo: FedAvg over gRPC+TLS, 3 banks")
    for column in ("aggregation", "AUC", "KS", "seconds"):
        table.add_column(column)
    table.add_row("CKKS", f"{he_metrics.get('auc_federated', 0):.4f}", f"{he_metrics.get('ks_federated', 0):.4f}", f"{he['seconds']:.1f}")
    table.add_row("plain", f"{plain_metrics.get('auc_federated', 0):.4f}", f"{plain_metrics.get('ks_federated', 0):.4f}", f"{plain['seconds']:.1f}")
    console.print(table)
    verdict = "[green]verified[/green]" if summary["ledger_verified"] else "[red]FINDINGS[/red]"
    console.print(f"audit ledgers: {summary['ledger_entries']} entries, {verdict}; report: {summary['audit_report']}")
    console.print(f"summary: {run_dir / 'summary.json'}")
    return summary
