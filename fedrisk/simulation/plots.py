"""PNG plots of a simulated run (matplotlib, Agg backend, no display needed).

* ``auc_vs_round.png`` — validation AUC of the model after each round, one
  line per sweep value, with the centralised and best-single-party AUC as
  dashed references;
* ``bytes_vs_round.png`` — bytes through the coordinator per round;
* ``seconds_per_round.png`` — wall time per round (dropouts and stragglers
  show here);
* ``<metric>_vs_<parameter>.png`` (sweeps) — federated AUC against the swept
  value, with the baselines and, when there is a reference value, the
  accuracy cost on a second axis.  A non-finite value (``epsilon = inf``,
  the no-noise reference) is drawn as a horizontal line, not a point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        value = r.get(key)
        if value is not None and value != "":
            xs.append(int(r["round"]))
            ys.append(float(value))
    return xs, ys


def plot_rounds(rounds_by_point: dict[str, list[dict]], folder: Path, *, references: dict[str, float] | None = None, title: str = "") -> list[Path]:
    """Write the per-round plots; returns their paths.

    Parameters
    ----------
    rounds_by_point : dict of str to list of dict
        Round rows (:func:`fedrisk.simulation.metrics.round_rows`) by sweep label.
    folder : pathlib.Path
        Output folder.
    references : dict of str to float, optional
        Horizontal AUC lines on the AUC plot (``{"centralised": 0.78}``).
    title : str
        Plot title prefix (the scenario name).
    """
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, ylabel, name in (
        ("val_auc", "validation AUC after the round", "auc_vs_round.png"),
        ("bytes", "bytes through the coordinator", "bytes_vs_round.png"),
        ("seconds", "seconds", "seconds_per_round.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for label, rows in rounds_by_point.items():
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if key == "val_auc":
            for ref_label, value in (references or {}).items():
                if value is not None and math.isfinite(value):
                    ax.axhline(value, linestyle="--", linewidth=1, color="grey")
                    ax.annotate(ref_label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, color="grey", va="bottom")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel}" if title else ylabel, fontsize=10)
        ax.grid(alpha=0.3)
        if len(rounds_by_point) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_sweep(rows: Sequence[dict], parameter: str, folder: Path, *, title: str = "") -> Path:
    """Federated AUC (and baselines, accuracy cost) against the swept parameter."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    short = parameter.split(".")[-1]
    numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in rows)
    finite = [r for r in rows if numeric and math.isfinite(float(r["value"]))] if numeric else list(rows)
    others = [r for r in rows if r not in finite]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    positions = [float(r["value"]) for r in finite] if numeric else list(range(len(finite)))

    def line(key: str, label: str, style: str) -> None:
        pts = [(x, r.get(key)) for x, r in zip(positions, finite) if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)

    line("auc_federated", "federated", "o-")
    line("auc_centralised", "centralised", "s--")
    line("auc_party_best", "best party alone", "^:")
    for r in others:  # e.g. epsilon = inf: the no-noise reference
        if r.get("auc_federated") is not None:
            ax.axhline(r["auc_federated"], color="black", linewidth=1, linestyle="-.", label=f"federated, {short} = {r.get('value_label')}")
    if numeric and positions and min(positions) > 0 and max(positions) / min(positions) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(positions, [str(r.get("value_label")) for r in finite])
    ax.set_xlabel(parameter)
    ax.set_ylabel("AUC on the evaluation rows")
    costs = [(x, r.get("auc_cost")) for x, r in zip(positions, finite) if r.get("auc_cost") is not None]
    if costs and any(c for _, c in costs):
        twin = ax.twinx()
        twin.plot([c[0] for c in costs], [c[1] for c in costs], "x-", color="tab:red", alpha=0.7, label="accuracy cost")
        twin.set_ylabel("accuracy cost (reference AUC - AUC)", color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        for x, c in costs:
            twin.annotate(f"{c:+.3f}", (x, c), textcoords="offset points", xytext=(0, 5), fontsize=7, color="tab:red", ha="center")
    ax.set_title(f"{title}: AUC vs {parameter}" if title else f"AUC vs {parameter}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = folder / f"auc_vs_{short}.png"
    fig.savefig(path)
    plt.close(fig)
    return path
