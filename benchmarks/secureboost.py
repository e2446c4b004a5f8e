"""Benchmark: vertical SecureBoost over BFV (exact encrypted histograms) against the plaintext reference of the same algorithm.

On the UCI default-credit vertical split (FATE's files: the bank holds ``y`` and 13
features, one feature holder 10 features), stratified 80/20 hold-out
(``random_state=42``), FATE's configuration (30 trees, depth 3, 32 bins, learning
rate 0.3), it trains in one run

* the full federated protocol (:class:`fedrisk.models.secureboost.VerticalSecureBoost`:
  encrypted gradients, encrypted histograms reduced to bin totals, re-randomised and noise-flooded,
  decryption, split decisions and partitions, every payload serialised and relayed), and
* :class:`fedrisk.models.secureboost_tree.PlainSecureBoost`, the same algorithm with
  the same bins on the joined table,

and prints one JSON object (the last stdout line): ``rows``, ``features``, ``trees``,
``depth``, ``auc_federated``, ``auc_centralized``, ``seconds_total``,
``seconds_per_tree``, ``plain_seconds_per_tree``, ``overhead_ratio`` (``seconds_total``
counts the bank's key generation, ``keygen_seconds``, as ``fit(context=None)`` and the
deployed run do; plus
``rows_train``, ``auc_sklearn`` — scikit-learn's ``HistGradientBoostingClassifier``
with the same trees, depth, bins and learning rate — ``setup_seconds``,
``bytes_per_tree``, ``rounds``, ``same_splits`` — false when the quantisation of
g and h flips a near-tie — ``flood_bits``, ``flood_tv_bits`` (−log2 of the
run-level bound of :func:`fedrisk.crypto.encrypted_histogram.flooding_bound`, every
requested node counted), ``cpu_seconds_main`` and
``cpu_seconds_workers`` of the federated fit, which unlike wall time do not depend
on other jobs sharing the cores, and the one-minute ``load_average``).
``rows`` counts the data set (train + hold-out); the model trains on
``rows_train``. The issue's goal: the 30,000-row × 23-feature, 30-tree run in
≤ 60 s total on 2 cores.

``--ops`` adds the measured per-operation costs behind the cost model in
:mod:`fedrisk.crypto.encrypted_histogram` and one node histogram on one core.

``--deployment`` then runs the same job the way users run it — over Flower's
Deployment Engine (:mod:`benchmarks._deployment`: SuperLink, one SuperNode and
warm party process per party on 127.0.0.1, TLS, node authentication, ledgers
on, PSI first) — on the same rows: the bank's table is the whole data set in
the same order, and its validation split (``fraction`` 0.2, ``seed`` 42,
stratified) is by construction the hold-out above (checked), so it trains on
exactly the rows the in-process fit trained on. It adds
``seconds_total_deployment`` (the coordinator's ledger, from the ``sb.setup``
request to the last SecureBoost reply: key generation, the bank-only baseline,
setup, every tree, the validation answers and the signed bundles),
``deployment_ratio`` (÷ ``seconds_total``), ``deployment_ratio_transport_floor``
(the ratio if the parties and the coordinator added nothing to the in-process
work: in-process seconds plus Flower's transport, ÷ in-process), ``auc_deployment`` (the hold-out
scored from the signed bundles the run wrote: the bank's trees, the tax
bureau's routing table answering its own splits), ``exchanges`` (coordinator
requests of the protocol), ``seconds_per_exchange``, and where the time went
(``deployment_breakdown``: time inside the parties, Flower transport, the
coordinator; PSI; process start-up; the whole run).

Usage::

    python benchmarks/secureboost.py [--quick] [--rows N] [--trees T] [--depth D] [--bins B]
                                     [--learning-rate LR] [--n-jobs J] [--data DIR] [--ops]
                                     [--deployment]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fedrisk.crypto.encrypted_histogram import FLOOD_BITS
from fedrisk.models.metrics import auc
from fedrisk.models.secureboost import VerticalSecureBoost, make_label_holder_context
from fedrisk.models.secureboost_tree import PlainSecureBoost
from fedrisk.protocols import secureboost as sb_spec

log = logging.getLogger("fedrisk.bench.secureboost")

GOAL_SECONDS = 60.0
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    guest, host = load(data_dir(args.data), args.rows)
    train, test = train_test_split(guest.index.to_numpy(), test_size=0.2, stratify=guest["y"], random_state=42)
    y_test = guest.loc[test, "y"].to_numpy()
    params = dict(n_trees=args.trees, max_depth=args.depth, n_bins=args.bins, learning_rate=args.learning_rate)

    log.info("reference: %d training rows, %d trees", len(train), args.trees)
    joined = guest.join(host.add_prefix("h_"))
    features = [c for c in joined.columns if c != "y"]
    ref = PlainSecureBoost(**params).fit(joined.loc[train, features].to_numpy(), joined.loc[train, "y"].to_numpy())
    auc_ref = auc(y_test, ref.predict_proba(joined.loc[test, features].to_numpy())[:, 1])

    from sklearn.ensemble import HistGradientBoostingClassifier

    sk = HistGradientBoostingClassifier(max_iter=args.trees, max_depth=args.depth, max_bins=args.bins, learning_rate=args.learning_rate, early_stopping=False)
    sk.fit(joined.loc[train, features], joined.loc[train, "y"])
    auc_sk = auc(y_test, sk.predict_proba(joined.loc[test, features])[:, 1])

    log.info("federated: keys, then training (%d worker processes at the feature holder)", args.n_jobs)
    t0 = time.perf_counter()
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # The bank's key generation counts, as in fit(context=None) and in the deployed run's sb.setup.
    context = make_label_holder_context()
    keygen = time.perf_counter() - t0
    model = VerticalSecureBoost(**params, n_jobs=args.n_jobs).fit(guest.loc[train], {HOLDER: host.loc[train]}, context=context)
    seconds = time.perf_counter() - t0
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_main = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    cpu_workers = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)  # reaped at the end of fit
    p = model.predict_proba(guest.loc[test], {HOLDER: host.loc[test]})[:, 1]
    auc_fed = auc(y_test, p)
    kernel_info = model.feature_holders_[HOLDER]
    layout = kernel_info.layout_
    per_tree = float(np.mean(model.tree_seconds_))
    plain_per_tree = float(np.mean(ref.tree_seconds_))
    result = {
        "rows": int(len(guest)),
        "features": int(guest.shape[1] - 1 + host.shape[1]),
        "trees": args.trees,
        "depth": args.depth,
        "auc_federated": round(auc_fed, 6),
        "auc_centralized": round(auc_ref, 6),
        "seconds_total": round(seconds, 3),
        "keygen_seconds": round(keygen, 3),
        "seconds_per_tree": round(per_tree, 4),
        "plain_seconds_per_tree": round(plain_per_tree, 5),
        "overhead_ratio": round(per_tree / plain_per_tree, 1),
        "rows_train": int(len(train)),
        "bins": args.bins,
        "learning_rate": args.learning_rate,
        "auc_sklearn": round(auc_sk, 6),
        "same_splits": same_splits(model, ref, n_bank_features=guest.shape[1] - 1),
        "max_abs_prediction_gap": float(np.max(np.abs(p - ref.predict_proba(joined.loc[test, features].to_numpy())[:, 1]))),
        "setup_seconds": round(model.setup_seconds_, 3),
        "cpu_seconds_main": round(cpu_main, 2),
        "cpu_seconds_workers": round(cpu_workers, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "rounds": model.rounds_,
        "bytes_per_tree": int(model.bytes_per_tree_),
        "n_jobs": args.n_jobs,
        "histogram_columns": None if layout is None else layout.n_columns,
        "flood_bits": FLOOD_BITS,
        "flood_tv_bits": flood_bits(args, layout),
        "goal_seconds": GOAL_SECONDS,
    }
    if args.ops:
        from fedrisk.crypto.encrypted_histogram import make_histogram_context

        # the earlier kernel's operations rotate: they need a context with Galois keys
        result["ops_ms"] = measure_ops(make_histogram_context(), host.loc[train].to_numpy(), args.bins)
    if args.deployment:
        del model, ref, sk  # nothing of the in-process run stays warm for the deployed one
        result.update(deployment_figures(run_deployment(args, guest, host, test), result))
    return result


def _deployment_helpers() -> None:
    """Make ``benchmarks/_deployment.py`` importable however this file was loaded."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


