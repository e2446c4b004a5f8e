"""The optional multi-buffer X25519 backend (fedrisk.crypto.psi_x25519) must never change a result.

Where it runs (the party's own hashed points; a peer's points whose results stay local)
it must equal OpenSSL on every input a peer can send; where its raw output is known to
be wrong (structured inputs), the policy keeps results that go back to a peer on OpenSSL.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fedrisk.crypto import psi_x25519
from fedrisk.crypto.psi_group import (
    FIELD_PRIME,
    LOW_ORDER_U,
    blind_points_blob,
    blind_points_blob_openssl,
    hash_ids_to_u,
)
from fedrisk.crypto.psi_pool import BlindingPool

needs_mb8 = pytest.mark.skipif(not psi_x25519.available(), reason="ipp-crypto multi-buffer X25519 not installed or unsupported")

#: Inputs on which raw mbx_x25519_mb8 was measured to differ from OpenSSL and RFC 7748 (2026.2.0).
STRUCTURED = [2**85 - 1, 2**86 - 1, 2**90 - 1, FIELD_PRIME - 6, FIELD_PRIME - 100, FIELD_PRIME - 1393, FIELD_PRIME - 1]


def _row(u: int) -> np.ndarray:
    return np.frombuffer((u % 2**256).to_bytes(32, "little"), dtype=np.uint8)


def _inputs(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    hashed = hash_ids_to_u(b"fedrisk-test", [f"ID{i}".encode() for i in range(n)])
    odd = rng.integers(0, 256, size=(24, 32), dtype=np.uint8)  # random 32-byte strings: twist, top bit, ...
    odd[0] = _row(FIELD_PRIME + 5)  # non-canonical, >= p
    odd[1] = _row(FIELD_PRIME - 2)
    odd[2, 31] |= 0x80
    odd[3] = _row(FIELD_PRIME - 700)
    odd[4] = _row(2**255 - 1)
    return np.vstack([hashed, odd]).tobytes()


@needs_mb8
@pytest.mark.parametrize("n", [1, 7, 8, 9, 61])
def test_mb8_equals_openssl_on_hashed_twist_and_noncanonical_points(n):
    scalar = os.urandom(32)
    points = _inputs(n, n)
    fast = psi_x25519.blind_blob_mb8(scalar, points, blind_points_blob_openssl)
    assert fast is not None
    assert fast == blind_points_blob_openssl(scalar, points)


@needs_mb8
@pytest.mark.parametrize("row", [0, 5, 8, 20])
def test_mb8_reports_the_first_low_order_point_like_openssl(row):
    scalar = os.urandom(32)
    arr = np.frombuffer(_inputs(30, 1), dtype=np.uint8).reshape(-1, 32)[:30].copy()
    low = sorted(LOW_ORDER_U)
    arr[row] = _row(low[row % len(low)])
    arr[row + 3] = _row(low[(row + 1) % len(low)])
    expected = blind_points_blob_openssl(scalar, arr.tobytes())
    assert expected == (b"", row)
    assert psi_x25519.blind_blob_mb8(scalar, arr.tobytes(), blind_points_blob_openssl) == expected
    for kind in ("own", "kept", "returned"):
        assert blind_points_blob(scalar, arr.tobytes(), kind) == expected


@needs_mb8
def test_p_minus_one_is_refused_as_low_order_on_every_path():
    scalar = os.urandom(32)
    arr = np.vstack([np.frombuffer(_inputs(9, 2), dtype=np.uint8).reshape(-1, 32)[:9], _row(FIELD_PRIME - 1)[None, :]])
    for kind in ("own", "kept", "returned"):
        assert blind_points_blob(scalar, arr.tobytes(), kind) == (b"", 9)


@needs_mb8
def test_results_returned_to_a_peer_never_use_the_raw_multibuffer_output():
    """Structured points (which a peer can send on purpose) are computed by OpenSSL on the returned path."""
    scalar = os.urandom(32)
    arr = np.vstack([_row(u) for u in STRUCTURED[:-1]] + [_row(9 + i) for i in range(9)])
    expected = blind_points_blob_openssl(scalar, arr.tobytes())
    assert psi_x25519.mode() == "auto" and not psi_x25519.admits("returned")
    assert blind_points_blob(scalar, arr.tobytes(), "returned") == expected
    pool = BlindingPool(workers=1)
    assert pool.blind(scalar, arr).tobytes() == expected[0]  # the default is "returned"


def test_backend_can_be_switched_off_and_falls_back():
    code = (
        "from fedrisk.crypto import psi_x25519 as m; from fedrisk.crypto.psi_group import blind_points_blob_openssl as f; "
        "print(m.backend_name(), m.blind_blob_mb8(bytes(32), bytes(64), f), m.admits('own'))"
    )
    env = {**os.environ, "FEDRISK_PSI_X25519": "openssl"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["openssl", "None", "False"]


@needs_mb8
def test_mb8_all_is_an_explicit_opt_in():
    code = "from fedrisk.crypto import psi_x25519 as m; print(m.mode(), m.admits('returned'), m.backend_name())"
    env = {**os.environ, "FEDRISK_PSI_X25519": "mb8-all"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["mb8-all", "True", "ipp-crypto-mb8:own+kept+returned"]


def test_dispatch_gives_openssl_results_whatever_the_backend():
    scalar = os.urandom(32)
    points = _inputs(40, 3)
    for kind in ("own", "kept", "returned"):
        assert blind_points_blob(scalar, points, kind) == blind_points_blob_openssl(scalar, points)
    assert psi_x25519.backend_name().split(":")[0] in ("openssl", "ipp-crypto-mb8")
