"""Encrypted per-bin gradient/hessian histograms for vertical SecureBoost.

The label holder (key holder) encrypts the gradients ``g`` and hessians ``h`` of
its training rows; a feature holder, which bins its own features locally, must
return for a tree node ``v`` the per-bin sums ``Σ_{i∈v, bin_f(i)=b} g_i`` (and the
same for ``h``) without seeing ``g`` or ``h``, and without the label holder seeing
anything finer than those sums.

Packing
-------
* **g and h in one slot.** CKKS slots are complex: the label holder encrypts
  ``g + i·h`` (``|g + i·h| ≤ 1`` for the logistic loss), 4096 rows per ciphertext,
  once per tree (:func:`encrypt_gradients`), on the top level (three primes) at
  Δ = 2^40. Every later product is with *real* plaintexts, so real and imaginary
  parts stay apart and one product yields both histograms. The key holder reads
  the imaginary part by multiplying with the monomial ``X^{N/2}``, which SEAL's
  slot order encodes exactly as ``(−i, +i, −i, …)`` at scale 1 (no level, no
  noise), and flipping the odd slots' signs (:func:`decrypt_histogram`).
* **Histogram = one-hot transpose product.** The feature holder's bins form a
  fixed 0/1 matrix ``B`` (rows × Σ_f bins_f, plus one "NaN" column for a feature
  with missing values; rows it does not cover are all-zero and fall into the label
  holder's exact missing bucket). A node's sums are ``Bᵀ(m_v ⊙ (g + ih))``, with
  ``m_v`` the node's 0/1 row mask — its instance space, which the label holder
  discloses as SecureBoost does.
* **Baby-step/giant-step diagonals.** ``B``'s columns are cut into blocks of ``F``
  (a power of two; ``L = 4096/F`` slots per column) and multiplied in the diagonal
  layout of :mod:`fedrisk.crypto.encrypted_matvec` with diagonal ``k = jb + i``::

      Out_q = Σ_j rot_{j·b·L}( Σ_i Σ_c P'[q,j,i,c] ⊙ rot_{iL}(m_v ⊙ d_c) )

  with pre-rotated, cached one-hot plaintexts ``P'``. The vertical-LR kernel does
  about one rotation per column (``b = 1``); here each block needs ``F/b − 1``
  giant rotations, and the ``b − 1`` baby rotations of each input chunk are done
  **once per tree** on the fresh gradients: ``rot_{iL}(m_v ⊙ d) = rot_{iL}(m_v) ⊙
  rot_{iL}(d)``, so each node only multiplies the rotated copies by its rotated
  mask (in the clear) and rescales. :func:`plan_packing` picks ``F`` and ``b`` from
  the cost model below (default credit, 120 columns: ``F = 128``, ``b = 2`` or 4 —
  one output ciphertext per node).
* **Node masks at the feature holder.** The gradients cross the wire once per
  tree, not once per node (the label holder does not encrypt ``m_v ⊙ (g + ih)``).
* **Histogram subtraction.** The label holder asks for one child of each split and
  derives its sibling as parent − child: 4 products per depth-3 tree, not 7. Which
  child does not matter: a product costs the same whatever the node's size.
* **Nodes of a level together.** The nodes of one request share a pass over the
  cached plaintexts (each is read once and multiplied into every node): 13 % less
  worker CPU on the default-credit run, where depth 2 asks for two nodes at once.
* **Worker processes.** ``n_jobs`` child processes (fresh interpreters talking
  length-prefixed frames over pipes, never pickle) each hold the plaintexts of
  their share — whole blocks, or power-of-two ranges of a block's giant steps.

Levels and precision
--------------------
Gradients at 2^40 on three primes × node mask at 2^33, rescaled to two primes
(≈2^33) × one-hot at 2^27 → products at ≈2^60 on a 100-bit modulus: 38 bits of
headroom for bin totals (≤ 2^16) and masks (≤ 2^36). Measured error of a bin sum
(max over all bins): 2.5e-5 on 3,000 rows, 1e-4 on 24,000 rows — dominated by
decoding the masked slots (≈ ``M·2^-50`` each); the rescale adds 1.6e-7 per row and
the one-hot encoding ≈3e-7 per row (random signs). Measured and not taken: one-hot
at 2^20 with the node mask at 2^40 (3.8e-3: the encoding error of ``B``), baby
rotations after the rescale at ≈2^33 (8e-4: key-switching noise at a low scale).

Masking (what the key holder sees)
----------------------------------
A column's sum is spread over its ``L`` slots, each a partial sum over a fixed
subset of rows. The feature holder adds a *zero-sum* mask to each column's ``L``
slots — ``r = u − mean(u)``, ``u`` uniform in ``[−M, M]`` (real and imaginary
parts, from ``os.urandom``) — so the key holder recovers each column sum but
nothing about how it splits into partial sums: for two inputs with the same column
sums the views differ by a zero-sum shift ``δ``, and ``TV ≤ Σ|δ|/(2M) ≤
1.25·count/M`` (``count`` = covered rows in the bin, ``|g| + |h| ≤ 1.25``). ``M``
is the power of two giving ``mask_bits`` (default 20) for the block's largest bin,
capped by the headroom (at least :data:`MIN_MASK_BITS`, or the kernel refuses). A
complex Gaussian ``η`` (std 2^-20 per slot) floods the evaluation noise. The
feature holder never sees a sum: only the key holder decrypts.

Cost model
----------
Per-operation costs, ms, one core of this 2-core machine, N = 8192 (quiet-machine
figures from ``benchmarks/vertical_lr.py --ops``; ``benchmarks/secureboost.py
--ops`` re-measures them — with other jobs on the cores they come out 1.5–4×
higher)::

                                       3 primes   2 primes
    plain multiply (pre-encoded)        0.127      0.089
    add                                 0.032      0.022
    rotation                            1.88       1.20
    encode 4096 values                  0.56       0.45
    rescale 3 → 2 primes                0.47
    encrypt 4096 complex values         4.9
    serialise + load                    1.8        0.84
    decrypt + decode                    1.6 per ciphertext
    ciphertext                          331 kB     235 kB

Per node histogram, ``C = ceil(rows/4096)`` chunks, ``m'`` columns padded to ``G``
blocks of ``F``, ``b`` baby steps, ``W`` workers (:func:`packing_cost`)::

    shared by the workers   C·m'·(multiply + add) + G·(F/b − 1)·rotation     (2 primes)
    in every worker         C·b·(encode + multiply + rescale)                (node mask)
    main process            G·(2 encodes + serialise); key holder G·(load + multiply
                            + serialise + 2 decryptions)
    per tree                C encryptions; (b − 1)·C rotations (3 primes) per worker

Default-credit feature holder (24,000 training rows, C = 6; 10 features → 120
columns since 8 features have fewer than 32 distinct values; F = 128): 768
multiplications and 31 (b = 4) or 63 (b = 2) rotations per node, against 768 and
116 for the vertical-LR kernel on the same one-hot matrix — measured on one core
with the same load 233 ms against 484 ms (481 against 914 under heavier load).
The model gives ≈ 0.19 s of CPU per node (0.1 s wall on two workers); measured with
other jobs on the cores (load 2–3), 0.55–0.6 s of worker CPU per node — the
one-hot plaintexts (100 MB per node) stream through caches the other jobs share —
and ≈ 1.5 s wall per tree. The key holder decrypts one ciphertext pair per node
(≈ 8 ms). Bytes per tree: 2.0 MB of
gradients (six 331 kB ciphertexts) and 4 × 235 kB of histograms.

Alternatives measured and not taken
-----------------------------------
* **The vertical-LR kernel** (:class:`~fedrisk.crypto.encrypted_matvec.EncryptedMatVec`)
  on the one-hot matrix, node-masked input: 2× slower per node (above), 6 output
  ciphertexts per node for 120 columns (its blocks are the binary decomposition of
  the column count), so 6× the key holder's decryptions (60–80 ms per node under load).
* **g and h in separate ciphertexts** (or 2n slots): twice the products.
* **The label holder encrypting per node** (zeros outside the node) instead of node
  masks: six encryptions per node (30 ms quiet, ≈100 ms under load) and 2 MB per node
  on the wire, against ≈ 14 ms of masking at the feature holder and nothing on the
  wire. It would hide instance spaces from the feature holders, which SecureBoost
  discloses anyway.
* **Kernel on three primes** (no rescale, one-hot at 2^30): 1.5× the multiplication
  and rotation cost for precision that the masks' decoding error swamps anyway.
* **Rotate-and-sum each column to one slot, then select with a 0/1 plaintext** (exact
  decoding, no large masks): log2(L) more rotations per output ciphertext and a
  selection product needing a spare level; the zero-sum mask costs two encodes.
* **Independent masks removed by the feature holder** (as vertical LR does): the
  feature holder would learn the histogram — label information.
* **Cumulative bins** (``x ≤ t_b`` columns): same column count and cost; the key
  holder forms prefix sums in plaintext instead.
* **Python threads** for parallelism: SEAL calls hold the GIL (two threads ran 1.1×
  slower than one); hence worker processes.
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

from fedrisk.crypto.encrypted_matvec import (
    MIN_MASK_BITS,
    CKKSRuntime,
    PackingLayout,
    _recv,
    _send,
    _WorkerPool,
    decrypt_ciphertexts,
    pack_frame,
    secure_normal,
    secure_uniform,
    unpack_frame,
)
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

__all__ = [
    "DEFAULT_MASK_BITS",
    "NODE_MASK_SCALE_BITS",
    "ONE_HOT_SCALE_BITS",
    "EncryptedHistogramKernel",
    "HistogramLayout",
    "decrypt_histogram",
    "encrypt_gradients",
    "KernelCosts",
    "gradient_level",
    "histogram_level",
    "one_hot_bins",
    "packing_cost",
    "plan_packing",
    "product_scale",
]

NODE_MASK_SCALE_BITS = 33
"""Scale of the node's 0/1 row mask; the rescale after it leaves the gradients at ≈2^33."""
ONE_HOT_SCALE_BITS = 27
"""Scale of the one-hot bin plaintexts; products carry ≈2^60 on two primes."""
DEFAULT_MASK_BITS = 20
"""Target statistical hiding of a column's partial sums (TV ≤ 2^-20)."""
FLOOD_STD = 2.0**-20
"""Std of the complex Gaussian added to every slot (floods evaluation noise)."""
ROW_BOUND = 1.25
"""``|g| + |h| ≤ 1.25`` for the logistic loss: what one row adds to a slot at most."""
MISSING_CODE = 255
VALUE_HEADROOM_BITS = 36
"""Bits a histogram product must hold above its scale: bin totals (≤ 2^16) plus masks."""


