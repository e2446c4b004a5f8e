"""The encrypted per-bin histogram kernel (BFV): exact totals, no partial sums, flooded noise, refusals, packing plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

import fedrisk.crypto.encrypted_histogram as eh
from fedrisk.crypto.bfv import BFVRuntime
from fedrisk.crypto.encrypted_histogram import (
    EVAL_NOISE_BITS,
    FLOOD_BITS,
    OUTPUT_LEVEL,
    WIRE_LEVEL,
    EncryptedHistogramKernel,
    HistogramLayout,
    decrypt_histogram,
    encrypt_gradients,
    flooding_bound,
    make_histogram_context,
    one_hot_bins,
    packing_cost,
    plan_packing,
    quantisation,
)
from fedrisk.errors import CryptoError, ProtocolError
from fedrisk.models.secureboost_tree import MISSING
from fedrisk.models.in_process import public_copies

N_ROWS = 20_000  # two 16,384-slot chunks, the second one partial


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    secret = make_histogram_context()
    return secret, public_copies(secret).feature_holder


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
    _, public = keys
    codes, n_bins, has_missing, covered, _, _ = data
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public) as k:
        k.set_gradients(gradients, N_ROWS)
        yield k


def quantised(g: np.ndarray, h: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``g`` and ``h`` as the label holder's quantisation rounds them (what the totals sum exactly)."""
    q = quantisation(rows)
    return np.rint(g * 2.0**q.g_bits) / 2.0**q.g_bits, np.rint(h * 2.0 ** (q.h_bits + 2)) / 2.0 ** (q.h_bits + 2)


def test_histograms_equal_the_quantised_sums_exactly(keys, data, kernel):
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    assert onehot.shape[1] == kernel.layout_.n_columns == n_bins.sum() + 1
    gq, hq = quantised(g, h, N_ROWS)
    assert np.max(np.abs(gq - g)) <= 2.0 ** -(quantisation(N_ROWS).g_bits + 1)
    rng = np.random.default_rng(5)
    nodes = [np.ones(N_ROWS, bool), rng.random(N_ROWS) < 0.3, np.arange(N_ROWS) < 100, np.zeros(N_ROWS, bool)]
    for rows, blobs in zip(nodes, kernel.node_histograms(nodes), strict=True):
        G, H = decrypt_histogram(secret, blobs, kernel.layout_)
        np.testing.assert_allclose(G, onehot.T @ (gq * rows), rtol=0, atol=1e-9)  # exact: integers rescaled
        np.testing.assert_allclose(H, onehot.T @ (hq * rows), rtol=0, atol=1e-9)
    bins, nan = kernel.layout_.split_columns(G)
    assert bins.shape == (4, 16) and nan[0] == 0


# --------------------------------------------------------------------------- what the key holder decrypts


def raw_slots(secret: ts.Context, blobs: list[bytes]) -> np.ndarray:
    """Every decrypted slot, read with SEAL directly (not through the kernel's reader)."""
    runtime = BFVRuntime.for_context(secret)
    return np.concatenate([runtime.decrypt(runtime.load(b)) for b in blobs])


