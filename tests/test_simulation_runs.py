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

import numpy as np
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
    from fedrisk.parties.alignment import read_alignment_report

    # The coordinator's result has no overlap; the label holder's own report does.
    assert outcome.result["mode"] == "vertical" and "intersection" not in outcome.result
    label_holder = run.run_dir / "points" / outcome.point.folder / "parties" / outcome.result["label_holder"]
    assert set(read_alignment_report(label_holder, outcome.result["run_id"])["intersection"]) == {"tax_bureau", "platform"}
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


#: How many standard deviations of the protocol's noise apart two scores must be before a second
#: run could not order them the other way (a 6σ Gaussian excursion: about 2e-9 per pair).
NOISE_SIGMAS = 6.0


def _momentum_carry(epoch: int) -> float:
    """``Σ_s c_s²``: how the optimiser carries an error injected at each of the first ``epoch`` updates into ``w_epoch``.

    The block-Nesterov step (:mod:`fedrisk.models.vertical_lr`) is ``y = w + β(w − w_prev)``,
    ``β = (t−1)/(t+2)``, then ``w ← y − P(∇/n + λy)``; at update ``u`` (from 0, never restarted:
    the most momentum) ``β = u/(u+3)``. Along a direction without curvature nothing damps an
    error, so its coefficient follows ``c ← c + β(c − c_prev)``: the worst case of the majorised step.
    """
    total = 0.0
    for start in range(epoch):
        before, after = 0.0, 1.0
        for update in range(start + 1, epoch):
            beta = update / (update + 3)
            before, after = after, after + beta * (after - before)
        total += after**2
    return total


