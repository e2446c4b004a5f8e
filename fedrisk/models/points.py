"""Points scorecard: a vertical WOE logistic regression as per-party points tables.

A credit team reads a logistic scorecard as points: every bin of every feature is
worth a number of points, an applicant's score is the sum of the points of the bins
it falls in, and the score maps to odds on a fixed scale. This module turns the
federated WOE binning (:mod:`fedrisk.models.woe`) and the vertical logistic
regression trained on the WOE table (:mod:`fedrisk.models.vertical_lr`) into such
tables — one per party, each holding that party's features only.

Scale (PDO, base odds, base score)
----------------------------------
``factor = PDO / ln 2`` and ``offset = base_score − factor·ln(base_odds)``. The
score is on the odds of *good* (no default), so **a higher score means a lower
risk**: with ``z`` the model's log-odds of default,

    score = offset + factor·ln(odds_good) = offset − factor·z

At ``base_score`` the odds of good are ``base_odds`` : 1, and every ``PDO`` more
points double them. Defaults (600 points at 50 : 1, 20 points to double) are those
of the scoring node's policy (:class:`fedrisk.scoring.policy.Policy`,
``base_points``, ``base_odds``, ``points_to_double_odds``), so the scorecard and
the live decision speak the same points.

Points convention
-----------------
The vertical LR standardises each WOE column with its owner's own training mean
``μ_j`` and scale ``s_j`` and learns ``c_j`` on the standardised column, so its
coefficient on the raw WOE is ``β_j = c_j / s_j`` and

    z = α + Σ_j β_j·(WOE_j − μ_j)   (+ the bank's coverage indicators)

with ``α`` the bank's intercept. Bin ``b`` of feature ``j`` gets

    points_jb = −factor·β_j·(WOE_jb − μ_j)

and the bank's table holds one more row, the **base points**
``offset − factor·α`` (plus one row per coverage indicator,
``−factor·β_q·(covered − μ_q)``, when the model uses one). The score of a row is
the base points plus the points of every bin it falls in, over every party —
nothing else is added, and it equals ``offset − factor·z`` exactly.

This is the "base points" form of the usual convention
``points_jb = −(β_j·WOE_jb + α/n)·factor + offset/n``: the same score, but the
intercept and the offset are not spread over all ``n`` features. Spreading them
would put the bank's intercept (its portfolio's default odds) and the total
feature count into every party's table; here each feature's own centring
``β_j·μ_j`` stays with the feature's owner, so **a party's points table is
computed from its own coefficient block, its own WOE bins and the public scale
alone**. Centring also means a feature holder that does not cover an applicant
adds 0 points, exactly as it adds 0 to the model's log-odds.

Bins are the owner's WOE bins after merging (small bins, then toward a monotone
event rate): bin ``(a, b]`` holds ``a < x ≤ b``. A missing value goes to the
``missing`` bin where the owner's binning gave NaN its own bin, else to the bin it
joined during binning (named in the bin text), else (no NaN among the training
rows) to the first bin — as the WOE transform does.

Leakage. Building the tables sends nothing: each party turns its own block into its
own table. A points bundle (:meth:`PartyPoints.to_bundle`) holds the party's own
features, bin edges, WOE and points, and the public scale; the bank's adds its base
points and coverage-indicator points. :meth:`PointsScorecard.bundle` adds what the
scoring deployment needs (the label holder's name, the party's table schema; for
the bank, the names of its feature holders).

Live scoring. A feature holder's scoring service reads its own table with its own
points table and answers its partial points as its share of the log-odds
``−points / factor`` with the names of its features that cost the most points
against their best bin — what the logistic scorecard's answer discloses (a
partial log-odds and feature names), nothing per feature in points. The bank's
node adds its own points (base, features, indicators) and every party's, so the
live score is :meth:`PointsScorecard.score` (:mod:`fedrisk.scoring.scoring_node`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.errors import ConfigError, DataValidationError, ProtocolError

__all__ = [
    "POINTS_KIND",
    "render_points_table",
    "FeaturePoints",
    "IndicatorPoints",
    "PartyPoints",
    "PointsScorecard",
    "Reason",
    "ScoreScale",
    "check_constraints",
    "train_points_scorecard",
]

POINTS_KIND = "points_scorecard.part"
BASE_ROW = "(base points)"


# =========================================================================== scale


@dataclass(frozen=True)
class ScoreScale:
    """The public points scale: PDO, base odds (good : bad) and the score at those odds.

    Attributes
    ----------
    pdo : float
        Points to double the odds of good (> 0).
    base_odds : float
        Odds of good : bad at ``base_score`` (> 0).
    base_score : float
        Score at ``base_odds``.

    Raises
    ------
    ConfigError
        PDO ≤ 0, base odds ≤ 0, or a value that is not a finite number (one line).
    """

    pdo: float = 20.0
    base_odds: float = 50.0
    base_score: float = 600.0

    def __post_init__(self) -> None:
        for name in ("pdo", "base_odds", "base_score"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"points scale: {name} must be a finite number, got {value!r}")
        if self.pdo <= 0:
            raise ConfigError(f"points scale: PDO (points to double the odds) must be > 0, got {self.pdo:g}")
        if self.base_odds <= 0:
            raise ConfigError(f"points scale: base odds must be > 0, got {self.base_odds:g}")

    @property
    def factor(self) -> float:
        """``PDO / ln 2``: points per unit of log-odds."""
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        """``base_score − factor·ln(base_odds)``: the score at even odds."""
        return self.base_score - self.factor * math.log(self.base_odds)

    def score_of_log_odds(self, log_odds_default: np.ndarray) -> np.ndarray:
        """``offset − factor·z`` for log-odds of default ``z`` (higher score, lower risk)."""
        return self.offset - self.factor * np.asarray(log_odds_default, dtype=np.float64)

    def to_dict(self) -> dict[str, float]:
        return {"pdo": float(self.pdo), "base_odds": float(self.base_odds), "base_score": float(self.base_score)}

    @classmethod
    def from_policy(cls, policy: Any) -> ScoreScale:
        """The scale of a scoring-node policy (``points_to_double_odds``, ``base_odds``, ``base_points``)."""
        return cls(float(policy.points_to_double_odds), float(policy.base_odds), float(policy.base_points))


# =========================================================================== one party's table


def _fmt(v: float) -> str:
    return f"{v:.4g}"


@dataclass(frozen=True)
class FeaturePoints:
    """One feature's points per (merged) WOE bin.

    Attributes
    ----------
    name : str
    edges : ndarray
        Increasing bin edges; bin ``g`` holds ``edges[g−1] < x ≤ edges[g]``.
    woe, points : ndarray
        Per bin (``len(edges) + 1`` entries).
    missing_woe, missing_points : float or None
        The ``missing`` bin's, where NaN has a bin of its own.
    nan_bin : int
        The bin missing values joined during binning (too few for a bin of their
        own); −1 when the training rows had none — a missing value then falls in
        bin 0, as in the WOE transform.
    """

    name: str
    edges: np.ndarray = field(repr=False)
    woe: np.ndarray = field(repr=False)
    points: np.ndarray = field(repr=False)
    missing_woe: float | None = None
    missing_points: float | None = None
    nan_bin: int = -1

    def __post_init__(self) -> None:
        k = np.asarray(self.edges).size + 1
        if np.asarray(self.woe).shape != (k,) or np.asarray(self.points).shape != (k,):
            raise ProtocolError(f"points of {self.name!r}: {k} bins need {k} WOE values and {k} points")
        if not -1 <= self.nan_bin < k or (self.missing_points is None) != (self.missing_woe is None):
            raise ProtocolError(f"points of {self.name!r}: the missing-value bin is malformed")

    def bins(self, x: np.ndarray) -> np.ndarray:
        """Bin index of each value; ``len(edges) + 1`` (past the last bin) marks the ``missing`` bin."""
        x = np.asarray(x, dtype=np.float64)
        nan = np.isnan(x)
        b = np.searchsorted(self.edges, np.where(nan, 0.0, x), side="left")
        where_nan = self.edges.size + 1 if self.missing_points is not None else max(self.nan_bin, 0)
        return np.where(nan, where_nan, b)

    def _all_points(self) -> np.ndarray:
        extra = [] if self.missing_points is None else [self.missing_points]
        return np.concatenate([self.points, extra])

    def points_of(self, x: np.ndarray) -> np.ndarray:
        """Points of each value."""
        return self._all_points()[self.bins(x)]

    def labels(self) -> list[str]:
        """Interval text per bin (then ``missing`` where it has a bin)."""
        e = [-math.inf, *map(float, self.edges), math.inf]
        out = []
        for g in range(self.edges.size + 1):
            lo = "-inf" if g == 0 else _fmt(e[g])
            hi = "+inf)" if g == self.edges.size else f"{_fmt(e[g + 1])}]"
            text = f"({lo}, {hi}"
            if self.missing_points is None and g == self.nan_bin:  # NaN joined this bin in training
                text += " or missing"
            out.append(text)
        if self.missing_points is not None:
            out.append("missing")
        return out

    def best_points(self) -> float:
        return float(np.max(self._all_points()))


@dataclass(frozen=True)
class IndicatorPoints:
    """The bank's coverage indicator for a feature holder: points when it covers the SME, and when not."""

    party: str
    covered: float
    not_covered: float


