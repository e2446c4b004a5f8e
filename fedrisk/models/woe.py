"""Federated WOE binning and information value (IV) for every feature of every party.

Weight of evidence and information value are the scorecard team's first look at a
feature: bin it, count events (defaults) and non-events per bin, and read
``WOE_b = ln(%non-event_b / %event_b)`` and ``IV = Σ_b (%non-event_b − %event_b)·WOE_b``.
In a vertical federation the labels sit at the bank and the feature values at the
feature holders; this module computes exactly what the bank would compute on the
joined table, without either side handing over its raw data.

Protocol (three messages per feature holder, in-process here; payloads are
serialised frames, never pickled)::

    bank ──WOEPlan + [[y]]─────────▶ feature holder      (ciphertext; 4096 labels per CKKS ciphertext)
    bank ◀─WOECounts────────────────  feature holder     (ciphertext histograms + clear bin sizes)
    bank ──WOEResult────────────────▶ feature holder     (public: per own bin its WOE, per own feature its IV)

1. The bank encrypts its labels with
   :func:`fedrisk.crypto.encrypted_histogram.encrypt_gradients` (``grad = y``,
   ``hess = 0``) under its own secret context.
2. Each feature holder bins its own features (quantile bins on its covered rows,
   :class:`~fedrisk.models.secureboost_tree.QuantileBinner`), merges adjacent bins
   smaller than ``min_bin_size`` (:func:`merge_small_bins`; a small NaN bucket joins
   the largest bin), and runs :class:`~fedrisk.crypto.encrypted_histogram.EncryptedHistogramKernel`
   once over all its covered rows: the encrypted per-bin event counts
   ``Σ_{i∈bin} y_i``. It sends them, the bin sizes (it knows them), its feature
   names and the monotone direction it declares per feature.
3. The bank decrypts, rounds the event counts to integers, derives the non-event
   counts as ``size − events``, merges adjacent bins toward a monotone event rate
   where the owner asked for it (pool-adjacent-violators, :func:`monotone_groups`)
   and computes WOE and IV (:func:`woe_iv`, ``smoothing`` = 0.5 added to every
   count so that an empty cell has a finite WOE). It returns to each feature holder
   only that holder's merge groups, WOE values and IVs.
4. Each feature holder maps its own column to WOE locally (:meth:`FeatureHolderWOE.transform`);
   uncovered rows get WOE 0 (neutral).

Exactness. Event counts are integers and the histogram kernel is exact (BFV:
the labels ``y ∈ {0, 1}`` quantise exactly and decryption carries no noise — the
kernel's flooding hides the ciphertext noise without touching the totals). The
bank rounds the decrypted totals to integers as a guard. The result equals
:class:`PlainWOE` on the joined table bit for bit (same bins, same counts, same
floating-point formula).

Leakage
-------
*Label holder (bank)* learns, per feature of every feature holder: the number of
bins, the size of every bin and its event count (the joint distribution of the
label and the binned feature — WOE/IV need exactly that), whether the feature has
missing values, the feature names and declared monotone directions — never a
threshold, a row's bin or a row's value. Options that bound it, chosen by the
feature holder:

* ``min_bin_size``: no bin (NaN bucket included) below it reaches the bank; a run
  whose ``n_bins × min_bin_size`` exceeds the covered rows is refused with one line.
* ``dp_epsilon``: before counting, the feature holder passes each covered row's
  bin code of each of its F features through k-ary randomised response (keep the
  code with probability ``1 − p``, else draw one of the feature's ``k`` columns
  uniformly; ``p = k/(e^{ε/F} − 1 + k)``), and both the encrypted event counts and
  the clear bin sizes are those of the randomised codes. Each row's codes are then
  ``(ε, 0)``-locally differentially private (ε/F per feature, basic composition),
  so everything the bank reads — for any number of rows — is ``(ε, δ = 0)``-DP with
  respect to any one row of the feature holder's table. The bank debiases the
  counts (``n_b = (n'_b − pN/k)/(1 − p)``, the same for events) before WOE; IV is
  then an estimate, no longer exact. Randomised response is used rather than
  Gaussian noise on the totals because the exact (BFV) kernel adds nothing to the
  totals and the feature holder has no other way to perturb an encrypted count.

*Feature holder* learns the encrypted labels (under a key it does not hold), and
back: for each of its own (merged) bins the WOE and for each of its own features
the IV. With its own bin sizes that determines the event count of each of its own
bins — the label distribution over its own bins, which transforming its column to
WOE locally needs. It never learns a row's label, another party's features, bins
or IVs. ``label_dp_epsilon``/``label_dp_delta`` at the bank bound this: Gaussian
noise on the merged bins' event counts before WOE is released (one label changes
one bin per feature: sensitivity √F).

*Coordinator* (when relayed): ciphertexts, the bin sizes and names in the counts
payload, the WOE table.

Both attack directions are tested on the real messages
(``tests/test_woe_attack.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
from sklearn.base import BaseEstimator

from fedrisk.crypto.bfv import public_bfv_context
from fedrisk.crypto.encrypted_histogram import (
    EncryptedHistogramKernel,
    HistogramLayout,
    decrypt_histogram,
    encrypt_gradients,
)
from fedrisk.crypto.encrypted_matvec import context_fingerprint
from fedrisk.errors import ConfigError, DataValidationError, ProtocolError
from fedrisk.models.secureboost_tree import MAX_BINS, MISSING, QuantileBinner
from fedrisk.models.payload_fields import int_field
from fedrisk.models.vertical_lr import VerticalPayload

__all__ = [
    "MONOTONE",
    "SMOOTHING",
    "FeatureHolderWOE",
    "FeatureWOE",
    "LabelHolderWOE",
    "PlainWOE",
    "VerticalWOE",
    "WOECounts",
    "WOEPlan",
    "WOEResult",
    "bin_features",
    "gaussian_sigma",
    "randomised_response",
    "merge_small_bins",
    "monotone_groups",
    "woe_iv",
]

#: Added to every event and non-event count before WOE (an empty cell gets a finite WOE).
SMOOTHING = 0.5
#: Monotone directions a feature's owner may declare for its event rate over bins.
MONOTONE = ("none", "auto", "increasing", "decreasing")


# =========================================================================== plain math


def woe_iv(events: np.ndarray, sizes: np.ndarray, smoothing: float = SMOOTHING) -> tuple[np.ndarray, float]:
    """WOE per bin and the feature's IV from integer event counts and bin sizes.

    ``WOE_b = ln(((n_b − e_b + s)/(N − E + s·K)) / ((e_b + s)/(E + s·K)))`` with
    ``K`` bins and smoothing ``s``; ``IV = Σ_b (pn_b − pe_b)·WOE_b``. A higher WOE
    means a lower event (default) rate.
    """
    e = np.asarray(events, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    ne = n - e
    k = e.size
    pe = (e + smoothing) / (e.sum() + smoothing * k)
    pn = (ne + smoothing) / (ne.sum() + smoothing * k)
    w = np.log(pn / pe)
    return w, float(np.sum((pn - pe) * w))


def merge_small_bins(sizes: np.ndarray, min_bin_size: int) -> np.ndarray:
    """Groups of adjacent bins so that every group holds ≥ ``min_bin_size`` rows.

    Repeatedly merges the smallest group with its smaller neighbour. Returns the
    group index of each input bin (non-decreasing, starting at 0).
    """
    counts = [int(s) for s in sizes]
    groups = [[i] for i in range(len(counts))]
    tot = list(counts)
    while len(tot) > 1 and min(tot) < min_bin_size:
        j = int(np.argmin(tot))
        if j == 0:
            k = 1
        elif j == len(tot) - 1:
            k = j - 1
        else:
            k = j - 1 if tot[j - 1] <= tot[j + 1] else j + 1
        a, b = min(j, k), max(j, k)
        groups[a] += groups[b]
        tot[a] += tot[b]
        del groups[b], tot[b]
    out = np.empty(len(counts), dtype=np.int64)
    for g, members in enumerate(groups):
        out[members] = g
    return out


def monotone_groups(events: np.ndarray, sizes: np.ndarray, direction: str) -> np.ndarray:
    """Merge adjacent bins (pool-adjacent-violators) until the event rate is monotone.

    ``direction``: ``"increasing"``/``"decreasing"``, ``"auto"`` (the sign of the
    size-weighted correlation of bin index and event rate), or ``"none"``.
    Returns the group index of each bin.
    """
    e = np.asarray(events, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    k = e.size
    if direction == "none" or k <= 1:
        return np.arange(k, dtype=np.int64)
    if direction == "auto":
        rate = e / np.maximum(n, 1.0)
        idx = np.arange(k, dtype=np.float64)
        wm = np.average(idx, weights=np.maximum(n, 1e-12))
        cov = np.sum(n * (idx - wm) * (rate - np.average(rate, weights=np.maximum(n, 1e-12))))
        direction = "decreasing" if cov < 0 else "increasing"
    sign = 1.0 if direction == "increasing" else -1.0
    blocks: list[list[float]] = []  # [events, sizes, first bin, last bin]
    for i in range(k):
        blocks.append([e[i], n[i], i, i])
        while len(blocks) > 1:
            a, b = blocks[-2], blocks[-1]
            ra = a[0] / a[1] if a[1] > 0 else 0.0
            rb = b[0] / b[1] if b[1] > 0 else 0.0
            if sign * (rb - ra) >= 0:
                break
            blocks[-2] = [a[0] + b[0], a[1] + b[1], a[2], b[3]]
            blocks.pop()
    out = np.empty(k, dtype=np.int64)
    for g, (_, _, lo, hi) in enumerate(blocks):
        out[int(lo) : int(hi) + 1] = g
    return out


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Std of the classic Gaussian mechanism: ``Δ·√(2 ln(1.25/δ))/ε`` (needs 0 < ε ≤ 1, 0 < δ < 1)."""
    if not (0.0 < epsilon <= 1.0) or not (0.0 < delta < 1.0):
        raise ConfigError(f"Gaussian mechanism needs 0 < epsilon ≤ 1 and 0 < delta < 1, got ({epsilon}, {delta})")
    return float(sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)


