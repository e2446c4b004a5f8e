"""Run a scenario: every sweep point end to end, then the run folder's tables and plots.

For each point (:mod:`fedrisk.simulation.sweep`) the runner writes the
parties' tables (:mod:`fedrisk.simulation.data`), starts the federation on
the chosen engine (:mod:`fedrisk.simulation.engines`) with the real fedrisk
ServerApp and ClientApps, reads the coordinator's result, computes the
baselines on the same rows (:mod:`fedrisk.simulation.baselines`), and keeps
the per-round rows.  Then it writes ``runs/<run-id>/``::

    scenario.resolved.toml   the scenario with every default, as run
    versions.json            fedrisk, flwr, tenseal, torch, numpy, python...
    metrics_rounds.csv       one row per round per sweep point
    comparison.csv           federated vs each party alone vs centralised, per point
    sweep.csv                one row per sweep value, with its accuracy cost (sweeps only)
    plots/*.png              AUC / bytes / seconds per round; AUC vs the swept value
    summary.json             everything above in one object (``--json`` prints it)
    points/<NN-label>/       each point's data, party state (keys, ledgers, bundles),
                             coordinator result and log

PyTorch runs with one intra-op thread while simulating: a hundred tiny
models trained one after another gain nothing from two threads and lose a
lot to their contention (measured here: 4 ms vs 0.1 ms per linear layer).
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fedrisk.parties.settings import PartySettings
from fedrisk.simulation import comparison as cmp
from fedrisk.simulation.engines import run_federation, select_engine
from fedrisk.simulation.metrics import ROUND_COLUMNS, federated_final, round_rows, write_csv
from fedrisk.simulation.recording import write_json, write_resolved_scenario, write_versions
from fedrisk.simulation.scenario import Scenario, value_label
from fedrisk.simulation.sweep import SweepPoint, sweep_points

#: ``on_event(kind, payload)``: kinds ``start``, ``point``, ``round``, ``point_done``.
EventCallback = Callable[[str, dict], None]

_ROUND_LINE = re.compile(r"^\[fedrisk\] (?:round (\d+)/\d+|epoch (\d+)):")


@dataclass
class PointOutcome:
    """One sweep point's result, rows and summary."""

    point: SweepPoint
    result: dict
    rounds: list[dict]
    comparison: list[dict]
    summary: dict
    shares: dict = field(default_factory=dict)


@dataclass
class SimulationRun:
    """A finished simulation: where it wrote, and what it found."""

    run_dir: Path
    scenario: Scenario
    engine: str
    outcomes: list[PointOutcome]
    summary: dict
    files: dict[str, Path]

    @property
    def ok(self) -> bool:
        return all(o.summary["status"] == "ok" for o in self.outcomes)


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_config_for(scenario: Scenario, *, run_dir: Path, run_id: str) -> dict:
    """The ServerApp's run config for one point of a scenario."""
    common = {
        "run-dir": str(run_dir),
        "parties": ",".join(scenario.party_names),
        "fedrisk-run-id": run_id,
        "party-timeout": float(scenario.get("scenario.party-timeout")),
        "ledger": bool(scenario.get("scenario.ledger")),
        "seed": scenario.seed,
    }
    a = scenario.values["algorithm"]
    if not scenario.horizontal:
        return {**common, "mode": "vertical", "algorithm": "vertical_lr", "epochs": a["epochs"], "c": a["c"], "patience": a["patience"]}
    f = scenario.values["faults"]
    config = {
        **common,
        "mode": "horizontal",
        "algorithm": "fedavg",
        "aggregation": "ckks" if scenario.get("encryption.enabled") else "plain",
        "num-rounds": a["rounds"],
        "local-epochs": a["local-epochs"],
        "learning-rate": a["learning-rate"],
        "batch-size": a["batch-size"],
        "model": a["model"],
        "hidden-units": a["hidden-units"],
        "hidden-layers": a["hidden-layers"],
        "min-parties": f["min-parties"],
        "round-timeout": f["round-timeout"],
        "sim-dropout": f["dropout"],
        "sim-stragglers": f["stragglers"],
        "sim-straggler-delay": f["straggler-delay"],
    }
    p = scenario.values["privacy"]
    if p["enabled"] and math.isfinite(p["epsilon"]):
        # Seeded noise makes the simulation reproducible; a real deployment leaves dp-noise-seed unset.
        config.update({"dp-epsilon": p["epsilon"], "dp-delta": p["delta"], "dp-clip": p["clip"], "dp-noise-seed": scenario.seed})
    return config


