"""``fedrisk train FEDERATION.toml``: run a federation on the parties' own tables."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from fedrisk.federation.federation_file import FederationFile, load_federation_file
from fedrisk.federation.local import LocalFederation
from fedrisk.parties.settings import PartySettings

#: FEDERATION.toml [algorithm] key -> run config key of the ServerApp.
_RUN_CONFIG_KEYS = {"rounds": "num-rounds"}


def new_run_dir(runs_dir: Path, label: str) -> Path:
    """A fresh, sortable run folder: ``runs/<UTC time>-<label>-<random>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(runs_dir) / f"{stamp}-{label}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path.resolve()


def run_config_for(fed: FederationFile, **overrides: object) -> dict:
    config: dict[str, object] = {"mode": fed.mode, "algorithm": fed.algorithm}
    for key, value in fed.params.items():
        config[_RUN_CONFIG_KEYS.get(key, key)] = value
    config.update(overrides)
    return config


def party_settings_for(fed: FederationFile, run_dir: Path) -> list[PartySettings]:
    return [
        PartySettings(
            name=p.name,
            role=p.role,
            data=str(p.data),
            schema=p.schema,
            state_dir=str(run_dir / "parties" / p.name),
            validation=dict(fed.validation),
        )
        for p in fed.parties
    ]


def weighted_final_metrics(final: dict[str, dict]) -> dict[str, float]:
    """Validation AUC/KS over the parties' validation rows (row-weighted mean)."""
    rows = {n: float(m.get("val_rows", 0)) for n, m in final.items() if "val_auc" in m}
    total = sum(rows.values())
    if not total:
        return {}
    return {
        "auc_federated": sum(float(final[n]["val_auc"]) * w for n, w in rows.items()) / total,
        "ks_federated": sum(float(final[n]["val_ks"]) * w for n, w in rows.items()) / total,
    }


def horizontal_metrics(result: dict) -> dict:
    """Summary fields of a FedAvg run."""
    return {"rounds": len(result.get("rounds", [])), **weighted_final_metrics(result.get("final", {}))}


def label_holder_intersection(parties: list[PartySettings], result: dict) -> dict[str, int] | None:
    """Intersection sizes from the label holder's own alignment report, in its state folder.

    The coordinator never learns them (``fedrisk.parties.alignment``): only a run whose
    label holder's folder is on this machine (local runs, the demo) can show them.
    """
    from fedrisk.parties.alignment import read_alignment_report

    for party in parties:
        if party.role == "label_holder":
            report = read_alignment_report(Path(party.state_dir), str(result.get("run_id", "")))
            return None if report is None else {str(k): int(v) for k, v in report["intersection"].items()}
    return None


def vertical_metrics(result: dict, intersection: dict[str, int] | None = None) -> dict:
    """Summary fields of a vertical run: the label holder's validation metrics and, from its side, the overlap."""
    final = result.get("final", {})
    out = {
        "intersection": intersection,
        "rows": result.get("rows"),
        "epochs": len(result.get("epochs", result.get("trees", []))),
        "best_epoch": final.get("best_epoch"),
        "bundles": result.get("bundles", {}),
        "key_fingerprint": result.get("key_fingerprint"),
        "psi_seconds": result.get("psi_seconds"),
    }
    for key in ("auc_federated", "ks_federated", "auc_bank_only", "ks_bank_only"):
        if key in final:
            out[key] = final[key]
    return out


def audit_run(run_dir: Path, run_id: str) -> dict:
    """Verify every ledger of the run and write the compliance report; summary fields."""
    from fedrisk.audit import build_report
    from fedrisk.audit.run_files import collect_ledgers

    ledgers, keys = collect_ledgers([run_dir])
    report = build_report(ledgers, run_dir / "audit", trusted_keys=keys, run_id=run_id)
    from fedrisk.audit import read_ledger

    entries = sum(sum(1 for e in read_ledger(p).entries if e.run_id == run_id) for p in ledgers)
    return {
        "ledger_verified": bool(report.ok),
        "ledger_entries": entries,
        "ledger_findings": [str(f) for f in report.findings][:20],
        "audit_report": str(report.html_path),
    }


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def run_training(
    federation_file: Path,
    *,
    runs_dir: Path,
    superlink: str | None = None,
    root_certificates: Path | None = None,
    console: Console | None = None,
) -> dict:
    """Validate FEDERATION.toml, run it, write ``summary.json``; returns the summary."""
    console = console or Console(stderr=True)
    fed = load_federation_file(federation_file, local_data=superlink is None)
    run_dir = new_run_dir(runs_dir, fed.name.replace(" ", "-"))
    started = time.perf_counter()
    console.print(f"run folder: {run_dir}")
    intersection = None
    if superlink is None:
        parties = party_settings_for(fed, run_dir)
        with LocalFederation(run_dir, parties, run_config_for(fed), log=console.print) as federation:
            result = federation.run()
        audit = audit_run(run_dir, result.get("run_id", run_dir.name))
        intersection = label_holder_intersection(parties, result)
    else:
        from fedrisk.federation.remote import RemoteFederation

        remote = RemoteFederation(run_dir, superlink, root_certificates, [p.name for p in fed.parties], log=console.print)
        result = remote.run(run_config_for(fed, **{"run-dir": f"runs/{run_dir.name}"}))
        # Each party's ledger lives on its own host: verify them together with `fedrisk audit verify`.
        audit = {"ledger_verified": None, "ledger_note": "ledgers are on the parties' hosts; collect them and run `fedrisk audit verify`"}
        if fed.mode == "vertical":  # only the label holder learns it, on its own host
            audit["intersection_note"] = "intersection sizes are in the label holder's <state-dir>/alignment/<run-id>.json"
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "federation": fed.name,
        "mode": fed.mode,
        "algorithm": fed.algorithm,
        "parties": [p.name for p in fed.parties],
        "seconds": time.perf_counter() - started,
        "bytes_exchanged": result.get("bytes_exchanged", {}),
        "coordinator": result,
        **(vertical_metrics(result, intersection) if fed.mode == "vertical" else horizontal_metrics(result)),
        **audit,
    }
    write_summary(run_dir, summary)
    return summary
