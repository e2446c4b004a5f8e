"""The packed X_kᵀ[[d]] kernel: exactness on odd shapes, one total per feature, masking, payload binding to a context."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from fedrisk.crypto.encrypted_matvec import (
    MAX_MASK_BITS,
    MIN_MASK_BITS,
    CKKSRuntime,
    EncryptedMatVec,
    EncryptedVector,
    PackingLayout,
    check_group_sizes,
    context_fingerprint,
    decrypt_ciphertexts,
    reduce_product,
    residual_level,
    residual_scale,
)
from fedrisk.crypto.frames import pack_frame, unpack_frame
from fedrisk.crypto.secure_random import secure_normal
from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError


def _context(galois: bool = True) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2.0**40
    if galois:
        ctx.generate_galois_keys()
    return ctx


def _public(ctx: ts.Context, galois: bool = True) -> ts.Context:
    return ts.context_from(ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=galois, save_relin_keys=False))


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    secret = _context()
    return secret, _public(secret)


def tolerance(X: np.ndarray) -> float:
    """Stated accuracy of the kernel (no decryption flooding).

    X is encoded at scale 2^20 (≈3e-5 absolute error per entry, random sign, so
    ≈3e-5·max|X|·sqrt(n) per sum); a value masked by up to 2^46 is encoded and
    decoded in double precision to ≈2^-6 (worst seen 0.027). The bound below is
    a few times the worst error seen over many runs.
    """
    return 1e-4 * float(np.abs(X).max()) * np.sqrt(X.shape[0]) + 2.0 ** (MAX_MASK_BITS - 50)


def _encrypt_residual(secret: ts.Context, d: np.ndarray) -> EncryptedVector:
    rt = CKKSRuntime.for_context(secret)
    return EncryptedVector.encrypt(secret, d, level=residual_level(rt), scale=residual_scale())


def _product(secret: ts.Context, kernel: EncryptedMatVec, d: np.ndarray, *, flood: float = 0.0) -> np.ndarray:
    """Feature holder → key holder → feature holder, as in training: one value per feature comes back."""
    received = EncryptedVector.from_bytes(_encrypt_residual(secret, d).to_bytes(), context=kernel.context)
    blobs, state = kernel.mask(kernel.compute(received))
    slots = decrypt_ciphertexts(secret, blobs)
    values = reduce_product(slots, kernel.layout_.group_sizes, 4096, reduced=kernel.reduced_)
    assert values.shape == (kernel.n_features,)
    if flood:
        values = values + secure_normal(0.0, flood, values.size)
    return kernel.unmask(values, state)


def test_fingerprint_is_shared_by_public_copies_and_differs_across_keys(keys):
    secret, public = keys
    fp = context_fingerprint(secret)
    assert len(fp) == 32 and int(fp, 16) >= 0  # 128 bits, the one fingerprint
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
        assert kernel.layout_.n_features == m and kernel.reduced_
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
        assert kernel.layout_.n_rotations == 0 and not kernel.reduced_  # the key holder sums each feature's slots
        assert kernel.mask_bound_ == 2.0 ** (MAX_MASK_BITS - 12)  # narrower masks: 4096 of them get summed
        got = _product(secret, kernel, d)
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X))
    with pytest.raises(CryptoError, match="Galois"):
        EncryptedMatVec(X, public, reduce=True)


def test_every_slot_of_a_reduced_product_holds_its_features_total(keys):
    """No slot carries a partial sum: whatever slots the key holder returns, it returns totals."""
    secret, public = keys
    rng = np.random.default_rng(8)
    X = rng.normal(size=(9000, 11))
    d = rng.uniform(-1.0, 1.0, size=9000)
    with EncryptedMatVec(X, public, max_pack=8) as kernel:
        assert kernel.layout_.group_sizes == (8, 2, 1)
        assert kernel.layout_.n_reduce_rotations == 9 + 11 + 12  # log2 L per group
        slots = decrypt_ciphertexts(secret, [kernel.runtime.dump(c) for c in kernel.compute(_encrypt_residual(secret, d))])
    truth = X.T @ d
    expected = np.concatenate([np.tile(truth[0:8], 512), np.tile(truth[8:10], 2048), np.tile(truth[10:], 4096)])
    np.testing.assert_allclose(slots, expected, rtol=0, atol=tolerance(X))


def test_a_residual_at_another_scale_is_refused(keys):
    secret, public = keys
    rt = CKKSRuntime.for_context(secret)
    d = np.linspace(-1, 1, 100)
    at_delta = EncryptedVector.encrypt(secret, d, level=residual_level(rt))  # scale 2^40, not 2^30
    with EncryptedMatVec(np.ones((100, 2)), public) as kernel:
        with pytest.raises(ProtocolError, match="scale"):  # the masks are sized for the residual's scale
            kernel.compute(at_delta)
    with EncryptedMatVec(np.ones((100, 2)), public, n_jobs=2) as kernel:
        with pytest.raises(CryptoError, match="scale"):  # the workers check it too
            kernel.compute(at_delta)


def test_decryption_flooding_keeps_the_product_usable(keys):
    secret, public = keys
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4500, 6))
    d = rng.uniform(-1.0, 1.0, size=4500)
    with EncryptedMatVec(X, public) as kernel:
        got = _product(secret, kernel, d, flood=2.0**-12)
    # the key holder floods each returned value once: 2^-12 per feature
    np.testing.assert_allclose(got, X.T @ d, rtol=0, atol=tolerance(X) + 2.0**-12 * 6)


def test_what_the_key_holder_decrypts_is_masked(keys):
    secret, public = keys
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5000, 9))
    d = rng.uniform(-1.0, 1.0, size=5000)
    with EncryptedMatVec(X, public) as kernel:
        blobs, state = kernel.mask(kernel.compute(_encrypt_residual(secret, d)))
        seen = decrypt_ciphertexts(secret, blobs)
        truth = X.T @ d
        # every slot is a feature's total (|total| ≤ Σ|X| < 2^13 here) plus one mask uniform in ±2^46
        assert np.median(np.abs(seen)) > 2.0**40
        per_feature = reduce_product(seen, kernel.layout_.group_sizes, 4096, reduced=True)
        assert np.abs(per_feature - truth).min() > 1e6
        # the copies of a feature share its mask: they differ only by the flooding (std 2^8 per slot)
        F = kernel.layout_.group_sizes[0]
        copies = seen[:4096].reshape(4096 // F, F)
        assert 2.0**7 < np.std(copies - copies[0], axis=0).min() and np.std(copies - copies[0], axis=0).max() < 2.0**9
        np.testing.assert_allclose(kernel.unmask(per_feature, state), truth, atol=tolerance(X))
        assert kernel.mask_bits_ >= 30 and kernel.epoch_mask_bits_ >= kernel.mask_bits_ - 4
        assert kernel.run_mask_bits(30) == int(np.floor(np.log2(kernel.mask_bound_ / (30 * np.abs(X).sum()))))
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
    assert capped.group_sizes == (8, 8, 4, 1)
    assert capped.n_reduce_rotations == 9 + 9 + 10 + 12


def test_reduce_product_reads_the_interleaved_layout():
    rng = np.random.default_rng(9)
    totals = rng.normal(size=5) * 1e3
    copies = np.concatenate([np.tile(totals[:4], 1024), np.tile(totals[4:], 4096)])
    noisy = copies + rng.normal(size=copies.size) * 2.0**-8
    got = reduce_product(noisy + 2.0**45, (4, 1), 4096, reduced=True)  # large masks: no precision lost
    np.testing.assert_allclose(got - 2.0**45, totals, atol=2.0**-6)  # the inputs carry 2^-7 (ulp at 2^45)
    partial = rng.normal(size=2 * 4096)  # slot f + F·i holds a partial sum: the key holder adds them
    summed = reduce_product(partial, (4, 1), 4096, reduced=False)
    expected = np.array([*partial[:4096].reshape(1024, 4).sum(axis=0), partial[4096:].sum()])
    np.testing.assert_allclose(summed, expected)
    # partial sums posing as a reduced product yield total / L: still no single partial sum
    np.testing.assert_allclose(reduce_product(partial, (4, 1), 4096, reduced=True), expected / np.array([1024] * 4 + [4096]))
    assert check_group_sizes([8, 2], 4096) == (8, 2)
    for bad in ([3], [8192], [0], [True], [], ["8"]):
        with pytest.raises(ProtocolError):
            check_group_sizes(bad, 4096)
