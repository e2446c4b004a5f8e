"""Encrypted per-bin gradient/hessian histograms for vertical SecureBoost.

The label holder (key holder) encrypts the gradients ``g`` and hessians ``h`` of
its training rows; a feature holder, which bins its own features locally, must
return for a tree node ``v`` the per-bin sums ``Σ_{i∈v, bin_f(i)=b} g_i`` (and the
same for ``h``) without seeing ``g`` or ``h``, and without the label holder seeing
anything finer than those sums.

What the key holder decrypts
----------------------------
Only bin totals. Every slot of every histogram ciphertext holds the *whole* total
of one column (bin) — there is no partial sum over a subset of rows anywhere in
what decrypts — plus the CKKS evaluation noise plus a fresh Gaussian flooding
``η`` (std :data:`FLOOD_STD` on each real and imaginary part of each slot). The
totals are what SecureBoost discloses to the label holder; the flooding hides the
evaluation noise, which depends on the feature holder's bins (next section but
one). No masks are needed, so none remain.

Packing
-------
* **g and h in one slot.** CKKS slots are complex: the label holder encrypts
  ``g + i·h`` (``|g + i·h| ≤ 1`` for the logistic loss), 4096 rows per ciphertext,
  once per tree (:func:`encrypt_gradients`), on the top level (three primes) at
  Δ = 2^48. Every later product is with *real* plaintexts, so real and imaginary
  parts stay apart and one product yields both histograms. The key holder reads
  the imaginary part by multiplying with the monomial ``X^{N/2}``, which SEAL's
  slot order encodes exactly as ``(−i, +i, −i, …)`` at scale 1 (no level, no
  noise), and flipping the odd slots' signs (:func:`decrypt_slots`).
* **Histogram = one-hot transpose product.** The feature holder's bins form a
  fixed 0/1 matrix ``B`` (rows × Σ_f bins_f, plus one "NaN" column for a feature
  with missing values; rows it does not cover are all-zero and fall into the label
  holder's exact missing bucket). A node's sums are ``Bᵀ(m_v ⊙ (g + ih))``, with
  ``m_v`` the node's 0/1 row mask — its instance space, which the label holder
  discloses as SecureBoost does.
* **Interleaved baby-step/giant-step diagonals, then rotate-and-sum.** ``B``'s
  columns are cut into blocks of ``F`` (a power of two; ``L = 4096/F``); column
  ``f`` of a block owns the slots ``{f + F·i}``. With diagonal ``k = jb + i``::

      Out_q = Σ_j rot_{j·b}( Σ_i Σ_c P'[q,j,i,c] ⊙ rot_i(m_v ⊙ d_c) )

  (pre-rotated, cached one-hot plaintexts ``P'``), slot ``t`` of ``Out_q`` is column
  ``t mod F`` summed over a window of ``F`` consecutive rows of each chunk; the
  ``L`` windows of a column tile the chunk. The feature holder then rotates and
  adds with steps ``F, 2F, …, S/2`` (``log2 L`` rotations per output ciphertext,
  :func:`_rotate_and_sum`): every slot ``t`` becomes the total of column ``t mod F``
  over all rows, ``L`` identical copies per column. Only then is anything flooded
  and sent; the key holder reads a total as the mean of its copies. Each block
  needs ``F/b − 1`` giant rotations; the ``b − 1`` baby rotations of each input
  chunk are done **once per tree** on the fresh gradients (``rot_i(m_v ⊙ d) =
  rot_i(m_v) ⊙ rot_i(d)``), so each node only multiplies the rotated copies by its
  rotated mask (in the clear) and rescales. All steps — ``1``, ``b``, ``F·2^k`` —
  are powers of two: one key switch each. :func:`plan_packing` picks ``F`` and
  ``b`` (default credit, 120 columns: ``F = 128``, ``b = 4``, one output
  ciphertext per node, 31 + 5 rotations).
* **Node masks at the feature holder.** The gradients cross the wire once per
  tree, not once per node (the label holder does not encrypt ``m_v ⊙ (g + ih)``).
* **Histogram subtraction.** The label holder asks for one child of each split and
  derives its sibling as parent − child: 4 products per depth-3 tree, not 7.
* **Nodes of a level together.** The nodes of one request share a pass over the
  cached plaintexts (each is read once and multiplied into every node).
* **Worker processes.** ``n_jobs`` child processes (fresh interpreters talking
  length-prefixed frames over pipes, never pickle) each hold the plaintexts of
  their share — whole blocks, or power-of-two ranges of a block's giant steps —
  and return unreduced partial products; the feature holder's main process adds
  them, rotates-and-sums and floods. Nothing unreduced leaves the feature holder.

Levels and evaluation noise
---------------------------
Gradients at 2^48 on three primes (140 bits) × node mask at 2^36, rescaled to two
primes (≈2^44) × one-hot at 2^38 → products at ≈2^82 on a 100-bit modulus: 18 bits
for bin totals (≤ 1.25·rows ≤ 2^15 for 24,000 rows; :func:`one_hot_scale_bits`
lowers the one-hot scale, announced in the layout, when a column holds more rows).
Without masks the headroom goes to precision. The evaluation noise of an output
slot — what the flooding must hide — measured on 24,000 rows × 120 columns
(``F = 128``; max over all 4096 slots of two nodes, ``|e_t|`` of the complex slot,
flooding off; test ``test_flooding_exceeds_the_measured_evaluation_noise``)::

    Δ_g   node mask  one-hot   max |e_t|          rms
    2^40  2^33       2^27      5.1e-5  (2^-14.3)  1.7e-5    the previous kernel's scales
    2^44  2^36       2^40      2.1e-7  (2^-22.2)  9.0e-8
    2^46  2^36       2^39      5.4e-8  (2^-24.1)  2.4e-8
    2^48  2^34       2^39      7.5e-8  (2^-23.7)  3.3e-8
    2^48  2^36       2^38      2.5e-8  (2^-25.3)  1.0e-8    taken
    2^48  2^36       2^39      1.9e-8  (2^-25.7)  8.5e-9    leaves 1 bit of headroom at 24,000 rows
    2^50  2^36       2^35      1.3e-7  (2^-22.9)  5.0e-8

The per-row sources — fresh encryption noise (≈2^14/Δ_g), the node mask's and the
one-hot plaintexts' encoding (≈2^3/scale each), the rescale's rounding (≈2^10/2^44)
— are balanced near 2^-33 at the chosen scales; a column total sums them over all
rows (random signs). Each is known to, or computable by, the key holder (it holds
the secret key, its own ciphertexts and the node masks) except through ``B``: the
noise is a function of the feature holder's bins. The stated bound
:data:`EVAL_NOISE_BOUND` = 2^-24 per slot is 2.5× the measured maximum (it grows
as √rows: it holds to ≈6× the rows). The copies of a column carry (nearly) the
same noise — it is summed before the copies are made.

Flooding and the run-level bound
--------------------------------
The feature holder adds to every output ciphertext an independent complex
Gaussian ``η`` (``os.urandom``, Box–Muller), std σ = :data:`FLOOD_STD` = 4 on each
real and imaginary part of each of the ``S = 4096`` slots. A simulator that knows
only the bin totals outputs ``total_{col(t)} + η_t``; the key holder's view is
``total_{col(t)} + e_t + η_t``. Per decrypted ciphertext ``KL(view ‖ sim) =
Σ_t |e_t|²/(2σ²) ≤ S·ε²/(2σ²)`` (ε = :data:`EVAL_NOISE_BOUND`; the CKKS
decryption reveals the whole noisy polynomial, i.e. all ``S`` complex slots);
flooding is fresh per ciphertext, so KL adds up over a run, and Pinsker gives
``TV ≤ sqrt(ΣKL/2)`` (:func:`flooding_bound`). The default-credit run decrypts
``n = 30 trees × 4 requested nodes × 1 ciphertext = 120`` ciphertexts::

    ΣKL ≤ 120 · 4096 · 2^-48 / (2 · 16) = 2^-34.1     TV ≤ 2^-17.6 (2^-18.9 at the measured ε)

**This is short of the 40-bit target, and CKKS at N = 8192 cannot reach it.**
Every bit of flooding costs a bit of precision on the totals: a total is read as
the mean of ``L`` copies, so it carries std ``σ_total = σ/√L`` (0.71 at σ = 4,
``L = 32``), and ``TV ≤ sqrt(n·F)·ε/(2·σ_total)`` whatever the packing (selecting
one copy per column instead of averaging gives the same trade: σ/√L on the mean
of ``L`` copies is σ' on one copy with ``L`` times fewer flooded slots). 40 bits
over this run needs ``σ/ε ≥ 2^48.5``. Measured on default credit (30 trees, one
draw each, scikit-learn 0.7793, plaintext reference 0.7793): σ = 1 → AUC 0.7775,
0.7797, 0.7781; σ = 2 → 0.7767, 0.7794; σ = 4 → 0.7776, 0.7792, 0.7769;
σ = 8 → 0.7760; σ = 16 → 0.7717 (beyond the 0.005 allowed); σ = 64 → 0.7636.
σ = 4 is the largest with margin: with ε ≥ 2^-25 that is at most ≈19 bits. On
small models any flooding that matters flips near-tie splits: 6 trees on 5,400
rows moved the AUC by −0.004 … +0.006 against the reference for every σ from
0.25 to 4 — flooding and "the same splits as the plaintext reference" exclude
each other (tests compare split for split with ``flood_std = 2^-20``). What would
reach 40 bits:

* an evaluation noise of 2^-46.5 per slot — per row ≈2^-54, below the double
  precision in which SEAL encodes and decodes CKKS (its encoder's FFT is float64):
  not reachable by CKKS parameters alone. Larger moduli help little: a
  ``[60, 60, 40, 58]`` chain at N = 8192 (its own context, scales 2^53/2^42/2^48)
  measured 2.3e-9 (2^-28.7), +3.4 bits;
* an exact scheme, where the message is separated from the noise: BFV/BGV on
  gradients quantised to ≈2^-20 (flooding the ciphertext noise by 2^40 costs ≈45
  bits of modulus, not precision; N = 16384 estimated, not measured), or Paillier
  as FATE does (exact sums, re-randomised ciphertexts: no evaluation-noise channel
  at all) at a far higher cost;
* fewer decrypted values: the bound grows as sqrt(n), e.g. 5 trees instead of 30
  gain 1.3 bits.

The bound covers the evaluation-noise channel only. The totals themselves are
SecureBoost's disclosure and are not hidden; σ/√L of noise on them is a side effect,
not a differential-privacy guarantee.

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
    main process            G·(log2(S/F) rotations + flooding encode + serialise);
                            key holder G·(load + multiply + serialise + 2 decryptions)
    per tree                C encryptions; (b − 1)·C rotations (3 primes) per worker

Default-credit feature holder (24,000 training rows, C = 6; 10 features → 120
columns since 8 features have fewer than 32 distinct values; F = 128, b = 4): 768
multiplications and 31 + 5 rotations per node, against 768 and 116 for the
vertical-LR kernel's one-rotation-per-column layout on the same one-hot matrix.
The rotate-and-sum adds 5 rotations (≈ 6 ms quiet) per node in the main process:
measured with two workers (min of 8, other jobs on the cores) 0.265 s per node
against 0.252 s for the previous kernel, and 23.0 s against 21.4 s for the
30-tree benchmark run alternately with it at load ≈2. Bytes per tree: 2.0 MB of gradients (six 331 kB ciphertexts) and 4 × 235 kB
of histograms.

Alternatives measured and not taken
-----------------------------------
* **The previous layout: column f in the contiguous slots f·L … f·L + L − 1, each
  slot a partial sum over the rows ≡ i (mod L), hidden by zero-sum masks** (20-bit
  uniform, so 2^-20 per column and ≈2^-6 over a run's 14,400 columns) with 2^-20
  flooding, below the 1e-5 evaluation noise of its scales. Replaced: a partial sum
  over a known row subset tells the key holder, who knows every row's g and h,
  which rows are in the bin (``tests/test_encrypted_histogram.py`` runs that attack
  on unreduced slots). Rotate-and-sum costs ``log2 L`` rotations per output
  ciphertext (5 for default credit) and removes the masks and their headroom.
* **Masks sized for 40 bits over a run instead of the reduction**: ``M ≥
  2^40 · 14,400 columns · 1.25 · 24,000 rows ≈ 2^69`` above the scale — more than
  the 100-bit level holds — and their decoding error (≈ M·2^-50 ≈ 2^19) would
  swamp the totals.
* **The vertical-LR kernel** (:class:`~fedrisk.crypto.encrypted_matvec.EncryptedMatVec`)
  on the one-hot matrix, node-masked input: 2× slower per node, one output
  ciphertext per power-of-two group of columns.
* **g and h in separate ciphertexts** (or 2n slots): twice the products.
* **The label holder encrypting per node** (zeros outside the node) instead of node
  masks: six encryptions per node and 2 MB per node on the wire. It would hide
  instance spaces from the feature holders, which SecureBoost discloses anyway.
* **Kernel on three primes** (no rescale): 1.5× the multiplication and rotation
  cost; the rescale's rounding at ≈2^44 is not the dominant noise.
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
    CKKSRuntime,
    _recv,
    _send,
    _WorkerPool,
    decrypt_ciphertexts,
    pack_frame,
    secure_normal,
    unpack_frame,
)
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

__all__ = [
    "EVAL_NOISE_BOUND",
    "FLOOD_STD",
    "GRADIENT_SCALE_BITS",
    "NODE_MASK_SCALE_BITS",
    "ONE_HOT_SCALE_BITS",
    "EncryptedHistogramKernel",
    "HistogramLayout",
    "KernelCosts",
    "decrypt_histogram",
    "decrypt_slots",
    "encrypt_gradients",
    "flooding_bound",
    "gradient_level",
    "histogram_level",
    "masked_scale",
    "one_hot_bins",
    "one_hot_scale_bits",
    "packing_cost",
    "plan_packing",
    "product_scale",
]

GRADIENT_SCALE_BITS = 48
"""Scale of the encrypted ``g + i·h`` (top level): fresh-encryption noise ≈2^-33 per row."""
NODE_MASK_SCALE_BITS = 36
"""Scale of the node's 0/1 row mask; the rescale after it leaves the gradients at ≈2^44."""
ONE_HOT_SCALE_BITS = 38
"""Largest scale of the one-hot bin plaintexts (lowered, per kernel, to the headroom its bin totals need)."""
MIN_ONE_HOT_SCALE_BITS = 24
"""Refuse a kernel whose bin totals would leave less than this for the one-hot scale."""
FLOOD_STD = 4.0
"""Std of the Gaussian added to each real and imaginary part of every slot of an output ciphertext.

A bin total is read as the mean of its ``L = 4096/F`` copies, so it carries
``FLOOD_STD/√L`` (0.71 for ``F = 128``): the largest flooding that kept the
default-credit AUC within 0.005 of the plaintext reference with margin (module
docstring, *Flooding and the run-level bound*)."""
EVAL_NOISE_BOUND = 2.0**-24
"""Stated bound on the evaluation noise of one output slot (complex modulus): 2.5× the
2^-25.3 measured on 24,000 rows × 120 columns; :func:`flooding_bound` assumes it."""
ROW_BOUND = 1.25
"""``|g| + |h| ≤ 1.25`` for the logistic loss: what one row adds to a bin total at most."""
MISSING_CODE = 255
_FLOOD_TAIL = 9.0
"""Box–Muller on 53-bit uniforms never exceeds 8.6 standard deviations."""


