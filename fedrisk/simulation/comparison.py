"""The comparison table (federated vs each party alone vs centralised) and the sweep table.

One run's comparison rows put the federated model next to the baselines of
:mod:`fedrisk.simulation.baselines`, all scored on the same rows, with each
model's AUC gap to the federated one.  A sweep adds one summary row per
value: the federated AUC, the baselines' AUC, the run's cost and, when the
sweep names a ``reference`` value, the **accuracy cost** of every other value
(reference AUC minus its AUC: for a DP sweep, what each ε costs).  Both are
written as CSV and printed with rich.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedrisk.simulation.baselines import BaselineScore

#: At most this many "party alone" rows are printed one by one; more are summarised.
MAX_PRINTED_PARTIES = 12


def federated_label(result: dict, scenario) -> str:
    """``fedavg (ckks)``, ``fedavg (plain) + local DP ε=2``, ``vertical_lr (ckks)``..."""
    if result.get("mode") == "vertical":
        return "vertical LR, ckks"
    label = f"FedAvg, {result.get('aggregation', '?')}"
    dp = result.get("dp") or {}
    if dp:
        label += f", DP eps={dp['epsilon']:.3g}"
    elif scenario.get("privacy.enabled"):
        label += ", no DP"
    return label


def comparison_rows(result: dict, baselines: Sequence[BaselineScore], scenario, federated: dict, train_rows: int) -> list[dict]:
    """The run's comparison rows: the federated model first, then each party alone, then centralised."""
    fed_auc = federated.get("auc_federated")
    rows = [
        {
            "model": federated_label(result, scenario),
            "kind": "federated",
            "party": "federation",
            "train_rows": train_rows,
            "auc": fed_auc,
            "ks": federated.get("ks_federated"),
            "auc_minus_federated": 0.0 if fed_auc is not None else None,
        }
    ]
    for b in baselines:
        gap = b.auc - fed_auc if fed_auc is not None and not math.isnan(b.auc) else None
        rows.append({"model": b.model, "kind": b.kind, "party": b.party, "train_rows": b.train_rows, "auc": b.auc, "ks": b.ks, "auc_minus_federated": gap})
    return rows


def _f(value: object, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def render_comparison(console: Console, rows: Sequence[dict], title: str) -> None:
    """Print one run's comparison table (many banks alone are summarised as mean, best and worst)."""
    table = Table(title=title)
    for column in ("model", "trained by", "rows", "AUC", "KS", "vs fed."):
        table.add_column(column, justify="left" if column in ("model", "trained by") else "right", no_wrap=column != "model")
    alone = [r for r in rows if r["kind"] == "party alone"]
    summarise = len(alone) > MAX_PRINTED_PARTIES
    scored = [r for r in alone if r["auc"] is not None and not math.isnan(r["auc"])]

    def add(row: dict, who: str | None = None, train_rows: str | None = None) -> None:
        gap = "" if row["kind"] == "federated" else _f(row["auc_minus_federated"])
        table.add_row(row["model"], who or row["party"], train_rows or f"{row['train_rows']:,}", _f(row["auc"]), _f(row["ks"]), gap)

    for row in rows:
        if summarise and row["kind"] == "party alone":
            continue
        add(row)
        if summarise and row["kind"] == "federated" and scored:
            n = len(scored)
            mean = {k: sum(r[k] for r in scored) / n for k in ("auc", "ks", "train_rows")}
            fed = row["auc"] if row["auc"] is not None else float("nan")
            add(
                {**scored[0], "auc": mean["auc"], "ks": mean["ks"], "auc_minus_federated": mean["auc"] - fed},
                f"{n} banks alone, mean",
                f"{mean['train_rows']:,.0f}",
            )
            best, worst = max(scored, key=lambda r: r["auc"]), min(scored, key=lambda r: r["auc"])
            add(best, f"best: {best['party']}")
            add(worst, f"worst: {worst['party']}")
    console.print(table)


def sweep_rows(summaries: Sequence[dict], reference_label: str | None) -> list[dict]:
    """Add the accuracy cost against the reference point to each point's summary."""
    reference = next((s for s in summaries if s["label"] == reference_label), None)
    ref_auc = reference.get("auc_federated") if reference else None
    out = []
    for s in summaries:
        row = dict(s)
        auc = s.get("auc_federated")
        row["auc_cost"] = (ref_auc - auc) if (ref_auc is not None and auc is not None) else None
        out.append(row)
    return out


def render_sweep(console: Console, rows: Sequence[dict], parameter: str) -> None:
    """Print the sweep table: one row per value, with its cost against the reference."""
    table = Table(
        title=f"sweep over {parameter}",
        caption="AUC: federated; cost: reference AUC - AUC (* = reference); central: centralised; alone: best single party",
    )
    columns = [(parameter.split(".")[-1], "value"), ("AUC", "auc_federated"), ("cost", "auc_cost"), ("central", "auc_centralised"), ("alone", "auc_party_best")]
    if any(r.get("epsilon") is not None for r in rows):
        columns.append(("eps spent", "epsilon"))
    columns += [("s", "seconds"), ("MB", "megabytes"), ("status", "status")]
    for title, key in columns:
        table.add_column(title, justify="left" if key in ("value", "status") else "right", no_wrap=key != "status")
    for r in rows:
        cells = []
        for _, key in columns:
            value = r.get(key)
            if key == "value":
                cells.append(str(r.get("value_label", value)) + (" *" if r.get("is_reference") else ""))
            elif key == "seconds":
                cells.append(_f(value, 1))
            elif key == "megabytes":
                cells.append(_f(value, 2))
            elif key == "epsilon":
                cells.append(_f(value, 3) if value is not None else "-")
            elif key == "status":
                cells.append(str(value) if value == "ok" else f"[red]{r.get('error', value)}[/red]")
            else:
                cells.append(_f(value))
        table.add_row(*cells)
    console.print(table)


def render_run(console: Console, run) -> None:
    """Print a finished :class:`~fedrisk.simulation.runner.SimulationRun`: comparison(s), sweep, files."""
    outcomes = run.outcomes
    sweep = run.summary.get("sweep")
    shown = [o for o in outcomes if o.comparison]
    if sweep:
        reference = next((o for o in shown if o.point.is_reference), None)
        shown = [reference] if reference is not None else shown[:1]
    for o in shown:
        where = f" ({o.point.label})" if sweep else ""
        render_comparison(console, o.comparison, escape(f"{run.scenario.name}{where}: federated vs each party alone vs centralised (same evaluation rows)"))
    if sweep:
        render_sweep(console, run.summary["points"], sweep["parameter"])
    for o in outcomes:
        if o.summary["status"] != "ok":
            console.print(f"[red]{o.point.label} failed:[/red] {o.summary.get('error')}", highlight=False)
    console.print(f"run folder: {run.run_dir}", highlight=False)
    for key in ("metrics", "comparison", "sweep"):
        if key in run.files:
            console.print(f"  {key}: {run.files[key].name}", highlight=False)
    plots = sorted(p.name for k, p in run.files.items() if k.startswith("plot_"))
    if plots:
        console.print(f"  plots: {', '.join(plots)}", highlight=False)
