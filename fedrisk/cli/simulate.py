"""``fedrisk simulate SCENARIO``: run a simulation scenario with a progress bar, then its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

console = Console(stderr=True)


def simulate(
    scenario: Path = typer.Argument(..., help="Scenario TOML file (see simulations/README.md for every key)."),
    quick: bool = typer.Option(False, "--quick", help="Apply the scenario's \\[quick] overrides: the same story, small enough for about a minute."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as one JSON object on the last stdout line."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run folder <UTC time>-<name>-<random> is created."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Override scenario.engine: inprocess, ray (Flower's Simulation Engine) or auto."),
) -> None:
    """Simulate a federation from a scenario file: metrics CSV, PNG plots and a comparison table in runs/<run-id>/.

    Runs the real fedrisk ServerApp and ClientApps (in one process by default;
    on Flower's Simulation Engine with Ray when installed), once per sweep
    value, and compares the federated model with each party alone and with
    the centralised model on the same rows. Exit code 0 when every run
    finished, 1 when one failed (its error is in the table), 2 on a bad
    scenario.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from fedrisk.simulation.scenario import load_scenario

    try:
        loaded = load_scenario(scenario, quick=quick)
        if engine is not None:
            loaded = loaded.with_value("scenario.engine", engine, keep_sweep=True)
    except FedriskError as err:
        console.print(f"[red]error:[/red] {scenario.name}: {str(err).splitlines()[0]}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None

    from fedrisk.simulation.comparison import render_run
    from fedrisk.simulation.runner import run_scenario

    unit = "round" if loaded.horizontal else "epoch"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit}s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, TaskID] = {}
        overall: TaskID | None = None

        def on_event(kind: str, payload: dict) -> None:
            nonlocal overall
            if kind == "start":
                console.print(
                    f"[bold]fedrisk simulate[/bold] {loaded.name}{' (quick)' if quick else ''}: {payload['engine']} engine, run folder {payload['run_dir']}",
                    highlight=False,
                )
                if len(payload["points"]) > 1:
                    overall = progress.add_task("sweep", total=len(payload["points"]))
            elif kind == "point":
                tasks[payload["label"]] = progress.add_task(payload["label"], total=payload["total"])
            elif kind == "round":
                progress.update(tasks[payload["label"]], completed=payload["round"])
            elif kind == "point_done":
                task = tasks[payload["label"]]
                if payload["summary"]["status"] == "ok":
                    progress.update(task, total=progress.tasks[task].completed or 1)  # early stopping ends short
                if overall is not None:
                    progress.advance(overall)

        try:
            run = run_scenario(loaded, runs_dir=runs_dir, on_event=on_event)
        except FedriskError as err:
            progress.stop()
            console.print(f"[red]error:[/red] {scenario.name}: {str(err).splitlines()[0]}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
    render_run(console, run)
    if as_json:
        from fedrisk.simulation.recording import json_safe

        sys.stdout.write(json.dumps(json_safe(run.summary), sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code=0 if run.ok else 1)