# --------------------------------------------------------------------------- levels


def gradient_level(runtime: CKKSRuntime) -> int:
    """Level of the encrypted gradients: the top one (the node mask needs a rescale below it)."""
    if len(runtime.level_bits) < 3:
        raise CryptoError("encrypted histograms need a CKKS modulus chain with at least three levels")
    need = GRADIENT_SCALE_BITS + NODE_MASK_SCALE_BITS + 3
    if runtime.level_bits[0] < need:
        raise CryptoError(f"CKKS modulus too small for encrypted histograms: the top level needs {need} bits")
    return 0


def histogram_level(runtime: CKKSRuntime) -> int:
    """Level of the histogram kernel and its products (one below the gradients)."""
    return gradient_level(runtime) + 1


def masked_scale(runtime: CKKSRuntime) -> float:
    """Exact scale of the node-masked gradients after the rescale: 2^48 · 2^36 / q (the dropped prime)."""
    data = runtime.seal.first_context_data()
    for _ in range(gradient_level(runtime)):
        data = data.next_context_data()
    prime = float(data.parms().coeff_modulus()[-1].value())
    return 2.0**GRADIENT_SCALE_BITS * 2.0**NODE_MASK_SCALE_BITS / prime


def product_scale(runtime: CKKSRuntime, scale_bits: int = ONE_HOT_SCALE_BITS) -> float:
    """Exact scale of a histogram product: :func:`masked_scale` · 2^scale_bits (the one-hot scale)."""
    return masked_scale(runtime) * 2.0 ** int(scale_bits)


