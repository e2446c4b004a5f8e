"""The fedrisk ServerApp: the coordinator of every federation run.

It reads the run config (``[tool.flwr.app.config]`` or what ``fedrisk train``
passes), finds the parties, runs the configured protocol and writes the
coordinator's result (metrics and sizes only, never data) to
``<run-dir>/coordinator/result.json`` and publishes it to fedrisk's SuperLink,
which hands it to the submitter through Flower's ``PullArtifacts``
(:mod:`fedrisk.federation.run_results`).

Recovery (run config ``recovery = true``, which the local and remote
federation runners set): the coordinator keeps its status in
``coordinator/status.json`` (``fedrisk status``), checkpoints its protocol
state after every completed round (FedAvg, SecureBoost) or epoch (vertical LR)
in ``coordinator/checkpoints/<run-id>/``, resumes from that checkpoint when
the same run id is submitted again after a crash, probes a party that stays
silent (``probe-interval`` seconds, default 15) and pauses, up to
``pause-timeout`` seconds (default 600), for a party
that is restarting instead of failing the run. Each of ``checkpoint``,
``probe-interval`` and ``pause-timeout`` can be set on its own.
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrisk.errors import ConfigError, FedriskError
from fedrisk.wire.exchange import COORDINATOR
from fedrisk.federation.horizontal import run_fedavg
from fedrisk.federation.run_results import publish_result
from fedrisk.protocols.fedavg import FedAvgConfig
from fedrisk.wire.flower_tuning import shorten_object_pull_backoff, use_bundled_runtime_calls
from fedrisk.federation.session import CoordinatorSession
from fedrisk.federation.status import RunStatus, status_path

shorten_object_pull_backoff()  # flwr-serverapp imports this module before it pulls any reply
use_bundled_runtime_calls()  # one request per push and per pull against fedrisk's SuperLink (fedrisk.federation.superlink)
app = ServerApp()


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


def _close_ledgers(session: CoordinatorSession, context: Context) -> dict[str, str]:
    """End the run in every ledger: each party's signed run-close record, then the coordinator's."""
    from fedrisk.federation.ledger_grid import close_run

    return close_run(session, timeout=min(60.0, float(_cfg(context, "party-timeout", 900.0))))


def _recovery_options(context: Context) -> dict:
    """Checkpointing, probing and pausing: on for deployment runs (``recovery``), off by default."""
    on = str(context.run_config.get("recovery", False)).lower() in ("true", "1")
    return {
        "checkpoint": str(context.run_config.get("checkpoint", on)).lower() in ("true", "1"),
        "pause_timeout": float(context.run_config.get("pause-timeout", 600.0 if on else 0.0)),
        "probe_after": float(context.run_config.get("probe-interval", 15.0 if on else 0.0)),
    }


def _run_vertical(session: CoordinatorSession, context: Context, checkpoints=None) -> dict:
    """PSI, then the configured vertical algorithm."""
    from fedrisk.federation.alignment import VerticalRoles, run_alignment

    algorithm = _cfg(context, "algorithm", "vertical_lr")
    roles = VerticalRoles.of(session)
    if algorithm == "stacking":
        from fedrisk.federation.stacking import run_stacking_bases

        return run_stacking_bases(session, context, _run_vertical, _close_ledgers)
    if algorithm not in ("vertical_lr", "secureboost"):
        raise ConfigError(f"unknown vertical algorithm {algorithm!r}")
    from fedrisk.federation.vertical_lr import run_vertical_lr
    from fedrisk.protocols.vertical_lr import VerticalLRConfig

    config = VerticalLRConfig.from_run_config(context.run_config)
    sb_config = _secureboost_config(context)
    resume = None
    if checkpoints is not None:
        digest = roles.checkpoint_digest("secureboost", sb_config) if algorithm == "secureboost" else roles.checkpoint_digest("vertical_lr", config)
        resume = checkpoints.resumable(algorithm, digest)
    if resume is not None:
        rows, psi_seconds = int(resume.state["alignment"]["rows"]), float(resume.state["alignment"]["psi_seconds"])
    else:
        session.status.set(protocol=algorithm, step="psi")
        psi_started = time.perf_counter()
        rows = run_alignment(session, roles)
        psi_seconds = time.perf_counter() - psi_started
        print(f"[fedrisk] aligned {len(roles.feature_holders)} feature holder(s) on {rows} rows in {psi_seconds:.1f} s", flush=True)
    if algorithm == "secureboost":
        return {
            "status": "ok",
            "mode": "vertical",
            "algorithm": algorithm,
            "label_holder": roles.label_holder,
            "feature_holders": list(roles.feature_holders),
            "rows": rows,
            "psi_seconds": psi_seconds,
            **_run_secureboost(session, sb_config, roles, checkpoints, resume, {"rows": rows, "psi_seconds": psi_seconds}),
        }

    def progress(epoch: int, row: dict) -> None:
        print(f"[fedrisk] epoch {epoch}: {json.dumps(row, sort_keys=True)}", flush=True)

    trained = run_vertical_lr(
        session,
        roles,
        config,
        progress=progress,
        checkpoints=checkpoints,
        resume=resume,
        alignment={"rows": rows, "psi_seconds": psi_seconds},
    )
    final = dict(trained.final)
    final.pop("intersection", None)  # the label holder's to know (its alignment report), never the coordinator's
    return {
        "status": "ok",
        "mode": "vertical",
        "algorithm": algorithm,
        "label_holder": roles.label_holder,
        "feature_holders": list(roles.feature_holders),
        "rows": rows,
        "psi_seconds": psi_seconds,
        "epochs": trained.epochs,
        "final": final,
        "bundles": trained.bundles,
        "key_fingerprint": trained.key_fingerprint,
    }


def _secureboost_config(context: Context):
    from fedrisk.protocols.secureboost import SecureBoostConfig

    config = SecureBoostConfig.from_run_config(context.run_config)
    config.params()  # refuse bad hyper-parameters before PSI, in one line
    return config


def _run_secureboost(session: CoordinatorSession, config, roles, checkpoints=None, resume=None, alignment=None) -> dict:
    from fedrisk.federation.secureboost import run_secureboost, secureboost_summary

    def progress(tree: int, row: dict) -> None:
        print(f"[fedrisk] tree {tree + 1}/{config.trees}: {json.dumps(row, sort_keys=True)}", flush=True)

    trained = run_secureboost(session, roles, config, progress=progress, checkpoints=checkpoints, resume=resume, alignment=alignment)
    return secureboost_summary(trained)


def run_echo(session: CoordinatorSession, run_config) -> dict:
    """Transport probe (``benchmarks/exchange.py``): timed echo exchanges with every party.

    Run config: ``echo-sizes`` (payload bytes, comma-separated), ``echo-counts``
    (exchanges per size), ``echo-warmup`` (untimed exchanges per size). One
    exchange sends the same public payload to every party at once and waits
    for all the echoes, as a protocol step does; each echo is checked byte for
    byte. Returns per size the exchange latencies in milliseconds.
    """
    import hashlib

    from fedrisk.wire.exchange import ECHO, ECHO_CONTENT_CLASS, build_content

    sizes = [int(v) for v in str(run_config.get("echo-sizes", "1024")).split(",") if v.strip()]
    counts = [int(v) for v in str(run_config.get("echo-counts", "50")).split(",") if v.strip()]
    warmup = int(run_config.get("echo-warmup", 3))
    if len(counts) == 1:
        counts = counts * len(sizes)
    if len(counts) != len(sizes):
        raise ConfigError("run config: echo-counts needs one count, or one per echo-sizes entry")
    import resource

    names = sorted(session.parties)
    out = []
    for size, count in zip(sizes, counts):
        cpu_started = resource.getrusage(resource.RUSAGE_SELF)
        payload = os.urandom(size)
        digest = hashlib.sha256(payload).digest()
        latencies = []
        for i in range(warmup + count):
            requests = {name: (ECHO, build_content(session.header(i, "echo", name, ECHO_CONTENT_CLASS), blobs={"payload": payload})) for name in names}
            started = time.perf_counter()
            replies = session.exchange(requests)
            elapsed = time.perf_counter() - started
            for name, reply in replies.items():
                if hashlib.sha256(reply.blob("payload")).digest() != digest:
                    raise FedriskError(f"party {name} echoed a different payload of {size} bytes")
            if i >= warmup:
                latencies.append(elapsed * 1000.0)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (cpu.ru_utime - cpu_started.ru_utime) + (cpu.ru_stime - cpu_started.ru_stime)
        out.append(
            {"bytes": size, "parties": len(names), "latencies_ms": [round(v, 3) for v in latencies], "warmup": warmup, "coordinator_cpu_s": round(cpu_s, 4)}
        )
        if latencies:
            print(f"[fedrisk] echo {size} B x {len(names)} parties: median {sorted(latencies)[len(latencies) // 2]:.1f} ms over {count}", flush=True)
    return {"status": "ok", "mode": "echo", "echo": out}


def _run_horizontal(session: CoordinatorSession, context: Context, checkpoints=None) -> dict:
    """Encrypted FedAvg across the banks."""
    config = FedAvgConfig.from_run_config(context.run_config)

    def progress(round_: int, row: dict) -> None:
        print(f"[fedrisk] round {round_}/{config.rounds}: {json.dumps(row, sort_keys=True)}", flush=True)

    fedavg = run_fedavg(session, config, progress=progress, checkpoints=checkpoints)
    return {
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


def _run_echo(session: CoordinatorSession, context: Context, checkpoints=None) -> dict:
    """The transport probe of ``benchmarks/exchange.py``."""
    return run_echo(session, context.run_config)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_dir = Path(_cfg(context, "run-dir", "") or Path.cwd() / "runs" / "flwr-run")
    out = run_dir / "coordinator" / "result.json"
    started = time.perf_counter()
    run_id = _cfg(context, "fedrisk-run-id", "") or str(getattr(context, "run_id", "run"))
    recovery = _recovery_options(context)
    status = RunStatus(status_path(run_dir) if recovery["checkpoint"] or recovery["pause_timeout"] > 0 else None, run_id)
    checkpoints = None
    if recovery["checkpoint"]:
        from fedrisk.checkpoint import CheckpointStore

        checkpoints = CheckpointStore(run_dir / "coordinator" / "checkpoints" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id))
    try:
        parties = [p for p in str(_cfg(context, "parties", "")).split(",") if p]
        mode = _cfg(context, "mode", "horizontal")
        status.set(mode=mode, expected_parties=parties)
        if str(context.run_config.get("ledger", True)).lower() not in ("false", "0"):
            grid = _ledgered(grid, run_dir / "coordinator")
        session = CoordinatorSession(
            grid,
            run_id,
            timeout=float(_cfg(context, "party-timeout", 900.0)),
            pause_timeout=recovery["pause_timeout"],
            probe_after=recovery["probe_after"],
            status=status,
        )
        if not parties:
            raise ConfigError("run config key 'parties' is empty: name the federation's parties")
        session.discover(parties, timeout=float(_cfg(context, "connect-timeout", 120.0)))
        _write_key_registry(run_dir / "coordinator", session)
        # Start-up's long-lived objects (Flower, gRPC, protobuf, numpy) out of the collector's sight: one
        # full collection of them mid-exchange cost ~100 ms (the p99 of benchmarks/exchange.py).
        gc.collect()
        gc.freeze()
        runners = {"horizontal": _run_horizontal, "vertical": _run_vertical, "echo": _run_echo}
        if mode not in runners:
            raise ConfigError(f"unknown mode {mode!r}")
        result = runners[mode](session, context, checkpoints)
        result.update(
            run_id=run_id,
            parties={n: {"role": p.role, "signing_key_id": p.signing_key_id} for n, p in session.parties.items()},
            bytes_exchanged=session.traffic.by_party(),
            bytes_total=session.traffic.total(),
            seconds=time.perf_counter() - started,
            recovery={
                "attempt": status.data.get("attempt", 1),
                "resumed_from": status.data.get("resumed_from"),
                "resent_to": sorted(session.rounds_redone_parties),
                "unanswered_probes": session.drain(),
            },
        )
        unclosed = _close_ledgers(session, context)
        if unclosed:
            result["ledger_unclosed"] = unclosed
        _write_json(out, result)
        publish_result(context.run_id, result)  # `flwr pull` / `fedrisk train --superlink` fetch it from the SuperLink
        status.set(state="finished")
    except FedriskError as err:
        status.failed(str(err).splitlines()[0])
        _write_json(out, {"status": "error", "error": str(err).splitlines()[0]})
        publish_result(context.run_id, {"status": "error", "error": str(err).splitlines()[0]})
        print(f"[fedrisk] error: {str(err).splitlines()[0]}", flush=True)
        raise
    except Exception as err:  # unexpected: keep the traceback in the run folder
        status.failed(f"{type(err).__name__}: {err}".splitlines()[0])
        _write_json(out, {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        raise
