"""SEAL objects behind a TenSEAL context: the one context fingerprint, the byte bridge, the runtime base (hazmat).

Layering (as pyca/cryptography separates its recipes from ``hazmat``)
--------------------------------------------------------------------
* **Recipes** — :mod:`fedrisk.crypto.ckks`: the one CKKS context type
  (:class:`~fedrisk.crypto.ckks.KeyHolderContext` /
  :class:`~fedrisk.crypto.ckks.PublicContext`) with validated parameters and
  presets (``AGGREGATION`` for FedAvg, ``VERTICAL_LR`` for the vertical kernel),
  checked loading, public copies that never hold the secret key, and FedAvg's
  :class:`~fedrisk.crypto.ckks.EncryptedVector`. Models and parties build and
  load CKKS contexts only through it.
* **Hazmat** — this module, :mod:`fedrisk.crypto.encrypted_matvec` (vertical
  LR's ``X_k^T[[d]]``), :mod:`fedrisk.crypto.encrypted_histogram` and
  :mod:`fedrisk.crypto.bfv` (SecureBoost's exact BFV histograms),
  :mod:`fedrisk.crypto.frames` and :mod:`fedrisk.crypto.worker_pool`. Kernels
  take a recipes-layer context (or, for BFV, a raw TenSEAL context) and work on
  its raw TenSEAL/SEAL objects; range budgets are theirs to keep.

One fingerprint
---------------
:func:`context_fingerprint` is the only context id in fedrisk: 128 bits (32 hex
characters) of SHA-256 over a label, SEAL's encryption parameters and the
public key, for any TenSEAL context (CKKS or BFV). Galois and relinearisation
keys are left out (a key holder regenerates them on load), so the key holder's
context and every public copy share it and any other key differs. The recipes
layer's ``CKKSContext.fingerprint``, every payload and every frame carry it.

SEAL bridge
-----------
TenSEAL's Python API has no SIMD rotations by chosen steps, no NTT-form
products and no level control; ``tenseal.sealapi`` has them but only reads and
writes SEAL objects through file paths. :class:`ByteBridge` moves them through
an anonymous in-memory file, and :class:`SealRuntime` mirrors the public part of
a TenSEAL context (parameters, evaluator, public key, Galois keys) as SEAL
objects. The CKKS kernel (:class:`fedrisk.crypto.encrypted_matvec.CKKSRuntime`)
and the BFV histogram kernel (:class:`fedrisk.crypto.bfv.BFVRuntime`) build on
it; neither ever loads a secret key here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeAlias

import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.errors import CryptoError, ProtocolError

__all__ = [
    "ByteBridge",
    "ContextAnatomy",
    "HEContext",
    "SealRuntime",
    "context_anatomy",
    "read_varint",
    "context_fingerprint",
    "fingerprint_of_anatomy",
    "load_public_tenseal",
    "seal_context",
    "tenseal_of",
]


class WrapsTenSEAL(Protocol):
    """A recipes-layer context (:class:`fedrisk.crypto.ckks.CKKSContext`): it holds one TenSEAL context."""

    @property
    def tenseal_context(self) -> ts.Context: ...


HEContext: TypeAlias = "ts.Context | WrapsTenSEAL"
"""What the hazmat layer accepts: a recipes-layer context or a raw TenSEAL one (BFV)."""


def tenseal_of(context: HEContext) -> ts.Context:
    """The raw TenSEAL context of a recipes-layer context (a raw one is returned as is)."""
    return context if isinstance(context, ts.Context) else context.tenseal_context


# --------------------------------------------------------------------------- context anatomy
# A minimal protobuf reader for TenSEAL's context proto, to inspect bytes *before*
# handing them to TenSEAL (and to take the parts the fingerprint hashes).


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """One protobuf varint at ``pos``: ``(value, next position)``; a one-line :class:`CryptoError` if malformed."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CryptoError("malformed TenSEAL context bytes (bad varint)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def pb_fields(buf: memoryview) -> dict[int, list[Any]]:
    """Parse one protobuf message into ``{field_number: [values]}`` (zero-copy)."""
    fields: dict[int, list[Any]] = {}
    pos = 0
    n = len(buf)
    value: int | memoryview
    while pos < n:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CryptoError("malformed TenSEAL context bytes (field 0)")
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise CryptoError("malformed TenSEAL context bytes (truncated)")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > n:
                raise CryptoError("malformed TenSEAL context bytes (truncated)")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > n:
                raise CryptoError("malformed TenSEAL context bytes (truncated)")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CryptoError(f"malformed TenSEAL context bytes (wire type {wire})")
        fields.setdefault(number, []).append(value)
    return fields


