"""``fedrisk scorecard points``: the bank's points table of a federated WOE scorecard.

Trains in one process, over the real encrypted protocols, the federated WOE binning
(:class:`fedrisk.models.woe.VerticalWOE`) and the vertical logistic regression on the
WOE table, converts the model to points (:mod:`fedrisk.models.points`) and prints the
bank's own table. ``fedrisk demo`` trains a logistic model on raw features over the
Deployment Engine, not a WOE scorecard, so the points table has its own command;
``fedrisk demo --model scorecard`` trains the WOE scorecard in-process as this
command does, deploys each party's points table to the scoring node and prints the
bank's table with :func:`fedrisk.models.points.render_points_table`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from fedrisk.errors import DataValidationError, FedriskError

scorecard_app = typer.Typer(help="Credit scorecards: WOE binning, points tables.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

#: Column names of the default-credit vertical split (``x0..`` in the files; see the data README).
DEFAULT_CREDIT_BANK = ["PAY_6", *(f"BILL_AMT{i}" for i in range(1, 7)), *(f"PAY_AMT{i}" for i in range(1, 7))]
DEFAULT_CREDIT_HOLDER = ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5"]


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {str(err).splitlines()[0] if str(err) else type(err).__name__}", highlight=False)
    raise typer.Exit(code=2)


def default_credit_dir(given: Optional[Path]) -> Path:
    """``--data``, else ``$FEDRISK_SHARED_DATA/default_credit``, else ``../shared/data/default_credit`` beside the project."""
    if given is not None:
        return given
    env = os.environ.get("FEDRISK_SHARED_DATA")
    root = Path(__file__).resolve().parents[2]
    for base in ([Path(env)] if env else []) + [root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]:
        if (base / "default_credit").is_dir():
            return base / "default_credit"
    raise DataValidationError("default-credit data not found: pass --bank/--holder CSVs, --data DIR or set FEDRISK_SHARED_DATA")


def _read(path: Path, id_column: str, who: str) -> Any:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{who}: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if id_column not in df.columns:
        raise DataValidationError(f"{who}: {path} has no ID column {id_column!r}")
    return df.set_index(id_column)


@scorecard_app.command("points")
def points(
    bank: Optional[Path] = typer.Option(None, "--bank", help="The bank's CSV: ID, label and its features (default: the default-credit split's guest file)."),
    holder: list[str] = typer.Option(
        [], "--holder", help="A feature holder as NAME=CSV (ID and its features); repeatable (default: tax_bureau = the split's host file)."
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Folder of the default-credit split (default: $FEDRISK_SHARED_DATA/default_credit or ../shared/data/default_credit)."
    ),
    label: str = typer.Option("y", help="The bank's label column (1 = default)."),
    id_column: str = typer.Option("id", "--id-column", help="The ID column of every CSV."),
    rows: int = typer.Option(0, help="Use only the bank's first N rows (0: all of them)."),
    bins: int = typer.Option(10, help="Quantile bins per feature before merging."),
    min_bin_size: int = typer.Option(100, "--min-bin-size", help="No bin smaller than this reaches the bank."),
    pdo: float = typer.Option(20.0, "--pdo", help="Points to double the odds of good (> 0)."),
    base_odds: float = typer.Option(50.0, "--base-odds", help="Odds of good : bad at the base score (> 0)."),
    base_score: float = typer.Option(600.0, "--base-score", help="Score at the base odds."),
    epochs: int = typer.Option(20, help="Most epochs of the vertical logistic regression."),
    as_json: bool = typer.Option(False, "--json", help="Print the bank's table and the scale as JSON (the last stdout line)."),
) -> None:
    """Train the federated WOE scorecard in-process and print the bank's own points table."""
    try:
        from fedrisk.models.points import ScoreScale, render_points_table, train_points_scorecard

        scale = ScoreScale(pdo, base_odds, base_score)  # a bad scale is refused before any data is read
        started = time.perf_counter()
        if bank is None:
            folder = default_credit_dir(data)
            bank_df = _read(folder / "default_credit_hetero_guest.csv", "id", "bank")
            bank_df.columns = [label if c == "y" else DEFAULT_CREDIT_BANK[int(c[1:])] for c in bank_df.columns]
            holders = {} if holder else {"tax_bureau": _read(folder / "default_credit_hetero_host.csv", "id", "tax_bureau")}
            if holders:
                holders["tax_bureau"].columns = DEFAULT_CREDIT_HOLDER
        else:
            bank_df, holders = _read(bank, id_column, "bank"), {}
        for spec in holder:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise DataValidationError(f"--holder takes NAME=CSV, got {spec!r}")
            holders[name] = _read(Path(path), id_column, name)
        if not holders:
            raise DataValidationError("a points scorecard needs at least one feature holder (--holder NAME=CSV)")
        if rows:
            bank_df = bank_df.iloc[: int(rows)]
        console.print(f"training the federated WOE scorecard on {len(bank_df):,} rows (encrypted protocols, in-process)…", highlight=False)
        card, woe, lr = train_points_scorecard(bank_df, holders, label=label, scale=scale, n_bins=bins, min_bin_size=min_bin_size, max_epochs=epochs)
    except FedriskError as err:
        _fail(err)
    party = card.label_holder
    table = card.points_table(party)
    out = Console() if not as_json else console
    out.print(render_points_table(table, party, scale))
    if as_json:
        summary = {
            "party": party,
            "scale": {**scale.to_dict(), "factor": scale.factor, "offset": scale.offset},
            "rows": int(len(bank_df)),
            "feature_holders": {p: len(card.parts[p].features) for p in card.parts if p != party},
            "epochs": int(lr.n_epochs_),
            "points_table": [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in table.to_dict(orient="records")],
            "seconds": round(time.perf_counter() - started, 3),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