# --------------------------------------------------------------------------- levels


def gradient_level(runtime: CKKSRuntime) -> int:
    """Level of the encrypted gradients: the top one (the node mask needs a rescale below it)."""
    if len(runtime.level_bits) < 3:
        raise CryptoError("encrypted histograms need a CKKS modulus chain with at least three levels")
    return 0


def histogram_level(runtime: CKKSRuntime) -> int:
    """Level of the histogram kernel and its products (one below the gradients).

    Raises
    ------
    CryptoError
        That level cannot hold a product of scale ≈2^60 plus masked values.
    """
    level = gradient_level(runtime) + 1
    need = math.log2(product_scale(runtime)) + VALUE_HEADROOM_BITS + 2
    if runtime.level_bits[level] < need:
        raise CryptoError(f"CKKS modulus too small for encrypted histograms: needs {need:.0f} bits, has {runtime.level_bits[level]:.0f}")
    return level


def product_scale(runtime: CKKSRuntime) -> float:
    """Exact scale of a histogram product: Δ · 2^33 / q (the rescale's prime) · 2^27."""
    data = runtime.seal.first_context_data()
    for _ in range(gradient_level(runtime)):
        data = data.next_context_data()
    prime = float(data.parms().coeff_modulus()[-1].value())
    return runtime.global_scale * 2.0**NODE_MASK_SCALE_BITS / prime * 2.0**ONE_HOT_SCALE_BITS


