"""Stacking ensemble of federated base learners, with a meta-learner at the label holder.

Base learners are the vertical protocols themselves — vertical logistic regression
(:class:`fedrisk.models.vertical_lr.VerticalLogisticRegression`) and vertical
SecureBoost (:class:`fedrisk.models.secureboost.VerticalSecureBoost`), each run over
its full encrypted protocol. The label holder (the bank) splits the aligned rows
into K stratified folds; for every fold each base learner is trained on the other
K − 1 folds and scores the held-out fold, giving every training row an
*out-of-fold* (OOF) log-odds per base learner. A logistic regression on those OOF
log-odds — the **meta-learner** — is fitted by the bank alone. Each base learner is
then refitted on all rows; that refit is what is served, with the meta-learner on
top (``p = σ(b + Σ_m a_m · z_m)``, ``z_m`` base learner m's joint log-odds).

Leakage (honest-but-curious roles, as in the base protocols)
------------------------------------------------------------
No new exchange type: every message is one of the base protocols' messages,
sent K + 1 times per base learner (once per fold, once for the refit). What
each role learns beyond a single run of each base protocol:

* **Label holder (bank)**: everything the base protocols give it, K + 1 times:
  for vertical LR the sum of the others' partial scores on every training row
  (it already learns it in one run), for SecureBoost per-bin g/h totals and the
  row partitions at other parties' splits. The OOF scores are computed by the
  bank from what it already receives when it scores — vertical LR's summed
  partial scores and SecureBoost's split answers for held-out rows — so they are
  functions of the base protocols' outputs. The meta-learner's coefficients are
  the bank's own. Across folds it sees K + 1 models trained on overlapping rows;
  the run-level flooding bounds of each protocol add up over the K + 1 runs
  (statistical distance at most (K + 1) times a single run's).
* **Feature holder**: what a base protocol gives it, K + 1 times: for each run
  the split of rows into that run's training rows and the rest (hence the fold
  assignment of every aligned row — random, label-stratified, so it carries the
  base rate only), its own weights or thresholds per run, and, in SecureBoost,
  node row sets. Never labels, residuals, the meta-learner or the other base
  learner's model.
* **Coordinator**: ciphertexts, sizes and the public payloads of K + 1 runs of
  each base protocol; the fold layout only as each run's training-row set.

Scoring: each base learner fans out exactly as when served alone (feature
holders return partial scores or split answers); the meta-learner runs at the
bank, so a feature holder learns nothing new at scoring time. Deployed, the
stack is one model on one scoring node (:mod:`fedrisk.scoring.stack`):
each feature holder is asked once per application for its part of every base
learner, and the node's PD equals :meth:`VerticalStacking.predict_proba` with
``secure=False`` (plaintext sums of the same partial scores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from fedrisk.errors import ConfigError, DataValidationError
from fedrisk.models.metrics import auc

__all__ = [
    "BASE_LEARNERS",
    "MetaLearner",
    "VerticalStacking",
    "benchmark_stacking",
    "fit_meta_learner",
]

log = logging.getLogger("fedrisk.stacking")

#: Base learners the stack knows, in serving order.
BASE_LEARNERS = ("vertical_lr", "secureboost")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


class MetaLearner:
    """The bank's meta-learner: a logistic regression on the base learners' log-odds.

    Parameters
    ----------
    names : sequence of str
        Base learner names, one per column of the inputs.
    coef : array of float, shape (len(names),)
    intercept : float
    """

    def __init__(self, names: Sequence[str], coef: np.ndarray, intercept: float) -> None:
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if len(names) != coef.size or coef.size == 0:
            raise ConfigError(f"meta-learner: {coef.size} coefficients for {len(names)} base learners")
        if not np.all(np.isfinite(coef)) or not np.isfinite(intercept):
            raise ConfigError("meta-learner: coefficients must be finite")
        self.names = tuple(str(n) for n in names)
        self.coef = coef
        self.intercept = float(intercept)

    def decision_function(self, scores: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Stack log-odds from base learner log-odds (a mapping name → array, or an (n, m) matrix)."""
        Z = self.matrix(scores)
        return self.intercept + Z @ self.coef

    def predict_proba(self, scores: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default]."""
        p = _sigmoid(self.decision_function(scores))
        return np.column_stack([1.0 - p, p])

    def matrix(self, scores: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """The (n, m) input matrix in this meta-learner's column order."""
        if isinstance(scores, Mapping):
            missing = [n for n in self.names if n not in scores]
            if missing:
                raise DataValidationError(f"meta-learner: no scores from base learner {missing[0]!r}")
            Z = np.column_stack([np.asarray(scores[n], dtype=np.float64).ravel() for n in self.names])
        else:
            Z = np.asarray(scores, dtype=np.float64)
            if Z.ndim != 2 or Z.shape[1] != len(self.names):
                raise DataValidationError(f"meta-learner: expected {len(self.names)} score columns, got shape {Z.shape}")
        if not np.all(np.isfinite(Z)):
            raise DataValidationError("meta-learner: base learner scores contain NaN or infinity")
        return Z

    def to_record(self) -> dict[str, Any]:
        """JSON-safe record (what a stacking bundle stores)."""
        return {"names": list(self.names), "coef": [float(c) for c in self.coef], "intercept": self.intercept}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MetaLearner:
        """Inverse of :meth:`to_record`; one-line error on a malformed record."""
        try:
            return cls(list(record["names"]), np.asarray(record["coef"], dtype=np.float64), float(record["intercept"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"meta-learner record is malformed: {err}") from None


def fit_meta_learner(oof: Mapping[str, np.ndarray], y: np.ndarray, *, C: float = 1.0) -> MetaLearner:
    """Fit the meta-learner on out-of-fold base learner log-odds (at the label holder).

    Parameters
    ----------
    oof : mapping name → array of shape (n,)
        Out-of-fold log-odds of each base learner on the training rows.
    y : array of {0, 1}, shape (n,)
    C : float
        Inverse L2 strength (scikit-learn's ``C``).
    """
    if C <= 0:
        raise ConfigError(f"meta-learner C must be > 0, got {C}")
    names = list(oof)
    if not names:
        raise ConfigError("stacking needs at least one base learner")
    Z = np.column_stack([np.asarray(oof[n], dtype=np.float64).ravel() for n in names])
    y = np.asarray(y).ravel()
    if Z.shape[0] != y.size:
        raise DataValidationError(f"meta-learner: {Z.shape[0]} score rows for {y.size} labels")
    if not np.all(np.isfinite(Z)):
        raise DataValidationError("meta-learner: out-of-fold scores contain NaN or infinity")
    lr = LogisticRegression(C=C, max_iter=1000).fit(Z, y.astype(int))
    return MetaLearner(names, lr.coef_.ravel(), float(lr.intercept_[0]))


def _params(fn: Callable[..., Any]) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _subset(table: Any, rows: np.ndarray, ids: pd.Index) -> Any:
    """Rows ``rows`` (positions in the bank's order) of a feature holder's table."""
    if isinstance(table, np.ndarray):
        return table[rows]
    return table  # tables with IDs are joined on them: extra rows are ignored


class VerticalStacking(BaseEstimator):
    """Stacking of federated base learners, in-process over the real encrypted protocols.

    Parameters
    ----------
    base_learners : sequence of str
        Any of ``"vertical_lr"`` and ``"secureboost"``.
    n_folds : int
        K, the folds of the aligned rows that give the out-of-fold predictions (≥ 2).
    lr_params : dict, optional
        :class:`~fedrisk.models.vertical_lr.VerticalLogisticRegression` parameters.
    sb_params : dict, optional
        :class:`~fedrisk.models.secureboost.VerticalSecureBoost` parameters.
    meta_C : float
        Inverse L2 strength of the meta-learner.
    label : str
        Label column of the bank's table.
    label_holder_name : str
    random_state : int
        Seed of the fold assignment.
    progress : bool
        Show a rich progress bar over the (K + 1) × base-learner fits.

    Attributes
    ----------
    base_learners_ : dict of str → fitted estimator
        Each base learner refitted on all rows (what is served).
    meta_ : MetaLearner
        The bank's meta-learner.
    oof_scores_ : dict of str → ndarray
        Out-of-fold log-odds per base learner, in the bank's row order.
    folds_ : ndarray of int
        Fold of every bank row.
    auc_oof_ : dict of str → float
        OOF AUC of each base learner and of the stack (``"stacking"``, in-sample for the meta-learner).
    fit_seconds_ : dict of str → float
        Wall time per base learner (all K + 1 runs).
    classes_ : ndarray
    """

    def __init__(
        self,
        *,
        base_learners: Sequence[str] = BASE_LEARNERS,
        n_folds: int = 5,
        lr_params: Mapping[str, Any] | None = None,
        sb_params: Mapping[str, Any] | None = None,
        meta_C: float = 1.0,
        label: str = "y",
        label_holder_name: str = "bank",
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.base_learners = base_learners
        self.n_folds = n_folds
        self.lr_params = lr_params
        self.sb_params = sb_params
        self.meta_C = meta_C
        self.label = label
        self.label_holder_name = label_holder_name
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> list[str]:
        names = list(self.base_learners)
        unknown = [n for n in names if n not in BASE_LEARNERS]
        if unknown:
            raise ConfigError(f"unknown base learner {unknown[0]!r} (known: {', '.join(BASE_LEARNERS)})")
        if not names or len(set(names)) != len(names):
            raise ConfigError("stacking needs one or more distinct base learners")
        if int(self.n_folds) < 2:
            raise ConfigError(f"n_folds must be ≥ 2, got {self.n_folds}")
        if self.meta_C <= 0:
            raise ConfigError(f"meta_C must be > 0, got {self.meta_C}")
        return names

    def _new(self, name: str) -> Any:
        common = {"label": self.label, "label_holder_name": self.label_holder_name}
        if name == "vertical_lr":
            from fedrisk.models.vertical_lr import VerticalLogisticRegression

            return VerticalLogisticRegression(**{**common, **dict(self.lr_params or {})})
        from fedrisk.models.secureboost import VerticalSecureBoost

        return VerticalSecureBoost(**{**common, **dict(self.sb_params or {})})

    def _context(self, name: str) -> Any:
        if name == "vertical_lr":
            from fedrisk.models.vertical_lr import make_context

            return make_context()
        from fedrisk.models.secureboost import make_label_holder_context

        return make_label_holder_context()

    @staticmethod
    def _decision(model: Any, bank: pd.DataFrame, holders: Mapping[str, Any], *, secure: bool = True) -> np.ndarray:
        if not secure and "secure" in _params(model.decision_function):  # vertical LR: plaintext sum of the partial scores
            return np.asarray(model.decision_function(bank, holders, secure=False), dtype=np.float64)
        return np.asarray(model.decision_function(bank, holders), dtype=np.float64)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        label_holder_table: Any,
        feature_holder_tables: Mapping[str, Any],
        *,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> VerticalStacking:
        """K-fold OOF predictions of every base learner, the meta-learner, then a refit on all rows.

        Parameters
        ----------
        label_holder_table : PartyTable, DataFrame (``id`` index or column, label column) or (X, y)
        feature_holder_tables : mapping name → PartyTable, DataFrame (joined on ID) or ndarray (aligned)
        on_progress : callable, optional
            Called with (base learner, fold) after each run; fold ``-1`` is the refit.
        """
        from fedrisk.models.in_process import table_parts

        names = self._check_params()
        ids, Xb, fnames, y = table_parts(label_holder_table, self.label, "label holder")
        if y is None:
            raise DataValidationError(f"label holder table has no label column {self.label!r}")
        y = np.asarray(y).astype(int)
        k = int(self.n_folds)
        if np.bincount(y, minlength=2).min() < k:
            raise DataValidationError(f"stacking with {k} folds needs at least {k} rows of each class")
        bank = pd.DataFrame(Xb, index=ids, columns=fnames)
        bank[self.label] = y
        folds = np.empty(len(ids), dtype=int)
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
        for f, (_, held) in enumerate(skf.split(np.zeros(len(y)), y)):
            folds[held] = f
        oof = {n: np.zeros(len(ids)) for n in names}
        fitted: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        with _progress(self.progress) as bar:
            task = bar.add_task("stacking: base learners × folds", total=len(names) * (k + 1))
            for name in names:
                context = self._context(name)  # one bank key per base learner, as one deployment would hold
                t0 = time.perf_counter()
                for f in range(k):
                    train, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
                    model = self._new(name).fit(bank.iloc[train], {p: _subset(t, train, ids) for p, t in feature_holder_tables.items()}, context=context)
                    oof[name][held] = self._decision(model, bank.iloc[held], {p: _subset(t, held, ids) for p, t in feature_holder_tables.items()})
                    bar.advance(task)
                    if on_progress:
                        on_progress(name, f)
                fitted[name] = self._new(name).fit(bank, feature_holder_tables, context=context)
                seconds[name] = time.perf_counter() - t0
                bar.advance(task)
                if on_progress:
                    on_progress(name, -1)
        self.meta_ = fit_meta_learner(oof, y, C=self.meta_C)
        self.base_learners_ = fitted
        self.oof_scores_ = oof
        self.folds_ = folds
        self.auc_oof_ = {n: auc(y, oof[n]) for n in names}
        self.auc_oof_["stacking"] = auc(y, self.meta_.decision_function(oof))
        self.fit_seconds_ = seconds
        self.classes_ = np.array([0, 1])
        return self

    # ------------------------------------------------------------------ scoring
    def base_decision_functions(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any], *, secure: bool = True) -> dict[str, np.ndarray]:
        """Joint log-odds of every refitted base learner, each scored over its own protocol.

        ``secure=False``: vertical LR sums the feature holders' partial scores in
        plaintext (as the live scoring node does) instead of under CKKS, so the
        scores carry no encryption noise; SecureBoost's split answers are exact
        either way.
        """
        from fedrisk.models.in_process import table_parts

        ids, Xb, fnames, _ = table_parts(label_holder_table, self.label, "label holder")
        bank = pd.DataFrame(Xb, index=ids, columns=fnames)
        return {n: self._decision(m, bank, feature_holder_tables, secure=secure) for n, m in self.base_learners_.items()}

    def decision_function(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any], *, secure: bool = True) -> np.ndarray:
        """Stack log-odds: the meta-learner (at the bank) on the base learners' log-odds."""
        return self.meta_.decision_function(self.base_decision_functions(label_holder_table, feature_holder_tables, secure=secure))

    def predict_proba(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any], *, secure: bool = True) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default] (``secure``: see :meth:`base_decision_functions`)."""
        p = _sigmoid(self.decision_function(label_holder_table, feature_holder_tables, secure=secure))
        return np.column_stack([1.0 - p, p])


def benchmark_stacking(
    guest: pd.DataFrame,
    host: pd.DataFrame,
    train: np.ndarray,
    test: np.ndarray,
    *,
    n_folds: int = 5,
    n_trees: int = 30,
    max_depth: int = 3,
    n_bins: int = 32,
    epochs: int = 30,
    holder: str = "tax_bureau",
    progress: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Stacking vs its base learners on a vertical split, evaluated on held-out rows.

    Parameters
    ----------
    guest : DataFrame indexed by ``id``
        The bank's table with label column ``y`` (default-credit: 13 features).
    host : DataFrame indexed by ``id``
        The feature holder's table (default-credit: 10 features).
    train, test : arrays of IDs
        Training rows (folds and refit) and evaluation rows.
    n_folds, n_trees, max_depth, n_bins, epochs
        K and the base learners' sizes (FATE's SecureBoost configuration by default).

    Returns
    -------
    dict
        ``auc_base`` (base learner → test AUC of its refit on all training rows),
        ``auc_stacking`` (test AUC of the stack), ``auc_oof`` (OOF AUCs),
        ``n_folds``, ``meta_coef``, ``seconds``.
    """
    t0 = time.perf_counter()
    model = VerticalStacking(
        n_folds=n_folds,
        lr_params={"max_epochs": epochs},
        sb_params={"n_trees": n_trees, "max_depth": max_depth, "n_bins": n_bins},
        progress=progress,
    )
    model.fit(guest.loc[train], {holder: host.loc[host.index.intersection(train)]})
    y_test = guest.loc[test, "y"].to_numpy().astype(int)
    host_test = {holder: host.loc[host.index.intersection(test)]}
    base = model.base_decision_functions(guest.loc[test], host_test)
    stack = model.meta_.decision_function(base)
    return {
        "auc_base": {n: round(auc(y_test, z), 6) for n, z in base.items()},
        "auc_stacking": round(auc(y_test, stack), 6),
        "auc_oof": {n: round(v, 6) for n, v in model.auc_oof_.items()},
        "n_folds": n_folds,
        "meta_coef": dict(zip(model.meta_.names, (round(float(c), 6) for c in model.meta_.coef))),
        "meta_intercept": round(model.meta_.intercept, 6),
        "seconds": round(time.perf_counter() - t0, 2),
    }
