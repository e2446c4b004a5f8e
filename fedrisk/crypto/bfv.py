"""BFV primitives for exact encrypted sums (hazmat: the histogram kernel's scheme).

Why BFV and not CKKS for histograms: a CKKS decryption returns the message *plus*
its evaluation noise, and that noise is a function of which rows the feature
holder summed, so it has to be flooded — and every bit of flooding costs a bit of
the totals' precision (:mod:`fedrisk.crypto.encrypted_histogram` measured the
ceiling at ≈19 bits of statistical security over a run). BFV keeps the message
``m`` (integers mod ``t``) in the high bits, ``Δ·m + v`` with ``Δ = ⌊q/t⌋``,
apart from the noise ``v``: the noise can be flooded with a uniform term far
larger than ``v`` and still far smaller than ``Δ/2``, and the decryption stays
exact. The flooding costs modulus, not precision.

Parameters (fixed, one recipe): ``N = 16384``, six 60-bit primes (five data
primes, 300 bits, plus the special prime; SEAL's 128-bit bound for ``N = 16384``
is 438 bits), plaintext modulus ``t`` a 59-bit batching prime. Slots form a
2 × 8192 matrix; rows rotate cyclically, columns swap.

Galois keys are made for exactly the steps the kernel uses — row rotations by
``2^k`` (``k = 0 … 12``) and the column swap — not TenSEAL's default set (27
keys, 200 MB at these parameters): 14 keys, ≈106 MB, sent once per run to each
feature holder. TenSEAL cannot generate a chosen set, so :func:`make_bfv_context`
makes them with SEAL's key generator and places them in the TenSEAL context's own
serialisation (its ``galois_keys`` field), so the context object travels and
loads like any other.

Raw coefficient access (:func:`add_to_c0`) writes into a ciphertext's memory
through the pointer SEAL exposes; it is the one place where fedrisk touches
ciphertext internals, and it checks form, size and modulus count first.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa
import zstandard

from fedrisk.crypto.seal_runtime import ByteBridge, SealRuntime, load_public_tenseal, read_varint, seal_context
from fedrisk.errors import CryptoError, ProtocolError

__all__ = [
    "COEFF_MOD_BITS",
    "PLAIN_MODULUS_BITS",
    "POLY_DEGREE",
    "ROW_STEPS",
    "BFVRuntime",
    "add_to_c0",
    "ciphertext_from_polynomials",
    "ciphertext_polynomials",
    "coefficient_plaintext",
    "has_galois_keys",
    "keep_seeded_galois",
    "load_key_holder_bfv_context",
    "load_public_bfv_context",
    "make_bfv_context",
    "public_bfv_context",
    "public_bfv_context_bytes",
    "uniform_noise_rns",
    "uniform_residues",
]

POLY_DEGREE = 16384
COEFF_MOD_BITS = (60, 60, 60, 60, 60, 60)
PLAIN_MODULUS_BITS = 59
ROW_STEPS = tuple(2**k for k in range(13))
"""Row-rotation steps with a Galois key (every power of two below 8192)."""


def _galois_elements(n: int) -> list[int]:
    """SEAL's Galois elements for the row rotations in :data:`ROW_STEPS` and the column swap."""
    m = 2 * n
    return [pow(3, step, m) for step in ROW_STEPS] + [m - 1]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level protobuf fields (varint, 64-bit and length-delimited only)."""
    out: list[tuple[int, int, bytes | int]] = []
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
            out.append((field, wire, value))
        elif wire == 1:
            out.append((field, wire, buf[i : i + 8]))
            i += 8
        elif wire == 2:
            size, i = read_varint(buf, i)
            out.append((field, wire, buf[i : i + size]))
            i += size
        else:
            raise CryptoError("BFV context serialisation is malformed")
    return out


def _encode_fields(fields: Sequence[tuple[int, int, bytes | int]]) -> bytes:
    out = bytearray()
    for field, wire, value in fields:
        out += _varint(field << 3 | wire)
        if wire == 0:
            out += _varint(int(value))
        elif wire == 1:
            out += bytes(value)
        else:
            out += _varint(len(value)) + bytes(value)  # type: ignore[arg-type]
    return bytes(out)


def _with_galois_keys(serialised: bytes, galois: bytes) -> bytes:
    """A TenSEAL context serialisation with ``galois`` as its Galois keys (TenSEALPublicProto field 5)."""
    fields = []
    for field, wire, value in _fields(serialised):
        if field == 2 and wire == 2:
            sub = [f for f in _fields(value) if f[0] != 5] + [(5, 2, galois)]  # type: ignore[arg-type]
            value = _encode_fields(sub)
        fields.append((field, wire, value))
    return _encode_fields(fields)


def make_bfv_context(*, galois: bool = True) -> ts.Context:
    """A key holder's fresh secret BFV context, with the kernel's Galois keys if ``galois`` (see the module docstring).

    The Galois keys are also kept in SEAL's seeded form (half the size), which
    :func:`public_bfv_context_bytes` sends. A context without them serves
    evaluations that never rotate (:mod:`fedrisk.crypto.encrypted_bins`).
    """
    plain = sa.PlainModulus.Batching(POLY_DEGREE, PLAIN_MODULUS_BITS).value()
    context = ts.context(ts.SCHEME_TYPE.BFV, POLY_DEGREE, plain, coeff_mod_bit_sizes=list(COEFF_MOD_BITS))
    if not galois:
        return context
    io = ByteBridge()
    seal = seal_context(context, sa.SCHEME_TYPE.BFV, io)
    secret = sa.SecretKey()
    io.load(io.save(context.data.secret_key().save), lambda p: secret.load(seal, p))
    seeded = io.save(sa.KeyGenerator(seal, secret).create_galois_keys(_galois_elements(POLY_DEGREE)).save)
    blob = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    context = ts.context_from(_with_galois_keys(blob, seeded))
    context._fedrisk_seeded_galois = seeded
    return context


def has_galois_keys(context: ts.Context) -> bool:
    """Whether a BFV context carries Galois keys to share (TenSEAL's own flag misses the seeded ones kept here)."""
    return getattr(context, "_fedrisk_seeded_galois", None) is not None or bool(context.has_galois_keys())


def public_bfv_context_bytes(context: ts.Context, *, galois: bool) -> bytes:
    """The public copy of a BFV context, with the kernel's Galois keys in seeded form if ``galois``."""
    blob = bytes(context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False))
    if not galois:
        return blob
    seeded = getattr(context, "_fedrisk_seeded_galois", None)
    if seeded is None:
        if not context.has_galois_keys():
            raise CryptoError("this BFV context has no Galois keys to share")
        return bytes(context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False))
    return _with_galois_keys(blob, seeded)