def _value_limit(runtime: CKKSRuntime) -> float:
    """Largest |slot value| a product may carry (q/4 at its scale: a factor two of margin)."""
    return 2.0 ** (runtime.level_bits[histogram_level(runtime)] - math.log2(product_scale(runtime)) - 2)


# --------------------------------------------------------------------------- label holder: encrypt


def encrypt_gradients(context: ts.Context, grad: np.ndarray, hess: np.ndarray) -> list[bytes]:
    """Encrypt ``g + i·h``, 4096 rows per ciphertext, with the public key.

    Raises
    ------
    CryptoError
        Values outside the logistic-loss range (``|g| ≤ 1``, ``0 ≤ h ≤ 1/4``), which
        the masks' hiding bound assumes.
    """
    runtime = CKKSRuntime.for_context(context)
    g = np.asarray(grad, dtype=np.float64).ravel()
    h = np.asarray(hess, dtype=np.float64).ravel()
    if g.shape != h.shape:
        raise CryptoError(f"gradients and hessians differ in length: {g.size} vs {h.size}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
        raise CryptoError("refusing to encrypt non-finite gradients")
    if g.size and (np.max(np.abs(g)) > 1.0 or h.min() < 0.0 or h.max() > 0.25):
        raise CryptoError("gradients must satisfy |g| ≤ 1 and 0 ≤ h ≤ 1/4 (logistic loss)")
    if runtime.public_key is None:
        raise CryptoError("CKKS context has no public key; cannot encrypt")
    level = gradient_level(runtime)
    encryptor = sa.Encryptor(runtime.seal, runtime.public_key)
    values = g + 1j * h
    out = []
    for start in range(0, max(values.size, 1), runtime.slots):
        ct = sa.Ciphertext()
        encryptor.encrypt(runtime.encode(values[start : start + runtime.slots], level, runtime.global_scale), ct)
        out.append(runtime.dump(ct))
    return out


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
    packing : PackingLayout
        How the columns are packed into output ciphertexts.
    """

    n_bins: tuple[int, ...]
    has_missing: tuple[bool, ...]
    packing: PackingLayout

    def __post_init__(self) -> None:
        if len(self.n_bins) != len(self.has_missing):
            raise ProtocolError("histogram layout: bins and missing flags differ in length")
        if any(b < 1 or b > 254 for b in self.n_bins):
            raise ProtocolError("histogram layout: every feature needs 1..254 bins")
        slots = self.packing.slots
        pos = 0
        for start, size in self.packing.groups:
            if start != pos or size < 1 or size & (size - 1) or slots % size:
                raise ProtocolError("histogram layout: packing groups must be contiguous powers of two")
            pos += size
        if pos != self.packing.n_features or not 0 <= pos - self.n_columns < max(1, self.packing.groups[-1][1] if self.packing.groups else 1):
            raise ProtocolError("histogram layout: packing groups do not cover every column (or pad too much)")

    @property
    def n_features(self) -> int:
        return len(self.n_bins)

    @property
    def n_columns(self) -> int:
        return int(sum(self.n_bins) + sum(self.has_missing))

    @property
    def n_ciphertexts(self) -> int:
        return self.packing.n_ciphertexts

    def column_starts(self) -> np.ndarray:
        widths = np.array(self.n_bins) + np.array(self.has_missing, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)

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
            "slots": self.packing.slots,
            "groups": [list(g) for g in self.packing.groups],
            "blocks": [list(b) for b in self.packing.blocks],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistogramLayout:
        """Parse and validate an announced layout (:class:`ProtocolError` on anything odd)."""
        try:
            n_bins = tuple(_int_list(d["n_bins"]))
            has_missing = tuple(bool(x) for x in d["has_missing"])
            if any(not isinstance(x, bool) for x in d["has_missing"]):
                raise TypeError("has_missing")
            slots = int(d["slots"])
            groups = tuple(tuple(_int_list(g)) for g in d["groups"])
            blocks = tuple(tuple(_int_list(b)) for b in d["blocks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"histogram layout is malformed: {exc}") from None
        if any(len(g) != 2 for g in groups) or any(len(b) != 2 for b in blocks) or slots < 1:
            raise ProtocolError("histogram layout is malformed: groups and blocks are pairs")
        n_cols = sum(int(g[1]) for g in groups)
        packing = PackingLayout(n_cols, slots, groups, blocks)  # type: ignore[arg-type]
        return cls(n_bins, has_missing, packing)


def _int_list(values: Any) -> list[int]:
    if not isinstance(values, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise TypeError("expected a list of integers")
    return list(values)


# --------------------------------------------------------------------------- packing plan


@dataclass(frozen=True)
class KernelCosts:
    """Per-operation costs (ms, one core) the packing plan minimises (see the module docstring)."""

    multiply_add: float = 0.111
    """Plain multiplication and addition on two primes."""
    rotation: float = 1.20
    """Rotation on two primes (giant steps)."""
    node_mask: float = 1.16
    """Encode a rotated node mask, multiply on three primes, rescale: per chunk and baby step."""
    baby_rotation: float = 1.88
    """Rotation on three primes (baby steps, once per tree)."""
    nodes_per_tree: float = 4.0
    output: float = 9.0
    """Per output ciphertext: two mask encodes, serialise, and at the key holder load,
    the imaginary-part product, serialise and two decryptions."""


def packing_cost(n_columns: int, n_chunks: int, slots: int, F: int, B: int, n_jobs: int = 1,
                 costs: KernelCosts = KernelCosts()) -> tuple[float, float]:
    """Modelled ``(wall, total CPU)`` ms per node histogram for ``F`` columns per output and ``B`` baby steps.

    Per node: ``C·m'`` plain multiplications and ``G·(F/B − 1)`` giant-step rotations,
    shared between the workers; ``C·B`` node-mask products done by every worker;
    ``G`` output ciphertexts (``m'`` = columns padded to ``G·F``); plus the
    ``(B − 1)·C`` baby rotations of each tree spread over its nodes. ``B = 1`` is the
    plain diagonal layout of the vertical-LR kernel (about one rotation per column).
    """
    G = -(-n_columns // F)
    workers = max(1, min(n_jobs, len(_units(G, F // B, n_jobs))))
    shared = n_chunks * G * F * costs.multiply_add + G * (F // B - 1) * costs.rotation
    each = n_chunks * B * costs.node_mask + (B - 1) * n_chunks * costs.baby_rotation / costs.nodes_per_tree
    return shared / workers + each + G * costs.output, shared + workers * each + G * costs.output


def plan_packing(n_columns: int, n_chunks: int, slots: int, n_jobs: int = 1,
                 costs: KernelCosts = KernelCosts()) -> tuple[int, int]:
    """Columns per output ciphertext ``F`` and baby steps ``B`` minimising :func:`packing_cost`.

    The objective is the wall time plus a tenth of the total CPU time (near-ties go
    to less CPU: the cores are shared).
    """
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


class _BSGSKernel:
    """Baby-step/giant-step product ``Bᵀ(m_v ⊙ d)`` for some work units, in one process.

    Column block ``q`` (``F`` columns, ``L = S/F`` slots each) uses the diagonal
    layout of :mod:`fedrisk.crypto.encrypted_matvec` with diagonal ``k = jB + i``::

        Out_q = Σ_j rot_{jBL}( Σ_i Σ_c P'[q, j, i, c] ⊙ rot_{iL}(d_c) )
        P'[q, j, i, c][t] = B[c·S + (t + iL) mod S,  qF + (t//L − jB) mod F]

    so the ``B − 1`` baby rotations of each input chunk are shared by every diagonal
    and block, and each block needs ``F/B − 1`` giant rotations (Horner in ``BL``).
    """

    def __init__(self, runtime: CKKSRuntime, onehot: np.ndarray, *, F: int, B: int,
                 units: Sequence[tuple[int, int, int]], level: int, cache_plaintexts: bool) -> None:
        self.rt = runtime
        self.S = runtime.slots
        self.F, self.B, self.L = F, B, self.S // F
        self.level = level
        self.grad_level = gradient_level(runtime)
        self.units = [tuple(int(v) for v in u) for u in units]
        self.n_rows = onehot.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // self.S))
        groups = sorted({u[0] for u in self.units})
        self._col0 = {q: i * F for i, q in enumerate(groups)}   # where block q starts in `onehot`
        padded = np.zeros((self.n_chunks * self.S, len(groups) * F), dtype=np.uint8)
        padded[: self.n_rows, : onehot.shape[1]] = onehot
        self.X = padded
        self._t = np.arange(self.S)
        self.cache: dict[tuple[int, int, int, int], Any] | None = {} if cache_plaintexts else None
        if self.cache is not None:
            for q, j0, j1 in self.units:
                for j in range(j0, j1):
                    for i in range(B):
                        for c in range(self.n_chunks):
                            self.cache[(q, j, i, c)] = self._encode(q, j, i, c)
        if B > 1 or F > B:
            _ = runtime.galois_keys  # load once, up front
        self._grad: list[Any] | None = None

    def _encode(self, q: int, j: int, i: int, c: int) -> Any:
        t = self._t
        rows = c * self.S + (t + i * self.L) % self.S
        cols = self._col0[q] + (t // self.L - j * self.B) % self.F
        diag = self.X[rows, cols]
        if not diag.any():
            return None  # SEAL refuses products with an all-zero plaintext; skip them
        return self.rt.encode(diag.astype(np.float64), self.level, 2.0**ONE_HOT_SCALE_BITS)

    def plaintext(self, q: int, j: int, i: int, c: int) -> Any:
        if self.cache is not None:
            return self.cache[(q, j, i, c)]
        return self._encode(q, j, i, c)

    def set_gradients(self, cts: Sequence[Any]) -> None:
        """Take the tree's ``[[g + ih]]`` chunks and rotate each by ``iL`` (i < B) once for all nodes."""
        if len(cts) != self.n_chunks:
            raise ProtocolError(f"gradients have {len(cts)} ciphertexts, expected {self.n_chunks}")
        ev, keys = self.rt.evaluator, (self.rt.galois_keys if self.B > 1 else None)
        self._grad = []
        for ct in cts:
            steps = [ct]
            for _ in range(1, self.B):
                nxt = sa.Ciphertext()
                ev.rotate_vector(steps[-1], self.L, keys, nxt)
                steps.append(nxt)
            self._grad.append(steps)

    def _masked_baby_steps(self, rows: np.ndarray) -> dict[int, list[Any]]:
        """Per chunk holding node rows: ``rot_iL(m_v) ⊙ rot_iL(d_c)``, rescaled, for i < B."""
        rt, ev, S = self.rt, self.rt.evaluator, self.S
        out: dict[int, list[Any]] = {}
        for c, steps in enumerate(self._grad or []):
            part = rows[c * S : (c + 1) * S].astype(np.float64)
            if part.size < S:
                part = np.concatenate([part, np.zeros(S - part.size)])
            if not part.any():
                continue  # no node row in this chunk: it adds nothing
            masked = []
            for i, rotated in enumerate(steps):  # the node mask is rotated in the clear
                cur = sa.Ciphertext()
                ev.multiply_plain(rotated, rt.encode(np.roll(part, -i * self.L), self.grad_level, 2.0**NODE_MASK_SCALE_BITS), cur)
                ev.rescale_to_next_inplace(cur)  # to the kernel's level: cheaper products and rotations
                masked.append(cur)
            out[c] = masked
        return out

    def run(self, nodes: Sequence[np.ndarray]) -> list[list[Any]]:
        """Per node, one (partial) output ciphertext per work unit (scale ≈2^60), None if empty.

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
                        ev.rotate_vector_inplace(a, self.B * self.L, rt.galois_keys)
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
                        if acc[n] is None:
                            acc[n] = z[n]
                        else:
                            ev.add_inplace(acc[n], z[n])
            for n in range(len(nodes)):
                if acc[n] is not None and j0 > 0:
                    ev.rotate_vector_inplace(acc[n], j0 * self.B * self.L, rt.galois_keys)
                out[n].append(acc[n])
        return out


# --------------------------------------------------------------------------- worker processes


def _serve(inp: Any, out: Any) -> None:  # pragma: no cover - runs in a child process
    """Serve HINI/HGRD/HNOD/STOP frames on a pipe pair (length-prefixed frames, never pickled)."""
    kernel: _BSGSKernel | None = None
    runtime: CKKSRuntime | None = None
    while True:
        try:
            kind, fp, header, blobs = unpack_frame(_recv(inp))
        except EOFError:
            return
        try:
            if kind == b"STOP":
                return
            if kind == b"HINI":
                context = ts.context_from(blobs[0])
                runtime = CKKSRuntime(context)
                onehot = np.frombuffer(blobs[1], dtype=np.uint8).reshape(int(header["rows"]), int(header["cols"]))
                kernel = _BSGSKernel(runtime, onehot, F=int(header["F"]), B=int(header["B"]),
                                     units=[tuple(u) for u in header["units"]], level=int(header["level"]),
                                     cache_plaintexts=bool(header["cache"]))
                _send(out, pack_frame(b"OKAY", fp, {}))
            elif kind == b"HGRD":
                if kernel is None or runtime is None:
                    raise ProtocolError("worker got gradients before HINI")
                kernel.set_gradients([runtime.load(b) for b in blobs])
                _send(out, pack_frame(b"OKAY", fp, {}))
            elif kind == b"HNOD":
                if kernel is None or runtime is None:
                    raise ProtocolError("worker got a node before HINI")
                nodes = [np.unpackbits(np.frombuffer(b, dtype=np.uint8), count=kernel.n_rows).astype(bool) for b in blobs]
                parts = [p for per_node in kernel.run(nodes) for p in per_node]
                _send(out, pack_frame(b"RSLT", fp, {}, [b"" if p is None else runtime.dump(p) for p in parts]))
            else:
                raise ProtocolError(f"unknown worker command {kind!r}")
        except Exception as exc:  # report, keep serving
            _send(out, pack_frame(b"ERRR", fp, {"error": f"{type(exc).__name__}: {exc}"}))


_BOOT = (
    "import os, sys; from fedrisk.crypto.encrypted_histogram import _serve; "
    "_serve(os.fdopen(int(sys.argv[1]), 'rb'), os.fdopen(int(sys.argv[2]), 'wb'))"
)


class _Workers(_WorkerPool):
    """The histogram kernel's worker pool (frames over pipes, no pickle), booting this module's loop."""

    boot = _BOOT


# --------------------------------------------------------------------------- feature holder: kernel


class EncryptedHistogramKernel:
    """Feature-holder side: per-node masked histograms ``Bᵀ(m_v ⊙ [[g + ih]])``.

    Parameters
    ----------
    codes : ndarray (n_rows, n_features) of uint8
        Own bin codes in the label holder's row order (255 = NaN).
    n_bins, has_missing : sequences
        Bins per feature and whether it gets a NaN column.
    covered : bool ndarray (n_rows,)
        Rows this party knows; the others contribute to no column.
    context : tenseal.Context
        The key holder's public context with Galois keys.
    n_jobs : int
        Worker processes (1: in-process). Work units are column blocks or
        power-of-two ranges of a block's giant steps.
    mask_bits : int
        Target hiding of partial sums (lowered to what the headroom allows, never
        below :data:`MIN_MASK_BITS`).
    columns_per_ciphertext, baby_steps : int, optional
        Override the packing plan (:func:`plan_packing`); both powers of two.
    cache_bytes : int
        Memory budget for the cached one-hot plaintexts (beyond it they are encoded
        on the fly, ≈ 5× slower per multiplication).

    Attributes
    ----------
    layout_ : HistogramLayout
    mask_bits_ : int
        Guaranteed hiding: each column's slots are within 2^-mask_bits_ of a view
        that depends only on the column's sum.
    column_counts_ : ndarray
        Covered rows per column (bounds every node's bin counts).
    F_, B_ : int
        Columns per output ciphertext and baby steps.
    rotations_per_node_ : int
        Key switches per node histogram (all workers).
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
        mask_bits: int = DEFAULT_MASK_BITS,
        columns_per_ciphertext: int | None = None,
        baby_steps: int | None = None,
        cache_bytes: int = 2 << 30,
    ) -> None:
        if context.is_private():
            raise CryptoError("the histogram kernel must run under the public CKKS context")
        self.runtime = CKKSRuntime.for_context(context)
        self.context = context
        self.fingerprint = self.runtime.fingerprint
        self.grad_level = gradient_level(self.runtime)
        self.level = histogram_level(self.runtime)
        if not self.runtime.has_galois_keys:
            raise CryptoError("the histogram kernel needs a context with Galois keys")
        onehot = one_hot_bins(codes, n_bins, has_missing, covered).astype(np.uint8)
        m = onehot.shape[1]
        if m == 0:
            raise DataValidationError("a histogram needs at least one bin column")
        slots = self.runtime.slots
        self.n_rows = onehot.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // slots))
        self.column_counts_ = onehot.sum(axis=0).astype(np.float64)
        F, B = plan_packing(m, self.n_chunks, slots, n_jobs)
        F = int(columns_per_ciphertext or F)
        B = int(baby_steps or min(B, F))
        if F & (F - 1) or B & (B - 1) or not 1 <= B <= F <= slots:
            raise CryptoError(f"columns per ciphertext ({F}) and baby steps ({B}) must be powers of two, B ≤ F ≤ {slots}")
        self.F_, self.B_ = F, B
        n_groups = -(-m // F)
        groups = tuple((q * F, F) for q in range(n_groups))
        packing = PackingLayout(n_groups * F, slots, groups, ((0, n_groups),))
        self.layout_ = HistogramLayout(tuple(int(b) for b in n_bins), tuple(bool(x) for x in has_missing), packing)
        self._bounds, self.mask_bits_ = self._mask_bounds(int(mask_bits))
        units = _units(n_groups, F // B, max(1, int(n_jobs)))
        n_workers = min(max(1, int(n_jobs)), len(units))
        self._assign = [units[w::n_workers] for w in range(n_workers)]
        per_plain = slots * 2 * 8 * 2  # NTT form, two primes
        cache = self.n_chunks * n_groups * F * per_plain <= cache_bytes
        self.rotations_per_node_ = n_groups * (F // B - 1)
        self.rotations_per_tree_ = (B - 1) * self.n_chunks * n_workers
        padded = np.zeros((self.n_rows, n_groups * F), dtype=np.uint8)
        padded[:, :m] = onehot
        self._pool: _Workers | None = None
        self._local: _BSGSKernel | None = None
        if n_workers == 1:
            self._local = _BSGSKernel(self.runtime, padded, F=F, B=B, units=units, level=self.level, cache_plaintexts=cache)
        else:
            self._pool = _Workers(n_workers)
            weakref.finalize(self, _WorkerPool.close, self._pool)
            ctx_bytes = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)
            frames = []
            for mine in self._assign:
                qs = sorted({u[0] for u in mine})
                block = np.ascontiguousarray(np.concatenate([padded[:, q * F : (q + 1) * F] for q in qs], axis=1))
                header = {"rows": self.n_rows, "cols": block.shape[1], "F": F, "B": B, "units": [list(u) for u in mine],
                          "level": self.level, "cache": cache}
                frames.append(pack_frame(b"HINI", self.fingerprint, header, [ctx_bytes, block.tobytes()]))
            try:
                self._pool.scatter(frames)
            except BaseException:
                self.close()
                raise
        self._grad_tag: Any = None

    def _mask_bounds(self, target: int) -> tuple[list[float], int]:
        limit = _value_limit(self.runtime)
        bounds, worst = [], 64
        for start, size in self.layout_.packing.groups:
            counts = self.column_counts_[start : start + size]
            top = ROW_BOUND * max(1.0, float(counts.max(initial=0.0)))
            exp = min(math.ceil(math.log2(top)) + target, math.floor(math.log2((limit - top) / 2.0)))
            bits = math.floor(math.log2(2.0**exp / top))
            if bits < MIN_MASK_BITS:
                raise CryptoError(f"histogram masks would hide partial sums by only {bits} bits (< {MIN_MASK_BITS}); use fewer rows")
            bounds.append(2.0**exp)
            worst = min(worst, bits)
        return bounds, worst

    # ------------------------------------------------------------------ per tree
    def set_gradients(self, blobs: Sequence[bytes], n_values: int, tag: Any = None) -> None:
        """Load the tree's ``[[g + ih]]`` (checked: count, level, scale)."""
        if n_values != self.n_rows:
            raise ProtocolError(f"encrypted gradients cover {n_values} rows, the kernel {self.n_rows}")
        if len(blobs) != self.n_chunks:
            raise ProtocolError(f"encrypted gradients have {len(blobs)} ciphertexts, expected {self.n_chunks}")
        cts = [self.runtime.load(b) for b in blobs]
        for ct in cts:
            if self.runtime.level_of(ct) != self.grad_level or not math.isclose(ct.scale, self.runtime.global_scale, rel_tol=1e-9):
                raise ProtocolError("encrypted gradients are not fresh top-level ciphertexts at the global scale")
        if self._local is not None:
            self._local.set_gradients(cts)
        else:
            assert self._pool is not None
            frame = pack_frame(b"HGRD", self.fingerprint, {}, list(blobs))
            self._pool.scatter([frame] * len(self._assign))
        self._grad_tag = tag

    @property
    def gradients_tag(self) -> Any:
        return self._grad_tag

    def node_histogram(self, rows: np.ndarray) -> list[bytes]:
        """Masked ``Bᵀ(m_v ⊙ [[g + ih]])`` for the node whose rows are ``rows`` (serialised)."""
        return self.node_histograms([rows])[0]

    def node_histograms(self, nodes: Sequence[np.ndarray]) -> list[list[bytes]]:
        """Masked histograms of several nodes, computed in one pass over the cached plaintexts."""
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
                results.append([[(u, self.runtime.load(b) if b else None) for u, b in zip(mine, blobs[k * len(mine):(k + 1) * len(mine)], strict=True)]
                                for k in range(len(nodes))])
        scale = product_scale(self.runtime)
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
            out.append([self._mask(self.runtime.encrypt_zero(self.level, scale) if ct is None else ct, q) for q, ct in enumerate(sums)])
        return out

    def _mask(self, ct: Any, group: int) -> bytes:
        """Add the zero-sum-per-column mask and the flooding noise; serialise."""
        _, size = self.layout_.packing.groups[group]
        span = self.runtime.slots // size
        bound = self._bounds[group]
        u = secure_uniform(-bound, bound, 2 * self.runtime.slots).reshape(2, size, span)
        u -= u.mean(axis=2, keepdims=True)  # each column's slots now sum to zero
        r = (u[0] + 1j * u[1]).reshape(-1)
        eta = secure_normal(0.0, FLOOD_STD, self.runtime.slots) + 1j * secure_normal(0.0, FLOOD_STD, self.runtime.slots)
        ev = self.runtime.evaluator
        # separate plaintexts: folding η into r would round away its fine bits
        ev.add_plain_inplace(ct, self.runtime.encode(r, self.level, ct.scale))
        ev.add_plain_inplace(ct, self.runtime.encode(eta, self.level, ct.scale))
        return self.runtime.dump(ct)

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


def decrypt_histogram(context: ts.Context, blobs: Sequence[bytes], layout: HistogramLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per-column gradient and hessian sums from a masked histogram (key holder).

    Only ciphertexts shaped like a histogram product are decrypted: the layout's
    count, the top level and scale Δ·2^60 — so the encrypted gradients sent back
    as they are get refused.

    Raises
    ------
    ProtocolError
        Wrong number of ciphertexts, or a ciphertext that is not a histogram product.
    CryptoError
        The context holds no secret key or a ciphertext does not load under it.
    """
    if not context.is_private():
        raise CryptoError("this CKKS context holds no secret key; it cannot decrypt")
    runtime = CKKSRuntime.for_context(context)
    if len(blobs) != layout.n_ciphertexts:
        raise ProtocolError(f"histogram has {len(blobs)} ciphertexts, the layout announced {layout.n_ciphertexts}")
    level, scale = histogram_level(runtime), product_scale(runtime)
    imag_blobs = []
    for blob in blobs:
        ct = runtime.load(blob)
        if runtime.level_of(ct) != level or not math.isclose(ct.scale, scale, rel_tol=1e-9):
            raise ProtocolError("ciphertext is not a histogram product; refusing to decrypt")
        runtime.evaluator.multiply_plain_inplace(ct, runtime.imaginary_unit_plaintext(level))
        imag_blobs.append(runtime.dump(ct))
    real = decrypt_ciphertexts(context, blobs)
    sign = np.tile(np.where(np.arange(runtime.slots) % 2 == 0, 1.0, -1.0), len(blobs))
    imag = decrypt_ciphertexts(context, imag_blobs) * sign
    m = layout.n_columns  # columns past m pad the last block
    return layout.packing.unpack(real)[:m], layout.packing.unpack(imag)[:m]
