"""Group primitives of fedrisk's ECDH-PSI: RFC 9380 hash-to-curve onto Curve25519, X25519 blinding.

This is the *hazmat* layer under :mod:`fedrisk.crypto.psi`. It knows nothing about
parties, messages or shuffling; use :class:`fedrisk.crypto.psi.LabelHolderPSI` and
:class:`fedrisk.crypto.psi.FeatureHolderPSI` unless you are building a new protocol.

Hash to the curve (:func:`hash_ids_to_u`)
-----------------------------------------
An ID is mapped to a point of Curve25519 (``v^2 = u^3 + A u^2 + u`` over
``F_p``, ``p = 2**255 - 19``, ``A = 486662``) with RFC 9380's random-oracle
suite ``curve25519_XMD:SHA-512_ELL2_RO_`` and the tag :data:`DST`::

    (u0, u1) = hash_to_field(id, 2)        expand_message_xmd(SHA-512), L = 48: 96 bytes,
                                           each half read big-endian mod p
    Q0 = map_to_curve_elligator2(u0)       Elligator 2, Z = 2 (RFC 9380 6.7.1 / G.2.1)
    Q1 = map_to_curve_elligator2(u1)
    R  = Q0 + Q1                           affine Montgomery addition
    P  = clear_cofactor(R) = 8 R           = RFC 9380 hash_to_curve(id)

``H(id)`` here is ``u(R)``, the u-coordinate of ``R``, 32 bytes little-endian. The
cofactor is cleared by the blinding itself: an X25519 scalar is *clamped* to
``k = 8 k'`` (bits 0-2 and 255 cleared, bit 254 set), so the first blinding gives
``X25519(k, u(R)) = u(8 k' R) = u(k' P)``: the blinded value is the RFC 9380 point
``P`` multiplied by the secret ``k'``. Both parties use the same ``H``, so
commutativity holds as before::

    X25519(b, X25519(a, u(R))) = u(a' b' 64 R) = X25519(a, X25519(b, u(R)))

:func:`hash_to_curve` is the RFC's algorithm line by line (with the straight-line
Elligator 2 of RFC 9380 Appendix G.2.1) and returns ``P``; the tests check it, and
the fast batch path, against the RFC's test vectors (Appendix J.4.1 for this suite,
J.4.2 for Elligator 2 alone, K.3 for ``expand_message_xmd`` with SHA-512).

Why the curve/twist bit is gone
-------------------------------
X25519 works on u-coordinates only, and a u-coordinate belongs either to
Curve25519 or to its quadratic twist, depending on whether ``u^3 + A u^2 + u`` is a
square mod ``p``; scalar multiplication never moves a point from one to the other.
Hashing raw SHA-512 output to ``u`` (fedrisk's PSI v1) put about half of all IDs on
the twist, and every blinded value carried that public, per-ID bit through single
and double blinding (a test measured 300 of 300). Elligator 2 outputs points *of the
curve* only (it picks ``x1`` or ``x2 = -x1 - A``, whichever makes the right-hand side
a square), and the sum of two curve points is a curve point; so every ``H(id)``, and
every blinded or double-blinded value, has quadratic character +1: there is no
per-ID bit left to read (``tests/test_psi.py`` computes it on the real messages).

What the blinding exponent hides
--------------------------------
``E(F_p) = Z/8 x Z/l`` (``l = 2**252 + 27742...``, prime). Modelling SHA-512 as a
random oracle, ``R = Q0 + Q1`` is indifferentiable from a uniform point of ``E(F_p)``
(RFC 9380, Section 10.1), so ``P = 8 R`` is a uniform element of the prime-order
subgroup ``G``, and so is every blinded value ``k' P``. A party sees ``k' P_i`` for the
peer's IDs under the peer's fresh secret ``k'`` (``2**251 <= k' < 2**252``, from the OS
CSPRNG): deciding whether one of them is ``k' H(z)`` for a guessed ``z``, or whether two
values from different runs come from the same ID, is the Decisional Diffie-Hellman
problem in ``G`` (about ``2**126`` work). What it does not hide, by design: how many
values there are, and which values are equal under the same pair of keys (the
double-blinded matches). Low-order points never occur for honest hashes
(probability ``~2**-249``); a low-order point *received* from a peer makes
:func:`blind_points` raise :class:`~fedrisk.errors.CryptoError`. A peer that sends
twist points learns nothing about the scalar either (Curve25519 is twist-secure: the
twist's large prime-order subgroup has order ``~2**253``); it only spoils its own matches.
Domain separation: the tag :data:`DST` is fixed per protocol version (RFC 9380
Section 3.1), not per run, because privacy comes from the fresh per-run scalars; this
lets a party keep its hashed points warm between runs
(:class:`~fedrisk.crypto.psi_pool.BlindingPool` caches them per ID set).

Cost
----
Per ID: three SHA-512 blocks, two modular exponentiations (one square root per
Elligator 2 call, about 10 us each with GMP: two thirds of the cost), and about 40
field multiplications; the inversions (one per Elligator 2 call, one per addition)
are batched with Montgomery's trick, three multiplications each. Measured here in
CPU time: 32 us per ID with ``gmpy2``, as much as one X25519 (34 us, OpenSSL through
``cryptography``); 230 us with plain Python integers (the fallback when ``gmpy2`` is
missing; same points). A warm party pays it once per ID set (the pool's cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedrisk.errors import CryptoError

try:  # GMP's modular exponentiation is ~10x Python's for 255-bit numbers
    import gmpy2 as _gmpy2
except ImportError:  # pragma: no cover - exercised only where gmpy2 is not installed
    _gmpy2 = None

__all__ = [
    "CURVE_A",
    "DST",
    "FIELD_PRIME",
    "HAVE_GMPY2",
    "LOW_ORDER_U",
    "POINT_SIZE",
    "SUITE",
    "blind_points",
    "blind_points_blob",
    "clear_cofactor",
    "expand_message_xmd",
    "hash_domain",
    "hash_ids_to_u",
    "hash_to_curve",
    "hash_to_field",
    "hash_to_u",
    "is_acceptable_u",
    "is_on_curve",
    "map_to_curve_elligator2",
    "point_add",
    "x25519",
]

#: Size in bytes of a u-coordinate (a "point" below).
POINT_SIZE = 32

#: ``p = 2**255 - 19``, the field of Curve25519.
FIELD_PRIME = 2**255 - 19

#: ``A`` (RFC 9380's ``J``) of Curve25519 ``v^2 = u^3 + A u^2 + u``; ``K = B = 1``.
CURVE_A = 486662

#: The RFC 9380 suite fedrisk hashes IDs with.
SUITE = "curve25519_XMD:SHA-512_ELL2_RO_"

#: Domain-separation tag of the ID hash (RFC 9380 Section 3.1: application, version, suite).
DST = b"FEDRISK-PSI-V02-CS01-with-" + SUITE.encode("ascii")

#: True when ``gmpy2`` is importable (fast path).
HAVE_GMPY2 = _gmpy2 is not None

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

_p = FIELD_PRIME
_L = 48  # ceil((255 + 128) / 8)
_SQRT_EXP = (_p + 3) // 8  # p = 5 (mod 8): a^((p+3)/8) is a square root of +-a
_C4 = (_p - 5) // 8  # RFC 9380 G.2.1, c4
_SQRT_M1 = pow(2, (_p - 1) // 4, _p)  # 2 is a non-square mod p, so this squares to -1
_C2 = pow(2, _SQRT_EXP, _p)  # RFC 9380 G.2.1, c2 = 2^c1 with c1 = (p + 3) / 8


def _num(value: int) -> Any:  # a gmpy2 mpz when gmpy2 is installed
    return _gmpy2.mpz(value) if _gmpy2 is not None else value


_P = _num(_p)
_J = _num(CURVE_A)
_MINUS_J = _num(_p - CURVE_A)
_E_SQRT = _num(_SQRT_EXP)
_I = _num(_SQRT_M1)
_C2N = _num(_C2)
_ONE = _num(1)


def _inverse(value: Any) -> Any:
    if _gmpy2 is not None:
        return _gmpy2.invert(value, _P)
    return pow(value, -1, _p)


# --------------------------------------------------------------------------- RFC 9380, reference


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 Section 5.3.1 ``expand_message_xmd`` with SHA-512.

    Raises
    ------
    CryptoError
        If ``dst`` is empty or longer than 255 bytes, or ``len_in_bytes`` is out of range.
    """
    b_in_bytes, s_in_bytes = 64, 128
    ell = -(-len_in_bytes // b_in_bytes)
    if not 1 <= len(dst) <= 255:
        raise CryptoError(f"hash-to-curve DST must be 1..255 bytes, got {len(dst)}")
    if ell > 255 or not 0 < len_in_bytes <= 65535:
        raise CryptoError(f"expand_message_xmd cannot produce {len_in_bytes} bytes")
    dst_prime = dst + bytes((len(dst),))
    msg_prime = bytes(s_in_bytes) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b_0 = hashlib.sha512(msg_prime).digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    for i in range(2, ell + 1):
        b_i = hashlib.sha512(bytes(x ^ y for x, y in zip(b_0, b_i)) + bytes((i,)) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:len_in_bytes]


def hash_to_field(msg: bytes, count: int = 2, dst: bytes = DST) -> list[int]:
    """RFC 9380 Section 5.2 ``hash_to_field`` for ``F_p`` (``m = 1``, ``L = 48``)."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [int.from_bytes(uniform[_L * i : _L * (i + 1)], "big") % _p for i in range(count)]


def _sgn0(x: int) -> int:
    return x % 2


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """RFC 9380 Appendix G.2.1 ``map_to_curve_elligator2_curve25519``, in affine coordinates.

    Returns
    -------
    (int, int)
        ``(x, y)`` on Curve25519 (``y^2 = x^3 + A x^2 + x``).
    """
    p, J = _p, CURVE_A
    tv1 = u * u % p
    tv1 = 2 * tv1 % p
    xd = (tv1 + 1) % p
    x1n = -J % p
    tv2 = xd * xd % p
    gxd = tv2 * xd % p
    gx1 = J * tv1 % p
    gx1 = gx1 * x1n % p
    gx1 = (gx1 + tv2) % p
    gx1 = gx1 * x1n % p
    tv3 = gxd * gxd % p
    tv2 = tv3 * tv3 % p
    tv3 = tv3 * gxd % p
    tv3 = tv3 * gx1 % p
    tv2 = tv2 * tv3 % p
    y11 = pow(tv2, _C4, p)
    y11 = y11 * tv3 % p
    y12 = y11 * _SQRT_M1 % p
    tv2 = y11 * y11 % p
    tv2 = tv2 * gxd % p
    e1 = tv2 == gx1
    y1 = y11 if e1 else y12
    x2n = x1n * tv1 % p
    y21 = y11 * u % p
    y21 = y21 * _C2 % p
    y22 = y21 * _SQRT_M1 % p
    gx2 = gx1 * tv1 % p
    tv2 = y21 * y21 % p
    tv2 = tv2 * gxd % p
    e2 = tv2 == gx2
    y2 = y21 if e2 else y22
    tv2 = y1 * y1 % p
    tv2 = tv2 * gxd % p
    e3 = tv2 == gx1
    xn = x1n if e3 else x2n
    y = y1 if e3 else y2
    e4 = _sgn0(y) == 1
    if e3 != e4:
        y = -y % p
    return xn * pow(xd, -1, p) % p, y


def is_on_curve(x: int, y: int) -> bool:
    """True when ``(x, y)`` satisfies ``y^2 = x^3 + A x^2 + x`` mod ``p``."""
    return (y * y - (x * x * x + CURVE_A * x * x + x)) % _p == 0


def point_add(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    """Add two affine points of Curve25519 (``None`` is the point at infinity)."""
    if a is None:
        return b
    if b is None:
        return a
    p = _p
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        lam = (3 * x1 * x1 + 2 * CURVE_A * x1 + 1) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - CURVE_A - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def clear_cofactor(point: tuple[int, int] | None) -> tuple[int, int] | None:
    """Multiply by ``h_eff = 8`` (three doublings)."""
    for _ in range(3):
        point = point_add(point, point)
    return point


def _hash_to_r(msg: bytes, dst: bytes) -> tuple[int, int] | None:
    u0, u1 = hash_to_field(msg, 2, dst)
    return point_add(map_to_curve_elligator2(u0), map_to_curve_elligator2(u1))


def hash_to_curve(msg: bytes, dst: bytes = DST) -> tuple[int, int] | None:
    """RFC 9380 ``hash_to_curve`` for ``curve25519_XMD:SHA-512_ELL2_RO_``: the point ``P``.

    The reference path (pure Python, one ID at a time); :func:`hash_ids_to_u` is the
    batched path fedrisk runs, and returns ``u(R)`` with ``P = 8 R``.
    """
    return clear_cofactor(_hash_to_r(msg, dst))


def hash_domain(run_id: str | None = None) -> bytes:
    """The hash's domain-separation tag: :data:`DST`, the same for every run.

    PSI v1 bound the run id into the hash; v2 does not (privacy comes from the per-run
    scalars, and a fixed tag lets a party cache its hashed points). ``run_id``, if
    given, is only checked (1..1024 UTF-8 bytes), so v1 callers get the v2 tag.
    """
    if run_id is not None:
        raw = run_id.encode("utf-8")
        if not 1 <= len(raw) <= 1024:
            raise CryptoError(f"PSI run id must be 1..1024 UTF-8 bytes, got {len(raw)}")
    return DST


def hash_to_u(dst: bytes, identifier: bytes) -> bytes:
    """``u(R)`` of one ID, 32 bytes little-endian (reference path; see the module docstring)."""
    point = _hash_to_r(identifier, dst)
    if point is None or point[0] in LOW_ORDER_U:
        raise CryptoError("ID hashes to a point of small order")  # probability ~2**-249
    return point[0].to_bytes(POINT_SIZE, "little")


# --------------------------------------------------------------------------- batched fast path


class _Expander:
    """``hash_to_field(msg, 2)`` for one DST, with the hash state after ``Z_pad`` precomputed."""

    def __init__(self, dst: bytes) -> None:
        if not 1 <= len(dst) <= 255:
            raise CryptoError(f"hash-to-curve DST must be 1..255 bytes, got {len(dst)}")
        dst_prime = dst + bytes((len(dst),))
        self.zpad = hashlib.sha512(bytes(128))
        self.tail0 = (2 * _L).to_bytes(2, "big") + b"\x00" + dst_prime
        self.tail1 = b"\x01" + dst_prime
        self.tail2 = b"\x02" + dst_prime

    def fields(self, identifiers: Sequence[bytes]) -> tuple[list[Any], list[Any]]:
        zpad, tail0, tail1, tail2 = self.zpad, self.tail0, self.tail1, self.tail2
        sha512, from_bytes, num, p = hashlib.sha512, int.from_bytes, _num, _p
        u0s, u1s = [], []
        for msg in identifiers:
            h = zpad.copy()
            h.update(msg)
            h.update(tail0)
            b0 = h.digest()
            b1 = sha512(b0 + tail1).digest()
            b2 = sha512((from_bytes(b0, "big") ^ from_bytes(b1, "big")).to_bytes(64, "big") + tail2).digest()
            u0s.append(num(from_bytes(b1[:_L], "big") % p))
            u1s.append(num(from_bytes(b1[_L:] + b2[: 2 * _L - 64], "big") % p))
        return u0s, u1s


_EXPANDERS: dict[bytes, _Expander] = {}


def _expander(dst: bytes) -> _Expander:
    exp = _EXPANDERS.get(dst)
    if exp is None:
        exp = _EXPANDERS[dst] = _Expander(dst)
    return exp


def _batch_invert(values: list[Any]) -> list[Any]:
    """Montgomery's trick: all inverses for one inversion and 3 multiplications each (no zeros)."""
    P = _P
    prefix = []
    acc = _ONE
    for v in values:
        prefix.append(acc)
        acc = acc * v % P
    inv = _inverse(acc)
    out = [None] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % P
        inv = inv * values[i] % P
    return out


def _elligator2_batch(us: list[Any]) -> tuple[list[Any], list[Any]]:
    """RFC 9380 Section 6.7.1 Elligator 2 (Z = 2) for many ``u``: affine ``(x, y)`` lists.

    Same output as :func:`map_to_curve_elligator2` (the straight-line version): ``x1 =
    -A / (1 + 2 u^2)``; if ``g(x1)`` is square, ``x = x1`` and ``y`` its root with
    ``sgn0(y) = 1``; else ``x = -x1 - A`` and ``y = sqrt(2 u^2 g(x1))`` with ``sgn0(y) = 0``.
    """
    P, J, MJ, E, I, C2 = _P, _J, _MINUS_J, _E_SQRT, _I, _C2N
    ts = [(u * u << 1) % P for u in us]  # 2 u^2
    invs = _batch_invert([t + 1 for t in ts])  # 1 + 2 u^2 != 0: -1/2 is not a square mod p
    xs, ys = [], []
    for u, t, inv in zip(us, ts, invs):
        x = MJ * inv % P
        g = x * (x * (x + J) + 1) % P
        r = pow(g, E, P)  # r^2 = g * g^((p-1)/4), a 4th root of unity times g
        r2 = r * r % P
        if r2 == g:
            y, square = r, 1
        elif r2 + g == P:
            y, square = r * I % P, 1
        else:  # g(x1) is not a square, so g(x2) = 2 u^2 g(x1) is
            x = (MJ - x) % P
            g = g * t % P
            y = u * C2 % P * r % P  # y^2 = g * (2 g(x1))^((p-1)/4) = +-g
            if y * y % P != g:
                y = y * I % P
            square = 0
        if (y & 1) != square:
            y = (P - y) % P
        xs.append(x)
        ys.append(y)
    return xs, ys


def hash_ids_to_u(dst: bytes, identifiers: Sequence[bytes]) -> np.ndarray:
    """Hash many IDs to Curve25519: row ``i`` is ``u(R)`` of ``identifiers[i]`` (see the module docstring).

    Parameters
    ----------
    dst
        RFC 9380 domain-separation tag, 1..255 bytes (:data:`DST` for fedrisk's PSI).
    identifiers
        ID bytes (UTF-8 for text IDs).

    Returns
    -------
    numpy.ndarray
        ``(n, 32)`` uint8 array of little-endian u-coordinates, each of a point of
        Curve25519 (never the twist), canonical and not of small order.
    """
    n = len(identifiers)
    if n == 0:
        return np.empty((0, POINT_SIZE), dtype=np.uint8)
    u0s, u1s = _expander(dst).fields(identifiers)
    x0s, y0s = _elligator2_batch(u0s)
    x1s, y1s = _elligator2_batch(u1s)
    P, J = _P, _J
    dxs = [(b - a) % P for a, b in zip(x0s, x1s)]
    equal = [i for i, d in enumerate(dxs) if not d]  # Q0 = +-Q1: probability ~2**-254
    for i in equal:
        dxs[i] = _ONE
    inv = _batch_invert(dxs)
    out = bytearray(POINT_SIZE * n)
    for i in range(n):
        lam = (y1s[i] - y0s[i]) * inv[i] % P
        x = (lam * lam - J - x0s[i] - x1s[i]) % P
        out[POINT_SIZE * i : POINT_SIZE * (i + 1)] = int(x).to_bytes(POINT_SIZE, "little")
    for i in equal:
        point = point_add((int(x0s[i]), int(y0s[i])), (int(x1s[i]), int(y1s[i])))
        out[POINT_SIZE * i : POINT_SIZE * (i + 1)] = bytes(POINT_SIZE) if point is None else point[0].to_bytes(POINT_SIZE, "little")
    arr = np.frombuffer(bytes(out), dtype=np.uint8).reshape(n, POINT_SIZE)
    # Small order (R of order dividing 8, or R at infinity) has probability ~2**-249 per ID.
    low = _LOW_ORDER_LOW64
    for i in np.flatnonzero(np.isin(arr.view("<u8")[:, 0], low)).tolist():
        if int.from_bytes(arr[i].tobytes(), "little") in LOW_ORDER_U:
            raise CryptoError(f"ID at row {i} hashes to a point of small order")
    return arr


_LOW_ORDER_LOW64 = np.array(sorted({v & ((1 << 64) - 1) for v in LOW_ORDER_U}), dtype="<u8")


# --------------------------------------------------------------------------- X25519


def is_acceptable_u(u: bytes) -> bool:
    """Tell whether a 32-byte u-coordinate is canonical, has bit 255 clear and is not of low order."""
    if len(u) != POINT_SIZE or u[31] & 0x80:
        return False
    value = int.from_bytes(u, "little")
    return value < FIELD_PRIME and value not in LOW_ORDER_U


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


def blind_points_blob(scalar: bytes, points: bytes, inputs: str = "returned") -> tuple[bytes, int]:
    """Multiply every 32-byte point of a concatenation by ``scalar``.

    Returns the concatenated results and ``-1``, or ``(b"", i)`` where ``i`` is the
    first point of low order. Worker processes call this; it raises nothing on data.
    ``inputs`` says where the points come from and where the results go (``"own"``:
    the party's own hashed IDs; ``"kept"``: a peer's points whose results stay with this
    party; ``"returned"``: a peer's points whose results go back to that peer). Intel's
    multi-buffer X25519, when that optional extra is installed, is used only for the
    kinds its policy admits (:mod:`fedrisk.crypto.psi_x25519`); everything else runs on
    ``cryptography``.
    """
    if len(points) >= 64:
        from fedrisk.crypto.psi_x25519 import admits, blind_blob_mb8

        if admits(inputs):
            fast = blind_blob_mb8(scalar, points, blind_points_blob_openssl)
            if fast is not None:
                return fast
    return blind_points_blob_openssl(scalar, points)


def blind_points_blob_openssl(scalar: bytes, points: bytes) -> tuple[bytes, int]:
    """:func:`blind_points_blob` on ``cryptography`` (OpenSSL) only, one point at a time."""
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
