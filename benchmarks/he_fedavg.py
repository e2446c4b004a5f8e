"""Encrypted vs plaintext FedAvg over the Deployment Engine, measured in one run.

Three banks hold the FATE horizontal split of the UCI default-credit data
(../shared/data/default_credit, 8,000 rows each) and train an MLP of more than
100,000 parameters.  One local federation (SuperLink + three SuperNodes over
gRPC+TLS on loopback, node authentication on) serves two runs with the same
seed: plaintext FedAvg (the reference) and CKKS-encrypted FedAvg.  Round
times are the median over rounds 2..R (round 1 includes the key ceremony and
feature statistics); wire bytes per parameter are those of one bank's update.

Prints one JSON object: parties, params, rounds, auc_he, auc_plain,
round_s_he, round_s_plain, overhead_ratio, wire_bytes_per_param_he,
wire_bytes_per_param_plain (plus the AUC gap and total seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    env = os.environ.get("FEDRISK_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


FEDERATION = """
[federation]
name = "he-fedavg-bench"
mode = "horizontal"
algorithm = "fedavg"

[algorithm]
rounds = {rounds}
model = "mlp"
hidden-units = {hidden}
hidden-layers = 2
learning-rate = 0.001
local-epochs = 1
batch-size = 256
seed = 3

[validation]
table = "{data}/default_credit_homo_test.csv"
""" + "".join(
    f"""
[[parties]]
name = "{name}"
role = "bank"
data = "{{data}}/default_credit_homo_{file}.csv"
id-column = "id"
label-column = "y"
"""
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1"), ("bank_c", "host_2"))
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds (default 5)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=320, help="hidden units per layer (320 -> 110,721 parameters)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)

    from fedrisk.federation.federation_file import load_federation_file
    from fedrisk.federation.local import LocalFederation
    from fedrisk.federation.train import party_settings_for, run_config_for, weighted_final_metrics

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedrisk-bench-") as tmp:
        root = Path(tmp)
        fed_file = root / "federation.toml"
        fed_file.write_text(FEDERATION.format(rounds=rounds, hidden=args.hidden, data=shared_data() / "default_credit"))
        fed = load_federation_file(fed_file)
        results = {}
        with LocalFederation(
            root / "run", party_settings_for(fed, root / "run"), run_config_for(fed), log=lambda line: print(line, file=sys.stderr)
        ) as federation:
            for aggregation in ("plain", "ckks"):
                config = {**run_config_for(fed, aggregation=aggregation), "fedrisk-run-id": f"bench-{aggregation}"}
                results[aggregation] = federation.run(run_config=config, timeout=3600)
                print(f"{aggregation}: {[round(r['seconds'], 2) for r in results[aggregation]['rounds']]}", file=sys.stderr)

    def round_s(result: dict) -> float:
        times = [r["seconds"] for r in result["rounds"]]
        return statistics.median(times[1:] if len(times) > 1 else times)

    def update_bytes_per_param(result: dict) -> float:
        # A bank's upload in the last round: what it sent to the coordinator / parameters.
        last = result["rounds"][-1]
        n_parties = len(result["parties"])
        # per-round bytes = uploads + downloads of every bank; uploads and downloads are equal-sized vectors
        return last["bytes"] / (2 * n_parties) / result["n_params"]

    he, plain = results["ckks"], results["plain"]
    auc_he = weighted_final_metrics(he["final"])["auc_federated"]
    auc_plain = weighted_final_metrics(plain["final"])["auc_federated"]
    out = {
        "parties": len(he["parties"]),
        "params": he["n_params"],
        "rounds": rounds,
        "auc_he": round(auc_he, 5),
        "auc_plain": round(auc_plain, 5),
        "auc_gap": round(abs(auc_he - auc_plain), 6),
        "round_s_he": round(round_s(he), 3),
        "round_s_plain": round(round_s(plain), 3),
        "overhead_ratio": round(round_s(he) / round_s(plain), 3),
        "wire_bytes_per_param_he": round(update_bytes_per_param(he), 2),
        "wire_bytes_per_param_plain": round(update_bytes_per_param(plain), 2),
        "transport": "Flower 1.39 Deployment Engine, gRPC+TLS on loopback, node auth",
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
