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
console = Console(stderr=True, soft_wrap=True)  # one finding, one line: never wrapped


def _keys(keys_file: Optional[Path], found: dict | None) -> dict | None:
    if keys_file is not None:
        return json.loads(keys_file.read_text())
    return found


def _ca(ca: Optional[Path], ca_sha256: Optional[str], found: dict | None) -> Path | None:
    """The CA to check key bindings against: --ca, else the run folder's; pinned by --ca-sha256."""
    from fedrisk.audit.key_binding import fingerprint, load_ca

    path = ca if ca is not None else getattr(found, "ca_cert", None)
    if path is None:
        if ca_sha256:
            raise FedriskError("--ca-sha256 given but no CA certificate: pass --ca")
        return None
    if ca_sha256 and fingerprint(load_ca(path)) != ca_sha256.strip().lower():
        raise FedriskError(f"{path}: its SHA-256 is {fingerprint(load_ca(path))}, not the pinned --ca-sha256 {ca_sha256}")
    return Path(path)


@audit_app.command("verify")
def verify(
    paths: list[Path] = typer.Argument(..., help="Ledger files, or run folders (every ledger.sqlite below them)."),
    keys: Optional[Path] = typer.Option(
        None, help="JSON of writer -> Ed25519 public key (hex); default: the run's coordinator/signing_keys.json (unsigned: with a CA it is only compared)."
    ),
    ca: Optional[Path] = typer.Option(
        None, "--ca", help="The federation CA certificate: each ledger's key must be bound to its writer's certificate (default: the run folder's pki/ca.crt)."
    ),
    ca_sha256: Optional[str] = typer.Option(None, "--ca-sha256", help="Refuse a CA certificate whose SHA-256 is not this (from `fedrisk keys list`)."),
    run_id: Optional[str] = typer.Option(None, help="Check only this run's entries (a node's ledger spans its runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print findings as one JSON object."),
) -> None:
    """Check every chain, signature, key binding and run close, then cross-check all ledgers. Exit 0 only if all hold.

    Cross-checks: sent vs received for every message, and each ledger against
    the ledger heads its peers recorded (a cut tail or a rewritten ledger is named).
    """
    from fedrisk.audit import verify_run
    from fedrisk.audit.key_binding import fingerprint, load_ca
    from fedrisk.audit.run_files import collect_ledgers

    try:
        ledgers, found_keys = collect_ledgers(paths)
        ca_path = _ca(ca, ca_sha256, found_keys)
        findings = verify_run(ledgers, trusted_keys=_keys(keys, found_keys), run_id=run_id, ca=ca_path)
        ca_fp = fingerprint(load_ca(ca_path)) if ca_path is not None else None
    except FedriskError as err:
        console.print(f"[red]error:[/red] {str(err).splitlines()[0]}", highlight=False)
        raise typer.Exit(2) from err
    binding = (
        f"ledger keys checked against the certificates of CA {ca_fp} ({ca_path})"
        if ca_fp
        else "ledger keys NOT checked against certificates (no federation CA: pass --ca); trusted as the key registry lists them"
    )
    if as_json:
        sys.stdout.write(
            json.dumps({"ledgers": [str(p) for p in ledgers], "ok": not findings, "ca_sha256": ca_fp, "findings": [str(f) for f in findings]}) + "\n"
        )
    else:
        for finding in findings:
            sys.stdout.write(f"{finding}\n")
        status = "[green]verified[/green]" if not findings else f"[red]{len(findings)} finding(s)[/red]"
        console.print(binding, highlight=False)
        console.print(f"{len(ledgers)} ledger(s): {status}")
    raise typer.Exit(0 if not findings else 1)


@audit_app.command("report")
def report(
    paths: list[Path] = typer.Argument(..., help="A run folder, or ledger files."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: <run>/audit)."),
    run_id: Optional[str] = typer.Option(None, help="Report only this run's entries."),
    ca: Optional[Path] = typer.Option(None, "--ca", help="The federation CA certificate (default: the run folder's pki/ca.crt)."),
    ca_sha256: Optional[str] = typer.Option(None, "--ca-sha256", help="Refuse a CA certificate whose SHA-256 is not this."),
) -> None:
    """Write audit_report.html and audit_report.json: parties, keys, timeline, bytes, content classes, verification."""
    from fedrisk.audit import build_report
    from fedrisk.audit.run_files import collect_ledgers

    try:
        ledgers, found_keys = collect_ledgers(paths)
        ca = _ca(ca, ca_sha256, found_keys)
        out_dir = out or (paths[0] / "audit" if paths[0].is_dir() else Path("audit"))
        result = build_report(ledgers, out_dir, trusted_keys=found_keys, run_id=run_id, ca=ca)
    except FedriskError as err:
        console.print(f"[red]error:[/red] {str(err).splitlines()[0]}", highlight=False)
        raise typer.Exit(2) from err
    console.print(f"report: {result.html_path} ({'verified' if result.ok else f'{len(result.findings)} finding(s)'})")
    sys.stdout.write(f"{result.html_path}\n")
