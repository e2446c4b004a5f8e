"""SEAL objects behind a TenSEAL context: the byte bridge, the fingerprint, the runtime base (hazmat).

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
import tempfile
import threading
import weakref
from typing import Any, ClassVar

import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.errors import CryptoError

__all__ = ["ByteBridge", "SealRuntime", "context_fingerprint", "seal_context"]

_FP_CACHE: weakref.WeakKeyDictionary[ts.Context, str] = weakref.WeakKeyDictionary()


def context_fingerprint(context: ts.Context) -> str:
    """Return the 16-hex-digit fingerprint of a TenSEAL context (CKKS or BFV).

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


def seal_context(context: ts.Context, scheme: Any, io: ByteBridge) -> Any:
    """The SEAL context of a TenSEAL context's parameters, checked to be of ``scheme`` and valid at 128 bits."""
    name = "CKKS" if scheme == sa.SCHEME_TYPE.CKKS else "BFV"
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

    def __init__(self, context: ts.Context) -> None:
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
    def for_context(cls, context: ts.Context) -> Any:
        """Return the runtime cached for ``context`` (built on first use)."""
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
