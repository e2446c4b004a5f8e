"""``fedrisk node``: run this host's party in a federation whose SuperLink runs elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

node_app = typer.Typer(help="Run this host's party node (its table stays here).", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


@node_app.command("start")
def node_start(
    name: str = typer.Option(..., "--name", help="This party's name in the federation (as in FEDERATION.toml)."),
    role: str = typer.Option(..., "--role", help="bank (horizontal), label_holder or feature_holder (vertical)."),
    data: Path = typer.Option(..., "--data", help="This party's table (CSV or Parquet)."),
    id_column: str = typer.Option("id", help="Column holding the SME identifier."),
    label_column: Optional[str] = typer.Option(None, help="0/1 label column (bank or label holder only)."),
    id_format: str = typer.Option("opaque", help="opaque, or credit_code to validate GB 32100-2015 check digits."),
    features: Optional[str] = typer.Option(
        None,
        help="Comma-separated columns this party agrees to join (default: every column but the ID and label). Others are never read.",
    ),
    categorical: Optional[str] = typer.Option(None, help="Comma-separated features that are categories (e.g. tax_credit_grade)."),
    allow_missing: Optional[str] = typer.Option(None, help="Comma-separated features that may be empty (NaN allowed)."),
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the SuperLink's Fleet API."),
    root_certificates: Optional[Path] = typer.Option(None, help="CA certificate that signed the SuperLink's TLS certificate."),
    auth_key: Optional[Path] = typer.Option(None, help="This node's Flower authentication private key (registered with the SuperLink)."),
    state_dir: Path = typer.Option(Path("fedrisk-node"), help="Private folder for keys, the ledger and model bundles (0700)."),
    validation_fraction: float = typer.Option(0.2, help="Share of the label holder's rows held out for validation."),
    validation_seed: int = typer.Option(42, help="Seed of the validation split."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain-text gRPC: debugging only, never across hosts."),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per log line (also for the party process and SuperNode)."),
) -> None:
    """Start this party's warm process and its SuperNode, and serve until Ctrl-C.

    A party process or SuperNode that dies is restarted (the SuperNode with the
    same node key, so pending messages reach it). The node stops with a
    one-line error when the SuperLink refuses it: TLS under another CA, or a
    node key that is not registered or was revoked.
    """
    import os

    from fedrisk.federation.federation_file import party_entry
    from fedrisk.logs import json_line, log_format as check_format
    from fedrisk.parties.party_node import PartyNode, node_env
    from fedrisk.parties.settings import PartySettings

    def say(line: str) -> None:
        if fmt == "json":
            sys.stderr.write(json_line(line, logger="fedrisk.node", party=name) + "\n")
            sys.stderr.flush()
        else:
            console.print(line, highlight=False)

    fmt = "text"
    try:
        fmt = check_format(log_format)
        mode = "horizontal" if role == "bank" else "vertical"
        raw: dict[str, object] = {"name": name, "role": role, "data": str(data), "id-column": id_column, "id-format": id_format}
        if label_column is not None:
            raw["label-column"] = label_column
        for key, listed in (("features", features), ("categorical", categorical), ("allow-missing", allow_missing)):
            if listed is not None:
                raw[key] = [c.strip() for c in listed.split(",") if c.strip()]
        entry = party_entry(raw, 0, Path.cwd(), mode, where="node")
        settings = PartySettings(
            name=entry.name,
            role=entry.role,
            data=str(entry.data),
            schema=entry.schema,
            state_dir=str(state_dir.resolve()),
            validation={"fraction": validation_fraction, "seed": validation_seed},
        )
        env = node_env(state_dir.resolve() / "flwr")
        env["FEDRISK_LOG_FORMAT"] = fmt
        os.environ["FEDRISK_LOG_FORMAT"] = fmt
        node = PartyNode(settings, superlink, root_certificates, auth_key=auth_key, insecure=insecure, env=env)
        code = node.serve_forever(log=say)
    except FedriskError as err:
        if fmt == "json":
            sys.stderr.write(json_line(str(err).splitlines()[0], level="ERROR", logger="fedrisk.node", party=name) + "\n")
        else:
            console.print(f"[red]error:[/red] {str(err).splitlines()[0]}", highlight=False)
        raise typer.Exit(code=2) from None
    raise typer.Exit(code=code)
