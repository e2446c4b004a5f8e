"""``--deployment`` of benchmarks/secureboost.py and benchmarks/vertical_lr.py, without deploying anything.

The deployed runs take minutes; these checks take a second: both scripts take the
flag, the deployed bank's validation split is the in-process hold-out (so the two
figures come from the same rows), and the keys the issue names are in the JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deployed_run(tmp_path: Path, result: dict):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    from _deployment import DeployedRun

    return DeployedRun(result, tmp_path, "bench", seconds_start=3.0, seconds_run=40.0)


@pytest.mark.parametrize("name", ["secureboost", "vertical_lr"])
def test_both_benchmarks_take_the_deployment_flag(name, capsys):
    with pytest.raises(SystemExit) as done:
        _load(name).main(["--help"])
    assert done.value.code == 0
    assert "--deployment" in capsys.readouterr().out


def test_the_deployed_bank_validates_on_the_in_process_hold_out(default_credit_dir):
    from fedrisk.data.datasplit import training_mask

    bench = _load("secureboost")
    for rows in (None, 8000):
        guest, _ = bench.load(default_credit_dir, rows)
        _, test = train_test_split(guest.index.to_numpy(), test_size=0.2, stratify=guest["y"], random_state=42)
        held_out = ~training_mask(guest["y"].to_numpy(), bench.DEPLOYED_VALIDATION)
        assert set(guest.index[held_out]) == set(test)


def test_secureboost_json_keys(tmp_path):
    bench = _load("secureboost")
    run = _deployed_run(tmp_path, {"trees": [{"seconds": 1.0}] * 3, "rounds": 13, "psi_seconds": 2.0, "seconds": 30.0, "bytes_total": 9})
    timing = {"exchanges": 27, "seconds": 24.0, "seconds_in_parties": 10.0, "seconds_transport": 13.0}
    out = bench.deployment_figures({"run": run, "timing": timing, "handlers": {"bank": 4.0}, "auc": 0.77}, {"seconds_total": 12.0})
    assert {"seconds_total_deployment", "deployment_ratio", "auc_deployment", "exchanges", "seconds_per_exchange"} <= set(out)
    assert out["deployment_ratio"] == 2.0 and out["exchanges"] == 27 and out["seconds_per_exchange"] == pytest.approx(24.0 / 27, abs=1e-4)
    json.dumps(out, allow_nan=False)


def test_vertical_lr_json_keys(tmp_path):
    bench = _load("vertical_lr")
    epochs = [{"epoch": e, "seconds": 2.0, "bytes": 100} for e in range(3)] + [{"epoch": 3, "seconds": 0.5, "bytes": 10}]
    run = _deployed_run(tmp_path, {"epochs": epochs, "final": {"best_epoch": 3}, "psi_seconds": 2.0, "seconds": 30.0})
    timing = {"exchanges": 16, "seconds": 9.0}
    out = bench.deployment_figures({"run": run, "timing": timing, "handlers": {}, "auc": 0.8}, {"epoch_s": 1.0})
    assert {"epoch_s_deployment", "deployment_ratio", "auc_deployment"} <= set(out)
    # the label holder's stopping row (no residual, no products) is not an epoch
    assert out["epoch_s_deployment"] == 2.0 and out["deployment_ratio"] == 2.0 and out["epochs_deployment"] == 3
    json.dumps(out, allow_nan=False)
    assert np.isfinite(out["seconds_per_exchange"])
