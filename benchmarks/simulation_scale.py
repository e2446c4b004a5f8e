"""How far the simulation lab scales: 100 simulated banks x 10 rounds of encrypted FedAvg.

One scenario — ``parties`` banks sharing a synthetic loan book IID (500 SMEs
each plus a common hold-out), an MLP of 1,377 parameters (8 features, two
hidden layers of 32), one local epoch per round, CKKS aggregation, every
message in each party's signed audit ledger — run by ``fedrisk simulate``'s
own runner on the in-process engine, then the same scenario with plaintext
aggregation as the reference.  Each runs in a fresh child process so that
its peak RSS is its own.  The goal on this 2-core machine: <= 300 s and
<= 8 GB peak RSS for the encrypted run.

Prints one JSON object (last stdout line): ``parties``, ``rounds``,
``seconds`` (the encrypted run, data generation to final evaluation),
``peak_rss_mb``, ``he`` (true), and the reference and breakdown:
``seconds_plain``, ``peak_rss_mb_plain``, ``he_overhead_ratio``,
``round_s_median`` / ``round_s_median_plain`` (rounds 2..R),
``setup_and_final_s`` (data, parties, key ceremony, pooled statistics, final
evaluation), ``auc_he``, ``auc_plain``, ``bytes_per_round``, ``n_params``,
``goal_met``.

``--quick``: 20 banks x 3 rounds.  ``--no-ledger``: audit ledgers off (to
see their share of the time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 300.0
GOAL_RSS_MB = 8192.0


def scenario_dict(parties: int, rounds: int, aggregation: str, ledger: bool) -> dict:
    return {
        "scenario": {"name": f"scale_{parties}x{rounds}_{aggregation}", "mode": "horizontal", "seed": 3, "engine": "inprocess", "ledger": ledger},
        "data": {"source": "synthetic", "rows": parties * 500 + 2000, "test-fraction": 2000 / (parties * 500 + 2000)},
        "parties": {"count": parties},
        "partitioning": {"scheme": "iid", "min-rows": 100},
        "algorithm": {"rounds": rounds, "model": "mlp", "hidden-units": 32, "hidden-layers": 2, "learning-rate": 0.05, "batch-size": 128},
        "encryption": {"enabled": aggregation == "ckks"},
    }


def worker(parties: int, rounds: int, aggregation: str, ledger: bool, runs_dir: Path) -> dict:
    """One run in this process; returns its measurements."""
    from fedrisk.simulation.runner import run_scenario
    from fedrisk.simulation.scenario import validate_scenario

    started = time.perf_counter()
    scenario = validate_scenario(scenario_dict(parties, rounds, aggregation, ledger), base_dir=REPO)
    run = run_scenario(scenario, runs_dir=runs_dir, baselines=False, plots=False)
    seconds = time.perf_counter() - started
    result = run.outcomes[0].result
    if result.get("status") != "ok":
        raise SystemExit(f"{aggregation} run failed: {result.get('error')}")
    rows = result["rounds"]
    in_rounds = sum(r["seconds"] for r in rows)
    return {
        "aggregation": aggregation,
        "seconds": seconds,
        "seconds_federation": result["seconds"],
        "round_s": [r["seconds"] for r in rows],
        "round_s_median": statistics.median(r["seconds"] for r in rows[1:]) if len(rows) > 1 else rows[0]["seconds"],
        "coordinator_outside_rounds_s": result["seconds"] - in_rounds,
        "bytes_per_round": statistics.median(r["bytes"] for r in rows),
        "auc": run.outcomes[0].summary["auc_federated"],
        "n_params": result["n_params"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "run_dir": str(run.run_dir),
    }


def _child(parties: int, rounds: int, aggregation: str, ledger: bool, runs_dir: Path) -> dict:
    argv = [sys.executable, __file__, "--worker", aggregation, "--parties", str(parties), "--rounds", str(rounds), "--runs-dir", str(runs_dir)]
    if not ledger:
        argv.append("--no-ledger")
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{aggregation} worker failed with exit code {done.returncode}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 banks x 3 rounds")
    parser.add_argument("--parties", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-ledger", action="store_true", help="audit ledgers off")
    parser.add_argument("--no-plain", action="store_true", help="skip the plaintext reference run")
    parser.add_argument("--worker", choices=("ckks", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--runs-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    parties = args.parties or (20 if args.quick else 100)
    rounds = args.rounds or (3 if args.quick else 10)
    ledger = not args.no_ledger
    if args.worker:
        sys.stdout.write(json.dumps(worker(parties, rounds, args.worker, ledger, args.runs_dir)) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="fedrisk-scale-") as tmp:
        runs_dir = Path(tmp)
        he = _child(parties, rounds, "ckks", ledger, runs_dir)
        plain = None if args.no_plain else _child(parties, rounds, "plain", ledger, runs_dir)
    out = {
        "parties": parties,
        "rounds": rounds,
        "seconds": round(he["seconds"], 2),
        "peak_rss_mb": round(he["peak_rss_mb"], 1),
        "he": True,
        "engine": "inprocess",
        "ledger": ledger,
        "model": "mlp 8-32-32-1",
        "n_params": he["n_params"],
        "round_s_median": round(he["round_s_median"], 3),
        "round_s": [round(s, 3) for s in he["round_s"]],
        "setup_and_final_s": round(he["seconds"] - sum(he["round_s"]), 2),
        "bytes_per_round": he["bytes_per_round"],
        "auc_he": he["auc"],
        "goal": {"seconds": GOAL_SECONDS, "peak_rss_mb": GOAL_RSS_MB},
        "goal_met": he["seconds"] <= GOAL_SECONDS and he["peak_rss_mb"] <= GOAL_RSS_MB,
        "cpus": os.cpu_count(),
    }
    if plain is not None:
        out.update(
            seconds_plain=round(plain["seconds"], 2),
            peak_rss_mb_plain=round(plain["peak_rss_mb"], 1),
            round_s_median_plain=round(plain["round_s_median"], 3),
            he_overhead_ratio=round(he["seconds"] / plain["seconds"], 3),
            round_overhead_ratio=round(he["round_s_median"] / plain["round_s_median"], 3),
            bytes_per_round_plain=plain["bytes_per_round"],
            auc_plain=plain["auc"],
            auc_gap=abs(he["auc"] - plain["auc"]),
        )
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
