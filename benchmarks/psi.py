"""Benchmark: ECDH-PSI entity alignment (label holder x one feature holder) vs a plain set intersection.

Runs the whole two-party protocol of :mod:`fedrisk.crypto.psi` end to end in one
process: every message goes through ``to_bytes`` / ``from_bytes`` as it would on the
wire, and all hashing and X25519 work shares this machine's cores through one
:class:`~fedrisk.crypto.psi_pool.BlindingPool` (the parties' steps run one after the
other, each on all cores). The reference is Python's ``set`` intersection of the raw
IDs, timed in the same run; the protocol's answer must equal it on both sides, in the
same (ID-sorted) row order.

The protocol runs twice on the same pool, as a warm party process would: first
**cold** (worker start-up, an empty label-holder cache: RFC 9380 hash-to-curve of
every ID and the classic ``2 |X| + 2 |Y|`` X25519 operations), then **warm** (a new
run: fresh feature-holder key and run id, the workers already up, the label holder's
blinded set served from its key-epoch cache, :mod:`fedrisk.crypto.psi_cache`, in a
temporary state folder, and the feature holder's hashed points cached by the pool:
``|X| + 2 |Y|`` X25519 operations, no hashing). With ``--classic`` a third run times
the warm protocol without the label-holder cache (``seconds_classic_warm``).

Prints one JSON object on stdout; progress goes to stderr.

Keys: ``n_label_holder``, ``n_feature_holder``, ``intersection``, ``seconds`` (wall
time of the warm run, from constructing the parties to both results),
``seconds_cold`` (the cold run, pool start-up included), ``rows_per_s`` =
(n_label + n_feature) / seconds (and ``rows_per_s_cold``), ``reference_seconds``,
``correct`` (every run), ``bytes_exchanged`` (all serialised messages of one run),
``label_cache_reused`` (the warm run took the label holder's blinded set from its
cache), and for context ``workers``, ``x25519_ops`` (counted in the warm run) and
``x25519_ops_cold``, ``x25519_ops_per_s`` (warm), ``x25519_us_per_op`` (per core,
warm), ``hash_to_curve_ids`` and ``hash_to_curve_us_per_id`` (per core: the cold run's
blinding time less its X25519 share at the warm rate, x workers / IDs), ``gmpy2``,
``suite``, ``phases`` / ``phases_cold`` (seconds per step) and
``two_machine_estimate_seconds`` (warm; ``_cold`` too): the critical path if each
party ran on its own machine of this size, i.e. the parallel rounds' slower steps
added up from the measured step times. That is an estimate; ``seconds`` is the
measurement. On a shared machine, ``worker_cpu_seconds`` / ``main_cpu_seconds`` (``_cold``
too) give the CPU the run used, and ``idle_machine_estimate_seconds`` = worker CPU /
workers + main CPU what it would take with the cores to itself; ``x25519_backend`` names
the X25519 backend and the input kinds it ran (:mod:`fedrisk.crypto.psi_x25519`).

Usage::

    python benchmarks/psi.py [--quick] [--classic] [--n-label N] [--n-feature M] [--overlap F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import numpy as np


def _log(message: str) -> None:
    print(f"[psi-bench] {message}", file=sys.stderr, flush=True)


def make_ids(n_label: int, n_feature: int, overlap: float, seed: int, kind: str) -> tuple[list[str], list[str], str]:
    """Two ID lists sharing ``round(overlap * min(n_label, n_feature))`` IDs, each shuffled."""
    n_common = int(round(overlap * min(n_label, n_feature)))
    total = n_label + n_feature - n_common
    rng = np.random.default_rng(seed)
    universe: list[str] | None = None
    used = "opaque"
    if kind in ("auto", "credit-code"):
        try:
            from fedrisk.data.credit_code import make_credit_codes

            universe = make_credit_codes(total, rng).tolist()
            used = "credit-code"
        except Exception as exc:  # the generator is optional here
            if kind == "credit-code":
                raise SystemExit(f"credit-code IDs unavailable: {exc}") from None
    if universe is None:
        universe = [f"SME-{v:012d}" for v in rng.permutation(10 * total)[:total].tolist()]
    common = universe[:n_common]
    label = common + universe[n_common:n_label]
    feature = common + universe[n_label:]
    label = [label[i] for i in rng.permutation(len(label)).tolist()]
    feature = [feature[i] for i in rng.permutation(len(feature)).tolist()]
    return label, feature, used


def wire(message, counter: list[int]):
    """Serialise a message, count its bytes, and parse it back as the receiver would."""
    from fedrisk.crypto.psi import decode_psi_message

    data = message.to_bytes()
    counter[0] += len(data)
    return decode_psi_message(data)


def _one_run(pool, label_ids: list[str], feature_ids: list[str], reference: set, start_pool: bool, cache=None) -> dict:
    """One protocol run on ``pool``; seconds, phases, correctness, bytes, X25519 count."""
    from fedrisk.crypto.psi import FeatureHolderPSI, LabelHolderPSI

    phases: dict[str, float] = {}
    sent = [0]

    def step(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        phases[name] = round(time.perf_counter() - t0, 3)
        _log(f"{name}: {phases[name]:.2f} s")
        return out

    run_id = f"bench-{uuid.uuid4()}"
    ops_before = dict(pool.operations)
    cpu_before = pool.cpu_seconds
    main_cpu = time.process_time()
    start = time.perf_counter()
    step("pool_start", pool.start if start_pool else (lambda: None))
    lh = step("label_setup", lambda: LabelHolderPSI(label_ids, run_id=run_id, party="bank", pool=pool, cache=cache))
    fh = step("feature_setup", lambda: FeatureHolderPSI(feature_ids, run_id=run_id, party="tax", pool=pool))
    a_set = step("label_blind", lambda: wire(lh.blind(), sent))
    b_set = step("feature_blind", lambda: wire(fh.blind(), sent))
    step("label_double_blind", lambda: lh.double_blind(b_set))
    ab_set = step("feature_double_blind", lambda: wire(fh.double_blind(a_set), sent))
    result_msg = step("label_intersect", lambda: wire(lh.intersect(ab_set), sent))
    fh_result = step("feature_finish", lambda: fh.finish(result_msg))
    seconds = time.perf_counter() - start
    main_cpu = time.process_time() - main_cpu
    lh_result = lh.result("tax")

    label_side = [label_ids[i] for i in lh_result.rows.tolist()]
    feature_side = [feature_ids[i] for i in fh_result.rows.tolist()]
    correct = (
        set(label_side) == reference
        and len(label_side) == len(reference)
        and label_side == feature_side
        and int(lh_result.mask.sum()) == len(reference)
        and int(fh_result.mask.sum()) == len(reference)
    )
    two_machines = (
        phases["pool_start"]
        + max(phases["label_setup"] + phases["label_blind"], phases["feature_setup"] + phases["feature_blind"])
        + max(phases["label_double_blind"], phases["feature_double_blind"])
        + phases["label_intersect"]
        + phases["feature_finish"]
    )
    return {
        "seconds": seconds,
        "phases": phases,
        "correct": bool(correct),
        "bytes": sent[0],
        "intersection": len(label_side),
        "two_machines": two_machines,
        "x25519": pool.operations["x25519"] - ops_before["x25519"],
        "hashed": pool.operations["hashed"] - ops_before["hashed"],
        "reused": bool(lh.reused_blinded_set),
        "worker_cpu": pool.cpu_seconds - cpu_before,
        "main_cpu": main_cpu,
    }


def run(n_label: int, n_feature: int, overlap: float, workers: int | None, seed: int, kind: str, classic: bool = False) -> dict:
    import tempfile

    from fedrisk.crypto.psi_cache import LabelHolderKeyCache
    from fedrisk.crypto.psi_group import HAVE_GMPY2, SUITE
    from fedrisk.crypto.psi_pool import BlindingPool

    _log(f"making IDs: {n_label} x {n_feature}, overlap {overlap}")
    label_ids, feature_ids, used_kind = make_ids(n_label, n_feature, overlap, seed, kind)

    t = time.perf_counter()
    reference = set(label_ids).intersection(feature_ids)
    reference_seconds = time.perf_counter() - t

    pool = BlindingPool(workers)
    classic_run = None
    with tempfile.TemporaryDirectory(prefix="psi-bench-state-") as state:
        cache = LabelHolderKeyCache(state)
        try:
            _log("cold run: worker start-up, empty label-holder cache, hash to curve and X25519")
            cold = _one_run(pool, label_ids, feature_ids, reference, start_pool=True, cache=cache)
            _log("warm run: fresh feature-holder key and run id, label holder's blinded set cached")
            warm = _one_run(pool, label_ids, feature_ids, reference, start_pool=False, cache=cache)
            if classic:
                _log("classic warm run: no label-holder cache (fresh keys on both sides)")
                classic_run = _one_run(pool, label_ids, feature_ids, reference, start_pool=False, cache=None)
        finally:
            pool.close()
    n_ids = n_label + n_feature
    online = ("feature_blind", "label_double_blind", "feature_double_blind")
    x_time = sum(warm["phases"][k] for k in online) + warm["phases"]["label_blind"]
    per_op = x_time / max(warm["x25519"], 1)  # wall seconds per X25519 over all workers
    hashing = cold["phases"]["label_blind"] + cold["phases"]["feature_blind"] - per_op * n_ids
    report = {
        "n_label_holder": n_label,
        "n_feature_holder": n_feature,
        "intersection": warm["intersection"],
        "seconds": round(warm["seconds"], 3),
        "seconds_cold": round(cold["seconds"], 3),
        "rows_per_s": round(n_ids / warm["seconds"], 1),
        "rows_per_s_cold": round(n_ids / cold["seconds"], 1),
        "reference_seconds": round(reference_seconds, 4),
        "correct": bool(cold["correct"] and warm["correct"] and warm["reused"] and (classic_run is None or classic_run["correct"])),
        "bytes_exchanged": warm["bytes"],
        "expected_intersection": len(reference),
        "label_cache_reused": warm["reused"],
        "workers": pool.workers,
        "cpu_count": os.cpu_count(),
        "x25519_ops": warm["x25519"],
        "x25519_ops_cold": cold["x25519"],
        "x25519_ops_per_s": round(warm["x25519"] / warm["seconds"], 1),
        "x25519_us_per_op": round(per_op * pool.workers * 1e6, 1),
        "hash_to_curve_ids": cold["hashed"],
        "hash_to_curve_us_per_id": round(max(hashing, 0.0) * pool.workers / n_ids * 1e6, 1),
        "gmpy2": HAVE_GMPY2,
        "suite": SUITE,
        "id_kind": used_kind,
        "phases": warm["phases"],
        "phases_cold": cold["phases"],
        "two_machine_estimate_seconds": round(warm["two_machines"], 3),
        "two_machine_estimate_seconds_cold": round(cold["two_machines"], 3),
    }
    # Load-independent view (the machine is shared): CPU seconds of the workers' hashing and
    # X25519, and of the main process (parsing, matching, cache I/O); with the worker part
    # spread over the workers, that is what the run would take on an otherwise idle machine.
    for name, r in (("", warm), ("_cold", cold)):
        report[f"worker_cpu_seconds{name}"] = round(r["worker_cpu"], 3)
        report[f"main_cpu_seconds{name}"] = round(r["main_cpu"], 3)
        report[f"idle_machine_estimate_seconds{name}"] = round(r["worker_cpu"] / pool.workers + r["main_cpu"], 3)
    from fedrisk.crypto.psi_x25519 import backend_name

    report["x25519_backend"] = backend_name()
    if classic_run is not None:
        report["seconds_classic_warm"] = round(classic_run["seconds"], 3)
        report["x25519_ops_classic"] = classic_run["x25519"]
        report["classic_over_cached"] = round(classic_run["seconds"] / warm["seconds"], 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 x 20,000 IDs (a few seconds)")
    parser.add_argument("--n-label", type=int, default=None, help="label holder IDs (default 1,000,000)")
    parser.add_argument("--n-feature", type=int, default=None, help="feature holder IDs (default 1,000,000)")
    parser.add_argument("--overlap", type=float, default=0.5, help="share of the smaller set in the intersection")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ids", choices=("auto", "credit-code", "opaque"), default="auto")
    parser.add_argument("--classic", action="store_true", help="also time a warm run without the label-holder cache")
    parser.add_argument("--json", action="store_true", help="accepted for `fedrisk bench`; output is always JSON")
    args = parser.parse_args(argv)
    default = 20_000 if args.quick else 1_000_000
    n_label = args.n_label if args.n_label is not None else default
    n_feature = args.n_feature if args.n_feature is not None else default
    if n_label < 1 or n_feature < 1 or not 0.0 <= args.overlap <= 1.0:
        parser.error("sizes must be >= 1 and --overlap within [0, 1]")
    report = run(n_label, n_feature, args.overlap, args.workers, args.seed, args.ids, args.classic)
    print(json.dumps(report))
    return 0 if report["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
