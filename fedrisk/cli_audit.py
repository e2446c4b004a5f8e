"""``fedrisk audit``: verify a run's ledgers and write the compliance report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

audit_app = typer.Typer(help="Verify audit ledgers and write compliance reports.", no_args_is_help=True)
console = Console(stderr=True)


def _keys(keys_file: Optional[Path], found: dict | None) -> dict | None:
    if keys_file is not None:
        return json.loads(keys_file.read_text())
    return found


@audit_app.command("verify")
def verify(
    paths: list[Path] = typer.Argument(..., help="Ledger files, or run folders (every ledger.sqlite below them)."),
    keys: Optional[Path] = typer.Option(None, help="JSON of writer -> Ed25519 public key (hex); default: the run's coordinator/signing_keys.json."),
    run_id: Optional[str] = typer.Option(None, help="Check only this run's entries (a node's ledger spans its runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print findings as one JSON object."),
) -> None:
    """Check every chain and signature, then cross-check sent vs received across all ledgers. Exit 0 only if all hold."""
    from fedrisk.audit import verify_run
    from fedrisk.audit.run_files import collect_ledgers

    try:
        ledgers, found_keys = collect_ledgers(paths)
        findings = verify_run(ledgers, trusted_keys=_keys(keys, found_keys), run_id=run_id)
    except FedriskError as err:
        console.print(f"[red]error:[/red] {str(err).splitlines()[0]}", highlight=False)
        raise typer.Exit(2)
    if as_json:
        sys.stdout.write(json.dumps({"ledgers": [str(p) for p in ledgers], "ok": not findings,
                                     "findings": [str(f) for f in findings]}) + "\n")
    else:
        for finding in findings:
            sys.stdout.write(f"{finding}\n")
        status = "[green]verified[/green]" if not findings else f"[red]{len(findings)} finding(s)[/red]"
        console.print(f"{len(ledgers)} ledger(s): {status}")
    raise typer.Exit(0 if not findings else 1)


@audit_app.command("report")
def report(
    paths: list[Path] = typer.Argument(..., help="A run folder, or ledger files."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: <run>/audit)."),
    run_id: Optional[str] = typer.Option(None, help="Report only this run's entries."),
) -> None:
    """Write audit_report.html and audit_report.json: parties, keys, timeline, bytes, content classes, verification."""
    from fedrisk.audit import build_report
    from fedrisk.audit.run_files import collect_ledgers

    try:
        ledgers, found_keys = collect_ledgers(paths)
        out_dir = out or (paths[0] / "audit" if paths[0].is_dir() else Path("audit"))
        result = build_report(ledgers, out_dir, trusted_keys=found_keys, run_id=run_id)
    except FedriskError as err:
        console.print(f"[red]error:[/red] {str(err).splitlines()[0]}", highlight=False)
        raise typer.Exit(2)
    console.print(f"report: {result.html_path} ({'verified' if result.ok else f'{len(result.findings)} finding(s)'})")
    sys.stdout.write(f"{result.html_path}\n")
