"""The packed X_kᵀ[[d]] kernel: exactness on odd shapes, masking, payload binding to a context."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from fedrisk.crypto.encrypted_matvec import (
    MIN_MASK_BITS,
    CKKSRuntime,
    EncryptedMatVec,
    EncryptedVector,
    PackingLayout,
    context_fingerprint,
    decrypt_ciphertexts,
    pack_frame,
    residual_level,
    unpack_frame,
)
from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError


def _context(galois: bool = True) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2.0**40
    if galois:
        ctx.generate_galois_keys()
    return ctx


def _public(ctx: ts.Context, galois: bool = True) -> ts.Context:
    return ts.context_from(
        ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=galois, save_relin_keys=False)
    )


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    secret = _context()
    return secret, _public(secret)


def tolerance(X: np.ndarray) -> float:
    """Stated accuracy of the kernel (no decryption flooding).

    X is encoded at scale 2^20 (≈3e-5 absolute error per entry, random sign, so
    ≈3e-5·max|X|·sqrt(n) per sum); masked slots decode to ≈2^-14 each. The bound
    below is a few times the worst error seen over many runs.
    """
    return 1e-4 * float(np.abs(X).max()) * np.sqrt(X.shape[0]) + 1e-2


def _product(secret: ts.Context, kernel: EncryptedMatVec, d: np.ndarray, *, flood: float = 0.0) -> np.ndarray:
    rt = CKKSRuntime.for_context(secret)
    enc = EncryptedVector.encrypt(secret, d, level=residual_level(rt))
    received = EncryptedVector.from_bytes(enc.to_bytes(), context=kernel.context)
    blobs, state = kernel.mask(kernel.compute(received))
    return kernel.unmask(decrypt_ciphertexts(secret, blobs, flood_std=flood), state)


def test_fingerprint_is_shared_by_public_copies_and_differs_across_keys(keys):
    secret, public = keys
    fp = context_fingerprint(secret)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert context_fingerprint(public) == fp
    assert context_fingerprint(_public(secret, galois=False)) == fp
    other = _context(galois=False)
    assert context_fingerprint(other) != fp


@pytest.mark.parametrize(
    ("n", "m", "max_pack"),
    [
        (5000, 7, None),  # n not a multiple of the 4096 slots; groups 4+2+1
        (8193, 1, None),  # one feature, one row into a third chunk: no rotation at all
        (9000, 21, 8),  # more features than a packing block: 8+8+4+1
        (1000, 70, None),  # 64+4+2, a single partly filled chunk
    ],
)
def test_kernel_equals_plain_product(keys, n, m, max_pack):
    secret, public = keys
    rng = np.random.default_rng(n + m)
    X = rng.normal(size=(n, m)) * rng.uniform(0.5, 3.0, size=m)
    X[rng.random(n) < 0.3] = 0.0  # rows a feature holder does not cover
    d = rng.uniform(-1.0, 1.0, size=n)
    with EncryptedMatVec(X, public, max_pack=max_pack) as kernel:
        assert kernel.layout_.n_features == m
        got = _product(secret, kernel, d)
        assert kernel.mask_bits_ >= MIN_MASK_BITS
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X))


def test_worker_processes_give_the_same_product(keys):
    secret, public = keys
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6000, 13))
    d = rng.uniform(-1.0, 1.0, size=6000)
    with EncryptedMatVec(X, public, n_jobs=2) as kernel:
        assert len(kernel.layout_.blocks) == 2
        got = _product(secret, kernel, d)
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X))


def test_without_galois_keys_the_kernel_uses_no_rotations(keys):
    secret, _ = keys
    public = _public(secret, galois=False)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 5))
    d = rng.uniform(-1.0, 1.0, size=3000)
    with EncryptedMatVec(X, public) as kernel:
        assert kernel.layout_.groups == ((0, 1), (1, 1), (2, 1), (3, 1), (4, 1))
        assert kernel.layout_.n_rotations == 0
        got = _product(secret, kernel, d)
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X))


def test_decryption_flooding_keeps_the_product_usable(keys):
    secret, public = keys
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4500, 6))
    d = rng.uniform(-1.0, 1.0, size=4500)
    with EncryptedMatVec(X, public) as kernel:
        got = _product(secret, kernel, d, flood=2.0**-12)
    # flooding adds 2^-12·sqrt(L) per feature, L ≤ 4096 slots
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X) + 2.0**-12 * 64 * 5)


def test_what_the_key_holder_decrypts_is_masked(keys):
    secret, public = keys
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5000, 9))
    d = rng.uniform(-1.0, 1.0, size=5000)
    with EncryptedMatVec(X, public) as kernel:
        enc = EncryptedVector.encrypt(secret, d, level=residual_level(CKKSRuntime.for_context(secret)))
        blobs, state = kernel.mask(kernel.compute(enc))
        seen = decrypt_ciphertexts(secret, blobs)
        truth = X.T @ d
        # per slot, true partial sums are bounded by Σ|X| over a few rows; masks are ~2^36
        assert np.median(np.abs(seen)) > 2.0**30
        assert np.abs(kernel.layout_.unpack(seen) - truth).min() > 1e6
        np.testing.assert_allclose(kernel.unmask(seen, state), truth, atol=tolerance(X))
        # the ciphertexts do not carry the product as float64
        raw = b"".join(blobs)
        assert not any(np.float64(v).tobytes() in raw for v in truth)


def test_a_payload_from_another_context_is_refused(keys):
    secret, public = keys
    stranger = _context(galois=False)
    d = np.linspace(-1, 1, 100)
    foreign = EncryptedVector.encrypt(stranger, d, level=residual_level(CKKSRuntime.for_context(stranger)))
    data = foreign.to_bytes()
    with pytest.raises(ContextMismatchError):
        EncryptedVector.from_bytes(data, context=public)
    with EncryptedMatVec(np.ones((100, 2)), public) as kernel:
        with pytest.raises(ContextMismatchError):
            kernel.compute(EncryptedVector.from_bytes(data))
    with pytest.raises(ContextMismatchError):
        EncryptedVector.from_bytes(data).decrypt(secret)


def test_a_public_context_cannot_decrypt(keys):
    secret, public = keys
    enc = EncryptedVector.encrypt(public, np.arange(5.0))
    with pytest.raises(CryptoError):
        enc.decrypt(public)
    np.testing.assert_allclose(enc.decrypt(secret), np.arange(5.0), atol=1e-5)


def test_frames_reject_malformed_bytes(keys):
    secret, _ = keys
    fp = context_fingerprint(secret)
    frame = pack_frame(b"TEST", fp, {"a": 1}, [b"xyz", b""])
    assert unpack_frame(frame, b"TEST") == (b"TEST", fp, {"a": 1}, [b"xyz", b""])
    for bad in (frame[:-1], frame + b"\0", b"XXXX" + frame[4:], frame[:4] + b"\x09" + frame[5:]):
        with pytest.raises(ProtocolError):
            unpack_frame(bad)
    with pytest.raises(ProtocolError):
        unpack_frame(frame, b"EVEC")


def test_layout_decomposes_features_into_power_of_two_groups():
    layout = PackingLayout.build(300, 4096)
    assert layout.groups == ((0, 256), (256, 32), (288, 8), (296, 4))
    assert layout.n_rotations == 296
    split = PackingLayout.build(300, 4096, n_blocks=2)
    assert split.blocks == ((0, 4), (4, 4))
    assert sum(f for _, f in split.groups) == 300
    capped = PackingLayout.build(21, 4096, max_pack=8)
    assert capped.groups == ((0, 8), (8, 8), (16, 4), (20, 1))
    values = np.arange(4 * 4096, dtype=float)
    sums = capped.unpack(values)
    assert sums[0] == values[:512].sum() and sums[20] == values[3 * 4096 :].sum()
