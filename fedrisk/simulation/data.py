"""The tables of one simulated run: generated or read, held out, partitioned, written.

Horizontal runs need one pooled table of SMEs with labels: the synthetic
bank table (:func:`fedrisk.data.synthetic.generate_sme_data`) or a CSV
(``data.path``).  A stratified ``data.test-fraction`` of it (or
``data.test-path``) is a **common hold-out** every bank evaluates on — the
rows the comparison table scores every model on — and the rest is cut into
the banks' shares (:mod:`fedrisk.simulation.partition`).

Vertical runs need the label holder's table and each feature holder's: the
synthetic bank / tax bureau / platform tables with the scenario's coverage
ratios, or CSVs (``data.tables``) of which each feature holder keeps a
``partitioning.coverage`` share of the rows the label holder also has.

Seeds: the scenario's one ``seed`` drives the generator, the hold-out split
(``random_state = seed``) and the partition (``default_rng([seed, 0x9A27])``).
Every table is written under the run's ``data/`` folder, where the party
processes read it from, exactly as a real party reads its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrisk.errors import ConfigError
from fedrisk.data.table import ColumnType, PartyTable, TableSchema
from fedrisk.simulation.partition import coverage_subset, partition
from fedrisk.simulation.scenario import Scenario

PARTITION_STREAM = 0x9A27
COVERAGE_STREAM = 0xC0FE


@dataclass(frozen=True)
class HorizontalData:
    """The banks' shares and the common hold-out of a horizontal run.

    Attributes
    ----------
    schema : TableSchema
        The banks' common schema.
    paths : dict of str to pathlib.Path
        Each bank's table.
    holdout_path : pathlib.Path
        The common hold-out table.
    train : dict of str to (numpy.ndarray, numpy.ndarray)
        Each bank's feature matrix and labels (for the comparison baselines).
    holdout : (numpy.ndarray, numpy.ndarray)
        The hold-out's feature matrix and labels.
    """

    schema: TableSchema
    paths: dict[str, Path]
    holdout_path: Path
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    holdout: tuple[np.ndarray, np.ndarray]

    def shares(self) -> dict[str, dict[str, float]]:
        """Rows and default rate per bank: what the partition did."""
        return {b: {"rows": int(y.size), "default_rate": float(y.mean()) if y.size else 0.0} for b, (_, y) in self.train.items()}


@dataclass(frozen=True)
class VerticalData:
    """The parties' tables of a vertical run (label holder first).

    Attributes
    ----------
    tables : dict of str to PartyTable
        Each party's table as written.
    paths : dict of str to pathlib.Path
        Where each table was written.
    label_holder : str
        The party with the labels.
    validation : dict
        ``{"fraction", "seed"}``: the label holder's validation split.
    """

    tables: dict[str, PartyTable]
    paths: dict[str, Path]
    label_holder: str
    validation: dict

    @property
    def feature_holders(self) -> list[str]:
        return [n for n in self.tables if n != self.label_holder]


# -- reading CSV sources ----------------------------------------------------------------


def infer_schema(frame: pd.DataFrame, *, id_column: str, label_column: str | None, where: str) -> TableSchema:
    """A schema for a researcher's CSV: the ID, the label (if any), every other column a float feature."""
    if id_column not in frame.columns:
        raise ConfigError(f"data.id-column: column {id_column!r} is not in {where}")
    if label_column is not None and label_column not in frame.columns:
        raise ConfigError(f"data.label-column: column {label_column!r} is not in {where}")
    features = [c for c in frame.columns if c not in (id_column, label_column)]
    if not features:
        raise ConfigError(f"{where}: no feature columns besides the ID and the label")
    for column in features:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise ConfigError(f"{where}: column {column!r} is not numeric (simulation CSVs take numeric features only)")
    missing = [c for c in features if frame[c].isna().any()]
    return TableSchema(
        id_column=id_column,
        label_column=label_column,
        features={c: ColumnType.FLOAT for c in features},
        id_format="opaque",
        allow_missing=frozenset(missing),
    )


def read_csv_table(path: str | Path, *, id_column: str, label_column: str | None, name: str, schema: TableSchema | None = None) -> PartyTable:
    """Read and validate a CSV (schema inferred unless given)."""
    frame = pd.read_csv(path)
    if schema is None:
        schema = infer_schema(frame, id_column=id_column, label_column=label_column, where=Path(path).name)
    return PartyTable.from_dataframe(frame, schema, source=str(path), name=name)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


# -- horizontal ---------------------------------------------------------------------------


def _horizontal_pool(scenario: Scenario) -> tuple[PartyTable, PartyTable | None]:
    data = scenario.values["data"]
    if data["source"] == "synthetic":
        from fedrisk.data.synthetic import generate_sme_data

        return generate_sme_data(int(data["rows"]), seed=scenario.seed).bank, None
    pool = read_csv_table(data["path"], id_column=data["id-column"], label_column=data["label-column"], name="pool")
    test = None
    if "test-path" in data:
        test = read_csv_table(data["test-path"], id_column=data["id-column"], label_column=data["label-column"], name="holdout", schema=pool.schema)
    return pool, test