def _pb_bytes(fields: dict[int, list[Any]], number: int) -> memoryview:
    values = fields.get(number)
    if not values:
        return memoryview(b"")
    value = values[-1]
    if not isinstance(value, memoryview):
        raise CryptoError("malformed TenSEAL context bytes (unexpected wire type)")
    return value


@dataclass(frozen=True)
class ContextAnatomy:
    """The parts of TenSEAL context bytes fedrisk checks (and the fingerprint hashes)."""

    encryption_parameters: bytes
    public_key: bytes
    has_secret_key: bool


def context_anatomy(tenseal_bytes: bytes) -> ContextAnatomy:
    """Split TenSEALContextProto bytes into the parts fedrisk checks."""
    top = pb_fields(memoryview(tenseal_bytes))
    public = pb_fields(_pb_bytes(top, 2))
    private = pb_fields(_pb_bytes(top, 3))
    return ContextAnatomy(
        encryption_parameters=bytes(_pb_bytes(top, 1)),
        public_key=bytes(_pb_bytes(public, 1)),
        has_secret_key=bool(_pb_bytes(private, 1)),
    )


_FP_LABEL = b"fedrisk/he-context-fingerprint/v2\x00"
_FP_BYTES = 16  # 128 bits, shown as 32 hex characters
_FP_CACHE: weakref.WeakKeyDictionary[ts.Context, str] = weakref.WeakKeyDictionary()


def fingerprint_of_anatomy(anatomy: ContextAnatomy) -> str:
    """The fingerprint of a context from its parsed bytes (see :func:`context_fingerprint`)."""
    if not anatomy.encryption_parameters or not anatomy.public_key:
        raise CryptoError("TenSEAL context has no public key; cannot fingerprint it")
    h = hashlib.sha256(_FP_LABEL)
    for part in (anatomy.encryption_parameters, anatomy.public_key):
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.digest()[:_FP_BYTES].hex()


def context_fingerprint(context: HEContext) -> str:
    """The 32-hex-digit (128-bit) fingerprint of a context, CKKS or BFV: fedrisk's one context id.

    SHA-256 over a label, SEAL's encryption parameters and the public key (not
    the Galois or relinearisation keys), truncated to 128 bits: identical for
    the key holder's secret context and every public copy made from it,
    different for any other key. Cached per TenSEAL context.
    """
    raw = tenseal_of(context)
    cached = _FP_CACHE.get(raw)
    if cached is None:
        blob = raw.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
        cached = fingerprint_of_anatomy(context_anatomy(blob))
        _FP_CACHE[raw] = cached
    return cached


def load_public_tenseal(blob: bytes) -> ts.Context:
    """A raw TenSEAL public context from bytes (SecureBoost's BFV context); refuses one that carries a secret key.

    CKKS contexts are loaded by the recipes layer instead
    (:meth:`fedrisk.crypto.ckks.PublicContext.from_bytes`).

    Raises
    ------
    ProtocolError
        The bytes are not a TenSEAL context.
    CryptoError
        They carry a secret key.
    """
    try:
        has_secret = context_anatomy(bytes(blob)).has_secret_key  # look before TenSEAL loads anything
    except CryptoError:
        raise ProtocolError("the context is not a valid TenSEAL context") from None
    if has_secret:
        raise CryptoError("refusing a context that carries a secret key")
    try:
        context = ts.context_from(bytes(blob))
    except Exception:  # TenSEAL raises bare ValueError/RuntimeError on garbage
        raise ProtocolError("the context is not a valid TenSEAL context") from None
    if context.is_private():
        raise CryptoError("refusing a context that carries a secret key")
    return context


class ByteBridge:
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
        self._finalizer = weakref.finalize(self, ByteBridge._cleanup, self._fd, self._tmpdir)

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


