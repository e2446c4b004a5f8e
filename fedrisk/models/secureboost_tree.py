"""Gradient-boosted trees for SecureBoost: bins, histograms, split search, the model, a plaintext reference.

Everything here is plaintext and single-party; :mod:`fedrisk.models.secureboost` runs
the same algorithm across parties over homomorphic encryption and calls into this module for every
decision, so that the federated model and :class:`PlainSecureBoost` (the reference
on the joined table) make the same choices from the same numbers.

The algorithm (XGBoost-style second-order boosting of the logistic loss)
-----------------------------------------------------------------------
* **Bins.** Each party bins each of its features locally (:class:`QuantileBinner`):
  a feature with at most ``n_bins`` distinct values gets one bin per value
  (thresholds at midpoints), otherwise up to ``n_bins`` quantile bins. Bin ``b``
  holds ``t_{b-1} < x ≤ t_b``; NaN is *missing*, and so is every row a party
  does not cover.
* **Gradients.** ``g = σ(F) − y``, ``h = σ(F)(1 − σ(F))`` at the current raw score
  ``F`` (start: log-odds of the base rate, as scikit-learn). Row subsampling sets
  ``g = h = 0`` outside the tree's seeded sample.
* **Split search** (:func:`best_split`) on per-bin sums ``G_b, H_b`` and the missing
  bucket ``G_m, H_m``: threshold after bin ``b`` sends bins ``≤ b`` left; the
  missing bucket is tried on the left and on the right (XGBoost's learned default
  direction). Gain ``½[G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)]``, both children
  need ``H ≥ max(min_child_weight, EMPTY_HESSIAN)``, the gain must be positive.
  Ties go to the first candidate in (party, feature, bin, missing-right-first) order.
* **Leaves** ``w = −lr · G/(H + λ)``; trees grow level-wise to ``max_depth``.

Near-ties and the federated histograms
--------------------------------------
The federated histograms are exact sums of the label holder's quantised ``g`` and
``h`` (``g`` to 2^-13, ``h`` to 2^-15 at 24,000 rows; BFV, see
:mod:`fedrisk.crypto.encrypted_histogram`); the bank's own histograms are exact
in floating point. Two rules make the decisions robust to such differences and are
applied identically here:

* a bin (or missing bucket) whose hessian sum is at most :data:`EMPTY_HESSIAN` is
  *empty*: its threshold is not a candidate (it would split the rows exactly like
  the previous bin's threshold — an exact tie in plaintext);
  when the missing bucket is empty the default direction is the child with the
  larger hessian (scikit-learn: the child with more samples);
* children must hold more than :data:`EMPTY_HESSIAN` of hessian.

Candidates whose gains differ by less than the quantisation's effect on a gain can
still be chosen differently from this module's float reference; the default-credit
AUC stays within 0.005 of it (tests/test_secureboost.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sklearn.base import BaseEstimator

from fedrisk.errors import ConfigError, DataValidationError

__all__ = [
    "EMPTY_HESSIAN",
    "MISSING",
    "BoostParams",
    "Histogram",
    "PlainSecureBoost",
    "QuantileBinner",
    "RoutingTable",
    "SecureBoostModel",
    "SplitCandidate",
    "TreeBuilder",
    "best_split",
    "candidate_gains",
    "gradients",
    "leaf_weight",
    "plain_histogram",
    "sample_rows",
    "sigmoid",
]

MISSING = 255
"""Bin code of a missing value (NaN or a row the party does not cover)."""
MAX_BINS = 254
EMPTY_HESSIAN = 1e-2
"""A bin, bucket or child with at most this hessian sum counts as empty.

