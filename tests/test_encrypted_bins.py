"""Reversed-role histograms (fedrisk.crypto.encrypted_bins): exact totals, stated noise, masked views, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedrisk.crypto import encrypted_bins as eb
from fedrisk.crypto.bfv import BFVRuntime, load_public_bfv_context, make_bfv_context, public_bfv_context_bytes
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError
from fedrisk.crypto.frames import pack_frame, unpack_frame


@pytest.fixture(scope="module")
def feature_holder_key():
    return make_bfv_context(galois=False)


@pytest.fixture(scope="module")
def label_holder_copy(feature_holder_key):
    return load_public_bfv_context(public_bfv_context_bytes(feature_holder_key, galois=False), "label holder")


def _onehot(rows: int, bins: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [np.eye(b, dtype=np.uint8)[rng.integers(0, b, rows)] for b in bins]
    return np.concatenate(cols, axis=1)


@pytest.fixture(scope="module")
def bins(feature_holder_key):
    onehot = _onehot(3000, [32, 20, 18], seed=1)  # 70 columns: 3 groups, the last one partly empty; 6 blocks, the last partly empty
    layout, blobs = eb.encrypt_bin_matrix(feature_holder_key, onehot)
    return onehot, layout, blobs


def _view_of_feature_holder(key, blobs: list[bytes], layout) -> np.ndarray:
    """Every coefficient the feature holder can decrypt from what it receives: ``c0`` travels at the total positions only."""
    runtime = BFVRuntime.for_context(key)
    views = []
    for blob in blobs:
        _, _, _, (c0, _) = unpack_frame(blob)
        assert len(c0) == 8 * len(runtime.moduli[eb.WIRE_LEVEL]) * layout.columns_per_ciphertext  # nothing beyond the totals' c0
        views.append(runtime.decrypt_coefficients(eb.load_masked_histogram(key, blob, layout), layout.total_positions))
    return np.concatenate(views)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_totals_equal_the_plaintext_histograms(feature_holder_key, label_holder_copy, bins, n_jobs):
    """In process, and split over worker processes by row blocks (each group finished once, by its owner)."""
    onehot, layout, blobs = bins
    assert (layout.blocks, layout.groups, len(blobs)) == (6, 3, 18)
    rng = np.random.default_rng(2)
    values = rng.integers(-(1 << 45), 1 << 45, onehot.shape[0])  # signed, as packed gradients are
    nodes = [np.ones(onehot.shape[0], dtype=bool), rng.random(onehot.shape[0]) < 0.4, np.zeros(onehot.shape[0], dtype=bool)]
    with eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout, n_jobs=n_jobs) as evaluator:
        histograms = evaluator.node_histograms([np.where(node, values, 0) for node in nodes])
        histograms += evaluator.node_histograms([np.where(nodes[1], values, 0)])  # a second round reuses the workers
    for node, histogram in zip([*nodes, nodes[1]], histograms, strict=True):
        masked = eb.decrypt_masked_totals(feature_holder_key, histogram.ciphertexts, layout)
        assert masked.shape == (layout.groups * layout.columns_per_ciphertext,)
        totals = evaluator.unmask(masked, histogram.mask)
        np.testing.assert_array_equal(totals, onehot[node].T.astype(np.int64) @ values[node])
    assert evaluator.outputs_ == 4 * layout.groups
    ciphertext = 2 * 8 * len(BFVRuntime.for_context(feature_holder_key).moduli[eb.WIRE_LEVEL]) * layout.poly_degree
    assert all(len(b) < 0.51 * ciphertext for h in histograms for b in h.ciphertexts)  # half a ciphertext on the wire
    assert not np.array_equal(histograms[1].mask, histograms[3].mask)  # a fresh mask every time


def test_noise_stays_below_the_stated_bound_and_the_flooding_leaves_room(feature_holder_key, label_holder_copy):
    """At the most rows a layout allows and values spread over all of Z_t (worse than any gradients)."""
    rows = 1 << 17
    onehot = _onehot(rows, [32], seed=3)
    layout, blobs = eb.encrypt_bin_matrix(feature_holder_key, onehot)
    runtime = BFVRuntime.for_context(feature_holder_key)
    t = runtime.plain_modulus
    values = np.random.default_rng(4).integers(0, t, rows)
    delta_bits = sum(math.log2(q) for q in runtime.moduli[eb.PRODUCT_LEVEL]) - math.log2(t)

    bare = eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout, flood_bits=0, wire_level=eb.PRODUCT_LEVEL)
    (histogram,) = bare.node_histograms([values])
    budget = runtime.noise_budget(runtime.load(histogram.ciphertexts[0]))
    noise_bits = delta_bits - budget - 1  # SEAL's invariant budget is log2(Δ / 2‖v‖), to the bit
    assert noise_bits <= eb.EVAL_NOISE_BITS, f"measured noise 2^{noise_bits:.0f} above the stated bound 2^{eb.EVAL_NOISE_BITS}"

    unswitched = eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout, wire_level=eb.PRODUCT_LEVEL)
    (histogram,) = unswitched.node_histograms([values])
    ct = runtime.load(histogram.ciphertexts[0])
    runtime.evaluator.mod_switch_to_inplace(ct, runtime.parms_ids[eb.WIRE_LEVEL])  # as the compact output is made
    assert runtime.noise_budget(ct) >= 8  # decryption stays exact with margin, on the two primes it leaves on

    flooded = eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout)
    (histogram,) = flooded.node_histograms([values])
    totals = flooded.unmask(eb.decrypt_masked_totals(feature_holder_key, histogram.ciphertexts, layout), histogram.mask)
    expected = (onehot.T.astype(object) @ values.astype(object)) % t
    np.testing.assert_array_equal(np.mod(totals, t), expected.astype(np.int64))


def test_the_flooding_holds_40_bits_over_a_run():
    assert eb.run_statistical_distance(eb.RUN_CIPHERTEXTS) <= 2.0**-eb.STAT_BITS
    assert eb.FLOOD_BITS + 8 <= 180  # Δ at the product level ≈ 2^181, with room for decryption


def _looks_uniform(view: np.ndarray, t: int) -> bool:
    """Kolmogorov–Smirnov against U(0, t) at p > 1e-6 (a uniform view fails once in a million runs)."""
    return bool(stats.kstest(view.astype(np.float64) / t, "uniform").pvalue > 1e-6)


def test_the_feature_holder_decrypts_uniform_coefficients_and_a_missing_mask_is_caught(feature_holder_key, label_holder_copy, bins, monkeypatch):
    """The curious feature holder decrypts everything it receives: uniform mod t, whatever the gradients.

    Mutation: the same evaluator with its mask planted to zero must fail the same check.
    """
    onehot, layout, blobs = bins
    t = BFVRuntime.for_context(feature_holder_key).plain_modulus
    labels = np.random.default_rng(5).random(onehot.shape[0]) < 0.2
    gradients = np.where(labels, -(1 << 30), 1 << 28)  # a label-revealing pattern
    evaluator = eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout)
    (histogram,) = evaluator.node_histograms([gradients])
    view = _view_of_feature_holder(feature_holder_key, histogram.ciphertexts, layout)
    assert _looks_uniform(view, t)
    totals = eb.decrypt_masked_totals(feature_holder_key, histogram.ciphertexts, layout)
    true = onehot.T.astype(np.int64) @ gradients
    assert not np.isin(np.mod(true, t), totals).any()  # no total crosses in the clear

    monkeypatch.setattr(eb, "uniform_residues", lambda modulus, n: np.zeros(n, dtype=np.uint64))
    (leaky,) = evaluator.node_histograms([gradients])
    leaked = _view_of_feature_holder(feature_holder_key, leaky.ciphertexts, layout)
    assert not _looks_uniform(leaked, t)
    assert np.array_equal(eb.decrypt_masked_totals(feature_holder_key, leaky.ciphertexts, layout)[: onehot.shape[1]], np.mod(true, t).astype(np.uint64))


def test_bad_inputs_are_one_line_refusals(feature_holder_key, label_holder_copy, bins):
    onehot, layout, blobs = bins
    with pytest.raises(CryptoError, match="secret"):
        eb.encrypt_bin_matrix(label_holder_copy, onehot)
    with pytest.raises(CryptoError, match="public BFV context only"):
        eb.MaskedHistogramEvaluator(feature_holder_key, blobs, layout)
    with pytest.raises(DataValidationError, match="0s and 1s"):
        eb.encrypt_bin_matrix(feature_holder_key, onehot * 2)
    with pytest.raises(ProtocolError, match="17 ciphertexts, the layout 18"):
        eb.MaskedHistogramEvaluator(label_holder_copy, blobs[:-1], layout)
    for n_jobs in (1, 2):  # in process, or reported by the worker that got it, in one line
        with pytest.raises(CryptoError, match="does not load") as err:
            eb.MaskedHistogramEvaluator(label_holder_copy, [b"garbage"] + blobs[1:], layout, n_jobs=n_jobs)
        assert "\n" not in str(err.value)
    evaluator = eb.MaskedHistogramEvaluator(label_holder_copy, blobs, layout)
    with pytest.raises(ProtocolError, match="node values have 5 entries"):
        evaluator.node_histograms([np.zeros(5, dtype=np.int64)])
    (histogram,) = evaluator.node_histograms([np.ones(onehot.shape[0], dtype=np.int64)])
    with pytest.raises(ProtocolError, match="masked totals must be"):
        evaluator.unmask(np.zeros(3, dtype=np.uint64), histogram.mask)
    with pytest.raises(ProtocolError, match="2 ciphertexts, the layout 3"):
        eb.decrypt_masked_totals(feature_holder_key, histogram.ciphertexts[:2], layout)
    with pytest.raises(ProtocolError, match="not a frame"):
        eb.decrypt_masked_totals(feature_holder_key, blobs[:3], layout)  # fresh bins, not a masked histogram
    kind, fp, header, (c0, c1) = unpack_frame(histogram.ciphertexts[0])
    tampered = {
        "not at level": pack_frame(kind, fp, {**header, "level": eb.PRODUCT_LEVEL}, [c0, c1]),
        "under key": pack_frame(kind, "0" * len(fp), header, [c0, c1]),
        "c0 at 32 positions": pack_frame(kind, fp, header, [c0 + c0, c1]),  # more of c0 than the totals'
        "rows per block": pack_frame(kind, fp, {**header, "rows_per_block": 256}, [c0, c1]),
        "not reduced": pack_frame(kind, fp, header, [c0, b"\xff" * len(c1)]),
    }
    for message, blob in tampered.items():
        with pytest.raises(ProtocolError, match=message) as err:
            eb.decrypt_masked_totals(feature_holder_key, [blob, *histogram.ciphertexts[1:]], layout)
        assert "\n" not in str(err.value)
    evaluator.outputs_ = eb.RUN_CIPHERTEXTS - 1
    with pytest.raises(CryptoError, match="covers 4096 masked histograms"):
        evaluator.node_histograms([np.ones(onehot.shape[0], dtype=np.int64)])