def seal_context(context: HEContext, scheme: Any, io: ByteBridge) -> Any:
    """The SEAL context of a TenSEAL context's parameters, checked to be of ``scheme`` and valid at 128 bits."""
    name = "CKKS" if scheme == sa.SCHEME_TYPE.CKKS else "BFV"
    context = tenseal_of(context)
    parms = sa.EncryptionParameters(scheme)
    io.load(io.save(context.seal_context().data.key_context_data().parms().save), parms.load)
    if parms.scheme() != scheme:
        raise CryptoError(f"expected a {name} context")
    seal = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not seal.parameters_set():
        raise CryptoError(f"{name} context parameters are not valid for SEAL")
    return seal


class SealRuntime:
    """The public SEAL objects of one TenSEAL context; subclasses fix the scheme.

    Attributes
    ----------
    fingerprint : str
    seal, evaluator
        SEAL context and evaluator.
    parms_ids, moduli : list
        Per level (0 = most primes): SEAL's parameter id and the primes.
    public_key
        SEAL public key, or None on a context without one.
    """

    scheme: ClassVar[Any]
    scheme_name: ClassVar[str]
    galois_purpose: ClassVar[str] = "rotations"
    _runtimes: ClassVar[weakref.WeakKeyDictionary[ts.Context, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._runtimes = weakref.WeakKeyDictionary()  # one cache per scheme

    def __init__(self, context: HEContext) -> None:
        context = tenseal_of(context)
        self.fingerprint = context_fingerprint(context)
        self._context_ref = weakref.ref(context)
        self._io = ByteBridge()
        self.seal = seal_context(context, self.scheme, self._io)
        self.evaluator = sa.Evaluator(self.seal)
        self.parms_ids: list[Any] = []
        self.moduli: list[list[int]] = []
        data = self.seal.first_context_data()
        while data is not None:
            self.parms_ids.append(data.parms_id())
            self.moduli.append([int(m.value()) for m in data.parms().coeff_modulus()])
            data = data.next_context_data()
        self.public_key: Any = None
        self._encryptor: Any = None
        if context.has_public_key():
            pk = sa.PublicKey()
            self._io.load(self._io.save(context.data.public_key().save), lambda p: pk.load(self.seal, p))
            self.public_key = pk
            self._encryptor = sa.Encryptor(self.seal, pk)
        # Galois keys kept seeded by fedrisk.crypto.bfv.keep_seeded_galois load at half the bytes
        self._seeded_galois: bytes | None = getattr(context, "_fedrisk_seeded_galois", None)
        self._has_galois = bool(context.has_galois_keys()) or self._seeded_galois is not None
        self._galois: Any = None

    @classmethod
    def for_context(cls, context: HEContext) -> Any:
        """Return the runtime cached for ``context`` (built on first use; a recipes-layer context is unwrapped)."""
        context = tenseal_of(context)
        runtime = cls._runtimes.get(context)
        if runtime is None:
            runtime = cls(context)
            cls._runtimes[context] = runtime
        return runtime

    @property
    def has_galois_keys(self) -> bool:
        return self._has_galois

    @property
    def galois_keys(self) -> Any:
        """SEAL Galois keys (loaded on first use)."""
        if self._galois is None:
            context = self._context_ref()
            if not self._has_galois or context is None:
                raise CryptoError(f"{self.scheme_name} context has no Galois keys; {self.galois_purpose}")
            keys = sa.GaloisKeys()
            try:
                if self._seeded_galois is not None:  # SEAL expands the seeds itself
                    self._io.load(self._seeded_galois, lambda p: keys.load(self.seal, p))
                else:
                    self._io.load(self._io.save(context.data.galois_keys().save), lambda p: keys.load(self.seal, p))
            except Exception as exc:  # SEAL raises ValueError/RuntimeError/IOError on bad bytes
                raise CryptoError(f"{self.scheme_name} Galois keys do not load under this context: {exc}") from None
            self._check_galois(keys)
            self._galois = keys
        return self._galois

    def _check_galois(self, keys: Any) -> None:
        """Refuse keys that lack what the kernel needs (subclasses)."""

    def level_of(self, ct: Any) -> int:
        """Index in :attr:`parms_ids` (0 = most primes) of a ciphertext's level."""
        pid = ct.parms_id()
        for i, cand in enumerate(self.parms_ids):
            if cand == pid:
                return i
        raise CryptoError(f"ciphertext is not at any level of this {self.scheme_name} context")
