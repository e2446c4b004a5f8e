"""Packed encrypted transpose-matrix-vector product X_kᵀ[[d]] for vertical models.

A feature holder ``k`` owns a plaintext matrix ``X_k`` (n rows × m features); the
label holder sends the residual ``d`` (n values) encrypted under CKKS. The
feature holder needs ``X_kᵀ d`` (m values) without ever seeing ``d``. This
module computes it on the ciphertext with far fewer rotations than one TenSEAL
``dot`` per feature, then masks it for the key holder to decrypt.

Packing (diagonal / "rotate-and-accumulate" layout)
---------------------------------------------------
``d`` arrives as ``C = ceil(n / S)`` ciphertexts of ``S`` slots (S = N/2 = 4096).
Features are cut into *groups* of ``F`` features, ``F`` a power of two (binary
decomposition of m, e.g. 300 = 256 + 32 + 8 + 4), so that ``F·L = S`` with
``L = S / F`` slots per feature. For group features ``f = 0..F-1`` and
diagonal ``k = 0..F-1`` the feature holder pre-encodes the plaintext::

    P[k, c][t] = X[c·S + t, (t // L - k) mod F]          (t = 0..S-1)

and computes ``Y_k = Σ_c P[k, c] ⊙ [[d_c]]`` (plain multiplications and
ciphertext additions only), then Horner-accumulates
``Out = Y_0 + rot_L(Y_1 + rot_L(Y_2 + ...))``. Slot ``f·L + i`` of ``Out`` is the
partial sum of feature ``f`` over rows ``{c·S + g·L + i}``; the feature holder
adds ``L`` slots per feature after unmasking. Every rotation is by the same
power-of-two step ``L`` (one key switch with the default Galois keys), and
there are ``F - 1`` of them per group: about **one rotation per feature**,
independent of n, against ``12·C`` per feature for ``dot``.

Levels and scales (why the product never needs a rescale)
---------------------------------------------------------
With ``CKKSParams.COMPUTE`` (N = 8192, primes 60|40|40|60, Δ = 2^40) the label
holder encrypts ``d`` directly at the 2-prime level (100-bit modulus). ``X`` is
encoded at ``Δ_x = 2^20``, so products carry scale 2^60 and fit the 100-bit
modulus with 2^39 of value headroom — no rescale, cheaper 2-prime
multiplications and rotations, and 235 kB instead of 331 kB per ``d``
ciphertext. The level is chosen from the context (:func:`residual_level`) so
other parameter sets work. Encoding X at 2^20 adds an absolute error of about
3e-5 per entry (random sign), i.e. ≈ 3e-5·max|X|·sqrt(n) on each gradient sum.

Masking (what the key holder sees)
----------------------------------
The key holder decrypts ``Out + r + η`` where

* ``r`` is uniform in ``[-M, M]`` per slot, drawn from ``os.urandom``, with
  ``M = 2^36``: two bits inside the 2^39 value headroom of a 100-bit modulus
  at scale 2^60, and data-independent, so its size leaks nothing. Because
  ``|d_i| ≤ 1`` a slot's true value is bounded by ``B_s = Σ_{rows of s} |X|``;
  the statistical distance between what the key holder sees for any two
  gradients is at most ``B_s / M`` per slot. The guaranteed
  ``mask_bits = floor(log2(M / max_s B_s))`` is reported (25 bits for the
  72,000 training rows of the 100,000-row benchmark, 30 bits for the 21,600 of
  the default-credit test) and the kernel refuses to run below
  :data:`MIN_MASK_BITS`. ``M`` is capped by CKKS decoding in double precision:
  the decode error is ≈ |value|·2^-50, i.e. 2^-14 per slot at 2^36 (measured:
  2^20 → 1.6e-7, 2^30 → 7e-7, 2^40 → 7e-4).
* ``η`` is complex Gaussian (std 2^-8 per component), encoded as its own
  plaintext so its fine bits survive: it floods the X-dependent evaluation
  noise (≈ 2^-22) that the key holder could otherwise read in the decrypted
  real *and imaginary* parts (circuit privacy).

The feature holder subtracts ``Re(r + η)`` exactly. The key holder may add its
own Gaussian noise to what it returns (defence against decryption-oracle key
recovery, Li–Micciancio 2021); see :func:`decrypt_ciphertexts`.

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
    masked plaintext returned             32 kB per ciphertext (4096 float64)

Per epoch for n rows, m features, ``C = ceil(n/S)`` chunks and G product
ciphertexts (the popcount of each worker's feature block), plaintexts cached::

    feature holder  C·m·(mult + add) + (m − G)·rot + G·(2·encode + 2·add)      all at L2
    bytes           C·235 kB ([[d]]) + G·235 kB (products) + G·32 kB (returned)
    rotations       m − G          (one dot per feature and chunk: 12·C·m)
    decryptions     G at the key holder

100,000 × 300 (C = 25, G = 4): 7,500·0.111 ms + 296·1.2 ms ≈ 1.2 s on one core,
≈ 0.6 s on two worker processes; 5.9 MB of ``d`` and 0.9 MB of products.
End to end (``benchmarks/vertical_lr.py``, 100,000 × (30 + 300), partial scores,
residual, product, masks, decryption, every payload serialised): ≈ 1.8 s per
epoch and 11.6 MB, against the 30 s goal and FATE's published 136 s.

Alternatives measured or costed and not taken:

* one TenSEAL ``dot`` per feature and chunk (the starting point): 19.3 ms each,
  ≈ 145 s per epoch for 100,000 × 300; on 8,192 × 8 it takes 309 ms where
  this kernel takes 14 ms.
* TenSEAL ``CKKSVector.matmul`` (Halevi–Shoup diagonals over the rows of a
  chunk): one encode and one arbitrary-step rotation per *row*; 1.1 s for
  256 rows × 8, so ≈ 18 s per 4096-row chunk, ≈ 7 min per epoch.
* fold-then-pack (t power-of-two folds per feature, then a mask multiply and a
  rotation to place it): (t+1)·m rotations at L3 plus a second level; the
  diagonal layout folds and packs in one pass with ≈ m rotations and no level.
* no rotations (one product ciphertext per feature): m ciphertexts per epoch —
  70 MB for m = 300 — and m decryptions. Used automatically when the context
  has no Galois keys.
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

import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError

__all__ = [
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "MIN_MASK_BITS",
    "CKKSRuntime",
    "EncryptedMatVec",
    "EncryptedVector",
    "MaskState",
    "PackingLayout",
    "context_fingerprint",
    "decrypt_ciphertexts",
    "pack_frame",
    "peek_frame",
    "check_fingerprint",
    "residual_level",
    "secure_normal",
    "secure_uniform",
    "score_level",
    "unpack_frame",
]

FRAME_MAGIC = b"FRSK"
FRAME_VERSION = 1
MIN_MASK_BITS = 16
"""Refuse to reveal a masked slot whose statistical distance bound exceeds 2^-16."""

X_SCALE_BITS = 20
"""Scale of the feature plaintexts; products then carry Δ·2^20."""
VALUE_BITS = 38
"""Value headroom (bits) a masked product needs above its scale."""
SCORE_BITS = 18
"""Partial scores must stay below 2^17 in magnitude (they are linear predictors)."""
FLOOD_STD = 2.0**-8
"""Std of the Gaussian that floods CKKS evaluation noise in masked products."""

_MAX_HEADER = 1 << 20
_FP_CACHE: weakref.WeakKeyDictionary[ts.Context, str] = weakref.WeakKeyDictionary()
_RT_CACHE: weakref.WeakKeyDictionary[ts.Context, CKKSRuntime] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- fingerprint


def context_fingerprint(context: ts.Context) -> str:
    """Return the 16-hex-digit fingerprint of a CKKS context.

    SHA-256 of the context serialised with its public key and without secret,
    Galois or relinearisation keys: identical for the key holder's secret
    context and every public copy made from it, different for any other key.
    """
    cached = _FP_CACHE.get(context)
    if cached is None:
        blob = context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        cached = hashlib.sha256(blob).hexdigest()[:16]
        _FP_CACHE[context] = cached
    return cached


# --------------------------------------------------------------------------- randomness


def secure_uniform(low: float, high: float, size: int) -> np.ndarray:
    """Uniform doubles in ``[low, high)`` from ``os.urandom`` (masks must not be predictable)."""
    raw = np.frombuffer(os.urandom(8 * int(size)), dtype=np.uint64)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return low + (high - low) * unit


def secure_normal(loc: float, scale: float, size: int) -> np.ndarray:
    """Gaussian doubles from ``os.urandom`` (Box–Muller)."""
    u1 = secure_uniform(0.0, 1.0, size)
    u2 = secure_uniform(0.0, 1.0, size)
    return loc + scale * np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


# --------------------------------------------------------------------------- binary frames


def pack_frame(kind: bytes, fingerprint: str, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """Serialise one payload: magic, version, kind, fingerprint, JSON header, blobs.

    Layout (little endian)::

        b"FRSK" | u8 version | 4-byte kind | 8-byte fingerprint |
        u32 header length | UTF-8 JSON header | u32 blob count | (u64 length | bytes)*
    """
    if len(kind) != 4:
        raise ProtocolError(f"payload kind must be 4 bytes, got {kind!r}")
    fp = _fingerprint_bytes(fingerprint)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    parts = [FRAME_MAGIC, bytes([FRAME_VERSION]), kind, fp, struct.pack("<I", len(head)), head]
    parts.append(struct.pack("<I", len(blobs)))
    for blob in blobs:
        parts.append(struct.pack("<Q", len(blob)))
        parts.append(bytes(blob))
    return b"".join(parts)


def unpack_frame(data: bytes, kind: bytes | None = None) -> tuple[bytes, str, dict[str, Any], list[bytes]]:
    """Parse a frame made by :func:`pack_frame`; returns ``(kind, fingerprint, header, blobs)``.

    Raises
    ------
    ProtocolError
        Bad magic, version, kind, truncated or trailing data, or a header that is not a JSON object.
    """
    view = memoryview(data)
    if len(view) < 21 or bytes(view[:4]) != FRAME_MAGIC:
        raise ProtocolError("payload is not a fedrisk frame (bad magic or too short)")
    if view[4] != FRAME_VERSION:
        raise ProtocolError(f"payload frame version {view[4]} is not supported (expected {FRAME_VERSION})")
    got_kind = bytes(view[5:9])
    if kind is not None and got_kind != kind:
        raise ProtocolError(f"expected a {kind.decode()} payload, got {got_kind.decode(errors='replace')}")
    fingerprint = bytes(view[9:17]).hex()
    (hlen,) = struct.unpack_from("<I", view, 17)
    pos = 21
    if hlen > _MAX_HEADER or pos + hlen + 4 > len(view):
        raise ProtocolError("payload header is truncated or too large")
    try:
        header = json.loads(bytes(view[pos : pos + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("payload header is not a JSON object")
    pos += hlen
    (count,) = struct.unpack_from("<I", view, pos)
    pos += 4
    blobs: list[bytes] = []
    for _ in range(count):
        if pos + 8 > len(view):
            raise ProtocolError("payload is truncated (blob length)")
        (blen,) = struct.unpack_from("<Q", view, pos)
        pos += 8
        if pos + blen > len(view):
            raise ProtocolError("payload is truncated (blob data)")
        blobs.append(bytes(view[pos : pos + blen]))
        pos += blen
    if pos != len(view):
        raise ProtocolError(f"payload has {len(view) - pos} trailing bytes")
    return got_kind, fingerprint, header, blobs


def peek_frame(data: bytes) -> tuple[bytes, str, dict[str, Any]]:
    """Kind, fingerprint and header of a frame without copying its blobs (for routing)."""
    view = memoryview(data)
    if len(view) < 21 or bytes(view[:4]) != FRAME_MAGIC or view[4] != FRAME_VERSION:
        raise ProtocolError("payload is not a fedrisk frame (bad magic, version or length)")
    (hlen,) = struct.unpack_from("<I", view, 17)
    if hlen > _MAX_HEADER or 21 + hlen > len(view):
        raise ProtocolError("payload header is truncated or too large")
    try:
        header = json.loads(bytes(view[21 : 21 + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("payload header is not a JSON object")
    return bytes(view[5:9]), bytes(view[9:17]).hex(), header


def _fingerprint_bytes(fingerprint: str) -> bytes:
    try:
        raw = bytes.fromhex(fingerprint)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ProtocolError(f"context fingerprint must be 16 hex digits, got {fingerprint!r}")
    return raw


def check_fingerprint(expected: str, got: str, what: str) -> None:
    """Raise :class:`ContextMismatchError` unless two context fingerprints match."""
    if expected != got:
        raise ContextMismatchError(f"{what} was made under CKKS context {got}, not {expected}; refusing it")


# --------------------------------------------------------------------------- SEAL bridge


class _ByteBridge:
    """Move SEAL objects to and from bytes through an anonymous in-memory file.

    ``tenseal.sealapi`` only saves and loads through file paths; ``memfd`` keeps
    that in RAM and invisible to other processes. Falls back to a private
    temporary directory where ``memfd_create`` is unavailable.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tmpdir: str | None = None
        try:
            self._fd = os.memfd_create("fedrisk-seal", os.MFD_CLOEXEC)
            self._path = f"/proc/self/fd/{self._fd}"
            if not os.path.exists(self._path):
                os.close(self._fd)
                raise OSError("no /proc/self/fd")
        except (AttributeError, OSError):
            self._tmpdir = tempfile.mkdtemp(prefix="fedrisk-seal-")
            self._path = os.path.join(self._tmpdir, "buffer")
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._finalizer = weakref.finalize(self, _ByteBridge._cleanup, self._fd, self._tmpdir)

    @staticmethod
    def _cleanup(fd: int, tmpdir: str | None) -> None:
        try:
            os.close(fd)
        except OSError:
            pass
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def load(self, data: bytes, loader: Any) -> None:
        """Write ``data`` to the buffer and call ``loader(path)``."""
        with self._lock:
            os.ftruncate(self._fd, 0)
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], written)
            loader(self._path)

    def save(self, saver: Any) -> bytes:
        """Call ``saver(path)`` and return what it wrote."""
        with self._lock:
            os.ftruncate(self._fd, 0)
            saver(self._path)
            size = os.fstat(self._fd).st_size
            chunks = []
            pos = 0
            while pos < size:
                chunk = os.pread(self._fd, size - pos, pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
            return b"".join(chunks)


class CKKSRuntime:
    """SEAL objects (``tenseal.sealapi``) mirroring the public part of a TenSEAL context.

    Holds the parameters, evaluator, encoder, public key and (lazily) the Galois
    keys; never the secret key. Use :meth:`for_context` to share one per context.

    Parameters
    ----------
    context : tenseal.Context
        A CKKS context, public or secret; only public material is read.
    """

    def __init__(self, context: ts.Context) -> None:
        self.fingerprint = context_fingerprint(context)
        self._context_ref = weakref.ref(context)
        self._io = _ByteBridge()
        parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
        seal_ctx = context.seal_context().data
        self._io.load(self._io.save(seal_ctx.key_context_data().parms().save), parms.load)
        self.seal = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
        if not self.seal.parameters_set():
            raise CryptoError("CKKS context parameters are not valid for SEAL")
        self.evaluator = sa.Evaluator(self.seal)
        self.encoder = sa.CKKSEncoder(self.seal)
        self.slots = int(self.encoder.slot_count())
        self.global_scale = float(context.global_scale)
        self.parms_ids: list[Any] = []
        self.level_bits: list[float] = []
        data = self.seal.first_context_data()
        while data is not None:
            self.parms_ids.append(data.parms_id())
            self.level_bits.append(sum(math.log2(m.value()) for m in data.parms().coeff_modulus()))
            data = data.next_context_data()
        self.public_key: Any = None
        if context.has_public_key():
            pk = sa.PublicKey()
            self._io.load(self._io.save(context.data.public_key().save), lambda p: pk.load(self.seal, p))
            self.public_key = pk
            self._encryptor = sa.Encryptor(self.seal, pk)
        self._has_galois = bool(context.has_galois_keys())
        self._galois: Any = None

    @classmethod
    def for_context(cls, context: ts.Context) -> CKKSRuntime:
        """Return the runtime cached for ``context`` (built on first use)."""
        runtime = _RT_CACHE.get(context)
        if runtime is None:
            runtime = cls(context)
            _RT_CACHE[context] = runtime
        return runtime

    @property
    def has_galois_keys(self) -> bool:
        return self._has_galois

    @property
    def galois_keys(self) -> Any:
        """SEAL Galois keys (loaded on first use; ~0.25 s and 33 MB for N = 8192)."""
        if self._galois is None:
            context = self._context_ref()
            if not self._has_galois or context is None:
                raise CryptoError("CKKS context has no Galois keys; packed X^T[[d]] needs rotations")
            keys = sa.GaloisKeys()
            self._io.load(self._io.save(context.data.galois_keys().save), lambda p: keys.load(self.seal, p))
            self._galois = keys
        return self._galois

    def level_of(self, ct: Any) -> int:
        """Index in :attr:`parms_ids` (0 = most primes) of a ciphertext's level."""
        pid = ct.parms_id()
        for i, cand in enumerate(self.parms_ids):
            if cand == pid:
                return i
        raise CryptoError("ciphertext is not at any level of this CKKS context")

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


def residual_level(runtime: CKKSRuntime, x_scale_bits: int = X_SCALE_BITS) -> int:
    """Level at which the label holder encrypts ``d`` for the packed kernel.

    The lowest level (fewest primes, cheapest) whose modulus still holds a product
    of scale Δ·2^x_scale_bits plus :data:`VALUE_BITS` of masked values.
    """
    need = math.log2(runtime.global_scale) + x_scale_bits + VALUE_BITS + 1
    fits = [i for i, bits in enumerate(runtime.level_bits) if bits >= need]
    if not fits:
        raise CryptoError(
            f"CKKS modulus too small for packed X^T[[d]]: needs {need:.0f} bits, has {runtime.level_bits[0]:.0f}"
        )
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


def _tenseal_vector_bytes(blobs: Sequence[bytes], slots: int, scale: float) -> bytes:
    """Wrap SEAL ciphertexts as a TenSEAL ``CKKSVectorProto`` (sizes, ciphertexts, scale)."""
    packed = b"".join(_varint(slots) for _ in blobs)
    out = [b"\x0a", _varint(len(packed)), packed]
    for blob in blobs:
        out += [b"\x12", _varint(len(blob)), blob]
    out.append(b"\x19" + struct.pack("<d", scale))
    return b"".join(out)


def decrypt_ciphertexts(
    context: ts.Context,
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
    context : tenseal.Context
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
    if not context.is_private():
        raise CryptoError("this CKKS context holds no secret key; it cannot decrypt")
    slots = context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2
    if not blobs:
        return np.zeros(0)
    try:
        vec = ts.ckks_vector_from(context, _tenseal_vector_bytes(blobs, slots, float(context.global_scale)))
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
    def encrypt(cls, context: ts.Context, values: np.ndarray, *, level: int | None = None) -> EncryptedVector:
        """Encrypt ``values`` with the context's public key (at ``level``, default the top)."""
        runtime = CKKSRuntime.for_context(context)
        vals = np.asarray(values, dtype=np.float64).ravel()
        blobs = runtime.encrypt(vals, 0 if level is None else level)
        return cls(runtime.fingerprint, len(vals), tuple(blobs))

    def check(self, context: ts.Context) -> None:
        """Raise :class:`ContextMismatchError` unless made under ``context``."""
        check_fingerprint(context_fingerprint(context), self.fingerprint, type(self).__name__)

    def decrypt(self, context: ts.Context) -> np.ndarray:
        """Decrypt with the key holder's context (checks the fingerprint first)."""
        self.check(context)
        return decrypt_ciphertexts(context, self.ciphertexts, self.n_values)

    def to_bytes(self) -> bytes:
        return pack_frame(self.KIND, self.fingerprint, {"n": self.n_values}, self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, context: ts.Context | None = None) -> EncryptedVector:
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
    """How m features are packed into output ciphertexts.

    Features are split into ``n_blocks`` contiguous blocks (one per worker
    process); each block is decomposed into power-of-two groups of at most
    ``max_pack`` features. Group ``(start, F)`` puts feature ``start + f`` in
    slots ``[f·L, (f+1)·L)`` of one ciphertext, ``L = slots / F``.
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
    def n_rotations(self) -> int:
        """Rotations per product (upper bound; all-zero diagonals are skipped)."""
        return sum(f - 1 for _, f in self.groups)

    def unpack(self, values: np.ndarray) -> np.ndarray:
        """Sum each feature's ``L`` slots: (n_ciphertexts·slots,) -> (n_features,)."""
        vals = np.asarray(values, dtype=np.float64).reshape(len(self.groups), self.slots)
        out = np.empty(self.n_features)
        for g, (start, size) in enumerate(self.groups):
            out[start : start + size] = vals[g].reshape(size, self.slots // size).sum(axis=1)
        return out


# --------------------------------------------------------------------------- kernel (one process)


class _PackedKernel:
    """The rotate-and-accumulate product for a contiguous block of features."""

    def __init__(
        self,
        runtime: CKKSRuntime,
        X: np.ndarray,
        groups: Sequence[tuple[int, int]],
        *,
        level: int,
        x_scale: float,
        cache_plaintexts: bool,
    ) -> None:
        self.rt = runtime
        self.slots = runtime.slots
        self.level = level
        self.x_scale = x_scale
        self.n_rows = X.shape[0]
        self.n_chunks = max(1, -(-self.n_rows // self.slots))
        padded = np.zeros((self.n_chunks * self.slots, X.shape[1]))
        padded[: self.n_rows] = X
        self.X = padded
        self.groups = [(int(s), int(f)) for s, f in groups]
        self._rows = np.arange(self.slots)
        self.cache: dict[tuple[int, int, int], Any] | None = None
        if cache_plaintexts:
            self.cache = {}
            for g in range(len(self.groups)):
                for k in range(self.groups[g][1]):
                    for c in range(self.n_chunks):
                        self.cache[(g, k, c)] = self._encode(g, k, c)
        if any(f > 1 for _, f in self.groups):
            _ = runtime.galois_keys  # load once, up front

    def _diagonal(self, g: int, k: int, c: int) -> np.ndarray:
        start, size = self.groups[g]
        span = self.slots // size
        cols = start + ((self._rows // span - k) % size)
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
            if ct.parms_id() != pid:
                lvl = self.rt.level_of(ct)
                if lvl > self.level:
                    raise CryptoError("residual ciphertexts are below the level the kernel needs")
                ev.mod_switch_to_inplace(ct, pid)
        out_scale = d[0].scale * self.x_scale
        tmp = sa.Ciphertext()
        results = []
        for g, (_, size) in enumerate(self.groups):
            span = self.slots // size
            acc = None
            for k in range(size - 1, -1, -1):
                if acc is not None:
                    ev.rotate_vector_inplace(acc, span, self.rt.galois_keys)
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
            results.append(acc if acc is not None else self.rt.encrypt_zero(self.level, out_scale))
        return results

def _slot_bounds(X: np.ndarray, groups: Sequence[tuple[int, int]], slots: int) -> list[np.ndarray]:
    """Per group, ``B_s = Σ |X|`` over the rows feeding each output slot (|d| ≤ 1 bounds the slot)."""
    n_chunks = max(1, -(-X.shape[0] // slots))
    absx = np.zeros((n_chunks * slots, X.shape[1]))
    absx[: X.shape[0]] = np.abs(X)
    out = []
    for start, size in groups:
        span = slots // size
        per = absx[:, start : start + size].reshape(n_chunks, size, span, size).sum(axis=(0, 1))
        out.append(per.T.reshape(-1))  # slot f·L + i  <-  feature f, offset i
    return out


# --------------------------------------------------------------------------- worker processes


def _read_exact(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("pipe closed")
        buf += chunk
    return bytes(buf)


def _send(stream: Any, frame: bytes) -> None:
    stream.write(struct.pack("<Q", len(frame)))
    stream.write(frame)
    stream.flush()


def _recv(stream: Any) -> bytes:
    (n,) = struct.unpack("<Q", _read_exact(stream, 8))
    return _read_exact(stream, n)


def _worker_serve(inp: Any, out: Any) -> None:  # pragma: no cover - runs in a child process
    """Serve INIT/MATV/STOP frames on a pipe pair (length-prefixed frames, never pickled)."""
    kernel: _PackedKernel | None = None
    runtime: CKKSRuntime | None = None
    context = None
    while True:
        try:
            kind, fp, header, blobs = unpack_frame(_recv(inp))
        except EOFError:
            return
        try:
            if kind == b"STOP":
                return
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
                )
                _send(out, pack_frame(b"OKAY", fp, {}))
            elif kind == b"MATV":
                if kernel is None or runtime is None:
                    raise ProtocolError("worker got MATV before INIT")
                result = kernel.run([runtime.load(b) for b in blobs])
                _send(out, pack_frame(b"RSLT", fp, {}, [runtime.dump(c) for c in result]))
            else:
                raise ProtocolError(f"unknown worker command {kind!r}")
        except Exception as exc:  # report, keep serving
            _send(out, pack_frame(b"ERRR", fp, {"error": f"{type(exc).__name__}: {exc}"}))


_WORKER_BOOT = (
    "import os, sys; from fedrisk.crypto.encrypted_matvec import _worker_serve; "
    "_worker_serve(os.fdopen(int(sys.argv[1]), 'rb'), os.fdopen(int(sys.argv[2]), 'wb'))"
)


class _WorkerPool:
    """The feature holder's own worker processes, one per feature block.

    Fresh ``python`` children talking length-prefixed frames over dedicated pipes:
    no pickling, and no re-import of the caller's ``__main__`` (which
    ``multiprocessing`` spawn would need guarded). Their stdout goes to stderr.
    """

    #: The ``python -c`` line a child runs: the module whose worker loop it serves.
    boot: str = _WORKER_BOOT

    def __init__(self, n: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.links: list[tuple[Any, Any]] = []
        for _ in range(n):
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            proc = subprocess.Popen(
                [sys.executable, "-c", self.boot, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
                close_fds=True,
            )
            os.close(to_child_r)
            os.close(from_child_w)
            self.procs.append(proc)
            self.links.append((os.fdopen(to_child_w, "wb"), os.fdopen(from_child_r, "rb")))

    def scatter(self, frames: Sequence[bytes]) -> list[list[bytes]]:
        """Send one frame to each worker, then collect every reply (workers run concurrently)."""
        try:
            for (w, _), frame in zip(self.links, frames, strict=True):
                _send(w, frame)
            replies = [_recv(r) for _, r in self.links]
        except (OSError, EOFError) as exc:
            raise CryptoError(f"matvec worker process died: {exc}") from None
        results = []
        for reply in replies:
            kind, _, header, blobs = unpack_frame(reply)
            if kind == b"ERRR":
                raise CryptoError(f"matvec worker failed: {header.get('error', '?')}")
            results.append(blobs)
        return results

    def close(self) -> None:
        for w, r in self.links:
            try:
                _send(w, pack_frame(b"STOP", "0" * 16, {}))
            except (OSError, ValueError):
                pass
            for stream in (w, r):
                try:
                    stream.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.links, self.procs = [], []


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- public kernel


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
    context : tenseal.Context
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
        Refuse to build if the masks would hide a slot by fewer bits than this.

    Attributes
    ----------
    layout_ : PackingLayout
    mask_bits_ : int
        Guaranteed hiding: statistical distance ≤ 2^-mask_bits_ per revealed slot.
    level_ : int
        Level of ``d`` and of the products.
    """

    def __init__(
        self,
        X: np.ndarray,
        context: ts.Context,
        *,
        max_pack: int | None = None,
        n_jobs: int = 1,
        cache_plaintexts: bool | str = "auto",
        cache_bytes: int = 2 << 30,
        x_scale_bits: int = X_SCALE_BITS,
        min_mask_bits: int = MIN_MASK_BITS,
        flood_std: float = FLOOD_STD,
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
        if max_pack is None and not self.runtime.has_galois_keys:
            max_pack = 1
        self.layout_ = PackingLayout.build(self.n_features, slots, max_pack=max_pack, n_blocks=max(1, n_jobs))
        self.level_ = residual_level(self.runtime, x_scale_bits)
        self.x_scale = float(2**x_scale_bits)
        self.flood_std = float(flood_std)
        self.n_chunks = max(1, -(-self.n_rows // slots))
        # Mask half-width: the largest power of two that still decodes exactly.
        prod_bits = math.log2(self.runtime.global_scale) + x_scale_bits
        self.mask_bound_ = float(2.0 ** math.floor(self.runtime.level_bits[self.level_] - 1 - prod_bits - 2))
        n_plain = self.n_chunks * self.n_features
        plain_bytes = n_plain * self.runtime.slots * 2 * len(self._primes_at(self.level_)) * 8
        self.cache_plaintexts_ = bool(plain_bytes <= cache_bytes) if cache_plaintexts == "auto" else bool(cache_plaintexts)
        self._pool: _WorkerPool | None = None
        self._kernels: list[_PackedKernel] = []
        n_workers = len(self.layout_.blocks)
        if n_workers <= 1:
            self._kernels = [self._local_kernel(X, 0)]
        else:
            self._pool = _WorkerPool(n_workers)
            weakref.finalize(self, _WorkerPool.close, self._pool)
            ctx_bytes = context.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False
            )
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
                }
                frames.append(pack_frame(b"INIT", self.fingerprint, header, [ctx_bytes, block.astype("<f8").tobytes()]))
            try:
                self._pool.scatter(frames)
            except BaseException:
                self.close()
                raise
        self._bounds = self._slot_bounds(X)
        worst = max(float(b.max()) for b in self._bounds)
        self.mask_bits_ = 52 if worst == 0 else int(math.floor(math.log2(self.mask_bound_ / worst)))
        if self.mask_bits_ < min_mask_bits:
            self.close()
            raise CryptoError(
                f"masks would hide X^T d by only {self.mask_bits_} bits (< {min_mask_bits}); "
                "standardise features or use fewer rows per product"
            )

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
            [tuple(g) for g in groups],
            level=self.level_,
            x_scale=self.x_scale,
            cache_plaintexts=self.cache_plaintexts_,
        )

    def _slot_bounds(self, X: np.ndarray) -> list[np.ndarray]:
        bounds: list[np.ndarray] = []
        for b in range(len(self.layout_.blocks)):
            cols, groups = self._block(b)
            bounds.extend(_slot_bounds(X[:, cols[0] : cols[1]], [(s, f) for s, f in groups], self.runtime.slots))
        return bounds

    # -- the product
    def compute(self, d: EncryptedVector) -> list[Any]:
        """Unmasked packed product ``X_kᵀ[[d]]`` as SEAL ciphertexts (feature-holder local).

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

    def mask(
        self, products: Sequence[Any], rng: np.random.Generator | None = None, epoch: int = 0
    ) -> tuple[list[bytes], MaskState]:
        """Add ``r + η`` to each product; return serialised ciphertexts and the private mask record.

        Masks come from the operating system's CSPRNG unless ``rng`` is given (tests).
        """
        slots = self.runtime.slots
        ev = self.runtime.evaluator
        uniform = secure_uniform if rng is None else rng.uniform
        normal = secure_normal if rng is None else rng.normal
        offsets = np.empty(len(products) * slots)
        blobs = []
        for g, ct in enumerate(products):
            level = self.runtime.level_of(ct)
            r = uniform(-self.mask_bound_, self.mask_bound_, slots)
            eta = normal(0.0, self.flood_std, slots) + 1j * normal(0.0, self.flood_std, slots)
            # separate plaintexts: folding η into r would round away its fine bits
            ev.add_plain_inplace(ct, self.runtime.encode(r, level, ct.scale))
            ev.add_plain_inplace(ct, self.runtime.encode(eta, level, ct.scale))
            offsets[g * slots : (g + 1) * slots] = r + eta.real
            blobs.append(self.runtime.dump(ct))
        return blobs, MaskState(epoch, offsets)

    def unmask(self, values: np.ndarray, state: MaskState) -> np.ndarray:
        """``X_kᵀ d`` (n_features,) from the key holder's decryption of the masked product."""
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape != state.offsets.shape:
            raise ProtocolError(f"masked product has {vals.size} values, expected {state.offsets.size}")
        return self.layout_.unpack(vals - state.offsets)

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> EncryptedMatVec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
