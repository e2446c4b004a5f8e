"""The encrypted per-bin histogram kernel: exact sums, masked slots, refusals, packing plan."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from fedrisk.crypto.encrypted_histogram import (
    EncryptedHistogramKernel,
    HistogramLayout,
    decrypt_histogram,
    encrypt_gradients,
    one_hot_bins,
    packing_cost,
    plan_packing,
)
from fedrisk.crypto.encrypted_matvec import PackingLayout, decrypt_ciphertexts
from fedrisk.errors import CryptoError, ProtocolError
from fedrisk.models.secureboost_tree import MISSING
from fedrisk.models.vertical_lr import _public_copies, make_context

N_ROWS = 5000  # two 4096-slot chunks, the second one partial


def tolerance(n_rows: int) -> float:
    """Stated accuracy of one bin sum.

    The masks decode to ≈ M·2^-50 per slot (M ≈ 2^20·1.25·rows in the bin, ≤ 2^31 here),
    summed over L ≤ 4096 slots; the rescale after the node mask adds ≈1.6e-7 per row and
    the one-hot encoding at 2^27 ≈3e-7 per row (random signs). A few times the worst
    error seen over many runs.
    """
    return 2e-4 + 2e-6 * np.sqrt(n_rows)


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    secret = make_context()
    return secret, _public_copies(secret).feature_holder


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n_bins = np.array([7, 16, 2, 11])
    codes = np.column_stack([rng.integers(0, b, N_ROWS) for b in n_bins]).astype(np.uint8)
    codes[rng.random(N_ROWS) < 0.05, 1] = MISSING  # feature 1 has missing values
    has_missing = np.array([False, True, False, False])
    covered = rng.random(N_ROWS) < 0.9
    p = rng.uniform(0.02, 0.98, N_ROWS)
    y = rng.random(N_ROWS) < p
    g, h = p - y, p * (1 - p)
    return codes, n_bins, has_missing, covered, g, h


@pytest.fixture(scope="module")
def kernel(keys, data):
    secret, public = keys
    codes, n_bins, has_missing, covered, g, h = data
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public) as k:
        k.set_gradients(encrypt_gradients(secret, g, h), N_ROWS)
        yield k


def test_histograms_equal_the_plaintext_sums(keys, data, kernel):
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    assert onehot.shape[1] == kernel.layout_.n_columns == n_bins.sum() + 1
    rng = np.random.default_rng(5)
    for rows in (np.ones(N_ROWS, bool), rng.random(N_ROWS) < 0.3, np.arange(N_ROWS) < 100):
        G, H = decrypt_histogram(secret, kernel.node_histogram(rows), kernel.layout_)
        np.testing.assert_allclose(G, onehot.T @ (g * rows), atol=tolerance(rows.sum()))
        np.testing.assert_allclose(H, onehot.T @ (h * rows), atol=tolerance(rows.sum()))
    bins, nan = kernel.layout_.split_columns(G)
    assert bins.shape == (4, 16) and nan[1] != 0 and nan[0] == 0


def test_slots_are_masked_so_only_each_bin_total_is_readable(keys, data, kernel):
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    rows = np.ones(N_ROWS, bool)
    blobs = kernel.node_histogram(rows)
    slots = decrypt_ciphertexts(secret, blobs)
    # every slot is a partial sum of at most ~1,000 rows plus a uniform mask of ≥ 2^20 times that
    assert np.median(np.abs(slots)) > 2.0**25
    assert kernel.mask_bits_ >= 20
    # the same histogram computed twice: slots differ completely, totals agree
    again = decrypt_ciphertexts(secret, kernel.node_histogram(rows))
    assert np.median(np.abs(slots - again)) > 2.0**25
    G1, _ = decrypt_histogram(secret, blobs, kernel.layout_)
    G2, _ = decrypt_histogram(secret, kernel.node_histogram(rows), kernel.layout_)
    np.testing.assert_allclose(G1, G2, atol=2 * tolerance(N_ROWS))


def test_two_worker_processes_and_batched_nodes_give_the_same_histograms(keys, data):
    secret, public = keys
    codes, n_bins, has_missing, covered, g, h = data
    rows = np.random.default_rng(9).random(N_ROWS) < 0.6
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public, n_jobs=2, columns_per_ciphertext=16, baby_steps=4) as k:
        assert k.layout_.n_ciphertexts == 3  # 37 columns in blocks of 16 (padded to 48)
        k.set_gradients(encrypt_gradients(secret, g, h), N_ROWS)
        both = k.node_histograms([rows, ~rows])  # one pass over the cached plaintexts
    for node, blobs in zip((rows, ~rows), both, strict=True):
        G, H = decrypt_histogram(secret, blobs, k.layout_)
        np.testing.assert_allclose(G, onehot.T @ (g * node), atol=tolerance(node.sum()))
        np.testing.assert_allclose(H, onehot.T @ (h * node), atol=tolerance(node.sum()))


def test_key_holder_refuses_what_is_not_a_histogram(keys, data, kernel):
    secret, _ = keys
    _, _, _, _, g, h = data
    gradients = encrypt_gradients(secret, g, h)
    with pytest.raises(ProtocolError, match="not a histogram product"):
        decrypt_histogram(secret, gradients[: kernel.layout_.n_ciphertexts], kernel.layout_)
    with pytest.raises(ProtocolError, match="ciphertexts"):
        decrypt_histogram(secret, gradients, kernel.layout_)
    public = kernel.context
    with pytest.raises(CryptoError):
        decrypt_histogram(public, kernel.node_histogram(np.ones(N_ROWS, bool)), kernel.layout_)


def test_kernel_refuses_wrong_gradients_and_rows(keys, data, kernel):
    secret, public = keys
    _, _, _, _, g, h = data
    with pytest.raises(ProtocolError):
        kernel.set_gradients(encrypt_gradients(secret, g[:4096], h[:4096]), N_ROWS)
    with pytest.raises(ProtocolError):
        kernel.node_histogram(np.ones(N_ROWS + 1, bool))
    with pytest.raises(CryptoError):
        encrypt_gradients(secret, g * 3, h)  # |g| > 1 would break the masks' bound
    with pytest.raises(CryptoError):
        EncryptedHistogramKernel(*data[:4], secret)  # a feature holder never holds the secret key


def test_layout_round_trips_and_malformed_layouts_are_refused(kernel):
    layout = kernel.layout_
    assert HistogramLayout.from_dict(layout.to_dict()) == layout
    bad = layout.to_dict() | {"groups": [[0, 3]]}
    with pytest.raises(ProtocolError):
        HistogramLayout.from_dict(bad)
    with pytest.raises(ProtocolError):
        HistogramLayout.from_dict({"n_bins": "7"})
    with pytest.raises(ProtocolError):
        HistogramLayout((3, 0), (False, False), PackingLayout(4, 4096, ((0, 4),), ((0, 1),)))


def test_packing_plan_beats_one_rotation_per_column():
    # the default-credit feature holder: 120 columns, 24,000 rows (6 chunks), 2 workers
    F, B = plan_packing(120, 6, 4096, n_jobs=2)
    assert F & (F - 1) == 0 and B & (B - 1) == 0 and 1 < B <= F
    planned, _ = packing_cost(120, 6, 4096, F, B, n_jobs=2)
    diagonal = min(packing_cost(120, 6, 4096, 2**k, 1, n_jobs=2)[0] for k in range(13))  # B = 1: the LR kernel's layout
    assert planned < 0.8 * diagonal
    assert plan_packing(8, 1, 4096)[0] >= 8  # a small table fits one output ciphertext
