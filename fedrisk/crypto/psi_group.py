"""Raw group primitives of fedrisk's ECDH-PSI: hashing IDs to X25519 u-coordinates, blinding.

This is the *hazmat* layer under :mod:`fedrisk.crypto.psi`. It knows nothing about
parties, messages or shuffling; use :class:`fedrisk.crypto.psi.LabelHolderPSI` and
:class:`fedrisk.crypto.psi.FeatureHolderPSI` unless you are building a new protocol.

The group operation
-------------------
``x25519(k, u)`` is RFC 7748's X25519 function, computed by OpenSSL through
``cryptography``'s ``X25519PrivateKey.exchange``: the scalar ``k`` is *clamped*
(bits 0, 1, 2 and 255 cleared, bit 254 set, so ``k = 8 * k'`` with
``2**251 <= k' < 2**252``) and ``u`` is read as a little-endian integer with bit 255
masked. The Montgomery ladder works on u-coordinates only, and it is the same
computation whether ``u`` belongs to Curve25519 or to its quadratic twist, so::

    x25519(b, x25519(a, u)) == x25519(a, x25519(b, u))          (commutativity)

holds for every ``u`` whose result is not the point at infinity: both sides are
``x(a*b*P)`` for the point ``P`` (on the curve or the twist) with ``x(P) = u``.

Hash to group (:func:`hash_to_u`)
---------------------------------
RFC 9380 defines ``curve25519_XMD:SHA-512_ELL2_RO_`` (Elligator 2), but no maintained,
fast wheel on PyPI offers it in a form that composes with ``cryptography``'s X25519.
Checked: PyNaCl 1.6.2 exposes libsodium's ``crypto_core_ed25519_from_uniform`` (an
Elligator 2 *encoding* onto edwards25519, not RFC 9380's hash_to_curve, 22 us a call
here, and its Ed25519 scalar multiplication takes 74 us); rbcl 1.1.2 exposes
ristretto255 ``from_hash`` (RFC 9496, 14 us) with a 42 us scalar multiplication;
pysodium needs a system libsodium; pycryptodome's Curve25519 is 220 us per
multiplication. OpenSSL's X25519 through ``cryptography`` costs about 30 us. Elligator
2 in pure Python needs a 255-bit modular exponentiation per ID (about 100 us here).
So an ID is mapped straight to a u-coordinate::

    msg  = DST || I2OSP(len(run_id), 2) || run_id || id || I2OSP(ctr, 1)
    u    = SHA-512(msg)[0:32] with bit 255 cleared                 (little endian)
    DST  = b"fedrisk/psi/x25519-u/v1" || 0x00

with ``ctr = 0``, increased while ``u`` is rejected (below). The prefix has a fixed
length for a run and the counter a fixed width, so ``msg`` decodes to exactly one
``(run_id, id, ctr)``: no two inputs of a run or of two runs share a hash input.

* **Bit 255.** RFC 7748 decoding ignores bit 255 of ``u``, so two digests differing
  only there would be the same group element. We clear it ourselves, so the map is
  explicitly onto ``[0, 2**255)``.
* **Non-canonical values.** ``u`` in ``[p, 2**255)`` (19 values, ``p = 2**255 - 19``)
  would alias ``u - p``. They are rejected (probability ``2**-250.7``).
* **Low order.** Five canonical u-coordinates (:data:`LOW_ORDER_U`: 0, 1, ``p - 1`` and
  the two points of order 8) have order dividing 8; since a clamped scalar is a
  multiple of 8, X25519 maps them to 0 and ``exchange`` raises. They are rejected at
  hashing time (probability ``5 * 2**-255``), and a low-order point *received* from a
  peer makes :func:`blind_points` raise :class:`~fedrisk.errors.CryptoError`.
* **Curve or twist.** About half of all ``u`` are on Curve25519
  (``E(F_p) = Z/8 x Z/l``, ``l = 2**252 + 27742...``), the other half on its twist
  (``E'(F_p) = Z/4 x Z/l'``, ``l' = 2**253 - 55484...``), and 0 on both. The first
  blinding multiplies by a clamped ``k = 8 k'``, which removes the cofactor part: the
  result lies in the prime-order subgroup ``G`` (order ``l``) or ``G'`` (order ``l'``),
  never at infinity because ``k' < min(l, l')``. Modelling SHA-512 as a random oracle,
  ``8 * P_x`` is uniform on ``G`` (resp. ``4 * P_x`` on ``G'``), so ``H`` is a random
  oracle onto ``G u G'`` (up to the sign of ``y``, which x-only arithmetic never sees).
  Curve25519 was chosen to be *twist secure*: the best known attacks on discrete logs
  or Diffie-Hellman in ``G'`` cost about ``2**126``, as in ``G``. ECDH-PSI's privacy
  rests on DDH in the group that ``H`` lands in, so it holds in both.

  **What it costs compared with RFC 9380.** Scalar multiplication never moves a point
  between curve and twist, so every blinded value shows its "colour" (curve or twist,
  a Legendre symbol anyone can compute), which equals the colour of ``H(id)``: a
  public, pseudo-random bit of the ID. A receiver of a blinded set therefore learns
  the number of the sender's IDs whose colour is "curve". Subtracting the colours of
  the IDs it shares, it learns ``sum(colour(x))`` over the sender's IDs *outside* the
  intersection: at most ``log2(m + 1)`` bits about a set of ``m`` unknown IDs, and
  about whether one candidate ID belongs to it an advantage of order ``1/sqrt(m)``
  (one full bit when ``m = 1``). An Elligator 2 map, or try-and-increment until ``u``
  is on the curve, removes it at the price of a modular exponentiation per ID.
  :mod:`fedrisk.crypto.psi` documents where this matters.

Scalars
-------
A per-run secret is a fresh ``X25519PrivateKey``; its 32 raw bytes are what workers
receive (see :mod:`fedrisk.crypto.psi_pool`). Clamping happens inside OpenSSL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedrisk.errors import CryptoError

__all__ = [
    "FIELD_PRIME",
    "LOW_ORDER_U",
    "POINT_SIZE",
    "DST",
    "blind_points",
    "hash_domain",
    "hash_ids_to_u",
    "hash_to_u",
    "is_acceptable_u",
    "x25519",
]

#: Size in bytes of a u-coordinate (a "point" below).
POINT_SIZE = 32

#: ``p = 2**255 - 19``, the field of Curve25519.
FIELD_PRIME = 2**255 - 19

#: Canonical u-coordinates of order dividing 8 on Curve25519 or its twist: X25519 with
#: any clamped scalar maps them to 0.
LOW_ORDER_U: frozenset[int] = frozenset(
    {
        0,
        1,
        FIELD_PRIME - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)

#: Domain-separation tag of the ID hash (version 1).
DST = b"fedrisk/psi/x25519-u/v1\x00"

_MAX_COUNTER = 255
_MASK64 = (1 << 64) - 1
# Cheap vectorised pre-filters: the low 64 bits of every low-order value, and the top
# 64 bits that every u >= p shares (after clearing bit 255).
_LOW_ORDER_LOW64 = np.array(sorted({v & _MASK64 for v in LOW_ORDER_U}), dtype="<u8")
_NONCANONICAL_HIGH64 = (FIELD_PRIME >> 192) & _MASK64


def hash_domain(run_id: str) -> bytes:
    """Return the per-run prefix ``DST || I2OSP(len(run_id), 2) || run_id`` of the ID hash.

    Parameters
    ----------
    run_id
        The run's identifier, shared by all parties of one PSI run; 1..1024 UTF-8 bytes.

    Returns
    -------
    bytes
        The prefix to pass to :func:`hash_to_u` / :func:`hash_ids_to_u`.
    """
    raw = run_id.encode("utf-8")
    if not 1 <= len(raw) <= 1024:
        raise CryptoError(f"PSI run id must be 1..1024 UTF-8 bytes, got {len(raw)}")
    return DST + len(raw).to_bytes(2, "big") + raw


def is_acceptable_u(u: bytes) -> bool:
    """Tell whether a 32-byte u-coordinate is canonical, has bit 255 clear and is not of low order."""
    if len(u) != POINT_SIZE or u[31] & 0x80:
        return False
    value = int.from_bytes(u, "little")
    return value < FIELD_PRIME and value not in LOW_ORDER_U


def hash_to_u(domain: bytes, identifier: bytes) -> bytes:
    """Hash one ID to an acceptable X25519 u-coordinate (see the module docstring).

    Parameters
    ----------
    domain
        Output of :func:`hash_domain`.
    identifier
        The ID's bytes (UTF-8 for text IDs), non-empty.

    Returns
    -------
    bytes
        32 bytes, little endian, bit 255 clear, ``< p``, not of low order.
    """
    base = hashlib.sha512(domain)
    base.update(identifier)
    for ctr in range(_MAX_COUNTER + 1):
        h = base.copy()
        h.update(bytes((ctr,)))
        u = bytearray(h.digest()[:POINT_SIZE])
        u[31] &= 0x7F
        if is_acceptable_u(bytes(u)):
            return bytes(u)
    raise CryptoError("hash to X25519 u-coordinate found no acceptable value in 256 tries")


def hash_ids_to_u(domain: bytes, identifiers: Sequence[bytes]) -> np.ndarray:
    """Hash many IDs to u-coordinates; same output as :func:`hash_to_u` row by row.

    Parameters
    ----------
    domain
        Output of :func:`hash_domain`.
    identifiers
        ID bytes, each non-empty.

    Returns
    -------
    numpy.ndarray
        ``(n, 32)`` uint8 array, row ``i`` the u-coordinate of ``identifiers[i]``.
    """
    n = len(identifiers)
    base = hashlib.sha512(domain)
    zero = b"\x00"
    buf = bytearray(64 * n)
    for i, identifier in enumerate(identifiers):
        h = base.copy()
        h.update(identifier)
        h.update(zero)
        buf[64 * i : 64 * i + 64] = h.digest()
    out = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(n, 64)[:, :POINT_SIZE].copy()
    out[:, 31] &= 0x7F
    # Almost never true; the exact check (and the rehash with a counter) runs on the few
    # rows the 64-bit pre-filters flag.
    words = out.view("<u8")
    suspicious = np.isin(words[:, 0], _LOW_ORDER_LOW64) | (words[:, 3] == _NONCANONICAL_HIGH64)
    for i in np.flatnonzero(suspicious).tolist():
        if not is_acceptable_u(out[i].tobytes()):
            out[i] = np.frombuffer(hash_to_u(domain, identifiers[i]), dtype=np.uint8)
    return out


def _private_key(scalar: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(scalar)
    except ValueError:
        raise CryptoError(f"X25519 scalar must be 32 bytes, got {len(scalar)}") from None


def x25519(scalar: bytes, u: bytes) -> bytes:
    """Compute RFC 7748 ``X25519(scalar, u)``.

    Parameters
    ----------
    scalar
        32-byte secret scalar (clamped by X25519).
    u
        32-byte u-coordinate.

    Returns
    -------
    bytes
        The 32-byte u-coordinate of ``scalar * P``.

    Raises
    ------
    CryptoError
        If ``u`` has low order (the result would be the all-zero string) or a
        length other than 32.
    """
    key = _private_key(scalar)
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        raise CryptoError("X25519 input is not a 32-byte point of large order") from None


def blind_points_blob(scalar: bytes, points: bytes) -> tuple[bytes, int]:
    """Multiply every 32-byte point of a concatenation by ``scalar``.

    Returns the concatenated results and ``-1``, or ``(b"", i)`` where ``i`` is the
    first point of low order. Worker processes call this; it raises nothing on data.
    """
    key = _private_key(scalar)
    exchange = key.exchange
    load = X25519PublicKey.from_public_bytes
    out: list[bytes] = []
    append = out.append
    i = 0
    try:
        for i in range(len(points) // POINT_SIZE):
            append(exchange(load(points[POINT_SIZE * i : POINT_SIZE * i + POINT_SIZE])))
    except ValueError:
        return b"", i
    return b"".join(out), -1


def blind_points(scalar: bytes, points: np.ndarray) -> np.ndarray:
    """Multiply every row of an ``(n, 32)`` uint8 array of u-coordinates by ``scalar``.

    Parameters
    ----------
    scalar
        32-byte secret scalar.
    points
        ``(n, 32)`` uint8 array.

    Returns
    -------
    numpy.ndarray
        ``(n, 32)`` uint8 array of ``X25519(scalar, points[i])``.

    Raises
    ------
    CryptoError
        If a point has low order; the message names its row.
    """
    points = _as_points(points)
    blob, bad = blind_points_blob(scalar, points.tobytes())
    if bad >= 0:
        raise CryptoError(f"point at row {bad} has low order (X25519 gave the all-zero value)")
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, POINT_SIZE).copy()


def _as_points(points: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(points, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != POINT_SIZE:
        raise CryptoError(f"points must be an (n, 32) uint8 array, got shape {arr.shape}")
    return arr