def column_of_slot(n_ciphertexts: int, F: int, slots: int = 16384) -> np.ndarray:
    """Parsed here: ciphertext q holds columns qF … qF + F − 1, column qF + f in every slot t ≡ f (mod F)."""
    t = np.arange(n_ciphertexts * slots)
    return (t // slots) * F + t % F


def test_every_decrypted_slot_is_a_whole_column_total(keys, data, kernel):
    """No partial sum exists in the clear: each slot is exactly its column's packed total."""
    secret, _ = keys
    codes, n_bins, has_missing, covered, g, h = data
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    rows = np.random.default_rng(11).random(N_ROWS) < 0.7
    slots = raw_slots(secret, kernel.node_histogram(rows))
    packed = quantisation(N_ROWS).pack(g, h)
    totals = onehot.T.astype(np.int64) @ (packed * rows)
    column = column_of_slot(kernel.layout_.n_ciphertexts, kernel.F_)
    totals = np.concatenate([totals, np.zeros(column.max() + 1 - totals.size, dtype=np.int64)])
    np.testing.assert_array_equal(slots, totals[column])


def noise_bits(secret: ts.Context, blob: bytes) -> float:
    """log2 of the noise ‖v‖∞ of an output ciphertext, from SEAL's invariant noise budget ``b``:
    ``‖v‖ = (q/t)·2^(−b−1)`` at the ciphertext's level (``b`` is rounded down, so this is an upper bound)."""
    runtime = BFVRuntime.for_context(secret)
    ct = runtime.load(blob)
    q_bits = sum(math.log2(m) for m in runtime.moduli[runtime.level_of(ct)])
    return q_bits - math.log2(runtime.plain_modulus) - runtime.noise_budget(ct) - 1


def to_wire_level(secret: ts.Context, blob: bytes) -> bytes:
    """The switch the kernel does before sending, for outputs measured at :data:`OUTPUT_LEVEL`."""
    runtime = BFVRuntime.for_context(secret)
    ct = runtime.load(blob)
    runtime.evaluator.mod_switch_to_inplace(ct, runtime.parms_ids[WIRE_LEVEL])
    return runtime.dump(ct)


def test_noise_stays_below_the_stated_bound_and_the_flooding_covers_it(keys):
    """The noise the flooding hides, measured without flooding on a default-credit-sized histogram.

    24,000 rows and 120 columns as the default-credit feature holder: the noise of every
    output stays 2 bits below :data:`EVAL_NOISE_BITS`; with the flooding the noise is
    ≈ 2^FLOOD_BITS and the decryption is still exact; the stated run-level bound follows.
    Measured at :data:`OUTPUT_LEVEL`, where the flooding is added; what is sent is then
    switched down to :data:`WIRE_LEVEL` (checked last: still exact, the noise scaled down
    with the dropped prime).
    """
    secret, public = keys
    rng = np.random.default_rng(0)
    n, n_bins = 24_000, np.full(10, 12)
    codes = np.column_stack([rng.integers(0, b, n) for b in n_bins]).astype(np.uint8)
    p = rng.uniform(0.02, 0.98, n)
    g, h = p - (rng.random(n) < p), p * (1 - p)
    missing, covered = np.zeros(10, bool), np.ones(n, bool)
    onehot = one_hot_bins(codes, n_bins, missing, covered)
    gq, hq = quantised(g, h, n)
    nodes = [np.ones(n, bool), rng.random(n) < 0.5]
    blobs = encrypt_gradients(secret, g, h)
    for flood in (0, FLOOD_BITS):
        with EncryptedHistogramKernel(codes, n_bins, missing, covered, public, flood_bits=flood, wire_level=OUTPUT_LEVEL) as k:
            k.set_gradients(blobs, n)
            for rows, out in zip(nodes, k.node_histograms(nodes), strict=True):
                bits = noise_bits(secret, out[0])
                if flood == 0:
                    assert bits <= EVAL_NOISE_BITS - 2, bits
                else:
                    assert FLOOD_BITS - 2 <= bits <= FLOOD_BITS + 1, bits  # the flooding dominates the noise
                out = [to_wire_level(secret, b) for b in out]
                G, H = decrypt_histogram(secret, out, k.layout_)
                np.testing.assert_allclose(G, onehot.T @ (gq * rows), rtol=0, atol=1e-9)
                np.testing.assert_allclose(H, onehot.T @ (hq * rows), rtol=0, atol=1e-9)
    with EncryptedHistogramKernel(codes, n_bins, missing, covered, public) as k:  # as sent
        k.set_gradients(blobs, n)
        out = k.node_histogram(nodes[1])
    runtime = BFVRuntime.for_context(secret)
    assert [runtime.level_of(runtime.load(b)) for b in out] == [WIRE_LEVEL]
    dropped = sum(math.log2(m) for m in runtime.moduli[OUTPUT_LEVEL]) - sum(math.log2(m) for m in runtime.moduli[WIRE_LEVEL])
    assert noise_bits(secret, out[0]) <= FLOOD_BITS - dropped + 2
    G, _ = decrypt_histogram(secret, out, k.layout_)
    np.testing.assert_allclose(G, onehot.T @ (gq * nodes[1]), rtol=0, atol=1e-9)
    tv = flooding_bound(120)  # 30 trees × 4 requested nodes, one ciphertext each
    assert tv == pytest.approx(120 * 16384 * 2.0**EVAL_NOISE_BITS / 2.0 ** (FLOOD_BITS + 1))
    assert tv <= 2.0**-40 and flooding_bound(2**22) <= 2.0**-40  # 40 bits per run, with room for far longer runs


def test_mutation_without_flooding_the_noise_is_visible(keys, data, gradients, monkeypatch):
    """The noise check above fails when the flooding is planted out of the kernel."""
    secret, public = keys
    codes, n_bins, has_missing, covered, _, _ = data
    monkeypatch.setattr(eh, "add_to_c0", lambda runtime, ct, noise: None)
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public, wire_level=OUTPUT_LEVEL) as k:
        k.set_gradients(gradients, N_ROWS)
        bits = noise_bits(secret, k.node_histogram(np.ones(N_ROWS, bool))[0])
    assert bits < FLOOD_BITS - 2


