"""A stacked model served as one: base learners routed as when served alone, the meta-learner at the bank.

A stack (:mod:`fedrisk.models.stacking`) is base learners — the vertical
logistic scorecard and vertical SecureBoost, each trained over its own
encrypted protocol — and a logistic-regression **meta-learner** on their
log-odds, fitted and held by the bank: ``PD = σ(b + Σ_m a_m · z_m)``.

The bank's node loads a *stack folder*
(:func:`~fedrisk.scoring.bundles.load_bank_model`): the bank's bundle
of every base learner and the meta-learner's bundle. For each application it
asks each feature holder **once** (``STACK``: the request lists the base
learners the party takes part in; a covered answer carries one part per base
learner, :class:`~fedrisk.scoring.fanout.StackBase`), combines each
base learner exactly as when it is served alone
(:class:`~fedrisk.scoring.bundles.LinearScorer`,
:class:`~fedrisk.scoring.trees.TreeScorer`) — a party that does not
cover the SME, or does not answer, is scored as not covering it by every base
learner (scorecard: no partial score, its coverage indicator off; trees: its
splits on their learned default directions) — and applies the meta-learner.

What each role learns at scoring time: a feature holder, the SME ID (once per
application instead of once per base learner) and which of its base-learner
bundles are asked — never the meta-learner, a joint log-odds or the PD; the
bank, each base learner's parts exactly as when served alone. The base
learners' log-odds, the meta-learner's weights and their products are the
bank's alone (they appear in the decision's ``node`` reasons, at the bank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.scoring.bundles import (
    BASE_LEARNER_OF,
    SECUREBOOST,
    LinearScorer,
    LoadedModel,
    LoadedStack,
)
from fedrisk.scoring.fanout import StackBase
from fedrisk.scoring.trees import TreeScorer
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["StackMember", "StackScorer"]


@dataclass(frozen=True)
class StackMember:
    """One base learner of the stack at the bank.

    Attributes
    ----------
    name : str
        ``vertical_lr`` or ``secureboost`` (the meta-learner's input name).
    model : LoadedModel
        The bank's verified bundle of it.
    scorer : LinearScorer or TreeScorer
        How it is combined when served alone.
    columns : tuple of int
        Positions of its features in the stack's bank feature vector.
    parties : tuple of str
        The feature holders it asks (for trees: those owning a split).
    """

    name: str
    model: LoadedModel
    scorer: LinearScorer | TreeScorer
    columns: tuple[int, ...]
    parties: tuple[str, ...]

    @property
    def is_trees(self) -> bool:
        return isinstance(self.scorer, TreeScorer)

    def request(self, party: str) -> StackBase:
        """What the node asks ``party`` for this base learner."""
        if isinstance(self.scorer, TreeScorer):
            return StackBase(self.model.run_id, pb.TREE_ROUTING, self.scorer.split_ids[party], self.name)
        return StackBase(self.model.run_id, pb.SCORECARD, (), self.name)


class StackScorer:
    """The stack at the bank: its base learners' scorers and the meta-learner, for one application at a time.

    Parameters
    ----------
    stack : LoadedStack
        The verified stack folder.

    Attributes
    ----------
    features : tuple of str
        The bank's own features the base learners use, each once (first base learner's order first).
    parties : tuple of str
        Every feature holder some base learner asks (the node asks each once per application).
    members : tuple of StackMember
        In the meta-learner's input order.
    party_bases : dict of str to tuple of int
        For each party, the members it takes part in, in order (the ``bases`` of its request).
    """

    def __init__(self, stack: LoadedStack) -> None:
        self.stack = stack
        features: list[str] = []
        position: dict[str, int] = {}
        members = []
        for name, model in zip(stack.names, stack.bases):
            if BASE_LEARNER_OF.get(model.kind) != name:
                raise ConfigError(f"stack base learner {name!r} is a {model.kind} bundle")
            scorer: LinearScorer | TreeScorer = TreeScorer(model.part) if model.kind == SECUREBOOST else LinearScorer(model.part)  # type: ignore[arg-type]
            for f in scorer.features:
                if f not in position:
                    position[f] = len(features)
                    features.append(f)
            members.append(StackMember(name, model, scorer, tuple(position[f] for f in scorer.features), tuple(scorer.parties)))
        self.members: tuple[StackMember, ...] = tuple(members)
        self.features: tuple[str, ...] = tuple(features)
        self.parties: tuple[str, ...] = tuple(dict.fromkeys(p for m in self.members for p in m.parties))
        self.party_bases: dict[str, tuple[int, ...]] = {p: tuple(k for k, m in enumerate(self.members) if p in m.parties) for p in self.parties}
        meta = stack.part
        self.names: tuple[str, ...] = tuple(meta.names)
        if len(self.names) != len(self.members):
            raise ConfigError(f"the meta-learner expects {len(self.names)} base learners; the stack has {len(self.members)}")
        self.coef: tuple[float, ...] = tuple(float(c) for c in meta.coef)
        self.intercept = float(meta.intercept)
        self._self_check()

    def requests(self, party: str) -> tuple[StackBase, ...]:
        """The base learners the node asks ``party`` for, in the stack's order."""
        return tuple(self.members[k].request(party) for k in self.party_bases[party])

    def known_parties(self) -> set[str]:
        """Every feature holder of the base learners (trees: also those owning no split)."""
        out: set[str] = set()
        for m in self.members:
            part = m.model.part
            out |= set(part.parties[1:]) if m.is_trees else set(part.feature_holders)  # type: ignore[union-attr]
        return out

    def log_odds(self, base_log_odds: Sequence[float]) -> float:
        """The meta-learner: ``b + Σ_m a_m · z_m`` (the grouping of :meth:`MetaLearner.decision_function`)."""
        total = 0.0
        for a, z in zip(self.coef, base_log_odds, strict=True):
            total += z * a
        return self.intercept + total

    @staticmethod
    def probability(z: float) -> float:
        """σ(z), computed as the stack does (0.5 (1 + tanh(z/2)))."""
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    def _self_check(self) -> None:
        rng = np.random.default_rng(0)
        Z = rng.normal(size=(6, len(self.members))) * 3.0
        want = self.stack.part.decision_function(Z)
        for i in range(Z.shape[0]):
            if not math.isclose(self.log_odds(Z[i].tolist()), float(want[i]), rel_tol=1e-12, abs_tol=1e-12):
                raise ProtocolError("the meta-learner walk disagrees with the meta-learner; refusing to serve")
