"""Credit policy: a declarative TOML file mapping probability of default to a decision and a limit.

The policy is data, not code: a credit committee changes bands, multiples and the
hard maximum by editing ``policy.toml`` (see ``default_policy.toml`` beside this
module for every key, with comments). :func:`load_policy` validates the whole
file up front and names the first problem as ``policy.toml: bands[2].max_pd
must be ...``; :meth:`CreditPolicy.decide` is a pure function of the PD, the
declared revenue, the requested amount and which parties were missing.

Decision rules, in order
------------------------
1. PD → the first band whose ``max_pd`` is at least the PD (bands are ordered by
   ``max_pd``; the last must be 1.0 so that every PD has a band).
2. The band's decision (``approve``, ``refer`` or ``decline``).
3. Approvals get a limit: ``revenue_multiple × declared revenue``, capped by the
   band's ``max_limit``, the requested amount and the policy's ``hard_max_limit``,
   rounded down to ``limit_step``. Declared revenue under ``min_declared_revenue``
   turns the approval into ``below_minimum`` (refer or decline); no declared
   revenue uses the band's ``no_revenue_limit`` (0 refers). A limit that rounds to
   0 refers.
4. Parties that did not answer: ``action = "refer"`` refers; ``"fallback"`` keeps
   the decision made without the party (scored as not covering the SME) and
   scales the limit by ``fallback_limit_factor``. More missing parties than
   ``max_unavailable`` refers whatever the action.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedrisk.errors import ConfigError

__all__ = [
    "APPROVE",
    "DECLINE",
    "REFER",
    "Band",
    "CreditPolicy",
    "PolicyOutcome",
    "PolicyReason",
    "default_policy_path",
    "load_policy",
    "parse_policy",
]

APPROVE, REFER, DECLINE = "approve", "refer", "decline"
_DECISIONS = (APPROVE, REFER, DECLINE)
_ACTIONS = ("fallback", "refer")
_MAX_MONEY = 1e13


def default_policy_path() -> Path:
    """Path of the example policy shipped with fedrisk."""
    return Path(str(resources.files("fedrisk.scoring") / "default_policy.toml"))


@dataclass(frozen=True)
class Band:
    """One PD band of the policy."""

    name: str
    max_pd: float
    decision: str
    revenue_multiple: float = 0.0
    max_limit: float = 0.0
    no_revenue_limit: float = 0.0


@dataclass(frozen=True)
class PolicyReason:
    """A rule that shaped a decision (``code`` is stable, ``text`` one line)."""

    code: str
    text: str


@dataclass(frozen=True)
class PolicyOutcome:
    """What the policy decided for one application."""

    decision: str
    band: str
    credit_limit: int
    score: int
    reasons: tuple[PolicyReason, ...] = ()


@dataclass(frozen=True)
class CreditPolicy:
    """A validated credit policy (build it with :func:`load_policy`).

    Attributes
    ----------
    name, version, currency : str
    hard_max_limit : float
        No limit ever exceeds it.
    limit_step : float
        Limits are rounded down to a multiple of it.
    bands : tuple of Band
        Ordered by ``max_pd``; the last has ``max_pd == 1``.
    min_declared_revenue : float
    below_minimum : str
        ``refer`` or ``decline``.
    unavailable_action : str
        ``fallback`` or ``refer``, per party overridable in ``party_actions``.
    fallback_limit_factor : float
    max_unavailable : int
    deadline_ms : float
        Per-call deadline of the fan-out to each feature holder.
    base_points, base_odds, points_to_double_odds, min_points, max_points
        The points scale.
    max_reasons_per_party : int
    """

    name: str
    version: str
    currency: str
    hard_max_limit: float
    limit_step: float
    bands: tuple[Band, ...]
    min_declared_revenue: float = 0.0
    below_minimum: str = REFER
    unavailable_action: str = "fallback"
    party_actions: Mapping[str, str] = field(default_factory=dict)
    fallback_limit_factor: float = 0.5
    max_unavailable: int = 1
    deadline_ms: float = 40.0
    base_points: float = 600.0
    base_odds: float = 50.0
    points_to_double_odds: float = 20.0
    min_points: int = 300
    max_points: int = 900
    max_reasons_per_party: int = 3

    @property
    def label(self) -> str:
        """``name@version``, recorded with every decision."""
        return f"{self.name}@{self.version}"

    # ------------------------------------------------------------------ rules
    def band_for(self, pd: float) -> Band:
        """The first band whose ``max_pd`` covers ``pd``."""
        for band in self.bands:
            if pd <= band.max_pd:
                return band
        return self.bands[-1]

    def score_points(self, pd: float) -> int:
        """Points on the policy's scale (higher is safer), clipped to [min_points, max_points]."""
        pd = min(max(pd, 1e-12), 1.0 - 1e-12)
        odds = (1.0 - pd) / pd
        points = self.base_points + self.points_to_double_odds / math.log(2.0) * math.log(odds / self.base_odds)
        return int(min(max(round(points), self.min_points), self.max_points))

    def action_for(self, party: str) -> str:
        """What to do when ``party`` does not answer."""
        return self.party_actions.get(party, self.unavailable_action)

    def decide(
        self,
        pd: float,
        *,
        declared_revenue: float | None,
        requested_amount: float | None = None,
        unavailable: Iterable[str] = (),
    ) -> PolicyOutcome:
        """Apply the policy.

        Parameters
        ----------
        pd : float
            Probability of default from the model (with missing parties scored as
            not covering the SME).
        declared_revenue : float or None
            Yearly revenue the applicant declares; ``None`` when not given.
        requested_amount : float or None
            The amount asked for; the limit never exceeds it.
        unavailable : iterable of str
            Feature holders whose part is missing because of a failure.

        Returns
        -------
        PolicyOutcome
        """
        band = self.band_for(pd)
        decision = band.decision
        reasons: list[PolicyReason] = []
        missing = sorted(set(unavailable))
        factor = 1.0
        if missing:
            names = ", ".join(missing)
            refer_parties = [p for p in missing if self.action_for(p) == REFER]
            if len(missing) > self.max_unavailable:
                reasons.append(
                    PolicyReason("PARTY_UNAVAILABLE_REFER", f"{len(missing)} parties did not answer ({names}); policy allows {self.max_unavailable}: referred")
                )
                decision = REFER
            elif refer_parties:
                reasons.append(PolicyReason("PARTY_UNAVAILABLE_REFER", f"{', '.join(refer_parties)} did not answer; policy: refer"))
                decision = REFER
            else:
                factor = self.fallback_limit_factor
                reasons.append(
                    PolicyReason(
                        "PARTY_UNAVAILABLE_FALLBACK",
                        f"{names} did not answer; policy fallback: scored as not covering the SME, limit x{factor:g}",
                    )
                )
        limit = 0
        if decision == APPROVE:
            if declared_revenue is None:
                raw = band.no_revenue_limit
                if raw <= 0:
                    decision = REFER
                    reasons.append(PolicyReason("REVENUE_NEEDED", f"band {band.name} needs declared revenue for a limit"))
            elif declared_revenue < self.min_declared_revenue:
                decision = self.below_minimum
                raw = 0.0
                reasons.append(
                    PolicyReason(
                        "REVENUE_BELOW_MINIMUM",
                        f"declared revenue {declared_revenue:,.0f} is below the minimum {self.min_declared_revenue:,.0f}: {self.below_minimum}",
                    )
                )
            else:
                raw = band.revenue_multiple * declared_revenue
            if decision == APPROVE:
                capped = min(raw, band.max_limit if band.max_limit > 0 else raw)
                if raw > capped:
                    reasons.append(PolicyReason("BAND_MAX_LIMIT", f"limit capped at band {band.name}'s maximum {band.max_limit:,.0f}"))
                capped *= factor
                if capped > self.hard_max_limit:
                    capped = self.hard_max_limit
                    reasons.append(PolicyReason("HARD_MAX_LIMIT", f"limit capped at the policy's hard maximum {self.hard_max_limit:,.0f}"))
                if requested_amount is not None and requested_amount < capped:
                    capped = requested_amount
                elif requested_amount is not None and requested_amount > capped:
                    reasons.append(PolicyReason("LIMIT_BELOW_REQUEST", f"requested {requested_amount:,.0f}; offered {self._round(capped):,}"))
                limit = self._round(capped)
                if limit <= 0:
                    decision = REFER
                    reasons.append(PolicyReason("LIMIT_TOO_SMALL", f"the limit rounds to 0 at a step of {self.limit_step:,.0f}"))
        if decision != APPROVE:
            limit = 0
        return PolicyOutcome(decision=decision, band=band.name, credit_limit=limit, score=self.score_points(pd), reasons=tuple(reasons))

    def _round(self, amount: float) -> int:
        return int(math.floor(amount / self.limit_step) * self.limit_step) if amount > 0 else 0


