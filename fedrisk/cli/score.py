"""``fedrisk score``: the sandboxed scoring node, party scoring services and portfolio jobs."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

score_app = typer.Typer(help="Live credit decisions: the scoring node, party scoring services, batch and watch jobs.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width

_SANDBOX_HELP = (
    "Isolation: auto (bubblewrap, else Linux namespaces; refuses to start when neither works here), bwrap, namespaces, "
    "or, explicitly and without isolation, rlimits (resource limits only) or none."
)
_CRL_HELP = "The federation CA's CRL (crl.pem, from `fedrisk keys`): certificates it revokes are refused on the scoring links; reloaded when it changes."


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {str(err).splitlines()[0] if str(err) else type(err).__name__}", highlight=False)
    raise typer.Exit(code=2)


def _trusted(spec: str) -> list[str]:
    from fedrisk.scoring.bundles import parse_trusted_keys

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    keys: list[bytes] = []
    for part in parts or [spec]:
        keys += parse_trusted_keys(part)
    return [k.hex() for k in keys]


def _run_launcher(config: object, sandbox: str, what: str) -> None:
    """Start the launcher, print the READY JSON line on stdout, wait for SIGTERM/SIGINT or the child's exit."""
    from fedrisk.scoring.launcher import Launcher

    async def run() -> int:
        launcher = Launcher(config, sandbox=sandbox)  # type: ignore[arg-type]
        ready = await launcher.start()
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        console.print(f"{what} serving on {ready['address']} (sandbox: {ready['sandbox']}); Ctrl-C to stop", highlight=False)
        if ready["sandbox"] in ("rlimits", "none"):
            console.print(
                f"[yellow]warning:[/yellow] sandbox '{ready['sandbox']}' (asked for): the filesystem and the network are NOT "
                "isolated (install bubblewrap, or allow unprivileged user namespaces, and use --sandbox auto)",
                highlight=False,
            )
        if not getattr(config, "crl", ""):
            console.print("[yellow]warning:[/yellow] no --crl: a revoked certificate is not refused on the scoring links", highlight=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        child = asyncio.ensure_future(launcher.wait())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({child, waiter}, return_when=asyncio.FIRST_COMPLETED)
        crashed = child.done()
        waiter.cancel()
        code = await launcher.stop()
        sys.stdout.write(
            json.dumps({"stopped": True, "exit_code": code, "fanout": launcher.ready.get("fanout"), "register": launcher.ready.get("register")}) + "\n"
        )
        sys.stdout.flush()
        if crashed:
            console.print(f"[red]error:[/red] the sandboxed {what} exited with code {code}", highlight=False)
            return 1
        return 0

    from fedrisk.scoring.main import run_loop

    try:
        code = run_loop(run())
    except FedriskError as err:
        _fail(err)
    raise typer.Exit(code)


@score_app.command("serve")
def serve(
    bundle: Path = typer.Option(..., help="The bank's (label holder's) signed model bundle."),
    trusted_keys: str = typer.Option(
        ..., help="Trusted signers: a JSON file (name -> hex key, e.g. coordinator/signing_keys.json), or hex keys separated by commas."
    ),
    tls_cert: Path = typer.Option(..., help="The node's TLS server certificate."),
    tls_key: Path = typer.Option(..., help="Its private key (mode 0600)."),
    ca: Path = typer.Option(..., help="Federation CA: trusted for the parties' certificates."),
    client_cert: Optional[Path] = typer.Option(None, help="The bank's client certificate for mTLS to the parties."),
    client_key: Optional[Path] = typer.Option(None, help="Its private key (mode 0600)."),
    party: list[str] = typer.Option([], "--party", help="A feature holder's scoring service, NAME=HOST:PORT (repeat for each)."),
    listen: str = typer.Option("127.0.0.1:0", help="Address to serve on (port 0 picks a free port)."),
    client_ca: Optional[Path] = typer.Option(None, help="Require loan systems to present a client certificate signed by this CA."),
    crl: Optional[Path] = typer.Option(None, help=_CRL_HELP),
    policy: Optional[Path] = typer.Option(None, help="Credit policy TOML (default: the shipped example policy)."),
    bank_table: Optional[Path] = typer.Option(None, help="The bank's own feature table (CSV/Parquet), for applications that do not carry features."),
    state_dir: Optional[Path] = typer.Option(None, help="Folder of the application register (applications.sqlite)."),
    no_register: bool = typer.Option(False, "--no-register", help="Record nothing (every decision is an estimate)."),
    sandbox: str = typer.Option("auto", help=_SANDBOX_HELP),
    memory_mb: int = typer.Option(4096, help="Address-space limit of the node process (0 = none)."),
    cpu_seconds: int = typer.Option(0, help="Total CPU-seconds limit (0 = none)."),
) -> None:
    """Serve live credit decisions (fedrisk.v1.ScoringService) from the sandbox; prints a READY JSON line on stdout."""
    from fedrisk.scoring.config import (
        Limits,
        NodeConfig,
        PartyEndpoint,
        parse_endpoint,
    )

    try:
        if state_dir is None and not no_register:
            raise FedriskError("give --state-dir for the application register, or --no-register")
        if party and (client_cert is None or client_key is None):
            raise FedriskError("--client-cert and --client-key are needed for mTLS to the parties")
        parties = {}
        for item in party:
            name, _, address = item.partition("=")
            if not name or not address:
                raise FedriskError(f"--party {item!r} is not NAME=HOST:PORT")
            parse_endpoint(address)
            parties[name] = PartyEndpoint(address)
        register = ""
        if state_dir is not None and not no_register:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            register = str((state_dir / "applications.sqlite").resolve())
        config = NodeConfig(
            bundle=str(bundle.resolve()),
            trusted_keys=_trusted(trusted_keys),
            tls_cert=str(tls_cert.resolve()),
            tls_key=str(tls_key.resolve()),
            ca=str(ca.resolve()),
            client_cert=str(client_cert.resolve()) if client_cert else "",
            client_key=str(client_key.resolve()) if client_key else "",
            listen=listen,
            client_ca=str(client_ca.resolve()) if client_ca else "",
            crl=str(crl.resolve()) if crl else "",
            parties=parties,
            policy=str(policy.resolve()) if policy else "",
            bank_table=str(bank_table.resolve()) if bank_table else "",
            register=register,
            limits=Limits(memory_mb=memory_mb, cpu_seconds=cpu_seconds),
        )
        if policy is not None:
            from fedrisk.scoring.policy import load_policy

            load_policy(policy)
    except FedriskError as err:
        _fail(err)
    _run_launcher(config, sandbox, "scoring node")


@score_app.command("party-serve")
def party_serve(
    bundle: Path = typer.Option(..., help="This party's own signed model bundle."),
    trusted_keys: str = typer.Option(..., help="Trusted signers: a JSON file or hex keys separated by commas."),
    table: Path = typer.Option(..., help="This party's own table (CSV/Parquet, the training schema)."),
    tls_cert: Path = typer.Option(..., help="The service's TLS server certificate."),
    tls_key: Path = typer.Option(..., help="Its private key (mode 0600)."),
    client_ca: Path = typer.Option(..., help="Federation CA: callers must present a client certificate it signed (mTLS)."),
    allow_list: Optional[Path] = typer.Option(None, help="IDs this party may answer for, one per line (trained intersection + newly aligned); SIGHUP reloads."),
    allow_any_known: bool = typer.Option(False, "--allow-any-known", help="Answer for every ID in the table (no allow-list)."),
    allowed_caller: list[str] = typer.Option([], "--allowed-caller", help="Client-certificate name allowed to ask (default: the label holder in the bundle)."),
    crl: Optional[Path] = typer.Option(None, help=_CRL_HELP),
    listen: str = typer.Option("127.0.0.1:0", help="Address to serve on (port 0 picks a free port)."),
    sandbox: str = typer.Option("auto", help=_SANDBOX_HELP),
    memory_mb: int = typer.Option(4096, help="Address-space limit (0 = none)."),
) -> None:
    """Answer the bank's node with this party's partial scores (fedrisk.v1.PartyScoringService), over mTLS."""
    from fedrisk.scoring.config import Limits, PartyServiceConfig

    try:
        if allow_list is None and not allow_any_known:
            raise FedriskError("give --allow-list (IDs this party may answer for) or --allow-any-known")
        config = PartyServiceConfig(
            bundle=str(bundle.resolve()),
            trusted_keys=_trusted(trusted_keys),
            table=str(table.resolve()),
            tls_cert=str(tls_cert.resolve()),
            tls_key=str(tls_key.resolve()),
            client_ca=str(client_ca.resolve()),
            listen=listen,
            allow_list=str(allow_list.resolve()) if allow_list else "",
            allow_any_known=allow_any_known,
            allowed_callers=list(allowed_caller),
            crl=str(crl.resolve()) if crl else "",
            limits=Limits(memory_mb=memory_mb),
        )
    except FedriskError as err:
        _fail(err)
    _run_launcher(config, sandbox, "party scoring service")


def _client(node: str, ca: Path, cert: Optional[Path], key: Optional[Path]):
    from fedrisk.scoring.client import ScoringClient

    client = ScoringClient(node, ca=ca, cert=cert, key=key)
    client.wait_ready(10.0)
    return client


@score_app.command("batch")
def batch(
    ids: Path = typer.Argument(..., help="CSV of SMEs: an ID column (sme_id / credit_code) and optionally declared_annual_revenue, requested_amount."),
    node: str = typer.Option(..., help="The scoring node, HOST:PORT."),
    ca: Path = typer.Option(..., help="CA that signed the node's certificate."),
    out: Path = typer.Option(Path("preapproved.csv"), help="Output CSV."),
    cert: Optional[Path] = typer.Option(None, help="Client certificate, when the node requires mTLS."),
    key: Optional[Path] = typer.Option(None, help="Its private key."),
    id_column: Optional[str] = typer.Option(None, help="Name of the ID column."),
    record: bool = typer.Option(False, "--record", help="Record each as a PREAPPROVAL application (default: estimates only)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary JSON as the last stdout line."),
) -> None:
    """Pre-score a list of SMEs for pre-approved limits (主动授信); writes a CSV."""
    from fedrisk.scoring.portfolio import run_batch

    try:
        with _client(node, ca, cert, key) as client:
            summary = run_batch(client, ids, out, id_column=id_column, record=record, progress=progress, console=console)
    except FedriskError as err:
        _fail(err)
    console.print(
        f"{summary['rows']} SMEs: {summary['approve']} pre-approved (total limit {summary['total_pre_approved_limit']:,}), "
        f"{summary['refer']} refer, {summary['decline']} decline, {summary['not_found']} not found, {summary['invalid']} invalid -> {out}",
        highlight=False,
    )
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")


@score_app.command("watch")
def watch(
    book: Path = typer.Argument(
        ..., help="CSV of the loan book: ID column and previous PD (previous_pd / probability_of_default), optionally score and partial_<party> columns."
    ),
    node: Optional[str] = typer.Option(None, help="The scoring node, HOST:PORT (not needed with --no-rescore)."),
    ca: Optional[Path] = typer.Option(None, help="CA that signed the node's certificate."),
    out_dir: Path = typer.Option(Path("watch"), help="Folder for watch.csv, score_shift.png and psi.json."),
    pd_threshold: float = typer.Option(0.10, help="Flag borrowers whose PD rose to this or above."),
    min_rise: float = typer.Option(0.0, help="Also require the PD to have risen by more than this."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline book for population stability (PSI); default: BOOK's own previous PD/score."),
    rescore: bool = typer.Option(True, "--rescore/--no-rescore", help="Rescore BOOK at the node (default), or only compare BOOK with --baseline."),
    psi_bins: int = typer.Option(10, help="Quantile bins of the baseline for PSI."),
    cert: Optional[Path] = typer.Option(None, help="Client certificate, when the node requires mTLS."),
    key: Optional[Path] = typer.Option(None, help="Its private key."),
    id_column: Optional[str] = typer.Option(None, help="Name of the ID column."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary JSON as the last stdout line."),
) -> None:
    """Rescore a loan book, flag borrowers whose PD rose past a threshold (early warning), and report
    population stability (PSI) of the PD, score and each party's partial score; CSV + PNG + psi.json."""
    from fedrisk.scoring.portfolio import compare_books, run_watch

    try:
        if not rescore:
            if baseline is None:
                raise FedriskError("--no-rescore compares two books: give --baseline")
            summary = compare_books(baseline, book, out_dir, id_column=id_column, bins=psi_bins)
        else:
            if node is None or ca is None:
                raise FedriskError("rescoring needs --node and --ca (or --no-rescore with --baseline)")
            with _client(node, ca, cert, key) as client:
                summary = run_watch(
                    client,
                    book,
                    out_dir,
                    pd_threshold=pd_threshold,
                    min_rise=min_rise,
                    id_column=id_column,
                    baseline=baseline,
                    psi_bins=psi_bins,
                    progress=progress,
                    console=console,
                )
    except FedriskError as err:
        _fail(err)
    psi = ", ".join(f"{k} {v:.3f} ({summary['psi_verdict'][k]})" for k, v in summary.get("psi", {}).items())
    if rescore:
        console.print(
            f"{summary['rescored']} borrowers rescored, {summary['flagged']} flagged (PD >= {pd_threshold:g}) -> {summary['csv']}, {summary['png']}",
            highlight=False,
        )
    console.print(f"population stability (PSI): {psi or 'nothing to compare'} -> {summary.get('psi_json')}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
