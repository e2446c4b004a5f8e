"""Packed encrypted transpose-matrix-vector product X_kᵀ[[d]] for vertical models (hazmat).

This is the **hazmat** layer beneath :mod:`fedrisk.crypto.ckks` (the recipes):
it takes a recipes-layer context — the label holder's
:class:`~fedrisk.crypto.ckks.KeyHolderContext` or a
:class:`~fedrisk.crypto.ckks.PublicContext`, built with the
:data:`~fedrisk.crypto.ckks.VERTICAL_LR` preset — and works on its raw TenSEAL
context and SEAL objects at levels and scales of its own choosing, with the
range and masking budget below. Only the kernel's own worker processes load a
TenSEAL context from bytes here. Payloads and frames carry the one context
fingerprint (:func:`fedrisk.crypto.seal_runtime.context_fingerprint`).

A feature holder ``k`` owns a plaintext matrix ``X_k`` (n rows × m features); the
label holder sends the residual ``d`` (n values) encrypted under CKKS. The
feature holder needs ``X_kᵀ d`` (m values) without ever seeing ``d``. This
module computes it on the ciphertext with far fewer rotations than one TenSEAL
``dot`` per feature, reduces it inside the ciphertext to one total per feature,
and masks it for the key holder to decrypt. The key holder hands back exactly
one value per feature (:func:`reduce_product`); nothing else about ``d`` ever
reaches the feature holder.

Packing (interleaved diagonal / "rotate-and-accumulate" layout)
---------------------------------------------------------------
``d`` arrives as ``C = ceil(n / S)`` ciphertexts of ``S`` slots (S = N/2 = 4096).
Features are cut into *groups* of ``F`` features, ``F`` a power of two (binary
decomposition of m, e.g. 300 = 256 + 32 + 8 + 4), so that ``F·L = S``. Feature
``f`` of a group owns the ``L = S / F`` slots ``{f + F·i}``. For diagonal
``k = 0..F-1`` the feature holder pre-encodes::

    P[k, c][t] = X[c·S + t, (t mod F − k) mod F]          (t = 0..S-1)

computes ``Y_k = Σ_c P[k, c] ⊙ [[d_c]]`` (plain multiplications and additions)
and Horner-accumulates ``Out = Y_0 + rot_1(Y_1 + rot_1(Y_2 + ...))``, so that
``Out[t] = Σ_k Σ_c X[c·S + t+k, t mod F]·d[c·S + t+k]``: slot ``t`` holds
feature ``t mod F`` over the ``F`` row offsets ``t..t+F-1`` of every chunk, and
the ``L`` slots of a feature together cover every row exactly once. Then
**rotate-and-sum** with steps ``F, 2F, …, S/2`` (``log2 L`` rotations) leaves in
*every* slot ``t`` the full total of feature ``t mod F``. All rotation steps are
powers of two (one key switch each with the default Galois keys): ``F − 1 +
log2 L`` per group, about one per feature, independent of n, against ``12·C``
per feature for ``dot``.

What reaches the feature holder (design choice)
-----------------------------------------------
Exactly one value per feature per epoch. Two ways were considered:

* **the feature holder reduces** (taken): the rotate-and-sum above, one mask per
  feature shared by its ``L`` copies; the key holder averages the copies.
* **the key holder reduces**: keep per-slot partial sums (one mask per slot) and
  let the key holder add each feature's slots. No extra rotations, but the key
  holder then decrypts ``S`` masked *partial* sums per group instead of copies
  of ``m`` masked totals.

Both give the feature holder the same ``m`` numbers and the same worst-case
bound below; the first is the safer one for the feature holder — what the key
holder decrypts is a function of the totals alone (its actual statistical
distance ``Σ_f |Δtotal_f| / 2M`` is never above the second's ``Σ_slots |Δpartial|
/ 2M``) — and costs ``log2 L`` rotations per product ciphertext (≈ 34 per worker
for 100,000 × 300, ≈ 40 ms). The second is still needed where no rotation is
possible: without Galois keys each feature is its own ciphertext (``F = 1``,
``reduce=False``), its slots hold partial sums, and the key holder sums them
(:func:`reduce_product`, ``reduced=False``) before anything leaves.

The key holder never returns a slot: it returns, per feature, the mean (reduced)
or the sum (not reduced) of all ``L`` slots ``f + F·i`` — which under this
geometry depends only on the total (a product falsely declared reduced yields
total / L, still no partial sum). The count is not the feature holder's to
choose: the key holder fixes ``m`` at setup and refuses a product whose declared
groups are not powers of two with ``F·L = S`` or add up to more (or other) than
``m`` (:func:`check_group_sizes`; :meth:`~fedrisk.models.vertical_lr.LabelHolderLR.decrypt_gradient`).
An *actively malicious* feature holder can still put any linear function of
``d`` in place of a feature's total (e.g. a column that is a row indicator
yields that row's residual) — inherent to revealing ``X_kᵀd`` at all: ``m``
linear functionals of ``d`` per epoch, no more.

Levels and scales (why the product never needs a rescale)
---------------------------------------------------------
With ``ckks.VERTICAL_LR`` (N = 8192, primes 60|40|40|60) the label holder
encrypts ``d`` at the 2-prime level (100-bit modulus) and at scale 2^30
(:data:`RESIDUAL_SCALE_BITS`), ``X`` is encoded at ``Δ_x = 2^20``: products carry
scale 2^50 and fit the 100-bit modulus with 2^49 of value headroom — room for
2^46 masks. No rescale, cheap 2-prime multiplications and rotations, 235 kB per
``d`` ciphertext. Encoding X at 2^20 adds ≈ 3e-5 per entry (random sign), i.e.
≈ 3e-5·max|X|·sqrt(n) on each total; masked values near 2^46 are encoded and
decoded in double precision to ≈ 2^-6 (measured worst 0.03 per total). The
kernel refuses a residual at any other scale (the masks are sized for it).

Masking (what the key holder sees) — the bound per run
------------------------------------------------------
The key holder decrypts ``Out + r + η``:

* ``r`` is complex, real and imaginary parts uniform in ``[-M, M]`` (``os.urandom``),
  ``M = 2^46`` (:data:`MAX_MASK_BITS`; data-independent). In a reduced product
  one ``r_f`` per feature, the same in its ``L`` copies; without Galois keys one
  per slot and ``M = 2^34`` (2^12 narrower, :data:`SLOT_MASK_SHIFT`, because the
  key holder adds 4096 of them). Because ``|d_i| ≤ 1`` a value's real part is
  bounded by ``B = Σ |X|`` over the rows behind it; the evaluation noise common
  to the copies (≈ 2^-19·sqrt(n) in both parts, from the fresh noise of
  ``[[d]]`` at scale 2^30) is below 2^-16·B and sits under the same masks.
* ``η`` is complex Gaussian, std 2^8 per component, fresh per slot
  (:data:`FLOOD_STD`): it floods what differs between the copies of a feature
  (key-switching noise, measured ≈ 2^-29). The feature holder subtracts
  ``Re(r + η)`` exactly, so ``η`` costs no accuracy.

Statistical distance of everything the key holder decrypts from one feature
holder **in a run** of E epochs, against any other ``X_k`` (masks are fresh
each epoch, so the bounds add up over every value decrypted)::

    SD ≤ E · (1 + 2^-16) · Σ_values B / M   +   sqrt(2·E·G·S) · 2^-28 / 2^8
         (uniform masks, real and imaginary)     (Gaussian flooding of per-copy noise)

with ``Σ_values B = Σ_f Σ_rows |X_f|`` (the same sum whether the values are totals
or partial sums). :attr:`EncryptedMatVec.mask_bits_` is the bound for one value,
:attr:`~EncryptedMatVec.epoch_mask_bits_` for one epoch,
:meth:`~EncryptedMatVec.run_mask_bits` for a run (first term; the second is
≈ 2^-25 even for 30 epochs of 100,000 × 300). Measured: the 100,000 × 300
benchmark (72,000 training rows, standardised): 2^-30 per value, 2^-21 per
epoch, 2^-20 for its 3 epochs, 2^-17 for 30; the default-credit test (19,440 ×
10): 2^-31, 2^-28, 2^-24 for its 22 epochs. The kernel refuses to run below
:data:`MIN_MASK_BITS` per value. The key holder adds its own Gaussian noise to
each value it returns (hides its exact decryption noise from the feature holder
that chose the ciphertext, Li–Micciancio 2021); see
:meth:`~fedrisk.models.vertical_lr.LabelHolderLR.decrypt_gradient`.

Cost model (measured on this 2-core machine, N = 8192, min of repeats)
----------------------------------------------------------------------
Per-operation costs in ms (``benchmarks/vertical_lr.py --ops``; ``L3`` = 3 data
primes, fresh; ``L2`` = 2 primes, where ``d`` and the products live; ``L1`` = 1
prime, where partial scores travel)::

                                          L3        L2        L1
    encode 4096 doubles (CKKSEncoder)     0.56      0.45      0.34
    plain multiply, pre-encoded           0.127     0.089      -
    ciphertext add                        0.032     0.022      -
    rotation (one key switch)             1.88      1.20       -
    rescale L3 -> L2                      0.47       -         -
    encrypt 4096 values (public key)      4.9       3.5       2.7
    serialise + load (SEAL, zstd)         1.8       0.84      0.32
    serialised ciphertext                 331 kB    235 kB    131 kB
    decrypt + decode (TenSEAL)            1.6 per ciphertext
    masked value returned                 8 bytes per feature (float64)

Per epoch for n rows, m features, ``C = ceil(n/S)`` chunks and G product
ciphertexts (the popcount of each worker's feature block), plaintexts cached::

    feature holder  C·m·(mult + add) + (m − G)·rot + Σ_g log2(S/F_g)·(rot + add)
                    + G·(encode + add)                                         all at L2
    key holder      G·decrypt + numpy (one mean per feature)
    bytes           C·235 kB ([[d]]) + G·235 kB (products) + m·8 B (returned)
    rotations       m − G + Σ_g log2 L_g     (one dot per feature and chunk: 12·C·m)

100,000 × 300 on two workers (blocks 150 = 128+16+4+2 each, C = 25):
per worker 3,750·0.111 ms + (146 + 34)·1.2 ms ≈ 0.63 s (measured 0.64 s of
CPU, of which the rotate-and-sum 0.04 s); 5.9 MB of ``d``, 1.9 MB of products,
2.4 kB returned (was 262 kB of per-slot values). End to end
(``benchmarks/vertical_lr.py``, 100,000 × (30 + 300), partial scores, residual,
product, masks, decryption, every payload serialised): 0.92 s per epoch and
11.36 MB (before the rotate-and-sum: 0.85 s and 11.62 MB; min of 3 quiet runs
each on the same machine), against the 30 s goal and FATE's published 136 s.

Alternatives measured or costed and not taken:

* one TenSEAL ``dot`` per feature and chunk (the starting point): 19.3 ms each,
  ≈ 145 s per epoch for 100,000 × 300; on 8,192 × 8 it takes 309 ms where
  this kernel takes 25 ms (12 ms without the rotate-and-sum: 16 rotations
  instead of 7 — small groups pay most for it).
* TenSEAL ``CKKSVector.matmul`` (Halevi–Shoup diagonals over the rows of a
  chunk): one encode and one arbitrary-step rotation per *row*; 1.1 s for
  256 rows × 8, so ≈ 18 s per 4096-row chunk, ≈ 7 min per epoch.
* the key holder summing per-slot partial sums (above): no extra rotations,
  but it decrypts masked partial sums.
* zeroing all but one copy per feature (a 0/1 plaintext multiply): needs a
  further level (scale 2^50·Δ_sel) that the 100-bit modulus does not have.
* the residual at scale 2^40 (as before): masks could only be 2^36 wide, 10
  bits less hiding per value for no accuracy the optimiser needs.
* baby-step/giant-step over the diagonals: saves ≈ 40 % of the rotation time of
  a 256-feature group, but rotations are < 30 % of the kernel.
* encoding on the fly: +0.45 ms per multiplication (5× the multiplication).
  Plaintexts are cached up to ``cache_bytes`` (131 kB each at L2: 1.0 GB for
  100,000 × 300, split between the workers).

Notes
-----
TenSEAL's Python API has no rotation, no pre-encoded plaintext and no manual
rescale, so the kernel drives SEAL through ``tenseal.sealapi``. Keys and
ciphertexts cross between the two bindings as SEAL's own serialisation through
an anonymous in-memory file (``memfd``); only public material (parameters,
public key, Galois keys) is ever bridged — secret-key operations stay inside
TenSEAL. Ciphertext payloads carry the context fingerprint
(:func:`context_fingerprint`) and are refused under any other context: SEAL
itself would accept them (same parameters) and decrypt to garbage.
"""

