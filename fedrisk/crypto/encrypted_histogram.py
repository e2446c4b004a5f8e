"""Encrypted per-bin gradient/hessian histograms for vertical SecureBoost.

The label holder (key holder) encrypts the gradients ``g`` and hessians ``h`` of
its training rows; a feature holder, which bins its own features locally, must
return for a tree node ``v`` the per-bin sums ``Σ_{i∈v, bin_f(i)=b} g_i`` and the
same for ``h`` — without seeing ``g`` or ``h``, and without the label holder
seeing anything finer than those sums.

Packing
-------
* **g and h in one slot.** CKKS slots are complex: the label holder encrypts
  ``g + i·h`` (``|g + i·h| ≤ 1`` for the logistic loss), 4096 rows per ciphertext,
  once per tree (:func:`encrypt_gradients`), at the top level with scale Δ = 2^40.
  Every product below is with *real* plaintexts, so real and imaginary parts stay
  separate and one kernel run yields both histograms. The key holder reads the
  imaginary part by multiplying with the monomial ``X^{N/2}``, which SEAL's slot
  order encodes exactly as ``(−i, +i, −i, …)`` at scale 1 (no level, no noise),
  and flipping the odd slots' signs (:func:`decrypt_histogram`).
* **Histogram = one-hot transpose product.** The feature holder's bins form a fixed
  0/1 matrix ``B`` (rows × Σ_f bins_f, plus one "NaN" column for a feature with
  missing values; rows it does not cover are all-zero and reach the label
  holder's exact missing bucket). The node's per-bin sums are ``Bᵀ (m_v ⊙ (g+ih))``,
  with ``m_v`` the node's 0/1 row mask — the instance space the label holder
  discloses (as SecureBoost does). ``Bᵀ[[·]]`` is exactly the packed
  :class:`~fedrisk.crypto.encrypted_matvec.EncryptedMatVec` kernel: ``B`` is
  encoded once (cached plaintexts, split over worker processes), about one
  rotation per column, no rotation per row.
* **Node masks at the feature holder.** ``m_v`` is applied with one plaintext
  multiplication per 4096 rows (encoded at 2^30, no rescale) instead of the label
  holder encrypting ``g + ih`` again for each node: the gradients cross the wire
  once per tree, not once per node.
* **Histogram subtraction.** The label holder asks for one child of each split
  and derives its sibling as parent − child. Which child does not matter for
  cost: the kernel's cost does not depend on how many rows a node holds.

Levels and precision
--------------------
``(g+ih)`` at 2^40 × node mask at 2^30 × ``B`` at 2^30 gives products at scale
2^100 in the 140-bit top level: 38 bits of value headroom, no rescale (a rescale
would add ≈2^-22 of noise per row, ≈1e-2 on a bin of 14,000 rows). Encoding ``B``
at the vertical-LR kernel's 2^20 instead would let the kernel run one level lower
(35 % cheaper) but adds 2.5e-5 per row to every bin sum (5e-3 on 24,000 rows,
measured), enough to flip close split choices; at 2^30 it is 5e-9 per row.

Masking (what the key holder sees)
----------------------------------
A column's sum is spread over the ``L = 4096/F`` slots of its packing group
(``F`` columns per output ciphertext), each slot a partial sum over a fixed
subset of rows. The feature holder adds a *zero-sum* mask to each column's ``L``
slots — ``r = u − mean(u)``, ``u`` uniform in ``[−M, M]`` (real and imaginary
parts, from ``os.urandom``) — so the key holder recovers the column sum exactly
but nothing about how it splits into partial sums: for two inputs with the same
column sums the views differ by a zero-sum shift ``δ``, and
``TV ≤ Σ|δ|/(2M) ≤ 1.25·count/M`` (``count`` = rows in the bin, ``|g|+|h| ≤ 1.25``).
``M`` is the power of two giving ``mask_bits`` (default 20) for the group's
largest bin, capped by the headroom (then at least :data:`MIN_MASK_BITS` or the
kernel refuses). A complex Gaussian ``η`` (std 2^-20 per slot) floods the
evaluation noise. The decode error of a masked slot is ≈ ``M·2^-50``, so a bin
sum is exact to ≈ ``2^-50·M·√L`` — 1e-5 to 5e-4 on the 24,000-row benchmark.

Cost model
----------
Measured on this 2-core machine (N = 8192, 60|40|40|60), ms, min of repeats,
with and without another engineer's jobs on the cores (``benchmarks/secureboost.py --ops``)::

                                            top level (3 primes)
    plain multiply, pre-encoded               0.127 (0.18 loaded)
    ciphertext add                            0.032
    rotation                                  1.88  (3.0 loaded)
    encode 4096 values                        0.56
    encrypt 4096 complex values               4.9   (public key)
    serialise + load                          1.8
    ciphertext                                331 kB
    decrypt + decode                          1.6

Per node and feature holder, ``C = ceil(n/4096)`` row chunks, ``m`` one-hot
columns, ``G`` output ciphertexts::

    node mask          C·(encode + multiply + serialise)           ≈ 0.015 s (C = 6)
    Bᵀ[[·]]            C·m·(multiply + add) + (m − G)·rotation     split over n_jobs workers
    masks              G·(2·encode + 2·add + serialise)
    label holder       G·(load + multiply + serialise) + 2·G decryptions

Per tree of depth D: ``D`` levels need histograms; with subtraction
``1 + 1 + 2 + … + 2^(D−2)`` = 4 products for D = 3 (not 7), and one
encryption of ``C`` ciphertexts. Default-credit feature holder (24,000 training
rows, C = 6; 10 features, 132 columns since 8 features have fewer than 32
distinct values; G = 4 on 2 workers): 792 multiplications + 128 rotations ≈
0.34 s on one core, ≈ 0.18 s on two, per product; ≈ 0.8 s per tree, 24 s for 30
trees. Bytes per tree: 2.0 MB of gradients + 4 × 1.3 MB of histograms.

Alternatives measured and not taken
-----------------------------------
* **g and h in separate ciphertexts** (or 2n slots): twice the products.
* **Label holder encrypts per node** (zeros outside the node) instead of the
  node mask: 6 encryptions ≈ 30 ms (≈ 100 ms with the cores shared) per node and
  1.4 MB per node on the wire, against ≈ 15 ms and nothing on the wire; it would
  hide the instance spaces from the feature holders, which SecureBoost discloses
  anyway.
* **One-hot at scale 2^20 on two primes** (the vertical-LR kernel's default
  level): 35 % faster kernel, 1000× less precise histograms (above).
* **Rotate-and-sum each column to one slot, then select with a 0/1 plaintext**
  (no large masks, exact decode): log2(L) more rotations per output ciphertext
  in the feature holder's main process (≈ 17 for 132 columns on two blocks) and a
  selection product that needs a level; the zero-sum mask costs two encodes.
* **Independent uniform masks that the feature holder removes** (as vertical
  LR does): the feature holder would then learn the histogram — g/h sums are
  label information; here only the key holder ever sees a sum.
* **Cumulative bins** (``x ≤ t_b`` columns): the same number of columns and
  products; the label holder forms prefix sums in plaintext instead.
* **Computing the smaller child**: same cost as any child (see above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.crypto.encrypted_matvec import (
    MIN_MASK_BITS,
    CKKSRuntime,
    EncryptedMatVec,
    EncryptedVector,
    PackingLayout,
    decrypt_ciphertexts,
    secure_normal,
    secure_uniform,
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
    "gradient_level",
    "one_hot_bins",
    "product_scale",
]

NODE_MASK_SCALE_BITS = 30
"""Scale of the node's 0/1 row mask."""
ONE_HOT_SCALE_BITS = 30
"""Scale of the one-hot bin plaintexts."""
DEFAULT_MASK_BITS = 20
"""Target statistical hiding of a column's partial sums (TV ≤ 2^-20)."""
FLOOD_STD = 2.0**-20
"""Std of the complex Gaussian added to every slot (floods evaluation noise)."""
ROW_BOUND = 1.25
"""``|g| + |h| ≤ 1.25`` for the logistic loss: what one row adds to a slot at most."""
MISSING_CODE = 255


