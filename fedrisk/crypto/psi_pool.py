"""Worker pool for the CPU-bound part of PSI: hashing IDs to Curve25519 and X25519 blinding.

Hashing an ID (RFC 9380 hash-to-curve, :mod:`fedrisk.crypto.psi_group`) costs about as
much as an X25519 (about 30 us each here), and a PSI run needs, per own ID, one hash and
one blinding, plus one blinding per peer ID, so a party spreads the work over its cores.
:class:`BlindingPool` cuts a batch into chunks of raw bytes (IDs joined into one blob
with a length table; points as concatenated 32-byte strings) and maps them over a
``ProcessPoolExecutor``. Workers get the 32 raw bytes of the party's per-run scalar with
each chunk and rebuild the key; nothing but ``bytes`` and tuples of ``bytes``/``int``
crosses the process boundary. That is the standard library's IPC inside one party's own
pool, never a message from another party.

The hashed points of an ID set do not depend on the run (the hash's tag is fixed per
protocol version; privacy comes from the per-run scalar), so the pool keeps the hashed
points of the last few ID sets it saw (:attr:`BlindingPool.cache_entries`, keyed by a
SHA-256 of the tag and the IDs): a warm party process that aligns the same table again
pays one X25519 per ID and no hashing. The cache holds the party's own hashes in its
own memory and is never sent anywhere.

The label holder's *blinded* set is cached too, on disk and per key epoch, by
:class:`~fedrisk.crypto.psi_cache.LabelHolderKeyCache` (not here: this cache is
keyless). Each batch says where its points come from (``own`` hashed IDs, a peer's
points whose results are ``kept``, or ``returned`` to the peer), which decides whether
the optional multi-buffer X25519 (:mod:`fedrisk.crypto.psi_x25519`) may run it.
:attr:`BlindingPool.operations` counts the IDs hashed and the X25519 operations done.

Workers are started with the ``spawn`` method: it is safe in processes that already run
threads (gRPC, Flower), and a worker imports only :mod:`fedrisk.crypto.psi_group`
(``cryptography``, ``hashlib``, ``numpy``, ``gmpy2``). Small batches run inline, so tests and
small federations never pay the start-up (about half a second for two workers).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fedrisk.crypto.psi_group import POINT_SIZE, blind_points_blob, hash_ids_to_u
from fedrisk.errors import CryptoError

__all__ = ["BlindingPool", "shared_pool"]

#: Batches smaller than this run in the calling process.
DEFAULT_MIN_PARALLEL = 16_384

#: Hashed-point cache: at most this many ID sets and this many bytes of points.
DEFAULT_CACHE_ENTRIES = 4
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


def _hash_and_blind_chunk(scalar: bytes, domain: bytes, blob: bytes, lengths: bytes) -> tuple[bytes, bytes, int, float]:
    """Worker: split ``blob`` by ``lengths`` (uint32), hash each ID to the curve, blind by ``scalar``.

    Returns ``(hashed, blinded, bad)`` as :func:`~fedrisk.crypto.psi_group.blind_points_blob`
    does, plus the hashed points for the caller's cache.
    """
    start = time.process_time()
    points = hash_ids_to_u(domain, _split(blob, lengths)).tobytes()
    return (points, *blind_points_blob(scalar, points, "own"), time.process_time() - start)


def _blind_chunk(scalar: bytes, points: bytes, inputs: str = "returned") -> tuple[bytes, int, float]:
    """Worker: blind concatenated 32-byte points by ``scalar`` (``inputs``: see ``blind_points_blob``)."""
    start = time.process_time()
    return (*blind_points_blob(scalar, points, inputs), time.process_time() - start)


def _warm_worker(_: int) -> str:
    """Worker: load the X25519 backend (and its self-test) before the first real batch."""
    from fedrisk.crypto.psi_x25519 import backend_name

    return backend_name()


def _split(blob: bytes, lengths: bytes) -> list[bytes]:
    sizes = np.frombuffer(lengths, dtype="<u4")
    ends = np.cumsum(sizes, dtype=np.int64).tolist()
    starts = [0, *ends[:-1]]
    return [blob[s:e] for s, e in zip(starts, ends)]


class BlindingPool:
    """Hash-and-blind and blind batches of points, over worker processes when it pays.

    Parameters
    ----------
    workers
        Number of worker processes; ``None`` uses ``os.cpu_count()``. ``1`` runs
        everything in the calling process.
    min_parallel
        Batches with fewer items run inline.
    cache_entries, cache_bytes
        Keep the hashed points of up to this many ID sets (least recently used first
        out) and this many bytes in all; ``0`` turns the cache off.

    Notes
    -----
    The executor starts lazily on the first large batch and lives until :meth:`close`
    (or interpreter exit). Use one pool per party process and keep it warm across runs.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        min_parallel: int = DEFAULT_MIN_PARALLEL,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        count = (os.cpu_count() or 1) if workers is None else int(workers)
        if count < 1:
            raise CryptoError(f"BlindingPool needs at least 1 worker, got {workers}")
        self._workers = count
        self._min_parallel = max(1, int(min_parallel))
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[..., BlindingPool] | None = None
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_entries = max(0, int(cache_entries))
        self._cache_bytes = max(0, int(cache_bytes))
        self.cache_hits = 0
        self.cache_misses = 0
        #: Work done so far: IDs hashed to the curve and X25519 operations (for tests and benchmarks).
        self.operations = {"hashed": 0, "x25519": 0}
        #: CPU seconds the hashing and blinding took, summed over workers (a load-independent cost).
        self.cpu_seconds = 0.0

    @property
    def workers(self) -> int:
        """Number of worker processes the pool uses for large batches."""
        return self._workers

    @property
    def cache_entries(self) -> int:
        """Number of ID sets whose hashed points are cached."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget every cached hashed point."""
        with self._lock:
            self._cache.clear()

    def start(self) -> None:
        """Start the worker processes now (otherwise they start on the first large batch)."""
        if self._workers > 1:
            # A trivial task per worker, so that start-up is paid here, not in the first step.
            executor = self._ensure_executor()
            list(executor.map(_warm_worker, range(self._workers)))

    def close(self) -> None:
        """Stop the worker processes; the pool can still be used (it restarts on demand)."""
        with self._lock:
            executor, self._executor = self._executor, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlindingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(max_workers=self._workers, mp_context=context)
                self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
            return self._executor

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        # Eight chunks per worker keep the tail short when the machine is shared,
        # at a negligible per-task cost (a chunk is thousands of X25519 operations).
        count = max(1, min(self._workers * 8, n // 2048))
        bounds = np.linspace(0, n, count + 1).astype(np.int64).tolist()
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def _parallel(self, n: int) -> bool:
        return self._workers > 1 and n >= self._min_parallel

    # ------------------------------------------------------------------ cache

    def _cache_get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            return hit

    def _cache_put(self, key: bytes, points: np.ndarray) -> None:
        if not self._cache_entries or points.nbytes > self._cache_bytes:
            return
        points = points.copy()
        points.flags.writeable = False
        with self._lock:
            self._cache[key] = points
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries or sum(v.nbytes for v in self._cache.values()) > self._cache_bytes:
                self._cache.popitem(last=False)

    # ------------------------------------------------------------------ work

    def hash_and_blind(self, scalar: bytes, domain: bytes, identifiers: Sequence[bytes]) -> np.ndarray:
        """Compute ``X25519(scalar, H(id))`` for every ID.

        Parameters
        ----------
        scalar
            32-byte secret scalar.
        domain
            RFC 9380 domain-separation tag of the hash (:data:`fedrisk.crypto.psi_group.DST`).
        identifiers
            Non-empty ID bytes.

        Returns
        -------
        numpy.ndarray
            ``(n, 32)`` uint8 array in input order.
        """
        n = len(identifiers)
        lengths = _lengths(identifiers)
        blob = b"".join(identifiers)
        key = _set_key(domain, lengths, blob)
        cached = self._cache_get(key)
        if cached is not None:
            return self.blind(scalar, cached, inputs="own")
        self.operations["hashed"] += n
        self.operations["x25519"] += n
        if not self._parallel(n):
            hashed, blinded, bad, cpu = _hash_and_blind_chunk(scalar, domain, blob, lengths)
            self.cpu_seconds += cpu
            out = _check(blinded, bad, 0)
            self._cache_put(key, np.frombuffer(hashed, dtype=np.uint8).reshape(-1, POINT_SIZE))
            return out
        executor = self._ensure_executor()
        parts = self._chunks(n)
        offsets = np.concatenate([[0], np.cumsum(np.frombuffer(lengths, dtype="<u4"), dtype=np.int64)]).tolist()
        futures = [executor.submit(_hash_and_blind_chunk, scalar, domain, blob[offsets[a] : offsets[b]], lengths[4 * a : 4 * b]) for a, b in parts]
        results = [f.result() for f in futures]
        self.cpu_seconds += sum(r[3] for r in results)
        out = np.concatenate([_check(blinded, bad, a) for (_, blinded, bad, _), (a, _) in zip(results, parts)])
        self._cache_put(key, np.frombuffer(b"".join(r[0] for r in results), dtype=np.uint8).reshape(-1, POINT_SIZE))
        return out

    def blind(self, scalar: bytes, points: np.ndarray, *, inputs: str = "returned") -> np.ndarray:
        """Compute ``X25519(scalar, u)`` for every row of an ``(n, 32)`` uint8 array.

        ``inputs``: ``"own"`` (the party's own hashed points), ``"kept"`` (a peer's points,
        results kept by this party) or ``"returned"`` (a peer's points, results sent back
        to it; the default): which X25519 backend may run them
        (:func:`fedrisk.crypto.psi_x25519.admits`).

        Raises
        ------
        CryptoError
            If a point has low order; the message names its row.
        """
        points = np.ascontiguousarray(points, dtype=np.uint8)
        if points.ndim != 2 or points.shape[1] != POINT_SIZE:
            raise CryptoError(f"points must be an (n, 32) uint8 array, got shape {points.shape}")
        n = points.shape[0]
        self.operations["x25519"] += n
        if not self._parallel(n):
            blob, bad, cpu = _blind_chunk(scalar, points.tobytes(), inputs)
            self.cpu_seconds += cpu
            return _check(blob, bad, 0)
        executor = self._ensure_executor()
        parts = self._chunks(n)
        futures = [executor.submit(_blind_chunk, scalar, points[a:b].tobytes(), inputs) for a, b in parts]
        results = [f.result() for f in futures]
        self.cpu_seconds += sum(r[2] for r in results)
        return np.concatenate([_check(blob, bad, a) for (blob, bad, _), (a, _) in zip(results, parts)])


def _set_key(domain: bytes, lengths: bytes, blob: bytes) -> bytes:
    h = hashlib.sha256(b"fedrisk/psi/hashed-set\x00")
    h.update(len(domain).to_bytes(2, "big") + domain)
    h.update(len(lengths).to_bytes(8, "big") + lengths)
    h.update(blob)
    return h.digest()


def _lengths(identifiers: Sequence[bytes]) -> bytes:
    return np.fromiter(map(len, identifiers), dtype="<u4", count=len(identifiers)).tobytes()


def _check(blob: bytes, bad: int, offset: int) -> np.ndarray:
    if bad >= 0:
        raise CryptoError(f"point at row {offset + bad} has low order (X25519 gave the all-zero value)")
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, POINT_SIZE)


_shared: BlindingPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> BlindingPool:
    """Return the process-wide default pool (one worker per core, started lazily)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BlindingPool()
        return _shared
