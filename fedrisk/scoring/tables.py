"""A party's own table, indexed by SME ID, in the column order its model block reads.

Both sides of the fan-out read their own table this way: the bank (optionally,
when applications do not carry its features) and each feature holder's scoring
service. The table is validated against the schema the model was trained with
(from the bundle's metadata), the label column is not required, and extra
columns are dropped, so the same CSV used in training serves here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.errors import DataValidationError
from fedrisk.data.table import PartyTable, TableSchema, load_party_table

__all__ = ["FeatureLookup", "load_feature_lookup", "scoring_schema"]


def scoring_schema(schema: Mapping[str, Any], features: Sequence[str]) -> TableSchema:
    """The training schema without its label column, checked to cover ``features``."""
    if not schema:
        raise DataValidationError("the model bundle records no table schema, so its table cannot be read safely")
    data = {k: v for k, v in dict(schema).items() if k != "label_column"}
    table_schema = TableSchema.from_dict(data)
    missing = [f for f in features if f not in table_schema.features]
    if missing:
        raise DataValidationError(f"the model reads {missing[0]!r}, which its recorded schema does not declare")
    return table_schema


class FeatureLookup:
    """ID → row of floats in model order (NaN for missing values, category codes as floats)."""

    def __init__(self, ids: Sequence[str], matrix: np.ndarray, features: Sequence[str]) -> None:
        self.features = tuple(features)
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.index: dict[str, int] = {str(i): k for k, i in enumerate(ids)}

    @classmethod
    def from_table(cls, table: PartyTable, features: Sequence[str]) -> FeatureLookup:
        """Select and order ``features`` from a validated table."""
        names = list(table.feature_names)
        try:
            cols = [names.index(f) for f in features]
        except ValueError:
            missing = next(f for f in features if f not in names)
            raise DataValidationError(f"table {table.source} has no column {missing!r} the model reads") from None
        return cls(list(table.ids), table.feature_matrix()[:, cols], features)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, sme_id: str) -> bool:
        return sme_id in self.index

    def row(self, sme_id: str) -> list[float] | None:
        """The SME's values, or ``None`` when the table does not hold it."""
        k = self.index.get(sme_id)
        return None if k is None else self.matrix[k].tolist()


def load_feature_lookup(path: str | Path, schema: Mapping[str, Any], features: Sequence[str], *, name: str) -> FeatureLookup:
    """Read and validate a party's table (CSV or Parquet) for scoring."""
    table = load_party_table(Path(path), scoring_schema(schema, features), name=name, strict=False)
    return FeatureLookup.from_table(table, features)