class _VerticalLRProbe:
    """Watches one in-process vertical-LR run (observation only: every call returns what the real one returns).

    It keeps the label holder's held-out rows and the scores behind each AUC it reports, and
    each feature holder's standardised block ``Z_k`` and preconditioner
    ``P_k = (K/(4n) Z_kᵀZ_k + λI)⁻¹`` (the module's documented step, rebuilt from the public
    arguments and attributes of ``setup``): what carries the protocol's noise into those scores.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import inspect

        from fedrisk.models import vertical_lr as model

        self.holders: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.scored: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._calls: list | None = None
        real_lh_setup, real_fh_setup = model.LabelHolderLR.setup, model.FeatureHolderLR.setup
        real_receive, real_auc = model.LabelHolderLR.receive_scores, model.auc

        def lh_setup(lh, *args, **kwargs):
            plan = real_lh_setup(lh, *args, **kwargs)
            if hasattr(self, "plan"):
                return plan  # one run per probe: its first label holder
            self.plan = plan
            given = inspect.signature(real_lh_setup).bind(lh, *args, **kwargs).arguments
            held_out = ~np.asarray(plan.train_mask, dtype=bool)
            evaluation = np.zeros(plan.n_rows, dtype=bool) if given.get("eval_mask") is None else np.asarray(given["eval_mask"], dtype=bool)
            self.labels = np.asarray(given["y"]).ravel()
            self.rows = {"val": np.flatnonzero(held_out & ~evaluation), "eval": np.flatnonzero(evaluation)}
            self.flood_std, self.damping = float(lh.flood_std), float(plan.damping)
            return plan

        def fh_setup(fh, *args, **kwargs):
            out = real_fh_setup(fh, *args, **kwargs)
            given = inspect.signature(real_fh_setup).bind(fh, *args, **kwargs).arguments
            plan = given["plan"]
            if plan.fingerprint != getattr(getattr(self, "plan", None), "fingerprint", None):
                return out  # not this run's training
            Z = np.nan_to_num((np.asarray(given["X"], dtype=float) - fh.mean_) / fh.scale_)
            Z[~np.asarray(given["coverage"], dtype=bool)] = 0.0  # uncovered rows contribute 0
            train = Z[np.asarray(plan.train_mask, dtype=bool)]
            P = np.linalg.inv(plan.damping / (4.0 * plan.n_train) * (train.T @ train) + plan.l2 * np.eye(Z.shape[1]))
            self.holders.append((Z, P, plan.n_train))
            return out

        def receive_scores(lh, total, *args, **kwargs):
            self._calls = []
            try:
                return real_receive(lh, total, *args, **kwargs)
            finally:
                self.scored[int(total.epoch)], self._calls = self._calls, None

        def recording_auc(y_true, scores, *args, **kwargs):
            if self._calls is not None:
                self._calls.append((np.asarray(y_true).copy(), np.asarray(scores, dtype=float).copy()))
            return real_auc(y_true, scores, *args, **kwargs)

        monkeypatch.setattr(model.LabelHolderLR, "setup", lh_setup)
        monkeypatch.setattr(model.FeatureHolderLR, "setup", fh_setup)
        monkeypatch.setattr(model.LabelHolderLR, "receive_scores", receive_scores)
        monkeypatch.setattr(model, "auc", recording_auc)

    def value_std(self) -> float:
        """Std of the error on each gradient total the label holder returns to a feature holder, in one run.

        What :mod:`fedrisk.crypto.encrypted_matvec` and :mod:`fedrisk.models.vertical_lr` state:
        the label holder's own Gaussian flooding of every value it returns
        (``LabelHolderLR.flood_std``, default ``DECRYPT_FLOOD_STD``) and the double-precision
        encoding and decoding of values masked up to ``2^MAX_MASK_BITS`` (two ulps there, the
        module's measured worst case; taken as a std although it is a bound). Not counted: the
        feature holder's flooding η, which it subtracts exactly; the encoding of ``X`` at
        ``2^-X_SCALE_BITS``, the same in both runs; the fresh noise of ``[[d]]`` at
        ``2^RESIDUAL_SCALE_BITS``, orders of magnitude below the decoding term.
        """
        from fedrisk.crypto.encrypted_matvec import MAX_MASK_BITS

        return math.hypot(self.flood_std, 2.0 * float(np.spacing(2.0**MAX_MASK_BITS)))

    def _scores(self, epoch: int, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self.rows[which]
        labels = self.labels[rows]
        found = [s for y, s in self.scored.get(epoch, []) if y.shape == labels.shape and np.array_equal(y, labels)]
        assert found, f"the label holder reported no AUC on its {which} rows at epoch {epoch}"
        # receive_scores scores the validation rows first, then (if the epoch improved) the evaluation rows
        return rows, labels, found[0] if which == "val" else found[-1]

    def auc_tolerance(self, epoch: int, which: str = "val") -> float:
        """How far another run's AUC at ``epoch`` may be from this one's through the protocol's noise alone.

        AUC counts the (default, non-default) pairs in order: it moves in steps of 1/(P·N). Two
        runs differ only by the noise on the gradient totals (:meth:`value_std`, independent per
        value and run); an error ε on holder k's totals at an update moves its weights by
        ``P_k ε / n`` (n training rows), which the momentum carries on (:func:`_momentum_carry`),
        so the difference between two runs in ``z_i − z_j`` has std
        ``σ_ij = value_std · sqrt(2 · carry) · sqrt(Σ_k ‖P_k (Z_k[i] − Z_k[j])‖²) / n``.
        The label holder's own block feels that noise only through the residuals (σ' ≤ 1/4, and
        its step divides by K/4): at most 1/K of the holders' RMS, added as a floor for rows no
        feature holder covers. Only pairs closer than NOISE_SIGMAS·σ_ij can swap.
        """
        rows, labels, z = self._scores(epoch, which)
        pos, neg = rows[labels == 1], rows[labels == 0]
        gaps = z[labels == 1][:, None] - z[labels == 0][None, :]
        pair_var = np.zeros(gaps.shape)
        row_var = np.zeros(rows.size)
        for Z, P, n in self.holders:
            pair_var += np.sum(((Z[pos][:, None, :] - Z[neg][None, :, :]) @ P) ** 2, axis=-1) / n**2
            row_var += np.sum((Z[rows] @ P) ** 2, axis=-1) / n**2
        floor = 2.0 * np.mean(row_var) / self.damping**2
        sd = self.value_std() * math.sqrt(2.0 * _momentum_carry(epoch)) * np.sqrt(pair_var + floor)
        return np.count_nonzero(np.abs(gaps) <= NOISE_SIGMAS * sd) / gaps.size


def test_vertical_runs_agree_within_the_protocols_noise(runs, monkeypatch):
    first = runs("three_party_sme")
    probe = _VerticalLRProbe(monkeypatch)  # watches the second run (the in-process engine runs every party here)
    second = run_scenario(first.scenario, runs_dir=first.run_dir.parent / "again-vertical")
    a, b = _metrics(first)[0], _metrics(second)[0]
    assert [r["round"] for r in a] == [r["round"] for r in b]
    # Round 1 is epoch 0: the all-zero starting model, whose scores tie and whose AUC only
    # orders CKKS noise. From there on the AUCs differ only where the protocol's noise can swap
    # a (default, non-default) pair: the quick run holds out ~7 defaults, so one pair is ~1e-3.
    for x, y in zip(a[1:], b[1:]):
        epoch = int(y["round"]) - 1
        tolerance = probe.auc_tolerance(epoch)
        assert abs(float(x["val_auc"]) - float(y["val_auc"])) <= tolerance, (epoch, x["val_auc"], y["val_auc"], tolerance)
    # The reported AUC is the best epoch's, on evaluation rows early stopping never saw.
    best = int(second.outcomes[0].result["final"]["best_epoch"])
    assert int(first.outcomes[0].result["final"]["best_epoch"]) == best
    auc_a, auc_b = first.outcomes[0].summary["auc_federated"], second.outcomes[0].summary["auc_federated"]
    tolerance = probe.auc_tolerance(best, "eval" if probe.rows["eval"].size else "val")
    assert abs(auc_a - auc_b) <= tolerance, (auc_a, auc_b, tolerance)


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
