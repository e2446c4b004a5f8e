"""What the federation is compared with: each party alone, and everyone's rows centralised.

Only a simulation can compute these — it generated (or read) every party's
table — and they are scored on **the same rows** as the federated model:

* horizontal: every model is scored on the common hold-out.  *Bank alone*
  trains the federation's network on that bank's rows only, standardised
  with its own statistics; *centralised* trains it on all banks' rows pooled.
  Both use the federation's training budget and optimiser exactly: ``rounds``
  calls of :meth:`~fedrisk.models.neural.RiskNet.fit_local` with the same
  epochs, batch size, learning rate and seeds (FedAvg with one bank holding
  everything *is* centralised training);
* vertical: every model is scored on the label holder's validation rows
  (:func:`~fedrisk.data.datasplit.training_mask`, the split the protocol
  uses).  *Party alone* is logistic regression (scikit-learn, same ``C``) on
  one party's features, with the label holder's labels — for a feature holder
  a what-if no real party could run, since it holds no labels; a feature
  holder's missing rows sit at its mean plus a coverage indicator, as in the
  protocol.  *Centralised* joins every party's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrisk.models.metrics import auc, ks


@dataclass(frozen=True)
class BaselineScore:
    """One comparison row: a model, who trained it, on how many rows, and its scores."""

    model: str
    party: str
    kind: str  # "party alone" | "centralised"
    train_rows: int
    auc: float
    ks: float


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
        std = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean, std


def _scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    return float(auc(y, p)), float(ks(y, p))


def train_like_fedavg(x: np.ndarray, y: np.ndarray, *, spec: dict, rounds: int, local_epochs: int, learning_rate: float, batch_size: int, seed: int):
    """The federation's network trained on one set of rows with FedAvg's exact local loop.

    Returns
    -------
    (RiskNet, numpy.ndarray, numpy.ndarray)
        The model and the mean/std it standardises with.
    """
    from fedrisk.models.neural import ModelSpec

    mean, std = _standardiser(x)
    z = np.nan_to_num((x - mean) / std)
    model = ModelSpec.from_dict({**spec, "n_features": x.shape[1]}).build(seed=seed)
    for round_ in range(1, rounds + 1):
        model.fit_local(z, y, epochs=local_epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed * 1000 + round_)
    return model, mean, std


def horizontal_baselines(data, scenario) -> list[BaselineScore]:
    """Each bank alone and all banks' rows pooled, scored on the common hold-out.

    Parameters
    ----------
    data : fedrisk.simulation.data.HorizontalData
        The run's tables.
    scenario : fedrisk.simulation.scenario.Scenario
        The run's scenario (model and training budget).
    """
    algorithm = scenario.values["algorithm"]
    spec = {"kind": algorithm["model"], "hidden_units": algorithm["hidden-units"], "hidden_layers": algorithm["hidden-layers"]}
    budget = dict(
        spec=spec,
        rounds=int(algorithm["rounds"]),
        local_epochs=int(algorithm["local-epochs"]),
        learning_rate=float(algorithm["learning-rate"]),
        batch_size=int(algorithm["batch-size"]),
        seed=scenario.seed,
    )
    x_test, y_test = data.holdout
    model_name = algorithm["model"]
    out: list[BaselineScore] = []

    def score(label: str, kind: str, x: np.ndarray, y: np.ndarray) -> None:
        model, mean, std = train_like_fedavg(x, y, **budget)
        p = model.predict_proba(np.nan_to_num((x_test - mean) / std))
        out.append(BaselineScore(model_name, label, kind, int(len(y)), *_scores(y_test, p)))

    for bank, (x, y) in data.train.items():
        score(bank, "party alone", x, y)
    x_all = np.concatenate([x for x, _ in data.train.values()])
    y_all = np.concatenate([y for _, y in data.train.values()])
    score("all banks' rows", "centralised", x_all, y_all)
    return out


def vertical_blocks(data) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each party's columns on the label holder's rows (NaN where not covered; feature holders
    get a trailing coverage indicator), and the labels."""
    holder = data.tables[data.label_holder]
    blocks = {data.label_holder: holder.feature_matrix()}
    for name in data.feature_holders:
        table = data.tables[name]
        position = {sme: i for i, sme in enumerate(table.ids)}
        rows = np.array([position.get(sme, -1) for sme in holder.ids])
        x = np.full((rows.size, len(table.feature_names)), np.nan)
        x[rows >= 0] = table.feature_matrix()[rows[rows >= 0]]
        blocks[name] = np.column_stack([x, (rows >= 0).astype(float)])
    return blocks, np.asarray(holder.labels)


def _logistic(x: np.ndarray, y: np.ndarray, train: np.ndarray, c: float) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    mean, std = _standardiser(x[train])
    z = np.nan_to_num((x - mean) / std)
    keep = np.ptp(z[train], axis=0) > 0  # constant columns (e.g. full coverage) carry nothing
    if not keep.any():
        return 0.5, 0.0
    model = LogisticRegression(C=c, max_iter=5000).fit(z[train][:, keep], y[train])
    return _scores(y[~train], model.predict_proba(z[~train][:, keep])[:, 1])


def vertical_baselines(data, scenario) -> list[BaselineScore]:
    """Each party's columns alone and all columns joined, scored on the label holder's validation rows."""
    from fedrisk.data.datasplit import training_mask

    blocks, y = vertical_blocks(data)
    train = training_mask(y, data.validation)
    c = float(scenario.get("algorithm.c"))
    out = []
    for name, x in blocks.items():
        out.append(BaselineScore("logistic", name, "party alone", int(train.sum()), *_logistic(x, y, train, c)))
    joined = np.column_stack(list(blocks.values()))
    out.append(BaselineScore("logistic", "all parties' columns", "centralised", int(train.sum()), *_logistic(joined, y, train, c)))
    return out
