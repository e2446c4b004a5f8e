"""The bank's SecureBoost trees for one application at a time, routed with the parties' answers.

A vertical SecureBoost model (:mod:`fedrisk.models.secureboost`) is split by
owner: the bank's bundle holds every tree's structure, the leaf weights, its
own splits' thresholds and, for each other split, only who owns it and the
owner's opaque split id; each feature holder's bundle holds its own thresholds
(a :class:`~fedrisk.models.secureboost_tree.RoutingTable`). To score an SME the
bank's node asks each feature holder, in one ``TREE_ROUTING`` call, which way
the SME goes at each of that party's splits (``LEFT``/``RIGHT``, nothing else),
then walks every tree: its own splits on its own features, the others' splits
by their answers. A party that does not cover the SME (``NOT_COVERED``) or
does not answer (down, slow, resting) takes each of its splits' learned
default direction — what training did for rows the party does not cover — and
the credit policy says what a missing answer means.

:class:`TreeScorer` evaluates in pure Python (a few dozen comparisons per
tree; numpy would cost more than the walk) and is checked against
:meth:`SecureBoostModel.decision_function` when built, so live and offline
scores agree to the last bit: the leaf values are added in the same order.

Reasons. Trees have no per-feature coefficients, so a decision's reasons are
measured, not read off: the contribution of a party is the change in log-odds
between routing the SME with that party's answers and routing it as if the
party did not know it (every one of its splits on its default direction); the
contribution of one of the bank's own features is the same with that feature
treated as missing. Reasons name the party, or the bank's own feature — never a
value, a threshold, or which of another party's splits went where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedrisk.errors import ProtocolError

if TYPE_CHECKING:
    from fedrisk.models.secureboost_tree import SecureBoostModel

__all__ = ["Routing", "TreeScorer"]

# One party's answers for one SME: split id -> goes left. ``None``: the party's
# splits take their default direction (it does not cover the SME, or did not answer).
Routing = Mapping[int, bool] | None

# A node: (left, right, owner, key, threshold, default_left, value). ``owner`` is
# "" for the bank's own split (``key`` = its feature column) or the owning party
# (``key`` = that party's split id); a leaf has ``left == -1`` and its weight in ``value``.
_Node = tuple[int, int, str, int, float, bool, float]


class TreeScorer:
    """The label holder's SecureBoost trees, routed one application at a time.

    Parameters
    ----------
    model : SecureBoostModel
        The bank's verified trees (from its signed bundle).

    Attributes
    ----------
    features : tuple of str
        The bank's own features, in the model's column order.
    parties : tuple of str
        Feature holders owning at least one split: the parties the node asks.
    split_ids : dict of str to tuple of int
        Each asked party's split ids (sorted): what the node asks it to route.
    """

    def __init__(self, model: SecureBoostModel) -> None:
        self.features: tuple[str, ...] = tuple(model.feature_names)
        owners = tuple(model.parties)
        self.split_ids: dict[str, tuple[int, ...]] = {}
        for party in owners[1:]:
            ids = tuple(int(s) for s in model.split_ids(party))
            if ids:
                self.split_ids[party] = ids
        self.parties: tuple[str, ...] = tuple(self.split_ids)
        self._base = float(model.base_score)
        self._trees: list[list[_Node]] = []
        own_used: set[int] = set()
        for t in range(model.n_trees):
            nodes = model.tree_nodes(t)
            tree: list[_Node] = []
            for i in range(nodes["left"].size):
                left, right, owner = int(nodes["left"][i]), int(nodes["right"][i]), int(nodes["owner"][i])
                if left < 0:
                    tree.append((-1, -1, "", -1, math.nan, False, float(nodes["value"][i])))
                elif owner == 0:
                    feature = int(nodes["feature"][i])
                    own_used.add(feature)
                    tree.append((left, right, "", feature, float(nodes["threshold"][i]), bool(nodes["default_left"][i]), 0.0))
                else:
                    tree.append((left, right, owners[owner], int(nodes["split_id"][i]), math.nan, bool(nodes["default_left"][i]), 0.0))
            self._trees.append(tree)
        self._own_used: tuple[int, ...] = tuple(sorted(own_used))
        self._self_check(model)

    # ---------------------------------------------------------------- scoring
    def log_odds(self, x: Sequence[float], answers: Mapping[str, Routing]) -> float:
        """Joint log-odds of one SME.

        Parameters
        ----------
        x : sequence of float
            The bank's own features in model order (NaN = missing).
        answers : mapping party -> routing or None
            Each party's directions; a party absent or ``None`` takes its default directions.
        """
        total = self._base
        for tree in self._trees:
            i = 0
            while True:
                left, right, owner, key, threshold, default_left, value = tree[i]
                if left < 0:
                    total += value
                    break
                if not owner:
                    v = x[key]
                    go = default_left if math.isnan(v) else v <= threshold
                else:
                    routing = answers.get(owner)
                    go = default_left if routing is None else routing[key]
                i = left if go else right
        return total

    @staticmethod
    def probability(z: float) -> float:
        """σ(z), computed as the model does (0.5 (1 + tanh(z/2)))."""
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    # ---------------------------------------------------------------- reasons
    def contributions(self, x: Sequence[float], answers: Mapping[str, Routing]) -> tuple[dict[str, float], dict[str, float]]:
        """What each own feature and each answering party adds to the log-odds.

        A feature's contribution is the log-odds minus the log-odds with that feature
        treated as missing; a party's, minus the log-odds with its splits on their
        default directions. Only the trees whose path meets the feature (or the party)
        are walked again, so the cost is a few walks per tree, not one per feature.

        Returns
        -------
        own : dict of str to float
            By the bank's feature name (features present and used on the SME's paths).
        parties : dict of str to float
            By party (parties that answered and own a split on the SME's paths).
        """
        own: dict[str, float] = {}
        parties: dict[str, float] = {}
        for tree in self._trees:
            met: dict[tuple[str, int], None] = {}
            i = 0
            while True:
                left, right, owner, key, threshold, default_left, value = tree[i]
                if left < 0:
                    break
                if not owner:
                    v = x[key]
                    if math.isnan(v):
                        go = default_left
                    else:
                        go = v <= threshold
                        met[("", key)] = None
                else:
                    routing = answers.get(owner)
                    if routing is None:
                        go = default_left
                    else:
                        go = routing[key]
                        met[(owner, -1)] = None
                i = left if go else right
            for who, key in met:
                delta = value - self._leaf(tree, x, answers, drop_feature=key, drop_party=who)
                if who:
                    parties[who] = parties.get(who, 0.0) + delta
                else:
                    name = self.features[key]
                    own[name] = own.get(name, 0.0) + delta
        return own, parties

    @staticmethod
    def _leaf(tree: list[_Node], x: Sequence[float], answers: Mapping[str, Routing], *, drop_feature: int, drop_party: str) -> float:
        """The leaf weight one tree gives the SME with a feature treated as missing or a party's splits on defaults."""
        i = 0
        while True:
            left, right, owner, key, threshold, default_left, value = tree[i]
            if left < 0:
                return value
            if not owner:
                v = x[key]
                go = default_left if (key == drop_feature or math.isnan(v)) else v <= threshold
            else:
                routing = answers.get(owner) if owner != drop_party else None
                go = default_left if routing is None else routing[key]
            i = left if go else right

    # -------------------------------------------------------------- self-check
    def _self_check(self, model: SecureBoostModel) -> None:
        """Refuse to serve unless the walk reproduces the model's own scoring on made-up rows."""
        rng = np.random.default_rng(0)
        n = 8
        X = rng.normal(size=(n, len(self.features)))
        own = model.arrays["owner"] == 0
        for j in self._own_used:  # values on both sides of the thresholds actually used
            cuts = model.arrays["threshold"][own & (model.arrays["feature"] == j)]
            X[:, j] = rng.choice(cuts, size=n) + rng.choice([-1e-9, 0.0, 1e-9], size=n) * (1.0 + np.abs(rng.choice(cuts, size=n)))
        X[rng.random(X.shape) < 0.15] = np.nan
        answers, coverage = {}, {}
        for party, ids in self.split_ids.items():
            answers[party] = _Answers(np.array(ids, dtype=np.int64), rng.random((n, len(ids))) < 0.5)
            coverage[party] = rng.random(n) < 0.7
        want = model.decision_function(X, answers, coverage)
        for i in range(n):
            routes: dict[str, Routing] = {p: (dict(zip(a.split_ids.tolist(), a.go_left[i].tolist())) if coverage[p][i] else None) for p, a in answers.items()}
            got = self.log_odds(X[i].tolist(), routes)
            if not math.isclose(got, float(want[i]), rel_tol=1e-12, abs_tol=1e-12):
                raise ProtocolError("the tree walk disagrees with the SecureBoost model; refusing to serve")


class _Answers:
    """Made-up answers in the shape :meth:`SecureBoostModel.decision_function` reads."""

    def __init__(self, split_ids: np.ndarray, go_left: np.ndarray) -> None:
        self.split_ids, self.go_left = split_ids, go_left