def rr_probability(epsilon: float, k: int) -> float:
    """Replacement probability ``p = k/(e^ε − 1 + k)`` of k-ary randomised response at level ε."""
    if not (math.isfinite(epsilon) and epsilon > 0.0):
        raise ConfigError(f"dp_epsilon must be a positive number, got {epsilon!r}")
    return float(k / (math.expm1(epsilon) + k)) if k > 1 else 0.0


def randomised_response(codes: np.ndarray, k: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Each code kept with probability ``1 − p``, else replaced by a uniform draw from ``0..k−1``."""
    codes = np.asarray(codes, dtype=np.int64)
    swap = rng.random(codes.size) < p
    out = codes.copy()
    out[swap] = rng.integers(0, k, int(swap.sum()))
    return out


# =========================================================================== binning (feature holder, local)


@dataclass
class _Binned:
    codes: np.ndarray  # (n, F) uint8, MISSING for a NaN with its own column
    n_bins: list[int]
    has_missing: list[bool]
    thresholds: list[np.ndarray]
    nan_bin: list[int]  # -1: NaN has its own column; else the bin NaN rows join


def bin_features(X: np.ndarray, covered: np.ndarray, n_bins: int, min_bin_size: int) -> _Binned:
    """Quantile bins on the covered rows, adjacent bins below ``min_bin_size`` merged.

    Raises
    ------
    ConfigError
        ``min_bin_size`` cannot be met: fewer covered rows than ``n_bins·min_bin_size``
        would need (one line).
    """
    X = np.asarray(X, dtype=np.float64)
    cov = np.asarray(covered, dtype=bool)
    n_cov = int(cov.sum())
    if not isinstance(n_bins, int | np.integer) or not 2 <= int(n_bins) <= MAX_BINS:
        raise ConfigError(f"n_bins must be an integer in 2..{MAX_BINS}, got {n_bins!r}")
    if min_bin_size < 1:
        raise ConfigError(f"min_bin_size must be ≥ 1, got {min_bin_size}")
    if n_cov < int(n_bins) * int(min_bin_size):
        raise ConfigError(
            f"n_bins={n_bins} × min_bin_size={min_bin_size} needs {int(n_bins) * int(min_bin_size)} rows, "
            f"the party covers {n_cov}: lower n_bins or min_bin_size"
        )
    binner = QuantileBinner(int(n_bins)).fit(X, cov)
    raw = binner.transform(X)
    codes = np.zeros_like(raw)
    out = _Binned(codes, [], [], [], [])
    for j in range(X.shape[1]):
        col = raw[:, j]
        nan = col == MISSING
        k = int(binner.n_bins_[j])
        sizes = np.bincount(col[cov & ~nan].astype(np.int64), minlength=k)
        groups = merge_small_bins(sizes, min_bin_size)
        t = binner.thresholds_[j]
        keep = [i for i in range(t.size) if groups[i] != groups[i + 1]]
        thresholds = t[keep]
        new = np.searchsorted(thresholds, np.where(np.isnan(X[:, j]), 0.0, X[:, j]), side="left").astype(np.uint8)
        k2 = thresholds.size + 1
        new_sizes = np.bincount(new[cov & ~nan].astype(np.int64), minlength=k2)
        n_nan = int(np.sum(cov & nan))
        if n_nan == 0:
            nan_bin, has_missing = -1, False
        elif n_nan >= min_bin_size:
            nan_bin, has_missing = -1, True
            new[nan] = MISSING
        else:  # too small to show on its own: NaN rows join the largest bin
            nan_bin, has_missing = int(np.argmax(new_sizes)), False
            new[nan] = nan_bin
        codes[:, j] = new
        out.n_bins.append(k2)
        out.has_missing.append(has_missing)
        out.thresholds.append(thresholds)
        out.nan_bin.append(nan_bin)
    return out


def column_counts(
    codes: np.ndarray, n_bins: Sequence[int], has_missing: Sequence[bool], covered: np.ndarray, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Per feature, the per-column totals of ``weights`` (1 = sizes) over covered rows: bins, then NaN."""
    cov = np.asarray(covered, dtype=bool)
    w = np.ones(codes.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    out = []
    for j, (k, m) in enumerate(zip(n_bins, has_missing, strict=True)):
        col = codes[:, j].astype(np.int64)
        col = np.where(col == MISSING, k, col)
        out.append(np.bincount(col[cov], weights=w[cov], minlength=k + int(m))[: k + int(m)])
    return out


# =========================================================================== per-feature result


@dataclass
class FeatureWOE:
    """One feature's WOE table.

    Attributes
    ----------
    name : str
    groups : ndarray of int
        Merged bin of each of the owner's bins (monotone merging; identity if none).
    woe : ndarray
        WOE per merged bin.
    woe_missing : float or None
        WOE of the NaN bucket when it has its own column.
    iv : float
    events, sizes : ndarray
        Per merged bin (then the NaN bucket) — held by the label holder only.
    """

    name: str
    groups: np.ndarray
    woe: np.ndarray
    woe_missing: float | None
    iv: float
    events: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "groups": [int(g) for g in self.groups],
            "woe": [float(v) for v in self.woe],
            "woe_missing": None if self.woe_missing is None else float(self.woe_missing),
            "iv": float(self.iv),
        }


def _feature_woe(name: str, events: np.ndarray, sizes: np.ndarray, n_bins: int, has_missing: bool, direction: str, smoothing: float) -> FeatureWOE:
    e_b, n_b = events[:n_bins], sizes[:n_bins]
    groups = monotone_groups(e_b, n_b, direction)
    g = int(groups.max()) + 1
    e_m = np.bincount(groups, weights=e_b, minlength=g)
    n_m = np.bincount(groups, weights=n_b, minlength=g)
    if has_missing:
        e_m, n_m = np.append(e_m, events[n_bins]), np.append(n_m, sizes[n_bins])
    w, iv = woe_iv(e_m, n_m, smoothing)
    return FeatureWOE(name, groups, w[:g], float(w[g]) if has_missing else None, iv, e_m, n_m)


def _transform(codes: np.ndarray, covered: np.ndarray, tables: Sequence[FeatureWOE], n_bins: Sequence[int], has_missing: Sequence[bool]) -> np.ndarray:
    out = np.zeros(codes.shape, dtype=np.float64)
    cov = np.asarray(covered, dtype=bool)
    for j, t in enumerate(tables):
        col = codes[:, j].astype(np.int64)
        nan = col == MISSING
        vals = np.asarray(t.woe)[np.asarray(t.groups)[np.where(nan, 0, col)]]
        if has_missing[j]:
            vals = np.where(nan, t.woe_missing, vals)
        out[:, j] = np.where(cov, vals, 0.0)
    return out


def check_monotone(monotone: Mapping[str, str] | None, names: Sequence[str], who: str) -> list[str]:
    monotone = dict(monotone or {})
    unknown = sorted(set(monotone) - set(names))
    if unknown:
        raise ConfigError(f"{who}: monotone constraint on unknown feature {unknown[0]!r}")
    bad = [d for d in monotone.values() if d not in MONOTONE]
    if bad:
        raise ConfigError(f"{who}: monotone direction must be one of {', '.join(MONOTONE)}, got {bad[0]!r}")
    return [monotone.get(nm, "none") for nm in names]


def _names(names: Sequence[str] | None, m: int) -> list[str]:
    names = [f"x{j}" for j in range(m)] if names is None else [str(n) for n in names]
    if len(names) != m or len(set(names)) != m:
        raise DataValidationError(f"need {m} distinct feature names, got {len(names)}")
    return names


# =========================================================================== plaintext reference


class PlainWOE(BaseEstimator):
    """WOE binning and IV on a plaintext table (the reference the federated result must equal).

    Parameters
    ----------
    n_bins : int
        Quantile bins per feature before merging.
    min_bin_size : int
        Adjacent bins (and a NaN bucket) below it are merged.
    monotone : mapping feature name → direction, optional
        ``"increasing"``, ``"decreasing"``, ``"auto"`` or ``"none"`` (default).
    smoothing : float

    Attributes
    ----------
    tables_ : list of FeatureWOE
    iv_ : dict of str → float
    feature_names_in_ : list of str
    """

    def __init__(self, *, n_bins: int = 10, min_bin_size: int = 1, monotone: Mapping[str, str] | None = None, smoothing: float = SMOOTHING) -> None:
        self.n_bins = n_bins
        self.min_bin_size = min_bin_size
        self.monotone = monotone
        self.smoothing = smoothing

    def fit(self, X: np.ndarray, y: np.ndarray, *, feature_names: Sequence[str] | None = None, covered: np.ndarray | None = None) -> PlainWOE:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        cov = np.ones(X.shape[0], dtype=bool) if covered is None else np.asarray(covered, dtype=bool)
        self.feature_names_in_ = _names(feature_names, X.shape[1])
        directions = check_monotone(self.monotone, self.feature_names_in_, "PlainWOE")
        self.binned_ = bin_features(X, cov, self.n_bins, self.min_bin_size)
        b = self.binned_
        sizes = column_counts(b.codes, b.n_bins, b.has_missing, cov)
        events = column_counts(b.codes, b.n_bins, b.has_missing, cov, y)
        self.tables_ = [
            _feature_woe(nm, np.rint(e), s, k, m, d, self.smoothing)
            for nm, e, s, k, m, d in zip(self.feature_names_in_, events, sizes, b.n_bins, b.has_missing, directions, strict=True)
        ]
        self.iv_ = {t.name: t.iv for t in self.tables_}
        return self

    def transform(self, X: np.ndarray, covered: np.ndarray | None = None) -> np.ndarray:
        """WOE of each value under the fitted bins (uncovered rows: 0)."""
        X = np.asarray(X, dtype=np.float64)
        cov = np.ones(X.shape[0], dtype=bool) if covered is None else np.asarray(covered, dtype=bool)
        return _transform(_codes(X, self.binned_), cov, self.tables_, self.binned_.n_bins, self.binned_.has_missing)


def _codes(X: np.ndarray, b: _Binned) -> np.ndarray:
    """Bin codes of new rows under fitted thresholds (NaN → own column or the bin it joined)."""
    if X.shape[1] != len(b.thresholds):
        raise DataValidationError(f"WOE bins were fitted on {len(b.thresholds)} features, got {X.shape[1]}")
    codes = np.empty(X.shape, dtype=np.uint8)
    for j, t in enumerate(b.thresholds):
        col = X[:, j]
        nan = np.isnan(col)
        c = np.searchsorted(t, np.where(nan, 0.0, col), side="left").astype(np.uint8)
        c[nan] = MISSING if b.nan_bin[j] < 0 else b.nan_bin[j]
        codes[:, j] = c
    return codes


# =========================================================================== payloads


def _exact_keys(h: Mapping[str, Any], keys: set[str], what: str) -> None:
    """Refuse a header with fields the protocol does not define (nothing rides along unparsed)."""
    extra = sorted(set(h) - keys)
    if extra:
        raise ProtocolError(f"{what} carries an unknown field {extra[0]!r}")


def _json_header(h: Mapping[str, Any], key: str) -> Any:
    v = h.get(key)
    if v is None:
        raise ProtocolError(f"payload field {key!r} is missing")
    return v


@dataclass(frozen=True)
class WOEPlan(VerticalPayload):
    """Bank → feature holder: the encrypted labels ``[[y]]`` and the run's binning parameters.

    ``n_bins`` and ``min_bin_size`` are the run's; a feature holder may raise its
    own ``min_bin_size`` floor, never lower it.
    """

    KIND: ClassVar[bytes] = b"WPLN"
    content_class: ClassVar[str] = "ciphertext"
    fingerprint: str
    n_values: int
    n_bins: int
    min_bin_size: int
    labels: tuple[bytes, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"n_values": self.n_values, "n_bins": self.n_bins, "min_bin_size": self.min_bin_size}

    def _blobs(self) -> list[bytes]:
        return list(self.labels)

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> WOEPlan:
        _exact_keys(h, {"n_values", "n_bins", "min_bin_size"}, "WOE plan")
        n = int_field(h, "n_values")
        if not blobs:
            raise ProtocolError("WOE plan carries no label ciphertexts")
        return cls(fp, n, int_field(h, "n_bins"), int_field(h, "min_bin_size"), tuple(blobs))


@dataclass(frozen=True)
class WOECounts(VerticalPayload):
    """Feature holder → bank: encrypted per-bin event counts, clear bin sizes, names, declared directions.

    Blob 0 is a JSON header-extension (sizes per column, names, directions, DP
    parameters); the rest are the histogram ciphertexts.
    """

    KIND: ClassVar[bytes] = b"WCNT"
    content_class: ClassVar[str] = "ciphertext"
    fingerprint: str
    layout: HistogramLayout
    sizes: tuple[float, ...]
    names: tuple[str, ...]
    monotone: tuple[str, ...]
    rr_p: tuple[float, ...]
    histogram: tuple[bytes, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"layout": self.layout.to_dict(), "sizes": list(self.sizes), "names": list(self.names), "monotone": list(self.monotone), "rr_p": list(self.rr_p)}

    def _blobs(self) -> list[bytes]:
        return list(self.histogram)

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> WOECounts:
        _exact_keys(h, {"layout", "sizes", "names", "monotone", "rr_p"}, "WOE counts")
        layout = HistogramLayout.from_dict(_json_header(h, "layout"))
        sizes = _json_header(h, "sizes")
        names = _json_header(h, "names")
        mono = _json_header(h, "monotone")
        if (
            not isinstance(sizes, list)
            or len(sizes) != layout.n_columns
            or any(not isinstance(s, int | float) or isinstance(s, bool) or not math.isfinite(s) for s in sizes)
        ):
            raise ProtocolError("WOE counts: bin sizes do not match the layout")
        if not isinstance(names, list) or len(names) != layout.n_features or any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ProtocolError("WOE counts: feature names do not match the layout")
        if not isinstance(mono, list) or len(mono) != layout.n_features or any(m not in MONOTONE for m in mono):
            raise ProtocolError("WOE counts: monotone directions are malformed")
        if len(blobs) != layout.n_ciphertexts:
            raise ProtocolError(f"WOE counts carry {len(blobs)} ciphertexts, the layout {layout.n_ciphertexts}")
        rr = _json_header(h, "rr_p")
        if (
            not isinstance(rr, list)
            or len(rr) != layout.n_features
            or any(not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v < 1.0 for v in rr)
        ):
            raise ProtocolError("WOE counts: randomised-response probabilities are malformed")
        return cls(fp, layout, tuple(float(s) for s in sizes), tuple(names), tuple(mono), tuple(float(v) for v in rr), tuple(blobs))


@dataclass(frozen=True)
class WOEResult(VerticalPayload):
    """Bank → one feature holder: its own features' merge groups, WOE per merged bin and IV (public)."""

    KIND: ClassVar[bytes] = b"WRES"
    content_class: ClassVar[str] = "public"
    fingerprint: str
    features: tuple[dict, ...]

    def _header(self) -> dict[str, Any]:
        return {"features": list(self.features)}

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> WOEResult:
        _exact_keys(h, {"features"}, "WOE result")
        feats = _json_header(h, "features")
        if not isinstance(feats, list) or blobs:
            raise ProtocolError("WOE result is malformed")
        for f in feats:
            if not isinstance(f, dict) or set(f) != {"name", "groups", "woe", "woe_missing", "iv"}:
                raise ProtocolError("WOE result: a feature entry is malformed")
        return cls(fp, tuple(feats))


def _table_of(entry: Mapping[str, Any], n_bins: int) -> FeatureWOE:
    try:
        groups = np.asarray(entry["groups"], dtype=np.int64)
        woe = np.asarray(entry["woe"], dtype=np.float64)
        miss = entry["woe_missing"]
        table = FeatureWOE(str(entry["name"]), groups, woe, None if miss is None else float(miss), float(entry["iv"]))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"WOE result: {exc}") from None
    if groups.shape != (n_bins,) or groups.min(initial=0) < 0 or groups.max(initial=0) >= woe.size or not np.all(np.isfinite(woe)):
        raise ProtocolError(f"WOE result for {table.name!r} does not fit its {n_bins} bins")
    return table