# --------------------------------------------------------------------------- levels


def gradient_level(runtime: CKKSRuntime) -> int:
    """Level of the encrypted gradients and of the histogram products (the top one).

    Raises
    ------
    CryptoError
        The top level cannot hold a product of scale Δ·2^30·2^30 plus masked values.
    """
    need = math.log2(runtime.global_scale) + NODE_MASK_SCALE_BITS + ONE_HOT_SCALE_BITS + MIN_MASK_BITS + 16 + 3
    if runtime.level_bits[0] < need:
        raise CryptoError(f"CKKS modulus too small for encrypted histograms: needs {need:.0f} bits, has {runtime.level_bits[0]:.0f}")
    return 0


def product_scale(runtime: CKKSRuntime) -> float:
    """Scale of a histogram product: Δ (gradients) · 2^30 (node mask) · 2^30 (one-hot)."""
    return runtime.global_scale * 2.0**NODE_MASK_SCALE_BITS * 2.0**ONE_HOT_SCALE_BITS


def _value_limit(runtime: CKKSRuntime) -> float:
    """Largest |slot value| a product may carry (q/4 at its scale: a factor two of margin)."""
    return 2.0 ** (runtime.level_bits[gradient_level(runtime)] - math.log2(product_scale(runtime)) - 2)


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
        if self.packing.n_features != self.n_columns:
            raise ProtocolError(f"histogram layout packs {self.packing.n_features} columns, the bins need {self.n_columns}")
        slots = self.packing.slots
        pos = 0
        for start, size in self.packing.groups:
            if start != pos or size < 1 or size & (size - 1) or slots % size:
                raise ProtocolError("histogram layout: packing groups must be contiguous powers of two")
            pos += size
        if pos != self.n_columns:
            raise ProtocolError("histogram layout: packing groups do not cover every column")

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
        n_cols = int(sum(n_bins) + sum(has_missing))
        packing = PackingLayout(n_cols, slots, groups, blocks)  # type: ignore[arg-type]
        return cls(n_bins, has_missing, packing)