#: Validation split of the deployed bank: the same stratified 80/20 split as the hold-out above.
DEPLOYED_VALIDATION = {"fraction": 0.2, "seed": 42}
#: Coordinator requests of the SecureBoost protocol (fedrisk.federation.secureboost).
SB_REQUESTS = tuple(step.request for step in sb_spec.STEPS)


def run_deployment(args: argparse.Namespace, guest: pd.DataFrame, host: pd.DataFrame, test: np.ndarray) -> dict[str, Any]:
    """The same job over SuperLink/SuperNodes with TLS; hold-out AUC from the run's signed bundles."""
    from fedrisk.data.datasplit import training_mask
    from fedrisk.parties.settings import PartySettings

    _deployment_helpers()
    from _deployment import exchange_timing, handler_seconds, run_deployed, schema, workspace, write_table

    from fedrisk.wire import message_types as mt

    held_out = ~training_mask(guest["y"].to_numpy(), DEPLOYED_VALIDATION)
    if set(guest.index[held_out]) != set(test):
        raise SystemExit("the deployed bank's validation rows are not the in-process hold-out: cannot compare")
    bank_features = [c for c in guest.columns if c != "y"]
    with workspace("fedrisk-bench-sb-") as root:
        # The bank's table in the data set's order (its validation split is the hold-out);
        # the tax bureau's in an order of its own, as it would be.
        bank_csv = write_table(guest.reset_index(), root / "data" / "bank.csv")
        host_csv = write_table(host.sample(frac=1.0, random_state=3).reset_index(), root / "data" / "tax_bureau.csv")
        parties = [
            PartySettings(
                BANK, "label_holder", str(bank_csv), schema(bank_features, label="y"), str(root / "run" / "parties" / BANK), dict(DEPLOYED_VALIDATION)
            ),
            PartySettings(HOLDER, "feature_holder", str(host_csv), schema(list(host.columns)), str(root / "run" / "parties" / HOLDER)),
        ]
        config = {
            "mode": "vertical",
            "algorithm": "secureboost",
            "trees": args.trees,
            "depth": args.depth,
            "bins": args.bins,
            "learning-rate": args.learning_rate,
            "n-jobs": args.n_jobs,
            "seed": 0,
        }
        log.info("deployment: %d trees over SuperLink/SuperNodes (TLS, node auth) on loopback", args.trees)

        def inspect(run: Any) -> dict[str, Any]:
            timing = exchange_timing(run, {p.name: Path(p.state_dir) for p in parties}, SB_REQUESTS)
            handlers = handler_seconds(run, (mt.SB_SETUP, mt.SB_JOIN, mt.SB_BANK_ROUND, mt.SB_ROUND))
            return {"timing": timing, "handlers": handlers, "auc": deployed_auc(run, guest.loc[test], host.loc[test])}

        run, seen = run_deployed(root, parties, config, run_id="bench-secureboost", inspect=inspect)
    return {"run": run, **seen}


