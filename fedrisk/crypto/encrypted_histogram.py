"""Encrypted per-bin histograms with the label holder as key holder (exact, BFV): the WOE scorecard's kernel.

Vertical SecureBoost ran on it until it moved to :mod:`fedrisk.crypto.encrypted_bins`
(the roles reversed: 1.93× less CPU per tree, no rotations); the WOE scorecard's
event/non-event counts still use it.

The label holder (key holder) encrypts the gradients ``g`` and hessians ``h`` of
its training rows; a feature holder, which bins its own features locally, returns
for a tree node ``v`` the per-bin sums ``Σ_{i∈v, bin_f(i)=b} g_i`` (and the same
for ``h``) without seeing ``g`` or ``h``, and without the label holder seeing
anything beyond those sums.

What the key holder decrypts
----------------------------
Only bin totals, exactly. Every slot of every histogram ciphertext holds the
*whole* total of one column (bin) — no partial sum over a subset of rows exists in
anything that decrypts — and the scheme is BFV (:mod:`fedrisk.crypto.bfv`), whose
decryption returns the message exactly: the totals carry no noise at all. What the
decryption also exposes to the holder of the secret key is the ciphertext's noise
``v`` (``c0 + c1·s = Δ·m + v``), a function of the feature holder's bins. Before a
histogram leaves the feature holder it is

1. re-randomised: a fresh public-key encryption of zero is added, so ``c1`` is an
   RLWE sample independent of the computation;
2. at :data:`OUTPUT_LEVEL` (three primes, ``Δ ≈ 2^121``): products are switched
   down to it as soon as they are done, so it is smaller on the wire and cheaper
   to rotate, and the noise shrinks with the modulus;
3. flooded: a polynomial with coefficients uniform in ``[−2^F, 2^F)``,
   ``F`` = :data:`FLOOD_BITS` (``os.urandom``), is added to ``c0``;
4. switched down to :data:`WIRE_LEVEL` (two primes, ``Δ ≈ 2^61``, the flooded noise
   ≈ 2^50): a public function of the flooded ciphertext, so the bound below is
   unchanged, and a third fewer bytes on the wire. The key holder decrypts nothing
   at any other level.

Run-level bound. Given RLWE (which the encryption rests on anyway) the key
holder's view of one histogram is ``(c1 uniform-looking, totals, v + U)``; a
simulator that knows only the totals outputs ``U`` in place of ``v + U``. Per
coefficient the statistical distance is ``|v_i|/2^{F+1}``; over the
``N = 16384`` coefficients of each of ``n`` histograms (fresh flooding each)::

    TV ≤ n · N · V / 2^{F+1},   V = 2^EVAL_NOISE_BITS ≥ ‖v‖∞ (stated bound, 2^3 above the measured maximum)

(:func:`flooding_bound`). The default-credit run decrypts ``n = 120`` histogram
ciphertexts: ``TV ≤ 120 · 2^14 · 2^{V−F−1}`` — see :data:`EVAL_NOISE_BITS` and
:data:`FLOOD_BITS` for the figures; ≥ 40 bits holds up to ``2^{F+1−40−14−V}``
ciphertexts per run. The flooding costs modulus, not precision: the totals stay exact.

Quantisation (the only approximation)
-------------------------------------
BFV encrypts integers mod ``t`` (59-bit prime). For ``n`` rows, ``r = ⌈log2(n+1)⌉``,
the label holder encrypts ``g_q + 2^k·h_q`` per row with ``g_q = round(g·2^a)``,
``h_q = round(h·2^{b+2})`` (``|g| ≤ 1``, ``0 ≤ h ≤ 1/4``), ``k = a + r + 1`` and
``a + b = 56 − 2r`` (:func:`quantisation`): every node's column total of ``g_q``
stays below ``2^{k−1}`` and the packed value below ``t/2``, so ``G`` and ``H``
unpack exactly. 24,000 rows: ``a = b = 13`` (``g`` to 2^-13, ``h`` to 2^-15).

Packing
-------
* **g and h in one slot** (above): one product yields both histograms.
* **Rows.** A ciphertext holds 16,384 rows as a 2 × 8192 slot matrix; rotations
  turn both rows at once, so each row of the matrix is an independent chunk of
  ``S = 8192`` data rows.
* **Histogram = one-hot transpose product** ``Bᵀ(m_v ⊙ (g_q + 2^k h_q))``, ``B`` the
  feature holder's fixed 0/1 bin matrix (plus a "NaN" column for a feature with
  missing values; rows it does not cover are all-zero and fall into the label
  holder's exact missing bucket), ``m_v`` the node's 0/1 row mask — its instance
  space, which the label holder discloses as SecureBoost does.
* **Interleaved baby-step/giant-step diagonals, then rotate-and-sum.** Columns are
  cut into blocks of ``F`` (power of two); column ``f`` of a block owns the slots
  ``{f + F·i}`` of each matrix row. With diagonal ``k = jb + i``::

      Out_q = Σ_j rot_{j·b}( Σ_i Σ_c P'[q,j,i,c] ⊙ rot_i(m_v ⊙ d_c) )

  slot ``t`` of ``Out_q`` is column ``t mod F`` summed over a window of ``F`` rows.
  The feature holder then rotates and adds with steps ``F, 2F, …, S/2`` and adds the
  column swap: every slot holds the total of its column over all rows, ``L =
  16384/F`` identical copies. The key holder checks that all copies agree.
* **NTT.** Products are pointwise in SEAL's NTT form: the baby-step rotations of
  each gradient chunk are done and transformed once per tree; one-hot plaintexts
  are encoded and transformed once per kernel; each node multiplies by its rotated
  mask (encoded per node) and the cached diagonals, and transforms back once per
  giant step. The products need the five primes' noise budget; everything after
  them (giant-step rotations, the rotate-and-sum, re-randomising, flooding) runs on
  the output level's three primes, where a key switch costs ≈ 1/3.
* Histogram subtraction (one child asked per split), nodes of a level in one pass,
  and ``n_jobs`` worker processes (length-prefixed frames over pipes, never pickle)
  as before; nothing unreduced leaves the feature holder.

Noise budget (SEAL's invariant noise budget, measured): fresh 228 bits at five
primes; after the node mask and one-hot products, additions and rotations ≈ 90,
kept through the switch to three primes: noise ≈ 2^31–2^32, which
:data:`EVAL_NOISE_BITS` = 34 bounds; after the flooding ≈ 9 bits remain.

Measured (``benchmarks/secureboost.py``, default credit, 24,000 training rows, 120
columns, 30 trees, two workers): 44.7 s on a quiet machine (setup 2.7 s; CPU 9.2 s
main + 68.0 s workers; 59.0 s in the workers once the planner counted the
giant steps, B = 8), against 21.7–23.1 s (CPU ≈ 5 + 35–40 s) for the CKKS kernel:
the price of exactness is ``N = 16384`` with five primes (≈ 0.6–0.8 ms per product
and ≈ 4.5–9.5 ms per key switch, against 0.09 and 1.2 ms) — about 2.3 core-seconds
per tree, ≈ 0.53 s per node histogram (products 0.2 s, giant steps 0.14 s, node
masks 0.05 s, baby steps 0.06 s, output 0.08 s by :class:`KernelCosts`). AUC equal
to the plaintext reference, split for split. Per tree 3.4 MB: the label holder
sends its gradients as seeded ciphertexts (half the bytes; the ``a`` half is a
seed) and the feature holder switches each flooded histogram down to the lowest
level (:data:`WIRE_LEVEL`) before it leaves, where it was 5.8 MB (two 1.3 MB
gradient ciphertexts, 0.79 MB per histogram). Same run, same quiet machine
(2026-12-05): in process 49.7 s with key generation against 46.2–47.2 s before
(CPU unchanged within noise), deployed 73.9 s (321 MB moved) against 78.2 s
(463 MB), ``deployment_ratio`` 1.49 against 1.70.

Alternatives measured and not taken
-----------------------------------
* **CKKS with Gaussian flooding** (the previous kernel): the decryption noise sits
  in the message's low bits, so flooding it by 2^40 destroys the totals; measured
  ceiling ≈ 19 bits of run-level security (σ = 4; σ = 16 already moved the AUC by
  0.007). Replaced by this exact scheme.
* **Paillier** (FATE): exact and noise-free, but ≈ 900,000 2048-bit encryptions per
  default-credit run on the label holder alone.
* **N = 8192 BFV**: 218 bits of modulus cannot hold two plaintext products
  (≈ 66 bits each at ``t ≈ 2^59``) plus the flooding.
* **Coefficient packing** (Cheetah-style polynomial products, no key switching,
  ``N = 8192``): rows in blocks of ``n`` coefficients, ``b`` columns per product with
  ``n·b ≤ N``; one product yields ``b`` column sums over ``n`` rows, every other
  coefficient is a partial correlation that the feature holder must overwrite with
  uniform values mod ``t`` before it leaves. Measured here (four primes, 200 bits):
  a 0/1 mask plaintext costs 0.06 ms to build and 0.62 ms to NTT, the product and
  addition 0.30 ms, so a node's ``rows·columns/N ≈ 352`` products cost ≈ 0.35 s
  and, with outputs and the label holder's 2.7 ms encryptions, ≈ 0.45 s against
  this kernel's ≈ 0.53 s — the node mask changes the plaintexts, so their NTTs
  cannot be cached — for ≈ 3× the bytes (the gradients need ≈ 60 ciphertexts per
  tree). Caching them needs the label holder to send, per level, the asked nodes'
  gradients sorted by node (≈ 1.25 core-s per tree modelled, against ≈ 2.3) at
  ≈ 35 MB per tree instead of 3.4 MB. Not built: the first gains ≈ 15 %, the
  second trades the deployed speed (bytes through the SuperLink) for the
  in-process one, and both are a new protocol.
* **TenSEAL's default Galois keys**: 27 keys, 206 MB; the kernel needs 14 (55 MB
  seeded).
* **Roles reversed, coefficient packing**: :mod:`fedrisk.crypto.encrypted_bins`, which
  SecureBoost now runs on. The feature holder encrypts its bin matrix once
  under its own key, the label holder multiplies it by its plaintext masked
  gradients (no rotation, no key switch), re-randomises, masks and floods the
  total coefficients, sends ``c1`` and only their ``c0``, and the feature holder
  decrypts only masked totals.
  ``python benchmarks/histogram_kernels.py`` (2026-12-06, load ≈ 1.3): 1.12 core-s
  per tree against this kernel's 2.16 (1.93×), 8.4 MB per tree against 3.4 (4.2 MB
  since masked histograms travel as half ciphertexts), and a
  123 MB seeded matrix once per run (1.6 core-s to encrypt, 1.1 to load); with two
  worker processes a tree's four node histograms take 0.54 s of wall time; a
  default-credit SecureBoost run went from 46.0 s to 25.0 s in process (20.3 s with the
  half-ciphertext masked histograms and a run key without Galois keys).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.crypto.bfv import BFVRuntime, add_to_c0, make_bfv_context, public_bfv_context_bytes, uniform_noise_rns
from fedrisk.crypto.frames import pack_frame
from fedrisk.crypto.worker_pool import WorkerPool, serve_frames
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

__all__ = [
    "EVAL_NOISE_BITS",
    "FLOOD_BITS",
    "OUTPUT_LEVEL",
    "WIRE_LEVEL",
    "EncryptedHistogramKernel",
    "HistogramLayout",
    "KernelCosts",
    "Quantisation",
    "decrypt_histogram",
    "decrypt_slots",
    "encrypt_gradients",
    "flooding_bound",
    "make_histogram_context",
    "one_hot_bins",
    "packing_cost",
    "plan_packing",
    "quantisation",
]

OUTPUT_LEVEL = 2
"""Histograms are reduced, re-randomised and flooded on three primes (levels count down from five)."""
WIRE_LEVEL = 3
"""Histograms leave the feature holder on two primes: switched down after the flooding (``Δ ≈ 2^61``,
the flooded noise ≈ 2^50), a public function of the flooded ciphertext, so the flooding bound holds."""
FLOOD_BITS = 110
"""Coefficients of the flooding polynomial are uniform in ``[−2^110, 2^110)`` (``Δ/2 ≈ 2^120`` at the output level: ≈ 9 bits of noise budget remain)."""
EVAL_NOISE_BITS = 34
"""Stated bound ``log2 ‖v‖∞`` of an output's noise before flooding, at the output level
(test ``test_noise_stays_below_the_stated_bound`` measures it)."""
MISSING_CODE = 255
MAX_QUANT_BITS = 20
MIN_QUANT_BITS = 8


def make_histogram_context() -> ts.Context:
    """A key holder's fresh secret BFV context for the histogram kernel (see :mod:`fedrisk.crypto.bfv`)."""
    return make_bfv_context()