def _parties(scenario: Scenario, folder: Path):
    from fedrisk.simulation.data import prepare_horizontal, prepare_vertical

    if scenario.horizontal:
        data = prepare_horizontal(scenario, folder / "data")
        parties = [
            PartySettings(
                name=b,
                role="bank",
                data=str(path),
                schema=data.schema.to_dict(),
                state_dir=str(folder / "parties" / b),
                validation={"table": str(data.holdout_path)},
            )
            for b, path in data.paths.items()
        ]
        return data, parties
    vertical = prepare_vertical(scenario, folder / "data")
    parties = [
        PartySettings(
            name=name,
            role="label_holder" if name == vertical.label_holder else "feature_holder",
            data=str(vertical.paths[name]),
            schema=table.schema.to_dict(),
            state_dir=str(folder / "parties" / name),
            validation=dict(vertical.validation),
        )
        for name, table in vertical.tables.items()
    ]
    return vertical, parties


def _train_rows(scenario: Scenario, data) -> int:
    if scenario.horizontal:
        return sum(int(y.size) for _, y in data.train.values())
    from fedrisk.data.datasplit import training_mask

    holder = data.tables[data.label_holder]
    return int(training_mask(holder.labels, data.validation).sum())


def _summary(point: SweepPoint, result: dict, federated: dict, baselines, folder: Path) -> dict:
    alone = [b.auc for b in baselines if b.kind == "party alone" and not math.isnan(b.auc)]
    central = next((b.auc for b in baselines if b.kind == "centralised"), None)
    dp = result.get("dp") or {}
    rounds = result.get("rounds") or result.get("epochs") or []
    summary = {
        "label": point.label,
        "parameter": point.parameter,
        "value": point.value,
        "value_label": value_label(point.value) if point.parameter else "",
        "is_reference": point.is_reference,
        "status": result.get("status", "error"),
        "auc_federated": federated.get("auc_federated"),
        "ks_federated": federated.get("ks_federated"),
        "auc_centralised": central,
        "auc_party_mean": sum(alone) / len(alone) if alone else None,
        "auc_party_best": max(alone) if alone else None,
        "epsilon": dp.get("epsilon"),
        "noise_multiplier": dp.get("noise_multiplier"),
        "seconds": result.get("seconds"),
        "bytes_total": result.get("bytes_total"),
        "megabytes": (result.get("bytes_total") or 0) / 1e6 if result.get("bytes_total") is not None else None,
        "rounds": len(rounds),
        "dropped_total": sum(len(r.get("dropped", [])) for r in rounds),
        "folder": str(folder),
    }
    if "auc_bank_only" in federated:  # vertical: the label holder's own baseline, inside the protocol
        summary["auc_bank_only_protocol"] = federated["auc_bank_only"]
    if result.get("status") != "ok":
        summary["error"] = result.get("error", "unknown error")
    return summary


def run_point(point: SweepPoint, *, run_dir: Path, engine: str, baselines: bool = True, on_event: EventCallback | None = None) -> PointOutcome:
    """Run one sweep point end to end (see the module docstring)."""
    from fedrisk.simulation.baselines import horizontal_baselines, vertical_baselines

    scenario = point.scenario
    folder = run_dir / "points" / point.folder
    data, parties = _parties(scenario, folder)
    shares = data.shares() if scenario.horizontal else {n: {"rows": len(t)} for n, t in data.tables.items()}
    config = run_config_for(scenario, run_dir=folder, run_id=f"{run_dir.name}-{point.folder}")

    def on_line(line: str) -> None:
        match = _ROUND_LINE.match(line)
        if match and on_event is not None:
            done = int(match.group(1)) if match.group(1) else int(match.group(2)) + 1
            on_event("round", {"label": point.label, "round": done, "total": scenario.rounds})

    if on_event is not None:
        on_event("point", {"label": point.label, "total": scenario.rounds, "index": point.index})
    result = run_federation(engine, parties, config, run_dir=folder, on_line=on_line)
    ok = result.get("status") == "ok"
    federated = federated_final(result) if ok else {}
    scores = []
    if ok and baselines:
        scores = horizontal_baselines(data, scenario) if scenario.horizontal else vertical_baselines(data, scenario)
    comparison = cmp.comparison_rows(result, scores, scenario, federated, _train_rows(scenario, data)) if ok else []
    summary = _summary(point, result, federated, scores, folder)
    write_csv([{"party": n, **s} for n, s in shares.items()], folder / "partition.csv")
    outcome = PointOutcome(point, result, round_rows(result), comparison, summary, shares)
    if on_event is not None:
        on_event("point_done", {"label": point.label, "summary": summary})
    return outcome


