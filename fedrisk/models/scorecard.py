"""Vertical scorecard bundles: each party's own part of a jointly trained logistic model.

After vertical logistic regression (:mod:`fedrisk.models.vertical_lr`) every party
holds only its own block of the model, and keeps it that way: each writes a signed
bundle (:func:`fedrisk.models.bundle.write_model_bundle`, safetensors + JSON) of its
part alone.

* **Label holder** (kind ``vertical_lr.label_holder``): its own coefficients,
  standardisation and feature names, the coverage indicators (``covered:<party>``),
  the intercept, and which feature holder holds how many features — never their
  coefficients or statistics.
* **Feature holder** (kind ``vertical_lr.feature_holder``): its own coefficients,
  standardisation and feature names, and the name of the label holder.

Scoring a row combines the parts exactly as training did::

    z = intercept + Σ_j c_j · std(x_j)  (bank features and coverage indicators)
        + Σ_k u_k,   u_k = Σ_j w_kj · std(x_kj)   (0 where party k does not cover the SME)

where ``std(x) = (x − mean) / scale`` with a missing value at the training mean (0).
A feature holder's partial score ``u_k`` is all it ever reveals about its row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypedDict

import numpy as np

from fedrisk.errors import DataValidationError, ProtocolError

LABEL_HOLDER_KIND = "vertical_lr.label_holder"
FEATURE_HOLDER_KIND = "vertical_lr.feature_holder"
COVERAGE_PREFIX = "covered:"


def _standardised(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    Z = (np.asarray(X, dtype=np.float64) - mean) / scale
    return np.where(np.isnan(Z), 0.0, Z)  # missing → training mean


@dataclass(frozen=True)
class ScorecardPart:
    """One party's block of a vertical logistic model.

    Attributes
    ----------
    party : str
    features : tuple of str
        The columns this block reads, in order (for the label holder: its own
        features; coverage indicators are separate).
    coef, mean, scale : ndarray
        Coefficients on standardised features and the standardisation.
    meta : dict
        The bundle's JSON metadata (run id, schema, ...).
    """

    party: str
    features: tuple[str, ...]
    coef: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        m = len(self.features)
        for name in ("coef", "mean", "scale"):
            if np.asarray(getattr(self, name)).shape != (m,):
                raise ProtocolError(f"scorecard of {self.party!r}: {name} does not have {m} entries")

    def _matrix(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise DataValidationError(f"scorecard of {self.party!r} reads {len(self.features)} features, got shape {X.shape}")
        return X

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-row, per-feature log-odds contributions ``w_j · std(x_j)`` (n, m)."""
        X = self._matrix(X)
        return _standardised(X, self.mean, self.scale) * self.coef

    def partial_score(self, X: np.ndarray) -> np.ndarray:
        """This block's share of the log-odds for each row."""
        return self.contributions(X).sum(axis=1)


@dataclass(frozen=True)
class FeatureHolderScorecard(ScorecardPart):
    """A feature holder's block; :meth:`partial_score` is what it answers at decision time."""

    label_holder: str = ""


