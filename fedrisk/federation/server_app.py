"""The fedrisk ServerApp: the coordinator of every federation run.

It reads the run config (``[tool.flwr.app.config]`` or what ``fedrisk train``
passes), finds the parties, runs the configured protocol and writes the
coordinator's result (metrics and sizes only, never data) to
``<run-dir>/coordinator/result.json``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrisk.errors import ConfigError, FedriskError
from fedrisk.federation.exchange import COORDINATOR
from fedrisk.federation.horizontal import FedAvgConfig, run_fedavg
from fedrisk.federation.flower_tuning import shorten_object_pull_backoff
from fedrisk.federation.session import CoordinatorSession

shorten_object_pull_backoff()  # flwr-serverapp imports this module before it pulls any reply
app = ServerApp()

#: Prefix of the log line that carries the coordinator's result (sizes and metrics only).
RESULT_PREFIX = "[fedrisk] result "


def _cfg(context: Context, key: str, default):
    value = context.run_config.get(key, default)
    return type(default)(value) if default is not None else value


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _ledgered(grid: Grid, folder: Path) -> Grid:
    """Wrap Flower's grid so that every message in and out lands in the coordinator's ledger."""
    from fedrisk.audit.recorder import LEDGER_FILE, ExchangeRecorder
    from fedrisk.federation.ledger_grid import LedgeredGrid
    from fedrisk.parties.identity import PartyIdentity
    from fedrisk.parties.settings import ensure_private_dir

    identity = PartyIdentity.load_or_create(ensure_private_dir(folder), COORDINATOR)
    return LedgeredGrid(grid, ExchangeRecorder(folder / LEDGER_FILE, COORDINATOR, identity.signing))


def _write_key_registry(folder: Path, session: CoordinatorSession) -> None:
    """Who signed which ledger: the public signing keys the parties announced."""
    from fedrisk.parties.identity import PartyIdentity

    keys = {name: info.signing_public_key for name, info in session.parties.items()}
    keys[COORDINATOR] = PartyIdentity.load_or_create(folder, COORDINATOR).signing_public_key.hex()
    _write_json(folder / "signing_keys.json", keys)


def _run_vertical(session: CoordinatorSession, context: Context) -> dict:
    """PSI, then the configured vertical algorithm."""
    from fedrisk.federation.alignment import VerticalRoles, run_alignment

    algorithm = _cfg(context, "algorithm", "vertical_lr")
    roles = VerticalRoles.of(session)
    psi_started = time.perf_counter()
    rows = run_alignment(session, roles)
    psi_seconds = time.perf_counter() - psi_started
    print(f"[fedrisk] aligned {len(roles.feature_holders)} feature holder(s) on {rows} rows in {psi_seconds:.1f} s", flush=True)
    if algorithm == "secureboost":
        return {
            "status": "ok", "mode": "vertical", "algorithm": algorithm, "label_holder": roles.label_holder,
            "feature_holders": list(roles.feature_holders), "rows": rows, "psi_seconds": psi_seconds,
            **_run_secureboost(session, context, roles),
        }
    if algorithm != "vertical_lr":
        raise ConfigError(f"unknown vertical algorithm {algorithm!r}")
    from fedrisk.federation.vertical_lr import VerticalLRConfig, run_vertical_lr

    config = VerticalLRConfig(
        epochs=_cfg(context, "epochs", 30),
        c=_cfg(context, "c", 1.0),
        patience=_cfg(context, "patience", 5),
        tol=_cfg(context, "tol", 1e-6),
        momentum=str(context.run_config.get("momentum", True)).lower() not in ("false", "0"),
        n_jobs=_cfg(context, "n-jobs", 1),
    )

    def progress(epoch: int, row: dict) -> None:
        print(f"[fedrisk] epoch {epoch}: {json.dumps(row, sort_keys=True)}", flush=True)

    trained = run_vertical_lr(session, roles, config, progress=progress)
    final = dict(trained.final)
    intersection = json.loads(str(final.pop("intersection", "{}")))
    return {
        "status": "ok",
        "mode": "vertical",
        "algorithm": algorithm,
        "label_holder": roles.label_holder,
        "feature_holders": list(roles.feature_holders),
        "rows": rows,
        "intersection": intersection,
        "psi_seconds": psi_seconds,
        "epochs": trained.epochs,
        "final": final,
        "bundles": trained.bundles,
        "key_fingerprint": trained.key_fingerprint,
    }


def _run_secureboost(session: CoordinatorSession, context: Context, roles) -> dict:
    from fedrisk.federation.secureboost import SecureBoostConfig, run_secureboost, secureboost_summary

    config = SecureBoostConfig(
        trees=_cfg(context, "trees", 30),
        depth=_cfg(context, "depth", 3),
        learning_rate=_cfg(context, "learning-rate", 0.3),
        l2=_cfg(context, "l2", 1.0),
        min_child_weight=_cfg(context, "min-child-weight", 1.0),
        subsample=_cfg(context, "subsample", 1.0),
        bins=_cfg(context, "bins", 32),
        seed=_cfg(context, "seed", 0),
        n_jobs=_cfg(context, "n-jobs", 1),
    )

    def progress(tree: int, row: dict) -> None:
        print(f"[fedrisk] tree {tree + 1}/{config.trees}: {json.dumps(row, sort_keys=True)}", flush=True)

    return secureboost_summary(run_secureboost(session, roles, config, progress=progress))


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_dir = Path(_cfg(context, "run-dir", "") or Path.cwd() / "runs" / "flwr-run")
    out = run_dir / "coordinator" / "result.json"
    started = time.perf_counter()
    run_id = _cfg(context, "fedrisk-run-id", "") or str(getattr(context, "run_id", "run"))
    try:
        parties = [p for p in str(_cfg(context, "parties", "")).split(",") if p]
        mode = _cfg(context, "mode", "horizontal")
        if str(context.run_config.get("ledger", True)).lower() not in ("false", "0"):
            grid = _ledgered(grid, run_dir / "coordinator")
        session = CoordinatorSession(grid, run_id, timeout=float(_cfg(context, "party-timeout", 900.0)))
        if not parties:
            raise ConfigError("run config key 'parties' is empty: name the federation's parties")
        session.discover(parties, timeout=float(_cfg(context, "connect-timeout", 120.0)))
        _write_key_registry(run_dir / "coordinator", session)
        if mode == "horizontal":
            config = FedAvgConfig(
                rounds=_cfg(context, "num-rounds", 5),
                aggregation=_cfg(context, "aggregation", "ckks"),
                local_epochs=_cfg(context, "local-epochs", 1),
                learning_rate=_cfg(context, "learning-rate", 0.01),
                batch_size=_cfg(context, "batch-size", 256),
                model=_cfg(context, "model", "mlp"),
                hidden_units=_cfg(context, "hidden-units", 64),
                hidden_layers=_cfg(context, "hidden-layers", 2),
                seed=_cfg(context, "seed", 7),
                key_holder=_cfg(context, "key-holder", ""),
                **FedAvgConfig.options_from_run_config(context.run_config),  # min-parties, round-timeout, dp-*, sim-*
            )

            def progress(round_: int, row: dict) -> None:
                print(f"[fedrisk] round {round_}/{config.rounds}: {json.dumps(row, sort_keys=True)}", flush=True)

            fedavg = run_fedavg(session, config, progress=progress)
            result = {
                "status": "ok",
                "mode": "horizontal",
                "algorithm": "fedavg",
                "aggregation": config.aggregation,
                "rounds": fedavg.rounds,
                "final": fedavg.final,
                "key_holder": fedavg.key_holder,
                "key_fingerprint": fedavg.key_fingerprint,
                "n_params": fedavg.n_params,
                "dp": fedavg.dp,
            }
        elif mode == "vertical":
            result = _run_vertical(session, context)
        else:
            raise ConfigError(f"unknown mode {mode!r}")
        result.update(
            run_id=run_id,
            parties={n: {"role": p.role, "signing_key_id": p.signing_key_id} for n, p in session.parties.items()},
            bytes_exchanged=session.traffic.by_party(),
            bytes_total=session.traffic.total(),
            seconds=time.perf_counter() - started,
        )
        _write_json(out, result)
        # The result travels back in the log stream too: `fedrisk train --superlink` reads it there.
        print(RESULT_PREFIX + json.dumps(result, sort_keys=True, default=str), flush=True)
    except FedriskError as err:
        _write_json(out, {"status": "error", "error": str(err).splitlines()[0]})
        print(f"[fedrisk] error: {str(err).splitlines()[0]}", flush=True)
        print(RESULT_PREFIX + json.dumps({"status": "error", "error": str(err).splitlines()[0]}), flush=True)
        raise
    except Exception as err:  # unexpected: keep the traceback in the run folder
        _write_json(out, {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        raise
