"""Optional fast X25519 for PSI: Intel's multi-buffer ``mbx_x25519_mb8`` (8 lanes of AVX-512 IFMA).

fedrisk's PSI spends its online time in X25519 (:mod:`fedrisk.crypto.psi_cache`: ``|X| +
2 |Y|`` operations per run). ``cryptography`` (OpenSSL) computes one at a time, about
31 us here (libsodium's ``crypto_scalarmult`` measured the same). Intel's Cryptography
Primitives Library ships ``libcrypto_mb``, whose ``mbx_x25519_mb8`` computes eight RFC 7748
X25519 operations at once with AVX-512 IFMA: measured here (AMD EPYC, Zen 4) at about
7 us per operation from Python. It is an **optional extra**, never a dependency: install
the two wheels from PyPI that carry it and its runtime (about 170 MB)::

    pip install ipp-crypto intel-cmplr-lib-rt

Without them, on a CPU without AVX-512 IFMA (the self-test fails or the library reports
the function unsupported), or with ``FEDRISK_PSI_X25519=openssl``, everything runs on
``cryptography``. Nothing is compiled or downloaded at run time: the library is loaded
with ``ctypes`` from the installed wheels' ``lib`` folder (``sys.prefix/lib``) or from
``FEDRISK_CRYPTO_MB_DIR``. Traffic is unchanged: this is arithmetic inside a party's own
worker processes, so the coordinator relays and the ledger records exactly the same
messages (same sizes, same content classes).

Where it is used, and why not everywhere
----------------------------------------
Measured here (ipp-crypto 2026.2.0) against OpenSSL and an RFC 7748 reference ladder:
on uniformly random inputs the two agreed on every one of about 225,000 random points
compared (and the 1M x 1M benchmark's intersections are exact), but on some
*structured* inputs ``mbx_x25519_mb8`` returns a wrong value (e.g. ``u = 2^85 - 1``, ``u = p - 6 ... p - 1393``, and ``u = p - 1``, a low-order
point that OpenSSL rejects; ``tests/test_psi_x25519.py`` keeps these cases). A peer
can send such points on purpose, and a wrong scalar multiplication whose result goes
back to that peer is a fault it can study. So :func:`admits` takes the *origin of the
inputs* into account (``FEDRISK_PSI_X25519``, default ``auto``):

* ``own`` — the party's own IDs hashed to the curve (RFC 9380 random-oracle outputs: no
  one can steer them to a structured value): multi-buffer;
* ``kept`` — a peer's points whose results stay with this party (the label holder's
  double blinding: it only compares them and sends back a match bitmap; predicting a
  faulty value to make it match needs the secret scalar): multi-buffer;
* ``returned`` — a peer's points whose results go back to that peer (a feature holder
  double-blinding the label holder's set): OpenSSL, unless the operator sets
  ``FEDRISK_PSI_X25519=mb8-all`` (both parties honest-but-curious, as the threat model
  says; about twice as fast again).

Every input with bit 255 set or ``u >= 2^255 - 2^16`` (all non-canonical values, ``p - 1``
and the near-``p`` failures) goes to OpenSSL anyway, and an all-zero output is reported
as the low-order refusal OpenSSL gives.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["admits", "available", "backend_name", "blind_blob_mb8", "mode"]

_LANES = 8
_POINT = 32
_RUNTIME = ("libintlc.so.5", "libimf.so", "libsvml.so", "libirng.so")
_LIBRARY = ("libcrypto_mb.so.13", "libcrypto_mb.so")

_lock = threading.Lock()
_state: dict[str, object] = {}


def _candidate_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("FEDRISK_CRYPTO_MB_DIR")
    if env:
        dirs.append(Path(env))
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}:
        dirs.append(Path(prefix) / "lib")
    return dirs


_KINDS = {"auto": ("own", "kept"), "mb8-all": ("own", "kept", "returned"), "openssl": ()}


def mode() -> str:
    """The backend policy from ``FEDRISK_PSI_X25519``: ``auto`` (default), ``mb8-all`` or ``openssl``."""
    value = os.environ.get("FEDRISK_PSI_X25519", "auto").strip().lower() or "auto"
    if value in ("cryptography", "off", "0", "none"):
        return "openssl"
    return value if value in _KINDS else "auto"


def admits(inputs: str) -> bool:
    """True when points of this origin (``own``, ``kept``, ``returned``) may run on the multi-buffer backend."""
    return inputs in _KINDS[mode()] and available()


def _load() -> Any:  # a ctypes function pointer, or None
    if mode() == "openssl":
        return None
    for folder in _candidate_dirs():
        lib_path = next((folder / n for n in _LIBRARY if (folder / n).is_file()), None)
        if lib_path is None:
            continue
        try:
            for name in _RUNTIME:
                if (folder / name).is_file():
                    ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(str(lib_path))
            fn = lib.mbx_x25519_mb8
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        if _self_test(fn):
            return fn
    return None


def _run(fn: Any, scalar: bytes, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw multi-buffer call over ``points`` (a multiple of 8 rows): outputs and per-call status."""
    n = points.shape[0]
    out = np.empty_like(points)
    keys = np.frombuffer(scalar * _LANES, dtype=np.uint8).copy()
    key_ptrs = (np.arange(_LANES, dtype=np.uint64) * _POINT + np.uint64(keys.ctypes.data)).copy()
    rows = np.arange(n, dtype=np.uint64) * np.uint64(_POINT)
    in_ptrs = rows + np.uint64(points.ctypes.data)
    out_ptrs = rows + np.uint64(out.ctypes.data)
    kp, ip, op = key_ptrs.ctypes.data, in_ptrs.ctypes.data, out_ptrs.ctypes.data
    status = np.empty(n // _LANES, dtype=np.uint32)
    step = 8 * _LANES
    for i in range(n // _LANES):
        status[i] = fn(op + step * i, kp, ip + step * i)
    return out, status


def _self_test(fn: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        # RFC 7748 section 5.2, first vector
        k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
        u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
        want = bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        # Fifteen random points of large order (fresh public keys), beside the RFC vector.
        fresh = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(15)]
        points = np.vstack([np.frombuffer(p, dtype=np.uint8)[None, :] for p in (u, *fresh)])
        out, status = _run(fn, k, np.ascontiguousarray(points))
        if np.any(status != 0) or out[0].tobytes() != want:
            return False
        key = X25519PrivateKey.from_private_bytes(k)
        return all(key.exchange(X25519PublicKey.from_public_bytes(row.tobytes())) == got.tobytes() for row, got in zip(points, out))
    except Exception:  # any surprise: not this backend
        return False


def _fn() -> Any:
    with _lock:
        if "fn" not in _state:
            _state["fn"] = _load()
        return _state["fn"]


def available() -> bool:
    """True when the multi-buffer backend is installed, supported by this CPU and passed its self-test."""
    return _fn() is not None


def backend_name() -> str:
    """``"openssl"``, or ``"ipp-crypto-mb8:<kinds>"`` naming the input kinds it runs (see :func:`admits`)."""
    if not available():
        return "openssl"
    return "ipp-crypto-mb8:" + "+".join(_KINDS[mode()])


_P_TOP = np.frombuffer((2**255 - 19).to_bytes(32, "little"), dtype=np.uint8)


def _standard_rows(points: np.ndarray) -> np.ndarray:
    """Rows the multi-buffer backend may take: bit 255 clear and ``u < 2^255 - 2^16``.

    The excluded top range holds every non-canonical ``u >= p``, the low-order ``p - 1``
    and the near-``p`` values ``mbx_x25519_mb8`` gets wrong; a uniformly random point
    falls there with probability ``2^-239``.
    """
    top_clear = points[:, 31] < 0x80
    high = (points[:, 31] == 0x7F) & np.all(points[:, 2:31] == 0xFF, axis=1)
    rows: np.ndarray = top_clear & ~high
    return rows


def blind_blob_mb8(scalar: bytes, points: bytes, one_by_one: Callable[[bytes, bytes], tuple[bytes, int]]) -> tuple[bytes, int] | None:
    """``X25519(scalar, u)`` for every 32-byte point of ``points`` on the multi-buffer backend.

    Returns ``(blob, -1)`` or ``(b"", i)`` for the first low-order point, like
    :func:`fedrisk.crypto.psi_group.blind_points_blob`; ``None`` when the backend is
    unavailable (the caller then uses ``cryptography``). ``one_by_one`` computes the
    points this backend must not (:func:`fedrisk.crypto.psi_group.blind_points_blob_openssl`:
    the caller's reference implementation, so this module imports nothing above it).
    """
    fn = _fn()
    if fn is None:
        return None
    if len(scalar) != 32:
        return None
    arr = np.frombuffer(points, dtype=np.uint8).reshape(-1, _POINT)
    n = arr.shape[0]
    if n == 0:
        return b"", -1
    pad = (-n) % _LANES
    work = np.empty((n + pad, _POINT), dtype=np.uint8)
    work[:n] = arr
    work[n:] = np.frombuffer((9).to_bytes(32, "little"), dtype=np.uint8)
    out, status = _run(fn, scalar, work)
    out = out[:n]
    redo = ~_standard_rows(arr)
    if np.any(status != 0):
        redo |= np.repeat(status != 0, _LANES)[:n]
    if np.any(redo):
        for i in np.flatnonzero(redo).tolist():
            blob, bad = one_by_one(scalar, arr[i].tobytes())
            if bad >= 0:
                out[i] = 0
            else:
                out[i] = np.frombuffer(blob, dtype=np.uint8)
    zero = np.flatnonzero(~out.any(axis=1))
    if zero.size:
        return b"", int(zero[0])
    return out.tobytes(), -1
