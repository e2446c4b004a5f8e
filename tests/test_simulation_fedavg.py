"""Dropout tolerance, local differential privacy and stragglers in horizontal FedAvg.

The fedrisk ServerApp and ClientApps run in one process over
:class:`~fedrisk.federation.inprocess.InProcessGrid`; assertions are on the
coordinator's result and on the actual messages (the grid's tap).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedrisk.errors import ConfigError, PartyUnavailableError
from fedrisk.wire.exchange import read_content
from fedrisk.federation.horizontal import (
    calibrate_noise_multiplier,
    gaussian_epsilon,
    rdp_epsilon,
)
from fedrisk.protocols.fedavg import FedAvgConfig
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings
from fedrisk.data.synthetic import BANK_SCHEMA, generate_sme_data


@pytest.fixture(scope="module")
def bank_tables(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """Ten banks' shares of one synthetic loan book, and a common hold-out."""
    root = tmp_path_factory.mktemp("banks")
    frame = generate_sme_data(6000, seed=3).bank.to_dataframe()
    holdout = root / "holdout.csv"
    frame.iloc[:1500].to_csv(holdout, index=False)
    shares = np.array_split(np.arange(1500, len(frame)), 10)
    paths = []
    for i, rows in enumerate(shares):
        paths.append(root / f"bank_{i}.csv")
        frame.iloc[rows].to_csv(paths[-1], index=False)
    return root, paths, holdout


def _parties(tmp_path: Path, paths: list[Path], holdout: Path, count: int) -> list[PartySettings]:
    return [
        PartySettings(f"bank_{i}", "bank", str(p), BANK_SCHEMA.to_dict(), str(tmp_path / "parties" / f"bank_{i}"), {"table": str(holdout)})
        for i, p in enumerate(paths[:count])
    ]


def _run(tmp_path: Path, bank_tables, *, count: int = 10, tap=None, grid_hook=None, **config) -> dict:
    _, paths, holdout = bank_tables
    parties = _parties(tmp_path, paths, holdout, count)
    run_config = {
        "mode": "horizontal",
        "aggregation": "plain",
        "num-rounds": 3,
        "model": "logistic",
        "ledger": False,
        "run-dir": str(tmp_path),
        "parties": ",".join(p.name for p in parties),
        "fedrisk-run-id": "sim",
        "party-timeout": 60.0,
        **config,
    }
    grid = InProcessGrid(parties, tap=tap, run_config=run_config)
    if grid_hook is not None:
        grid_hook(grid)
    try:
        server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    finally:
        from fedrisk.simulation.engines import forget_party_runtimes

        forget_party_runtimes(parties)
    return json.loads((tmp_path / "coordinator" / "result.json").read_text())


def _messages(seen, direction: str, step: str) -> list:
    out = []
    for d, node, msg in seen:
        if d != direction:
            continue
        exchange = read_content(msg.content)
        if exchange.header.step == step:
            out.append((node, exchange))
    return out


# -- dropout ---------------------------------------------------------------------


def test_fedavg_continues_when_30_percent_of_banks_drop_each_round(tmp_path, bank_tables):
    seen = []
    result = _run(tmp_path, bank_tables, tap=lambda d, n, m: seen.append((d, n, m)), **{"sim-dropout": 0.3, "seed": 5})
    assert result["status"] == "ok"
    assert [r["answered"] for r in result["rounds"]] == [7, 7, 7]
    for row in result["rounds"]:
        assert len(row["dropped"]) == 3 and all("simulated" in row["drop_reasons"][b] for b in row["dropped"])
    assert len({tuple(r["dropped"]) for r in result["rounds"]}) > 1  # drawn anew each round
    # The aggregate is the sum over exactly the banks that answered (plain mode shows it).
    updates = _messages(seen, "to_coordinator", "fedavg.update")
    sent = _messages(seen, "to_party", "fedavg.train")
    for round_ in (1, 2):
        answered = [e for _, e in updates if e.header.round == round_]
        assert len(answered) == 7
        expected = np.sum([np.frombuffer(e.blob("vector"), "<f8") for e in answered], axis=0)
        aggregate = next(e for _, e in sent if e.header.round == round_ + 1)
        np.testing.assert_array_equal(np.frombuffer(aggregate.blob("aggregate"), "<f8"), expected)
        # ...and it divides to a weighted mean of those banks' models only.
        assert math.isclose(expected[-1], sum(np.frombuffer(e.blob("vector"), "<f8")[-1] for e in answered))
    # Every bank, dropped or not, ends with the model and a validation AUC.
    assert len(result["final"]) == 10 and all("val_auc" in m for m in result["final"].values())