from __future__ import annotations

import math
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.crypto.frames import pack_frame, unpack_frame
from fedrisk.crypto.seal_runtime import HEContext, SealRuntime, context_fingerprint, tenseal_of
from fedrisk.crypto.secure_random import secure_normal, secure_uniform
from fedrisk.crypto.worker_pool import WorkerPool, serve_frames
from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError

__all__ = [
    "MIN_MASK_BITS",
    "CKKSRuntime",
    "EncryptedMatVec",
    "EncryptedVector",
    "MaskState",
    "PackingLayout",
    "context_fingerprint",
    "decrypt_ciphertexts",
    "check_fingerprint",
    "check_group_sizes",
    "reduce_product",
    "residual_level",
    "residual_scale",
    "product_scale",
    "run_mask_bits",
    "score_level",
]

MIN_MASK_BITS = 16
"""Refuse to reveal a masked value whose statistical distance bound exceeds 2^-16."""

X_SCALE_BITS = 20
"""Scale of the feature plaintexts."""
RESIDUAL_SCALE_BITS = 30
"""Scale of the encrypted residual ``d``; products then carry 2^(30+20) = 2^50."""
VALUE_BITS = 48
"""Value headroom (bits) a masked product needs above its scale."""
MAX_MASK_BITS = 46
"""Widest mask: a double holds a 2^46 value to 2^-6, the decoder's resolution there."""
SLOT_MASK_SHIFT = 12
"""Unreduced products (no Galois keys) get masks 2^12 narrower: the key holder sums L ≤ 2^12 of them."""
SCORE_BITS = 18
"""Partial scores must stay below 2^17 in magnitude (they are linear predictors)."""
FLOOD_STD = 2.0**8
"""Std (per real component) of the Gaussian that floods each slot's own evaluation noise in a masked product."""


