"""``fedrisk status RUN_DIR``: parties connected, round, pauses and the last error of a run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def status(
    run_dir: Path = typer.Argument(..., help="The run folder (runs/<run-id>; on the SuperLink's host for a remote run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
    watch: float = typer.Option(0.0, "--watch", help="Refresh every this many seconds until the run ends (0 = once)."),
) -> None:
    """Show a federation run's state from the status file its coordinator keeps up to date."""
    from fedrisk.federation.status import describe, read_status, status_path

    while True:
        data = read_status(run_dir)
        if data is None:
            console.print(f"[red]error:[/red] no run status at {status_path(run_dir)} (not a run folder, or the run has not started)", highlight=False)
            raise typer.Exit(code=2)
        if as_json:
            sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
        else:
            sys.stdout.write("\n".join(describe(data)) + "\n")
        sys.stdout.flush()
        if watch <= 0 or data.get("state") in ("finished", "failed") or data.get("stale"):
            break
        time.sleep(watch)
    raise typer.Exit(code=1 if data.get("state") == "failed" or data.get("stale") else 0)