def test_histograms_are_rerandomised(keys, data, kernel):
    """Two runs of the same node differ in every byte that matters: ``c1`` is fresh each time."""
    rows = np.ones(N_ROWS, bool)
    a, b = kernel.node_histogram(rows), kernel.node_histogram(rows)
    assert a[0] != b[0]
    secret, _ = keys
    np.testing.assert_array_equal(raw_slots(secret, a), raw_slots(secret, b))


# --------------------------------------------------------------------------- the curious bank's attack


ATTACK_F = 8  # windows of 8 rows: 2^8 subsets, every one tried


@pytest.fixture(scope="module")
def attack_data():
    """One chunk of 16,384 rows, two features of four bins: eight columns, one output ciphertext."""
    rng = np.random.default_rng(21)
    n = 16384
    n_bins = np.array([4, 4])
    codes = np.column_stack([rng.integers(0, 4, n) for _ in n_bins]).astype(np.uint8)
    p = rng.uniform(0.02, 0.98, n)
    g, h = p - (rng.random(n) < p), p * (1 - p)
    return codes, n_bins, g, h


def curious_bank(slots: np.ndarray, d: np.ndarray, n_bins: np.ndarray) -> np.ndarray:
    """Predict every row's bin from the decrypted slots and the bank's own packed ``d``.

    The attack a partial sum allows: slot ``(r, p)`` of column ``p mod F`` would hold the
    sum over rows ``r·8192 + p … + F − 1`` of the rows in that bin. For each slot try
    all 2^F subsets of its window, keep the one whose sum is closest, and credit its
    rows to the column; a row goes to the column crediting it (ties: the first).
    """
    N, S, F = d.size, d.size // 2, ATTACK_F
    patterns = ((np.arange(2**F)[:, None] >> np.arange(F)) & 1).astype(np.int64)  # (256, F)
    t = np.arange(N)
    windows = (t // S * S)[:, None] + (t[:, None] % S + np.arange(F)) % S  # (N, F) rows of slot t's window
    sums = d[windows] @ patterns.T  # (N, 256), exact integers
    best = patterns[np.argmin(np.abs(sums - slots[:N, None]), axis=1)]  # (N, F)
    credit = np.zeros((N, F))  # credit[row, column]
    np.add.at(credit, (windows.ravel(), np.repeat(t % F, F)), best.ravel())
    starts = np.concatenate([[0], np.cumsum(n_bins)[:-1]])
    return np.column_stack([np.argmax(credit[:, s : s + b], axis=1) for s, b in zip(starts, n_bins, strict=True)])


def attack_accuracy(keys, attack_data) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Run the kernel at F = 8 on all rows, decrypt as the bank, attack: (accuracy, chance, slots, totals)."""
    secret, public = keys
    codes, n_bins, g, h = attack_data
    n = codes.shape[0]
    covered = np.ones(n, bool)
    with EncryptedHistogramKernel(codes, n_bins, np.zeros(2, bool), covered, public, columns_per_ciphertext=ATTACK_F, baby_steps=2) as k:
        k.set_gradients(encrypt_gradients(secret, g, h), n)
        slots = raw_slots(secret, k.node_histogram(covered))
    d = quantisation(n).pack(g, h)
    guess = curious_bank(slots, d, n_bins)
    accuracy = float(np.mean(guess == codes))
    chance = float(np.mean([np.bincount(codes[:, f]).max() / n for f in range(2)]))  # majority bin
    totals = one_hot_bins(codes, n_bins, np.zeros(2, bool), covered).T.astype(np.int64) @ d
    return accuracy, chance, slots, totals


def test_curious_bank_cannot_place_rows_in_bins(keys, attack_data):
    """With only column totals decrypting, the attack does no better than the majority bin."""
    accuracy, chance, slots, totals = attack_accuracy(keys, attack_data)
    assert accuracy < chance + 0.05, (accuracy, chance)
    np.testing.assert_array_equal(slots, totals[np.arange(slots.size) % ATTACK_F])


def test_mutation_partial_sums_let_the_bank_place_rows(keys, attack_data, monkeypatch):
    """The same attack on the unreduced layout (no rotate-and-sum: per-slot partial sums) succeeds,
    and the key holder's reader refuses such a histogram."""
    monkeypatch.setattr(eh, "_rotate_and_sum", lambda runtime, ct, F: ct)
    accuracy, chance, slots, totals = attack_accuracy(keys, attack_data)
    assert accuracy > 0.95 and chance < 0.3
    assert np.any(slots != totals[np.arange(slots.size) % ATTACK_F])
    layout = HistogramLayout((4, 4), (False, False), 16384, ATTACK_F, 16384)
    with pytest.raises(ProtocolError, match="disagree"):
        layout.unpack(slots)


# --------------------------------------------------------------------------- plumbing and refusals


def test_two_worker_processes_and_batched_nodes_give_the_same_histograms(keys, data, gradients):
    secret, public = keys
    codes, n_bins, has_missing, covered, g, h = data
    rows = np.random.default_rng(9).random(N_ROWS) < 0.6
    onehot = one_hot_bins(codes, n_bins, has_missing, covered)
    gq, hq = quantised(g, h, N_ROWS)
    with EncryptedHistogramKernel(codes, n_bins, has_missing, covered, public, n_jobs=2, columns_per_ciphertext=16, baby_steps=4) as k:
        assert k.layout_.n_ciphertexts == 3  # 37 columns in blocks of 16 (padded to 48)
        k.set_gradients(gradients, N_ROWS)
        both = k.node_histograms([rows, ~rows])  # one pass over the cached plaintexts
    for node, blobs in zip((rows, ~rows), both, strict=True):
        G, H = decrypt_histogram(secret, blobs, k.layout_)
        np.testing.assert_allclose(G, onehot.T @ (gq * node), rtol=0, atol=1e-9)
        np.testing.assert_allclose(H, onehot.T @ (hq * node), rtol=0, atol=1e-9)


def test_key_holder_refuses_what_is_not_a_histogram(keys, data, kernel, gradients):
    secret, _ = keys
    with pytest.raises(ProtocolError, match="not a histogram output"):
        decrypt_histogram(secret, gradients[: kernel.layout_.n_ciphertexts], kernel.layout_)
    with pytest.raises(ProtocolError, match="ciphertexts"):
        decrypt_histogram(secret, list(gradients) * 3, kernel.layout_)
    with pytest.raises(CryptoError):
        decrypt_histogram(kernel.context, kernel.node_histogram(np.ones(N_ROWS, bool)), kernel.layout_)
    with pytest.raises(CryptoError, match="does not load"):
        decrypt_histogram(secret, [b"garbage"], kernel.layout_)


def test_kernel_refuses_wrong_gradients_and_rows(keys, data, kernel):
    secret, public = keys
    _, _, _, _, g, h = data
    with pytest.raises(ProtocolError):
        kernel.set_gradients(encrypt_gradients(secret, g[:16384], h[:16384]), N_ROWS)
    with pytest.raises(ProtocolError):
        kernel.node_histogram(np.ones(N_ROWS + 1, bool))
    with pytest.raises(CryptoError):
        encrypt_gradients(secret, g * 3, h)  # |g| > 1 would overflow the quantisation
    with pytest.raises(CryptoError):
        EncryptedHistogramKernel(*data[:4], secret)  # a feature holder never holds the secret key
    with pytest.raises(CryptoError):
        EncryptedHistogramKernel(*data[:4], public, flood_bits=-1)
    with pytest.raises(CryptoError, match="rows"):
        quantisation(2**22)  # too many rows for the 59-bit plaintext modulus


def test_quantisation_unpacks_exactly_at_its_extremes():
    for rows in (1, 24_000, 100_000, 2**20 - 1):
        q = quantisation(rows)
        assert q.g_bits >= 8 and q.h_bits >= 8
        g = np.array([1.0, -1.0, 0.0, 0.5])
        h = np.array([0.25, 0.25, 0.0, 0.1])
        G, H = q.unpack(q.pack(g, h) * rows)  # every row at the extreme
        np.testing.assert_allclose(G, np.rint(g * 2.0**q.g_bits) / 2.0**q.g_bits * rows, rtol=0, atol=0)
        np.testing.assert_allclose(H, np.rint(h * 2.0 ** (q.h_bits + 2)) / 2.0 ** (q.h_bits + 2) * rows, rtol=0, atol=0)
        assert abs(int((q.pack(g, h) * rows).max())) < 2**58  # below t/2


def test_layout_round_trips_and_malformed_layouts_are_refused(kernel):
    layout = kernel.layout_
    assert HistogramLayout.from_dict(layout.to_dict()) == layout
    for bad in ({"columns_per_ciphertext": 3}, {"packing": "interleaved-reduced"}, {"rows": 0}, {"slots": "16384"}, {"has_missing": [0, 1, 0, 0]}):
        with pytest.raises(ProtocolError):
            HistogramLayout.from_dict(layout.to_dict() | bad)
    with pytest.raises(ProtocolError):
        HistogramLayout.from_dict({"n_bins": "7"})
    with pytest.raises(ProtocolError):
        HistogramLayout((3, 0), (False, False), 16384, 4, 30)


def test_packing_plan_beats_one_rotation_per_column():
    # the default-credit feature holder: 120 columns, 24,000 rows (2 chunks), 2 workers
    F, B = plan_packing(120, 2, 8192, n_jobs=2)
    assert F & (F - 1) == 0 and B & (B - 1) == 0 and 1 < B <= F
    planned, _ = packing_cost(120, 2, 8192, F, B, n_jobs=2)
    diagonal = min(packing_cost(120, 2, 8192, 2**k, 1, n_jobs=2)[0] for k in range(14))  # B = 1: one rotation per diagonal
    assert planned < 0.8 * diagonal
    assert plan_packing(8, 1, 8192)[0] >= 8  # a small table fits one output ciphertext


def test_seeded_galois_keys_load_in_seal_and_bad_ones_are_refused(keys):
    """A feature holder hands its workers the Galois keys in the seeded form it received:
    rotations under keys SEAL expanded from the seeds decrypt right; damaged seeds are one clear error."""
    from fedrisk.crypto.bfv import keep_seeded_galois, public_bfv_context_bytes

    secret, _ = keys
    blob = public_bfv_context_bytes(secret, galois=True)
    public = keep_seeded_galois(ts.context_from(blob), blob)
    seeded = public._fedrisk_seeded_galois
    assert (
        len(seeded) < len(public.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)) * 0.6
    )  # seeded: about half the expanded keys

    bare = ts.context_from(public_bfv_context_bytes(secret, galois=False))
    bare._fedrisk_seeded_galois = seeded  # what a worker process builds
    runtime = BFVRuntime(bare)
    values = np.arange(runtime.slots) % 1000
    ct = runtime.encrypt(values)
    runtime.evaluator.rotate_rows_inplace(ct, 4, runtime.galois_keys)
    got = BFVRuntime.for_context(secret).decrypt(ct)
    assert np.array_equal(got, eh._roll_rows(values, 4, runtime.row_slots))

    damaged = ts.context_from(public_bfv_context_bytes(secret, galois=False))
    damaged._fedrisk_seeded_galois = seeded[: len(seeded) // 2]
    with pytest.raises(CryptoError, match="Galois keys do not load"):
        BFVRuntime(damaged).galois_keys