def keep_seeded_galois(context: ts.Context, serialised: bytes) -> ts.Context:
    """Remember the seeded Galois keys of the serialisation ``context`` was loaded from.

    TenSEAL expands seeded keys on load (55 MB become 110 MB); keeping the seeded
    form lets a feature holder hand the keys on to its worker processes at half
    the size and load them straight into SEAL (≈ 0.2 s instead of ≈ 2 s through
    TenSEAL). Nothing is kept when the serialisation carries no Galois keys.
    """
    for field, wire, value in _fields(serialised):
        if field == 2 and wire == 2:
            for sub, sub_wire, sub_value in _fields(value):  # type: ignore[arg-type]
                if sub == 5 and sub_wire == 2 and sub_value:
                    context._fedrisk_seeded_galois = bytes(sub_value)
    return context


def _check_recipe(context: ts.Context, who: str) -> None:
    """Refuse a BFV context whose parameters are not the one recipe (module docstring)."""
    try:
        parms = seal_context(context, sa.SCHEME_TYPE.BFV, ByteBridge()).key_context_data().parms()
    except CryptoError as exc:
        raise CryptoError(f"{who}: {exc}") from None
    bits = tuple(int(m.bit_count()) for m in parms.coeff_modulus())
    plain = int(parms.plain_modulus().value())
    expected_plain = sa.PlainModulus.Batching(POLY_DEGREE, PLAIN_MODULUS_BITS).value()
    if int(parms.poly_modulus_degree()) != POLY_DEGREE or bits != COEFF_MOD_BITS or plain != expected_plain:
        raise CryptoError(
            f"{who}: BFV context parameters (N={parms.poly_modulus_degree()}, primes {bits} bits, t={plain}) "
            f"are not fedrisk's histogram recipe (N={POLY_DEGREE}, primes {COEFF_MOD_BITS} bits, t={expected_plain})"
        )


