"""Worker pool for the CPU-bound part of PSI: hashing IDs and X25519 blinding.

X25519 costs about 30 us per point here, and a PSI run needs two per ID on each side,
so a party spreads the work over its cores. :class:`BlindingPool` cuts a batch into
chunks of raw bytes (IDs joined into one blob with a length table; points as
concatenated 32-byte strings) and maps them over a ``ProcessPoolExecutor``. Workers get
the 32 raw bytes of the party's per-run scalar with each chunk and rebuild the key;
nothing but ``bytes`` and tuples of ``bytes``/``int`` crosses the process boundary.
That is the standard library's IPC inside one party's own pool, never a message from
another party.

Workers are started with the ``spawn`` method: it is safe in processes that already run
threads (gRPC, Flower), and a worker imports only :mod:`fedrisk.crypto.psi_group`
(``cryptography``, ``hashlib``, ``numpy``). Small batches run inline, so tests and
small federations never pay the start-up (about half a second for two workers).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fedrisk.crypto.psi_group import POINT_SIZE, blind_points_blob, hash_ids_to_u
from fedrisk.errors import CryptoError

__all__ = ["BlindingPool", "shared_pool"]

#: Batches smaller than this run in the calling process.
DEFAULT_MIN_PARALLEL = 16_384


def _hash_and_blind_chunk(
    scalar: bytes, domain: bytes, blob: bytes, lengths: bytes
) -> tuple[bytes, int]:
    """Worker: split ``blob`` by ``lengths`` (uint32), hash each ID to u, blind by ``scalar``."""
    ids = _split(blob, lengths)
    points = hash_ids_to_u(domain, ids)
    return blind_points_blob(scalar, points.tobytes())


def _blind_chunk(scalar: bytes, points: bytes) -> tuple[bytes, int]:
    """Worker: blind concatenated 32-byte points by ``scalar``."""
    return blind_points_blob(scalar, points)


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

    Notes
    -----
    The executor starts lazily on the first large batch and lives until :meth:`close`
    (or interpreter exit). Use one pool per party process and keep it warm across runs.
    """

    def __init__(self, workers: int | None = None, *, min_parallel: int = DEFAULT_MIN_PARALLEL) -> None:
        count = (os.cpu_count() or 1) if workers is None else int(workers)
        if count < 1:
            raise CryptoError(f"BlindingPool needs at least 1 worker, got {workers}")
        self._workers = count
        self._min_parallel = max(1, int(min_parallel))
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    @property
    def workers(self) -> int:
        """Number of worker processes the pool uses for large batches."""
        return self._workers

    def start(self) -> None:
        """Start the worker processes now (otherwise they start on the first large batch)."""
        if self._workers > 1:
            # A trivial task per worker, so that start-up is paid here, not in the first step.
            executor = self._ensure_executor()
            list(executor.map(_blind_chunk, [b"\x01" * 32] * self._workers, [b""] * self._workers))

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

    def hash_and_blind(self, scalar: bytes, domain: bytes, identifiers: Sequence[bytes]) -> np.ndarray:
        """Compute ``X25519(scalar, H(id))`` for every ID.

        Parameters
        ----------
        scalar
            32-byte secret scalar.
        domain
            :func:`fedrisk.crypto.psi_group.hash_domain` of the run.
        identifiers
            Non-empty ID bytes.

        Returns
        -------
        numpy.ndarray
            ``(n, 32)`` uint8 array in input order.
        """
        n = len(identifiers)
        if not self._parallel(n):
            points = hash_ids_to_u(domain, identifiers)
            return _check(*blind_points_blob(scalar, points.tobytes()), 0)
        executor = self._ensure_executor()
        parts = self._chunks(n)
        futures = [
            executor.submit(
                _hash_and_blind_chunk,
                scalar,
                domain,
                b"".join(identifiers[a:b]),
                _lengths(identifiers[a:b]),
            )
            for a, b in parts
        ]
        return np.concatenate([_check(*f.result(), a) for f, (a, _) in zip(futures, parts)])

    def blind(self, scalar: bytes, points: np.ndarray) -> np.ndarray:
        """Compute ``X25519(scalar, u)`` for every row of an ``(n, 32)`` uint8 array.

        Raises
        ------
        CryptoError
            If a point has low order; the message names its row.
        """
        points = np.ascontiguousarray(points, dtype=np.uint8)
        if points.ndim != 2 or points.shape[1] != POINT_SIZE:
            raise CryptoError(f"points must be an (n, 32) uint8 array, got shape {points.shape}")
        n = points.shape[0]
        if not self._parallel(n):
            return _check(*_blind_chunk(scalar, points.tobytes()), 0)
        executor = self._ensure_executor()
        parts = self._chunks(n)
        futures = [executor.submit(_blind_chunk, scalar, points[a:b].tobytes()) for a, b in parts]
        return np.concatenate([_check(*f.result(), a) for f, (a, _) in zip(futures, parts)])


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
