"""The encrypted per-bin histogram kernel: exact totals, no partial sums, flooding, refusals, packing plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

import fedrisk.crypto.encrypted_histogram as eh
from fedrisk.crypto.encrypted_histogram import (
    EVAL_NOISE_BOUND,
    FLOOD_STD,
    EncryptedHistogramKernel,
    HistogramLayout,
    decrypt_histogram,
    decrypt_slots,
    encrypt_gradients,
    flooding_bound,
    one_hot_bins,
    packing_cost,
    plan_packing,
)
from fedrisk.crypto.encrypted_matvec import decrypt_ciphertexts
from fedrisk.errors import CryptoError, ProtocolError
from fedrisk.models.secureboost_tree import MISSING
from fedrisk.models.vertical_lr import _public_copies, make_context

N_ROWS = 5000  # two 4096-slot chunks, the second one partial
TINY_FLOOD = 2.0**-20  # the flooding the old kernel used: isolates the layout in the attack tests


def flood_tolerance(layout: HistogramLayout, std: float = FLOOD_STD) -> float:
    """A bin total is the mean of its L copies: flooding std/√L per part, plus evaluation noise; 6 sigmas."""
    return 6.0 * std / math.sqrt(layout.copies) + EVAL_NOISE_BOUND


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
def gradients(keys, data):
    secret, _ = keys
    *_, g, h = data
    return encrypt_gradients(secret, g, h)


@pytest.fixture(scope="module")
def kernel(keys, data, gradients):
    """The default kernel (default flooding)."""
    _, public = keys
    codes, n_bins, has_missing, covered, _, _ = data
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public) as k:
        k.set_gradients(gradients, N_ROWS)
        yield k


@pytest.fixture(scope="module")
def exact(keys, data, gradients):
    """The same kernel without flooding: what is left is the evaluation noise."""
    _, public = keys
    codes, n_bins, has_missing, covered, _, _ = data
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public, flood_std=0.0) as k:
        k.set_gradients(gradients, N_ROWS)
        yield k


def test_histograms_equal_the_plaintext_sums(keys, data, kernel, exact):
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    assert onehot.shape[1] == kernel.layout_.n_columns == n_bins.sum() + 1
    rng = np.random.default_rng(5)
    for rows in (np.ones(N_ROWS, bool), rng.random(N_ROWS) < 0.3, np.arange(N_ROWS) < 100):
        G, H = decrypt_histogram(secret, exact.node_histogram(rows), exact.layout_)
        np.testing.assert_allclose(G, onehot.T @ (g * rows), atol=EVAL_NOISE_BOUND)
        np.testing.assert_allclose(H, onehot.T @ (h * rows), atol=EVAL_NOISE_BOUND)
        G, H = decrypt_histogram(secret, kernel.node_histogram(rows), kernel.layout_)
        np.testing.assert_allclose(G, onehot.T @ (g * rows), atol=flood_tolerance(kernel.layout_))
        np.testing.assert_allclose(H, onehot.T @ (h * rows), atol=flood_tolerance(kernel.layout_))
    bins, nan = kernel.layout_.split_columns(G)
    assert bins.shape == (4, 16) and nan[1] != 0 and nan[0] == 0


# --------------------------------------------------------------------------- what the key holder decrypts


def parse_slots(secret: ts.Context, blobs: list[bytes], F: int) -> tuple[np.ndarray, np.ndarray]:
    """The real part of every decrypted slot (plain TenSEAL decryption) and the column each
    slot belongs to, parsed here: ciphertext q holds columns qF … qF + F − 1, column qF + f
    in the slots t ≡ f (mod F)."""
    S = 4096
    real = decrypt_ciphertexts(secret, blobs)
    t = np.arange(len(blobs) * S)
    column = (t // S) * F + t % F
    return real, column


def slot_view(secret, kernel, rows):
    """(complex slots, column of each slot) of one node's histogram, as the key holder decrypts it."""
    blobs = kernel.node_histogram(rows)
    real, column = parse_slots(secret, blobs, kernel.F_)
    slots = decrypt_slots(secret, blobs, kernel.layout_)  # imaginary parts through the kernel's reader
    np.testing.assert_allclose(slots.real, real, atol=1e-9)  # which agrees with TenSEAL on the real parts
    return slots, column


def test_every_decrypted_slot_is_a_whole_column_total(keys, data, kernel):
    """No partial sum exists in the clear: each slot is its column's total plus the flooding."""
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    rows = np.random.default_rng(11).random(N_ROWS) < 0.7
    slots, column = slot_view(secret, kernel, rows)
    totals = np.concatenate([onehot.T @ ((g + 1j * h) * rows), np.zeros(column.max() + 1 - onehot.shape[1])])
    dev = slots - totals[column]  # padding columns of the last block total zero
    # what is left is the flooding alone, at its stated std: partial sums would spread the
    # deviations over the totals' own size (tens to hundreds here), not N(0, FLOOD_STD²)
    for part in (dev.real, dev.imag):
        assert np.max(np.abs(part)) < 6.5 * FLOOD_STD
        assert abs(np.std(part) / FLOOD_STD - 1.0) < 0.05
        assert abs(np.mean(part)) < 6.0 * FLOOD_STD / math.sqrt(part.size)