def deployed_auc(run: Any, guest_test: pd.DataFrame, host_test: pd.DataFrame) -> float:
    """Hold-out AUC of the deployed model, scored from each party's signed bundle as the scoring node does."""
    from fedrisk.models.bundle import load_model_bundle
    from fedrisk.models.secureboost import answer_splits, load_feature_holder_bundle, load_label_holder_bundle

    trees = load_label_holder_bundle(*load_model_bundle(run.bundles[BANK], run.keys))
    arrays, meta = load_model_bundle(run.bundles[HOLDER], run.keys)
    routing = load_feature_holder_bundle(arrays, meta)
    answers = answer_splits(routing, host_test[list(routing.feature_names)].to_numpy(), fingerprint=str(meta.get("context_fingerprint", "")))
    p = trees.predict_proba(guest_test[list(trees.feature_names)].to_numpy(), {HOLDER: answers})[:, 1]
    return float(auc(guest_test["y"].to_numpy(), p))


def deployment_figures(deployed: dict[str, Any], inprocess: dict[str, Any]) -> dict[str, Any]:
    """The deployed run's keys beside the in-process ones."""
    _deployment_helpers()
    from _deployment import TRANSPORT

    run, timing = deployed["run"], deployed["timing"]
    result = run.result
    seconds = float(timing.get("seconds", float("nan")))
    exchanges = int(timing["exchanges"])
    trees = [float(t["seconds"]) for t in result.get("trees", [])]
    return {
        "seconds_total_deployment": round(seconds, 3),
        "deployment_ratio": round(seconds / float(inprocess["seconds_total"]), 2),
        "auc_deployment": round(deployed["auc"], 6),
        "exchanges": exchanges,
        "seconds_per_exchange": round(seconds / max(1, exchanges), 4),
        "seconds_per_tree_deployment": round(sum(trees) / max(1, len(trees)), 4),
        # the ratio if parties and coordinator cost nothing beyond the in-process work: Flower's transport alone
        "deployment_ratio_transport_floor": round(
            (float(inprocess["seconds_total"]) + float(timing.get("seconds_transport", 0.0))) / float(inprocess["seconds_total"]), 2
        ),
        "rounds_deployment": int(result.get("rounds", 0)),
        "deployment_breakdown": {
            **{k: v for k, v in timing.items() if k not in ("exchanges", "seconds")},
            # of seconds_in_parties: the warm party processes' protocol handlers (the rest: ClientApp, ledger mod, relay)
            "seconds_party_handlers": deployed["handlers"],
            "extra_seconds_per_exchange": round((seconds - float(inprocess["seconds_total"])) / max(1, exchanges), 4),
            "psi_seconds": round(float(result.get("psi_seconds", float("nan"))), 3),
            "coordinator_run_seconds": round(float(result.get("seconds", float("nan"))), 3),
            "flwr_run_wall_seconds": round(run.seconds_run, 3),
            "start_seconds": round(run.seconds_start, 3),
            "bytes_total": int(result.get("bytes_total", 0)),
        },
        "deployment_transport": TRANSPORT,
    }


