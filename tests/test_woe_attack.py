"""Federated WOE/IV, attacked by the curious label holder and the curious feature holder.

A small real run (default-credit rows, the feature holder covering 90 % of the
bank's rows, real BFV ciphertexts) records every message as it crossed the wire;
each attacker parses what its role received with the real parsers — never trusting
the declared payload class — and tries to read more than the stated leakage
(module docstring of :mod:`fedrisk.models.woe`):

* the bank may learn per-bin event counts and bin sizes of the feature holder's
  features, never a row's bin or value;
* the feature holder may learn the event count of each of its own bins (it needs
  its WOE), never a row's label.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from fedrisk.crypto.bfv import BFVRuntime
from fedrisk.crypto.encrypted_histogram import WIRE_LEVEL, decrypt_histogram, decrypt_slots, quantisation
from fedrisk.crypto.frames import pack_frame, unpack_frame
from fedrisk.errors import ProtocolError
from fedrisk.crypto.bfv import public_bfv_context
from fedrisk.models.woe import (
    SMOOTHING,
    FeatureHolderWOE,
    LabelHolderWOE,
    VerticalWOE,
    WOECounts,
    WOEPlan,
    WOEResult,
)

ROWS, MIN_BIN = 2400, 80
PARSERS = {b"WPLN": WOEPlan, b"WCNT": WOECounts, b"WRES": WOEResult}


@pytest.fixture(scope="module")
def run(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id").iloc[:ROWS]
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    covered = np.random.default_rng(3).random(ROWS) < 0.9
    Xh = host.to_numpy(dtype=np.float64)
    y = guest["y"].to_numpy(dtype=np.float64)
    model = VerticalWOE(n_bins=10, min_bin_size=MIN_BIN).fit(
        guest.drop(columns="y").to_numpy(), y, {"tax_bureau": (Xh, covered)}, holder_feature_names={"tax_bureau": list(host.columns)}
    )
    return {"model": model, "Xh": Xh, "y": y, "covered": covered}


def _received(model: VerticalWOE, role: str) -> list:
    """Every message ``role`` received, parsed by its *actual* kind (the frame), not the sender's class name."""
    out = []
    for _, receiver, _, data in model.transcript_:
        if receiver != role:
            continue
        kind, _, _, _ = unpack_frame(data)
        assert kind in PARSERS, f"{role} received an unknown payload kind {kind!r}"
        out.append(PARSERS[kind].from_bytes(data))
    return out


def _numbers(payload) -> list[np.ndarray]:
    """Every readable numeric vector in a payload's clear part."""
    vecs = []
    if isinstance(payload, WOECounts):
        vecs += [np.asarray(payload.sizes), np.asarray(payload.rr_p)]
    if isinstance(payload, WOEResult):
        for f in payload.features:
            vecs += [np.asarray(f["groups"], dtype=float), np.asarray(f["woe"], dtype=float), np.array([f["iv"]])]
    return vecs


# --------------------------------------------------------------------------- curious label holder


def test_curious_bank_decrypts_nothing_but_whole_bin_totals(run):
    model = run["model"]
    bank = model.label_holder_
    runtime = BFVRuntime.for_context(bank.context)
    got = _received(model, "bank")
    assert [type(p) for p in got] == [WOECounts]
    counts = got[0]
    counts.check(bank.context)
    for blob in counts.histogram:  # real ciphertexts under the federation key, wire level only
        assert runtime.level_of(runtime.load(blob)) == WIRE_LEVEL
    slots = np.asarray(decrypt_slots(bank.context, list(counts.histogram), counts.layout), dtype=np.float64)
    truth = np.concatenate(_true_column_events(model, run))
    # every decrypted slot is the whole total of a column (events · 2^a, h = 0) or padding 0: no partial sum
    # over some of the rows, nothing per row
    a = quantisation(counts.layout.rows).g_bits
    seen = set(np.unique(slots / 2.0**a).tolist())
    assert seen <= set(truth.tolist()) | {0.0}, sorted(seen - set(truth.tolist()))[:5]
    G, _ = decrypt_histogram(bank.context, list(counts.histogram), counts.layout)
    assert np.array_equal(G, truth)  # and the totals are exact


def _true_column_events(model: VerticalWOE, run) -> list[np.ndarray]:
    from fedrisk.models.woe import column_counts

    fh = model.feature_holders_["tax_bureau"]
    b = fh.binned_
    return column_counts(b.codes, b.n_bins, b.has_missing, run["covered"], run["y"])


def test_curious_bank_reads_no_row_level_value_and_no_small_bin(run):
    """Nothing the bank can read in the clear has anything near a row's length (only per-bin numbers),
    and every bin it sees holds ≥ min_bin_size rows."""
    model, covered = run["model"], run["covered"]
    counts = _received(model, "bank")[0]
    for vec in _numbers(counts):
        assert vec.size < covered.sum() // 4
    assert min(counts.sizes) >= MIN_BIN


def test_planted_leaks_in_the_counts_are_refused(run):
    """A feature holder that smuggles row-level data in the counts message is refused by the parser."""
    model, Xh = run["model"], run["Xh"]
    data = next(d for _, r, _, d in model.transcript_ if r == "bank")
    kind, fp, header, blobs = unpack_frame(data)
    smuggled = dict(header, debug=[float(v) for v in Xh[:, 0]])  # raw feature values riding along
    with pytest.raises(ProtocolError, match="unknown field"):
        WOECounts.from_bytes(pack_frame(kind, fp, smuggled, blobs))
    per_row = dict(header, sizes=[float(v) for v in Xh[:, 0]])  # "sizes" that are the column itself
    with pytest.raises(ProtocolError, match="sizes"):
        WOECounts.from_bytes(pack_frame(kind, fp, per_row, blobs))