# --------------------------------------------------------------------------- fingerprint


def check_fingerprint(expected: str, got: str, what: str) -> None:
    """Raise :class:`ContextMismatchError` unless two context fingerprints match (one line)."""
    if expected != got:
        raise ContextMismatchError(f"{what} was made under context {got}, not {expected}; refusing it")


# --------------------------------------------------------------------------- SEAL bridge


class CKKSRuntime(SealRuntime):
    """SEAL objects (``tenseal.sealapi``) mirroring the public part of a CKKS TenSEAL context.

    Holds the parameters, evaluator, encoder, public key and (lazily) the Galois
    keys; never the secret key. Use :meth:`for_context` to share one per context.

    Parameters
    ----------
    context : CKKSContext or tenseal.Context
        A CKKS context, public or secret; only public material is read.
    """

    scheme = sa.SCHEME_TYPE.CKKS
    scheme_name = "CKKS"
    galois_purpose = "packed X^T[[d]] needs rotations"

    def __init__(self, context: HEContext) -> None:
        context = tenseal_of(context)
        super().__init__(context)
        self.encoder = sa.CKKSEncoder(self.seal)
        self.slots = int(self.encoder.slot_count())
        self.global_scale = float(context.global_scale)
        self.level_bits: list[float] = [sum(math.log2(m) for m in primes) for primes in self.moduli]

    def load(self, blob: bytes) -> Any:
        """Load one SEAL-serialised ciphertext (validated against the parameters)."""
        ct = sa.Ciphertext()
        try:
            self._io.load(blob, lambda p: ct.load(self.seal, p))
        except Exception as exc:  # SEAL raises ValueError/RuntimeError/IOError
            raise CryptoError(f"ciphertext does not load under this CKKS context: {exc}") from None
        return ct

    def dump(self, ct: Any) -> bytes:
        """SEAL serialisation of a ciphertext (zstd-compressed by SEAL)."""
        return self._io.save(ct.save)

    def encode(self, values: np.ndarray, level: int, scale: float) -> Any:
        """Encode up to :attr:`slots` real or complex values at ``level`` and ``scale``."""
        pt = sa.Plaintext()
        vals = np.asarray(values)
        self.encoder.encode(vals.tolist(), self.parms_ids[level], float(scale), pt)
        return pt

    def encrypt(self, values: np.ndarray, level: int, scale: float | None = None) -> list[bytes]:
        """Encrypt a real vector with the public key, :attr:`slots` values per ciphertext."""
        if self.public_key is None:
            raise CryptoError("CKKS context has no public key; cannot encrypt")
        vals = np.asarray(values, dtype=np.float64).ravel()
        if not np.all(np.isfinite(vals)):
            raise CryptoError("refusing to encrypt non-finite values")
        scale = self.global_scale if scale is None else scale
        out = []
        for start in range(0, max(len(vals), 1), self.slots):
            ct = sa.Ciphertext()
            self._encryptor.encrypt(self.encode(vals[start : start + self.slots], level, scale), ct)
            out.append(self.dump(ct))
        return out

    def encrypt_complex(self, values: np.ndarray, level: int = 0, scale: float | None = None) -> bytes:
        """Encrypt up to :attr:`slots` complex values in one ciphertext (two reals per slot)."""
        if self.public_key is None:
            raise CryptoError("CKKS context has no public key; cannot encrypt")
        vals = np.asarray(values, dtype=np.complex128).ravel()
        if vals.size > self.slots or not np.all(np.isfinite(vals.view(np.float64))):
            raise CryptoError("refusing to encrypt more complex values than slots, or non-finite ones")
        ct = sa.Ciphertext()
        self._encryptor.encrypt(self.encode(vals, level, self.global_scale if scale is None else scale), ct)
        return self.dump(ct)

    def imaginary_unit_plaintext(self, level: int) -> Any:
        """``X^(N/2)`` at scale 1: multiplies slot j by −i (even j) or +i (odd j), exactly.

        Multiplying a ciphertext by it and decrypting the real parts recovers the
        imaginary parts (sign alternating by slot), with no scale change and no
        added error (a monomial only permutes and negates coefficients).
        """
        cache = self.__dict__.setdefault("_imag_pt", {})
        if level not in cache:
            pattern = np.where(np.arange(self.slots) % 2 == 0, -1j, 1j)
            cache[level] = self.encode(pattern, level, 1.0)
        return cache[level]

    def encrypt_zero(self, level: int, scale: float) -> Any:
        """A fresh encryption of zero at ``level`` and ``scale`` (SEAL object)."""
        if self.public_key is None:
            raise CryptoError("CKKS context has no public key; cannot encrypt")
        ct = sa.Ciphertext()
        self._encryptor.encrypt(self.encode(np.zeros(1), level, scale), ct)
        return ct

    def add_blobs(self, columns: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Element-wise ciphertext sum of several equally long lists of ciphertexts."""
        if not columns:
            raise ProtocolError("nothing to add")
        width = len(columns[0])
        if any(len(col) != width for col in columns):
            raise ProtocolError("ciphertext lists to add have different lengths")
        out = []
        for j in range(width):
            acc = self.load(columns[0][j])
            for col in columns[1:]:
                other = self.load(col[j])
                if other.parms_id() != acc.parms_id() or not math.isclose(other.scale, acc.scale, rel_tol=1e-12):
                    raise CryptoError("ciphertexts to add are at different levels or scales")
                self.evaluator.add_inplace(acc, other)
            out.append(self.dump(acc))
        return out


def residual_scale() -> float:
    """Scale at which the label holder encrypts ``d`` (2^:data:`RESIDUAL_SCALE_BITS`)."""
    return float(2.0**RESIDUAL_SCALE_BITS)


def product_scale(x_scale_bits: int = X_SCALE_BITS) -> float:
    """Scale of a packed product ``X_kᵀ[[d]]`` (what the key holder expects to decrypt)."""
    return float(2.0 ** (RESIDUAL_SCALE_BITS + x_scale_bits))


def residual_level(runtime: CKKSRuntime, x_scale_bits: int = X_SCALE_BITS) -> int:
    """Level at which the label holder encrypts ``d`` for the packed kernel.

    The lowest level (fewest primes, cheapest) whose modulus still holds a product
    of scale 2^(RESIDUAL_SCALE_BITS + x_scale_bits) plus :data:`VALUE_BITS` of masked values.
    """
    need = RESIDUAL_SCALE_BITS + x_scale_bits + VALUE_BITS + 1
    fits = [i for i, bits in enumerate(runtime.level_bits) if bits >= need]
    if not fits:
        raise CryptoError(f"CKKS modulus too small for packed X^T[[d]]: needs {need:.0f} bits, has {runtime.level_bits[0]:.0f}")
    return max(fits)


def score_level(runtime: CKKSRuntime) -> int:
    """Lowest level that holds partial scores below 2^(SCORE_BITS-1) at scale Δ."""
    need = math.log2(runtime.global_scale) + SCORE_BITS + 1
    fits = [i for i, bits in enumerate(runtime.level_bits) if bits >= need - 1e-6]
    if not fits:
        raise CryptoError("CKKS modulus too small to carry partial scores")
    return max(fits)


# --------------------------------------------------------------------------- decryption (key holder)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tenseal_vector_bytes(blobs: Sequence[bytes], slots: int, scale: float) -> bytes:
    """Wrap SEAL ciphertexts as a TenSEAL ``CKKSVectorProto`` (sizes, ciphertexts, scale)."""
    packed = b"".join(_varint(slots) for _ in blobs)
    out = [b"\x0a", _varint(len(packed)), packed]
    for blob in blobs:
        out += [b"\x12", _varint(len(blob)), blob]
    out.append(b"\x19" + struct.pack("<d", scale))
    return b"".join(out)


def decrypt_ciphertexts(
    context: HEContext,
    blobs: Sequence[bytes],
    n_values: int | None = None,
    *,
    flood_std: float = 0.0,
) -> np.ndarray:
    """Decrypt SEAL ciphertexts with the key holder's TenSEAL context (real parts).

    The secret key never leaves TenSEAL: the ciphertexts are wrapped as a TenSEAL
    vector and decrypted there.

    Parameters
    ----------
    context : KeyHolderContext (or its tenseal.Context)
        Must hold the secret key.
    blobs : sequence of bytes
        SEAL-serialised ciphertexts, :attr:`CKKSRuntime.slots` values each.
    n_values : int, optional
        Keep only the first ``n_values`` slots overall.
    flood_std : float
        Standard deviation of Gaussian noise added to every decrypted value before
        it leaves the key holder (hides the exact decryption noise from whoever
        chose the ciphertext).

    Raises
    ------
    CryptoError
        The context holds no secret key, or a ciphertext does not decrypt under it.
    """
    context = tenseal_of(context)
    if not context.is_private():
        raise CryptoError("this CKKS context holds no secret key; it cannot decrypt")
    slots = context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2
    if not blobs:
        return np.zeros(0)
    try:
        vec = ts.ckks_vector_from(context, tenseal_vector_bytes(blobs, slots, float(context.global_scale)))
        values = np.asarray(vec.decrypt(), dtype=np.float64)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CryptoError(f"ciphertext does not decrypt under this CKKS context: {exc}") from None
    if n_values is not None:
        values = values[:n_values]
    if flood_std > 0:
        values = values + secure_normal(0.0, flood_std, values.size)
    return values


# --------------------------------------------------------------------------- generic payload


@dataclass(frozen=True)
class EncryptedVector:
    """A real vector encrypted under CKKS, packed ``slots`` values per ciphertext.

    Attributes
    ----------
    fingerprint : str
        Fingerprint of the context the ciphertexts were made under.
    n_values : int
        Number of meaningful values (the last ciphertext may be partly empty).
    ciphertexts : tuple of bytes
        SEAL-serialised ciphertexts.
    """

    content_class: ClassVar[str] = "ciphertext"
    KIND: ClassVar[bytes] = b"EVEC"

    fingerprint: str
    n_values: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)

    @classmethod
    def encrypt(cls, context: HEContext, values: np.ndarray, *, level: int | None = None, scale: float | None = None) -> EncryptedVector:
        """Encrypt ``values`` with the context's public key (at ``level``, default the top; ``scale``, default Δ)."""
        runtime = CKKSRuntime.for_context(context)
        vals = np.asarray(values, dtype=np.float64).ravel()
        blobs = runtime.encrypt(vals, 0 if level is None else level, scale)
        return cls(runtime.fingerprint, len(vals), tuple(blobs))

    def check(self, context: HEContext) -> None:
        """Raise :class:`ContextMismatchError` unless made under ``context``."""
        check_fingerprint(context_fingerprint(context), self.fingerprint, type(self).__name__)

    def decrypt(self, context: HEContext) -> np.ndarray:
        """Decrypt with the key holder's context (checks the fingerprint first)."""
        self.check(context)
        return decrypt_ciphertexts(context, self.ciphertexts, self.n_values)

    def to_bytes(self) -> bytes:
        return pack_frame(self.KIND, self.fingerprint, {"n": self.n_values}, self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, context: HEContext | None = None) -> EncryptedVector:
        """Parse; if ``context`` is given, refuse a payload made under another context."""
        _, fp, header, blobs = unpack_frame(data, cls.KIND)
        obj = cls(fp, _as_int(header, "n"), tuple(blobs))
        if context is not None:
            obj.check(context)
        return obj

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.ciphertexts)


