"""``fedrisk demo --model stacking``: federated base learners over the Deployment Engine, a meta-learner at the bank.

The demo federation (bank + tax bureau + platform, real SuperLink/SuperNodes over
gRPC+TLS) trains both base learners with their own protocols, one run each on the
same party processes: encrypted vertical logistic regression and SecureBoost. Each
is deployed to the sandboxed scoring node and scores the bank's held-out rows live
(feature holders answer partial scores or split directions, as when served alone).
The bank fits the meta-learner (:func:`fedrisk.models.stacking.fit_meta_learner`,
a logistic regression on the base learners' log-odds) on the *selection* half of
its held-out rows — rows no base learner trained on — and reports every base
learner's and the stack's AUC on the *evaluation* half, which neither training,
early stopping nor the meta-learner saw. The meta-learner is written as a signed
bundle of the bank's (JSON + safetensors, Ed25519).

Serving the stack as one model: the scoring node can (a stack folder of the
bank's base bundles and this meta bundle, which names their run ids and
digests; each feature holder asked once per application for every base
learner: :mod:`fedrisk.scoring.stack`). The demo still scores each base
learner on its own node, because its meta-learner is fitted on the base
learners' live scores — which exist only once each base learner is served — and
each base run has its own PSI allow-list.

Deployed vs in-process: :class:`fedrisk.models.stacking.VerticalStacking` (and
``benchmarks/scorecard.py``) fits the meta-learner on K-fold out-of-fold
predictions; the deployed demo uses held-out rows (blending) because the parties'
alignment fixes one training split per run — K-fold runs over the Deployment
Engine need the bank's alignment to take a fold from the run config.

Leakage: no new exchange type. Each base protocol's messages are exactly those of
its own run (see their leakage statements); the meta-learner is fitted and applied
by the bank on scores its scoring node receives anyway.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedrisk.federation.local import LocalFederation
from fedrisk.federation.train import audit_run, label_holder_intersection, new_run_dir, vertical_metrics, write_summary
from fedrisk.federation.demo_support import VALIDATION, VERTICAL_PARTIES, centralised_reference, leave_out_pd, score_live, write_model_report
from fedrisk.parties.settings import PartySettings

BASES = ("vertical_lr", "secureboost")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def _write_meta_bundle(run_dir: Path, meta_learner, run_id: str, bases: dict | None = None) -> Path:
    """The bank's meta-learner as a signed bundle (kind ``stacking_meta``), signed with the bank's ledger identity.

    ``bases`` (base learner name → the bank's verified base bundle, a
    :class:`~fedrisk.scoring.bundles.LoadedModel`) binds the meta-learner to
    the exact base bundles it was fitted on (their run ids and manifest digests), as a
    scoring node serving the stack as one model checks (:mod:`fedrisk.scoring.stack`).
    """
    from fedrisk.models.bundle import write_model_bundle
    from fedrisk.parties.identity import PartyIdentity

    bank_dir = run_dir / "parties" / "bank"
    identity = PartyIdentity.load_or_create(bank_dir, "bank")
    record = meta_learner.to_record()
    meta = {
        "kind": "stacking_meta",
        "run_id": run_id,
        "party": "bank",
        "base_learners": record["names"],
        "intercept": record["intercept"],
        "meta_fit": "held-out selection rows (blending)",
    }
    if bases:
        meta["base_run_ids"] = {n: bases[n].run_id for n in record["names"] if n in bases}
        meta["base_digests"] = {n: bases[n].digest for n in record["names"] if n in bases}
    return write_model_bundle(bank_dir / "bundles" / f"{run_id}-stacking-meta", {"coef": np.asarray(record["coef"])}, meta, identity.signing)


def run_stacking_bases(session, context, run_vertical, close_ledgers) -> dict:
    """``algorithm = "stacking"`` in a run config: every base learner's own protocol, one after the other.

    Each base learner runs under its own run id ``<run-id>.<base>`` (its own PSI,
    its own bundles in each party's ``models/<run-id>.<base>/``, its own run-close
    records in every ledger), with exactly its own messages: no new exchange type.
    The coordinator never sees a score, so the meta-learner is not fitted here: the
    bank fits it on its held-out rows from its scoring node's decisions
    (``fedrisk demo --model stacking`` does, :func:`run_stacking_demo`). Stacking
    runs are not checkpointed (a crashed run is resubmitted from the start).
    """
    from fedrisk.errors import ConfigError

    bases = [b.strip() for b in str(context.run_config.get("base-learners", ",".join(BASES))).split(",") if b.strip()]
    unknown = [b for b in bases if b not in BASES]
    if unknown or not bases:
        raise ConfigError(f"run config base-learners: unknown base learner {unknown[0] if unknown else ''!r} (known: {', '.join(BASES)})")
    parent = session.run_id
    out: dict = {}

    class _Sub:  # the run context one base protocol sees: the same config with its algorithm
        def __init__(self, algorithm: str) -> None:
            self.run_config = {**dict(context.run_config), "algorithm": algorithm}

    try:
        for base in bases:
            session.run_id = f"{parent}.{base}"
            result = run_vertical(session, _Sub(base), None)
            unclosed = close_ledgers(session, context)
            if unclosed:
                result["ledger_unclosed"] = unclosed
            result["run_id"] = session.run_id
            out[base] = result
    finally:
        session.run_id = parent
    first = out[bases[0]]
    return {
        "status": "ok",
        "mode": "vertical",
        "algorithm": "stacking",
        "label_holder": first.get("label_holder"),
        "feature_holders": first.get("feature_holders"),
        "rows": first.get("rows"),
        "base_learners": bases,
        "base": out,
        "bundles": {b: out[b].get("bundles", {}) for b in bases},
        "meta_learner": "fitted by the bank on its held-out rows from live scoring (fedrisk demo --model stacking)",
    }


def run_stacking_demo(*, runs_dir: Path, rows: int, epochs: int, trees: int, seed: int, console: Console | None = None) -> dict:
    """Bank + tax bureau + platform: both base learners over gRPC+TLS, live scoring, the bank's meta-learner."""
    from fedrisk.models.bundle import load_model_bundle
    from fedrisk.models.metrics import auc, ks
    from fedrisk.models.stacking import MetaLearner, fit_meta_learner
    from fedrisk.data.datasplit import evaluation_mask, training_mask
    from fedrisk.data.synthetic import PARTY_SCHEMAS, generate_sme_data

    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = new_run_dir(runs_dir, "demo-stacking")
    console.print(f"[bold]fedrisk demo[/bold] — vertical stacking (vertical LR + SecureBoost, meta-learner at the bank), run folder {run_dir}")
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
    holders = [p for p, r in VERTICAL_PARTIES.items() if r == "feature_holder"]
    configs = {
        "vertical_lr": {"mode": "vertical", "algorithm": "vertical_lr", "epochs": epochs, "seed": seed},
        "secureboost": {"mode": "vertical", "algorithm": "secureboost", "trees": trees, "depth": 3, "bins": 32, "seed": seed},
    }
    results: dict[str, dict] = {}
    with LocalFederation(run_dir, parties, {**configs["vertical_lr"], "fedrisk-run-id": f"{run_dir.name}-vertical_lr"}, log=console.print) as federation:
        for name in BASES:
            with console.status(f"base learner {name}: PSI and its encrypted protocol"):
                results[name] = federation.run(run_config={**configs[name], "fedrisk-run-id": f"{run_dir.name}-{name}"})
            console.print(f"  {name}: trained in {results[name].get('seconds', 0):.1f} s")
    y = np.asarray(data.bank.labels).astype(int)
    train_by_row = training_mask(y, VALIDATION)
    eval_by_row = evaluation_mask(y, train_by_row, int(VALIDATION["seed"]))
    held = np.flatnonzero(~train_by_row)
    live: dict[str, dict] = {}
    scoring: dict[str, dict] = {}
    for name in BASES:
        live[name] = {}
        with console.status(f"live decisions from {name}: the sandboxed scoring node and each party's scoring service"):
            scoring[name] = score_live(
                run_dir, results[name], data, paths, train_by_row, model=name, scoring_dir=f"scoring-{name}", arrays=live[name], rows=held
            )
    rows_scored = live[BASES[0]]["rows"]
    select = ~eval_by_row[rows_scored]  # held-out rows early stopping may use, never the evaluation half
    evaluate = eval_by_row[rows_scored]
    z = {n: _logit(live[n]["pd_live"]) for n in BASES}
    meta = fit_meta_learner({n: z[n][select] for n in BASES}, y[rows_scored][select])
    run_id = run_dir.name
    trusted = run_dir / "coordinator" / "signing_keys.json"
    import json

    from fedrisk.scoring.bundles import load_bank_model

    keys = [bytes.fromhex(k) for k in json.loads(trusted.read_text()).values()]
    bank_bases = {n: load_bank_model(results[n]["bundles"]["bank"], keys) for n in BASES}
    meta_bundle = _write_meta_bundle(run_dir, meta, run_id, bank_bases)
    arrays, meta_json = load_model_bundle(meta_bundle, keys)  # verified before use, as the node would
    meta = MetaLearner(meta_json["base_learners"], arrays["coef"], float(meta_json["intercept"]))
    y_eval = y[rows_scored][evaluate]
    p_stack = meta.predict_proba({n: z[n][evaluate] for n in BASES})[:, 1]
    p_base = {n: live[n]["pd_live"][evaluate] for n in BASES}
    metrics = {n: vertical_metrics(results[n], label_holder_intersection(parties, results[n])) for n in BASES}
    auc_base = {n: float(auc(y_eval, p_base[n])) for n in BASES}
    central = {n: centralised_reference(data, train_by_row, n, trees) for n in BASES}
    # contributions: each feature holder left out of every base learner (scored as not covering), then the meta-learner
    eval_rows = rows_scored[evaluate]
    bundles = {n: {p: Path(b) for p, b in results[n]["bundles"].items()} for n in BASES}
    ids, X_bank = data.bank.ids[eval_rows], data.bank.feature_matrix()[eval_rows]
    without = {}
    for party in holders:
        zs = {n: _logit(leave_out_pd(n, bundles[n], keys, data, holders, party, ids, X_bank)) for n in BASES}
        without[party] = meta.predict_proba(zs)[:, 1]
    report = write_model_report(
        run_dir, run_id, data, parties, y, train_by_row, y_eval, p_stack, p_base, without, auc_bank_only=metrics["vertical_lr"].get("auc_bank_only")
    )
    audits = {n: audit_run(run_dir, results[n].get("run_id", f"{run_id}-{n}")) for n in BASES}
    auc_stack, ks_stack = float(auc(y_eval, p_stack)), float(ks(y_eval, p_stack))
    summary = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "mode": "vertical",
        "algorithm": "stacking",
        "model": "stacking",
        "parties": list(VERTICAL_PARTIES),
        "rows": rows,
        "rounds": {n: metrics[n]["epochs"] for n in BASES},
        "auc_base": auc_base,
        "ks_base": {n: float(ks(y_eval, p_base[n])) for n in BASES},
        "auc_stacking": auc_stack,
        "ks_stacking": ks_stack,
        "auc_federated": auc_stack,
        "ks_federated": ks_stack,
        "auc_bank_only": metrics["vertical_lr"].get("auc_bank_only"),
        "ks_bank_only": metrics["vertical_lr"].get("ks_bank_only"),
        "auc_centralized": max(c["auc"] for c in central.values()),
        "ks_centralized": max(c["ks"] for c in central.values()),
        "auc_centralized_base": {n: c["auc"] for n, c in central.items()},
        "intersection": metrics["vertical_lr"].get("intersection"),
        "meta_learner": {**meta.to_record(), "fit_on": "held-out selection rows (blending)", "fit_rows": int(select.sum()), "bundle": str(meta_bundle)},
        "evaluation_rows": int(evaluate.sum()),
        "base_runs": {
            n: {
                "run_id": results[n].get("run_id"),
                "bundles": results[n].get("bundles"),
                "seconds": results[n].get("seconds"),
                "auc_validation": metrics[n].get("auc_federated"),
            }
            for n in BASES
        },
        "bytes_exchanged": {n: results[n].get("bytes_exchanged") for n in BASES},
        "bytes_total": sum(int(results[n].get("bytes_total") or 0) for n in BASES),
        "seconds_training": sum(float(results[n].get("seconds") or 0) for n in BASES),
        "scoring": {**scoring, "max_abs_pd_diff_vs_offline": max(s["max_abs_pd_diff_vs_offline"] for s in scoring.values())},
        "model_report": str(report.html_path),
        "model_report_json": str(report.json_path),
        "ledger_verified": all(a["ledger_verified"] for a in audits.values()),
        "ledger_entries": sum(a["ledger_entries"] for a in audits.values()),
        "ledger_findings": [f for a in audits.values() for f in a["ledger_findings"]][:20],
        "audit_report": audits[BASES[-1]]["audit_report"],
        "seconds": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    table = Table(title="fedrisk demo: stacking of encrypted vertical LR and SecureBoost (meta-learner at the bank)")
    for column in ("model", "AUC", "KS"):
        table.add_column(column)
    table.add_row("bank only", f"{summary['auc_bank_only'] or float('nan'):.4f}", f"{summary['ks_bank_only'] or float('nan'):.4f}")
    for n in BASES:
        table.add_row(f"federated {n}", f"{auc_base[n]:.4f}", f"{summary['ks_base'][n]:.4f}")
    table.add_row("federated stacking", f"{auc_stack:.4f}", f"{ks_stack:.4f}")
    table.add_row("centralised (demo only, best base)", f"{summary['auc_centralized']:.4f}", f"{summary['ks_centralized']:.4f}")
    console.print(table)
    verdict = "[green]verified[/green]" if summary["ledger_verified"] else "[red]FINDINGS[/red]"
    console.print(f"audit ledgers: {summary['ledger_entries']} entries, {verdict}; model report: {summary['model_report']}")
    console.print(f"summary: {run_dir / 'summary.json'}")
    return summary