def test_randomised_response_bounds_what_the_bank_reads(run):
    """With dp_epsilon the bank's counts are those of randomised codes: they differ from the truth,
    and the debiased IV still finds the strongest feature."""
    model, Xh, covered, y = run["model"], run["Xh"], run["covered"], run["y"]
    bank = LabelHolderWOE(model.label_holder_.context, n_bins=10, min_bin_size=MIN_BIN)
    plan = bank.plan(y)
    fh = FeatureHolderWOE(public_bfv_context(bank.context), name="tax_bureau", dp_epsilon=40.0, random_state=0)
    fh.setup(Xh, covered)
    counts = WOECounts.from_bytes(fh.respond(WOEPlan.from_bytes(plan.to_bytes())).to_bytes())
    assert all(0.0 < p < 1.0 for p in counts.rr_p) and all(p == fh.rr_p_[j] for j, p in enumerate(counts.rr_p))
    eps_f = 40.0 / Xh.shape[1]
    k0 = counts.layout.n_bins[0] + int(counts.layout.has_missing[0])
    assert math.isclose(counts.rr_p[0], k0 / (math.expm1(eps_f) + k0))
    truth = np.concatenate(
        [
            np.bincount(np.where(c == 255, k, c)[covered].astype(int), minlength=k + int(m))
            for c, k, m in zip(fh.binned_.codes.T, fh.binned_.n_bins, fh.binned_.has_missing, strict=True)
        ]
    )
    assert np.any(np.asarray(counts.sizes) != truth)
    bank.receive("tax_bureau", counts)
    exact = model.iv_["tax_bureau"]
    noisy = bank.iv_["tax_bureau"]
    assert max(noisy, key=noisy.get) == max(exact, key=exact.get) == "x5"


# --------------------------------------------------------------------------- curious feature holder


def test_curious_feature_holder_cannot_decrypt_the_labels(run):
    model = run["model"]
    fh = model.feature_holders_["tax_bureau"]
    got = _received(model, "tax_bureau")
    assert [type(p) for p in got] == [WOEPlan, WOEResult]
    plan = got[0]
    plan.check(fh.context)
    assert not fh.context.is_private()
    runtime = BFVRuntime.for_context(fh.context)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do: there is no secret key here
        runtime.decrypt(runtime.load(plan.labels[0]))
    for vec in sum((_numbers(p) for p in got), []):
        assert vec.size < len(run["y"]) // 4  # nothing of a label vector's length is readable


def _solve_events(woe: np.ndarray, sizes: np.ndarray, s: float = SMOOTHING) -> np.ndarray:
    """The feature holder's attack: per-bin event counts from its WOE values and its own bin sizes."""
    N, K = sizes.sum(), sizes.size
    r = np.exp(woe)

    def events(E: float) -> np.ndarray:
        ratio = r * (N - E + s * K) / (E + s * K)  # (n_b − e_b + s)/(e_b + s)
        return (sizes + s - s * ratio) / (1.0 + ratio)

    E = brentq(lambda E: events(E).sum() - E, 1e-9, N - 1e-9)
    return events(E)


def test_curious_feature_holder_learns_its_own_bins_event_counts_and_no_more(run):
    """The stated leakage is exact: the feature holder recovers each own bin's event count. Its best
    row-level label guess is then a function of its own bins, so it can do no better than the
    event rate of each bin — which it could already compute; nothing finer is in its view."""
    model, covered, y = run["model"], run["covered"], run["y"]
    fh = model.feature_holders_["tax_bureau"]
    result = _received(model, "tax_bureau")[1]
    truth = model.label_holder_.tables_["tax_bureau"]
    rates_auc = []
    for j, entry in enumerate(result.features):
        groups = np.asarray(entry["groups"])
        k, m = fh.binned_.n_bins[j], fh.binned_.has_missing[j]
        codes = fh.binned_.codes[:, j].astype(int)
        merged = np.where(codes == 255, groups.max() + 1, groups[np.minimum(codes, k - 1)])
        sizes = np.bincount(merged[covered], minlength=groups.max() + 1 + int(m)).astype(float)
        woe = np.asarray(entry["woe"] + ([entry["woe_missing"]] if m else []), dtype=float)
        recovered = _solve_events(woe, sizes)
        assert np.allclose(recovered, truth[j].events, atol=1e-6), entry["name"]  # stated leakage, recovered
        guess = (recovered / np.maximum(sizes, 1))[merged[covered]]
        rates_auc.append(_auc(y[covered], guess))
    # a label guess from the recovered bin rates ranks like one feature's bins: well below a label leak
    assert max(rates_auc) < 0.75


def test_label_dp_at_the_bank_blurs_what_the_feature_holder_recovers(run):
    model, Xh, covered, y = run["model"], run["Xh"], run["covered"], run["y"]
    bank = LabelHolderWOE(model.label_holder_.context, n_bins=10, min_bin_size=MIN_BIN, label_dp_epsilon=1.0, random_state=1)
    plan = bank.plan(y)
    fh = FeatureHolderWOE(public_bfv_context(bank.context), name="tax_bureau", min_bin_size=MIN_BIN)
    fh.setup(Xh, covered)
    counts = fh.respond(WOEPlan.from_bytes(plan.to_bytes()))
    result = bank.receive("tax_bureau", WOECounts.from_bytes(counts.to_bytes()))
    exact = model.label_holder_.tables_["tax_bureau"]
    moved = sum(int(np.any(np.asarray(f["woe"]) != exact[j].woe)) for j, f in enumerate(result.features))
    assert moved >= len(result.features) - 1


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from fedrisk.models.metrics import auc

    return float(auc(y, s))