# =========================================================================== parties


class LabelHolderWOE:
    """The bank's side: encrypts labels, decrypts per-bin event counts, computes WOE and IV.

    Parameters
    ----------
    context : tenseal.Context
        The bank's secret context (:func:`fedrisk.crypto.encrypted_histogram.make_histogram_context`).
    n_bins, min_bin_size : int
        The run's binning parameters (sent to the feature holders).
    smoothing : float
    label_dp_epsilon, label_dp_delta : float, optional
        Gaussian noise on the event counts whose WOE is released to a feature holder.
    random_state : int, optional
        Seed of the label-DP noise (tests).

    Attributes
    ----------
    tables_ : dict of party → list of FeatureWOE
    iv_ : dict of party → dict of feature → IV
    """

    def __init__(
        self,
        context: ts.Context,
        *,
        name: str = "bank",
        n_bins: int = 10,
        min_bin_size: int = 1,
        smoothing: float = SMOOTHING,
        label_dp_epsilon: float | None = None,
        label_dp_delta: float = 1e-6,
        random_state: int | None = None,
    ) -> None:
        if not context.is_private():
            raise ConfigError("the label holder needs its secret context")
        if min_bin_size < 1:
            raise ConfigError(f"min_bin_size must be ≥ 1, got {min_bin_size}")
        self.context = context
        self.name = name
        self.n_bins = int(n_bins)
        self.min_bin_size = int(min_bin_size)
        self.smoothing = smoothing
        self.label_dp_epsilon = label_dp_epsilon
        self.label_dp_delta = label_dp_delta
        self._rng = np.random.default_rng(random_state)
        self.fingerprint = context_fingerprint(context)
        self.tables_: dict[str, list[FeatureWOE]] = {}
        self.iv_: dict[str, dict[str, float]] = {}

    def plan(self, y: np.ndarray) -> WOEPlan:
        """Encrypt the labels (``grad = y``, ``hess = 0``)."""
        y = np.asarray(y, dtype=np.float64).ravel()
        if not np.all((y == 0) | (y == 1)):
            raise DataValidationError("labels must be 0/1")
        self.y_ = y
        blobs = encrypt_gradients(self.context, y, np.zeros_like(y))
        return WOEPlan(self.fingerprint, int(y.size), self.n_bins, self.min_bin_size, tuple(blobs))

    def own(self, X: np.ndarray, *, feature_names: Sequence[str] | None = None, monotone: Mapping[str, str] | None = None) -> PlainWOE:
        """The bank's own features: plain WOE on its rows (nothing leaves)."""
        ref = PlainWOE(n_bins=self.n_bins, min_bin_size=self.min_bin_size, monotone=monotone, smoothing=self.smoothing)
        ref.fit(X, self.y_, feature_names=feature_names)
        self.own_model_ = ref
        self.tables_[self.name] = ref.tables_
        self.iv_[self.name] = dict(ref.iv_)
        return ref

    def receive(self, party: str, counts: WOECounts) -> WOEResult:
        """Decrypt one feature holder's counts; return its WOE table (and keep the IVs)."""
        counts.check(self.context)
        G, _ = decrypt_histogram(self.context, list(counts.histogram), counts.layout)
        events_all = np.rint(G)
        sizes_all = np.asarray(counts.sizes, dtype=np.float64)
        if np.any(sizes_all != np.rint(sizes_all)) or np.any(events_all < 0) or np.any(events_all > sizes_all):
            raise ProtocolError(f"WOE counts of {party!r}: event counts outside 0..bin size")
        layout = counts.layout
        tables = []
        sigma = None
        if self.label_dp_epsilon is not None:
            sigma = gaussian_sigma(self.label_dp_epsilon, self.label_dp_delta, math.sqrt(layout.n_features))
        for j, start in enumerate(layout.column_starts()):
            k, m = layout.n_bins[j], layout.has_missing[j]
            e = events_all[start : start + k + int(m)]
            n = sizes_all[start : start + k + int(m)]
            p = counts.rr_p[j]
            if p > 0.0:  # debias randomised response (estimates; IV is no longer exact)
                c = k + int(m)
                n = np.maximum((n - p * n.sum() / c) / (1.0 - p), 0.0)
                e = np.clip((e - p * e.sum() / c) / (1.0 - p), 0.0, n)
            t = _feature_woe(counts.names[j], e, n, k, m, counts.monotone[j], self.smoothing)
            if sigma is not None:  # release WOE from noised event counts (label DP toward the feature holder)
                e_noisy = np.clip(np.rint(t.events + self._rng.normal(0.0, sigma, t.events.size)), 0, t.sizes)
                w, iv = woe_iv(e_noisy, t.sizes, self.smoothing)
                g = int(t.groups.max()) + 1
                t = FeatureWOE(t.name, t.groups, w[:g], float(w[g]) if m else None, iv, e_noisy, t.sizes)
            tables.append(t)
        self.tables_[party] = tables
        self.iv_[party] = {t.name: t.iv for t in tables}
        return WOEResult(self.fingerprint, tuple(t.public() for t in tables))