def load_public_bfv_context(blob: bytes, who: str) -> ts.Context:
    """A received public BFV context, checked: no secret key, the recipe's parameters.

    Seeded Galois keys in ``blob`` are remembered (:func:`keep_seeded_galois`).
    ``who`` names the receiver in the one-line error.

    Raises
    ------
    ProtocolError
        The bytes are not a TenSEAL context.
    CryptoError
        It carries a secret key, or its parameters are not the recipe's.
    """
    try:
        context = load_public_tenseal(blob)
    except (ProtocolError, CryptoError) as exc:
        raise type(exc)(f"{who}: {exc}") from None
    _check_recipe(context, who)
    return keep_seeded_galois(context, bytes(blob))


def load_key_holder_bfv_context(blob: bytes, who: str) -> ts.Context:
    """The key holder's own BFV context back from its 0600 state file, checked to hold the secret key."""
    try:
        context = ts.context_from(bytes(blob))
    except Exception:  # TenSEAL raises bare ValueError/RuntimeError on garbage
        raise ProtocolError(f"{who}: the saved BFV context is not a valid TenSEAL context") from None
    if not context.is_private():
        raise CryptoError(f"{who}: the saved BFV context has no secret key")
    _check_recipe(context, who)
    return keep_seeded_galois(context, bytes(blob))


def public_bfv_context(context: ts.Context) -> ts.Context:
    """The public copy (with the kernel's Galois keys) a feature holder receives, as a loaded context."""
    return load_public_bfv_context(public_bfv_context_bytes(context, galois=True), "public copy")