def test_a_bank_offline_for_one_round_is_dropped_then_rejoins(tmp_path, bank_tables):
    state = {}

    def tap(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step == "fedavg.train":
            if header.round == 1:
                state["grid"].offline.add(1003)  # bank_3 misses round 1 (and the pooled stats with it)
            else:
                state["grid"].offline.discard(1003)

    seen = []
    result = _run(
        tmp_path,
        bank_tables,
        count=4,
        tap=lambda d, n, m: (tap(d, n, m), seen.append((d, n, m))),
        grid_hook=lambda g: state.update(grid=g),
    )
    assert result["rounds"][0]["dropped"] == ["bank_3"] and "offline" in result["rounds"][0]["drop_reasons"]["bank_3"]
    assert result["rounds"][1]["answered"] == 4 and result["rounds"][1]["dropped"] == []
    # bank_3's first round after its absence carried the pooled statistics it missed.
    to_bank_3 = [e for node, e in _messages(seen, "to_party", "fedavg.train") if e.header.receiver == "bank_3"]
    assert "stats" in to_bank_3[1].blobs and "aggregate" in to_bank_3[1].blobs
    assert "stats" not in to_bank_3[2].blobs


def test_fedavg_fails_clearly_when_fewer_than_min_parties_answer(tmp_path, bank_tables):
    with pytest.raises(PartyUnavailableError, match=r"round 1: only 1 of 3 banks answered, fewer than min-parties 2") as err:
        _run(tmp_path, bank_tables, count=3, **{"sim-dropout": 0.5})
    assert "\n" not in str(err.value) and "simulated" in str(err.value)
    result = json.loads((tmp_path / "coordinator" / "result.json").read_text())
    assert result["status"] == "error" and "min-parties" in result["error"]


def test_min_parties_is_checked_against_the_federation(tmp_path, bank_tables):
    with pytest.raises(ConfigError, match="min-parties is 5 but the federation has 3 banks"):
        _run(tmp_path, bank_tables, count=3, **{"min-parties": 5})
    for bad, message in (
        ({"min_parties": 1}, "min-parties must be >= 2"),
        ({"sim_dropout": 1.0}, r"sim-dropout must be in \[0, 1\)"),
        ({"dp_epsilon": 1.0, "dp_delta": 0.0}, r"dp-delta must be in \(0, 1\)"),
        ({"dp_epsilon": -1.0}, "dp-epsilon must be > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            FedAvgConfig(**bad)
    assert FedAvgConfig.options_from_run_config({"min-parties": 3, "dp-epsilon": "inf", "num-rounds": 2}) == {"min_parties": 3, "dp_epsilon": math.inf}


def test_a_straggler_answers_late_within_the_deadline(tmp_path, bank_tables):
    result = _run(tmp_path, bank_tables, count=4, **{"sim-stragglers": 0.25, "sim-straggler-delay": 0.4, "num-rounds": 2})
    for row in result["rounds"]:
        assert row["answered"] == 4 and row["dropped"] == [] and len(row["stragglers"]) == 1
        assert row["seconds"] >= 0.4


# -- differential privacy -----------------------------------------------------------


def _independent_epsilon(z: float, releases: int, delta: float) -> float:
    """ε of T Gaussian releases (sensitivity 2C, std zC), straight from the GDP formula with scipy."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu = 2.0 * math.sqrt(releases) / z

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 500.0, xtol=1e-12)


def test_accountant_matches_the_gaussian_dp_formula_and_inverts():
    for eps, delta, rounds in ((0.5, 1e-5, 10), (2.0, 1e-6, 3), (8.0, 1e-5, 20), (64.0, 1e-5, 10)):
        z = calibrate_noise_multiplier(eps, delta, rounds)
        assert gaussian_epsilon(z, rounds, delta) == pytest.approx(eps, rel=1e-9)
        assert _independent_epsilon(z, rounds, delta) == pytest.approx(eps, rel=1e-7)
        assert rdp_epsilon(z, rounds, delta) >= eps  # RDP is an upper bound, never tighter
    z = calibrate_noise_multiplier(4.0, 1e-5, 10)
    assert gaussian_epsilon(z, 5, 1e-5) < 4.0 < gaussian_epsilon(z, 20, 1e-5)  # fewer releases, less spent
    assert calibrate_noise_multiplier(1.0, 1e-5, 10) > calibrate_noise_multiplier(4.0, 1e-5, 10)


def test_accountant_agrees_with_flowers_rdp_accountant_when_installed():
    pytest.importorskip("dp_accounting", reason="Flower's RdpAccountant needs flwr[dp] (dp-accounting)")
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    z, rounds, delta = calibrate_noise_multiplier(4.0, 1e-5, 10), 10, 1e-5
    accountant = RdpAccountant(PrivacyConfig(delta, 1, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION))
    # Flower's noise multiplier is relative to the sensitivity (2C here).
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=z / 2.0, sample_size=1, population_size=1), count=rounds)
    assert accountant.get_epsilon(delta) == pytest.approx(rdp_epsilon(z, rounds, delta), rel=0.02)


def test_dp_epsilon_reported_matches_the_accountant_and_noise_is_added(tmp_path, bank_tables):
    common = {"num-rounds": 2, "model": "mlp", "hidden-units": 16, "seed": 4}
    dp = {"dp-epsilon": 4.0, "dp-delta": 1e-5, "dp-clip": 10.0, "dp-noise-seed": 1}
    runs = {}
    for label, extra in (("plain", {}), ("dp", dp), ("dp_again", dp)):
        seen = []
        folder = tmp_path / label
        result = _run(folder, bank_tables, count=4, tap=lambda d, n, m, seen=seen: seen.append((d, n, m)), **common, **extra)
        runs[label] = (
            result,
            {e.header.sender: np.frombuffer(e.blob("vector"), "<f8") for _, e in _messages(seen, "to_coordinator", "fedavg.update") if e.header.round == 1},
        )

    result = runs["dp"][0]
    report = result["dp"]
    assert runs["plain"][0]["dp"] == {}
    assert report["releases"] == 2 and report["delta"] == 1e-5 and report["clip"] == 10.0
    z = report["noise_multiplier"]
    assert z == pytest.approx(calibrate_noise_multiplier(4.0, 1e-5, 2))
    assert report["epsilon"] == pytest.approx(_independent_epsilon(z, 2, 1e-5), rel=1e-7)
    assert report["epsilon"] == pytest.approx(4.0, rel=1e-9) and report["epsilon_rdp"] > report["epsilon"]
    # Noise is really in the updates: same seed, same data, the DP updates differ from the plain ones
    # by Gaussian noise of std z·C per weight (C = 10 never binds here, so the difference is all noise).
    for bank, plain in runs["plain"][1].items():
        noisy = runs["dp"][1][bank]
        weight = plain[-1]
        assert noisy[-1] == weight
        diff = (noisy[:-1] - plain[:-1]) / weight
        assert np.std(diff) == pytest.approx(z * 10.0, rel=0.1)
        assert abs(np.mean(diff)) < 4 * z * 10.0 / math.sqrt(diff.size)
        # Seeded noise (simulations only) is reproducible.
        np.testing.assert_array_equal(noisy, runs["dp_again"][1][bank])