def test_flooding_exceeds_the_measured_evaluation_noise(keys):
    """(c) The evaluation noise of a default-credit-sized histogram, measured without flooding.

    24,000 rows and 120 columns as the default-credit feature holder (its gradients
    at the logistic loss's range): the noise in every slot stays below the stated
    :data:`EVAL_NOISE_BOUND`, the flooding is 2^25 times that bound, and the stated
    run-level bound follows from them.
    """
    secret, public = keys
    rng = np.random.default_rng(0)
    n, n_bins = 24_000, np.full(10, 12)
    codes = np.column_stack([rng.integers(0, b, n) for b in n_bins]).astype(np.uint8)
    p = rng.uniform(0.02, 0.98, n)
    g, h = p - (rng.random(n) < p), p * (1 - p)
    missing, covered = np.zeros(10, bool), np.ones(n, bool)
    onehot = one_hot_bins(codes, n_bins, missing, covered)
    worst = 0.0
    with EncryptedHistogramKernel(codes, n_bins, missing, covered, public, flood_std=0.0) as k:
        assert (k.F_, k.layout_.n_ciphertexts) == (128, 1)
        k.set_gradients(encrypt_gradients(secret, g, h), n)
        nodes = [np.ones(n, bool), rng.random(n) < 0.5]
        for rows, blobs in zip(nodes, k.node_histograms(nodes), strict=True):
            slots = decrypt_slots(secret, blobs, k.layout_)
            totals = np.concatenate([onehot.T @ ((g + 1j * h) * rows), np.zeros(128 - 120)])
            worst = max(worst, float(np.max(np.abs(slots - totals[k.layout_.column_of_slot()]))))
    assert worst < EVAL_NOISE_BOUND  # measured ≈ 2^-25.3 (module docstring)
    assert FLOOD_STD / EVAL_NOISE_BOUND >= 2.0**26  # the stated factor
    kl, tv = flooding_bound(120)  # 30 trees × 4 requested nodes, one ciphertext each
    assert kl == pytest.approx(120 * 4096 * EVAL_NOISE_BOUND**2 / (2 * FLOOD_STD**2))
    assert tv <= 2.0**-17.5  # the run-level bound the docstring states


# --------------------------------------------------------------------------- the curious bank's attack


ATTACK_F = 8  # windows of 8 rows: 2^8 subsets, every one tried


@pytest.fixture(scope="module")
def attack_data():
    """One chunk of 4,096 rows, two features of four bins: eight columns, one output ciphertext."""
    rng = np.random.default_rng(21)
    n_bins = np.array([4, 4])
    codes = np.column_stack([rng.integers(0, 4, 4096) for _ in n_bins]).astype(np.uint8)
    p = rng.uniform(0.02, 0.98, 4096)
    g, h = p - (rng.random(4096) < p), p * (1 - p)
    return codes, n_bins, g, h


def curious_bank(slots: np.ndarray, d: np.ndarray, n_bins: np.ndarray) -> np.ndarray:
    """Predict every row's bin from the decrypted slots and the bank's own ``d = g + i·h``.

    The attack a partial sum allows: slot ``t`` of column ``t mod F`` would hold the sum
    over rows ``t … t + F − 1`` (one chunk) of the rows in that bin. For each slot try
    all 2^F subsets of its window, keep the one whose sum is closest, and credit its
    rows to the column; a row goes to the column crediting it (ties: the first).
    """
    S, F = d.size, ATTACK_F
    patterns = ((np.arange(2**F)[:, None] >> np.arange(F)) & 1).astype(float)  # (256, F)
    t = np.arange(S)
    windows = (t[:, None] + np.arange(F)) % S  # (S, F) rows of slot t's window
    sums = d[windows] @ patterns.T  # (S, 256)
    best = patterns[np.argmin(np.abs(sums - slots[:S, None]), axis=1)]  # (S, F)
    credit = np.zeros((S, F))  # credit[row, column]
    np.add.at(credit, (windows.ravel(), np.repeat(t % F, F)), best.ravel())
    starts = np.concatenate([[0], np.cumsum(n_bins)[:-1]])
    return np.column_stack([np.argmax(credit[:, s : s + b], axis=1) for s, b in zip(starts, n_bins, strict=True)])


