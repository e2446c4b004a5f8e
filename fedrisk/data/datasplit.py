"""Hold out validation rows of a party's table, or load a separate validation table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrisk.errors import ConfigError


@dataclass(frozen=True)
class TrainValidationSplit:
    """Feature matrices and labels of one party's training and validation rows."""

    feature_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray | None


def train_validation_split(table, validation: dict, *, schema: dict) -> TrainValidationSplit:
    """Split ``table`` (a :class:`~fedrisk.data.table.PartyTable`) as ``validation`` says.

    ``{"fraction": f, "seed": s}`` holds out a stratified fraction ``f`` of the
    rows; ``{"table": path}`` trains on every row and validates on that table.
    """
    from sklearn.model_selection import train_test_split

    from fedrisk.data.table import TableSchema, load_party_table

    x = table.feature_matrix()
    y = table.labels
    names = tuple(table.features.columns)
    if "table" in validation:
        other = load_party_table(str(validation["table"]), TableSchema.from_dict(schema), name="validation")
        return TrainValidationSplit(names, x, y, other.feature_matrix(), other.labels)
    fraction = float(validation.get("fraction", 0.2))
    seed = int(validation.get("seed", 42))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation.fraction must be in (0, 1), got {fraction}")
    if y is None:
        raise ConfigError("a validation split needs a label column")
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)
    return TrainValidationSplit(names, x_train, y_train, x_val, y_val)


def training_mask(labels: np.ndarray, validation: dict) -> np.ndarray:
    """Which rows of a label holder's table train (True) and which validate (False).

    Vertical federations validate on rows of the label holder's own table (every
    party must hold the validation rows too), so only ``{"fraction", "seed"}``
    applies: a stratified split, the same one :func:`train_validation_split` makes.
    """
    from sklearn.model_selection import train_test_split

    if "table" in validation:
        raise ConfigError("validation.table: vertical federations validate on a fraction of the label holder's rows; use validation.fraction")
    fraction = float(validation.get("fraction", 0.2))
    seed = int(validation.get("seed", 42))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation.fraction must be in (0, 1), got {fraction}")
    rows = np.arange(len(labels))
    _, val_rows = train_test_split(rows, test_size=fraction, random_state=seed, stratify=labels)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_rows] = False
    return mask


def evaluation_mask(labels: np.ndarray, train: np.ndarray, seed: int = 42) -> np.ndarray:
    """Half of the held-out rows (stratified), kept apart from early stopping for honest metrics.

    Early stopping picks the best epoch on the other half; measuring the chosen
    model on the rows that chose it would flatter it.
    """
    from sklearn.model_selection import train_test_split

    held_out = np.flatnonzero(~np.asarray(train, dtype=bool))
    mask = np.zeros(len(labels), dtype=bool)
    y = np.asarray(labels)[held_out]
    if held_out.size < 4 or np.bincount(y.astype(int), minlength=2).min() < 2:
        return mask  # too few rows to split: no separate evaluation half
    _, evaluation = train_test_split(held_out, test_size=0.5, random_state=seed + 1, stratify=y)
    mask[evaluation] = True
    return mask
