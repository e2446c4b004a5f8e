"""Design measurement: SecureBoost's histogram kernel against the reversed, coefficient-packed one.

SecureBoost runs on the reversed kernel since it was measured here; the current
one still serves the WOE scorecard. This measures, in one process and one run, the CPU a tree's node histograms cost under two designs on the same bins and gradients
(default-credit shape: 24,000 training rows, 120 bin columns, a depth-3 tree
with histogram subtraction = 4 node histograms), so that the choice of the next
SecureBoost kernel rests on figures taken side by side:

* ``current``: :class:`fedrisk.crypto.encrypted_histogram.EncryptedHistogramKernel` (SecureBoost's before, the WOE scorecard's still)
  (the feature holder multiplies the label holder's BFV-encrypted gradients by
  its one-hot bins: slot packing, N = 16384, baby-step/giant-step rotations,
  flooding), one worker, so its time is core-seconds.
* ``reversed``: :mod:`fedrisk.crypto.encrypted_bins`, in process. The feature
  holder encrypts its one-hot bin matrix once per run under *its own* key
  (coefficient packing: 512 rows × 32 columns per ciphertext); per node the label
  holder multiplies it by its plaintext ``m_v ⊙ (g + 2^k h)`` (no rotation, no key
  switch), re-randomises with the feature holder's public key, masks every
  coefficient uniformly mod ``t``, floods and switches down; the feature holder
  decrypts ``H + r`` and returns only the total coefficients, which the label
  holder unmasks. SecureBoost's kernel.

``python benchmarks/histogram_kernels.py`` prints one JSON object:
``current_core_s_per_tree``, ``reversed_core_s_per_tree``, ``speedup``, and per
kernel the split by step, ``bytes_per_tree``, the one-off setup (time and bytes)
and ``correct`` (every kernel's totals equal the plaintext histograms).

Measured here before the kernel moved into fedrisk (prototype, quiet machine,
2026-12-06): current 2.22 core-s per tree, 3.4 MB; reversed 1.40 core-s,
10.8 MB per tree and a 343 MB bin matrix sent once. A variant with ``N = 8192``
and ``g``, ``h`` in separate products took 1.87 core-s and was dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrisk.crypto.bfv import load_public_bfv_context, make_bfv_context, public_bfv_context_bytes  # noqa: E402
from fedrisk.crypto.encrypted_bins import (  # noqa: E402
    FLOOD_BITS,
    RUN_CIPHERTEXTS,
    MaskedHistogramEvaluator,
    decrypt_masked_totals,
    encrypt_bin_matrix,
    run_statistical_distance,
)
from fedrisk.crypto.encrypted_histogram import (  # noqa: E402
    EncryptedHistogramKernel,
    decrypt_histogram,
    encrypt_gradients,
    make_histogram_context,
    quantisation,
)
from fedrisk.models.in_process import public_copies  # noqa: E402


def _cpu() -> float:
    return time.process_time()


def synthetic(rows: int, features: int, bins: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, bins, size=(rows, features)).astype(np.uint8)
    p = rng.uniform(0.05, 0.95, rows)
    y = (rng.random(rows) < p).astype(float)
    grad, hess = p - y, p * (1 - p)
    root = np.ones(rows, dtype=bool)
    left = rng.random(rows) < 0.45
    nodes = [root, left, left & (rng.random(rows) < 0.5), ~left & (rng.random(rows) < 0.5)]
    return codes, grad, hess, nodes


def plain_histograms(onehot: np.ndarray, values: np.ndarray, nodes: list[np.ndarray]) -> list[np.ndarray]:
    return [onehot[node].T.astype(np.int64) @ values[node] for node in nodes]


# -- the current kernel ----------------------------------------------------------------------------
def measure_current(codes: np.ndarray, grad: np.ndarray, hess: np.ndarray, nodes: list[np.ndarray], bins: int) -> dict:
    rows, features = codes.shape
    context = make_histogram_context()
    public = public_copies(context).feature_holder  # what the feature holder receives: public key and Galois keys
    blobs = encrypt_gradients(context, grad, hess)
    kernel = EncryptedHistogramKernel(codes, [bins] * features, [False] * features, np.ones(rows, dtype=bool), public, n_jobs=1)
    with kernel:
        start = _cpu()
        kernel.set_gradients(blobs, rows)
        out = kernel.node_histograms(nodes)
        cpu = _cpu() - start
        layout = kernel.layout_
    q = quantisation(rows)
    onehot = np.zeros((rows, features * bins), dtype=np.int64)
    for f in range(features):
        onehot[np.arange(rows), f * bins + codes[:, f]] = 1
    correct = True
    for blobs_v, node in zip(out, nodes, strict=True):
        G, H = decrypt_histogram(context, blobs_v, layout)
        g_q = np.rint(grad * 2.0**q.g_bits).astype(np.int64)
        h_q = np.rint(hess * 2.0 ** (q.h_bits + 2)).astype(np.int64)
        correct &= bool(np.array_equal(np.rint(G * 2.0**q.g_bits).astype(np.int64)[: onehot.shape[1]], onehot[node].T @ g_q[node]))
        correct &= bool(np.array_equal(np.rint(H * 2.0 ** (q.h_bits + 2)).astype(np.int64)[: onehot.shape[1]], onehot[node].T @ h_q[node]))
    return {
        "core_s_per_tree": round(cpu, 3),
        "bytes_per_tree": int(sum(len(b) for b in blobs) + sum(len(b) for v in out for b in v)),
        "correct": correct,
    }


# -- the reversed kernel (fedrisk.crypto.encrypted_bins) ---------------------------------------------
def measure_reversed(codes: np.ndarray, grad: np.ndarray, hess: np.ndarray, nodes: list[np.ndarray], bins: int) -> dict:
    """:mod:`fedrisk.crypto.encrypted_bins` in process (core-seconds), on the same bins and packed gradients."""
    rows, features = codes.shape
    onehot = np.zeros((rows, features * bins), dtype=np.uint8)
    for f in range(features):
        onehot[np.arange(rows), f * bins + codes[:, f]] = 1
    packed = quantisation(rows).pack(grad, hess)  # g + 2^k h, as the current kernel packs them
    key = make_bfv_context(galois=False)  # the feature holder's own
    public = load_public_bfv_context(public_bfv_context_bytes(key, galois=False), "label holder")
    start = _cpu()
    layout, blobs = encrypt_bin_matrix(key, onehot)
    encrypt_cpu = _cpu() - start
    start = _cpu()
    evaluator = MaskedHistogramEvaluator(public, blobs, layout)
    load_cpu = _cpu() - start
    start = _cpu()
    histograms = evaluator.node_histograms([np.where(node, packed, 0) for node in nodes])
    evaluate_cpu = _cpu() - start
    start = _cpu()
    masked = [decrypt_masked_totals(key, h.ciphertexts, layout) for h in histograms]
    decrypt_cpu = _cpu() - start
    correct = all(
        np.array_equal(evaluator.unmask(m, h.mask), onehot[node].T.astype(np.int64) @ packed[node])
        for m, h, node in zip(masked, histograms, nodes, strict=True)
    )
    sent = sum(len(b) for h in histograms for b in h.ciphertexts)
    return {
        "core_s_per_tree": round(evaluate_cpu + decrypt_cpu, 3),
        "steps_core_s": {"label_holder_products_and_outputs": round(evaluate_cpu, 3), "feature_holder_decrypts": round(decrypt_cpu, 3)},
        "bytes_per_tree": int(sent + 8 * sum(m.size for m in masked)),  # the feature holder returns the totals only
        "setup_core_s": {"feature_holder_encrypts_bins": round(encrypt_cpu, 3), "label_holder_loads_bins": round(load_cpu, 3)},
        "setup_bytes": int(sum(len(b) for b in blobs)),
        "rows_per_block": layout.rows_per_block,
        "columns_per_ciphertext": layout.columns_per_ciphertext,
        "products_per_node": layout.blocks * layout.groups,
        "flood_bits": FLOOD_BITS,
        "run_statistical_distance_log2": round(math.log2(run_statistical_distance(RUN_CIPHERTEXTS)), 1),
        "correct": bool(correct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24000)
    parser.add_argument("--features", type=int, default=4, help="feature holder's features (x bins = columns)")
    parser.add_argument("--bins", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="3,000 rows")
    args = parser.parse_args()
    rows = 3000 if args.quick else args.rows
    codes, grad, hess, nodes = synthetic(rows, args.features, args.bins)
    current = measure_current(codes, grad, hess, nodes, args.bins)
    reversed_ = measure_reversed(codes, grad, hess, nodes, args.bins)
    print(
        json.dumps(
            {
                "rows": rows,
                "columns": args.features * args.bins,
                "nodes_per_tree": len(nodes),
                "current_core_s_per_tree": current["core_s_per_tree"],
                "reversed_core_s_per_tree": reversed_["core_s_per_tree"],
                "speedup": round(current["core_s_per_tree"] / reversed_["core_s_per_tree"], 2),
                "current": current,
                "reversed": reversed_,
                "correct": bool(current["correct"] and reversed_["correct"]),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