@dataclass(frozen=True)
class LabelHolderScorecard(ScorecardPart):
    """The label holder's block, the intercept and the coverage indicators.

    Attributes
    ----------
    intercept : float
    indicator_parties : tuple of str
        Feature holders whose coverage indicator is a model input.
    indicator_coef, indicator_mean, indicator_scale : ndarray
    feature_holders : dict of str → int
        Each feature holder and how many features its block reads.
    """

    intercept: float = 0.0
    indicator_parties: tuple[str, ...] = ()
    indicator_coef: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    indicator_mean: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    indicator_scale: np.ndarray = field(default_factory=lambda: np.ones(0), repr=False)
    feature_holders: dict = field(default_factory=dict)

    def indicator_contributions(self, covered: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """``(n, len(indicator_parties))`` contributions of the coverage indicators."""
        cols = []
        for party in self.indicator_parties:
            if party not in covered:
                raise DataValidationError(f"coverage of {party!r} is needed to score (the model uses its indicator)")
            cols.append(np.broadcast_to(np.asarray(covered[party], dtype=np.float64), (n,)))
        if not cols:
            return np.zeros((n, 0))
        C = np.column_stack(cols)
        return (C - self.indicator_mean) / self.indicator_scale * self.indicator_coef

    def decision_function(self, X: np.ndarray, partial_scores: Mapping[str, Sequence[float | None] | np.ndarray]) -> np.ndarray:
        """Joint log-odds from own rows and each feature holder's partial scores.

        Parameters
        ----------
        X : ndarray (n, len(features))
            The label holder's own feature rows.
        partial_scores : mapping party → n values
            Each feature holder's partial score per row; ``None`` or NaN where
            the party does not cover that SME (its contribution is then 0 and
            its coverage indicator 0, exactly as in training).
        """
        X = self._matrix(X)
        n = X.shape[0]
        covered: dict[str, np.ndarray] = {}
        total = np.zeros(n)
        for party in self.feature_holders:
            raw = partial_scores.get(party)
            if raw is None:
                u = np.full(n, np.nan)
            else:
                u = np.array([np.nan if v is None else float(v) for v in np.asarray(raw, dtype=object).ravel()])
                if u.shape != (n,):
                    raise DataValidationError(f"partial scores of {party!r}: expected {n} values, got {u.size}")
            covered[party] = ~np.isnan(u)
            total += np.where(covered[party], u, 0.0)
        unknown = sorted(set(partial_scores) - set(self.feature_holders))
        if unknown:
            raise DataValidationError(f"partial scores from {unknown[0]!r}, which is not part of this model")
        own = self.contributions(X).sum(axis=1)
        ind = self.indicator_contributions(covered, n).sum(axis=1)
        return self.intercept + own + ind + total

    def predict_proba(self, X: np.ndarray, partial_scores: Mapping[str, Any]) -> np.ndarray:
        """Probability of default per row."""
        z = self.decision_function(X, partial_scores)
        return 0.5 * (1.0 + np.tanh(0.5 * z))


# --------------------------------------------------------------------------- export


def label_holder_bundle(
    lh: Any,
    *,
    run_id: str,
    schema: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    best_so_far: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a fitted :class:`~fedrisk.models.vertical_lr.LabelHolderLR`.

    With ``best_so_far`` the best epoch's weights of a training still running (a checkpoint).
    """
    names = list(lh.feature_names_)
    n_ind = len(lh.indicator_parties_)
    n_own = len(names) - n_ind
    coef, intercept = lh.best_weights() if best_so_far else (lh.coef_, lh.intercept_)
    coef = np.asarray(coef, dtype=np.float64)
    mean = np.asarray(lh.mean_, dtype=np.float64)
    scale = np.asarray(lh.scale_, dtype=np.float64)
    record = lh.model_record()
    arrays = {
        "coef": coef[:n_own],
        "mean": mean[:n_own],
        "scale": scale[:n_own],
        "indicator.coef": coef[n_own:],
        "indicator.mean": mean[n_own:],
        "indicator.scale": scale[n_own:],
        "intercept": np.asarray([float(intercept)]),
    }
    meta = {
        "kind": LABEL_HOLDER_KIND,
        "party": lh.name,
        "run_id": run_id,
        "features": names[:n_own],
        "indicator_parties": list(lh.indicator_parties_),
        "feature_holders": {p: int(n) for p, n in record["parts"].items() if p != lh.name},
        "context_fingerprint": lh.fingerprint,
        "best_epoch": int(lh.best_epoch_),
        "epochs": int(lh.n_epochs_),
        "validation_auc": record.get("validation_auc"),
        "schema": dict(schema or {}),
        **dict(extra or {}),
    }
    return arrays, meta


def feature_holder_bundle(
    fh: Any,
    *,
    run_id: str,
    label_holder: str,
    schema: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    best_so_far: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a fitted :class:`~fedrisk.models.vertical_lr.FeatureHolderLR`."""
    arrays = {
        "coef": np.asarray(fh.best_weights() if best_so_far else fh.coef_, dtype=np.float64),
        "mean": np.asarray(fh.mean_, dtype=np.float64),
        "scale": np.asarray(fh.scale_, dtype=np.float64),
    }
    meta = {
        "kind": FEATURE_HOLDER_KIND,
        "party": fh.name,
        "run_id": run_id,
        "label_holder": label_holder,
        "features": list(fh.feature_names_),
        "context_fingerprint": fh.fingerprint,
        "schema": dict(schema or {}),
        **dict(extra or {}),
    }
    return arrays, meta


class _PartFields(TypedDict):
    """The :class:`ScorecardPart` fields both kinds of block share."""

    party: str
    features: tuple[str, ...]
    coef: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    meta: dict


def scorecard_from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> LabelHolderScorecard | FeatureHolderScorecard:
    """Rebuild a party's block from verified bundle contents."""
    kind = meta.get("kind")
    try:
        common = _PartFields(
            party=str(meta["party"]),
            features=tuple(str(f) for f in meta["features"]),
            coef=np.asarray(arrays["coef"], dtype=np.float64),
            mean=np.asarray(arrays["mean"], dtype=np.float64),
            scale=np.asarray(arrays["scale"], dtype=np.float64),
            meta=dict(meta),
        )
        if kind == FEATURE_HOLDER_KIND:
            return FeatureHolderScorecard(**common, label_holder=str(meta["label_holder"]))
        if kind == LABEL_HOLDER_KIND:
            return LabelHolderScorecard(
                **common,
                intercept=float(np.asarray(arrays["intercept"]).ravel()[0]),
                indicator_parties=tuple(str(p) for p in meta["indicator_parties"]),
                indicator_coef=np.asarray(arrays["indicator.coef"], dtype=np.float64),
                indicator_mean=np.asarray(arrays["indicator.mean"], dtype=np.float64),
                indicator_scale=np.asarray(arrays["indicator.scale"], dtype=np.float64),
                feature_holders={str(p): int(n) for p, n in dict(meta["feature_holders"]).items()},
            )
    except KeyError as err:
        raise ProtocolError(f"scorecard bundle lacks {err.args[0]!r}") from None
    raise ProtocolError(f"not a vertical scorecard bundle (kind {kind!r})")


def load_scorecard(folder: Path, trusted_public_keys: Iterable[bytes] | None) -> LabelHolderScorecard | FeatureHolderScorecard:
    """Verify a signed bundle and load the party's block from it."""
    from fedrisk.models.bundle import load_model_bundle

    arrays, meta = load_model_bundle(Path(folder), trusted_public_keys)
    return scorecard_from_arrays(arrays, meta)
