"""Points scorecard (fedrisk.models.points): per-party points tables of the federated WOE scorecard.

Real default-credit rows, trained once over the real encrypted protocols (BFV WOE
counts, CKKS vertical LR); the tables must reproduce the trained model's log-odds on
the points scale exactly, and each party's table and bundle must hold its own
features only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedrisk.cli import app
from fedrisk.cli.scorecard import DEFAULT_CREDIT_BANK, DEFAULT_CREDIT_HOLDER
from fedrisk.models.points import render_points_table
from fedrisk.crypto.signing import SigningIdentity
from fedrisk.errors import ConfigError, DataValidationError
from fedrisk.models.bundle import load_model_bundle, write_model_bundle
from fedrisk.models.points import PartyPoints, ScoreScale, train_points_scorecard

BANK, TAX = "bank", "tax_bureau"
ROWS = 4000


def _tables(folder, start: int, stop: int, cover: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    guest = pd.read_csv(folder / "default_credit_hetero_guest.csv").set_index("id").iloc[start:stop]
    host = pd.read_csv(folder / "default_credit_hetero_host.csv").set_index("id").loc[guest.index]
    guest.columns = ["y", *DEFAULT_CREDIT_BANK]  # real names: no name is shared by both parties
    host.columns = DEFAULT_CREDIT_HOLDER
    rng = np.random.default_rng(seed)
    host.loc[rng.random(len(host)) < 0.05, "LIMIT_BAL"] = np.nan  # enough NaN for a missing bin of its own
    host.loc[rng.random(len(host)) < 0.004, "AGE"] = np.nan  # too few: NaN joins a bin
    return guest, host[rng.random(len(host)) < cover]  # the tax bureau knows part of the bank's SMEs


@pytest.fixture(scope="module")
def trained(default_credit_dir):
    bank, tax = _tables(default_credit_dir, 0, ROWS, 0.9, seed=1)
    card, woe, lr = train_points_scorecard(bank, {TAX: tax}, min_bin_size=50, max_epochs=15)
    fresh_bank, fresh_tax = _tables(default_credit_dir, ROWS, ROWS + 1500, 0.8, seed=2)  # rows the model never saw
    return card, woe, lr, (bank, tax), (fresh_bank, fresh_tax)


def _log_odds(woe, lr, bank: pd.DataFrame, tax: pd.DataFrame) -> np.ndarray:
    """The trained LR's log-odds of default on the parties' WOE columns (each transformed by its owner)."""
    Wb = pd.DataFrame(woe.label_holder_.own_model_.transform(bank[DEFAULT_CREDIT_BANK].to_numpy()), columns=DEFAULT_CREDIT_BANK, index=bank.index)
    Wt = pd.DataFrame(woe.feature_holders_[TAX].transform(tax[DEFAULT_CREDIT_HOLDER].to_numpy()), columns=DEFAULT_CREDIT_HOLDER, index=tax.index)
    return lr.decision_function(Wb, {TAX: Wt}, secure=False)


def test_score_is_the_models_log_odds_on_the_points_scale(trained):
    card, woe, lr, seen, fresh = trained
    scale = card.scale
    assert scale.factor == pytest.approx(20 / math.log(2), abs=1e-12)
    assert scale.offset == pytest.approx(600 - 20 / math.log(2) * math.log(50), abs=1e-12)
    for bank, tax in (seen, fresh):
        parts = card.partial_points({BANK: bank, TAX: tax})
        score = card.score({BANK: bank, TAX: tax})
        np.testing.assert_array_equal(score, parts.sum(axis=1).to_numpy())  # the score is the parties' points, nothing else
        z = _log_odds(woe, lr, bank, tax)
        np.testing.assert_allclose(score, scale.offset - scale.factor * z, rtol=0, atol=1e-9)
        uncovered = ~bank.index.isin(tax.index)
        assert uncovered.any() and np.all(parts.loc[uncovered, TAX] == 0.0)  # no row at the tax bureau: 0 points
    # higher score, lower risk: the score orders rows against the default rate
    score, y = card.score({BANK: seen[0], TAX: seen[1]}), seen[0]["y"].to_numpy()
    assert y[score <= np.quantile(score, 0.2)].mean() > 2 * y[score >= np.quantile(score, 0.8)].mean()


def test_the_scale_is_the_scoring_policys(trained):
    from fedrisk.scoring.policy import load_policy

    card, woe, lr, seen, _ = trained
    policy = load_policy()
    assert ScoreScale.from_policy(policy) == card.scale
    bank, tax = seen
    score = card.score({BANK: bank, TAX: tax})[:200]
    pd_ = 1.0 / (1.0 + np.exp(-_log_odds(woe, lr, bank, tax)[:200]))
    live = np.array([policy.score_points(float(p)) for p in pd_])
    inside = (score > policy.min_points) & (score < policy.max_points)
    assert inside.all() and np.all(np.abs(live - score) <= 0.5 + 1e-6)  # the node's points are these, rounded


def test_points_follow_the_stated_convention_bin_by_bin(trained):
    card, woe, lr, _, fresh = trained
    f = card.scale.factor
    bank, tax = fresh
    for party, woe_side, lr_side, X in (
        (BANK, woe.label_holder_.own_model_, lr.label_holder_, bank[DEFAULT_CREDIT_BANK]),
        (TAX, woe.feature_holders_[TAX], lr.feature_holders_[TAX], tax[DEFAULT_CREDIT_HOLDER]),
    ):
        part = card.parts[party]
        m = len(part.features)
        beta, mu = lr_side.coef_[:m] / lr_side.scale_[:m], lr_side.mean_[:m]
        W = woe_side.transform(X.to_numpy())  # the owner's own WOE of each value, NaN included
        np.testing.assert_allclose(part.feature_points(X), -f * beta * (W - mu), rtol=0, atol=1e-9)
        table = card.points_table(party)
        for fp, b in zip(part.features, beta, strict=True):
            rows = table[table["feature"] == fp.name]
            assert len(rows) == fp.edges.size + 1 + (fp.missing_points is not None)
            own = rows[rows["bin"] != "missing"]
            # sign −1 on every coefficient: more WOE (fewer defaults) never costs points
            assert np.all(np.diff(own.sort_values("woe")["points"].to_numpy()) >= -1e-9) and b <= 0
    assert (card.points_table(TAX).query("feature == 'LIMIT_BAL'")["bin"] == "missing").sum() == 1
    assert card.points_table(TAX).query("feature == 'AGE'")["bin"].str.endswith("or missing").sum() == 1
    base = card.points_table(BANK).query("feature == '(base points)'")["points"].to_numpy()
    assert base.size == 1 and base[0] == pytest.approx(card.scale.offset - f * lr.label_holder_.intercept_, abs=1e-9)


def test_each_party_table_and_bundle_holds_only_its_own_features(trained, tmp_path):
    card, woe, lr, _, fresh = trained
    names = {BANK: set(DEFAULT_CREDIT_BANK), TAX: set(DEFAULT_CREDIT_HOLDER)}
    edges = {p: {float(e) for fp in part.features for e in fp.edges} for p, part in card.parts.items()}
    assert edges[BANK] and edges[TAX] and not edges[BANK] & edges[TAX]
    # a party's table is computed from its own WOE bins and LR block alone, plus the public scale
    own = PartyPoints.from_party(TAX, woe.feature_holders_[TAX], lr.feature_holders_[TAX], card.scale)
    pd.testing.assert_frame_equal(own.table(), card.points_table(TAX))
    for party, other in ((BANK, TAX), (TAX, BANK)):
        table = card.points_table(party)
        listed = set(table["feature"]) - {"(base points)", f"covered:{TAX}"}
        assert listed == names[party]
        signer = SigningIdentity.generate()
        folder = write_model_bundle(tmp_path / party, *card.parts[party].to_bundle(run_id="r1"), signer)
        weights = (folder / "model.safetensors").read_bytes()
        header = weights[8 : 8 + int.from_bytes(weights[:8], "little")].decode()  # safetensors: JSON header, then numbers
        raw = (folder / "model.json").read_text() + header
        assert not [n for n in names[other] if n in raw], party  # no name of the other party's features
        arrays, meta = load_model_bundle(folder, [signer.public_key_bytes])
        values = {float(v) for a in arrays.values() for v in np.ravel(a)}
        assert values and not values & edges[other], party  # no bin edge of the other party's
        assert not {float(e) for e in edges[party]} - values  # ...while its own are all there
        loaded = PartyPoints.from_bundle(arrays, meta)
        X = fresh[0] if party == BANK else fresh[1]
        covered = {TAX: fresh[0].index.isin(fresh[1].index)} if party == BANK else None
        np.testing.assert_array_equal(loaded.partial_points(X, covered), card.parts[party].partial_points(X, covered))
    tax_meta = json.loads((tmp_path / TAX / "model.json").read_text())
    assert tax_meta["base_points"] is None and tax_meta["indicators"] == []  # the bank's intercept stays at the bank


def test_reasons_are_the_points_lost_against_each_features_best_bin(trained):
    card, _, _, _, fresh = trained
    tax = fresh[1]
    part = card.parts[TAX]
    row = tax.iloc[0]
    pts = part.feature_points(row.to_frame().T)[0]
    best = np.array([fp.best_points() for fp in part.features])
    shortfall = best - pts
    reasons = card.reasons(row, TAX, top=3)
    expected = [part.features[j].name for j in np.argsort(-shortfall, kind="stable") if shortfall[j] > 1e-9][:3]
    assert [r.feature for r in reasons] == expected and reasons
    for r in reasons:
        j = part.feature_names.index(r.feature)
        assert r.points_below_best == pytest.approx(shortfall[j], abs=1e-12) and r.points_below_best > 0
        assert r.bin in set(card.points_table(TAX).query("feature == @r.feature")["bin"])
    # an applicant in every feature's best bin loses no points: no reasons
    best_row = {}
    for fp in part.features:
        pts_all = np.concatenate([fp.points, [] if fp.missing_points is None else [fp.missing_points]])
        g = int(np.argmax(pts_all))
        if g > fp.edges.size:
            best_row[fp.name] = math.nan  # the missing bin is the best
        else:  # bin g is (edges[g−1], edges[g]]
            best_row[fp.name] = fp.edges[g] if g < fp.edges.size else (fp.edges[-1] + 1.0 if fp.edges.size else 0.0)
    assert card.reasons(best_row, TAX) == []
    with pytest.raises(DataValidationError, match="no value for 'LIMIT_BAL'"):
        card.reasons({"AGE": 1.0}, TAX)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(pdo=0.0), "PDO (points to double the odds) must be > 0"),
        (dict(pdo=-20.0), "PDO (points to double the odds) must be > 0"),
        (dict(base_odds=0.0), "base odds must be > 0"),
        (dict(base_odds=-50.0), "base odds must be > 0"),
        (dict(base_score=math.nan), "base_score must be a finite number"),
    ],
)
def test_a_bad_scale_is_one_line(kwargs, words):
    with pytest.raises(ConfigError) as err:
        ScoreScale(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_constraints_and_bin_sizes_are_one_line_before_any_key(default_credit_dir):
    import time

    bank, tax = _tables(default_credit_dir, 0, 2000, 1.0, seed=3)
    cases = [
        (dict(monotone={TAX: {"NO_SUCH": "increasing"}}), "tax_bureau: monotone constraint on unknown feature 'NO_SUCH'"),
        (dict(monotone={BANK: {"LIMIT_BAL": "auto"}}), "bank: monotone constraint on unknown feature 'LIMIT_BAL'"),
        (dict(signs={TAX: {"PAY_6": -1}}), "tax_bureau: monotone sign on unknown feature 'PAY_6'"),
        (dict(monotone={"platform": {"x": "auto"}}), "unknown party 'platform'"),
        (dict(n_bins=10, min_bin_size=250), "n_bins=10 × min_bin_size=250 needs 2500 rows"),
    ]
    for params, words in cases:
        started = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            train_points_scorecard(bank, {TAX: tax}, **params)
        msg = str(err.value)
        assert words in msg and "\n" not in msg, msg
        assert time.perf_counter() - started < 3.0, msg  # refused before keys are made or labels encrypted


def test_woe_refuses_the_banks_own_unknown_constraint_naming_the_bank(default_credit_dir):
    from fedrisk.models.woe import VerticalWOE

    bank, tax = _tables(default_credit_dir, 0, 1000, 1.0, seed=4)
    with pytest.raises(ConfigError, match="^bank: monotone constraint on unknown feature 'NOPE'$"):
        VerticalWOE(monotone={BANK: {"NOPE": "auto"}}).fit(
            bank[DEFAULT_CREDIT_BANK].to_numpy(),
            bank["y"].to_numpy(),
            {TAX: (tax.to_numpy(), np.ones(len(tax), bool))},
            bank_feature_names=DEFAULT_CREDIT_BANK,
            holder_feature_names={TAX: DEFAULT_CREDIT_HOLDER},
        )


def test_cli_help_errors_and_the_banks_table(trained):
    from rich.console import Console

    runner = CliRunner()
    result = runner.invoke(app, ["scorecard", "points", "--help"])
    assert result.exit_code == 0 and "--pdo" in result.output and "--base-odds" in result.output
    for argv, words in ((["--pdo", "0"], "PDO"), (["--base-odds", "-2"], "base odds"), (["--holder", "oops"], "NAME=CSV")):
        result = runner.invoke(app, ["scorecard", "points", *argv])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0] and lines[0].startswith("error:"), result.output
    card = trained[0]
    out = Console(record=True, width=140)
    out.print(render_points_table(card.points_table(BANK), BANK, card.scale))
    text = out.export_text()
    assert all(n in text for n in DEFAULT_CREDIT_BANK) and "(base points)" in text
    assert not [n for n in DEFAULT_CREDIT_HOLDER if n in text]