def one_hot_scale_bits(runtime: CKKSRuntime, max_value: float) -> int:
    """The one-hot scale for bin totals up to ``max_value``: at most :data:`ONE_HOT_SCALE_BITS`,
    and low enough that every slot stays below a quarter of the kernel level's modulus.

    Raises
    ------
    CryptoError
        That would need a scale below :data:`MIN_ONE_HOT_SCALE_BITS` (too many rows).
    """
    level = histogram_level(runtime)
    room = runtime.level_bits[level] - math.log2(masked_scale(runtime)) - 2 - math.log2(max(1.0, max_value))
    bits = min(ONE_HOT_SCALE_BITS, math.floor(room))
    if bits < MIN_ONE_HOT_SCALE_BITS:
        raise CryptoError(f"bin totals up to {max_value:.0f} leave a one-hot scale of 2^{bits} (< 2^{MIN_ONE_HOT_SCALE_BITS}); use fewer rows")
    return bits


# --------------------------------------------------------------------------- label holder: encrypt


def encrypt_gradients(context: ts.Context, grad: np.ndarray, hess: np.ndarray) -> list[bytes]:
    """Encrypt ``g + i·h``, 4096 rows per ciphertext, with the public key, at 2^48 on the top level.

    Raises
    ------
    CryptoError
        Values outside the logistic-loss range (``|g| ≤ 1``, ``0 ≤ h ≤ 1/4``), which
        the kernel's headroom and the flooding bound assume.
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
        encryptor.encrypt(runtime.encode(values[start : start + runtime.slots], level, 2.0**GRADIENT_SCALE_BITS), ct)
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
    slots : int
        Slots per ciphertext.
    columns_per_ciphertext : int
        ``F`` (a power of two): output ciphertext ``q`` holds columns ``qF … qF + F − 1``,
        column ``qF + f`` in every slot ``t ≡ f (mod F)`` — each of those ``L = slots/F``
        slots holds the column's whole total (interleaved, reduced).
    scale_bits : int
        The one-hot plaintexts' scale (products are at :func:`product_scale`).
    """

    n_bins: tuple[int, ...]
    has_missing: tuple[bool, ...]
    slots: int
    columns_per_ciphertext: int
    scale_bits: int

    def __post_init__(self) -> None:
        if len(self.n_bins) != len(self.has_missing):
            raise ProtocolError("histogram layout: bins and missing flags differ in length")
        if not self.n_bins or any(b < 1 or b > 254 for b in self.n_bins):
            raise ProtocolError("histogram layout: every feature needs 1..254 bins")
        F, S = self.columns_per_ciphertext, self.slots
        if S < 1 or S & (S - 1) or F < 1 or F & (F - 1) or F > S:
            raise ProtocolError("histogram layout: slots and columns per ciphertext must be powers of two, F ≤ slots")
        if not MIN_ONE_HOT_SCALE_BITS <= self.scale_bits <= ONE_HOT_SCALE_BITS:
            raise ProtocolError(f"histogram layout: one-hot scale 2^{self.scale_bits} outside "
                                f"2^{MIN_ONE_HOT_SCALE_BITS}..2^{ONE_HOT_SCALE_BITS}")

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

    def column_of_slot(self) -> np.ndarray:
        """Column index of every slot of the output ciphertexts (≥ n_columns: padding)."""
        t = np.arange(self.n_ciphertexts * self.slots)
        return (t // self.slots) * self.columns_per_ciphertext + t % self.columns_per_ciphertext

    def unpack(self, slots: np.ndarray) -> np.ndarray:
        """Decrypted slots ``(n_ciphertexts·slots,)`` → per-column totals: the mean of each column's ``L`` copies."""
        vals = np.asarray(slots).reshape(self.n_ciphertexts, self.copies, self.columns_per_ciphertext)
        return vals.mean(axis=1).reshape(-1)[: self.n_columns]

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
            "scale_bits": self.scale_bits,
            "packing": "interleaved-reduced",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistogramLayout:
        """Parse and validate an announced layout (:class:`ProtocolError` on anything odd)."""
        try:
            if d["packing"] != "interleaved-reduced":
                raise ValueError(f"unknown packing {d['packing']!r}")
            n_bins = tuple(_int_list(d["n_bins"]))
            if any(not isinstance(x, bool) for x in d["has_missing"]):
                raise TypeError("has_missing")
            has_missing = tuple(bool(x) for x in d["has_missing"])
            slots, F, bits = (_int(d[k]) for k in ("slots", "columns_per_ciphertext", "scale_bits"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"histogram layout is malformed: {exc}") from None
        return cls(n_bins, has_missing, slots, F, bits)


def _int_list(values: Any) -> list[int]:
    if not isinstance(values, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise TypeError("expected a list of integers")
    return list(values)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


# --------------------------------------------------------------------------- flooding bound


def flooding_bound(n_ciphertexts: int, slots: int = 4096, flood_std: float = FLOOD_STD,
                   eval_noise: float = EVAL_NOISE_BOUND) -> tuple[float, float]:
    """``(ΣKL, TV)`` between the key holder's view of ``n_ciphertexts`` histograms and a
    simulation from the bin totals alone.

    The view is ``total + e_t + η_t`` in every slot, the simulation ``total + η_t``,
    with ``|e_t| ≤ eval_noise`` and ``η`` an independent complex Gaussian of std
    ``flood_std`` per real and imaginary part: ``KL = Σ_t |e_t|²/(2·flood_std²) ≤
    slots·eval_noise²/(2·flood_std²)`` per ciphertext, added up over ciphertexts
    (fresh flooding each), and Pinsker: ``TV ≤ sqrt(ΣKL/2)``.
    """
    kl = n_ciphertexts * slots * eval_noise**2 / (2.0 * flood_std**2)
    return kl, math.sqrt(kl / 2.0)


# --------------------------------------------------------------------------- packing plan


@dataclass(frozen=True)
class KernelCosts:
    """Per-operation costs (ms, one core) the packing plan minimises (see the module docstring)."""

    multiply_add: float = 0.111
    """Plain multiplication and addition on two primes."""
    rotation: float = 1.20
    """Rotation on two primes (giant steps, and the rotate-and-sum of every output)."""
    node_mask: float = 1.16
    """Encode a rotated node mask, multiply on three primes, rescale: per chunk and baby step."""
    baby_rotation: float = 1.88
    """Rotation on three primes (baby steps, once per tree)."""
    nodes_per_tree: float = 4.0
    output: float = 9.0
    """Per output ciphertext: a flooding encode, serialise, and at the key holder load,
    the imaginary-part product, serialise and two decryptions."""


def packing_cost(n_columns: int, n_chunks: int, slots: int, F: int, B: int, n_jobs: int = 1,
                 costs: KernelCosts = KernelCosts()) -> tuple[float, float]:
    """Modelled ``(wall, total CPU)`` ms per node histogram for ``F`` columns per output and ``B`` baby steps.

    Per node: ``C·m'`` plain multiplications and ``G·(F/B − 1)`` giant-step rotations,
    shared between the workers; ``C·B`` node-mask products done by every worker;
    ``G`` output ciphertexts (``m'`` = columns padded to ``G·F``), each reduced by
    ``log2(slots/F)`` rotations in the feature holder's main process; plus the
    ``(B − 1)·C`` baby rotations of each tree spread over its nodes.
    """
    G = -(-n_columns // F)
    workers = max(1, min(n_jobs, len(_units(G, F // B, n_jobs))))
    shared = n_chunks * G * F * costs.multiply_add + G * (F // B - 1) * costs.rotation
    each = n_chunks * B * costs.node_mask + (B - 1) * n_chunks * costs.baby_rotation / costs.nodes_per_tree
    main = G * (costs.output + int(math.log2(slots // F)) * costs.rotation)
    return shared / workers + each + main, shared + workers * each + main


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

    Column block ``q`` (``F`` columns) in the interleaved diagonal layout, diagonal
    ``k = jB + i``::

        Out_q = Σ_j rot_{jB}( Σ_i Σ_c P'[q, j, i, c] ⊙ rot_i(d_c) )
        P'[q, j, i, c][s] = B[c·S + (s + i) mod S,  qF + (s − jB) mod F]

    so slot ``t`` of ``Out_q`` is ``Σ_c Σ_{k<F} B[c·S + (t + k) mod S, qF + t mod F] · d_c[(t + k) mod S]``:
    column ``t mod F`` over a window of ``F`` rows of every chunk. The ``L`` windows of
    the slots ``t ≡ f (mod F)`` tile the chunk, so the rotate-and-sum the caller
    applies (:func:`_rotate_and_sum`) leaves the column's total in each of them; this
    class never returns anything that is decrypted as it is. The ``B − 1`` baby
    rotations of each input chunk are shared by every diagonal and block; each block
    needs ``F/B − 1`` giant rotations (Horner in ``B``). All rotation steps are powers
    of two (one key switch each), except the offset of a work unit's part of a block.
    """

    def __init__(self, runtime: CKKSRuntime, onehot: np.ndarray, *, F: int, B: int, scale_bits: int,
                 units: Sequence[tuple[int, int, int]], level: int, cache_plaintexts: bool) -> None:
        self.rt = runtime
        self.S = runtime.slots
        self.F, self.B = F, B
        self.scale = 2.0 ** int(scale_bits)
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
        rows = c * self.S + (t + i) % self.S
        cols = self._col0[q] + (t - j * self.B) % self.F
        diag = self.X[rows, cols]
        if not diag.any():
            return None  # SEAL refuses products with an all-zero plaintext; skip them
        return self.rt.encode(diag.astype(np.float64), self.level, self.scale)

    def plaintext(self, q: int, j: int, i: int, c: int) -> Any:
        if self.cache is not None:
            return self.cache[(q, j, i, c)]
        return self._encode(q, j, i, c)

    def set_gradients(self, cts: Sequence[Any]) -> None:
        """Take the tree's ``[[g + ih]]`` chunks and rotate each by ``i`` (i < B) once for all nodes."""
        if len(cts) != self.n_chunks:
            raise ProtocolError(f"gradients have {len(cts)} ciphertexts, expected {self.n_chunks}")
        ev, keys = self.rt.evaluator, (self.rt.galois_keys if self.B > 1 else None)
        self._grad = []
        for ct in cts:
            steps = [ct]
            for _ in range(1, self.B):
                nxt = sa.Ciphertext()
                ev.rotate_vector(steps[-1], 1, keys, nxt)
                steps.append(nxt)
            self._grad.append(steps)

    def _masked_baby_steps(self, rows: np.ndarray) -> dict[int, list[Any]]:
        """Per chunk holding node rows: ``rot_i(m_v) ⊙ rot_i(d_c)``, rescaled, for i < B."""
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
                ev.multiply_plain(rotated, rt.encode(np.roll(part, -i), self.grad_level, 2.0**NODE_MASK_SCALE_BITS), cur)
                ev.rescale_to_next_inplace(cur)  # to the kernel's level: cheaper products and rotations
                masked.append(cur)
            out[c] = masked
        return out

    def run(self, nodes: Sequence[np.ndarray]) -> list[list[Any]]:
        """Per node, one (partial, unreduced) output ciphertext per work unit, None if empty.

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
                        ev.rotate_vector_inplace(a, self.B, rt.galois_keys)
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
                    ev.rotate_vector_inplace(acc[n], j0 * self.B, rt.galois_keys)
                out[n].append(acc[n])
        return out


def _rotate_and_sum(runtime: CKKSRuntime, ct: Any, F: int) -> Any:
    """``ct += rot_{F·2^k}(ct)`` for ``F·2^k < S``: every slot ``t`` then holds ``Σ_i ct[t + F·i]``,
    the total of column ``t mod F`` over all rows (``log2(S/F)`` rotations, powers of two)."""
    ev, tmp, step = runtime.evaluator, sa.Ciphertext(), F
    while step < runtime.slots:
        ev.rotate_vector(ct, step, runtime.galois_keys, tmp)
        ev.add_inplace(ct, tmp)
        step *= 2
    return ct


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
                                     scale_bits=int(header["scale_bits"]),
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
    """Feature-holder side: per-node flooded histograms ``Bᵀ(m_v ⊙ [[g + ih]])``, bin totals only.

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
    flood_std : float
        Std of the Gaussian added to the real and the imaginary part of every output
        slot (default :data:`FLOOD_STD`; see the module docstring for the bound it gives).
    columns_per_ciphertext, baby_steps : int, optional
        Override the packing plan (:func:`plan_packing`); both powers of two.
    cache_bytes : int
        Memory budget for the cached one-hot plaintexts (beyond it they are encoded
        on the fly, ≈ 5× slower per multiplication).

    Attributes
    ----------
    layout_ : HistogramLayout
    flood_std_ : float
    column_counts_ : ndarray
        Covered rows per column (bounds every node's bin totals).
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
        flood_std: float = FLOOD_STD,
        columns_per_ciphertext: int | None = None,
        baby_steps: int | None = None,
        cache_bytes: int = 2 << 30,
    ) -> None:
        if context.is_private():
            raise CryptoError("the histogram kernel must run under the public CKKS context")
        if not (math.isfinite(flood_std) and flood_std >= 0.0):
            raise CryptoError(f"flooding std must be a non-negative number, got {flood_std}")
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
        self.flood_std_ = float(flood_std)
        F, B = plan_packing(m, self.n_chunks, slots, n_jobs)
        F = int(columns_per_ciphertext or F)
        B = int(baby_steps or min(B, F))
        if F & (F - 1) or B & (B - 1) or not 1 <= B <= F <= slots:
            raise CryptoError(f"columns per ciphertext ({F}) and baby steps ({B}) must be powers of two, B ≤ F ≤ {slots}")
        self.F_, self.B_ = F, B
        top = ROW_BOUND * float(self.column_counts_.max(initial=0.0)) + _FLOOD_TAIL * self.flood_std_
        scale_bits = one_hot_scale_bits(self.runtime, top)
        self.layout_ = HistogramLayout(tuple(int(b) for b in n_bins), tuple(bool(x) for x in has_missing), slots, F, scale_bits)
        n_groups = self.layout_.n_ciphertexts
        units = _units(n_groups, F // B, max(1, int(n_jobs)))
        n_workers = min(max(1, int(n_jobs)), len(units))
        self._assign = [units[w::n_workers] for w in range(n_workers)]
        per_plain = slots * 2 * 8 * 2  # NTT form, two primes
        cache = self.n_chunks * n_groups * F * per_plain <= cache_bytes
        self.rotations_per_node_ = n_groups * (F // B - 1 + int(math.log2(slots // F)))
        self.rotations_per_tree_ = (B - 1) * self.n_chunks * n_workers
        padded = np.zeros((self.n_rows, n_groups * F), dtype=np.uint8)
        padded[:, :m] = onehot
        self._pool: _Workers | None = None
        self._local: _BSGSKernel | None = None
        if n_workers == 1:
            self._local = _BSGSKernel(self.runtime, padded, F=F, B=B, scale_bits=scale_bits, units=units,
                                      level=self.level, cache_plaintexts=cache)
        else:
            self._pool = _Workers(n_workers)
            weakref.finalize(self, _WorkerPool.close, self._pool)
            ctx_bytes = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)
            frames = []
            for mine in self._assign:
                qs = sorted({u[0] for u in mine})
                block = np.ascontiguousarray(np.concatenate([padded[:, q * F : (q + 1) * F] for q in qs], axis=1))
                header = {"rows": self.n_rows, "cols": block.shape[1], "F": F, "B": B, "scale_bits": scale_bits,
                          "units": [list(u) for u in mine], "level": self.level, "cache": cache}
                frames.append(pack_frame(b"HINI", self.fingerprint, header, [ctx_bytes, block.tobytes()]))
            try:
                self._pool.scatter(frames)
            except BaseException:
                self.close()
                raise
        self._grad_tag: Any = None

    # ------------------------------------------------------------------ per tree
    def set_gradients(self, blobs: Sequence[bytes], n_values: int, tag: Any = None) -> None:
        """Load the tree's ``[[g + ih]]`` (checked: count, level, scale)."""
        if n_values != self.n_rows:
            raise ProtocolError(f"encrypted gradients cover {n_values} rows, the kernel {self.n_rows}")
        if len(blobs) != self.n_chunks:
            raise ProtocolError(f"encrypted gradients have {len(blobs)} ciphertexts, expected {self.n_chunks}")
        cts = [self.runtime.load(b) for b in blobs]
        for ct in cts:
            if self.runtime.level_of(ct) != self.grad_level or not math.isclose(ct.scale, 2.0**GRADIENT_SCALE_BITS, rel_tol=1e-9):
                raise ProtocolError("encrypted gradients are not fresh top-level ciphertexts at the gradient scale 2^48")
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
        """Flooded ``Bᵀ(m_v ⊙ [[g + ih]])`` for the node whose rows are ``rows`` (serialised)."""
        return self.node_histograms([rows])[0]

    def node_histograms(self, nodes: Sequence[np.ndarray]) -> list[list[bytes]]:
        """Flooded histograms of several nodes, computed in one pass over the cached plaintexts."""
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
        scale = product_scale(self.runtime, self.layout_.scale_bits)
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
            out.append([self._finish(self.runtime.encrypt_zero(self.level, scale) if ct is None else ct) for ct in sums])
        return out

    def _finish(self, ct: Any) -> bytes:
        """Rotate-and-sum (every slot a column total), add the flooding, serialise.

        Nothing unreduced leaves this method: the only ciphertexts the key holder
        ever decrypts hold each column's total in every one of its ``L`` slots.
        """
        ct = _rotate_and_sum(self.runtime, ct, self.F_)
        if self.flood_std_ > 0.0:
            S = self.runtime.slots
            eta = secure_normal(0.0, self.flood_std_, S) + 1j * secure_normal(0.0, self.flood_std_, S)
            self.runtime.evaluator.add_plain_inplace(ct, self.runtime.encode(eta, self.level, ct.scale))
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


def decrypt_slots(context: ts.Context, blobs: Sequence[bytes], layout: HistogramLayout) -> np.ndarray:
    """Every decrypted slot of a histogram, complex (``g`` sums real, ``h`` sums imaginary), as the key holder sees it.

    Only ciphertexts shaped like a histogram product are decrypted: the layout's
    count, the kernel's level and exact product scale — so the encrypted gradients
    sent back as they are get refused.

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
    if layout.slots != runtime.slots:
        raise ProtocolError(f"histogram layout has {layout.slots} slots, the context {runtime.slots}")
    level, scale = histogram_level(runtime), product_scale(runtime, layout.scale_bits)
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
    return real + 1j * imag


def decrypt_histogram(context: ts.Context, blobs: Sequence[bytes], layout: HistogramLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per-column gradient and hessian sums (key holder): each the mean of the column's ``L`` slots.

    Raises as :func:`decrypt_slots`.
    """
    totals = layout.unpack(decrypt_slots(context, blobs, layout))
    return totals.real.copy(), totals.imag.copy()