def flood_bits(args: argparse.Namespace, layout: Any) -> float | None:
    """−log2 of the run's TV bound: trees × 2^(depth−1) requested nodes × ciphertexts per node."""
    from fedrisk.crypto.encrypted_histogram import flooding_bound

    if layout is None:
        return None
    n = args.trees * 2 ** max(0, args.depth - 1) * layout.n_ciphertexts
    return round(-float(np.log2(flooding_bound(n))), 2)


def same_splits(model: VerticalSecureBoost, ref: PlainSecureBoost, *, n_bank_features: int) -> bool:
    """Whether every node has the same (feature, bin, default) in both models."""
    A, R = model.model_.arrays, ref.model_.arrays
    if A["left"].size != R["left"].size or not np.array_equal(A["left"], R["left"]):
        return False
    tables = model.routing_tables_
    parties = model.model_.parties
    for i in np.flatnonzero(A["left"] >= 0):
        owner = int(A["owner"][i])
        if owner == 0:
            feat, b = int(A["feature"][i]), int(A["bin"][i])
        else:
            table = tables[parties[owner]]
            j = int(np.flatnonzero(table.split_id == A["split_id"][i])[0])
            feat, b = n_bank_features + int(table.feature[j]), int(table.bin[j])
        if (feat, b, int(A["default_left"][i])) != (int(R["feature"][i]), int(R["bin"][i]), int(R["default_left"][i])):
            return False
    return True