def _int_list(values: Any) -> list[int]:
    if not isinstance(values, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise TypeError("expected a list of integers")
    return list(values)


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
        Worker processes of the underlying :class:`EncryptedMatVec`.
    mask_bits : int
        Target hiding of partial sums (lowered to what the headroom allows, never
        below :data:`MIN_MASK_BITS`).
    max_pack : int, optional
        Most columns per output ciphertext.
    cache_bytes : int
        Memory budget for the cached one-hot plaintexts.

    Attributes
    ----------
    layout_ : HistogramLayout
    mask_bits_ : int
        Guaranteed hiding: each column's slots are within 2^-mask_bits_ of a view
        that depends only on the column's sum.
    column_counts_ : ndarray
        Covered rows per column (bounds every node's bin counts).
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
        max_pack: int | None = None,
        cache_bytes: int = 2 << 30,
    ) -> None:
        if context.is_private():
            raise CryptoError("the histogram kernel must run under the public CKKS context")
        self.runtime = CKKSRuntime.for_context(context)
        self.context = context
        self.fingerprint = self.runtime.fingerprint
        self.level = gradient_level(self.runtime)
        onehot = one_hot_bins(codes, n_bins, has_missing, covered)
        if onehot.shape[1] == 0:
            raise DataValidationError("a histogram needs at least one bin column")
        self.n_rows = onehot.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // self.runtime.slots))
        self.column_counts_ = onehot.sum(axis=0)
        self._matvec = EncryptedMatVec(
            onehot,
            context,
            max_pack=max_pack,
            n_jobs=n_jobs,
            cache_bytes=cache_bytes,
            x_scale_bits=ONE_HOT_SCALE_BITS,
            min_mask_bits=0,  # its own masks are not used: ours are zero-sum per column
        )
        if self._matvec.level_ != self.level:
            self.close()
            raise CryptoError("histogram kernel level does not match the gradients' level")
        self.layout_ = HistogramLayout(tuple(int(b) for b in n_bins), tuple(bool(m) for m in has_missing), self._matvec.layout_)
        self._bounds, self.mask_bits_ = self._mask_bounds(int(mask_bits))
        self._grad: list[Any] | None = None
        self._grad_tag: Any = None

    def _mask_bounds(self, target: int) -> tuple[list[float], int]:
        limit = _value_limit(self.runtime)
        bounds, worst = [], 64
        for start, size in self.layout_.packing.groups:
            top = ROW_BOUND * max(1.0, float(self.column_counts_[start : start + size].max()))
            exp = min(math.ceil(math.log2(top)) + target, math.floor(math.log2((limit - top) / 2.0)))
            bits = math.floor(math.log2(2.0**exp / top))
            if bits < MIN_MASK_BITS:
                self.close()
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
            if self.runtime.level_of(ct) != self.level or not math.isclose(ct.scale, self.runtime.global_scale, rel_tol=1e-9):
                raise ProtocolError("encrypted gradients are not fresh top-level ciphertexts at the global scale")
        self._grad, self._grad_tag = cts, tag

    @property
    def gradients_tag(self) -> Any:
        return self._grad_tag

    def node_histogram(self, rows: np.ndarray) -> list[bytes]:
        """Masked ``Bᵀ(m_v ⊙ [[g + ih]])`` for the node whose rows are ``rows`` (serialised)."""
        if self._grad is None:
            raise ProtocolError("no encrypted gradients loaded for this tree")
        rows = np.asarray(rows, dtype=bool)
        if rows.shape != (self.n_rows,):
            raise ProtocolError(f"node row mask has {rows.size} entries, expected {self.n_rows}")
        rt, ev, slots = self.runtime, self.runtime.evaluator, self.runtime.slots
        mask_scale = 2.0**NODE_MASK_SCALE_BITS
        masked = []
        for c, ct in enumerate(self._grad):
            part = rows[c * slots : (c + 1) * slots].astype(np.float64)
            if part.any():
                out = sa.Ciphertext()
                ev.multiply_plain(ct, rt.encode(part, self.level, mask_scale), out)
            else:  # SEAL refuses a product with an all-zero plaintext
                out = rt.encrypt_zero(self.level, ct.scale * mask_scale)
            masked.append(rt.dump(out))
        products = self._matvec.compute(EncryptedVector(self.fingerprint, self.n_rows, tuple(masked)))
        return [self._mask(ct, g) for g, ct in enumerate(products)]

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
        matvec = getattr(self, "_matvec", None)
        if matvec is not None:
            matvec.close()

    def __enter__(self) -> EncryptedHistogramKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- label holder: decrypt


_IMAG_PT: dict[tuple[int, int], Any] = {}


def _imag_plaintext(runtime: CKKSRuntime, level: int) -> Any:
    """``X^{N/2}`` at scale 1: multiplies slot j by −i (even j) or +i (odd j), exactly."""
    key = (id(runtime), level)
    pt = _IMAG_PT.get(key)
    if pt is None:
        pattern = np.where(np.arange(runtime.slots) % 2 == 0, -1j, 1j)
        pt = runtime.encode(pattern, level, 1.0)
        _IMAG_PT.clear()  # one runtime at a time is the common case; keep the cache small
        _IMAG_PT[key] = pt
    return pt


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
    level, scale = gradient_level(runtime), product_scale(runtime)
    imag_blobs = []
    for blob in blobs:
        ct = runtime.load(blob)
        if runtime.level_of(ct) != level or not math.isclose(ct.scale, scale, rel_tol=1e-9):
            raise ProtocolError("ciphertext is not a histogram product; refusing to decrypt")
        runtime.evaluator.multiply_plain_inplace(ct, _imag_plaintext(runtime, level))
        imag_blobs.append(runtime.dump(ct))
    real = decrypt_ciphertexts(context, blobs)
    sign = np.tile(np.where(np.arange(runtime.slots) % 2 == 0, 1.0, -1.0), len(blobs))
    imag = decrypt_ciphertexts(context, imag_blobs) * sign
    return layout.packing.unpack(real), layout.packing.unpack(imag)
