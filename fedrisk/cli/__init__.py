"""The ``fedrisk`` command line.

Every command has ``--help``; errors a user can cause print one line
(``error: ...``) and exit 2; ``--json`` makes the last stdout line the
machine-readable summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

app = typer.Typer(
    name="fedrisk",
    help="Privacy-preserving federated credit-risk modelling for SME lending.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Party data: synthetic SME tables, validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
from fedrisk.cli.audit import audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")
from fedrisk.cli.node import node_app  # noqa: E402

app.add_typer(node_app, name="node")
from fedrisk.cli.keys import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")
from fedrisk.cli.status import status as status_command  # noqa: E402

app.command("status")(status_command)
from fedrisk.cli.score import score_app  # noqa: E402

app.add_typer(score_app, name="score")
from fedrisk.cli.simulate import simulate  # noqa: E402

app.command("simulate")(simulate)
from fedrisk.cli.scorecard import scorecard_app  # noqa: E402

app.add_typer(scorecard_app, name="scorecard")

console = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width


def _fail(err: Exception) -> None:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code=2)


def _emit(summary: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()


@app.command()
def demo(
    as_json: bool = typer.Option(False, "--json", help="Print the summary JSON as the last stdout line."),
    mode: str = typer.Option("vertical", help="vertical (bank + tax bureau + platform) or horizontal (three banks)."),
    model: str = typer.Option(
        "vertical_lr",
        help="Vertical model: vertical_lr (scorecard), secureboost (trees), stacking (both, meta-learner at the bank) or scorecard (WOE points scorecard, trained in-process: live points decisions and the bank's own points table).",
    ),
    trees: int = typer.Option(10, help="SecureBoost trees (depth 3, 32 bins)."),
    rows: int = typer.Option(10_000, help="Synthetic SMEs known to the bank."),
    rounds: int = typer.Option(15, "--rounds", "--epochs", help="Most epochs (vertical) or rounds (horizontal)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are created."),
    seed: int = typer.Option(7, help="Seed of the synthetic data and the models."),
) -> None:
    """Start a whole local federation over gRPC+TLS on loopback and train on synthetic SME data."""
    from fedrisk.federation.demo import run_demo

    try:
        summary = run_demo(mode=mode, model=model, runs_dir=runs_dir, rows=rows, rounds=rounds, trees=trees, seed=seed, console=console)
    except FedriskError as err:
        _fail(err)
    _emit(summary, as_json)


@app.command()
def train(
    federation_file: Path = typer.Argument(..., help="FEDERATION.toml naming the parties, their tables and the algorithm."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary JSON as the last stdout line."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are created."),
    superlink: Optional[str] = typer.Option(None, help="Join a running SuperLink's Control API (HOST:PORT) instead of starting a local federation."),
    root_certificates: Optional[Path] = typer.Option(None, help="CA certificate of that SuperLink."),
) -> None:
    """Train on the parties' own tables, as FEDERATION.toml describes."""
    from fedrisk.federation.train import run_training

    try:
        summary = run_training(federation_file, runs_dir=runs_dir, superlink=superlink, root_certificates=root_certificates, console=console)
    except FedriskError as err:
        _fail(err)
    _emit(summary, as_json)


def benchmark_names(folder: Path) -> list[str]:
    """The benchmarks in ``folder``: its ``NAME.py`` files, without the private helpers (``_deployment.py``...).

    Parameters
    ----------
    folder : Path
        The ``benchmarks`` folder.

    Returns
    -------
    list of str
        Sorted names; a name starting with ``_`` is a module the benchmarks import, not one to run.
    """
    return sorted(p.stem for p in Path(folder).glob("*.py") if not p.stem.startswith("_"))


@app.command()
def bench(
    name: str = typer.Argument(..., help="Benchmark name: a file benchmarks/NAME.py."),
    quick: bool = typer.Option(False, "--quick", help="A small shape that finishes in about a minute."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON object."),
) -> None:
    """Run a benchmark (measures fedrisk and its reference in one run; prints one JSON object)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks").is_dir():  # an installed wheel ships no benchmarks
        _fail(FedriskError(f"fedrisk bench runs from a source checkout: no benchmarks/ folder at {root}; clone the repository and run it there"))
    available = benchmark_names(root / "benchmarks")
    if name not in available:
        _fail(FedriskError(f"no benchmark {name!r}; available: {', '.join(available) or 'none'}"))
    script = root / "benchmarks" / f"{name}.py"
    argv = [sys.executable, str(script)] + (["--quick"] if quick else [])
    completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None if not as_json else subprocess.DEVNULL, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not lines:
        _fail(FedriskError(f"benchmark {name} failed with exit code {completed.returncode}"))
    sys.stdout.write(lines[-1] + "\n")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write bank.csv, tax_bureau.csv and platform.csv into."),
    rows: int = typer.Option(20_000, help="SMEs known to the bank."),
    seed: int = typer.Option(0, help="Seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic SME tables (bank, tax bureau, platform) as CSV."""
    from fedrisk.data.synthetic import generate_sme_data

    try:
        paths = generate_sme_data(rows, seed=seed).write_csv(out)
    except FedriskError as err:
        _fail(err)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


def main() -> None:
    app()