def run_scenario(
    scenario: Scenario,
    *,
    runs_dir: Path = Path("runs"),
    on_event: EventCallback | None = None,
    baselines: bool = True,
    plots: bool = True,
) -> SimulationRun:
    """Run every point of ``scenario`` and write the run folder.

    Parameters
    ----------
    scenario : Scenario
        A validated scenario (:func:`~fedrisk.simulation.scenario.load_scenario`).
    runs_dir : pathlib.Path
        Parent of the run folder ``<UTC time>-<name>-<random>``.
    on_event : callable, optional
        Progress callback (see :data:`EventCallback`).
    baselines : bool
        Train the party-alone and centralised baselines (off for scale benchmarks).
    plots : bool
        Write the PNG plots.

    Returns
    -------
    SimulationRun
    """
    from fedrisk.federation.train import new_run_dir

    engine = select_engine(str(scenario.get("scenario.engine")))
    started = time.perf_counter()
    run_dir = new_run_dir(runs_dir, scenario.name + ("-quick" if scenario.quick else ""))
    files = {"scenario": write_resolved_scenario(scenario, run_dir), "versions": write_versions(run_dir)}
    points = sweep_points(scenario)
    if on_event is not None:
        on_event("start", {"run_dir": str(run_dir), "engine": engine, "points": [(p.label, p.scenario.rounds) for p in points]})
    outcomes = []
    with _single_torch_thread():
        for point in points:
            outcomes.append(run_point(point, run_dir=run_dir, engine=engine, baselines=baselines, on_event=on_event))

    def tagged(o: PointOutcome, row: dict) -> dict:
        return {"point": o.point.label, "parameter": o.point.parameter or "", "value": o.summary["value_label"], **row}

    files["metrics"] = write_csv([tagged(o, r) for o in outcomes for r in o.rounds], run_dir / "metrics_rounds.csv", ROUND_COLUMNS)
    files["comparison"] = write_csv([tagged(o, r) for o in outcomes for r in o.comparison], run_dir / "comparison.csv")
    reference = next((o.point.label for o in outcomes if o.point.is_reference), None)
    sweep = cmp.sweep_rows([o.summary for o in outcomes], reference)
    if scenario.sweep is not None:
        columns = [
            "label",
            "parameter",
            "value_label",
            "status",
            "auc_federated",
            "auc_cost",
            "ks_federated",
            "auc_centralised",
            "auc_party_mean",
            "auc_party_best",
            "epsilon",
            "noise_multiplier",
            "rounds",
            "dropped_total",
            "seconds",
            "bytes_total",
            "error",
        ]
        files["sweep"] = write_csv(sweep, run_dir / "sweep.csv", columns)
    if plots:
        files.update(_plots(scenario, outcomes, sweep, run_dir))
    summary: dict[str, Any] = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "scenario": scenario.name,
        "mode": scenario.mode,
        "engine": engine,
        "quick": scenario.quick,
        "seed": scenario.seed,
        "ok": all(o.summary["status"] == "ok" for o in outcomes),
        "sweep": {"parameter": scenario.sweep["parameter"], "reference": reference} if scenario.sweep else None,
        "points": sweep,
        "comparison": {o.point.label: o.comparison for o in outcomes},
        "files": {k: str(v) for k, v in files.items()},
        "seconds": time.perf_counter() - started,
    }
    files["summary"] = write_json(run_dir / "summary.json", summary)
    summary["files"]["summary"] = str(files["summary"])
    return SimulationRun(run_dir, scenario, engine, outcomes, summary, files)


def _plots(scenario: Scenario, outcomes: list[PointOutcome], sweep: list[dict], run_dir: Path) -> dict[str, Path]:
    from fedrisk.simulation.plots import plot_rounds, plot_sweep

    folder = run_dir / "plots"
    references = {}
    first = next((o for o in outcomes if o.point.is_reference), outcomes[0])
    for row in first.comparison:
        if row["kind"] == "centralised":
            references["centralised"] = row["auc"]
    alone = [r["auc"] for r in first.comparison if r["kind"] == "party alone" and r["auc"] is not None and not math.isnan(r["auc"])]
    if alone:
        references["best party alone"] = max(alone)
    paths = plot_rounds({o.point.label: o.rounds for o in outcomes}, folder, references=references, title=scenario.name)
    out = {f"plot_{p.stem}": p for p in paths}
    if scenario.sweep is not None and any(r.get("auc_federated") is not None for r in sweep):
        path = plot_sweep(sweep, scenario.sweep["parameter"], folder, title=scenario.name)
        out[f"plot_{path.stem}"] = path
    return out
