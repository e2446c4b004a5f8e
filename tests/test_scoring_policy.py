"""The credit policy file: bands, differentiated limits, hard maximum, missing parties, precise errors."""

from __future__ import annotations

import tomllib

import pytest

from fedrisk.errors import ConfigError
from fedrisk.scoring.policy import (
    APPROVE,
    DECLINE,
    REFER,
    default_policy_path,
    load_policy,
    parse_policy,
)


@pytest.fixture()
def policy():
    return load_policy()


def _data() -> dict:
    return tomllib.loads(default_policy_path().read_text())


def test_the_shipped_policy_loads(policy):
    assert policy.label == "sme-working-capital@2026.12-1"
    assert [b.name for b in policy.bands] == ["A", "B", "C", "D", "E"]
    assert policy.bands[-1].max_pd == 1.0


def test_pd_bands_map_to_decisions(policy):
    assert policy.decide(0.01, declared_revenue=1e6).decision == APPROVE
    assert policy.decide(0.2, declared_revenue=1e6).decision == REFER
    assert policy.decide(0.6, declared_revenue=1e6).decision == DECLINE
    assert policy.decide(0.6, declared_revenue=1e6).credit_limit == 0
    assert policy.band_for(0.03).name == "A" and policy.band_for(0.030001).name == "B"


def test_limits_are_differentiated_by_band_and_revenue(policy):
    a = policy.decide(0.01, declared_revenue=1_000_000)
    b = policy.decide(0.05, declared_revenue=1_000_000)
    c = policy.decide(0.10, declared_revenue=1_000_000)
    assert (a.credit_limit, b.credit_limit, c.credit_limit) == (300_000, 200_000, 100_000)
    assert policy.decide(0.01, declared_revenue=2_000_000).credit_limit == 600_000
    assert policy.decide(0.01, declared_revenue=1_234_567).credit_limit == 370_000  # rounded down to the step


def test_caps_request_and_hard_maximum(policy):
    capped = policy.decide(0.05, declared_revenue=50_000_000)
    assert capped.credit_limit == 1_500_000 and any(r.code == "BAND_MAX_LIMIT" for r in capped.reasons)
    asked = policy.decide(0.01, declared_revenue=1_000_000, requested_amount=120_000)
    assert asked.credit_limit == 120_000
    more = policy.decide(0.01, declared_revenue=1_000_000, requested_amount=900_000)
    assert more.credit_limit == 300_000 and any(r.code == "LIMIT_BELOW_REQUEST" for r in more.reasons)
    data = _data()
    data["policy"]["hard_max_limit"] = 250_000
    strict = parse_policy(data)
    hard = strict.decide(0.01, declared_revenue=10_000_000)
    assert hard.credit_limit == 250_000 and any(r.code == "HARD_MAX_LIMIT" for r in hard.reasons)


def test_revenue_rules(policy):
    low = policy.decide(0.01, declared_revenue=50_000)
    assert low.decision == REFER and low.credit_limit == 0 and low.reasons[0].code == "REVENUE_BELOW_MINIMUM"
    none_a = policy.decide(0.01, declared_revenue=None)
    assert none_a.decision == APPROVE and none_a.credit_limit == 200_000
    none_c = policy.decide(0.10, declared_revenue=None)
    assert none_c.decision == REFER and none_c.reasons[0].code == "REVENUE_NEEDED"


def test_missing_parties_follow_the_policy(policy):
    ok = policy.decide(0.01, declared_revenue=1_000_000)
    fallback = policy.decide(0.01, declared_revenue=1_000_000, unavailable=["platform"])
    assert fallback.decision == APPROVE and fallback.credit_limit == ok.credit_limit // 2
    assert fallback.reasons[0].code == "PARTY_UNAVAILABLE_FALLBACK" and "platform" in fallback.reasons[0].text
    two = policy.decide(0.01, declared_revenue=1_000_000, unavailable=["platform", "tax_bureau"])
    assert two.decision == REFER and two.credit_limit == 0 and two.reasons[0].code == "PARTY_UNAVAILABLE_REFER"
    data = _data()
    data["unavailable"]["parties"] = {"tax_bureau": {"action": "refer"}}
    per_party = parse_policy(data)
    assert per_party.decide(0.01, declared_revenue=1e6, unavailable=["tax_bureau"]).decision == REFER
    assert per_party.decide(0.01, declared_revenue=1e6, unavailable=["platform"]).decision == APPROVE
    assert per_party.decide(0.9, declared_revenue=1e6, unavailable=["tax_bureau"]).decision == REFER  # a decline on less data goes to an officer


def test_points_scale(policy):
    assert policy.score_points(1 / 51) == 600  # odds 50:1 -> base points
    assert policy.score_points(1 / 101) == 620  # doubling the odds adds 20 points
    assert policy.score_points(0.999999) == 300 and policy.score_points(1e-9) == 900
    assert policy.score_points(0.02) > policy.score_points(0.2)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["bands"][1].update(max_pd=0.01), "bands[1].max_pd must be greater than bands[0].max_pd"),
        (lambda d: d["bands"][-1].update(max_pd=0.9), "the last band's max_pd must be 1.0"),
        (lambda d: d["bands"][0].update(decision="maybe"), "bands[0].decision must be one of approve, refer, decline"),
        (lambda d: d["bands"][0].update(colour="red"), "bands[0].colour is not a known policy key"),
        (lambda d: d["policy"].update(hard_max_limit=-1), "policy.hard_max_limit must be > 0"),
        (lambda d: d["policy"].pop("version"), "policy.version is missing"),
        (lambda d: d["unavailable"].update(action="ignore"), "unavailable.action must be one of fallback, refer"),
        (lambda d: d["unavailable"].update(fallback_limit_factor=2), "unavailable.fallback_limit_factor must be >= 0 and <= 1"),
        (lambda d: d.update(extra={}), "extra is not a known policy key"),
        (lambda d: d["bands"][0].update(max_pd="low"), "bands[0].max_pd must be a number"),
        (lambda d: d["bands"][2].update(revenue_multiple=0, no_revenue_limit=0), "bands[2] approves but has neither"),
    ],
)
def test_policy_errors_are_one_precise_line(mutate, message):
    data = _data()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_policy(data, "policy.toml")
    assert message in str(info.value) and str(info.value).startswith("policy.toml: ")
    assert "\n" not in str(info.value)


def test_unreadable_or_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy\nname=1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_policy(bad)
