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
from fedrisk.federation.demo_support import (
    VALIDATION,
    VERTICAL_PARTIES,
    centralised_reference,
    leave_out_pd,
    portfolio_policy,
    score_live,
    write_model_report,
)
from fedrisk.parties.settings import PartySettings

BANKS = ("bank_a", "bank_b", "bank_c")


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
    central = centralised_reference(data, train_by_row, model, trees)
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


def _vertical_model_report(run_dir: Path, result: dict, data, parties, train_by_row: np.ndarray, live: dict, model: str, auc_bank_only):
    """``runs/<id>/model_report.html`` + ``.json``: the live PDs on the evaluation rows, the bank's IV, each party left out."""
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
        deployment = start_example_deployment(ex, run_dir / "scoring", policy=portfolio_policy(run_dir))
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