def measure_ops(context: Any, X: np.ndarray, n_bins: int) -> dict[str, float]:
    """Per-operation costs (CPU-bound ms, min of repeats) behind the kernel's cost model, and one histogram."""
    import tenseal.sealapi as sa

    from fedrisk.crypto.bfv import BFVRuntime, uniform_noise_rns
    from fedrisk.crypto.encrypted_histogram import OUTPUT_LEVEL, EncryptedHistogramKernel, encrypt_gradients
    from fedrisk.models.secureboost_tree import QuantileBinner
    from fedrisk.models.in_process import public_copies

    def best(fn: Any, reps: int = 20) -> float:
        out = np.inf
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            out = min(out, (time.perf_counter() - t) / reps)
        return round(out * 1e3, 4)

    public = public_copies(context).feature_holder
    rt = BFVRuntime.for_context(public)
    ev = rt.evaluator
    values = np.random.default_rng(0).integers(0, 2, rt.slots)
    ops: dict[str, float] = {}
    top = rt.encrypt(values)
    ntt = sa.Ciphertext()
    ev.transform_to_ntt(top, ntt)
    pt = rt.encode_ntt(values)
    out = sa.Ciphertext()
    ops["plain_multiply_ntt_5p"] = best(lambda: ev.multiply_plain(ntt, pt, out), 50)
    ops["add_ntt_5p"] = best(lambda: ev.add_inplace(out, ntt), 50)
    ops["encode_ntt"] = best(lambda: rt.encode_ntt(values), 10)
    ops["rotation_5p"] = best(lambda: ev.rotate_rows(top, 1, rt.galois_keys, out), 5)
    low = sa.Ciphertext()
    ev.mod_switch_to(top, rt.parms_ids[OUTPUT_LEVEL], low)
    ops["rotation_3p"] = best(lambda: ev.rotate_rows(low, 16, rt.galois_keys, out), 10)
    ops["flooding_noise_3p"] = best(lambda: uniform_noise_rns(rt.moduli[OUTPUT_LEVEL], rt.slots, 110), 5)
    ops["serialise_and_load_3p"] = best(lambda: rt.load(rt.dump(low)), 10)
    ops["encrypt_gradients_16384"] = best(lambda: encrypt_gradients(context, values * 0.5, values * 0.2), 3)
    binner = QuantileBinner(n_bins).fit(X)
    codes = binner.transform(X)
    cover = np.ones(X.shape[0], dtype=bool)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, X.shape[0])
    g, h = p - (rng.random(X.shape[0]) < 0.2), p * (1 - p)
    rows = rng.random(X.shape[0]) < 0.5
    with EncryptedHistogramKernel(codes, binner.n_bins_, binner.has_missing_, cover, public) as kernel:
        kernel.set_gradients(encrypt_gradients(context, g, h), X.shape[0])
        ops["histogram_one_core"] = best(lambda: kernel.node_histogram(rows), 1)
        ops["histogram_rotations"] = kernel.rotations_per_node_
    return ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8,000 rows and 10 trees (well under a minute)")
    parser.add_argument("--rows", type=int, default=None, help="rows of the data set to use (default: all 30,000)")
    parser.add_argument("--trees", type=int, default=30)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--bins", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--n-jobs", type=int, default=2, help="feature holder's worker processes")
    parser.add_argument("--data", default=None, help="folder with the default-credit split files")
    parser.add_argument("--ops", action="store_true", help="also measure per-operation costs")
    parser.add_argument("--deployment", action="store_true", help="also run the same job over SuperLink/SuperNodes with TLS on loopback (minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = args.rows or 8000
        args.trees = 10 if args.trees == 30 else args.trees
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    result = run(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
