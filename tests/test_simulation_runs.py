"""A small version of every shipped scenario runs end to end; same scenario and seed, same metrics.

Each run is the scenario's ``[quick]`` version (``fedrisk simulate --quick``)
through the real ServerApp and ClientApps in one process.  Reproducibility:
plaintext aggregation is deterministic, so two runs agree bit for bit on
every metric and byte count; CKKS encryption draws fresh randomness, so
encrypted runs agree to within its noise: the decrypted global weights differ
by ~1e-7, which float32 local training carries into the next round (measured:
losses ~1e-6 relative, AUC ~1e-6; asserted within 1e-4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedrisk.simulation import load_scenario
from fedrisk.simulation.metrics import DETERMINISTIC_ROUND_COLUMNS, read_csv
from fedrisk.simulation.runner import run_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "simulations"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Quick runs, done once per module and shared by the tests below."""
    cache: dict[str, object] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(name: str, **overrides):
        key = name + json.dumps(overrides, sort_keys=True)
        if key not in cache:
            scenario = load_scenario(SCENARIOS / f"{name}.toml", quick=True)
            # The lab's default engine (Ray, when installed, is optional and never needed here).
            for dotted, value in {"scenario.engine": "inprocess", **overrides}.items():
                scenario = scenario.with_value(dotted, value, keep_sweep=True)
            cache[key] = run_scenario(scenario, runs_dir=root)
        return cache[key]

    return get


def _check_run_folder(run) -> None:
    folder = run.run_dir
    for name in ("metrics_rounds.csv", "comparison.csv", "summary.json", "scenario.resolved.toml", "versions.json"):
        assert (folder / name).is_file(), name
    for name in ("auc_vs_round.png", "bytes_vs_round.png", "seconds_per_round.png"):
        assert (folder / "plots" / name).read_bytes()[:8] == PNG, name
    versions = json.loads((folder / "versions.json").read_text())
    for key in ("fedrisk", "flwr", "tenseal", "torch", "numpy", "python"):
        assert versions[key], key
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ok"] and summary["run_id"] == folder.name
    rows = read_csv(folder / "metrics_rounds.csv")
    for outcome in run.outcomes:
        mine = [r for r in rows if r["point"] == outcome.point.label]
        assert len(mine) == outcome.summary["rounds"] >= 1
        assert all(0.0 < float(r["val_auc"]) < 1.0 and int(r["bytes"]) > 0 for r in mine)
    kinds = {r["kind"] for r in read_csv(folder / "comparison.csv")}
    assert kinds == {"federated", "party alone", "centralised"}


def test_ten_banks_noniid_runs(runs):
    run = runs("ten_banks_noniid")
    _check_run_folder(run)
    outcome = run.outcomes[0]
    assert outcome.result["aggregation"] == "ckks" and len(outcome.result["final"]) == 10
    alone = [r for r in outcome.comparison if r["kind"] == "party alone"]
    assert len(alone) == 10
    rates = [s["default_rate"] for s in outcome.shares.values()]
    assert max(rates) - min(rates) > 0.1  # Dirichlet(0.3) label skew really skews


def test_three_party_sme_runs(runs):
    run = runs("three_party_sme")
    _check_run_folder(run)
    outcome = run.outcomes[0]
    assert outcome.result["mode"] == "vertical" and set(outcome.result["intersection"]) == {"tax_bureau", "platform"}
    parties = {r["party"] for r in outcome.comparison if r["kind"] == "party alone"}
    assert parties == {"bank", "tax_bureau", "platform"}
    # The protocol's own bank-only baseline and the lab's agree: same rows, same model.
    bank = next(r for r in outcome.comparison if r["party"] == "bank")
    assert bank["auc"] == pytest.approx(outcome.summary["auc_bank_only_protocol"], abs=0.02)


def test_dropout_stress_runs_and_records_who_dropped(runs):
    run = runs("dropout_stress")
    _check_run_folder(run)
    by_value = {o.point.value: o for o in run.outcomes}
    assert set(by_value) == {0.0, 0.3}
    assert all(r["answered"] == 10 for r in by_value[0.0].rounds)
    for row in by_value[0.3].rounds:
        assert row["answered"] == 7 and len(row["dropped"].split(";")) == 3
    assert by_value[0.3].summary["dropped_total"] == 3 * len(by_value[0.3].rounds)
    assert (run.run_dir / "sweep.csv").is_file() and (run.run_dir / "plots" / "auc_vs_dropout.png").is_file()