class BFVRuntime(SealRuntime):
    """SEAL objects for one TenSEAL BFV context: evaluator, batch encoder, public key, Galois keys.

    The secret key is loaded only on a private context, only by :meth:`decrypt`.
    Use :meth:`for_context` to share one runtime per context.
    """

    scheme = sa.SCHEME_TYPE.BFV
    scheme_name = "BFV"
    galois_purpose = "the histogram kernel needs rotations"

    def __init__(self, context: ts.Context) -> None:
        super().__init__(context)
        self.encoder = sa.BatchEncoder(self.seal)
        self.slots = int(self.encoder.slot_count())
        self.row_slots = self.slots // 2
        self.plain_modulus = int(self.seal.first_context_data().parms().plain_modulus().value())
        self._decryptor: Any = None
        self._secret: Any = None
        self._symmetric: Any = None

    def _check_galois(self, keys: Any) -> None:
        for elt in _galois_elements(POLY_DEGREE):
            if not keys.has_key(elt):
                raise CryptoError("BFV context lacks a Galois key the histogram kernel needs")

    def load(self, blob: bytes) -> Any:
        ct = sa.Ciphertext()
        try:
            self._io.load(blob, lambda p: ct.load(self.seal, p))
        except Exception as exc:  # SEAL raises ValueError/RuntimeError/IOError
            raise CryptoError(f"ciphertext does not load under this BFV context: {exc}") from None
        if ct.size() != 2 or ct.is_ntt_form():
            raise CryptoError("BFV ciphertext must have two polynomials in coefficient form")
        return ct

    def dump(self, ct: Any) -> bytes:
        return self._io.save(ct.save)

    def encode(self, values: np.ndarray) -> Any:
        """Batch-encode up to :attr:`slots` integers (reduced mod ``t``)."""
        vals = np.zeros(self.slots, dtype=np.int64)
        arr = np.asarray(values, dtype=np.int64).ravel()
        vals[: arr.size] = arr
        pt = sa.Plaintext()
        self.encoder.encode(vals.tolist(), pt)
        return pt

    def encode_ntt(self, values: np.ndarray, level: int = 0) -> Any:
        """:meth:`encode`, then to NTT form at ``level`` (for products with NTT-form ciphertexts)."""
        pt = self.encode(values)
        self.evaluator.transform_to_ntt_inplace(pt, self.parms_ids[level])
        return pt

    def encrypt(self, values: np.ndarray) -> Any:
        if self._encryptor is None:
            raise CryptoError("BFV context has no public key; cannot encrypt")
        ct = sa.Ciphertext()
        self._encryptor.encrypt(self.encode(values), ct)
        return ct

    def encrypt_zero(self, level: int = 0) -> Any:
        if self._encryptor is None:
            raise CryptoError("BFV context has no public key; cannot encrypt")
        ct = sa.Ciphertext()
        self._encryptor.encrypt_zero(self.parms_ids[level], ct)
        return ct

    def _secret_key(self, purpose: str) -> Any:
        if self._secret is None:
            context = self._context_ref()
            if context is None or not context.is_private():
                raise CryptoError(f"this BFV context holds no secret key; it cannot {purpose}")
            secret = sa.SecretKey()
            self._io.load(self._io.save(context.data.secret_key().save), lambda p: secret.load(self.seal, p))
            self._secret = secret
        return self._secret

    def encrypt_seeded(self, values: np.ndarray) -> bytes:
        """Encrypt under the secret key and serialise seeded (key holder only).

        ``c1`` is uniform from SEAL's PRNG, so it travels as its 64-byte seed and the
        receiver's SEAL expands it on load: half the bytes of a public-key encryption,
        the same RLWE hardness, fresh randomness per call.
        """
        return self.encrypt_seeded_plaintext(self.encode(values))

    def encrypt_seeded_plaintext(self, pt: Any) -> bytes:
        """:meth:`encrypt_seeded` of an encoded plaintext (batched or coefficient-packed)."""
        if self._symmetric is None:
            self._symmetric = sa.Encryptor(self.seal, self._secret_key("encrypt symmetrically"))
        seeded = self._symmetric.encrypt_symmetric(pt)
        return self._io.save(seeded.save)

    def decrypt(self, ct: Any) -> np.ndarray:
        """Decrypt and decode to centred integers in ``(−t/2, t/2]`` (key holder only)."""
        if self._decryptor is None:
            self._decryptor = sa.Decryptor(self.seal, self._secret_key("decrypt"))
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_int64(pt), dtype=np.int64)

    def decrypt_coefficients(self, ct: Any, positions: np.ndarray) -> np.ndarray:
        """Decrypt and return the plaintext polynomial's coefficients at ``positions`` (uint64 mod ``t``; key holder only)."""
        if self._decryptor is None:
            self._decryptor = sa.Decryptor(self.seal, self._secret_key("decrypt"))
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        count = int(pt.coeff_count())  # SEAL may drop high zero coefficients
        return np.array([int(pt.data(int(i))) if i < count else 0 for i in positions], dtype=np.uint64)

    def noise_budget(self, ct: Any) -> int:
        """SEAL's invariant noise budget in bits (key holder only; for tests and measurements)."""
        self.decrypt(ct)  # loads the decryptor or raises
        return int(self._decryptor.invariant_noise_budget(ct))