Far above the quantisation of a federated bin total (2^-15 per row at 24,000 rows),
and below the hessian of any single
row whose predicted default probability lies in [0.01, 0.99].
"""
HESSIAN_FLOOR = 1e-16


# =========================================================================== parameters


@dataclass(frozen=True)
class BoostParams:
    """Hyper-parameters shared by the federated model and the reference.

    Parameters
    ----------
    n_trees : int
    max_depth : int
        Levels of splits (depth 3 = up to 8 leaves).
    learning_rate : float
        Shrinkage of every leaf weight (default 0.3, XGBoost's and FATE's; scikit-learn's is 0.1).
    reg_lambda : float
        L2 penalty on leaf weights (XGBoost's ``lambda``).
    min_child_weight : float
        Least hessian sum in each child of a split.
    subsample : float
        Share of training rows drawn (without replacement, seeded) for each tree.
    n_bins : int
        Most bins per feature (each party bins its own features).
    """

    n_trees: int = 30
    max_depth: int = 3
    learning_rate: float = 0.3
    reg_lambda: float = 1.0
    min_child_weight: float = 1.0
    subsample: float = 1.0
    n_bins: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.n_trees, int) or self.n_trees < 1:
            raise ConfigError(f"n_trees must be a positive integer, got {self.n_trees!r}")
        if not isinstance(self.max_depth, int) or not 1 <= self.max_depth <= 16:
            raise ConfigError(f"max_depth must be an integer in 1..16, got {self.max_depth!r}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if not self.reg_lambda >= 0.0:
            raise ConfigError(f"reg_lambda must be non-negative, got {self.reg_lambda}")
        if not self.min_child_weight >= 0.0:
            raise ConfigError(f"min_child_weight must be non-negative, got {self.min_child_weight}")
        if not 0.0 < self.subsample <= 1.0:
            raise ConfigError(f"subsample must be in (0, 1], got {self.subsample}")
        if not isinstance(self.n_bins, int) or not 2 <= self.n_bins <= MAX_BINS:
            raise ConfigError(f"n_bins must be an integer in 2..{MAX_BINS}, got {self.n_bins!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_trees": self.n_trees,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "reg_lambda": self.reg_lambda,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "n_bins": self.n_bins,
        }


# =========================================================================== bins


class QuantileBinner:
    """Per-feature bins fitted on one party's own rows.

    Parameters
    ----------
    n_bins : int
        Most bins per feature (missing values get the separate code :data:`MISSING`).

    Attributes
    ----------
    thresholds_ : list of ndarray
        Per feature, increasing ``t_0 < … < t_{B-2}``; bin ``b`` holds ``t_{b-1} < x ≤ t_b``.
    n_bins_ : ndarray of int
        Bins per feature (``len(thresholds) + 1``; 1 for a constant or empty feature).
    has_missing_ : ndarray of bool
        Whether the feature had NaN among the fitted rows.
    """

    def __init__(self, n_bins: int = 32) -> None:
        if not isinstance(n_bins, int) or not 2 <= n_bins <= MAX_BINS:
            raise ConfigError(f"n_bins must be an integer in 2..{MAX_BINS}, got {n_bins!r}")
        self.n_bins = n_bins

    def fit(self, X: np.ndarray, rows: np.ndarray | None = None) -> QuantileBinner:
        """Fit thresholds on ``X[rows]`` (NaN ignored)."""
        X = _as_matrix(X, "binner")
        sub = X if rows is None else X[np.asarray(rows, dtype=bool)]
        self.thresholds_ = [self._feature_thresholds(sub[:, j]) for j in range(X.shape[1])]
        self.n_bins_ = np.array([t.size + 1 for t in self.thresholds_], dtype=np.int64)
        self.has_missing_ = np.isnan(sub).any(axis=0) if sub.size else np.zeros(X.shape[1], dtype=bool)
        return self

    def _feature_thresholds(self, column: np.ndarray) -> np.ndarray:
        values = column[~np.isnan(column)]
        if values.size == 0:
            return np.zeros(0)
        distinct = np.unique(values)
        if distinct.size <= self.n_bins:
            return (distinct[:-1] + distinct[1:]) / 2.0
        cuts = np.quantile(values, np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1])
        cuts = np.unique(cuts)
        return cuts[cuts < distinct[-1]]  # a cut at the maximum would leave the last bin empty

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Bin codes ``(n, F)`` as uint8; NaN → :data:`MISSING`."""
        X = _as_matrix(X, "binner")
        if X.shape[1] != len(self.thresholds_):
            raise DataValidationError(f"binner was fitted on {len(self.thresholds_)} features, got {X.shape[1]}")
        codes = np.empty(X.shape, dtype=np.uint8)
        for j, t in enumerate(self.thresholds_):
            col = X[:, j]
            codes[:, j] = np.searchsorted(t, col, side="left")
            codes[np.isnan(col), j] = MISSING
        return codes

    def threshold(self, feature: int, bin_index: int) -> float:
        """Split value for "bins ≤ bin_index go left": ``t_b`` (``+inf`` for the last bin)."""
        t = self.thresholds_[feature]
        if not 0 <= bin_index < t.size + 1:
            raise DataValidationError(f"feature {feature} has no bin {bin_index}")
        return float(t[bin_index]) if bin_index < t.size else math.inf


def _as_matrix(X: Any, who: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise DataValidationError(f"{who}: features must be a 2-D table, got shape {X.shape}")
    if np.isinf(X).any():
        raise DataValidationError(f"{who}: features contain infinite values")
    return X


# =========================================================================== histograms


@dataclass
class Histogram:
    """Per-bin gradient and hessian sums of one party's features at one tree node.

    ``grad``/``hess`` are ``(F, B)`` with ``B = max(n_bins)`` (columns past a feature's
    own bin count are zero); ``miss_grad``/``miss_hess`` are the missing buckets.
    """

    grad: np.ndarray
    hess: np.ndarray
    miss_grad: np.ndarray
    miss_hess: np.ndarray
    n_bins: np.ndarray

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(
            self.grad - other.grad,
            self.hess - other.hess,
            self.miss_grad - other.miss_grad,
            self.miss_hess - other.miss_hess,
            self.n_bins,
        )

    @property
    def n_features(self) -> int:
        return int(self.n_bins.size)


def plain_histogram(codes: np.ndarray, n_bins: np.ndarray, g: np.ndarray, h: np.ndarray, rows: np.ndarray) -> Histogram:
    """Exact histogram of ``codes[rows]`` weighted by ``g`` and ``h`` (one ``bincount``)."""
    n_feat = codes.shape[1]
    width = int(n_bins.max(initial=1)) + 1  # last column: missing
    sub = codes[rows].astype(np.int64)
    sub[sub == MISSING] = width - 1
    flat = (sub + np.arange(n_feat) * width).ravel()
    gw = np.repeat(g[rows], n_feat)
    hw = np.repeat(h[rows], n_feat)
    size = n_feat * width
    G = np.bincount(flat, weights=gw, minlength=size).reshape(n_feat, width)
    H = np.bincount(flat, weights=hw, minlength=size).reshape(n_feat, width)
    return Histogram(G[:, :-1].copy(), H[:, :-1].copy(), G[:, -1].copy(), H[:, -1].copy(), np.asarray(n_bins))


# =========================================================================== split search


@dataclass(frozen=True)
class SplitCandidate:
    """The best split of one party's features at a node (feature index is the party's own)."""

    gain: float
    feature: int
    bin: int
    default_left: bool
    grad_left: float
    hess_left: float


def _score(G: np.ndarray, H: np.ndarray, lam: float) -> np.ndarray:
    return G * G / (H + lam)


def candidate_gains(hist: Histogram, grad_total: float, hess_total: float, params: BoostParams) -> tuple[np.ndarray, np.ndarray]:
    """Gain of every candidate ``(feature, bin, missing side)`` and its left sums.

    Returns ``gains`` of shape ``(F, B, 2)`` (−inf where not a valid candidate;
    side 0 sends missing values right, side 1 left) and ``lefts`` ``(F, B, 2, 2)``
    holding ``(G_L, H_L)``. Right sums are ``total − left``: the label holder knows
    the node's totals exactly.
    """
    lam = params.reg_lambda
    n_feat, width = hist.grad.shape
    least = max(params.min_child_weight, EMPTY_HESSIAN)
    bins = np.arange(width)[None, :]
    nb = hist.n_bins[:, None]
    cum_g = np.cumsum(hist.grad, axis=1)
    cum_h = np.cumsum(hist.hess, axis=1)
    miss_full = (hist.miss_hess > EMPTY_HESSIAN)[:, None]
    # threshold after bin b is a candidate if bin b holds rows; the last bin only separates missing
    nonempty = hist.hess > EMPTY_HESSIAN
    candidate = nonempty & ((bins < nb - 1) | ((bins == nb - 1) & miss_full))
    gain_parent = grad_total * grad_total / (hess_total + lam)
    gains = np.full((n_feat, width, 2), -np.inf)
    lefts = np.zeros((n_feat, width, 2, 2))
    for d, (gl, hl) in enumerate(
        ((cum_g, cum_h), (cum_g + hist.miss_grad[:, None], cum_h + hist.miss_hess[:, None]))
    ):  # d = 0: missing goes right, d = 1: missing goes left
        ok = candidate & (hl >= least) & (hess_total - hl >= least)
        if d == 1:
            ok &= miss_full & (bins < nb - 1)
        gr, hr = grad_total - gl, hess_total - hl
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = 0.5 * (_score(gl, hl, lam) + _score(gr, hr, lam) - gain_parent)
        gains[:, :, d] = np.where(ok, gain, -np.inf)
        lefts[:, :, d, 0], lefts[:, :, d, 1] = gl, hl
    return gains, lefts


def monotone_array(monotone: Mapping[str, int] | None, names: Sequence[str], who: str) -> np.ndarray | None:
    """Per feature the owner's declared direction (+1 increasing, −1 decreasing, 0 free), or None if none.

    Raises
    ------
    ConfigError
        A direction on a feature the owner does not have, or one other than ±1/0 (one line).
    """
    if not monotone:
        return None
    unknown = sorted(set(monotone) - set(names))
    if unknown:
        raise ConfigError(f"{who}: monotone constraint on unknown feature {unknown[0]!r}")
    for feat, d in monotone.items():
        if d not in (-1, 0, 1) or isinstance(d, bool):
            raise ConfigError(f"{who}: monotone direction of {feat!r} must be +1, -1 or 0, got {d!r}")
    out = np.array([int(monotone.get(n, 0)) for n in names], dtype=np.int64)
    return out if out.any() else None


def _clipped_weights(
    lefts: np.ndarray, grad_total: float, hess_total: float, params: BoostParams, bounds: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Leaf weights of every candidate's left and right child, clipped to the node's bounds."""
    gl, hl = lefts[..., 0], lefts[..., 1]
    lam, lr = params.reg_lambda, params.learning_rate
    with np.errstate(divide="ignore", invalid="ignore"):
        wl = np.where(hl + lam > 0, -lr * gl / (hl + lam), 0.0)
        wr = np.where(hess_total - hl + lam > 0, -lr * (grad_total - gl) / (hess_total - hl + lam), 0.0)
    return np.clip(wl, *bounds), np.clip(wr, *bounds)


def child_bounds(
    cand: SplitCandidate, grad_total: float, hess_total: float, params: BoostParams, direction: int, bounds: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Leaf-value bounds of the two children (XGBoost's rule): a split on a constrained feature
    puts the midpoint of the clipped child weights between them; otherwise both inherit."""
    lo, hi = bounds
    if direction == 0:
        return (lo, hi), (lo, hi)
    wl, wr = _clipped_weights(np.array([cand.grad_left, cand.hess_left]), grad_total, hess_total, params, bounds)
    mid = 0.5 * (float(wl) + float(wr))
    if direction > 0:
        return (lo, mid), (mid, hi)
    return (mid, hi), (lo, mid)


def best_split(
    hist: Histogram,
    grad_total: float,
    hess_total: float,
    params: BoostParams,
    *,
    monotone: np.ndarray | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> SplitCandidate | None:
    """Best split by XGBoost gain, or None if no candidate has a positive gain.

    Ties go to the first candidate in (feature, bin, missing-right-first) order.
    With ``monotone`` (per feature +1/−1/0), a candidate on a constrained feature is
    valid only if its clipped child weights go the declared way (left = lower values);
    ``bounds`` are the node's leaf-value bounds (:func:`child_bounds`).
    """
    n_feat, width = hist.grad.shape
    if n_feat == 0 or width == 0:
        return None
    gains, lefts = candidate_gains(hist, grad_total, hess_total, params)
    if monotone is not None and np.any(monotone):
        if np.asarray(monotone).shape != (n_feat,):
            raise DataValidationError(f"monotone constraints cover {np.size(monotone)} features, the histogram {n_feat}")
        wl, wr = _clipped_weights(lefts, grad_total, hess_total, params, bounds)
        sign = np.asarray(monotone, dtype=np.float64)[:, None, None]
        gains = np.where(sign * (wr - wl) < 0.0, -np.inf, gains)
    flat = int(np.argmax(gains))
    best = float(gains.flat[flat])
    if not best > 0.0:
        return None
    f, rest = divmod(flat, width * 2)
    b, d = divmod(rest, 2)
    gl, hl = float(lefts[f, b, d, 0]), float(lefts[f, b, d, 1])
    if d == 1:
        default_left = True
    elif hist.miss_hess[f] > EMPTY_HESSIAN:
        default_left = False
    else:  # nothing missing here: unseen missing values follow the heavier child
        default_left = hl >= hess_total - hl
    return SplitCandidate(best, int(f), int(b), bool(default_left), gl, hl)


def leaf_weight(grad: float, hess: float, params: BoostParams, bounds: tuple[float, float] = (-math.inf, math.inf)) -> float:
    """Shrunk Newton step ``−lr · G/(H + λ)`` (0 for an empty leaf), clipped to monotone ``bounds``."""
    denom = hess + params.reg_lambda
    if denom <= 0.0:
        return float(np.clip(0.0, *bounds))
    return float(np.clip(-params.learning_rate * grad / denom, *bounds))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def gradients(raw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic-loss gradient and hessian at raw scores ``raw``."""
    p = sigmoid(raw)
    return p - y, np.maximum(p * (1.0 - p), HESSIAN_FLOOR)


def sample_rows(rng: np.random.Generator, n: int, subsample: float) -> np.ndarray:
    """Boolean mask of the rows drawn for one tree (all rows when ``subsample == 1``)."""
    if subsample >= 1.0:
        return np.ones(n, dtype=bool)
    k = max(1, int(round(subsample * n)))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def base_score(y: np.ndarray) -> float:
    """Log-odds of the training default rate (scikit-learn's initial raw prediction)."""
    p = float(np.clip(np.mean(y), 1e-12, 1 - 1e-12))
    return math.log(p / (1.0 - p))


# =========================================================================== the model


class PartyAnswers(Protocol):
    """A party's left/right answers for a batch of rows (see :meth:`RoutingTable.answer`)."""

    @property
    def split_ids(self) -> np.ndarray: ...

    @property
    def go_left(self) -> np.ndarray: ...


@dataclass
class TreeBuilder:
    """Accumulates nodes of the ensemble in flat arrays, tree by tree.

    Node fields: ``left``/``right`` (tree-local child index, −1 for a leaf), ``owner``
    (index into the model's party list, −1 for a leaf), ``split_id`` (the owner's
    opaque id, −1 for own splits and leaves), ``feature``/``bin``/``threshold``
    (label-holder splits only), ``default_left``, ``value`` (leaf weight), ``gain``.
    """

    nodes: list[dict[str, Any]] = field(default_factory=list)
    tree_offsets: list[int] = field(default_factory=lambda: [0])

    def add_tree(self, tree_nodes: Sequence[dict[str, Any]]) -> None:
        self.nodes.extend(tree_nodes)
        self.tree_offsets.append(len(self.nodes))

    def arrays(self) -> dict[str, np.ndarray]:
        def col(key: str, dtype: Any, default: Any) -> np.ndarray:
            return np.array([nd.get(key, default) for nd in self.nodes], dtype=dtype)

        return {
            "tree_offsets": np.array(self.tree_offsets, dtype=np.int64),
            "left": col("left", np.int32, -1),
            "right": col("right", np.int32, -1),
            "owner": col("owner", np.int32, -1),
            "split_id": col("split_id", np.int64, -1),
            "feature": col("feature", np.int32, -1),
            "bin": col("bin", np.int32, -1),
            "threshold": col("threshold", np.float64, np.nan),
            "default_left": col("default_left", np.uint8, 0),
            "value": col("value", np.float64, 0.0),
            "gain": col("gain", np.float64, 0.0),
        }


def new_node(depth: int) -> dict[str, Any]:
    return {
        "depth": depth,
        "left": -1,
        "right": -1,
        "owner": -1,
        "split_id": -1,
        "feature": -1,
        "bin": -1,
        "threshold": np.nan,
        "default_left": 0,
        "value": 0.0,
        "gain": 0.0,
    }


_ARRAY_DTYPES: dict[str, Any] = {
    "tree_offsets": np.int64,
    "left": np.int32,
    "right": np.int32,
    "owner": np.int32,
    "split_id": np.int64,
    "feature": np.int32,
    "bin": np.int32,
    "threshold": np.float64,
    "default_left": np.uint8,
    "value": np.float64,
}
MODEL_FORMAT = 1


@dataclass
class SecureBoostModel:
    """The label holder's boosted trees: structure, leaf weights, who owns each split.

    For the label holder's own splits it keeps feature, bin and threshold; for another
    party's split only that party (``owner``) and the party's opaque ``split_id``, which
    the party's :class:`RoutingTable` resolves. The plaintext reference uses the same
    class with a single party that owns every feature.

    Attributes
    ----------
    parties : tuple of str
        ``parties[0]`` is the label holder; owner index ``k`` means ``parties[k]``.
    feature_names : tuple of str
        The label holder's own features (the columns its ``X`` must have).
    base_score : float
        Initial raw score (log-odds).
    arrays : dict of str → ndarray
        Flat node arrays (see :class:`TreeBuilder`) plus ``tree_offsets``.
    params : BoostParams
    """

    parties: tuple[str, ...]
    feature_names: tuple[str, ...]
    base_score: float
    arrays: dict[str, np.ndarray]
    params: BoostParams

    @property
    def n_trees(self) -> int:
        return int(self.arrays["tree_offsets"].size - 1)

    def tree_nodes(self, t: int) -> dict[str, np.ndarray]:
        """Arrays of tree ``t`` alone (tree-local indices)."""
        lo, hi = int(self.arrays["tree_offsets"][t]), int(self.arrays["tree_offsets"][t + 1])
        return {k: v[lo:hi] for k, v in self.arrays.items() if k != "tree_offsets"}

    def split_ids(self, party: str) -> np.ndarray:
        """The split ids of ``party`` that this model uses (sorted)."""
        k = self.parties.index(party)
        return np.unique(self.arrays["split_id"][self.arrays["owner"] == k])

    # ------------------------------------------------------------------ inference
    def decision_function(
        self,
        X_own: np.ndarray,
        answers: Mapping[str, PartyAnswers | None] | None = None,
        coverage: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Raw scores (log-odds) for rows given the other parties' answers.

        Parameters
        ----------
        X_own : ndarray (n, n_features)
            The label holder's own features (NaN = missing).
        answers : mapping party → object with ``split_ids`` (k,) and ``go_left`` (n, k)
            Each other party's answers for its split ids on the same rows; a party
            that is absent (or None) is treated as not covering any row.
        coverage : mapping party → bool (n,), optional
            Rows a party does not cover take the split's default direction.
        """
        X_own = _as_matrix(X_own, "label holder")
        if X_own.shape[1] != len(self.feature_names):
            raise DataValidationError(f"model expects {len(self.feature_names)} label-holder features, got {X_own.shape[1]}")
        n = X_own.shape[0]
        columns = self._answer_columns(answers or {}, n)
        cover = {p: np.asarray(c, dtype=bool) for p, c in (coverage or {}).items()}
        raw = np.full(n, self.base_score)
        for t in range(self.n_trees):
            raw += self._tree_values(t, X_own, columns, cover)
        return raw

    def _answer_columns(self, answers: Mapping[str, PartyAnswers | None], n: int) -> dict[str, tuple[dict[int, int], np.ndarray]]:
        out = {}
        for party, ans in answers.items():
            if ans is None:
                continue
            if party not in self.parties[1:]:
                raise DataValidationError(f"answers from {party!r}, which owns no split of this model")
            go = np.asarray(ans.go_left, dtype=bool)
            ids = np.asarray(ans.split_ids, dtype=np.int64)
            if go.shape != (n, ids.size):
                raise DataValidationError(f"answers of {party!r} have shape {go.shape}, expected ({n}, {ids.size})")
            out[party] = ({int(s): j for j, s in enumerate(ids)}, go)
        return out

    def _tree_values(self, t: int, X: np.ndarray, columns: Mapping[str, Any], cover: Mapping[str, np.ndarray]) -> np.ndarray:
        nodes = self.tree_nodes(t)
        pos = np.zeros(X.shape[0], dtype=np.int64)
        active = np.ones(X.shape[0], dtype=bool)
        while active.any():
            for node in np.unique(pos[active]):
                rows = active & (pos == node)
                if nodes["left"][node] < 0:
                    active[rows] = False
                    continue
                go = self._go_left(nodes, int(node), X, rows, columns, cover)
                pos[rows] = np.where(go, nodes["left"][node], nodes["right"][node])
        return nodes["value"][pos]

    def _go_left(
        self, nodes: Mapping[str, np.ndarray], node: int, X: np.ndarray, rows: np.ndarray, columns: Mapping[str, Any], cover: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        default = bool(nodes["default_left"][node])
        owner = int(nodes["owner"][node])
        if owner == 0:
            x = X[rows, nodes["feature"][node]]
            return np.where(np.isnan(x), default, x <= nodes["threshold"][node])
        party = self.parties[owner]
        go = np.full(int(rows.sum()), default)
        if party in columns:
            index, matrix = columns[party]
            sid = int(nodes["split_id"][node])
            if sid not in index:
                raise DataValidationError(f"{party!r} did not answer its split {sid}")
            go = matrix[rows, index[sid]].copy()
        if party in cover:
            go = np.where(cover[party][rows], go, default)
        return go

    def predict_proba(
        self, X_own: np.ndarray, answers: Mapping[str, PartyAnswers | None] | None = None, coverage: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default]."""
        p = sigmoid(self.decision_function(X_own, answers, coverage))
        return np.column_stack([1.0 - p, p])

    # ------------------------------------------------------------------ bundle
    def to_bundle(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`fedrisk.models.bundle.write_model_bundle`.

        Holds no threshold, feature or bin of another party's split (those entries
        are NaN/−1 by construction and are checked here).
        """
        arrays = {k: np.ascontiguousarray(self.arrays[k], dtype=dt) for k, dt in _ARRAY_DTYPES.items()}
        foreign = arrays["owner"] > 0
        if np.any(~np.isnan(arrays["threshold"][foreign])) or np.any(arrays["feature"][foreign] >= 0) or np.any(arrays["bin"][foreign] >= 0):
            raise DataValidationError("label-holder model holds another party's threshold; refusing to export it")
        meta = {
            "kind": "secureboost_label_holder",
            "format": MODEL_FORMAT,
            "parties": list(self.parties),
            "label_holder": self.parties[0],
            "feature_names": list(self.feature_names),
            "base_score": self.base_score,
            "params": self.params.to_dict(),
            "n_trees": self.n_trees,
            "splits_per_party": {p: int(np.sum(arrays["owner"] == k)) for k, p in enumerate(self.parties)},
        }
        return arrays, meta

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> SecureBoostModel:
        """Rebuild from :meth:`to_bundle` output (validates kinds, shapes and links)."""
        if meta.get("kind") != "secureboost_label_holder" or meta.get("format") != MODEL_FORMAT:
            raise DataValidationError(f"not a SecureBoost label-holder bundle (kind {meta.get('kind')!r})")
        missing = [k for k in _ARRAY_DTYPES if k not in arrays]
        if missing:
            raise DataValidationError(f"SecureBoost bundle lacks array {missing[0]!r}")
        arr = {k: np.asarray(arrays[k]).astype(dt, copy=True) for k, dt in _ARRAY_DTYPES.items()}
        n_nodes = arr["left"].size
        if any(arr[k].shape != (n_nodes,) for k in _ARRAY_DTYPES if k != "tree_offsets"):
            raise DataValidationError("SecureBoost bundle arrays differ in length")
        offs = arr["tree_offsets"]
        if offs.ndim != 1 or offs.size < 1 or offs[0] != 0 or offs[-1] != n_nodes or np.any(np.diff(offs) < 1):
            raise DataValidationError("SecureBoost bundle has inconsistent tree offsets")
        parties = tuple(str(p) for p in meta.get("parties", []))
        names = tuple(str(f) for f in meta.get("feature_names", []))
        if not parties:
            raise DataValidationError("SecureBoost bundle names no parties")
        for t in range(offs.size - 1):
            size = int(offs[t + 1] - offs[t])
            sl = slice(int(offs[t]), int(offs[t + 1]))
            kids = np.concatenate([arr["left"][sl], arr["right"][sl]])
            if np.any((kids != -1) & ((kids <= 0) | (kids >= size))):
                raise DataValidationError(f"SecureBoost bundle tree {t} links outside the tree")
        internal = arr["left"] >= 0
        if np.any(arr["owner"][internal] < 0) or np.any(arr["owner"] >= len(parties)):
            raise DataValidationError("SecureBoost bundle has a split without a valid owner")
        own = internal & (arr["owner"] == 0)
        if np.any(arr["feature"][own] >= len(names)) or np.any(arr["feature"][own] < 0):
            raise DataValidationError("SecureBoost bundle has an own split on an unknown feature")
        try:
            params = BoostParams(**meta["params"])
        except (KeyError, TypeError) as exc:
            raise DataValidationError(f"SecureBoost bundle parameters are invalid: {exc}") from None
        arr["gain"] = np.zeros(n_nodes)
        return cls(parties, names, float(meta["base_score"]), arr, params)


@dataclass
class RoutingTable:
    """A party's own splits: split id → (feature, bin, threshold, default direction).

    This is all a feature holder keeps of the joint model, and all the scoring node
    asks it: :meth:`answer` says left/right for every split id on given rows.
    """

    party: str
    feature_names: tuple[str, ...]
    split_id: np.ndarray
    feature: np.ndarray
    bin: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray

    @classmethod
    def empty(cls, party: str, feature_names: Sequence[str]) -> RoutingTable:
        return cls(party, tuple(feature_names), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.uint8))

    def add(self, split_id: int, feature: int, bin_index: int, threshold: float, default_left: bool) -> None:
        if split_id in set(self.split_id.tolist()):
            raise DataValidationError(f"{self.party}: split id {split_id} already exists")
        self.split_id = np.append(self.split_id, np.int64(split_id))
        self.feature = np.append(self.feature, np.int32(feature))
        self.bin = np.append(self.bin, np.int32(bin_index))
        self.threshold = np.append(self.threshold, float(threshold))
        self.default_left = np.append(self.default_left, np.uint8(default_left))

    def __len__(self) -> int:
        return int(self.split_id.size)

    def answer(self, X: np.ndarray, split_ids: Sequence[int] | None = None) -> np.ndarray:
        """Left (True) / right for each row and split id: ``(n, k)`` bool.

        ``X`` holds the party's own features (its column order at training); NaN and
        rows the party does not know (all NaN) take the split's default direction.
        """
        X = _as_matrix(X, self.party)
        if X.shape[1] != len(self.feature_names):
            raise DataValidationError(f"{self.party}: routing table expects {len(self.feature_names)} features, got {X.shape[1]}")
        cols = np.arange(self.split_id.size)
        if split_ids is not None:
            index = {int(s): j for j, s in enumerate(self.split_id)}
            unknown = [int(s) for s in split_ids if int(s) not in index]
            if unknown:
                raise DataValidationError(f"{self.party}: unknown split id {unknown[0]}")
            cols = np.array([index[int(s)] for s in split_ids], dtype=np.int64)
        x = X[:, self.feature[cols]]
        return np.where(np.isnan(x), self.default_left[cols].astype(bool)[None, :], x <= self.threshold[cols][None, :])

    def to_bundle(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` holding only this party's own thresholds."""
        arrays: dict[str, np.ndarray] = {
            "split_id": np.ascontiguousarray(self.split_id, dtype=np.int64),
            "feature": np.ascontiguousarray(self.feature, dtype=np.int32),
            "bin": np.ascontiguousarray(self.bin, dtype=np.int32),
            "threshold": np.ascontiguousarray(self.threshold, dtype=np.float64),
            "default_left": np.ascontiguousarray(self.default_left, dtype=np.uint8),
        }
        meta: dict[str, Any] = {
            "kind": "secureboost_feature_holder",
            "format": MODEL_FORMAT,
            "party": self.party,
            "feature_names": list(self.feature_names),
            "n_splits": len(self),
        }
        return arrays, meta

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> RoutingTable:
        if meta.get("kind") != "secureboost_feature_holder" or meta.get("format") != MODEL_FORMAT:
            raise DataValidationError(f"not a SecureBoost feature-holder bundle (kind {meta.get('kind')!r})")
        keys = {"split_id": np.int64, "feature": np.int32, "bin": np.int32, "threshold": np.float64, "default_left": np.uint8}
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise DataValidationError(f"SecureBoost routing bundle lacks array {missing[0]!r}")
        arr = {k: np.asarray(arrays[k]).astype(dt, copy=True) for k, dt in keys.items()}
        n = arr["split_id"].size
        names = tuple(str(f) for f in meta.get("feature_names", []))
        if any(v.shape != (n,) for v in arr.values()):
            raise DataValidationError("SecureBoost routing bundle arrays differ in length")
        if n and (arr["feature"].min() < 0 or arr["feature"].max() >= len(names)):
            raise DataValidationError("SecureBoost routing bundle refers to an unknown feature")
        if np.unique(arr["split_id"]).size != n:
            raise DataValidationError("SecureBoost routing bundle repeats a split id")
        return cls(str(meta.get("party", "")), names, arr["split_id"], arr["feature"], arr["bin"], arr["threshold"], arr["default_left"])


# =========================================================================== reference


class PlainSecureBoost(BaseEstimator):
    """Single-machine plaintext reference of the federated algorithm (same bins, same rules).

    Fitted on the joined table (label holder's features first, then each feature
    holder's, NaN where a party does not cover a row). Because every feature is
    binned on its own column, its bins equal the ones each party computes locally.

    Attributes
    ----------
    binner_ : QuantileBinner
    model_ : SecureBoostModel
        With a single party owning every feature (``feature``, ``bin``, ``threshold`` global).
    base_score_ : float
    tree_seconds_ : list of float
        Wall time of each tree.
    """

    def __init__(
        self,
        *,
        n_trees: int = 30,
        max_depth: int = 3,
        learning_rate: float = 0.3,
        reg_lambda: float = 1.0,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        n_bins: int = 32,
        random_state: int | None = 0,
        monotone: Mapping[str, int] | None = None,
    ) -> None:
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.reg_lambda = reg_lambda
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.n_bins = n_bins
        self.random_state = random_state
        self.monotone = monotone

    def _params(self) -> BoostParams:
        return BoostParams(
            self.n_trees, self.max_depth, float(self.learning_rate), float(self.reg_lambda), float(self.min_child_weight), float(self.subsample), self.n_bins
        )

    def fit(self, X: np.ndarray, y: np.ndarray, *, feature_names: Sequence[str] | None = None) -> PlainSecureBoost:
        params = self._params()
        X = _as_matrix(X, "reference")
        y = np.asarray(y, dtype=np.float64).ravel()
        if y.size != X.shape[0] or not np.all(np.isin(y, (0.0, 1.0))):
            raise DataValidationError("reference: y must hold one 0/1 label per row")
        names = tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(X.shape[1]))
        self._monotone = monotone_array(self.monotone, names, "reference")
        self.binner_ = QuantileBinner(params.n_bins).fit(X)
        codes = self.binner_.transform(X)
        n_bins = self.binner_.n_bins_
        self.base_score_ = base_score(y)
        raw = np.full(y.size, self.base_score_)
        rng = np.random.default_rng(self.random_state)
        builder = TreeBuilder()
        self.tree_seconds_ = []
        for _ in range(params.n_trees):
            t0 = time.perf_counter()
            g, h = gradients(raw, y)
            sampled = sample_rows(rng, y.size, params.subsample)
            gs, hs = np.where(sampled, g, 0.0), np.where(sampled, h, 0.0)
            nodes, leaf_of = self._grow(codes, n_bins, gs, hs, params)
            builder.add_tree(nodes)
            raw += np.array([nodes[i]["value"] for i in range(len(nodes))])[leaf_of]
            self.tree_seconds_.append(time.perf_counter() - t0)
        self.model_ = SecureBoostModel(("all",), names, self.base_score_, builder.arrays(), params)
        self.n_features_in_ = X.shape[1]
        return self

    def _grow(self, codes: np.ndarray, n_bins: np.ndarray, g: np.ndarray, h: np.ndarray, params: BoostParams) -> tuple[list[dict[str, Any]], np.ndarray]:
        """One tree, level-wise; returns its nodes and each row's leaf (tree-local index)."""
        n = codes.shape[0]
        nodes = [new_node(0)]
        rows_of = {0: np.ones(n, dtype=bool)}
        bounds_of = {0: (-math.inf, math.inf)}
        mono = getattr(self, "_monotone", None)
        leaf_of = np.zeros(n, dtype=np.int64)
        frontier = [0]
        while frontier:
            nxt = []
            for i in frontier:
                rows = rows_of.pop(i)
                bounds = bounds_of.pop(i)
                G, H = float(g[rows].sum()), float(h[rows].sum())
                cand = None
                if nodes[i]["depth"] < params.max_depth:
                    cand = best_split(plain_histogram(codes, n_bins, g, h, rows), G, H, params, monotone=mono, bounds=bounds)
                if cand is None:
                    nodes[i]["value"] = leaf_weight(G, H, params, bounds)
                    leaf_of[rows] = i
                    continue
                direction = 0 if mono is None else int(mono[cand.feature])
                code = codes[:, cand.feature]
                go_left = np.where(code == MISSING, cand.default_left, code <= cand.bin)
                left, right = len(nodes), len(nodes) + 1
                nodes[i].update(
                    left=left,
                    right=right,
                    owner=0,
                    feature=cand.feature,
                    bin=cand.bin,
                    threshold=self.binner_.threshold(cand.feature, cand.bin),
                    default_left=int(cand.default_left),
                    gain=cand.gain,
                )
                nodes.extend([new_node(nodes[i]["depth"] + 1), new_node(nodes[i]["depth"] + 1)])
                rows_of[left], rows_of[right] = rows & go_left, rows & ~go_left
                bounds_of[left], bounds_of[right] = child_bounds(cand, G, H, params, direction, bounds)
                nxt += [left, right]
            frontier = nxt
        return nodes, leaf_of

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)
