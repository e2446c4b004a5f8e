"""Federated WOE binning and IV (fedrisk.models.woe): equal to plaintext binning on the joined table.

Real default-credit rows, the real BFV histogram kernel (real TenSEAL ciphertexts),
every payload serialised and parsed as it crosses the wire.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.errors import ConfigError, ContextMismatchError, ProtocolError
from fedrisk.models.woe import (
    PlainWOE,
    VerticalWOE,
    WOECounts,
    merge_small_bins,
    monotone_groups,
    woe_iv,
)

ROWS = 3000


@pytest.fixture(scope="module")
def split(default_credit_dir):
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").set_index("id").iloc[:ROWS]
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    rng = np.random.default_rng(7)
    Xh = host.to_numpy(dtype=np.float64).copy()
    Xh[rng.random(ROWS) < 0.04, 0] = np.nan  # a NaN bucket big enough to stand alone
    Xh[rng.random(ROWS) < 0.005, 4] = np.nan  # one too small: joins the largest bin
    covered = rng.random(ROWS) < 0.85  # the feature holder knows 85 % of the bank's rows
    y = guest["y"].to_numpy(dtype=np.float64)
    Xb = guest.drop(columns="y").to_numpy(dtype=np.float64)
    return Xb, y, Xh, covered, list(host.columns)


@pytest.fixture(scope="module")
def fed(split):
    Xb, y, Xh, covered, names = split
    mono = {"tax_bureau": {names[0]: "decreasing", names[5]: "auto"}, "bank": {"x0": "auto"}}
    return VerticalWOE(n_bins=12, min_bin_size=60, monotone=mono).fit(Xb, y, {"tax_bureau": (Xh, covered)}, holder_feature_names={"tax_bureau": names})


def test_federated_iv_and_woe_equal_plaintext_on_the_joined_table(split, fed):
    Xb, y, Xh, covered, names = split
    ref = PlainWOE(n_bins=12, min_bin_size=60, monotone={names[0]: "decreasing", names[5]: "auto"})
    ref.fit(Xh[covered], y[covered], feature_names=names)  # the joined table: rows both parties hold
    for nm in names:
        assert abs(fed.iv_["tax_bureau"][nm] - ref.iv_[nm]) <= 1e-6, nm
    fh = fed.feature_holders_["tax_bureau"]
    W = fh.transform()
    assert np.max(np.abs(W[covered] - ref.transform(Xh[covered]))) <= 1e-6
    assert not W[~covered].any()  # uncovered rows: neutral WOE
    # the bank's own block is plain WOE on its own rows
    own = PlainWOE(n_bins=12, min_bin_size=60, monotone={"x0": "auto"}).fit(Xb, y)
    assert max(abs(fed.iv_["bank"][k] - v) for k, v in own.iv_.items()) <= 1e-6
    # the IVs carry information: PAY_0 (host x5) is the strongest single feature of default credit
    assert max(fed.iv_["tax_bureau"], key=fed.iv_["tax_bureau"].get) == "x5"
    assert fed.iv_["tax_bureau"]["x5"] > 0.3


def test_the_bank_holds_exact_counts_and_every_bin_meets_the_minimum_size(split, fed):
    _, y, Xh, covered, names = split
    tables = fed.label_holder_.tables_["tax_bureau"]
    for j, t in enumerate(tables):
        assert np.all(t.sizes >= 60), t.name
        assert t.sizes.sum() == covered.sum()  # NaN rows and every covered row counted once
        assert t.events.sum() == y[covered].sum()


def test_declared_monotone_features_have_a_monotone_event_rate(fed):
    for party, feat, direction in (("tax_bureau", "x0", "decreasing"), ("tax_bureau", "x5", "auto"), ("bank", "x0", "auto")):
        t = next(t for t in fed.label_holder_.tables_[party] if t.name == feat)
        g = int(t.groups.max()) + 1
        rate = t.events[:g] / t.sizes[:g]
        steps = np.diff(rate)
        if direction == "decreasing":
            assert np.all(steps <= 0), (feat, rate)
        else:
            assert np.all(steps <= 0) or np.all(steps >= 0), (feat, rate)
    # and an unconstrained feature kept its quantile bins (no merging toward monotone)
    t = next(t for t in fed.label_holder_.tables_["tax_bureau"] if t.name == "x9")
    assert np.array_equal(t.groups, np.arange(t.groups.size))


def test_plain_helpers():
    w, iv = woe_iv(np.array([10, 30]), np.array([100, 100]))
    assert w[0] > 0 > w[1] and iv > 0
    assert list(merge_small_bins(np.array([5, 100, 3, 2, 100]), 10)) == [0, 0, 1, 1, 1]
    assert list(monotone_groups(np.array([1, 5, 3, 9]), np.array([10, 10, 10, 10]), "increasing")) == [0, 1, 1, 2]


def test_bad_input_gives_one_line(split):
    Xb, y, Xh, covered, names = split
    cases = [
        (dict(n_bins=10, min_bin_size=400), "min_bin_size=400"),  # bins too small for the minimum size
        (dict(monotone={"tax_bureau": {"no_such": "increasing"}}), "unknown feature 'no_such'"),
        (dict(monotone={"nobody": {"x0": "increasing"}}), "unknown party 'nobody'"),
        (dict(monotone={"tax_bureau": {"x0": "up"}}), "monotone direction"),
    ]
    for params, words in cases:
        with pytest.raises(ConfigError) as err:
            VerticalWOE(**params).fit(Xb[:2000], y[:2000], {"tax_bureau": (Xh[:2000], covered[:2000])}, holder_feature_names={"tax_bureau": names})
        msg = str(err.value)
        assert words in msg and "\n" not in msg, msg


def test_counts_under_another_key_or_out_of_range_are_refused(split, fed):
    from fedrisk.crypto.encrypted_histogram import make_histogram_context
    from fedrisk.models.woe import LabelHolderWOE

    data = next(d for s, r, k, d in fed.transcript_ if k == "WOECounts")
    other = LabelHolderWOE(make_histogram_context())
    with pytest.raises(ContextMismatchError):
        WOECounts.from_bytes(data, context=other.context)
    counts = WOECounts.from_bytes(data)
    lying = WOECounts(
        counts.fingerprint, counts.layout, tuple(0.0 for _ in counts.sizes), counts.names, counts.monotone, counts.rr_p, counts.histogram
    )  # sizes below the event counts
    with pytest.raises(ProtocolError, match="outside"):
        fed.label_holder_.receive("tax_bureau", lying)
