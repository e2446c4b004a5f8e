"""Crash recovery on real processes: SIGKILL the coordinator or a party mid-round and measure what it cost.

One local federation (SuperLink, one SuperNode and one warm party process per
party, gRPC+TLS with node authentication on loopback) serves every run:

* horizontal: two banks (every bank required: min-parties = 2) train CKKS
  FedAvg; an uninterrupted run, a second uninterrupted run (the CKKS noise
  reference: two runs never agree bit for bit because every encryption draws
  fresh noise), then one run per kill — ``flwr-serverapp`` (the coordinator)
  mid-round 2, bank_b's party process mid-round 3, bank_b's SuperNode mid-round 2,
  the SuperLink itself (and the coordinator under it) mid-round 3;
* vertical: bank (label holder) + tax bureau (feature holder), PSI then
  encrypted vertical LR; an uninterrupted run, the noise reference, the
  coordinator killed while the feature holder computes its epoch-2 gradient,
  the tax bureau's party process killed at the same point (it comes back from
  its disk state), and (full mode) the bank's party process killed while it
  decrypts epoch 1's products (its CKKS secret key comes back from disk) and
  the tax bureau's SuperNode killed mid-epoch 1;
* secureboost: the same two parties, PSI then SecureBoost (3 trees of depth 2;
  a round is the bank's step and the tax bureau's answer, a tree up to 3
  rounds); an uninterrupted run, the noise reference, the coordinator killed
  mid-tree (round 5: tree 2's split decision on its way to the tax bureau),
  the tax bureau's party process killed at the same point (its bins, routing
  table, row sets and the tree's encrypted gradients come back from disk) and
  (full mode) the bank's party process killed in round 6 (its secret key and
  the half-grown tree come back from disk). The model difference is over
  every float of both bundles (leaf weights, thresholds); the trees must have
  the same shape, else it is reported as infinite.

For each kill: ``resumed`` (the run finished with status ok), the largest
absolute difference between the final model's weights and the uninterrupted
run's (every party's signed bundle), ``ledger_entries_lost`` (entries that were
in any node's ledger at the instant of the kill and are missing or changed
afterwards), ``chain_findings`` (each ledger verified alone: sequence, hash
chain, signatures), ``unpaired_in_flight`` (messages the cross-check cannot
pair because the kill destroyed one end's record: a message in flight was
lost with the killed process, and the coordinator or party sent it again), and
``rounds_redone`` (rounds or epochs in which the coordinator's ledger shows a
protocol message sent twice to the same party).

Prints one JSON object (last stdout line): kills, resumed,
final_model_max_abs_diff, reference_noise_max_abs_diff, ledger_entries_lost,
rounds_redone, rounds_redone_max_per_kill, unpaired_in_flight, per_kill, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_data() -> Path:
    env = os.environ.get("FEDRISK_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


HORIZONTAL = """
[federation]
name = "recovery-horizontal"
mode = "horizontal"
algorithm = "fedavg"

[algorithm]
rounds = {rounds}
model = "mlp"
hidden-units = 16
seed = 11
min-parties = 2

[validation]
fraction = 0.2
seed = 1

[[parties]]
name = "bank_a"
role = "bank"
data = "{root}/bank_a.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "bank_b"
role = "bank"
data = "{root}/bank_b.csv"
id-column = "id"
label-column = "y"
"""

VERTICAL = """
[federation]
name = "recovery-vertical"
mode = "vertical"
algorithm = "vertical_lr"

[algorithm]
epochs = {epochs}
patience = 20

[validation]
fraction = 0.2
seed = 1