def prepare_horizontal(scenario: Scenario, folder: Path) -> HorizontalData:
    """Generate or read the pool, hold out the common test rows, partition the rest, write every table.

    Parameters
    ----------
    scenario : Scenario
        A horizontal scenario (one sweep point).
    folder : pathlib.Path
        Where ``<bank>.csv`` and ``holdout.csv`` are written.

    Returns
    -------
    HorizontalData
    """
    from sklearn.model_selection import train_test_split

    pool, test = _horizontal_pool(scenario)
    frame = pool.to_dataframe()
    label = pool.schema.label_column
    assert label is not None
    if test is None:
        if len(np.unique(frame[label])) < 2:
            raise ConfigError("data: the pool's labels are all one class; nothing to learn or evaluate")
        train_frame, test_frame = train_test_split(
            frame, test_size=float(scenario.get("data.test-fraction")), random_state=scenario.seed, stratify=frame[label]
        )
    else:
        train_frame, test_frame = frame, test.to_dataframe()
    train_frame = train_frame.reset_index(drop=True)
    labels = train_frame[label].to_numpy()
    rng = np.random.default_rng([scenario.seed, PARTITION_STREAM])
    shares = partition(
        str(scenario.get("partitioning.scheme")),
        labels,
        int(scenario.get("parties.count")),
        alpha=float(scenario.get("partitioning.alpha")),
        min_rows=int(scenario.get("partitioning.min-rows")),
        rng=rng,
    )
    paths: dict[str, Path] = {}
    train: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for bank, rows in zip(scenario.party_names, shares):
        part = train_frame.iloc[rows]
        paths[bank] = _write(part, folder / f"{bank}.csv")
        table = PartyTable.from_dataframe(part, pool.schema, name=bank)
        train[bank] = (table.feature_matrix(), np.asarray(table.labels))
    holdout_path = _write(test_frame, folder / "holdout.csv")
    holdout_table = PartyTable.from_dataframe(test_frame, pool.schema, name="holdout")
    return HorizontalData(
        schema=pool.schema,
        paths=paths,
        holdout_path=holdout_path,
        train=train,
        holdout=(holdout_table.feature_matrix(), np.asarray(holdout_table.labels)),
    )


# -- vertical -----------------------------------------------------------------------------


def prepare_vertical(scenario: Scenario, folder: Path) -> VerticalData:
    """Generate or read the parties' tables with the scenario's coverage and write them.

    Parameters
    ----------
    scenario : Scenario
        A vertical scenario (one sweep point).
    folder : pathlib.Path
        Where ``<party>.csv`` is written.

    Returns
    -------
    VerticalData
    """
    data = scenario.values["data"]
    names = scenario.party_names
    holder = names[0]
    coverage = dict(scenario.get("partitioning.coverage"))
    tables: dict[str, PartyTable] = {}
    if data["source"] == "synthetic":
        from fedrisk.data.synthetic import generate_sme_data

        generated = generate_sme_data(
            int(data["rows"]),
            seed=scenario.seed,
            tax_coverage=float(coverage.get("tax_bureau", 0.9)),
            platform_coverage=float(coverage.get("platform", 0.6)),
            outsider_fraction=float(data["outsider-fraction"]),
        )
        tables = {n: generated.parties[n] for n in names}
    else:
        paths = data["tables"]
        tables[holder] = read_csv_table(paths[holder], id_column=data["id-column"], label_column=data["label-column"], name=holder)
        rng = np.random.default_rng([scenario.seed, COVERAGE_STREAM])
        for name in names[1:]:
            full = read_csv_table(paths[name], id_column=data["id-column"], label_column=None, name=name)
            shared = np.flatnonzero(np.isin(full.ids, tables[holder].ids))
            keep_shared = shared[coverage_subset(shared.size, float(coverage[name]), rng)]
            outsiders = np.flatnonzero(~np.isin(full.ids, tables[holder].ids))
            rows = np.sort(np.concatenate([keep_shared, outsiders]))
            frame = full.to_dataframe().iloc[rows].reset_index(drop=True)
            tables[name] = PartyTable.from_dataframe(frame, full.schema, name=name)
    labels = tables[holder].labels
    if labels is None or len(np.unique(labels)) < 2:
        raise ConfigError(f"data: the label holder {holder!r} has no labels of both classes")
    written = {n: _write(t.to_dataframe(), folder / f"{n}.csv") for n, t in tables.items()}
    validation = {"fraction": float(data["test-fraction"]), "seed": scenario.seed}
    return VerticalData(tables=tables, paths=written, label_holder=holder, validation=validation)