@dataclass(frozen=True)
class Reason:
    """A feature that cost points: its bin, its points and how many fewer than its best bin."""

    feature: str
    bin: str
    points: float
    points_below_best: float


@dataclass(frozen=True)
class PartyPoints:
    """One party's points table: its own features only (the bank's adds base and indicator points).

    Attributes
    ----------
    party : str
    scale : ScoreScale
    features : tuple of FeaturePoints
    base_points : float or None
        ``offset − factor·α`` (the label holder only).
    indicators : tuple of IndicatorPoints
        Coverage indicators of the model (the label holder only).
    """

    party: str
    scale: ScoreScale
    features: tuple[FeaturePoints, ...]
    base_points: float | None = None
    indicators: tuple[IndicatorPoints, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def is_label_holder(self) -> bool:
        return self.base_points is not None

    # ------------------------------------------------------------------ build
    @classmethod
    def from_party(cls, party: str, woe: Any, lr: Any, scale: ScoreScale) -> PartyPoints:
        """A party's table from its own WOE model and its own LR block (nothing of another party).

        Parameters
        ----------
        party : str
        woe : PlainWOE or FeatureHolderWOE
            The party's fitted WOE binning (``tables_``, ``binned_``, ``feature_names_in_``).
        lr : LabelHolderLR or FeatureHolderLR
            The party's block of the vertical LR trained on its WOE columns
            (``coef_``, ``mean_``, ``scale_``, ``feature_names_``; the label holder's
            also ``intercept_`` and ``indicator_parties_``).
        scale : ScoreScale
        """
        names = list(woe.feature_names_in_)
        lr_names = list(lr.feature_names_)
        indicator_parties = list(getattr(lr, "indicator_parties_", []))
        own = lr_names[: len(lr_names) - len(indicator_parties)]
        if own != names:
            raise DataValidationError(f"{party}: the LR block reads {own}, the WOE bins are of {names}")
        coef = np.asarray(lr.coef_, dtype=np.float64)
        mean = np.asarray(lr.mean_, dtype=np.float64)
        sd = np.asarray(lr.scale_, dtype=np.float64)
        beta = coef / sd  # coefficient on the raw WOE column
        f = scale.factor
        b = woe.binned_
        feats = []
        for j, t in enumerate(woe.tables_):
            groups = np.asarray(t.groups, dtype=np.int64)
            thresholds = np.asarray(b.thresholds[j], dtype=np.float64)
            edges = thresholds[groups[:-1] != groups[1:]]  # merged bins keep only their outer edges
            pts = -f * beta[j] * (np.asarray(t.woe, dtype=np.float64) - mean[j]) + 0.0  # + 0.0: no "-0" points
            has_missing = t.woe_missing is not None
            nan_bin = int(groups[b.nan_bin[j]]) if b.nan_bin[j] >= 0 else -1
            feats.append(
                FeaturePoints(
                    t.name,
                    edges,
                    np.asarray(t.woe, dtype=np.float64),
                    pts,
                    missing_woe=float(t.woe_missing) if has_missing else None,
                    missing_points=float(-f * beta[j] * (t.woe_missing - mean[j]) + 0.0) if has_missing else None,
                    nan_bin=nan_bin,
                )
            )
        base, indicators = None, []
        if hasattr(lr, "intercept_"):  # the label holder: base points and coverage indicators
            base = scale.offset - f * float(lr.intercept_)
            m = len(names)
            for i, p in enumerate(indicator_parties):
                bq = beta[m + i]
                indicators.append(IndicatorPoints(p, float(-f * bq * (1.0 - mean[m + i])), float(-f * bq * (0.0 - mean[m + i]))))
        return cls(party, scale, tuple(feats), base, tuple(indicators))

    # ------------------------------------------------------------------ read
    def table(self, *, include_base: bool = True) -> pd.DataFrame:
        """The points table: columns ``feature``, ``bin`` (interval text), ``woe``, ``points``.

        The label holder's ends with the base points and coverage-indicator rows (``woe`` NaN).
        """
        rows: list[dict[str, Any]] = []
        for fp in self.features:
            woes = list(fp.woe) + ([fp.missing_woe] if fp.missing_woe is not None else [])
            for label, w, p in zip(fp.labels(), woes, fp._all_points(), strict=True):
                rows.append({"feature": fp.name, "bin": label, "woe": float(w), "points": float(p)})
        if include_base:
            for ind in self.indicators:
                rows.append({"feature": f"covered:{ind.party}", "bin": "covered", "woe": math.nan, "points": ind.covered})
                rows.append({"feature": f"covered:{ind.party}", "bin": "not covered", "woe": math.nan, "points": ind.not_covered})
            if self.base_points is not None:
                rows.append({"feature": BASE_ROW, "bin": "", "woe": math.nan, "points": float(self.base_points)})
        return pd.DataFrame(rows, columns=["feature", "bin", "woe", "points"])

    def _matrix(self, X: Any) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            missing = [n for n in self.feature_names if n not in X.columns]
            if missing:
                raise DataValidationError(f"{self.party}: the table has no column {missing[0]!r}")
            return X[self.feature_names].to_numpy(dtype=np.float64)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise DataValidationError(f"{self.party}: the points table reads {len(self.features)} features, got shape {X.shape}")
        return X

    def feature_points(self, X: Any) -> np.ndarray:
        """``(n, m)`` points of each row's bin of each own feature."""
        X = self._matrix(X)
        if not self.features:
            return np.zeros((X.shape[0], 0))
        return np.column_stack([fp.points_of(X[:, j]) for j, fp in enumerate(self.features)])

    def partial_points(self, X: Any, covered: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """This party's points per row; the label holder's include base and indicator points.

        ``covered`` (label holder only): per feature holder of an indicator, whether it covers each row.
        """
        total = self.feature_points(X).sum(axis=1)
        if self.base_points is not None:
            total = total + self.base_points
            for ind in self.indicators:
                if covered is None or ind.party not in covered:
                    raise DataValidationError(f"coverage of {ind.party!r} is needed to score (the model uses its indicator)")
                c = np.broadcast_to(np.asarray(covered[ind.party], dtype=bool), total.shape)
                total = total + np.where(c, ind.covered, ind.not_covered)
        return total

    def points_below_best(self, X: Any) -> np.ndarray:
        """``(n, m)``: how many points each row's bin of each own feature scores below that feature's best bin."""
        P = self.feature_points(X)
        if not self.features:
            return P
        return np.array([fp.best_points() for fp in self.features])[None, :] - P

    def reasons(self, row: Any, top: int = 3) -> list[Reason]:
        """The own features that cost the row most points against their best bin, worst first.

        Parameters
        ----------
        row : mapping feature → value, pandas Series, or a sequence in feature order
        top : int

        Returns
        -------
        list of Reason
            At most ``top``, each with ``points_below_best`` > 0.
        """
        if isinstance(row, pd.DataFrame):
            if len(row) != 1:
                raise DataValidationError(f"{self.party}: reasons are per row, got {len(row)} rows")
            row = row.iloc[0]
        if isinstance(row, Mapping | pd.Series):
            missing = [n for n in self.feature_names if n not in row]
            if missing:
                raise DataValidationError(f"{self.party}: the row has no value for {missing[0]!r}")
            values = np.array([row[n] for n in self.feature_names], dtype=np.float64)
        else:
            values = self._matrix(np.asarray(row, dtype=np.float64).reshape(1, -1))[0]
        out = []
        for fp, v in zip(self.features, values, strict=True):
            b = int(fp.bins(np.array([v]))[0])
            p = float(fp._all_points()[b])
            out.append(Reason(fp.name, fp.labels()[b], p, fp.best_points() - p))
        out.sort(key=lambda r: -r.points_below_best)
        return [r for r in out if r.points_below_best > 1e-9][:top]

    # ------------------------------------------------------------------ bundle
    def to_bundle(self, *, run_id: str = "", extra: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, meta)`` for :func:`fedrisk.models.bundle.write_model_bundle`: this party's table alone."""
        arrays: dict[str, np.ndarray] = {}
        feats = []
        for j, fp in enumerate(self.features):
            arrays[f"edges.{j}"] = np.asarray(fp.edges, dtype=np.float64)
            arrays[f"woe.{j}"] = np.asarray(fp.woe, dtype=np.float64)
            arrays[f"points.{j}"] = np.asarray(fp.points, dtype=np.float64)
            feats.append({"name": fp.name, "missing_woe": fp.missing_woe, "missing_points": fp.missing_points, "nan_bin": fp.nan_bin})
        meta = {
            "kind": POINTS_KIND,
            "party": self.party,
            "run_id": run_id,
            "scale": self.scale.to_dict(),
            "features": feats,
            "base_points": self.base_points,
            "indicators": [{"party": i.party, "covered": i.covered, "not_covered": i.not_covered} for i in self.indicators],
            **dict(extra or {}),
        }
        return arrays, meta

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PartyPoints:
        """Rebuild from verified bundle contents (:func:`fedrisk.models.bundle.load_model_bundle`)."""
        if meta.get("kind") != POINTS_KIND:
            raise ProtocolError(f"not a points-scorecard bundle (kind {meta.get('kind')!r})")
        try:
            feats = tuple(
                FeaturePoints(
                    str(f["name"]),
                    np.asarray(arrays[f"edges.{j}"], dtype=np.float64),
                    np.asarray(arrays[f"woe.{j}"], dtype=np.float64),
                    np.asarray(arrays[f"points.{j}"], dtype=np.float64),
                    f["missing_woe"],
                    f["missing_points"],
                    int(f["nan_bin"]),
                )
                for j, f in enumerate(meta["features"])
            )
            inds = tuple(IndicatorPoints(str(i["party"]), float(i["covered"]), float(i["not_covered"])) for i in meta["indicators"])
            base = meta["base_points"]
            return cls(str(meta["party"]), ScoreScale(**meta["scale"]), feats, None if base is None else float(base), inds)
        except KeyError as err:
            raise ProtocolError(f"points bundle lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"points bundle is malformed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


# =========================================================================== the whole card


@dataclass(frozen=True)
class PointsScorecard:
    """Every party's points table of one vertical WOE scorecard (an in-process view).

    In a deployment each party holds only its own :class:`PartyPoints`; this object
    gathers them where one process trained all parties (tests, benchmarks, the CLI).

    Attributes
    ----------
    scale : ScoreScale
    label_holder : str
    parts : dict of party → PartyPoints
    """

    scale: ScoreScale
    label_holder: str
    parts: dict[str, PartyPoints]

    @classmethod
    def from_woe_model(cls, woe: Any, lr: Any, scale: ScoreScale | None = None) -> PointsScorecard:
        """Points tables from a fitted :class:`~fedrisk.models.woe.VerticalWOE` and the
        :class:`~fedrisk.models.vertical_lr.VerticalLogisticRegression` trained on its WOE table.

        Each party's table is built by :meth:`PartyPoints.from_party` from that party's
        objects only.
        """
        scale = scale or ScoreScale()
        bank = woe.label_holder_.name
        if lr.label_holder_.name != bank:
            raise DataValidationError(f"the WOE label holder is {bank!r}, the LR's {lr.label_holder_.name!r}")
        if set(woe.feature_holders_) != set(lr.feature_holders_):
            raise DataValidationError("the WOE binning and the LR have different feature holders")
        parts = {bank: PartyPoints.from_party(bank, woe.label_holder_.own_model_, lr.label_holder_, scale)}
        for p in woe.feature_holders_:
            parts[p] = PartyPoints.from_party(p, woe.feature_holders_[p], lr.feature_holders_[p], scale)
        return cls(scale, bank, parts)

    def points_table(self, party: str) -> pd.DataFrame:
        """``party``'s table: ``feature``, ``bin``, ``woe``, ``points``."""
        if party not in self.parts:
            raise DataValidationError(f"no party {party!r} in this scorecard; parties: {', '.join(self.parts)}")
        return self.parts[party].table()

    def _frames(self, data: Any) -> dict[str, pd.DataFrame]:
        if isinstance(data, pd.DataFrame):  # one joined table: each party reads its own columns
            names = [n for p in self.parts.values() for n in p.feature_names]
            if len(set(names)) != len(names):
                raise DataValidationError("parties share feature names: pass one table per party")
            return {p: data for p in self.parts}
        frames = dict(data)
        if self.label_holder not in frames:
            raise DataValidationError(f"the label holder's table ({self.label_holder!r}) is needed to score")
        unknown = sorted(set(frames) - set(self.parts))
        if unknown:
            raise DataValidationError(f"table of {unknown[0]!r}, which is not part of this scorecard")
        return frames

    def partial_points(self, data: Any) -> pd.DataFrame:
        """Per row, each party's points (columns: parties); rows are the label holder's.

        ``data``: one DataFrame with every party's columns, or party → DataFrame
        (indexed by ID); a feature holder without a row for an ID (or without a
        table) does not cover that SME and adds 0 points.
        """
        frames = self._frames(data)
        bank_df = frames[self.label_holder]
        out, covered = {}, {}
        for p, part in self.parts.items():
            if p == self.label_holder:
                continue
            df = frames.get(p)
            cov = np.zeros(len(bank_df), dtype=bool) if df is None else bank_df.index.isin(df.index)
            pts = np.zeros(len(bank_df))
            if df is not None and cov.any():
                pts[cov] = part.partial_points(df.loc[bank_df.index[cov]])
            out[p], covered[p] = pts, cov
        out = {self.label_holder: self.parts[self.label_holder].partial_points(bank_df, covered), **out}
        return pd.DataFrame(out, index=bank_df.index)

    def score(self, data: Any) -> np.ndarray:
        """The score of each row: the sum of every party's points (higher is safer)."""
        return self.partial_points(data).sum(axis=1).to_numpy()

    def bundle(self, party: str, *, run_id: str, schema: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """``party``'s scoring bundle contents: its own table (:meth:`PartyPoints.to_bundle`) and who it serves.

        Adds the label holder's name (a feature holder's service answers only it),
        the party's table schema (how its scoring service reads its own table) and,
        for the label holder, the names of the feature holders its node asks.
        Nothing of another party's table is added.
        """
        if party not in self.parts:
            raise DataValidationError(f"no party {party!r} in this scorecard; parties: {', '.join(self.parts)}")
        extra: dict[str, Any] = {"label_holder": self.label_holder, "schema": dict(schema or {})}
        if party == self.label_holder:
            extra["feature_holders"] = [p for p in self.parts if p != party]
        return self.parts[party].to_bundle(run_id=run_id, extra=extra)

    def reasons(self, row: Any, party: str, top: int = 3) -> list[Reason]:
        """``party``'s features that cost ``row`` the most points against their best bin."""
        if party not in self.parts:
            raise DataValidationError(f"no party {party!r} in this scorecard; parties: {', '.join(self.parts)}")
        return self.parts[party].reasons(row, top)


# =========================================================================== training


def check_constraints(
    tables: Mapping[str, Sequence[str]], monotone: Mapping[str, Mapping[str, Any]] | None, signs: Mapping[str, Mapping[str, int]] | None
) -> None:
    """Check every declared constraint against its owner's own columns, before any key is made.

    Raises
    ------
    ConfigError
        A constraint names an unknown party or a feature its owner does not have (one line).
    """
    from fedrisk.models.vertical_lr import monotone_signs
    from fedrisk.models.woe import check_monotone

    for what, given in (("monotone constraint", monotone), ("coefficient sign", signs)):
        for party, cons in dict(given or {}).items():
            if party not in tables:
                raise ConfigError(f"{what}s name an unknown party {party!r}")
            if what == "monotone constraint":
                check_monotone(cons, list(tables[party]), party)
            else:
                monotone_signs(cons, list(tables[party]), party)


def train_points_scorecard(
    bank: pd.DataFrame,
    holders: Mapping[str, pd.DataFrame],
    *,
    label: str = "y",
    label_holder: str = "bank",
    scale: ScoreScale | None = None,
    n_bins: int = 10,
    min_bin_size: int = 100,
    monotone: Mapping[str, Mapping[str, str]] | None = None,
    signs: Mapping[str, Mapping[str, int]] | None = None,
    C: float = 1.0,
    max_epochs: int = 30,
    n_jobs: int = 1,
) -> tuple[PointsScorecard, Any, Any]:
    """Federated WOE binning, vertical LR on the WOE table and the points tables, in-process.

    Parameters
    ----------
    bank : DataFrame indexed by ID
        The label holder's features and ``label``.
    holders : mapping party → DataFrame indexed by ID
        Each feature holder's features; IDs not in the bank's table are ignored,
        the bank's IDs it lacks are rows it does not cover.
    scale : ScoreScale, optional
        Default: 600 points at 50 : 1, 20 points to double the odds.
    n_bins, min_bin_size
        WOE binning (see :class:`fedrisk.models.woe.VerticalWOE`).
    monotone : party → feature → direction, optional
        Monotone event rate over bins (default ``"auto"`` for every feature).
    signs : party → feature → ±1, optional
        Coefficient signs (default −1 for every feature: a higher WOE, a lower
        default rate, more points — the points then rise with the WOE).
    C, max_epochs, n_jobs
        Vertical LR (see :class:`fedrisk.models.vertical_lr.VerticalLogisticRegression`).

    Returns
    -------
    (PointsScorecard, VerticalWOE, VerticalLogisticRegression)
    """
    from fedrisk.models.vertical_lr import VerticalLogisticRegression
    from fedrisk.models.woe import VerticalWOE

    scale = scale or ScoreScale()  # a bad scale fails here, before any key is made
    if label not in bank.columns:
        raise DataValidationError(f"the label holder's table has no label column {label!r}")
    bank_feats = [str(c) for c in bank.columns if c != label]
    cols = {label_holder: bank_feats, **{p: [str(c) for c in df.columns] for p, df in holders.items()}}
    check_constraints(cols, monotone, signs)
    if monotone is None:
        monotone = {p: {f: "auto" for f in fs} for p, fs in cols.items()}
    if signs is None:
        signs = {p: {f: -1 for f in fs} for p, fs in cols.items()}
    y = bank[label].to_numpy()
    aligned = {}
    for p, df in holders.items():
        cov = bank.index.isin(df.index)
        X = np.zeros((len(bank), df.shape[1]))
        X[cov] = df.loc[bank.index[cov]].to_numpy(dtype=np.float64)
        aligned[p] = (X, cov)
    woe = VerticalWOE(n_bins=n_bins, min_bin_size=min_bin_size, monotone=monotone, label_holder_name=label_holder, n_jobs=n_jobs).fit(
        bank[bank_feats].to_numpy(dtype=np.float64), y, aligned, bank_feature_names=bank_feats, holder_feature_names={p: cols[p] for p in holders}
    )
    bank_woe = pd.DataFrame(woe.label_holder_.own_model_.transform(bank[bank_feats].to_numpy(dtype=np.float64)), columns=bank_feats, index=bank.index)
    bank_woe[label] = y
    holder_woe = {}
    for p, (_, cov) in aligned.items():
        W = woe.feature_holders_[p].transform()
        holder_woe[p] = pd.DataFrame(W[cov], columns=cols[p], index=bank.index[cov])
    lr = VerticalLogisticRegression(
        C=C, max_epochs=max_epochs, patience=max_epochs, validation_fraction=0.0, label=label, label_holder_name=label_holder, monotone=signs, n_jobs=n_jobs
    )
    lr.fit(bank_woe, holder_woe)
    return PointsScorecard.from_woe_model(woe, lr, scale), woe, lr


def render_points_table(table: Any, party: str, scale: Any) -> Any:
    """A rich table of one party's points (``feature``, ``bin``, ``woe``, ``points``), for people."""
    from rich.table import Table

    out = Table(
        title=f"Points table — {party}'s own features",
        caption=(
            f"{scale.base_score:g} points at odds {scale.base_odds:g}:1, {scale.pdo:g} points to double the odds; "
            "score = the sum of every party's points, higher is safer"
        ),
    )
    out.add_column("feature")
    out.add_column("bin")
    out.add_column("WOE", justify="right")
    out.add_column("points", justify="right")
    prev = None
    for r in table.itertuples(index=False):
        if prev is not None and r.feature != prev:
            out.add_section()
        woe = "" if r.woe != r.woe else f"{r.woe:+.3f}"  # NaN: base / indicator rows
        out.add_row(r.feature if r.feature != prev else "", r.bin, woe, f"{round(r.points, 1) + 0.0:.1f}")  # no "-0.0"
        prev = r.feature
    return out