def attack_accuracy(keys, attack_data, flood_std: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Run the kernel at F = 8 on all rows, decrypt as the bank, attack: (accuracy, chance, slots, totals)."""
    secret, public = keys
    codes, n_bins, g, h = attack_data
    covered = np.ones(4096, bool)
    with EncryptedHistogramKernel(codes, n_bins, np.zeros(2, bool), covered, public, flood_std=flood_std,
                                  columns_per_ciphertext=ATTACK_F, baby_steps=2) as k:
        k.set_gradients(encrypt_gradients(secret, g, h), 4096)
        slots = decrypt_slots(secret, k.node_histogram(covered), k.layout_)
    guess = curious_bank(slots, g + 1j * h, n_bins)
    accuracy = float(np.mean(guess == codes))
    chance = float(np.mean([np.bincount(codes[:, f]).max() / 4096 for f in range(2)]))  # majority bin
    totals = one_hot_bins(codes, n_bins, np.zeros(2, bool), covered).T @ (g + 1j * h)
    return accuracy, chance, slots, totals


def test_curious_bank_cannot_place_rows_in_bins(keys, attack_data):
    """(a) With only column totals decrypting, the attack does no better than the majority bin."""
    for flood in (TINY_FLOOD, FLOOD_STD):
        accuracy, chance, slots, totals = attack_accuracy(keys, attack_data, flood)
        assert accuracy < chance + 0.05, (flood, accuracy, chance)
        np.testing.assert_allclose(slots, totals[np.arange(4096) % ATTACK_F], atol=8 * flood + EVAL_NOISE_BOUND)


def test_mutation_partial_sums_let_the_bank_place_rows(keys, attack_data, monkeypatch):
    """(b) The same attack on the unreduced layout (no rotate-and-sum: per-slot partial sums) succeeds."""
    monkeypatch.setattr(eh, "_rotate_and_sum", lambda runtime, ct, F: ct)
    accuracy, chance, slots, totals = attack_accuracy(keys, attack_data, TINY_FLOOD)
    assert accuracy > 0.95 and chance < 0.3
    # and the slot check of the test above fails: slots are not the column totals
    assert np.max(np.abs(slots - totals[np.arange(4096) % ATTACK_F])) > 10.0


# --------------------------------------------------------------------------- plumbing and refusals


def test_two_worker_processes_and_batched_nodes_give_the_same_histograms(keys, data, gradients):
    secret, public = keys
    codes, n_bins, has_missing, covered, g, h = data
    rows = np.random.default_rng(9).random(N_ROWS) < 0.6
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public, n_jobs=2, columns_per_ciphertext=16,
                                  baby_steps=4, flood_std=0.0) as k:
        assert k.layout_.n_ciphertexts == 3  # 37 columns in blocks of 16 (padded to 48)
        k.set_gradients(gradients, N_ROWS)
        both = k.node_histograms([rows, ~rows])  # one pass over the cached plaintexts
    for node, blobs in zip((rows, ~rows), both, strict=True):
        G, H = decrypt_histogram(secret, blobs, k.layout_)
        np.testing.assert_allclose(G, onehot.T @ (g * node), atol=EVAL_NOISE_BOUND)
        np.testing.assert_allclose(H, onehot.T @ (h * node), atol=EVAL_NOISE_BOUND)


def test_key_holder_refuses_what_is_not_a_histogram(keys, data, kernel, gradients):
    secret, _ = keys
    with pytest.raises(ProtocolError, match="not a histogram product"):
        decrypt_histogram(secret, gradients[: kernel.layout_.n_ciphertexts], kernel.layout_)
    with pytest.raises(ProtocolError, match="ciphertexts"):
        decrypt_histogram(secret, list(gradients) * 3, kernel.layout_)
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
        encrypt_gradients(secret, g * 3, h)  # |g| > 1 would break the headroom and the bound
    with pytest.raises(CryptoError):
        EncryptedHistogramKernel(*data[:4], secret)  # a feature holder never holds the secret key
    with pytest.raises(CryptoError):
        EncryptedHistogramKernel(*data[:4], public, flood_std=-1.0)


def test_layout_round_trips_and_malformed_layouts_are_refused(kernel):
    layout = kernel.layout_
    assert HistogramLayout.from_dict(layout.to_dict()) == layout
    for bad in ({"columns_per_ciphertext": 3}, {"packing": "blocked"}, {"scale_bits": 60}, {"slots": "4096"},
                {"has_missing": [0, 1, 0, 0]}):
        with pytest.raises(ProtocolError):
            HistogramLayout.from_dict(layout.to_dict() | bad)
    with pytest.raises(ProtocolError):
        HistogramLayout.from_dict({"n_bins": "7"})
    with pytest.raises(ProtocolError):
        HistogramLayout((3, 0), (False, False), 4096, 4, 30)


def test_packing_plan_beats_one_rotation_per_column():
    # the default-credit feature holder: 120 columns, 24,000 rows (6 chunks), 2 workers
    F, B = plan_packing(120, 6, 4096, n_jobs=2)
    assert (F, B) == (128, 4) or (F & (F - 1) == 0 and B & (B - 1) == 0 and 1 < B <= F)
    planned, _ = packing_cost(120, 6, 4096, F, B, n_jobs=2)
    diagonal = min(packing_cost(120, 6, 4096, 2**k, 1, n_jobs=2)[0] for k in range(13))  # B = 1: the LR kernel's layout
    assert planned < 0.8 * diagonal
    assert plan_packing(8, 1, 4096)[0] >= 8  # a small table fits one output ciphertext