def _as_int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"payload header field {key!r} must be a non-negative integer")
    return value


# --------------------------------------------------------------------------- packing layout


@dataclass(frozen=True)
class PackingLayout:
    """How m features are split into power-of-two groups, one output ciphertext per group.

    Features are split into ``n_blocks`` contiguous blocks (one per worker
    process); each block is decomposed into power-of-two groups of at most
    ``max_pack`` features, ``F·L = slots``. The vertical-LR kernel interleaves a
    group: feature ``start + f`` owns slots ``{f + F·i : i < L}``
    (:func:`reduce_product` reads them). :meth:`unpack` reads the *block* layout
    (feature ``f`` in slots ``[f·L, (f+1)·L)``) that the SecureBoost histogram
    kernel packs with the same groups.
    """

    n_features: int
    slots: int
    groups: tuple[tuple[int, int], ...]
    blocks: tuple[tuple[int, int], ...]
    """Per block: (first group index, number of groups)."""

    @classmethod
    def build(cls, n_features: int, slots: int, *, max_pack: int | None = None, n_blocks: int = 1) -> PackingLayout:
        if n_features < 1:
            raise ProtocolError("X^T[[d]] needs at least one feature")
        cap = slots if max_pack is None else max(1, min(int(max_pack), slots))
        cap = 1 << (cap.bit_length() - 1)  # largest power of two <= cap
        n_blocks = max(1, min(int(n_blocks), n_features))
        edges = np.linspace(0, n_features, n_blocks + 1).round().astype(int)
        groups: list[tuple[int, int]] = []
        blocks: list[tuple[int, int]] = []
        for b in range(n_blocks):
            first = len(groups)
            start, stop = int(edges[b]), int(edges[b + 1])
            while start < stop:
                size = min(cap, 1 << ((stop - start).bit_length() - 1))
                groups.append((start, size))
                start += size
            blocks.append((first, len(groups) - first))
        return cls(n_features, slots, tuple(groups), tuple(blocks))

    @property
    def n_ciphertexts(self) -> int:
        return len(self.groups)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """``F`` of each output ciphertext, in order (what a product payload declares)."""
        return tuple(f for _, f in self.groups)

    @property
    def n_rotations(self) -> int:
        """Accumulation rotations per product (upper bound; all-zero diagonals are skipped)."""
        return sum(f - 1 for _, f in self.groups)

    @property
    def n_reduce_rotations(self) -> int:
        """Rotate-and-sum rotations per product: ``log2 L`` per group."""
        return sum((self.slots // f).bit_length() - 1 for _, f in self.groups)


def check_group_sizes(sizes: Sequence[Any], slots: int, who: str = "product") -> tuple[int, ...]:
    """Validate a declared interleaved layout: each ``F`` a power of two with ``F·L = slots``.

    Raises
    ------
    ProtocolError
        A size is not an integer, not a power of two, or does not divide ``slots``.
    """
    out = []
    for f in sizes:
        if not isinstance(f, int) or isinstance(f, bool) or f < 1 or f & (f - 1) or f > slots or slots % f:
            raise ProtocolError(f"{who} declares a group of {f!r} features: groups must be powers of two with F·L = {slots} slots")
        out.append(int(f))
    if not out:
        raise ProtocolError(f"{who} declares no feature groups")
    return tuple(out)


def reduce_product(values: np.ndarray, sizes: Sequence[int], slots: int, *, reduced: bool) -> np.ndarray:
    """One value per feature from the decrypted slots of interleaved product ciphertexts.

    Feature ``f`` of a group of ``F`` owns slots ``f + F·i`` (``i < L``), and
    under the kernel's geometry those ``L`` slots together cover every row
    exactly once. ``reduced``: each already holds the feature's total (the
    feature holder rotated and summed), so their mean is returned; otherwise
    each holds a partial sum and their sum is returned. Either way the result
    depends on the slots only through their sum — the total (or, for a product
    falsely declared reduced, the total / L) — never on one partial sum.

    Returns
    -------
    ndarray (Σ F,)
    """
    vals = np.asarray(values, dtype=np.float64).reshape(len(sizes), slots)
    out = []
    for g, size in enumerate(sizes):
        copies = vals[g].reshape(slots // size, size)  # [i, f] = slot f + F·i
        if reduced:
            # copies are ~2^46 masks plus flooding: average the differences, not the values
            base = copies[0]
            out.append(base + (copies - base).mean(axis=0))
        else:
            out.append(np.ascontiguousarray(copies.T).sum(axis=1))  # pairwise summation along each feature
    return np.concatenate(out)


# --------------------------------------------------------------------------- kernel (one process)


class _PackedKernel:
    """The interleaved rotate-and-accumulate product for a contiguous block of features.

    ``reduce``: finish each group with ``log2 L`` rotate-and-add steps so that
    every slot holds its feature's total (needs Galois keys).
    """

    def __init__(
        self,
        runtime: CKKSRuntime,
        X: np.ndarray,
        groups: Sequence[tuple[int, int]],
        *,
        level: int,
        x_scale: float,
        cache_plaintexts: bool,
        reduce: bool = True,
        d_scale: float | None = None,
    ) -> None:
        self.rt = runtime
        self.d_scale = residual_scale() if d_scale is None else float(d_scale)
        self.slots = runtime.slots
        self.level = level
        self.x_scale = x_scale
        self.n_rows = X.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // self.slots))
        padded = np.zeros((self.n_chunks * self.slots, X.shape[1]))
        padded[: self.n_rows] = X
        self.X = padded
        self.groups = [(int(s), int(f)) for s, f in groups]
        self.reduce = bool(reduce)
        self._rows = np.arange(self.slots)
        self.cache: dict[tuple[int, int, int], Any] | None = None
        if cache_plaintexts:
            self.cache = {}
            for g in range(len(self.groups)):
                for k in range(self.groups[g][1]):
                    for c in range(self.n_chunks):
                        self.cache[(g, k, c)] = self._encode(g, k, c)
        if self.reduce or any(f > 1 for _, f in self.groups):
            _ = runtime.galois_keys  # load once, up front

    def _diagonal(self, g: int, k: int, c: int) -> np.ndarray:
        start, size = self.groups[g]
        cols = start + ((self._rows - k) % size)  # slot t -> feature (t mod F − k) mod F
        return self.X[c * self.slots + self._rows, cols]

    def _encode(self, g: int, k: int, c: int) -> Any:
        diag = self._diagonal(g, k, c)
        if not diag.any():
            return None  # SEAL refuses products with an all-zero plaintext; skip them
        return self.rt.encode(diag, self.level, self.x_scale)

    def plaintext(self, g: int, k: int, c: int) -> Any:
        if self.cache is not None:
            return self.cache[(g, k, c)]
        return self._encode(g, k, c)

    def run(self, d: Sequence[Any]) -> list[Any]:
        """One output ciphertext per group, scale Δ_d·Δ_x, at :attr:`level`."""
        if len(d) != self.n_chunks:
            raise ProtocolError(f"residual has {len(d)} ciphertexts, expected {self.n_chunks}")
        ev = self.rt.evaluator
        pid = self.rt.parms_ids[self.level]
        for ct in d:
            if not math.isclose(ct.scale, self.d_scale, rel_tol=1e-9):
                raise ProtocolError(f"encrypted residual must be at scale 2^{math.log2(self.d_scale):.0f} (the masks are sized for it)")
            if ct.parms_id() != pid:
                lvl = self.rt.level_of(ct)
                if lvl > self.level:
                    raise CryptoError("residual ciphertexts are below the level the kernel needs")
                ev.mod_switch_to_inplace(ct, pid)
        out_scale = d[0].scale * self.x_scale
        tmp = sa.Ciphertext()
        results = []
        for g, (_, size) in enumerate(self.groups):
            acc = None
            for k in range(size - 1, -1, -1):
                if acc is not None:
                    ev.rotate_vector_inplace(acc, 1, self.rt.galois_keys)
                y = None
                for c in range(self.n_chunks):
                    pt = self.plaintext(g, k, c)
                    if pt is None:
                        continue
                    if y is None:
                        y = sa.Ciphertext()
                        ev.multiply_plain(d[c], pt, y)
                    else:
                        ev.multiply_plain(d[c], pt, tmp)
                        ev.add_inplace(y, tmp)
                if y is not None:
                    if acc is None:
                        acc = y
                    else:
                        ev.add_inplace(acc, y)
            if acc is None:
                acc = self.rt.encrypt_zero(self.level, out_scale)
            elif self.reduce:
                step = size
                while step < self.slots:  # slot t += slot t + step: totals of feature t mod F everywhere
                    ev.rotate_vector(acc, step, self.rt.galois_keys, tmp)
                    ev.add_inplace(acc, tmp)
                    step *= 2
            results.append(acc)
        return results


def _value_bounds(X: np.ndarray, groups: Sequence[tuple[int, int]], slots: int, *, reduced: bool) -> list[np.ndarray]:
    """Per group, a bound ``B = Σ |X|`` on each value the key holder decrypts (``|d| ≤ 1``).

    Reduced: one bound per feature (its total over all rows; the copies of a
    feature share one mask). Not reduced: one per slot ``f + F·i``, whose partial
    sum covers rows ``c·S + ((t + k) mod S)``, ``k < F``.
    """
    n_chunks = max(1, -(-X.shape[0] // slots))
    absx = np.zeros((n_chunks * slots, X.shape[1]))
    absx[: X.shape[0]] = np.abs(X)
    out = []
    for start, size in groups:
        cols = absx[:, start : start + size]
        if reduced:
            out.append(cols.sum(axis=0))
            continue
        per_offset = cols.reshape(n_chunks, slots, size).sum(axis=0)  # [u, f]: Σ_c |X[c·S + u, f]|
        t = np.arange(slots)
        f = t % size
        window = np.zeros(slots)
        for k in range(size):  # F ≤ slots; a loop of F vector adds
            window += per_offset[(t + k) % slots, f]
        out.append(window)
    return out


# --------------------------------------------------------------------------- worker processes


def _worker_serve(inp: Any, out: Any) -> None:  # pragma: no cover - runs in a child process
    """Serve INIT/MATV frames (:func:`~fedrisk.crypto.worker_pool.serve_frames`: pipes, never pickled)."""
    context: ts.Context | None = None  # held here: the runtime keeps only a weak reference to it
    kernel: _PackedKernel | None = None
    runtime: CKKSRuntime | None = None

    def handle(kind: bytes, header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, list[bytes]]:
        nonlocal context, kernel, runtime
        if kind == b"INIT":
            context = ts.context_from(blobs[0])
            runtime = CKKSRuntime(context)
            shape = (int(header["rows"]), int(header["cols"]))
            X = np.frombuffer(blobs[1], dtype="<f8").reshape(shape)
            kernel = _PackedKernel(
                runtime,
                X,
                [(int(a), int(b)) for a, b in header["groups"]],
                level=int(header["level"]),
                x_scale=float(header["x_scale"]),
                cache_plaintexts=bool(header["cache"]),
                reduce=bool(header["reduce"]),
            )
            return b"OKAY", []
        if kind == b"MATV":
            if kernel is None or runtime is None:
                raise ProtocolError("worker got MATV before INIT")
            return b"RSLT", [runtime.dump(c) for c in kernel.run([runtime.load(b) for b in blobs])]
        raise ProtocolError(f"unknown worker command {kind!r}")

    serve_frames(inp, out, handle)


_WORKER_BOOT = (
    "import os, sys; from fedrisk.crypto.encrypted_matvec import _worker_serve; "
    "_worker_serve(os.fdopen(int(sys.argv[1]), 'rb'), os.fdopen(int(sys.argv[2]), 'wb'))"
)


class _MatVecWorkers(WorkerPool):
    """The feature holder's matvec workers, one per feature block, booting this module's loop."""

    boot = _WORKER_BOOT
    what = "matvec worker"


# --------------------------------------------------------------------------- public kernel


def run_mask_bits(mask_bound: float, bound_sum: float, epochs: int) -> int:
    """``floor(log2(M / (epochs · Σ B)))``: hiding of everything decrypted over ``epochs`` products (52 if nothing to hide)."""
    total = float(bound_sum) * max(1, int(epochs))
    return 52 if total == 0 else int(math.floor(math.log2(mask_bound / total)))


@dataclass
class MaskState:
    """Feature-holder-private record of the masks added to one product (never sent)."""

    epoch: int
    offsets: np.ndarray
    """Real part of ``r + η`` per slot, (n_ciphertexts·slots,)."""


class EncryptedMatVec:
    """Feature-holder side of ``X_kᵀ[[d]]``: pre-encodes ``X_k`` once, reuses it every epoch.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        The feature holder's rows, in the order of the encrypted vector ``d``.
    context : PublicContext (or its tenseal.Context)
        The key holder's *public* context (Galois keys needed unless ``max_pack=1``).
    max_pack : int, optional
        Most features per output ciphertext (power of two, default: all slots; 1 if
        the context has no Galois keys — then no rotations at all).
    n_jobs : int
        Worker processes (feature blocks are split between them). 1 runs in-process.
    cache_plaintexts : bool or "auto"
        Pre-encode every diagonal plaintext ("auto": if they fit ``cache_bytes``).
    cache_bytes : int
        Memory budget for cached plaintexts across all workers.
    x_scale_bits : int
        ``X`` is encoded at scale 2^x_scale_bits.
    min_mask_bits : int
        Refuse to build if the masks would hide a revealed value by fewer bits than this.
    reduce : bool, optional
        Rotate and sum inside each product so that every slot holds its feature's
        total (default: whenever the context has Galois keys). Without it the key
        holder sums the slots of each feature itself (the no-Galois-keys fallback).

    Attributes
    ----------
    layout_ : PackingLayout
    reduced_ : bool
        Whether products are reduced (every slot a total) or carry partial sums.
    mask_bits_ : int
        Guaranteed hiding of each decrypted value: statistical distance ≤ 2^-mask_bits_.
    epoch_mask_bits_ : int
        The same for *all* values the key holder decrypts from one product
        (one epoch): distance ≤ Σ B / M ≤ 2^-epoch_mask_bits_.
    bound_sum_ : float
        ``Σ B`` over the values of one product (``B = Σ |X|`` over the rows behind a value).
    mask_bound_ : float
        ``M``: masks are uniform in ``[-M, M]``.
    level_ : int
        Level of ``d`` and of the products.
    """

    def __init__(
        self,
        X: np.ndarray,
        context: HEContext,
        *,
        max_pack: int | None = None,
        n_jobs: int = 1,
        cache_plaintexts: bool | str = "auto",
        cache_bytes: int = 2 << 30,
        x_scale_bits: int = X_SCALE_BITS,
        min_mask_bits: int = MIN_MASK_BITS,
        flood_std: float = FLOOD_STD,
        reduce: bool | None = None,
    ) -> None:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ProtocolError(f"X must be a non-empty 2-D array, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ProtocolError("X contains non-finite values")
        self.context = context
        self.runtime = CKKSRuntime.for_context(context)
        self.fingerprint = self.runtime.fingerprint
        self.n_rows, self.n_features = X.shape
        slots = self.runtime.slots
        if reduce is None:
            reduce = self.runtime.has_galois_keys
        if reduce and not self.runtime.has_galois_keys:
            raise CryptoError("reducing products inside the ciphertext needs Galois keys")
        self.reduced_ = bool(reduce)
        if max_pack is None and not self.runtime.has_galois_keys:
            max_pack = 1
        self.layout_ = PackingLayout.build(self.n_features, slots, max_pack=max_pack, n_blocks=max(1, n_jobs))
        self.level_ = residual_level(self.runtime, x_scale_bits)
        self.x_scale = float(2**x_scale_bits)
        self.flood_std = float(flood_std)
        self.n_chunks = max(1, -(-self.n_rows // slots))
        # Mask half-width: the largest power of two whose masked values fit the modulus
        # (2 bits of margin); narrower for unreduced products, whose slots get summed.
        self.product_scale_ = product_scale(x_scale_bits)
        mask_bits = math.floor(self.runtime.level_bits[self.level_] - 1 - math.log2(self.product_scale_) - 2)
        mask_bits = min(mask_bits, MAX_MASK_BITS)
        self.mask_bound_ = float(2.0 ** (mask_bits - (0 if self.reduced_ else SLOT_MASK_SHIFT)))
        n_plain = self.n_chunks * self.n_features
        plain_bytes = n_plain * self.runtime.slots * 2 * len(self._primes_at(self.level_)) * 8
        self.cache_plaintexts_ = bool(plain_bytes <= cache_bytes) if cache_plaintexts == "auto" else bool(cache_plaintexts)
        self._pool: _MatVecWorkers | None = None
        self._kernels: list[_PackedKernel] = []
        n_workers = len(self.layout_.blocks)
        if n_workers <= 1:
            self._kernels = [self._local_kernel(X, 0)]
        else:
            self._pool = _MatVecWorkers(n_workers)
            weakref.finalize(self, WorkerPool.close, self._pool)
            ctx_bytes = tenseal_of(context).serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)
            frames = []
            for b in range(n_workers):
                cols, groups = self._block(b)
                block = np.ascontiguousarray(X[:, cols[0] : cols[1]])
                header = {
                    "rows": self.n_rows,
                    "cols": block.shape[1],
                    "groups": groups,
                    "level": self.level_,
                    "x_scale": self.x_scale,
                    "cache": self.cache_plaintexts_,
                    "reduce": self.reduced_,
                }
                frames.append(pack_frame(b"INIT", self.fingerprint, header, [ctx_bytes, block.astype("<f8").tobytes()]))
            try:
                self._pool.scatter(frames)
            except BaseException:
                self.close()
                raise
        self._bounds = self._value_bounds(X)
        worst = max(float(b.max()) for b in self._bounds)
        total = float(sum(b.sum() for b in self._bounds))
        self.bound_sum_ = total
        self.mask_bits_ = 52 if worst == 0 else int(math.floor(math.log2(self.mask_bound_ / worst)))
        self.epoch_mask_bits_ = 52 if total == 0 else int(math.floor(math.log2(self.mask_bound_ / total)))
        if self.mask_bits_ < min_mask_bits:
            self.close()
            raise CryptoError(f"masks would hide X^T d by only {self.mask_bits_} bits (< {min_mask_bits}); standardise features or use fewer rows per product")

    # -- helpers
    def _primes_at(self, level: int) -> list[Any]:
        data = self.runtime.seal.first_context_data()
        for _ in range(level):
            data = data.next_context_data()
        return list(data.parms().coeff_modulus())

    def _block(self, b: int) -> tuple[tuple[int, int], list[list[int]]]:
        first, count = self.layout_.blocks[b]
        groups = self.layout_.groups[first : first + count]
        lo = groups[0][0]
        hi = groups[-1][0] + groups[-1][1]
        return (lo, hi), [[s - lo, f] for s, f in groups]

    def _local_kernel(self, X: np.ndarray, b: int) -> _PackedKernel:
        cols, groups = self._block(b)
        return _PackedKernel(
            self.runtime,
            X[:, cols[0] : cols[1]],
            [(s, f) for s, f in groups],
            level=self.level_,
            x_scale=self.x_scale,
            cache_plaintexts=self.cache_plaintexts_,
            reduce=self.reduced_,
        )

    def _value_bounds(self, X: np.ndarray) -> list[np.ndarray]:
        bounds: list[np.ndarray] = []
        for b in range(len(self.layout_.blocks)):
            cols, groups = self._block(b)
            sub = X[:, cols[0] : cols[1]]
            bounds.extend(_value_bounds(sub, [(s, f) for s, f in groups], self.runtime.slots, reduced=self.reduced_))
        return bounds

    def run_mask_bits(self, epochs: int) -> int:
        """Guaranteed hiding of everything the key holder decrypts from ``epochs`` products.

        The statistical distance adds up over independent masked values: it is at
        most ``epochs · Σ B / M`` for the whole run.
        """
        return run_mask_bits(self.mask_bound_, self.bound_sum_, epochs)

    # -- the product
    def compute(self, d: EncryptedVector) -> list[Any]:
        """Unmasked product ``X_kᵀ[[d]]`` as SEAL ciphertexts, one per group (feature-holder local).

        Raises
        ------
        ContextMismatchError
            ``d`` was encrypted under another context.
        """
        check_fingerprint(self.fingerprint, d.fingerprint, "encrypted residual")
        if d.n_values != self.n_rows:
            raise ProtocolError(f"encrypted residual has {d.n_values} values, X has {self.n_rows} rows")
        if self._pool is None:
            return self._kernels[0].run([self.runtime.load(b) for b in d.ciphertexts])
        frame = pack_frame(b"MATV", self.fingerprint, {}, d.ciphertexts)
        parts = self._pool.scatter([frame] * len(self.layout_.blocks))
        return [self.runtime.load(b) for part in parts for b in part]

    def mask(self, products: Sequence[Any], rng: np.random.Generator | None = None, epoch: int = 0) -> tuple[list[bytes], MaskState]:
        """Add ``r + η`` to each product; return serialised ciphertexts and the private mask record.

        ``r`` is complex, real and imaginary parts uniform in ``[-M, M]``: in a
        reduced product one ``r_f`` per feature, the same in all ``L`` slots of
        that feature (so the key holder's average of the copies is still masked
        by one uniform value, and so is the noise common to the copies); otherwise
        one per slot. ``η`` is complex Gaussian, fresh per slot (floods what differs
        between copies). Masks come from the operating system's CSPRNG unless
        ``rng`` is given (tests).
        """
        slots = self.runtime.slots
        ev = self.runtime.evaluator
        uniform = secure_uniform if rng is None else rng.uniform
        normal = secure_normal if rng is None else rng.normal
        if len(products) != self.layout_.n_ciphertexts:
            raise ProtocolError(f"{len(products)} product ciphertexts, the layout has {self.layout_.n_ciphertexts}")
        M = self.mask_bound_
        offsets = np.empty(len(products) * slots)
        blobs = []
        for g, ct in enumerate(products):
            size = self.layout_.groups[g][1]
            width = size if self.reduced_ else slots
            r = uniform(-M, M, width) + 1j * uniform(-M, M, width)
            if self.reduced_:
                r = np.tile(r, slots // size)  # slot t gets r[t mod F]
            masked = r + (normal(0.0, self.flood_std, slots) + 1j * normal(0.0, self.flood_std, slots))
            ev.add_plain_inplace(ct, self.runtime.encode(masked, self.runtime.level_of(ct), ct.scale))
            offsets[g * slots : (g + 1) * slots] = masked.real
            blobs.append(self.runtime.dump(ct))
        return blobs, MaskState(epoch, offsets)

    def reduce(self, slot_values: np.ndarray) -> np.ndarray:
        """One value per feature from per-slot values of this kernel's products (see :func:`reduce_product`)."""
        return reduce_product(slot_values, self.layout_.group_sizes, self.runtime.slots, reduced=self.reduced_)

    def unmask(self, values: np.ndarray, state: MaskState) -> np.ndarray:
        """``X_kᵀ d`` (n_features,) from the key holder's one masked value per feature."""
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape != (self.n_features,):
            raise ProtocolError(f"masked product has {vals.size} values, expected one per feature ({self.n_features})")
        if state.offsets.shape != (self.layout_.n_ciphertexts * self.runtime.slots,):
            raise ProtocolError("mask record does not match this kernel's layout")
        unmasked: np.ndarray = vals - self.reduce(state.offsets)
        return unmasked

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> EncryptedMatVec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
