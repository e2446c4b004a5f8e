"""Scenario files: every shipped one validates; bad ones fail with one line naming the key."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedrisk.errors import ConfigError
from fedrisk.simulation import load_scenario
from fedrisk.simulation.partition import dirichlet_label_partition, iid_partition, quantity_skew_partition
from fedrisk.simulation.recording import write_resolved_scenario
from fedrisk.simulation.sweep import sweep_points

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "simulations").glob("*.toml"))
REQUIRED = {"three_party_sme", "ten_banks_noniid", "dropout_stress", "dp_sweep"}


def test_the_four_scenarios_ship():
    assert REQUIRED <= {p.stem for p in SHIPPED}
    assert (REPO / "simulations" / "README.md").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_shipped_scenario_validates_full_and_quick(path):
    full, quick = load_scenario(path), load_scenario(path, quick=True)
    assert full.name == path.stem == quick.name and quick.quick
    assert tomllib.loads(path.read_text()).get("quick"), "every shipped scenario has a [quick] version"
    for scenario in (full, quick):
        points = sweep_points(scenario)
        assert points and all(p.scenario.sweep is None for p in points)
    assert quick.rounds <= full.rounds


def test_shipped_scenarios_tell_their_story():
    ten = load_scenario(REPO / "simulations" / "ten_banks_noniid.toml")
    assert ten.mode == "horizontal" and ten.get("parties.count") == 10
    assert ten.get("partitioning.scheme") == "dirichlet" and ten.get("partitioning.alpha") == 0.3
    three = load_scenario(REPO / "simulations" / "three_party_sme.toml")
    assert three.mode == "vertical" and three.party_names == ["bank", "tax_bureau", "platform"]
    dropout = load_scenario(REPO / "simulations" / "dropout_stress.toml")
    assert dropout.get("faults.dropout") == 0.3
    dp = load_scenario(REPO / "simulations" / "dp_sweep.toml")
    assert dp.sweep["parameter"] == "privacy.epsilon" and math.isinf(dp.sweep["reference"])
    assert len(dp.sweep["values"]) >= 4 and dp.get("privacy.enabled")


def test_the_resolved_scenario_reloads_to_the_same_values(tmp_path):
    for path in SHIPPED:
        scenario = load_scenario(path, quick=True)
        folder = tmp_path / path.stem
        folder.mkdir()
        written = write_resolved_scenario(scenario, folder)
        again = load_scenario(written)
        assert again.values == scenario.values and again.sweep == scenario.sweep


BASE = """
[scenario]
name = "bad"
mode = "horizontal"
"""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[partitioning]\nscheme = 'dirichlet'\nalpha = -1", "partitioning.alpha: must be > 0, got -1"),
        ("[partitioning]\nalfa = 0.3", "partitioning.alfa: unknown key (expected one of scheme, alpha, min-rows, coverage)"),
        ("[partitions]\nalpha = 0.3", "partitions: unknown section"),
        ("[data]\nsource = 'csv'\npath = 'no/such/table.csv'", "data.path: file not found: "),
        ("[data]\nsource = 'csv'", 'data.path: required when data.source = "csv"'),
        ("[algorithm]\nrounds = 'ten'", "algorithm.rounds: expected an integer, got 'ten'"),
        ("[algorithm]\nrounds = 0", "algorithm.rounds: must be in [1, 1000], got 0"),
        ("[algorithm]\nepochs = 5", "algorithm.epochs: applies to vertical scenarios only (scenario.mode is horizontal)"),
        ("[parties]\ncount = 1", "parties.count: must be in [2, 128], got 1"),
        ("[privacy]\nenabled = true\ndelta = 1.5", "privacy.delta: must be in (0, 1), got 1.5"),
        ("[privacy]\nenabled = true\nepsilon = 0", "privacy.epsilon: must be > 0 (inf = no DP), got 0"),
        ("[faults]\ndropout = 1.0", "faults.dropout: must be in [0, 1), got 1.0"),
        ("[faults]\ndropout = 0.5", "faults.dropout: 0.5 of 3 banks leaves 1 per round, fewer than faults.min-parties = 2"),
        ("[faults]\nmin-parties = 4", "faults.min-parties: 4 exceeds parties.count = 3"),
        ("[encryption]\nenabled = 'yes'", "encryption.enabled: expected true or false, got 'yes'"),
        ("[sweep]\nparameter = 'partitioning.alpha'\nvalues = [0.3, -1]", "sweep.values[1]: must be > 0, got -1"),
        ("[sweep]\nparameter = 'privacy.epsilon'\nvalues = [1.0]", "sweep.parameter: sweeping privacy.epsilon needs privacy.enabled = true"),
        ("[sweep]\nparameter = 'partitioning.beta'\nvalues = [1]", "sweep.parameter: 'partitioning.beta' is not a scenario key"),
        ("[sweep]\nparameter = 'partitioning.alpha'\nvalues = [0.1, 1.0]\nreference = 0.5", "sweep.reference: 0.5 is not one of sweep.values"),
        ("[quick]\nalgorithm = { roundz = 2 }", "quick.algorithm.roundz: unknown key"),
    ],
)
def test_bad_horizontal_scenarios_fail_with_one_line_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path, quick=True)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message), text


VERTICAL = """
[scenario]
name = "bad_vertical"
mode = "vertical"
"""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[partitioning]\ncoverage = { tax_bureau = 1.5 }", "partitioning.coverage.tax_bureau: must be in [0, 1], got 1.5"),
        ("[partitioning]\ncoverage = { customs = 0.5 }", "partitioning.coverage.customs: not a feature holder of this scenario"),
        ("[parties]\nnames = ['bank', 'customs']", "parties.names: 'customs' is not a synthetic party"),
        ("[parties]\nnames = ['bank']", "parties.names: a vertical federation needs the label holder and at least one feature holder"),
        ("[encryption]\nenabled = false", "encryption.enabled: vertical_lr always encrypts"),
        ("[privacy]\nenabled = true", "privacy.enabled: applies to horizontal scenarios only"),
        ("[algorithm]\nname = 'fedavg'", "algorithm.name: fedavg does not run in vertical scenarios"),
        ("[data]\nsource = 'csv'\ntables = { bank = 'missing.csv' }", "data.tables.bank: file not found: "),
        ("[scenario]\nmode = 'diagonal'", None),
    ],
)
def test_bad_vertical_scenarios_fail_with_one_line_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    if toml.startswith("[scenario]"):
        path.write_text("[scenario]\nname = 'x'\nmode = 'diagonal'\n")
        message = "scenario.mode: must be one of horizontal, vertical, got 'diagonal'"
    else:
        path.write_text(VERTICAL + toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(message), str(err.value)


def test_file_level_problems_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="scenario file not found"):
        load_scenario(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[scenario\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML") as err:
        load_scenario(broken)
    assert "\n" not in str(err.value)
    nameless = tmp_path / "nameless.toml"
    nameless.write_text("[scenario]\nmode = 'horizontal'\n")
    with pytest.raises(ConfigError, match="scenario.name: missing"):
        load_scenario(nameless)


def test_csv_sources_resolve_relative_to_the_scenario(tmp_path, default_credit_dir):
    path = tmp_path / "real.toml"
    path.write_text(BASE + f'[data]\nsource = "csv"\npath = "{default_credit_dir / "default_credit_homo_guest.csv"}"\n' + 'test-path = "holdout.csv"\n')
    (tmp_path / "holdout.csv").write_text("id,y\n")
    scenario = load_scenario(path)
    assert scenario.get("data.test-path") == str((tmp_path / "holdout.csv").resolve())


def test_the_cli_reports_a_bad_scenario_in_one_line_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from fedrisk.cli import app

    path = tmp_path / "bad.toml"
    path.write_text(BASE + "[partitioning]\nscheme = 'dirichlet'\nalpha = -1\n")
    result = CliRunner().invoke(app, ["simulate", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: bad.toml: partitioning.alpha: must be > 0, got -1"]
    help_text = CliRunner().invoke(app, ["simulate", "--help"]).output
    assert "--quick" in help_text and "--json" in help_text and "--runs-dir" in help_text


# -- partitions ---------------------------------------------------------------------


def _check_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert joined.size == n and np.unique(joined).size == n


def test_partitions_are_disjoint_covering_and_seeded():
    labels = (np.random.default_rng(0).random(5000) < 0.1).astype(int)
    for make in (
        lambda rng: iid_partition(labels.size, 10, rng),
        lambda rng: dirichlet_label_partition(labels, 10, 0.3, rng, min_rows=50),
        lambda rng: quantity_skew_partition(labels.size, 10, 1.0, rng, min_rows=50),
    ):
        a, b = make(np.random.default_rng(1)), make(np.random.default_rng(1))
        _check_disjoint_cover(a, labels.size)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert min(p.size for p in a) >= 50


def test_dirichlet_alpha_controls_label_skew():
    labels = (np.random.default_rng(0).random(20000) < 0.1).astype(int)

    def spread(alpha: float) -> float:
        parts = dirichlet_label_partition(labels, 10, alpha, np.random.default_rng(2), min_rows=20)
        return float(np.std([labels[p].mean() for p in parts]))

    assert spread(0.1) > 3 * spread(100.0)
    iid = iid_partition(labels.size, 10, np.random.default_rng(2))
    assert max(p.size for p in iid) - min(p.size for p in iid) <= 1


def test_impossible_partitions_say_which_key_to_change():
    labels = np.zeros(100, dtype=int)
    with pytest.raises(ConfigError, match="partitioning.min-rows: 10 banks x 20 rows needs 200 rows"):
        iid_partition(100, 10, np.random.default_rng(0), min_rows=20)
    with pytest.raises(ConfigError, match="partitioning.alpha"):
        dirichlet_label_partition(labels, 10, 0.01, np.random.default_rng(0), min_rows=10)
