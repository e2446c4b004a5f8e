"""Design measurement: SecureBoost's histogram kernel against the reversed, coefficient-packed one.

Not a protocol fedrisk runs. It measures, in one process and one run, the CPU
a tree's node histograms cost under two designs on the same bins and gradients
(default-credit shape: 24,000 training rows, 120 bin columns, a depth-3 tree
with histogram subtraction = 4 node histograms), so that the choice of the next
SecureBoost kernel rests on figures taken side by side:

* ``current``: :class:`fedrisk.crypto.encrypted_histogram.EncryptedHistogramKernel`
  (the feature holder multiplies the label holder's BFV-encrypted gradients by
  its one-hot bins: slot packing, N = 16384, baby-step/giant-step rotations,
  flooding), one worker, so its time is core-seconds.
* ``reversed``: the feature holder encrypts its one-hot bin matrix once per run
  under *its own* key (coefficient packing: ``n`` rows of ``b = N/n`` columns
  per ciphertext); per node the label holder multiplies it by its plaintext
  ``m_v ⊙ g`` and ``m_v ⊙ h`` (one product per row block and column group —
  the polynomial product puts each column's total over ``n`` rows in one
  coefficient; no rotation, no key switch), re-randomises with the feature
  holder's public key, adds a uniform mask ``r`` (mod ``t``) and the flooding,
  and switches down; the feature holder decrypts ``H + r`` and returns only the
  total coefficients, which the label holder unmasks. The privacy argument
  would be the same circuit-privacy argument (flooding sized for 40 bits over
  the run's ciphertexts, re-randomisation, masking) with the roles of key
  holder and evaluator swapped; only time, bytes and the noise room are
  measured here. Two variants (:data:`VARIANTS`): ``N = 8192`` with ``g`` and
  ``h`` in separate products (``t`` ≈ 2^33: two plaintext products of 60 bits
  do not fit with the flooding), and ``N = 16384`` with ``g + 2^k h`` packed as
  the current kernel packs them, products on the fewest primes whose noise
  room still holds the flooding (measured, not assumed).

``python benchmarks/histogram_kernels.py`` prints one JSON object:
``current_core_s_per_tree``, ``reversed_core_s_per_tree`` (the faster
variant), ``speedup``, and per variant the split by step, ``bytes_per_tree``,
the one-off setup (time and bytes), the noise and flooding bits and
``correct`` (every design's totals equal the plaintext histograms).

Measured here (quiet machine, 2026-12-06): current 2.22 core-s per tree,
3.4 MB; ``16384-packed`` 1.40 core-s (products 0.60 on four primes,
plaintext transforms 0.34, masked and flooded outputs 0.40), 10.8 MB per tree
and a 343 MB bin matrix sent once; ``8192-separate`` 1.87 core-s, 6.9 MB per
tree, 163 MB once. Speed-up 1.59: with the label holder's own 13 core-s and
the setup, a default-credit run would still need about 28–30 s on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tenseal.sealapi as sa  # noqa: E402

from fedrisk.crypto.bfv import uniform_noise_rns  # noqa: E402
from fedrisk.crypto.encrypted_histogram import (  # noqa: E402
    EncryptedHistogramKernel,
    decrypt_histogram,
    encrypt_gradients,
    make_histogram_context,
    quantisation,
)
from fedrisk.crypto.seal_runtime import ByteBridge  # noqa: E402
from fedrisk.models.in_process import public_copies  # noqa: E402

#: (polynomial degree, plaintext bits, g and h packed in one product): the variants measured.
VARIANTS = {
    "8192-separate": (8192, 33, False),  # t holds a node's column total of g (or h), signed
    "16384-packed": (16384, 60, True),  # t holds g_q + 2^k h_q packed as the current kernel does
}
STAT_BITS = 40


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


# -- the reversed, coefficient-packed kernel -------------------------------------------------------
class Reversed:
    """The feature holder's bins under its own key; the label holder's plaintext products."""

    def __init__(self, onehot: np.ndarray, rows_per_block: int, poly: int, plain_bits: int) -> None:
        self.poly = poly
        parms = sa.EncryptionParameters(sa.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(poly)
        parms.set_coeff_modulus(sa.CoeffModulus.BFVDefault(poly, sa.SEC_LEVEL_TYPE.TC128))
        self.t = (1 << plain_bits) - 9  # any modulus works for coefficient encoding
        parms.set_plain_modulus(sa.Modulus(self.t))
        self.seal = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
        keygen = sa.KeyGenerator(self.seal)
        self.secret = keygen.secret_key()
        self.public = sa.PublicKey()
        keygen.create_public_key(self.public)
        self.io = ByteBridge()
        self.evaluator = sa.Evaluator(self.seal)
        self.encryptor = sa.Encryptor(self.seal, self.public)  # the label holder's: re-randomising
        self.symmetric = sa.Encryptor(self.seal, self.secret)  # the feature holder's: its bins
        self.decryptor = sa.Decryptor(self.seal, self.secret)
        self.n = rows_per_block
        self.b = poly // rows_per_block
        self.rows, self.cols = onehot.shape
        self.blocks = -(-self.rows // self.n)
        self.groups = -(-self.cols // self.b)
        self.level = 0
        data = self.seal.first_context_data()
        self.levels = [data.parms_id()]
        while data.next_context_data() is not None:
            data = data.next_context_data()
            self.levels.append(data.parms_id())
        self.moduli = []
        data = self.seal.first_context_data()
        while data is not None:
            self.moduli.append([m.value() for m in data.parms().coeff_modulus()])
            data = data.next_context_data()
        self.onehot = onehot
        self.version = self.io.save(sa.Plaintext("1").save)[3:5]  # SEAL's serialisation version, as SEAL writes it

    # SEAL's Python binding has no write access to coefficients: load them as a DynArray.
    def _plain(self, coeffs: np.ndarray) -> sa.Plaintext:
        pt = sa.Plaintext(self.poly)
        data = np.asarray(coeffs, dtype="<u8")
        body = struct.pack("<Q", data.size) + data.tobytes()
        header = struct.pack("<HBBBBHQ", 0xA15E, 16, self.version[0], self.version[1], 0, 0, 16 + len(body))
        self.io.load(header + body, pt.dyn_array().load)
        return pt

    def encrypt_bins(self) -> tuple[list[list[bytes]], float]:
        """The feature holder's one-off setup: its bins, encrypted (seeded) and serialised."""
        start = _cpu()
        out: list[list[bytes]] = []
        for k in range(self.blocks):
            block = self.onehot[k * self.n : (k + 1) * self.n]
            row: list[bytes] = []
            for g in range(self.groups):
                coeffs = np.zeros(self.poly, dtype=np.uint64)
                part = block[:, g * self.b : (g + 1) * self.b]
                for c in range(part.shape[1]):
                    coeffs[c * self.n : c * self.n + part.shape[0]] = part[:, c]
                ct = sa.Ciphertext()
                self.symmetric.encrypt_symmetric(self._plain(coeffs), ct)
                row.append(self.io.save(ct.save))
            out.append(row)
        return out, _cpu() - start

    def load_bins(self, blobs: list[list[bytes]], level: int = 0) -> list[list[sa.Ciphertext]]:
        """The label holder's one-off: parse, switch down to ``level`` (products are cheaper on fewer
        primes), transform to NTT form (cached for the run)."""
        self.level = level
        cts = []
        for row in blobs:
            loaded = []
            for blob in row:
                ct = sa.Ciphertext()
                self.io.load(blob, lambda path, ct=ct: ct.load(self.seal, path))
                if level:
                    self.evaluator.mod_switch_to_inplace(ct, self.levels[level])
                self.evaluator.transform_to_ntt_inplace(ct)
                loaded.append(ct)
            cts.append(loaded)
        return cts

    def node(self, bins: list[list[sa.Ciphertext]], values: np.ndarray, flood_bits: int, wire_level: int, steps: dict) -> tuple[list[bytes], list[np.ndarray]]:
        """One node's histogram of ``values`` (already masked by the node): masked, flooded ciphertexts and the masks."""
        t0 = _cpu()
        plains = []
        for k in range(self.blocks):
            seg = values[k * self.n : (k + 1) * self.n]
            coeffs = np.zeros(self.poly, dtype=np.int64)
            coeffs[self.n - 1 - np.arange(seg.size)] = seg
            pt = self._plain(np.mod(coeffs, self.t).astype(np.uint64))
            self.evaluator.transform_to_ntt_inplace(pt, self.levels[self.level])
            plains.append(pt)
        t1 = _cpu()
        outs = []
        for g in range(self.groups):
            acc = sa.Ciphertext()
            self.evaluator.multiply_plain(bins[0][g], plains[0], acc)
            for k in range(1, self.blocks):
                prod = sa.Ciphertext()
                self.evaluator.multiply_plain(bins[k][g], plains[k], prod)
                self.evaluator.add_inplace(acc, prod)
            outs.append(acc)
        t2 = _cpu()
        blobs, masks = [], []
        for ct in outs:
            self.evaluator.transform_from_ntt_inplace(ct)
            zero = sa.Ciphertext()
            self.encryptor.encrypt_zero(self.levels[self.level], zero)
            self.evaluator.add_inplace(ct, zero)  # c1 independent of the products
            mask = np.frombuffer(os.urandom(8 * self.poly), dtype="<u8") % np.uint64(self.t)
            self.evaluator.add_plain_inplace(ct, self._plain(mask))  # the feature holder decrypts H + r
            noise = uniform_noise_rns(self.moduli[self.level], self.poly, flood_bits)
            flood = sa.Ciphertext(self.seal, self.levels[self.level])
            flood.resize(self.seal, self.levels[self.level], 2)
            data = np.concatenate([noise.astype("<u8").ravel(), np.zeros(noise.size, dtype="<u8")])
            body = struct.pack("<Q", data.size) + data.tobytes()
            header = struct.pack("<HBBBBHQ", 0xA15E, 16, self.version[0], self.version[1], 0, 0, 16 + len(body))
            self.io.load(header + body, flood.dyn_array().load)
            self.evaluator.add_inplace(ct, flood)
            if wire_level > self.level:
                self.evaluator.mod_switch_to_inplace(ct, self.levels[wire_level])
            blobs.append(self.io.save(ct.save))
            masks.append(mask)
        t3 = _cpu()
        steps["plaintexts"] += t1 - t0
        steps["products"] += t2 - t1
        steps["output"] += t3 - t2
        return blobs, masks

    def totals(self, blobs: list[bytes], masks: list[np.ndarray], steps: dict) -> np.ndarray:
        """The feature holder decrypts; the label holder unmasks the total coefficients."""
        t0 = _cpu()
        out = []
        for blob, mask in zip(blobs, masks, strict=True):
            ct = sa.Ciphertext()
            self.io.load(blob, lambda path, ct=ct: ct.load(self.seal, path))
            pt = sa.Plaintext()
            self.decryptor.decrypt(ct, pt)
            coeffs = np.zeros(self.poly, dtype=np.int64)
            raw = np.array([pt.data(i) for i in range(self.n - 1, self.poly, self.n)], dtype=np.int64)
            coeffs[self.n - 1 :: self.n] = raw
            sums = (coeffs[self.n - 1 :: self.n] - mask[self.n - 1 :: self.n].astype(np.int64)) % self.t
            out.append(np.where(sums > self.t // 2, sums - self.t, sums))
        steps["decrypt"] += _cpu() - t0
        return np.concatenate(out)[: self.cols]

    def noise_budget(self, blob: bytes) -> int:
        ct = sa.Ciphertext()
        self.io.load(blob, lambda path: ct.load(self.seal, path))
        return int(self.decryptor.invariant_noise_budget(ct))


def measure_reversed(codes: np.ndarray, grad: np.ndarray, hess: np.ndarray, nodes: list[np.ndarray], bins: int, rows_per_block: int, variant: str) -> dict:
    poly, plain_bits, packed = VARIANTS[variant]
    rows, features = codes.shape
    onehot = np.zeros((rows, features * bins), dtype=np.uint8)
    for f in range(features):
        onehot[np.arange(rows), f * bins + codes[:, f]] = 1
    q = quantisation(rows)
    g_q = np.rint(grad * 2.0**q.g_bits).astype(np.int64)
    h_q = np.rint(hess * 2.0 ** (q.h_bits + 2)).astype(np.int64)
    # One product per node for both (packed as the current kernel packs them), or one each.
    values_per_node = [q.pack(grad, hess)] if packed else [g_q, h_q]
    kernel = Reversed(onehot, rows_per_block * poly // 8192, poly, plain_bits)
    enc_blobs, setup_cpu = kernel.encrypt_bins()
    ciphertexts_per_run = 30 * len(nodes) * len(values_per_node) * kernel.groups
    stat = STAT_BITS + math.ceil(math.log2(ciphertexts_per_run * poly))

    def flooding_at(level: int) -> tuple[int, int, int]:
        """(noise bits, flood bits, room bits) of the root's histogram with products at ``level``."""
        cts = kernel.load_bins(enc_blobs, level)
        probe, _ = kernel.node(cts, values_per_node[0], 0, level, {"plaintexts": 0.0, "products": 0.0, "output": 0.0})
        q_bits = sum(int(math.log2(m)) + 1 for m in kernel.moduli[level])
        noise = q_bits - plain_bits - kernel.noise_budget(probe[0])  # SEAL's invariant budget, inverted
        return noise, noise + stat, q_bits - plain_bits - 2 - (noise + stat)

    # Products on as few primes as the flooding leaves room for: the deepest level with room ≥ 8 bits.
    level, (noise_bits, flood_bits, room) = 0, flooding_at(0)
    for deeper in range(1, len(kernel.levels) - 1):
        trial = flooding_at(deeper)
        if trial[2] < 8:
            break
        level, (noise_bits, flood_bits, room) = deeper, trial
    start = _cpu()
    cts = kernel.load_bins(enc_blobs, level)
    load_cpu = _cpu() - start
    out: dict = {
        "poly_modulus_degree": poly,
        "plain_modulus_bits": plain_bits,
        "g_and_h_packed": packed,
        "rows_per_block": kernel.n,
        "columns_per_ciphertext": kernel.b,
        "products_per_node": len(values_per_node) * kernel.blocks * kernel.groups,
        "noise_bits_before_flooding": noise_bits,
        "flood_bits": flood_bits,
        "room_bits": room,
        "product_level": level,
        "product_primes": len(kernel.moduli[level]),
    }
    if room < 1:  # the flooding for 40-bit run-level security does not fit under Δ: this variant cannot be secure
        out.update(feasible=False, correct=None)
        return out
    # Leave on the fewest primes that still hold t and the flooded noise's scaled copy: 2 primes, or the product level.
    wire_level = max(level, len(kernel.levels) - 2)
    steps = {"plaintexts": 0.0, "products": 0.0, "output": 0.0, "decrypt": 0.0}
    correct = True
    sent = 0
    for node in nodes:
        for values in values_per_node:
            masked = np.where(node, values, 0)
            blobs, masks = kernel.node(cts, masked, flood_bits, wire_level, steps)
            sent += sum(len(b) for b in blobs)
            totals = kernel.totals(blobs, masks, steps)
            correct &= bool(np.array_equal(totals, onehot[node].T.astype(np.int64) @ values[node]))
    returned = 8 * kernel.cols * len(values_per_node) * len(nodes)  # the feature holder returns the totals only
    out.update(
        feasible=True,
        core_s_per_tree=round(sum(steps.values()), 3),
        steps_core_s={k: round(v, 3) for k, v in steps.items()},
        bytes_per_tree=int(sent + returned),
        setup_core_s=round(setup_cpu + load_cpu, 3),
        setup_bytes=int(sum(len(b) for row in enc_blobs for b in row)),
        noise_budget_left=kernel.noise_budget(blobs[0]),
        wire_level=wire_level,
        correct=correct,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24000)
    parser.add_argument("--features", type=int, default=4, help="feature holder's features (x bins = columns)")
    parser.add_argument("--bins", type=int, default=30)
    parser.add_argument("--rows-per-block", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="3,000 rows")
    args = parser.parse_args()
    rows = 3000 if args.quick else args.rows
    codes, grad, hess, nodes = synthetic(rows, args.features, args.bins)
    current = measure_current(codes, grad, hess, nodes, args.bins)
    variants = {name: measure_reversed(codes, grad, hess, nodes, args.bins, args.rows_per_block, name) for name in VARIANTS}
    feasible = {n: v for n, v in variants.items() if v["feasible"]}
    best = min(feasible, key=lambda n: feasible[n]["core_s_per_tree"]) if feasible else None
    best_s = feasible[best]["core_s_per_tree"] if best else None
    print(
        json.dumps(
            {
                "rows": rows,
                "columns": args.features * args.bins,
                "nodes_per_tree": len(nodes),
                "current_core_s_per_tree": current["core_s_per_tree"],
                "reversed_core_s_per_tree": best_s,
                "reversed_variant": best,
                "speedup": round(current["core_s_per_tree"] / best_s, 2) if best_s else None,
                "current": current,
                "reversed": variants,
                "correct": bool(current["correct"] and all(v["correct"] for v in feasible.values())),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