class FeatureHolderWOE:
    """A feature holder's side: bins its own features, returns encrypted event counts, applies its WOE.

    Parameters
    ----------
    context : tenseal.Context
        The bank's public context with Galois keys.
    name : str
    min_bin_size : int
        This party's own floor (the run's value applies if larger).
    monotone : mapping feature → direction, optional
        Declared by this owner; validated against its own feature names.
    dp_epsilon : float, optional
        Randomised response on the own bin codes, ``(ε, 0)``-DP per row over all own
        features (see the module docstring).
    random_state : int, optional
        Seed of the randomised response (tests only; default: OS entropy).
    n_jobs : int

    Attributes
    ----------
    tables_ : list of FeatureWOE
        Own WOE tables after :meth:`apply` (no event counts).
    iv_ : dict of str → float
    rr_p_ : list of float
        Per feature, the randomised-response replacement probability (0 without DP).
    """

    def __init__(
        self,
        context: ts.Context,
        *,
        name: str,
        min_bin_size: int = 1,
        monotone: Mapping[str, str] | None = None,
        dp_epsilon: float | None = None,
        random_state: int | None = None,
        n_jobs: int = 1,
    ) -> None:
        if context.is_private():
            raise ConfigError("a feature holder must hold the public context only")
        self.context = context
        self.name = name
        self.min_bin_size = int(min_bin_size)
        self.monotone = monotone
        self.dp_epsilon = dp_epsilon
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.fingerprint = context_fingerprint(context)

    def setup(self, X: np.ndarray, covered: np.ndarray, *, feature_names: Sequence[str] | None = None) -> FeatureHolderWOE:
        """Own features in the bank's row order (``covered``: rows this party knows)."""
        self.X_ = np.asarray(X, dtype=np.float64)
        self.covered_ = np.asarray(covered, dtype=bool)
        if self.covered_.shape != (self.X_.shape[0],):
            raise DataValidationError("coverage mask does not match the rows")
        self.feature_names_in_ = _names(feature_names, self.X_.shape[1])
        self.directions_ = check_monotone(self.monotone, self.feature_names_in_, self.name)
        if self.dp_epsilon is not None:
            rr_probability(self.dp_epsilon, 2)  # validate early, one line
        return self

    def respond(self, plan: WOEPlan) -> WOECounts:
        """Bin, run the encrypted histogram kernel over all covered rows, return counts."""
        plan.check(self.context)
        if plan.n_values != self.X_.shape[0]:
            raise ProtocolError(f"encrypted labels cover {plan.n_values} rows, this party has {self.X_.shape[0]} aligned rows")
        self.binned_ = b = bin_features(self.X_, self.covered_, plan.n_bins, max(plan.min_bin_size, self.min_bin_size))
        codes = b.codes
        self.rr_p_ = [0.0] * len(b.n_bins)
        if self.dp_epsilon is not None:
            rng = np.random.default_rng(self.random_state)
            eps_f = float(self.dp_epsilon) / len(b.n_bins)
            codes = codes.copy()
            cov = self.covered_
            for f, (k, m) in enumerate(zip(b.n_bins, b.has_missing, strict=True)):
                c = k + int(m)
                self.rr_p_[f] = p = rr_probability(eps_f, c)
                col = codes[cov, f].astype(np.int64)
                col = np.where(col == MISSING, k, col)
                col = randomised_response(col, c, p, rng)
                codes[cov, f] = np.where(col == k, MISSING, col).astype(np.uint8)
        sizes = np.concatenate(column_counts(codes, b.n_bins, b.has_missing, self.covered_))
        kernel = EncryptedHistogramKernel(codes, b.n_bins, b.has_missing, self.covered_, self.context, n_jobs=self.n_jobs)
        try:
            kernel.set_gradients(list(plan.labels), plan.n_values)
            hist = kernel.node_histograms([np.ones(plan.n_values, dtype=bool)])[0]
            layout = kernel.layout_
        finally:
            kernel.close()
        return WOECounts(
            self.fingerprint, layout, tuple(float(s) for s in sizes), tuple(self.feature_names_in_), tuple(self.directions_), tuple(self.rr_p_), tuple(hist)
        )

    def apply(self, result: WOEResult) -> None:
        """Keep the WOE tables of the own features (checked against the own bins)."""
        result.check(self.context)
        if len(result.features) != len(self.feature_names_in_):
            raise ProtocolError(f"WOE result has {len(result.features)} features, {self.name} has {len(self.feature_names_in_)}")
        tables = [_table_of(e, k) for e, k in zip(result.features, self.binned_.n_bins, strict=True)]
        for t, nm, m in zip(tables, self.feature_names_in_, self.binned_.has_missing, strict=True):
            if t.name != nm or (t.woe_missing is None) == m:
                raise ProtocolError(f"WOE result for {t.name!r} does not match feature {nm!r}")
        self.tables_ = tables
        self.iv_ = {t.name: t.iv for t in tables}

    def transform(self, X: np.ndarray | None = None, covered: np.ndarray | None = None) -> np.ndarray:
        """WOE of the own columns, locally (default: the setup rows; uncovered rows → 0)."""
        X = self.X_ if X is None else np.asarray(X, dtype=np.float64)
        cov = (self.covered_ if X is self.X_ else np.ones(X.shape[0], dtype=bool)) if covered is None else np.asarray(covered, dtype=bool)
        return _transform(_codes(X, self.binned_), cov, self.tables_, self.binned_.n_bins, self.binned_.has_missing)