[[parties]]
name = "bank"
role = "label_holder"
data = "{root}/bank.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "tax_bureau"
role = "feature_holder"
data = "{root}/tax.csv"
id-column = "id"
"""


def _log(line: str) -> None:
    sys.stderr.write(f"[recovery {time.strftime('%H:%M:%S')}] {line}\n")
    sys.stderr.flush()


def _ledgers(run_dir: Path) -> list[Path]:
    from fedrisk.audit.run_files import collect_ledgers

    return collect_ledgers([run_dir])[0]


def _snapshot(run_dir: Path) -> dict[str, dict[int, str]]:
    from fedrisk.audit import read_ledger

    return {str(p): {e.seq: e.entry_hash for e in read_ledger(p).entries} for p in _ledgers(run_dir)}


def _weights(result: dict, run_dir: Path) -> dict[str, np.ndarray]:
    from fedrisk.crypto.signing import SigningIdentity
    from fedrisk.models.bundle import load_model_bundle

    bundles = result.get("bundles") or {name: m["bundle"] for name, m in result["final"].items()}
    out = {}
    for party, bundle in sorted(bundles.items()):
        key = SigningIdentity.load(run_dir / "parties" / party / "identity_ed25519.key").public_key_bytes
        arrays, _ = load_model_bundle(Path(bundle), [key])
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.kind == "f":
                out[f"{party}/{name}"] = array.astype(float)
    return out


def _max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference (NaN in the same place counts as equal; another shape or keys as infinite)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    diffs = [np.where(np.isnan(a[k]) & np.isnan(b[k]), 0.0, np.abs(a[k] - b[k])) for k in a]
    return max((float(np.max(np.nan_to_num(d, nan=np.inf))) for d in diffs if d.size), default=0.0)


def _redone(run_dir: Path, run_id: str, prefix: str) -> list[int]:
    """Rounds in which the coordinator sent one protocol message twice to the same party."""
    from collections import Counter

    from fedrisk.audit import read_ledger

    sent = Counter(
        (e.round, e.step, e.receiver)
        for e in read_ledger(run_dir / "coordinator" / "ledger.sqlite").entries
        if e.run_id == run_id and e.direction == "sent" and e.step.startswith(prefix)
    )
    return sorted({r for (r, _, _), n in sent.items() if n > 1})


def _kill_run(federation, config: dict, run_id: str, *, unit: str, at: int, steps: tuple[str, ...], what: str, party: str | None, delay: float) -> dict:
    """Run ``run_id`` and SIGKILL ``what`` once the coordinator reports ``unit`` ``at`` at one of ``steps``."""
    from fedrisk.audit import verify_ledger, verify_run
    from fedrisk.audit.run_files import collect_ledgers

    run_dir = federation.run_dir
    status_file = run_dir / "coordinator" / "status.json"
    out: dict = {}

    def go() -> None:
        try:
            out["result"] = federation.run(run_config={**config, "fedrisk-run-id": run_id}, timeout=1200)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            out["error"] = str(err).splitlines()[0]

    started = time.perf_counter()
    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and thread.is_alive():
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("run_id") == run_id and status.get("round") == at and status.get("step") in steps:
            break
        time.sleep(0.02)
    time.sleep(delay)
    killed_at = time.perf_counter() - started
    if what == "coordinator":
        federation.kill_coordinator()
    elif what == "superlink":
        federation.kill_superlink()
    else:
        federation.kill_party(str(party), what)
    snapshot = _snapshot(run_dir)
    _log(f"{run_id}: killed {what}{' of ' + party if party else ''} at {unit} {at} ({killed_at:.1f} s in)")
    thread.join()
    seconds = time.perf_counter() - started
    lost = 0
    after = _snapshot(run_dir)
    for path, entries in snapshot.items():
        now = after.get(path, {})
        lost += sum(1 for seq, digest in entries.items() if now.get(seq) != digest)
    ledgers, keys = collect_ledgers([run_dir])
    chain = sum(len(verify_ledger(p, keys)) for p in ledgers)
    cross = verify_run(ledgers, trusted_keys=keys, run_id=run_id)
    unpaired = [f for f in cross if f.field == "message_id"]
    record = {
        "run_id": run_id,
        "killed": what + (f":{party}" if party else ""),
        "at": f"{unit} {at}",
        "resumed": "result" in out,
        "error": out.get("error"),
        "seconds": round(seconds, 1),
        "ledger_entries_lost": lost,
        "chain_findings": chain,
        "unpaired_in_flight": len(unpaired),
        "other_findings": [str(f) for f in cross if f.field != "message_id"],
    }
    return record | {"result": out.get("result")}


def _kill_series(tmp: Path, toml: str, prefix: str, protocol: str, unit: str, kills: list[tuple], delay: float) -> list[dict]:
    """Two uninterrupted runs (the base, and the reference noise between them), then one run per kill.

    ``kills``: ``(what, party, at, steps)`` — kill ``what`` (of ``party``) at ``unit`` ``at``
    once a step in ``steps`` is under way.
    """
    from fedrisk.federation.federation_file import load_federation_file
    from fedrisk.federation.local import LocalFederation
    from fedrisk.federation.train import party_settings_for, run_config_for

    (tmp / f"{protocol}.toml").write_text(toml)
    fed = load_federation_file(tmp / f"{protocol}.toml")
    run_dir = tmp / protocol
    config = run_config_for(fed)
    records = []
    with LocalFederation(run_dir, party_settings_for(fed, run_dir), config, log=_log) as federation:
        base = federation.run(run_config={**config, "fedrisk-run-id": f"{prefix}-base"}, timeout=1200)
        reference = federation.run(run_config={**config, "fedrisk-run-id": f"{prefix}-reference"}, timeout=1200)
        base_w = _weights(base, run_dir)
        noise = _max_diff(base_w, _weights(reference, run_dir))
        for index, (what, party, at, steps) in enumerate(kills):
            run_id = f"{prefix}-kill-{index}-{what}"
            record = _kill_run(federation, config, run_id, unit=unit, at=at, steps=steps, what=what, party=party, delay=delay)
            result = record.pop("result")
            record["final_model_max_abs_diff"] = _max_diff(base_w, _weights(result, run_dir)) if result else None
            record["rounds_redone"] = _redone(run_dir, run_id, f"{steps[0].split('.')[0]}.")
            record["protocol"] = protocol
            record["reference_noise_max_abs_diff"] = noise
            records.append(record)
            _log(json.dumps(record))
    return records


def _horizontal(tmp: Path, quick: bool) -> list[dict]:
    data = shared_data() / "default_credit"
    rows = 1500 if quick else 4000
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        pd.read_csv(data / f"default_credit_homo_{file}.csv").head(rows).to_csv(tmp / f"{name}.csv", index=False)
    train = ("fedavg.train",)
    kills = [("coordinator", None, 2, train), ("party", "bank_b", 3, train), ("supernode", "bank_b", 2, train), ("superlink", None, 3, train)]
    toml = HORIZONTAL.format(root=tmp, rounds=4 if quick else 6)
    return _kill_series(tmp, toml, "h", "fedavg", "round", kills, delay=0.3)


def _hetero_tables(tmp: Path, quick: bool) -> None:
    """The bank's and the tax bureau's tables: overlapping slices of the vertical split."""
    data = shared_data() / "default_credit"
    rows = 1500 if quick else 4000
    pd.read_csv(data / "default_credit_hetero_guest.csv").head(rows).to_csv(tmp / "bank.csv", index=False)
    pd.read_csv(data / "default_credit_hetero_host.csv").iloc[rows // 5 : rows + rows // 5].to_csv(tmp / "tax.csv", index=False)


def _vertical(tmp: Path, quick: bool) -> list[dict]:
    _hetero_tables(tmp, quick)
    kills = [("coordinator", None, 2, ("vlr.residual",)), ("party", "tax_bureau", 2, ("vlr.residual",))]
    if not quick:
        kills += [("party", "bank", 1, ("vlr.products",)), ("supernode", "tax_bureau", 1, ("vlr.residual",))]
    toml = VERTICAL.format(root=tmp, epochs=4 if quick else 6)
    return _kill_series(tmp, toml, "v", "vertical_lr", "epoch", kills, delay=0.2)


SECUREBOOST = (
    VERTICAL.replace('name = "recovery-vertical"', 'name = "recovery-secureboost"')
    .replace('algorithm = "vertical_lr"', 'algorithm = "secureboost"')
    .replace("epochs = {epochs}\npatience = 20", "trees = {trees}\ndepth = 2")
)


def _secureboost(tmp: Path, quick: bool) -> list[dict]:
    _hetero_tables(tmp, quick)
    kills = [("coordinator", None, 5, ("sb.round",)), ("party", "tax_bureau", 5, ("sb.round",))]
    if not quick:
        kills += [("party", "bank", 6, ("sb.bank",))]
    return _kill_series(tmp, SECUREBOOST.format(root=tmp, trees=3), "sb", "secureboost", "round", kills, delay=0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tables, fewer rounds; no label-holder or vertical SuperNode kill")
    parser.add_argument("--only", choices=("horizontal", "vertical", "secureboost"), default=None, help="run one protocol's kills only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fedrisk-recovery-") as tmp:
        if args.only in (None, "horizontal"):
            (Path(tmp) / "h").mkdir()
            records += _horizontal(Path(tmp) / "h", args.quick)
        if args.only in (None, "vertical"):
            (Path(tmp) / "v").mkdir()
            records += _vertical(Path(tmp) / "v", args.quick)
        if args.only in (None, "secureboost"):
            (Path(tmp) / "sb").mkdir()
            records += _secureboost(Path(tmp) / "sb", args.quick)
    diffs = [r["final_model_max_abs_diff"] for r in records if r["final_model_max_abs_diff"] is not None]
    redone = [len(r["rounds_redone"]) for r in records]
    summary = {
        "kills": len(records),
        "resumed": sum(1 for r in records if r["resumed"]),
        "final_model_max_abs_diff": max(diffs) if diffs else None,
        "reference_noise_max_abs_diff": max(r["reference_noise_max_abs_diff"] for r in records) if records else None,
        "ledger_entries_lost": sum(r["ledger_entries_lost"] for r in records),
        "chain_findings": sum(r["chain_findings"] for r in records),
        "rounds_redone": sum(redone),
        "rounds_redone_max_per_kill": max(redone) if redone else 0,
        "unpaired_in_flight": sum(r["unpaired_in_flight"] for r in records),
        "per_kill": records,
        "seconds": round(time.perf_counter() - started, 1),
    }
    sys.stdout.write(json.dumps(summary, sort_keys=True, default=str) + "\n")
    return 0 if summary["resumed"] == summary["kills"] and summary["ledger_entries_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