def uniform_noise_rns(moduli: Sequence[int], n: int, bits: int) -> np.ndarray:
    """``n`` independent uniform integers in ``[−2^bits, 2^bits)`` (``os.urandom``), reduced mod each prime.

    Returns an array ``(len(moduli), n)`` of uint64, the noise's RNS form. Every
    reduction is exact uint64 arithmetic (:func:`_mod_limbs`), checked against
    Python integers in the tests.
    """
    if not 0 <= bits < 191:
        raise CryptoError(f"flooding width must be 0..190 bits, got {bits}")
    if any(not 1 < int(q) < 1 << 63 for q in moduli):
        raise CryptoError("noise moduli must lie between 2 and 2^63")
    width = bits + 1
    limbs = max(2, -(-width // 64))
    raw = np.frombuffer(os.urandom(8 * limbs * n), dtype="<u8").reshape(n, limbs)
    columns = [raw[:, i].copy() for i in range(limbs)]
    top = width - 64 * (limbs - 1)  # bits kept of the highest limb (≤ 0: none)
    columns[-1] &= np.uint64((1 << max(0, top)) - 1)
    if top <= 0:
        columns[-2] &= np.uint64((1 << (width - 64 * (limbs - 2))) - 1)
    return np.array([_mod_limbs(columns, int(q), 1 << bits) for q in moduli], dtype=np.uint64)


def uniform_residues(modulus: int, n: int) -> np.ndarray:
    """``n`` residues uniform mod ``modulus`` (< 2^63) as uint64: 128-bit draws reduced, so the bias is below ``modulus / 2^128``."""
    if not 1 < int(modulus) < 1 << 63:
        raise CryptoError("a uniform residue needs a modulus between 2 and 2^63")
    raw = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(n, 2)
    return _mod_limbs([raw[:, 0].copy(), raw[:, 1].copy()], int(modulus), 0)


_LOW32 = np.uint64(0xFFFFFFFF)


def _mulhi64(a: np.ndarray, b: int) -> np.ndarray:
    """``⌊a·b / 2^64⌋`` for uint64 ``a`` and ``b < 2^64``, from four 32-bit partial products."""
    a0, a1 = a & _LOW32, a >> np.uint64(32)
    b0, b1 = np.uint64(b & 0xFFFFFFFF), np.uint64(b >> 32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    carry = (p00 >> np.uint64(32)) + (p01 & _LOW32) + (p10 & _LOW32)
    high: np.ndarray = p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (carry >> np.uint64(32))
    return high


def _mulmod_const(x: np.ndarray, k: int, q: int) -> np.ndarray:
    """``x·k mod q`` for uint64 ``x``, ``0 ≤ k < q < 2^63`` (Shoup's precomputed quotient: exact, no 128-bit type)."""
    quotient = _mulhi64(x, (k << 64) // q)
    with np.errstate(over="ignore"):
        r = x * np.uint64(k) - quotient * np.uint64(q)  # exact mod 2^64, and the true value lies in [0, 2q)
    return np.where(r >= np.uint64(q), r - np.uint64(q), r)


def _mod_limbs(limbs: Sequence[np.ndarray], q: int, offset: int) -> np.ndarray:
    """``(Σ_i limbs[i]·2^(64 i) − offset) mod q`` for uint64 limbs, least significant first (``q < 2^63``)."""
    qq = np.uint64(q)
    total = limbs[0] % qq
    for i, limb in enumerate(limbs[1:], start=1):
        total = total + _mulmod_const(limb, (1 << (64 * i)) % q, q)  # each < q < 2^63: no wrap
        total = np.where(total >= qq, total - qq, total)
    shift = np.uint64(offset % q)
    return np.where(total >= shift, total - shift, total + (qq - shift))


def add_to_c0(runtime: BFVRuntime, ct: Any, noise_rns: np.ndarray) -> None:
    """``c0 += noise`` coefficient-wise, in place, on a coefficient-form BFV ciphertext.

    Adds to ``c0 + c1·s = Δ·m + v`` exactly the noise polynomial: the message is
    unchanged while ``|v + noise| < Δ/2``. SEAL's Python binding gives no write
    access to coefficients, so the noise is loaded as the data of a ciphertext
    ``(noise, 0)`` with ``ct``'s parameters (SEAL's own uncompressed array format)
    and added with SEAL's evaluator, which reduces mod each prime.
    """
    level = runtime.level_of(ct)
    k, n = len(runtime.moduli[level]), int(ct.poly_modulus_degree())
    if ct.is_ntt_form() or ct.size() != 2 or int(ct.coeff_modulus_size()) != k or noise_rns.shape != (k, n):
        raise CryptoError("flooding needs a two-polynomial coefficient-form ciphertext matching the noise's moduli")
    flood = ciphertext_from_polynomials(runtime, np.stack([noise_rns, np.zeros_like(noise_rns)]), level)
    runtime.evaluator.add_inplace(ct, flood)


def ciphertext_polynomials(runtime: BFVRuntime, ct: Any) -> np.ndarray:
    """A coefficient-form ciphertext's ``(c0, c1)`` as uint64 ``(2, primes, N)``: its RNS residues, read back from SEAL's own array format."""
    if ct.is_ntt_form() or ct.size() != 2:
        raise CryptoError("only a two-polynomial coefficient-form ciphertext can be read as polynomials")
    blob = runtime._io.save(ct.dyn_array().save)
    magic, size, _, _, mode, _, total = struct.unpack("<HBBBBHQ", blob[:16])
    if magic != _SEAL_MAGIC or size != 16 or total != len(blob):
        raise CryptoError("unexpected SEAL array serialisation")
    body = blob[16:]
    if mode == 1:
        body = zlib.decompress(body)
    elif mode == 2:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=8 + 8 * ct.dyn_array().size())
    elif mode != 0:
        raise CryptoError(f"SEAL array compressed with unknown mode {mode}")
    k, n = int(ct.coeff_modulus_size()), int(ct.poly_modulus_degree())
    (count,) = struct.unpack("<Q", body[:8])
    if count != 2 * k * n or len(body) != 8 + 8 * count:
        raise CryptoError("SEAL array holds a different number of coefficients than the ciphertext")
    return np.frombuffer(body, dtype="<u8", offset=8).astype(np.uint64).reshape(2, k, n)


def ciphertext_from_polynomials(runtime: BFVRuntime, polys: np.ndarray, level: int) -> Any:
    """The coefficient-form ciphertext ``(c0, c1)`` at ``level`` from uint64 ``(2, primes, N)`` residues, each checked below its prime."""
    moduli = np.asarray(runtime.moduli[level], dtype=np.uint64)
    k, n = moduli.size, int(runtime.slots)
    data = np.asarray(polys)
    if data.dtype != np.uint64 or data.shape != (2, k, n):
        raise CryptoError(f"a ciphertext at level {level} needs (2, {k}, {n}) uint64 residues")
    if np.any(data >= moduli[None, :, None]):
        raise CryptoError("ciphertext residues are not reduced mod the level's primes")
    ct = sa.Ciphertext(runtime.seal, runtime.parms_ids[level])
    ct.resize(runtime.seal, runtime.parms_ids[level], 2)  # (0, 0) at the level, coefficient form
    runtime._io.load(_seal_array(data.ravel()), ct.dyn_array().load)
    return ct


def _seal_array(data: np.ndarray) -> bytes:
    """uint64 values in SEAL's own uncompressed ``DynArray`` serialisation."""
    body = struct.pack("<Q", data.size) + data.astype("<u8").tobytes()
    return struct.pack("<HBBBBHQ", _SEAL_MAGIC, 16, _SEAL_VERSION[0], _SEAL_VERSION[1], 0, 0, 16 + len(body)) + body


def coefficient_plaintext(runtime: BFVRuntime, coeffs: np.ndarray) -> Any:
    """A plaintext whose polynomial has exactly ``coeffs`` (uint64, each below ``t``) as coefficients.

    Coefficient packing, not batching: products of such plaintexts with ciphertexts
    are polynomial products. Loaded as SEAL's own array format, as :func:`add_to_c0` does.
    """
    data = np.asarray(coeffs)
    n = int(runtime.seal.first_context_data().parms().poly_modulus_degree())
    if data.dtype != np.uint64 or data.shape != (n,):
        raise CryptoError(f"a coefficient plaintext needs {n} uint64 coefficients")
    if np.any(data >= np.uint64(runtime.plain_modulus)):
        raise CryptoError("plaintext coefficients are not reduced mod t")
    pt = sa.Plaintext(n)
    runtime._io.load(_seal_array(data), pt.dyn_array().load)
    return pt


def _seal_version() -> tuple[int, int]:
    """SEAL's serialisation version, read from a header SEAL itself writes."""
    blob = ByteBridge().save(sa.DynArray(1).save)
    magic, size, major, minor = struct.unpack("<HBBB", blob[:5])
    if magic != _SEAL_MAGIC or size != 16:
        raise CryptoError("unexpected SEAL serialisation header")
    return major, minor


_SEAL_MAGIC = 0xA15E
_SEAL_VERSION = _seal_version()