# =========================================================================== in-process runner


class VerticalWOE(BaseEstimator):
    """Federated WOE/IV run in-process over the real encrypted protocol (every payload serialised).

    Parameters
    ----------
    n_bins, min_bin_size, smoothing
        As :class:`PlainWOE`.
    monotone : mapping party → mapping feature → direction, optional
        Each party's own declarations (the bank's under its own name).
    dp_epsilon : float, optional
        Feature holders' randomised response (``(ε, 0)``-DP per row).
    label_name : str

    Attributes
    ----------
    label_holder_ : LabelHolderWOE
    feature_holders_ : dict of str → FeatureHolderWOE
    iv_ : dict of party → dict of feature → IV
    transcript_ : list of (sender, receiver, kind, bytes)
        Every message as it crossed the wire.
    """

    def __init__(
        self,
        *,
        n_bins: int = 10,
        min_bin_size: int = 1,
        smoothing: float = SMOOTHING,
        monotone: Mapping[str, Mapping[str, str]] | None = None,
        dp_epsilon: float | None = None,
        label_holder_name: str = "bank",
        n_jobs: int = 1,
    ) -> None:
        self.n_bins = n_bins
        self.min_bin_size = min_bin_size
        self.smoothing = smoothing
        self.monotone = monotone
        self.dp_epsilon = dp_epsilon
        self.label_holder_name = label_holder_name
        self.n_jobs = n_jobs

    def fit(
        self,
        X_bank: np.ndarray,
        y: np.ndarray,
        holders: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        bank_feature_names: Sequence[str] | None = None,
        holder_feature_names: Mapping[str, Sequence[str]] | None = None,
        context: ts.Context | None = None,
    ) -> VerticalWOE:
        """``holders``: name → (features in the bank's row order, coverage mask)."""
        from fedrisk.crypto.encrypted_histogram import make_histogram_context

        monotone = dict(self.monotone or {})
        unknown = set(monotone) - set(holders) - {self.label_holder_name}
        if unknown:
            raise ConfigError(f"monotone constraints name an unknown party {sorted(unknown)[0]!r}")
        if not isinstance(self.n_bins, int | np.integer) or not 2 <= int(self.n_bins) <= MAX_BINS:
            raise ConfigError(f"n_bins must be an integer in 2..{MAX_BINS}, got {self.n_bins!r}")
        if not isinstance(self.min_bin_size, int | np.integer) or self.min_bin_size < 1:
            raise ConfigError(f"min_bin_size must be an integer ≥ 1, got {self.min_bin_size!r}")
        names = dict(holder_feature_names or {})
        own = {self.label_holder_name: (bank_feature_names, X_bank, np.ones(np.shape(X_bank)[0], dtype=bool))}
        own.update({p: (names.get(p), X_k, cov_k) for p, (X_k, cov_k) in holders.items()})
        for party, (feats, X_k, cov_k) in own.items():  # each owner's own checks (the bank's too), before any key is made
            check_monotone(monotone.get(party), _names(feats, np.shape(X_k)[1]), party)
            n_cov = int(np.sum(np.asarray(cov_k, dtype=bool)))
            if n_cov < int(self.n_bins) * int(self.min_bin_size):
                raise ConfigError(
                    f"n_bins={self.n_bins} × min_bin_size={self.min_bin_size} needs "
                    f"{int(self.n_bins) * int(self.min_bin_size)} rows, {party} covers {n_cov}: "
                    "lower n_bins or min_bin_size"
                )
        secret = context if context is not None else make_histogram_context()
        public = public_bfv_context(secret)
        bank = LabelHolderWOE(secret, name=self.label_holder_name, n_bins=self.n_bins, min_bin_size=self.min_bin_size, smoothing=self.smoothing)
        self.transcript_: list[tuple[str, str, str, bytes]] = []
        plan = bank.plan(y)
        bank.own(X_bank, feature_names=bank_feature_names, monotone=monotone.get(self.label_holder_name))
        fhs = {}
        for party, (X_k, cov_k) in holders.items():
            fh = FeatureHolderWOE(
                public, name=party, min_bin_size=self.min_bin_size, monotone=monotone.get(party), dp_epsilon=self.dp_epsilon, n_jobs=self.n_jobs
            )
            fh.setup(X_k, cov_k, feature_names=names.get(party))
            data = self._send(self.label_holder_name, party, plan)
            counts = fh.respond(WOEPlan.from_bytes(data, context=public))
            data = self._send(party, self.label_holder_name, counts)
            result = bank.receive(party, WOECounts.from_bytes(data, context=secret))
            data = self._send(self.label_holder_name, party, result)
            fh.apply(WOEResult.from_bytes(data, context=public))
            fhs[party] = fh
        self.label_holder_, self.feature_holders_ = bank, fhs
        self.iv_ = {p: dict(v) for p, v in bank.iv_.items()}
        return self

    def _send(self, sender: str, receiver: str, payload: VerticalPayload) -> bytes:
        data = payload.to_bytes()
        self.transcript_.append((sender, receiver, type(payload).__name__, data))
        return data

    def iv_table(self) -> list[dict[str, Any]]:
        """Rows ``{party, feature, iv}`` sorted by IV, as the bank sees them."""
        rows = [{"party": p, "feature": f, "iv": v} for p, ivs in self.iv_.items() for f, v in ivs.items()]
        return sorted(rows, key=lambda r: -r["iv"])