def test_dp_sweep_runs_from_the_cli_with_its_accuracy_cost(tmp_path):
    from typer.testing import CliRunner

    from fedrisk.cli import app
    from fedrisk.federation.horizontal import gaussian_epsilon

    argv = ["simulate", str(SCENARIOS / "dp_sweep.toml"), "--quick", "--json", "--engine", "inprocess", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["sweep"]["parameter"] == "privacy.epsilon"
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "plots" / "auc_vs_epsilon.png").read_bytes()[:8] == PNG
    sweep = {r["value_label"]: r for r in read_csv(run_dir / "sweep.csv")}
    assert set(sweep) == {"4.0", "inf"}
    assert float(sweep["inf"]["auc_cost"]) == 0.0 and sweep["inf"]["epsilon"] == ""
    cost = float(sweep["4.0"]["auc_cost"])
    assert cost == pytest.approx(float(sweep["inf"]["auc_federated"]) - float(sweep["4.0"]["auc_federated"]))
    # The epsilon in the table is the accountant's for the noise the banks used.
    dp = json.loads((Path(summary["points"][0]["folder"]) / "coordinator" / "result.json").read_text())["dp"]
    assert float(sweep["4.0"]["epsilon"]) == pytest.approx(gaussian_epsilon(dp["noise_multiplier"], dp["releases"], dp["delta"]))
    assert math.isclose(float(sweep["4.0"]["epsilon"]), 4.0, rel_tol=1e-9)
    # The printed tables: the comparison and the sweep with its cost column.
    assert "sweep over privacy.epsilon" in result.output and "cost" in result.output


def _metrics(run) -> tuple[list[dict], list[dict]]:
    rows = [{k: r[k] for k in DETERMINISTIC_ROUND_COLUMNS + ("bytes",)} for r in read_csv(run.run_dir / "metrics_rounds.csv")]
    comparison = read_csv(run.run_dir / "comparison.csv")
    return rows, comparison


def test_same_scenario_and_seed_give_the_same_metrics_bit_for_bit_in_plaintext(runs):
    first, second = runs("ten_banks_noniid", **{"encryption.enabled": False}), None
    second = run_scenario(first.scenario, runs_dir=first.run_dir.parent / "again")
    assert _metrics(first) == _metrics(second)  # losses, AUCs, KS, bytes: exact
    assert first.outcomes[0].summary["auc_federated"] == second.outcomes[0].summary["auc_federated"]


def test_encrypted_runs_agree_within_ckks_noise(runs):
    first = runs("ten_banks_noniid")
    second = run_scenario(first.scenario, runs_dir=first.run_dir.parent / "again-ckks")
    a, b = _metrics(first)[0], _metrics(second)[0]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert float(x["val_auc"]) == pytest.approx(float(y["val_auc"]), abs=1e-4)
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-4)
        assert x["answered"] == y["answered"] and x["dropped"] == y["dropped"]
    # Baselines do not touch encryption: exact.
    base = [(r["party"], r["auc"]) for r in _metrics(first)[1] if r["kind"] != "federated"]
    assert base == [(r["party"], r["auc"]) for r in _metrics(second)[1] if r["kind"] != "federated"]


def test_vertical_runs_agree_within_the_protocols_noise(runs):
    first = runs("three_party_sme")
    second = run_scenario(first.scenario, runs_dir=first.run_dir.parent / "again-vertical")
    a, b = _metrics(first)[0], _metrics(second)[0]
    assert [r["round"] for r in a] == [r["round"] for r in b]
    # Round 1 is epoch 0: the all-zero starting model, whose scores tie and whose AUC only
    # orders CKKS noise. From there on the runs agree (measured: within 3e-4).
    for x, y in zip(a[1:], b[1:]):
        assert float(x["val_auc"]) == pytest.approx(float(y["val_auc"]), abs=1e-3)
    assert first.outcomes[0].summary["auc_federated"] == pytest.approx(second.outcomes[0].summary["auc_federated"], abs=1e-3)


def test_engine_selection():
    from fedrisk.errors import ConfigError
    from fedrisk.simulation.engines import ray_available, select_engine

    assert select_engine("inprocess") == "inprocess"
    assert select_engine("auto") == ("ray" if ray_available() else "inprocess")
    if not ray_available():
        with pytest.raises(ConfigError, match=r"scenario.engine: 'ray' needs Flower's Simulation Engine: pip install 'fedrisk\[simulation\]'"):
            select_engine("ray")


def test_flowers_simulation_engine_runs_the_same_apps_when_installed(tmp_path):
    pytest.importorskip("ray", reason="Flower's Simulation Engine (Ray) is optional: pip install 'fedrisk[simulation]'")
    scenario = load_scenario(SCENARIOS / "ten_banks_noniid.toml", quick=True)
    scenario = scenario.with_value("scenario.engine", "ray").with_value("parties.count", 3).with_value("encryption.enabled", False)
    ray_run = run_scenario(scenario, runs_dir=tmp_path / "ray", plots=False)
    local = run_scenario(scenario.with_value("scenario.engine", "inprocess"), runs_dir=tmp_path / "local", plots=False)
    assert ray_run.engine == "ray" and ray_run.ok
    assert _metrics(ray_run)[0] == _metrics(local)[0]  # plaintext: the same numbers on either engine