def flooding_bound(n_ciphertexts: int, *, flood_bits: int = FLOOD_BITS, eval_noise_bits: int = EVAL_NOISE_BITS, coefficients: int = 16384) -> float:
    """Statistical distance between the key holder's view of ``n_ciphertexts`` histograms
    and a simulation from the bin totals alone: ``n · N · 2^V / 2^{F+1}``."""
    return n_ciphertexts * coefficients * 2.0**eval_noise_bits / 2.0 ** (flood_bits + 1)


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class Quantisation:
    """How ``g`` and ``h`` become integers for ``rows`` rows (see the module docstring)."""

    rows: int
    g_bits: int
    h_bits: int

    @property
    def shift(self) -> int:
        return self.g_bits + _row_bits(self.rows) + 1

    def pack(self, grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
        g_q = np.rint(np.asarray(grad, dtype=np.float64) * 2.0**self.g_bits).astype(np.int64)
        h_q = np.rint(np.asarray(hess, dtype=np.float64) * 2.0 ** (self.h_bits + 2)).astype(np.int64)
        return g_q + (h_q << self.shift)

    def unpack(self, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(totals, dtype=np.int64)
        half = np.int64(1) << (self.shift - 1)
        h_q = (v + half) >> self.shift
        g_q = v - (h_q << self.shift)
        return g_q / 2.0**self.g_bits, h_q / 2.0 ** (self.h_bits + 2)


def _row_bits(rows: int) -> int:
    return max(1, math.ceil(math.log2(int(rows) + 1)))


def quantisation(rows: int) -> Quantisation:
    """The quantisation for ``rows`` rows: ``a + b = 56 − 2r`` bits, split evenly, at most 20 each.

    Raises
    ------
    CryptoError
        Too many rows for a 59-bit plaintext modulus (below 8 bits for ``g``).
    """
    budget = 56 - 2 * _row_bits(rows)
    a = min(MAX_QUANT_BITS, (budget + 1) // 2)
    b = min(MAX_QUANT_BITS, budget - a)
    if b < MIN_QUANT_BITS:
        raise CryptoError(f"{rows} rows leave {b} bits for the hessians' quantisation (< {MIN_QUANT_BITS}); use fewer rows")
    return Quantisation(int(rows), a, b)


# --------------------------------------------------------------------------- label holder: encrypt


def encrypt_gradients(context: ts.Context, grad: np.ndarray, hess: np.ndarray) -> list[bytes]:
    """Encrypt ``g_q + 2^k·h_q`` (:func:`quantisation`), 16,384 rows per ciphertext (key holder only).

    Encrypted under the secret key and sent seeded (:meth:`BFVRuntime.encrypt_seeded`):
    half the bytes of a public-key encryption.

    Raises
    ------
    CryptoError
        Values outside the logistic-loss range (``|g| ≤ 1``, ``0 ≤ h ≤ 1/4``), which
        the quantisation assumes, or a context without the secret key.
    """
    runtime = BFVRuntime.for_context(context)
    g = np.asarray(grad, dtype=np.float64).ravel()
    h = np.asarray(hess, dtype=np.float64).ravel()
    if g.shape != h.shape:
        raise CryptoError(f"gradients and hessians differ in length: {g.size} vs {h.size}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
        raise CryptoError("refusing to encrypt non-finite gradients")
    if g.size and (np.max(np.abs(g)) > 1.0 or h.min() < 0.0 or h.max() > 0.25):
        raise CryptoError("gradients must satisfy |g| ≤ 1 and 0 ≤ h ≤ 1/4 (logistic loss)")
    packed = quantisation(max(1, g.size)).pack(g, h)
    return [runtime.encrypt_seeded(packed[start : start + runtime.slots]) for start in range(0, max(packed.size, 1), runtime.slots)]


# --------------------------------------------------------------------------- layout


def one_hot_bins(codes: np.ndarray, n_bins: Sequence[int], has_missing: Sequence[bool], covered: np.ndarray) -> np.ndarray:
    """The fixed 0/1 matrix ``B``: per feature its bins, then a NaN column if it has one.

    Rows outside ``covered`` are all zero (they belong to the label holder's exact
    missing bucket).
    """
    codes = np.asarray(codes)
    n, n_feat = codes.shape
    widths = [int(b) + int(m) for b, m in zip(n_bins, has_missing, strict=True)]
    out = np.zeros((n, sum(widths)))
    cov = np.asarray(covered, dtype=bool)
    start = 0
    for f in range(n_feat):
        col = codes[:, f].astype(np.int64)
        nan = col == MISSING_CODE
        if np.any(~nan & (col >= int(n_bins[f]))):
            raise DataValidationError(f"feature {f} has a bin code beyond its {n_bins[f]} bins")
        idx = np.where(nan, int(n_bins[f]), col)
        keep = cov & (~nan | bool(has_missing[f]))
        out[np.flatnonzero(keep), start + idx[keep]] = 1.0
        start += widths[f]
    return out


@dataclass(frozen=True)
class HistogramLayout:
    """What the key holder needs to read a feature holder's histograms (public).

    Attributes
    ----------
    n_bins : tuple of int
        Bins per feature.
    has_missing : tuple of bool
        Whether a feature has a NaN column (NaN among the holder's covered rows).
    slots : int
        Slots per ciphertext (both rows of the BFV slot matrix).
    columns_per_ciphertext : int
        ``F`` (a power of two): output ciphertext ``q`` holds columns ``qF … qF + F − 1``,
        column ``qF + f`` in every slot ``t ≡ f (mod F)`` — each of those ``L = slots/F``
        slots holds the column's whole total.
    rows : int
        Rows the histograms sum over (fixes the :func:`quantisation`).
    """

    n_bins: tuple[int, ...]
    has_missing: tuple[bool, ...]
    slots: int
    columns_per_ciphertext: int
    rows: int

    def __post_init__(self) -> None:
        if len(self.n_bins) != len(self.has_missing):
            raise ProtocolError("histogram layout: bins and missing flags differ in length")
        if not self.n_bins or any(b < 1 or b > 254 for b in self.n_bins):
            raise ProtocolError("histogram layout: every feature needs 1..254 bins")
        F, S = self.columns_per_ciphertext, self.slots
        if S < 2 or S & (S - 1) or F < 1 or F & (F - 1) or F > S // 2:
            raise ProtocolError("histogram layout: slots and columns per ciphertext must be powers of two, F ≤ slots/2")
        if self.rows < 1:
            raise ProtocolError("histogram layout: rows must be positive")

    @property
    def n_features(self) -> int:
        return len(self.n_bins)

    @property
    def n_columns(self) -> int:
        return int(sum(self.n_bins) + sum(self.has_missing))

    @property
    def n_ciphertexts(self) -> int:
        return -(-self.n_columns // self.columns_per_ciphertext)

    @property
    def copies(self) -> int:
        """``L``: slots per column in an output ciphertext, each holding the column's total."""
        return self.slots // self.columns_per_ciphertext

    def column_starts(self) -> np.ndarray:
        widths = np.array(self.n_bins) + np.array(self.has_missing, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)

    def unpack(self, slots: np.ndarray) -> np.ndarray:
        """Decrypted slots ``(n_ciphertexts·slots,)`` → per-column totals (integers).

        Raises
        ------
        ProtocolError
            The ``L`` copies of a column disagree: not a reduced histogram.
        """
        vals = np.asarray(slots, dtype=np.int64).reshape(self.n_ciphertexts, self.copies, self.columns_per_ciphertext)
        if np.any(vals != vals[:, :1, :]):
            raise ProtocolError("histogram slots of one column disagree: not a reduced histogram; refusing it")
        return vals[:, 0, :].reshape(-1)[: self.n_columns]

    def split_columns(self, column_sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-column sums → ``(bins (F, max_bins), nan bucket (F,))`` (zeros where absent)."""
        vals = np.asarray(column_sums, dtype=np.float64)
        if vals.shape != (self.n_columns,):
            raise ProtocolError(f"histogram has {vals.size} columns, the layout {self.n_columns}")
        width = max(self.n_bins) if self.n_bins else 0
        bins = np.zeros((self.n_features, width))
        nan = np.zeros(self.n_features)
        for f, start in enumerate(self.column_starts()):
            b = self.n_bins[f]
            bins[f, :b] = vals[start : start + b]
            if self.has_missing[f]:
                nan[f] = vals[start + b]
        return bins, nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_bins": list(self.n_bins),
            "has_missing": list(self.has_missing),
            "slots": self.slots,
            "columns_per_ciphertext": self.columns_per_ciphertext,
            "rows": self.rows,
            "packing": "bfv-interleaved-reduced",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistogramLayout:
        """Parse and validate an announced layout (:class:`ProtocolError` on anything odd)."""
        try:
            if d["packing"] != "bfv-interleaved-reduced":
                raise ValueError(f"unknown packing {d['packing']!r}")
            n_bins = tuple(_int_list(d["n_bins"]))
            if any(not isinstance(x, bool) for x in d["has_missing"]):
                raise TypeError("has_missing")
            has_missing = tuple(bool(x) for x in d["has_missing"])
            slots, F, rows = (_int(d[k]) for k in ("slots", "columns_per_ciphertext", "rows"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"histogram layout is malformed: {exc}") from None
        return cls(n_bins, has_missing, slots, F, rows)


def _int_list(values: Any) -> list[int]:
    if not isinstance(values, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise TypeError("expected a list of integers")
    return list(values)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


# --------------------------------------------------------------------------- packing plan


@dataclass(frozen=True)
class KernelCosts:
    """Per-operation costs (CPU ms, one core, N = 16384) the packing plan minimises."""

    multiply_add: float = 0.8
    """Pointwise (NTT-form) plain multiplication and addition, five primes."""
    rotation: float = 5.5
    """Rotation (key switch) on the output level's three primes: giant steps and the rotate-and-sum."""
    giant_step: float = 3.5
    """Per giant step and node: back from NTT form on five primes and the switch to three."""
    node_mask: float = 3.3
    """Encode a rotated node mask, to NTT, multiply: per chunk and baby step."""
    baby_rotation: float = 16.0
    """Rotation on five primes plus NTT (baby steps, once per tree)."""
    nodes_per_tree: float = 4.0
    output: float = 40.0
    """Per output ciphertext: re-randomise, flood, serialise; decrypt at the key holder."""


def packing_cost(n_columns: int, n_chunks: int, slots: int, F: int, B: int, n_jobs: int = 1, costs: KernelCosts = KernelCosts()) -> tuple[float, float]:
    """Modelled ``(wall, total CPU)`` ms per node histogram for ``F`` columns per output and ``B`` baby steps.

    ``slots`` is one row of the slot matrix. Per node: ``C·m'`` products and
    ``G·(F/B − 1)`` giant rotations (each after an inverse NTT and a switch to the output level), shared between the
    workers; ``C·B`` node-mask products in every worker; ``G`` outputs, each reduced
    by ``log2(slots/F) + 1`` rotations in the main process; plus the ``(B − 1)·C``
    baby rotations of each tree spread over its nodes.
    """
    G = -(-n_columns // F)
    workers = max(1, min(n_jobs, len(_units(G, F // B, n_jobs))))
    shared = n_chunks * G * F * costs.multiply_add + G * (F // B - 1) * costs.rotation + G * (F // B) * costs.giant_step
    each = n_chunks * B * costs.node_mask + (B - 1) * n_chunks * costs.baby_rotation / costs.nodes_per_tree
    main = G * (costs.output + (int(math.log2(slots // F)) + 1) * costs.rotation)
    return shared / workers + each + main, shared + workers * each + main


def plan_packing(n_columns: int, n_chunks: int, slots: int, n_jobs: int = 1, costs: KernelCosts = KernelCosts()) -> tuple[int, int]:
    """Columns per output ciphertext ``F`` (≤ ``slots``, one row of the slot matrix) and baby
    steps ``B`` minimising :func:`packing_cost` (wall time plus a tenth of the CPU time)."""
    best: tuple[float, int, int] | None = None
    F = 1
    while F <= slots:
        B = 1
        while B <= F:
            wall, total = packing_cost(n_columns, n_chunks, slots, F, B, n_jobs, costs)
            score = wall + 0.1 * total
            if best is None or score < best[0] - 1e-9:
                best = (score, F, B)
            B *= 2
        F *= 2
    assert best is not None
    return best[1], best[2]


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def _units(n_groups: int, giant: int, n_jobs: int) -> list[tuple[int, int, int]]:
    """Work units ``(group, first giant step, end)``: whole groups, or power-of-two parts of one."""
    parts = 1 if n_groups >= n_jobs else min(giant, _pow2_floor(max(1, n_jobs // n_groups)))
    step = giant // parts
    return [(q, p * step, (p + 1) * step) for q in range(n_groups) for p in range(parts)]


# --------------------------------------------------------------------------- the kernel (one process)


def _roll_rows(vec: np.ndarray, i: int, half: int) -> np.ndarray:
    """``rot_i`` of a slot vector in the clear: each row of the 2 × ``half`` matrix turned left by ``i``."""
    return np.roll(vec.reshape(2, half), -i, axis=1).reshape(-1)


class _BSGSKernel:
    """Baby-step/giant-step product ``Bᵀ(m_v ⊙ d)`` for some work units, in one process.

    Column block ``q`` (``F`` columns) in the interleaved diagonal layout, diagonal
    ``k = jB + i``, slot ``s = (r, p)`` of the 2 × S slot matrix, chunk ``c``::

        Out_q = Σ_j rot_{jB}( Σ_i Σ_c P'[q, j, i, c] ⊙ rot_i(d_c) )
        P'[q, j, i, c][r, p] = B[c·2S + r·S + (p + i) mod S,  qF + (p − jB) mod F]

    so slot ``(r, t)`` of ``Out_q`` is column ``t mod F`` over a window of ``F`` rows
    of matrix row ``r`` of every chunk. The caller's rotate-and-sum
    (:func:`_rotate_and_sum`) turns that into whole-column totals; this class never
    returns anything that is decrypted as it is.
    """

    def __init__(self, runtime: BFVRuntime, onehot: np.ndarray, *, F: int, B: int, units: Sequence[tuple[int, int, int]], cache_plaintexts: bool) -> None:
        self.rt = runtime
        self.N = runtime.slots
        self.S = runtime.row_slots
        self.F, self.B = F, B
        self.units = [tuple(int(v) for v in u) for u in units]
        self.n_rows = onehot.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // self.N))
        groups = sorted({u[0] for u in self.units})
        self._col0 = {q: i * F for i, q in enumerate(groups)}  # where block q starts in `onehot`
        padded = np.zeros((self.n_chunks * self.N, len(groups) * F), dtype=np.uint8)
        padded[: self.n_rows, : onehot.shape[1]] = onehot
        self.X = padded
        p = np.arange(self.S)
        self._p = np.concatenate([p, p])
        self._r = np.repeat([0, 1], self.S)
        self.cache: dict[tuple[int, int, int, int], Any] | None = {} if cache_plaintexts else None
        if self.cache is not None:
            for q, j0, j1 in self.units:
                for j in range(j0, j1):
                    for i in range(B):
                        for c in range(self.n_chunks):
                            self.cache[(q, j, i, c)] = self._encode(q, j, i, c)
        if B > 1 or F > B:
            _ = runtime.galois_keys  # load once, up front
        self._grad: list[list[Any]] | None = None

    def _encode(self, q: int, j: int, i: int, c: int) -> Any:
        rows = c * self.N + self._r * self.S + (self._p + i) % self.S
        cols = self._col0[q] + (self._p - j * self.B) % self.F
        diag = self.X[rows, cols]
        if not diag.any():
            return None  # SEAL refuses products with an all-zero plaintext; skip them
        return self.rt.encode_ntt(diag.astype(np.int64))

    def plaintext(self, q: int, j: int, i: int, c: int) -> Any:
        if self.cache is not None:
            return self.cache[(q, j, i, c)]
        return self._encode(q, j, i, c)

    def set_gradients(self, cts: Sequence[Any]) -> None:
        """Take the tree's encrypted gradient chunks, rotate each by ``i`` (i < B) and move to NTT form, once for all nodes."""
        if len(cts) != self.n_chunks:
            raise ProtocolError(f"gradients have {len(cts)} ciphertexts, expected {self.n_chunks}")
        ev = self.rt.evaluator
        self._grad = []
        for ct in cts:
            steps = [ct]
            for _ in range(1, self.B):
                nxt = sa.Ciphertext()
                ev.rotate_rows(steps[-1], 1, self.rt.galois_keys, nxt)
                steps.append(nxt)
            for s in steps:
                ev.transform_to_ntt_inplace(s)
            self._grad.append(steps)

    def _masked_baby_steps(self, rows: np.ndarray) -> dict[int, list[Any]]:
        """Per chunk holding node rows: ``rot_i(m_v) ⊙ rot_i(d_c)`` (NTT form), for i < B."""
        rt, ev, N = self.rt, self.rt.evaluator, self.N
        out: dict[int, list[Any]] = {}
        for c, steps in enumerate(self._grad or []):
            part = rows[c * N : (c + 1) * N].astype(np.int64)
            if part.size < N:
                part = np.concatenate([part, np.zeros(N - part.size, dtype=np.int64)])
            if not part.any():
                continue  # no node row in this chunk: it adds nothing
            if part[: min(N, self.n_rows - c * N)].all():
                out[c] = steps  # every row of the chunk (the root): the mask is the identity
                continue
            masked = []
            for i, rotated in enumerate(steps):  # the node mask is rotated in the clear
                cur = sa.Ciphertext()
                ev.multiply_plain(rotated, rt.encode_ntt(_roll_rows(part, i, self.S)), cur)
                masked.append(cur)
            out[c] = masked
        return out

    def run(self, nodes: Sequence[np.ndarray]) -> list[list[Any]]:
        """Per node, one (partial, unreduced, coefficient-form, output-level) ciphertext per work unit, None if empty.

        Nodes are computed together so that each cached plaintext is read once for all.
        """
        if self._grad is None:
            raise ProtocolError("no encrypted gradients loaded for this tree")
        rt, ev = self.rt, self.rt.evaluator
        baby = [self._masked_baby_steps(rows) for rows in nodes]
        tmp = sa.Ciphertext()
        out: list[list[Any]] = [[] for _ in nodes]
        for q, j0, j1 in self.units:
            acc: list[Any] = [None] * len(nodes)
            for j in range(j1 - 1, j0 - 1, -1):
                for a in acc:
                    if a is not None:
                        ev.rotate_rows_inplace(a, self.B, rt.galois_keys)
                z: list[Any] = [None] * len(nodes)
                for c in range(self.n_chunks):
                    users = [n for n, steps in enumerate(baby) if c in steps]
                    for i in range(self.B if users else 0):
                        pt = self.plaintext(q, j, i, c)
                        if pt is None:
                            continue  # an all-zero diagonal
                        for n in users:
                            if z[n] is None:
                                z[n] = sa.Ciphertext()
                                ev.multiply_plain(baby[n][c][i], pt, z[n])
                            else:
                                ev.multiply_plain(baby[n][c][i], pt, tmp)
                                ev.add_inplace(z[n], tmp)
                for n in range(len(nodes)):
                    if z[n] is not None:
                        ev.transform_from_ntt_inplace(z[n])
                        # The products are done: the rest (giant steps, reduction) runs on the output
                        # level's three primes, ≈ 2.8× cheaper per key switch; the noise budget is kept.
                        ev.mod_switch_to_inplace(z[n], rt.parms_ids[OUTPUT_LEVEL])
                        if acc[n] is None:
                            acc[n] = z[n]
                        else:
                            ev.add_inplace(acc[n], z[n])
            for n in range(len(nodes)):
                if acc[n] is not None and j0 > 0:
                    _rotate_rows(rt, acc[n], j0 * self.B)
                out[n].append(acc[n])
        return out


def _rotate_rows(runtime: BFVRuntime, ct: Any, step: int) -> None:
    """Turn both slot rows left by ``step``, one power-of-two key switch per set bit (the keys there are)."""
    bit = 1
    while bit <= step:
        if step & bit:
            runtime.evaluator.rotate_rows_inplace(ct, bit, runtime.galois_keys)
        bit <<= 1


def _rotate_and_sum(runtime: BFVRuntime, ct: Any, F: int) -> Any:
    """``ct += rot_{F·2^k}(ct)`` for ``F·2^k < S``, then ``ct += swap(ct)``: every slot then holds
    the total of its column over both rows of the slot matrix (``log2(S/F) + 1`` key switches)."""
    ev, tmp, step = runtime.evaluator, sa.Ciphertext(), F
    while step < runtime.row_slots:
        ev.rotate_rows(ct, step, runtime.galois_keys, tmp)
        ev.add_inplace(ct, tmp)
        step *= 2
    ev.rotate_columns(ct, runtime.galois_keys, tmp)
    ev.add_inplace(ct, tmp)
    return ct


# --------------------------------------------------------------------------- worker processes


def _serve(inp: Any, out: Any) -> None:  # pragma: no cover - runs in a child process
    """Serve HINI/HGRD/HNOD frames (:func:`~fedrisk.crypto.worker_pool.serve_frames`: pipes, never pickled)."""
    context: ts.Context | None = None  # held here: the runtime keeps only a weak reference to it
    kernel: _BSGSKernel | None = None
    runtime: BFVRuntime | None = None

    def handle(kind: bytes, header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, list[bytes]]:
        nonlocal context, kernel, runtime
        if kind == b"HINI":
            context = ts.context_from(blobs[0])
            if len(blobs) > 2:  # the Galois keys apart, seeded: SEAL loads them at half the bytes
                context._fedrisk_seeded_galois = blobs[2]
            runtime = BFVRuntime(context)
            onehot = np.frombuffer(blobs[1], dtype=np.uint8).reshape(int(header["rows"]), int(header["cols"]))
            kernel = _BSGSKernel(
                runtime, onehot, F=int(header["F"]), B=int(header["B"]), units=[tuple(u) for u in header["units"]], cache_plaintexts=bool(header["cache"])
            )
            return b"OKAY", []
        if kernel is None or runtime is None:
            raise ProtocolError(f"worker got {kind!r} before HINI")
        if kind == b"HGRD":
            kernel.set_gradients([runtime.load(b) for b in blobs])
            return b"OKAY", []
        if kind == b"HNOD":
            nodes = [np.unpackbits(np.frombuffer(b, dtype=np.uint8), count=kernel.n_rows).astype(bool) for b in blobs]
            parts = [p for per_node in kernel.run(nodes) for p in per_node]
            return b"RSLT", [b"" if p is None else runtime.dump(p) for p in parts]
        raise ProtocolError(f"unknown worker command {kind!r}")

    serve_frames(inp, out, handle)


_BOOT = "import os, sys; from fedrisk.crypto.encrypted_histogram import _serve; _serve(os.fdopen(int(sys.argv[1]), 'rb'), os.fdopen(int(sys.argv[2]), 'wb'))"


class _Workers(WorkerPool):
    """The histogram kernel's worker pool (frames over pipes, no pickle), booting this module's loop."""

    boot = _BOOT
    what = "histogram worker"


# --------------------------------------------------------------------------- feature holder: kernel


class EncryptedHistogramKernel:
    """Feature-holder side: per-node re-randomised, flooded histograms ``Bᵀ(m_v ⊙ [[g_q + 2^k h_q]])``, bin totals only.

    Parameters
    ----------
    codes : ndarray (n_rows, n_features) of uint8
        Own bin codes in the label holder's row order (255 = NaN).
    n_bins, has_missing : sequences
        Bins per feature and whether it gets a NaN column.
    covered : bool ndarray (n_rows,)
        Rows this party knows; the others contribute to no column.
    context : tenseal.Context
        The key holder's public BFV context with the kernel's Galois keys.
    n_jobs : int
        Worker processes (1: in-process). Work units are column blocks or
        power-of-two ranges of a block's giant steps.
    columns_per_ciphertext, baby_steps : int, optional
        Override the packing plan (:func:`plan_packing`); both powers of two.
    cache_bytes : int
        Memory budget for the cached one-hot plaintexts (beyond it they are encoded
        on the fly).
    flood_bits : int
        Width of the flooding (default :data:`FLOOD_BITS`). Tests set 0 to measure the
        noise it has to hide; nothing else should change it.
    wire_level : int
        Level the histograms leave at (default :data:`WIRE_LEVEL`). Tests set
        :data:`OUTPUT_LEVEL` to measure the noise before the switch; the key holder
        decrypts only :data:`WIRE_LEVEL`.

    Attributes
    ----------
    layout_ : HistogramLayout
    column_counts_ : ndarray
        Covered rows per column.
    F_, B_ : int
        Columns per output ciphertext and baby steps.
    rotations_per_node_ : int
        Key switches per node histogram (all workers, and the rotate-and-sum).
    """

    def __init__(
        self,
        codes: np.ndarray,
        n_bins: Sequence[int],
        has_missing: Sequence[bool],
        covered: np.ndarray,
        context: ts.Context,
        *,
        n_jobs: int = 1,
        columns_per_ciphertext: int | None = None,
        baby_steps: int | None = None,
        cache_bytes: int = 2 << 30,
        flood_bits: int = FLOOD_BITS,
        wire_level: int = WIRE_LEVEL,
    ) -> None:
        if context.is_private():
            raise CryptoError("the histogram kernel must run under the public BFV context")
        if not isinstance(flood_bits, int) or not 0 <= flood_bits <= FLOOD_BITS:
            raise CryptoError(f"flooding width must be 0..{FLOOD_BITS} bits, got {flood_bits!r}")
        if wire_level not in (OUTPUT_LEVEL, WIRE_LEVEL):
            raise CryptoError(f"histograms leave at level {OUTPUT_LEVEL} or {WIRE_LEVEL}, got {wire_level!r}")
        self.runtime = BFVRuntime.for_context(context)
        self.context = context
        self.fingerprint = self.runtime.fingerprint
        if not self.runtime.has_galois_keys:
            raise CryptoError("the histogram kernel needs a context with Galois keys")
        if len(self.runtime.parms_ids) <= WIRE_LEVEL:
            raise CryptoError("the BFV context has too few primes for the histogram kernel")
        onehot = one_hot_bins(codes, n_bins, has_missing, covered).astype(np.uint8)
        m = onehot.shape[1]
        if m == 0:
            raise DataValidationError("a histogram needs at least one bin column")
        slots = self.runtime.slots
        self.n_rows = onehot.shape[0]
        quantisation(max(1, self.n_rows))  # refuse now what the label holder could not encrypt
        self.n_chunks = max(1, -(-self.n_rows // slots))
        self.column_counts_ = onehot.sum(axis=0).astype(np.float64)
        self.flood_bits_ = int(flood_bits)
        self.wire_level_ = int(wire_level)
        F, B = plan_packing(m, self.n_chunks, self.runtime.row_slots, n_jobs)
        F = int(columns_per_ciphertext or F)
        B = int(baby_steps or min(B, F))
        if F & (F - 1) or B & (B - 1) or not 1 <= B <= F <= self.runtime.row_slots:
            raise CryptoError(f"columns per ciphertext ({F}) and baby steps ({B}) must be powers of two, B ≤ F ≤ {self.runtime.row_slots}")
        self.F_, self.B_ = F, B
        self.layout_ = HistogramLayout(tuple(int(b) for b in n_bins), tuple(bool(x) for x in has_missing), slots, F, max(1, self.n_rows))
        n_groups = self.layout_.n_ciphertexts
        units = _units(n_groups, F // B, max(1, int(n_jobs)))
        n_workers = min(max(1, int(n_jobs)), len(units))
        self._assign = [units[w::n_workers] for w in range(n_workers)]
        per_plain = slots * 8 * len(self.runtime.moduli[0])  # NTT form, five primes
        cache = self.n_chunks * n_groups * F * per_plain <= cache_bytes
        self.rotations_per_node_ = n_groups * (F // B - 1 + int(math.log2(self.runtime.row_slots // F)) + 1)
        self.rotations_per_tree_ = (B - 1) * self.n_chunks * n_workers
        padded = np.zeros((self.n_rows, n_groups * F), dtype=np.uint8)
        padded[:, :m] = onehot
        self._pool: _Workers | None = None
        self._local: _BSGSKernel | None = None
        if n_workers == 1:
            self._local = _BSGSKernel(self.runtime, padded, F=F, B=B, units=units, cache_plaintexts=cache)
        else:
            self._pool = _Workers(n_workers)
            weakref.finalize(self, WorkerPool.close, self._pool)
            seeded = getattr(context, "_fedrisk_seeded_galois", None)
            shared = (
                [public_bfv_context_bytes(context, galois=False), seeded]
                if seeded is not None
                else [context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)]
            )
            frames = []
            for mine in self._assign:
                qs = sorted({u[0] for u in mine})
                block = np.ascontiguousarray(np.concatenate([padded[:, q * F : (q + 1) * F] for q in qs], axis=1))
                header = {"rows": self.n_rows, "cols": block.shape[1], "F": F, "B": B, "units": [list(u) for u in mine], "cache": cache}
                frames.append(pack_frame(b"HINI", self.fingerprint, header, [shared[0], block.tobytes(), *shared[1:]]))
            try:
                self._pool.scatter(frames)
            except BaseException:
                self.close()
                raise
        self._grad_tag: Any = None

    # ------------------------------------------------------------------ per tree
    def set_gradients(self, blobs: Sequence[bytes], n_values: int, tag: Any = None) -> None:
        """Load the tree's encrypted gradients (checked: count, level)."""
        if n_values != self.n_rows:
            raise ProtocolError(f"encrypted gradients cover {n_values} rows, the kernel {self.n_rows}")
        if len(blobs) != self.n_chunks:
            raise ProtocolError(f"encrypted gradients have {len(blobs)} ciphertexts, expected {self.n_chunks}")
        cts = [self.runtime.load(b) for b in blobs]
        for ct in cts:
            if self.runtime.level_of(ct) != 0:
                raise ProtocolError("encrypted gradients are not fresh top-level ciphertexts")
        if self._local is not None:
            self._local.set_gradients(cts)
        else:
            assert self._pool is not None
            frame = pack_frame(b"HGRD", self.fingerprint, {}, list(blobs))
            self._pool.scatter([frame] * len(self._assign))
        self._grad_tag = tag

    def node_histogram(self, rows: np.ndarray) -> list[bytes]:
        """The histogram of the node whose rows are ``rows`` (serialised, ready to send)."""
        return self.node_histograms([rows])[0]

    def node_histograms(self, nodes: Sequence[np.ndarray]) -> list[list[bytes]]:
        """Histograms of several nodes, computed in one pass over the cached plaintexts."""
        nodes = [np.asarray(rows, dtype=bool) for rows in nodes]
        for rows in nodes:
            if rows.shape != (self.n_rows,):
                raise ProtocolError(f"node row mask has {rows.size} entries, expected {self.n_rows}")
        if not nodes:
            return []
        if self._local is not None:
            results = [[list(zip(self._local.units, per_node, strict=True)) for per_node in self._local.run(nodes)]]
        else:
            assert self._pool is not None
            frame = pack_frame(b"HNOD", self.fingerprint, {}, [np.packbits(rows).tobytes() for rows in nodes])
            replies = self._pool.scatter([frame] * len(self._assign))
            results = []
            for mine, blobs in zip(self._assign, replies, strict=True):
                if len(blobs) != len(mine) * len(nodes):
                    raise CryptoError("histogram worker returned the wrong number of ciphertexts")
                results.append(
                    [
                        [(u, self.runtime.load(b) if b else None) for u, b in zip(mine, blobs[k * len(mine) : (k + 1) * len(mine)], strict=True)]
                        for k in range(len(nodes))
                    ]
                )
        out = []
        for k in range(len(nodes)):
            sums: list[Any] = [None] * self.layout_.n_ciphertexts
            for worker in results:
                for (q, _, _), ct in worker[k]:
                    if ct is None:
                        continue
                    if sums[q] is None:
                        sums[q] = ct
                    else:
                        self.runtime.evaluator.add_inplace(sums[q], ct)
            out.append([self._finish(self.runtime.encrypt_zero(OUTPUT_LEVEL) if ct is None else ct) for ct in sums])
        return out

    def _finish(self, ct: Any) -> bytes:
        """Rotate-and-sum, re-randomise, flood, serialise (``ct`` is at :data:`OUTPUT_LEVEL`).

        Nothing unreduced leaves this method: the only ciphertexts the key holder
        ever decrypts hold each column's total in every one of its ``L`` slots, with
        ``c1`` fresh and the noise flooded.
        """
        rt, ev = self.runtime, self.runtime.evaluator
        if rt.level_of(ct) != OUTPUT_LEVEL:
            raise CryptoError("histogram partial product is not at the output level")
        ct = _rotate_and_sum(rt, ct, self.F_)
        ev.add_inplace(ct, rt.encrypt_zero(OUTPUT_LEVEL))
        if self.flood_bits_ > 0:
            add_to_c0(rt, ct, uniform_noise_rns(rt.moduli[OUTPUT_LEVEL], rt.slots, self.flood_bits_))
        # A third fewer bytes on the wire; switching scales the flooded noise down with the modulus.
        if self.wire_level_ != OUTPUT_LEVEL:
            ev.mod_switch_to_inplace(ct, rt.parms_ids[self.wire_level_])
        return bytes(rt.dump(ct))

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()
            self._pool = None

    def __enter__(self) -> EncryptedHistogramKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- label holder: decrypt


def decrypt_slots(context: ts.Context, blobs: Sequence[bytes], layout: HistogramLayout) -> np.ndarray:
    """Every decrypted slot of a histogram, as packed integers (``g_q + 2^k·h_q`` sums), as the key holder sees them.

    Only ciphertexts at the histogram wire level (:data:`WIRE_LEVEL`) are decrypted — so
    the encrypted gradients sent back as they are get refused.

    Raises
    ------
    ProtocolError
        Wrong number of ciphertexts, or a ciphertext that is not a histogram output.
    CryptoError
        The context holds no secret key or a ciphertext does not load under it.
    """
    if not context.is_private():
        raise CryptoError("this BFV context holds no secret key; it cannot decrypt")
    runtime = BFVRuntime.for_context(context)
    if len(blobs) != layout.n_ciphertexts:
        raise ProtocolError(f"histogram has {len(blobs)} ciphertexts, the layout announced {layout.n_ciphertexts}")
    if layout.slots != runtime.slots:
        raise ProtocolError(f"histogram layout has {layout.slots} slots, the context {runtime.slots}")
    out = []
    for blob in blobs:
        ct = runtime.load(blob)
        if runtime.level_of(ct) != WIRE_LEVEL:
            raise ProtocolError("ciphertext is not a histogram output; refusing to decrypt")
        out.append(runtime.decrypt(ct))
    return np.concatenate(out)


def decrypt_histogram(context: ts.Context, blobs: Sequence[bytes], layout: HistogramLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per-column gradient and hessian sums (key holder), exact up to the :func:`quantisation`.

    Raises as :func:`decrypt_slots`, and :class:`ProtocolError` when a column's
    copies disagree.
    """
    return quantisation(layout.rows).unpack(layout.unpack(decrypt_slots(context, blobs, layout)))