# ---------------------------------------------------------------------- loading


class _Reader:
    """Typed access to a TOML table with precise one-line errors."""

    def __init__(self, source: str, table: Mapping[str, Any], where: str) -> None:
        self.source, self.table, self.where = source, table, where
        self.used: set[str] = set()

    def _fail(self, key: str, problem: str) -> ConfigError:
        path = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"{self.source}: {path} {problem}")

    def number(self, key: str, default: float | None = None, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> float:
        self.used.add(key)
        if key not in self.table:
            if default is None:
                raise self._fail(key, "is missing")
            return float(default)
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(key, f"must be a number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            lo = f"> {low:g}" if low_open else f">= {low:g}"
            raise self._fail(key, f"must be {lo} and <= {high:g}, got {value!r}")
        return float(value)

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str:
        self.used.add(key)
        if key not in self.table:
            if default is None:
                raise self._fail(key, "is missing")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self._fail(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self._fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        value = self.table.get(key, {})
        if not isinstance(value, Mapping):
            raise self._fail(key, "must be a table")
        return _Reader(self.source, value, f"{self.where}.{key}" if self.where else key)

    def check_unknown(self, allowed: Iterable[str] = ()) -> None:
        extra = sorted(set(self.table) - self.used - set(allowed))
        if extra:
            raise self._fail(extra[0], "is not a known policy key")


def parse_policy(data: Mapping[str, Any], source: str = "policy") -> CreditPolicy:
    """Validate a parsed TOML mapping and build the :class:`CreditPolicy`."""
    root = _Reader(source, data, "")
    pol = root.sub("policy")
    score = root.sub("score")
    revenue = root.sub("revenue")
    unavailable = root.sub("unavailable")
    root.used.add("bands")
    root.check_unknown()

    raw_bands = data.get("bands")
    if not isinstance(raw_bands, list) or not raw_bands:
        raise ConfigError(f"{source}: bands must be a non-empty array of tables ([[bands]])")
    bands: list[Band] = []
    for i, raw in enumerate(raw_bands):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: bands[{i}] must be a table")
        r = _Reader(source, raw, f"bands[{i}]")
        band = Band(
            name=r.text("name"),
            max_pd=r.number("max_pd", low=0.0, high=1.0, low_open=True),
            decision=r.text("decision", choices=_DECISIONS),
            revenue_multiple=r.number("revenue_multiple", 0.0, low=0.0, high=100.0),
            max_limit=r.number("max_limit", 0.0, low=0.0, high=_MAX_MONEY),
            no_revenue_limit=r.number("no_revenue_limit", 0.0, low=0.0, high=_MAX_MONEY),
        )
        r.check_unknown()
        if band.decision == APPROVE and band.revenue_multiple <= 0 and band.no_revenue_limit <= 0:
            raise ConfigError(f"{source}: bands[{i}] approves but has neither revenue_multiple nor no_revenue_limit")
        if bands and band.max_pd <= bands[-1].max_pd:
            raise ConfigError(f"{source}: bands[{i}].max_pd must be greater than bands[{i - 1}].max_pd ({bands[-1].max_pd:g})")
        if band.name in {b.name for b in bands}:
            raise ConfigError(f"{source}: bands[{i}].name {band.name!r} is used twice")
        bands.append(band)
    if bands[-1].max_pd != 1.0:
        raise ConfigError(f"{source}: the last band's max_pd must be 1.0 so that every PD has a band")

    actions: dict[str, str] = {}
    parties = unavailable.sub("parties")
    for party in parties.table:
        pr = parties.sub(party)
        actions[party] = pr.text("action", choices=_ACTIONS)
        pr.check_unknown()

    policy = CreditPolicy(
        name=pol.text("name"),
        version=pol.text("version"),
        currency=pol.text("currency", "CNY"),
        hard_max_limit=pol.number("hard_max_limit", low=0.0, high=_MAX_MONEY, low_open=True),
        limit_step=pol.number("limit_step", 1.0, low=0.0, high=_MAX_MONEY, low_open=True),
        max_reasons_per_party=int(pol.number("max_reasons_per_party", 3, low=0, high=20)),
        bands=tuple(bands),
        min_declared_revenue=revenue.number("min_declared_revenue", 0.0, low=0.0, high=_MAX_MONEY),
        below_minimum=revenue.text("below_minimum", REFER, choices=(REFER, DECLINE)),
        unavailable_action=unavailable.text("action", "fallback", choices=_ACTIONS),
        party_actions=actions,
        fallback_limit_factor=unavailable.number("fallback_limit_factor", 0.5, low=0.0, high=1.0),
        max_unavailable=int(unavailable.number("max_unavailable", 1, low=0, high=64)),
        deadline_ms=unavailable.number("deadline_ms", 40.0, low=1.0, high=60_000.0),
        base_points=score.number("base_points", 600.0, low=0.0, high=10_000.0),
        base_odds=score.number("base_odds", 50.0, low=0.0, high=1e6, low_open=True),
        points_to_double_odds=score.number("points_to_double_odds", 20.0, low=0.0, high=1000.0, low_open=True),
        min_points=int(score.number("min_points", 300, low=0, high=10_000)),
        max_points=int(score.number("max_points", 900, low=0, high=10_000)),
    )
    for reader in (pol, score, revenue):
        reader.check_unknown()
    unavailable.check_unknown()
    if policy.min_points >= policy.max_points:
        raise ConfigError(f"{source}: score.min_points must be below score.max_points")
    return policy


def load_policy(path: str | Path | None = None) -> CreditPolicy:
    """Read and validate a policy TOML file (``None``: the shipped default).

    Raises
    ------
    ConfigError
        One line naming the file, the key and the problem.
    """
    target = Path(path) if path is not None else default_policy_path()
    try:
        raw = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read policy {target}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{target.name}: not valid TOML: {str(exc).splitlines()[0]}") from None
    return parse_policy(data, target.name)
