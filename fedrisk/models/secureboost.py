"""Vertical SecureBoost across a bank and feature holders, over BFV (exact, masked histograms).

The **label holder** (a bank) holds the default labels and its own features.
**Feature holders** (tax bureau, platform) hold other features of the same SMEs,
rows aligned by PSI to the bank's order with a coverage mask, and **each its own
BFV key** (:mod:`fedrisk.crypto.encrypted_bins`). The **coordinator** holds
public contexts only and relays every payload after checking its route and
context. The tree algorithm is the one of :mod:`fedrisk.models.secureboost_tree`
(second-order boosting of the logistic loss, level-wise trees, learned default
directions); this module runs it across parties.

Message flow (every arrow a serialised payload relayed by the coordinator; content
class in brackets)::

    setup   bank ──BoostPlan [public]──▶ feature holders
            feature holder ──BinLayout [ciphertext]──▶ bank     (bins per feature, its public bins key,
                                                                  its one-hot bin matrix encrypted under it, once)
    tree t  bank ──MaskedHistogramBatch [ciphertext]──▶ one feature holder
                    (per node: Σ bins · (g_q + 2^k h_q) over the node's rows, computed by the bank
                     on the encrypted bins, re-randomised, each total masked and its noise flooded,
                     sent as c1 and the totals' c0 only)
            feature holder ──MaskedTotals [masked]──▶ bank     (the decrypted total coefficients, still masked)
            bank unmasks, derives each sibling as parent − child, picks the best split
            bank ──SplitDecisions [public]──▶ owner only            ("your feature j, your bin b",
                                                                      split id, default direction, node rows)
            owner ──SplitPartitions [public]──▶ bank                (which of the node's rows go left)
            … level by level to max_depth; the bank computes the leaves itself
    end     bank ──TrainingDone [public]──▶ feature holders
    score   feature holder ──SplitAnswers [public]──▶ bank          (left/right per own split id and row)

In a round the bank's :meth:`LabelHolderSB.outbox` returns what each feature
holder must get now (the masked histograms of the nodes queued since the last
round); :meth:`FeatureHolderSB.handle` returns the replies, which go to
:meth:`LabelHolderSB.receive`. A split on a feature holder's feature costs one
round more than a split on the bank's: the bank needs the partition before it
can evaluate the left child.

Threat model (honest-but-curious parties and coordinator, no coordinator–bank
collusion, TLS on every link). What each party learns:

* **Bank**: per node and feature holder, the exact per-bin totals of its own
  quantised g and h — SecureBoost's inherent disclosure, aggregated over the rows
  of a bin, never a row's value nor a sum over part of a bin's rows: a feature
  holder returns only the total coefficients of each masked histogram. The bank
  holds no key that opens a feature holder's data: its bins arrive encrypted
  under the holder's own key. Also the number of bins of each feature (≤ 32) and
  which features have missing values (the public layout); for the splits it
  chose on another party's feature, that feature's index and bin index and which
  rows go left — never the threshold.
* **Feature holder**: what it can decrypt is the totals of ``H + r`` (``c0`` travels at
  the total positions only) with ``r`` uniform mod ``t`` and the evaluation noise flooded (statistical distance
  ≤ 2^-40 over a run of up to 4,096 masked histograms,
  :mod:`fedrisk.crypto.encrypted_bins`): uniform residues, whatever the labels.
  The row sets of the nodes split on **its own** features (to route them), its
  own splits' thresholds. Never labels, gradients, the bank's features, other
  parties' features or splits, leaf weights — nor, unlike the earlier kernel, the
  row sets of the other nodes.
* **Coordinator**: kinds, sizes and timing of payloads and the public ones'
  contents (row sets of split nodes, split/bin indices); the masked totals
  (uniform); it holds no secret key.

An actively malicious party is outside this model: a bank that evaluated its
masked histogram on chosen values (one row's indicator) would read that row's
bins, as it could with the earlier kernel by encrypting chosen gradients; the
audit ledger records each request. Payloads carry the bank's context fingerprint
and are refused under any other context.

Cost: the feature holder encrypts its bin matrix once (≈ 1.6 core-s and 123 MB
seeded for 24,000 rows × 120 columns); per node the bank makes one plaintext
product per row block and column group — no rotation, no key switch — on
``n_jobs`` worker processes; a masked histogram travels as half a ciphertext
(4.2 MB per tree). Measured (``benchmarks/secureboost.py``, default
credit, 24,000 training rows × 23 features, 30 trees, depth 3, 32 bins, two
workers): 19.3–20.5 s in process against 46.0 s with the earlier kernel (the feature
holder multiplying the bank's encrypted gradients with rotations), the same
splits as the plaintext reference.

Payload classes live in :mod:`fedrisk.models.secureboost_payloads` and are
re-exported here; the tree algorithm, model and routing tables in
:mod:`fedrisk.models.secureboost_tree`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts

from fedrisk.crypto.bfv import load_public_bfv_context, make_bfv_context, public_bfv_context_bytes
from fedrisk.crypto.encrypted_bins import BinMatrixLayout, MaskedHistogramEvaluator, decrypt_masked_totals, encrypt_bin_matrix
from fedrisk.crypto.encrypted_histogram import (
    HistogramLayout,
    one_hot_bins,
    quantisation,
)
from fedrisk.crypto.encrypted_matvec import check_fingerprint, context_fingerprint
from fedrisk.crypto.frames import peek_frame
from fedrisk.errors import ConfigError, CryptoError, DataValidationError, ProtocolError
from fedrisk.models.secureboost_payloads import (
    PAYLOAD_TYPES,
    BinLayout,
    BoostPlan,
    MaskedHistogramBatch,
    MaskedTotals,
    SplitAnswers,
    SplitDecisions,
    SplitOrder,
    SplitPartitions,
    TrainingDone,
    content_class_of,
    parse_payload,
)
from fedrisk.models.secureboost_tree import (
    MISSING,
    BoostParams,
    Histogram,
    QuantileBinner,
    RoutingTable,
    SecureBoostModel,
    SplitCandidate,
    TreeBuilder,
    base_score,
    best_split,
    child_bounds,
    gradients,
    leaf_weight,
    monotone_array,
    new_node,
    plain_histogram,
    sample_rows,
    sigmoid,
)
from fedrisk.models.in_process import InProcessEstimator, InProcessRun, Wire, WireRecord, align_rows, table_parts
from fedrisk.models.vertical_lr import VerticalPayload

__all__ = [
    "PAYLOAD_TYPES",
    "BinLayout",
    "BoostPlan",
    "CoordinatorSB",
    "FeatureHolderSB",
    "LabelHolderSB",
    "MaskedHistogramBatch",
    "MaskedTotals",
    "SplitAnswers",
    "SplitDecisions",
    "SplitOrder",
    "SplitPartitions",
    "TrainingDone",
    "VerticalSecureBoost",
    "WireRecord",
    "answer_splits",
    "content_class_of",
    "parse_payload",
    "feature_holder_bundle",
    "label_holder_bundle",
    "load_feature_holder_bundle",
    "load_label_holder_bundle",
    "make_label_holder_context",
    "train_secureboost",
]

log = logging.getLogger("fedrisk.secureboost")


def make_label_holder_context() -> ts.Context:
    """The bank's fresh secret BFV context for one SecureBoost run.

    Its fingerprint names the run on every payload, and a party refuses a payload
    under any other. No Galois keys: the histograms are evaluated on each feature
    holder's bins under that holder's own key, so nothing ever rotates under the
    bank's (they would cost 1.7 s of key generation and tens of MB on the wire).
    """
    return make_bfv_context(galois=False)


# =========================================================================== label holder


@dataclass
class Node:
    """The bank's view of a node of the tree being grown."""

    index: int
    depth: int
    parent: int = -1
    side: str = ""  # "left"/"right" of parent
    rows: np.ndarray | None = None  # training rows reaching the node
    grad: float = 0.0
    hess: float = 0.0
    own: Histogram | None = None
    raw: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)  # party -> (G, H, G_nan, H_nan)
    derive_from: int = -1  # sibling whose histograms minus the parent's give ours
    decided: bool = False
    waiting_partition: str = ""  # owner whose partition is outstanding
    children: tuple[int, int] | None = None
    bounds: tuple[float, float] = (-math.inf, math.inf)  # leaf-value bounds from monotone splits above


class LabelHolderSB:
    """The bank's side: labels, own features, the CKKS secret key, the tree structure.

    Parameters
    ----------
    context : tenseal.Context
        The bank's BFV context **with** its secret key (:func:`make_label_holder_context`).
    name : str
    n_trees, max_depth, learning_rate, reg_lambda, min_child_weight, subsample, n_bins
        See :class:`~fedrisk.models.secureboost_tree.BoostParams`.
    random_state : int, optional
        Seed of the row subsampling.
    n_jobs : int
        Worker processes of each feature holder's histogram evaluator
        (:class:`~fedrisk.crypto.encrypted_bins.MaskedHistogramEvaluator`).

    Attributes
    ----------
    model_ : SecureBoostModel
        The trees (available when :attr:`done_`).
    binner_ : QuantileBinner
        Bins of the bank's own features.
    history_ : list of dict
        Per tree: ``tree``, ``seconds``, ``train_loss`` (before the tree), ``splits`` per party.
    """

    def __init__(
        self,
        context: ts.Context,
        *,
        name: str = "bank",
        n_trees: int = 30,
        max_depth: int = 3,
        learning_rate: float = 0.3,
        reg_lambda: float = 1.0,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        n_bins: int = 32,
        random_state: int | None = 0,
        monotone: Mapping[str, int] | None = None,
        n_jobs: int = 1,
    ) -> None:
        if not context.is_private():
            raise CryptoError("the label holder needs its BFV context with the secret key")
        self.context = context
        self.name = name
        self.monotone = monotone
        self._monotone: dict[str, np.ndarray | None] = {}
        self.params = BoostParams(n_trees, max_depth, float(learning_rate), float(reg_lambda), float(min_child_weight), float(subsample), n_bins)
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.fingerprint = context_fingerprint(context)
        self._evaluators: dict[str, MaskedHistogramEvaluator] = {}
        self.done_ = False

    # ------------------------------------------------------------------ setup
    def setup(self, X: np.ndarray, y: np.ndarray, coverage: Mapping[str, np.ndarray], *, feature_names: Sequence[str] | None = None) -> BoostPlan:
        """Bin own features, fix the base score; return the plan for the feature holders.

        Parameters
        ----------
        X : ndarray (n_rows, n_features)
            Own features on the aligned training rows (NaN = missing).
        y : ndarray (n_rows,)
            0/1 default labels.
        coverage : mapping party → bool ndarray (n_rows,)
            Rows each feature holder covers (known from PSI).
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).ravel()
        if X.ndim != 2 or X.shape[0] != y.size:
            raise DataValidationError(f"label holder: X has shape {X.shape} but there are {y.size} labels")
        if not np.all(np.isin(y, (0, 1))):
            raise DataValidationError("label holder: labels must be 0/1")
        if np.unique(y).size < 2:
            raise DataValidationError("label holder: the training rows hold only one class")
        if not coverage:
            raise ConfigError("vertical training needs at least one feature holder")
        n = y.size
        self.coverage_ = {}
        for party, cov in coverage.items():
            cov = np.asarray(cov, dtype=bool)
            if cov.shape != (n,):
                raise DataValidationError(f"coverage of {party!r} must have one entry per aligned row")
            self.coverage_[party] = cov
        self.feature_holders_ = tuple(coverage)
        self.feature_names_ = tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(X.shape[1]))
        self._monotone = {**self._monotone, self.name: monotone_array(self.monotone, self.feature_names_, self.name)}
        self.binner_ = QuantileBinner(self.params.n_bins).fit(X)
        self._codes = self.binner_.transform(X)
        self._y = y.astype(np.float64)
        self.base_score_ = base_score(self._y)
        self._raw = np.full(n, self.base_score_)
        self._rng = np.random.default_rng(self.random_state)
        self._layouts: dict[str, HistogramLayout | None] = {}
        self._split_ids = {p: 0 for p in self.feature_holders_}
        self._builder = TreeBuilder()
        self.history_: list[dict[str, Any]] = []
        self.tree_ = -1
        self.done_ = False
        self._outbox: dict[str, list[VerticalPayload]] = {}
        self._queued: dict[str, list[int]] = {}  # nodes whose masked histograms each party gets in the next outbox
        self.plan_ = BoostPlan(self.fingerprint, self.name, self.feature_holders_, n, self.params.n_bins, self.params.n_trees, self.params.max_depth)
        return self.plan_

    def declare_monotone(self, party: str, directions: Sequence[int] | np.ndarray) -> None:
        """A feature holder's declared monotone direction per own feature (+1/−1/0, in its feature order).

        The owner validates the declaration against its own feature names and sends
        only the directions; the bank learns them (not the names' values).
        """
        d = np.asarray(list(directions), dtype=np.int64)
        if d.ndim != 1 or not np.all(np.isin(d, (-1, 0, 1))):
            raise ProtocolError(f"monotone directions of {party!r} must be -1, 0 or +1 per feature")
        self._monotone = {**self._monotone, party: d if d.any() else None}

    def register_layout(self, payload: BinLayout) -> None:
        """Note a feature holder's bins and packing; the first tree starts once all are in."""
        payload.check(self.context)
        if payload.party not in self.feature_holders_:
            raise ProtocolError(f"{payload.party!r} is not a feature holder of this training")
        if payload.party in self._layouts:
            raise ProtocolError(f"{payload.party!r} announced its layout twice")
        layout = payload.layout
        if layout is not None and not self.coverage_[payload.party].any():
            raise ProtocolError(f"{payload.party!r} announces bins but covers no row")
        if layout is not None and max(layout.n_bins) > self.params.n_bins:
            raise ProtocolError(f"{payload.party!r} announces more than {self.params.n_bins} bins")
        self.load_bins(payload)
        self._layouts[payload.party] = layout
        if set(self._layouts) == set(self.feature_holders_):
            self.active_ = tuple(p for p in self.feature_holders_ if self._layouts[p] is not None)
            self._start_tree()

    def load_bins(self, payload: BinLayout) -> None:
        """Load a feature holder's encrypted bins into a histogram evaluator (also when a restarted bank rebuilds)."""
        payload.check(self.context)
        layout = payload.layout
        if layout is None:
            return
        if layout.rows != self._y.size:
            raise ProtocolError(f"{payload.party!r} bins cover {layout.rows} rows, the training {self._y.size}")
        key = load_public_bfv_context(payload.bins_context, f"{payload.party}'s bin key")
        self._evaluators[payload.party] = MaskedHistogramEvaluator(
            key, payload.encrypted_bins, BinMatrixLayout(self._y.size, layout.n_columns), n_jobs=self.n_jobs
        )

    @property
    def layouts_(self) -> dict[str, HistogramLayout | None]:
        return dict(self._layouts)

    # ------------------------------------------------------------------ rounds
    def outbox(self) -> dict[str, list[VerticalPayload]]:
        """Payloads to deliver now, per feature holder (decisions before requests)."""
        out, self._outbox = self._outbox, {}
        queued, self._queued = self._queued, {}
        merged: dict[str, list[VerticalPayload]] = {}
        for party in dict.fromkeys([*out, *queued]):
            items = out.get(party, [])
            decs = [p for p in items if isinstance(p, SplitDecisions)]
            rest = [p for p in items if not isinstance(p, SplitDecisions)]
            batch: list[VerticalPayload] = []
            if decs:
                batch.append(SplitDecisions(self.fingerprint, party, decs[0].tree, decs[0].n_rows, tuple(s for d in decs for s in d.splits)))
            nodes = queued.get(party, [])
            if nodes:
                values = []
                for i in nodes:
                    rows = self._nodes[i].rows
                    assert rows is not None  # a node is queued once its rows are known
                    values.append(np.where(rows, self._packed, 0))
                histograms = self._evaluators[party].node_histograms(values)
                for i, h in zip(nodes, histograms, strict=True):
                    self._masks[(party, i)] = h.mask  # the bank's own: never sent
                per = len(histograms[0].ciphertexts)
                batch.append(MaskedHistogramBatch(self.fingerprint, party, self.tree_, tuple(nodes), per, tuple(b for h in histograms for b in h.ciphertexts)))
            merged[party] = batch + rest
        return merged

    def _send(self, party: str, payload: VerticalPayload) -> None:
        self._outbox.setdefault(party, []).append(payload)

    def receive(self, payload: VerticalPayload) -> None:
        """Take a feature holder's reply (histograms or partitions) and advance the trees."""
        payload.check(self.context)
        if self.done_ or self.tree_ < 0:
            raise ProtocolError(f"{type(payload).__name__} arrived while no tree is being grown")
        if isinstance(payload, MaskedTotals):
            self._receive_totals(payload)
        elif isinstance(payload, SplitPartitions):
            self._receive_partitions(payload)
        else:
            raise ProtocolError(f"the label holder does not accept {type(payload).__name__} during training")
        self._advance()

    # ------------------------------------------------------------------ tree growth
    def _start_tree(self) -> None:
        self._begin_tree()
        self._advance()

    def _begin_tree(self) -> None:
        """Gradients of the next tree, its encryption for the feature holders, the root's requests."""
        self.tree_ += 1
        self._t0 = time.perf_counter()
        n = self._y.size
        g, h = gradients(self._raw, self._y)
        sampled = sample_rows(self._rng, n, self.params.subsample)
        self._g, self._h = np.where(sampled, g, 0.0), np.where(sampled, h, 0.0)
        loss = float(np.mean(np.logaddexp(0.0, self._raw) - self._y * self._raw))
        self.history_.append({"tree": self.tree_, "train_loss": loss})
        self._nodes = [Node(0, 0)]
        self._records = [new_node(0)]
        self._requested: dict[tuple[str, int], str] = {}  # (party, node) -> "pending"/"received"
        self._masks: dict[tuple[str, int], np.ndarray] = {}
        self._packed = quantisation(n).pack(self._g, self._h)
        self._set_rows(self._nodes[0], np.ones(n, dtype=bool))
        self._request(self._nodes[0], self.active_)

    def _set_rows(self, node: Node, rows: np.ndarray) -> None:
        node.rows = rows
        node.grad, node.hess = float(self._g[rows].sum()), float(self._h[rows].sum())
        if node.depth < self.params.max_depth:
            node.own = plain_histogram(self._codes, self.binner_.n_bins_, self._g, self._h, rows)

    def _request(self, node: Node, parties: Sequence[str]) -> None:
        """Queue ``node``'s masked histogram for each party (computed when the round's outbox is taken)."""
        if node.depth >= self.params.max_depth:
            return
        for party in parties:
            self._requested[(party, node.index)] = "pending"
            self._queued.setdefault(party, []).append(node.index)

    def _receive_totals(self, payload: MaskedTotals) -> None:
        party = payload.party
        layout = self._layouts.get(party)
        if layout is None:
            raise ProtocolError(f"{party!r} sent totals but takes no part in histogram building")
        if payload.tree != self.tree_:
            raise ProtocolError(f"totals for tree {payload.tree}, the bank is at tree {self.tree_}")
        if len(set(payload.nodes)) != len(payload.nodes):
            raise ProtocolError(f"{party!r} sent two totals for one node")
        for node_id in payload.nodes:
            if self._requested.get((party, node_id)) != "pending":
                raise ProtocolError(f"{party!r} sent totals for node {node_id} that were not asked for (or twice)")
        q = quantisation(self._y.size)
        for node_id, masked in zip(payload.nodes, payload.totals, strict=True):
            self._requested[(party, node_id)] = "received"
            totals = self._evaluators[party].unmask(masked, self._masks.pop((party, node_id)))
            G, H = q.unpack(totals)
            g_bins, g_nan = layout.split_columns(G)
            h_bins, h_nan = layout.split_columns(H)
            self._nodes[node_id].raw[party] = (g_bins, h_bins, g_nan, h_nan)

    def _receive_partitions(self, payload: SplitPartitions) -> None:
        if payload.tree != self.tree_:
            raise ProtocolError(f"partitions for tree {payload.tree}, the bank is at tree {self.tree_}")
        for node_id, go_left in zip(payload.nodes, payload.go_left, strict=True):
            if node_id >= len(self._nodes) or self._nodes[node_id].waiting_partition != payload.party:
                raise ProtocolError(f"{payload.party!r} sent a partition of node {node_id} it was not asked for")
            node = self._nodes[node_id]
            assert node.rows is not None
            if go_left.size != int(node.rows.sum()):
                raise ProtocolError(f"partition of node {node_id} has {go_left.size} rows, the node {int(node.rows.sum())}")
            node.waiting_partition = ""
            left_rows = np.zeros_like(node.rows)
            left_rows[np.flatnonzero(node.rows)] = go_left
            self._make_children(node, left_rows, owner=payload.party)

    def _make_children(self, node: Node, left_rows: np.ndarray, owner: str | None) -> None:
        """Rows of both children are known: compute own histograms, ask the others for the left one."""
        assert node.rows is not None and node.children is not None
        left, right = (self._nodes[i] for i in node.children)
        self._set_rows(left, left_rows)
        self._set_rows(right, node.rows & ~left_rows)
        right.derive_from = left.index
        self._request(left, self.active_)  # the split's owner too: the bank evaluates every histogram

    def _advance(self) -> None:
        """Decide every node whose histograms are complete; finish trees while nothing is open."""
        while not self.done_:
            progress = True
            while progress:
                progress = False
                for node in list(self._nodes):
                    if not node.decided and self._ready(node):
                        self._decide(node)
                        progress = True
            if not all(n.decided and not n.waiting_partition and n.rows is not None for n in self._nodes):
                return  # waiting for histograms or partitions
            self._finish_tree()
            if not self.done_:
                self._begin_tree()

    def _ready(self, node: Node) -> bool:
        if node.rows is None:
            return False
        if node.depth >= self.params.max_depth:
            return True
        for party in self.active_:
            if party in node.raw:
                continue
            sib = self._nodes[node.derive_from] if node.derive_from >= 0 else None
            parent = self._nodes[node.parent] if node.parent >= 0 else None
            if sib is None or parent is None or party not in sib.raw or party not in parent.raw:
                return False
            node.raw[party] = tuple(a - b for a, b in zip(parent.raw[party], sib.raw[party], strict=True))
        return True

    def _party_histogram(self, node: Node, party: str) -> Histogram:
        """A feature holder's histogram at a node; its missing bucket adds the rows it does not cover."""
        assert node.rows is not None
        g_bins, h_bins, g_nan, h_nan = node.raw[party]
        unc = node.rows & ~self.coverage_[party]
        layout = self._layouts[party]
        assert layout is not None
        return Histogram(g_bins, h_bins, g_nan + float(self._g[unc].sum()), h_nan + float(self._h[unc].sum()), np.array(layout.n_bins))

    def _decide(self, node: Node) -> None:
        node.decided = True
        record = self._records[node.index]
        choice: tuple[str, SplitCandidate] | None = None
        if node.depth < self.params.max_depth:
            assert node.own is not None
            options = [(self.name, best_split(node.own, node.grad, node.hess, self.params, monotone=self._monotone.get(self.name), bounds=node.bounds))]
            options += [
                (p, best_split(self._party_histogram(node, p), node.grad, node.hess, self.params, monotone=self._monotone.get(p), bounds=node.bounds))
                for p in self.active_
            ]
            for party, cand in options:  # first strictly better wins: ties go to the earlier party
                if cand is not None and (choice is None or cand.gain > choice[1].gain):
                    choice = (party, cand)
        if choice is None:
            record["value"] = leaf_weight(node.grad, node.hess, self.params, node.bounds)
            return
        party, cand = choice
        left, right = len(self._nodes), len(self._nodes) + 1
        node.children = (left, right)
        mono = self._monotone.get(party)
        b_left, b_right = child_bounds(cand, node.grad, node.hess, self.params, 0 if mono is None else int(mono[cand.feature]), node.bounds)
        self._nodes += [
            Node(left, node.depth + 1, node.index, "left", bounds=b_left),
            Node(right, node.depth + 1, node.index, "right", bounds=b_right),
        ]
        self._records += [new_node(node.depth + 1), new_node(node.depth + 1)]
        record.update(left=left, right=right, default_left=int(cand.default_left), gain=cand.gain)
        if party == self.name:
            record.update(owner=0, feature=cand.feature, bin=cand.bin, threshold=self.binner_.threshold(cand.feature, cand.bin))
            code = self._codes[:, cand.feature]
            go_left = np.where(code == MISSING, cand.default_left, code <= cand.bin)
            self._make_children(node, node.rows & go_left, owner=None)
            return
        split_id = self._split_ids[party]
        self._split_ids[party] += 1
        record.update(owner=1 + self.feature_holders_.index(party), split_id=split_id)
        node.waiting_partition = party
        assert node.rows is not None
        order = SplitOrder(node.index, cand.feature, cand.bin, split_id, cand.default_left, node.rows)
        self._send(party, SplitDecisions(self.fingerprint, party, self.tree_, self._y.size, (order,)))

    def _finish_tree(self) -> None:
        leaf_value = np.array([r["value"] for r in self._records])
        for node in self._nodes:
            if node.children is None:
                assert node.rows is not None
                self._raw[node.rows] += leaf_value[node.index]
        self._builder.add_tree(self._breadth_first(self._records))
        owners = [r["owner"] for r in self._records if r["left"] >= 0]
        names = (self.name, *self.feature_holders_)
        self.history_[-1].update(seconds=time.perf_counter() - self._t0, splits={names[k]: owners.count(k) for k in range(len(names))})
        log.info("tree %d done in %.2f s (loss before %.5f)", self.tree_, self.history_[-1]["seconds"], self.history_[-1]["train_loss"])
        self._nodes, self._records = [], []
        if self.tree_ + 1 >= self.params.n_trees:
            self.done_ = True
            self.model_ = SecureBoostModel((self.name, *self.feature_holders_), self.feature_names_, self.base_score_, self._builder.arrays(), self.params)
            self.close()
            for party in self.feature_holders_:
                self._send(party, TrainingDone(self.fingerprint, self.params.n_trees))

    @staticmethod
    def _breadth_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Renumber a tree's nodes level by level, left before right.

        Nodes are created in the order their histograms arrive, which depends on
        message timing; the stored tree must not.
        """
        order = [0]
        for old in order:
            if records[old]["left"] >= 0:
                order += [records[old]["left"], records[old]["right"]]
        new = {old: i for i, old in enumerate(order)}
        out = []
        for old in order:
            rec = dict(records[old])
            if rec["left"] >= 0:
                rec["left"], rec["right"] = new[rec["left"]], new[rec["right"]]
            out.append(rec)
        return out

    def close(self) -> None:
        """Stop the histogram evaluators' worker processes (idempotent)."""
        for evaluator in self._evaluators.values():
            evaluator.close()

    # ------------------------------------------------------------------ scoring
    def decision_function(self, X: np.ndarray, answers: Mapping[str, SplitAnswers | None]) -> np.ndarray:
        """Raw scores for rows given each feature holder's :class:`SplitAnswers` on the same rows."""
        if not self.done_:
            raise ProtocolError("the model is not trained yet")
        for party, ans in answers.items():
            if ans is not None:
                ans.check(self.context)
                if ans.party != party:
                    raise ProtocolError(f"answers filed under {party!r} come from {ans.party!r}")
        return self.model_.decision_function(X, answers)

    def predict_proba(self, X: np.ndarray, answers: Mapping[str, SplitAnswers | None]) -> np.ndarray:
        p = sigmoid(self.decision_function(X, answers))
        return np.column_stack([1.0 - p, p])


# =========================================================================== feature holder


class FeatureHolderSB:
    """A feature holder's side (tax bureau, platform): own features, the bank's public context, a bins key of its own.

    Parameters
    ----------
    context : tenseal.Context
        The bank's public context (payload fingerprints).
    name : str
    bins_key : tenseal.Context, optional
        This party's own secret BFV context for its bins (a restarted party passes
        the one it saved); a fresh one is made at :meth:`setup` otherwise.

    Attributes
    ----------
    binner_ : QuantileBinner
        Own bins (fitted on own covered rows).
    routing_table_ : RoutingTable
        Own splits: split id → feature, bin, threshold, default direction.
    layout_ : HistogramLayout or None
    bins_key_ : tenseal.Context or None
        Its own secret BFV context: the bank's masked histograms decrypt under it.
    """

    def __init__(self, context: ts.Context, *, name: str, bins_key: ts.Context | None = None) -> None:
        if context.is_private():
            raise CryptoError(f"feature holder {name!r} must hold only the public BFV context")
        if bins_key is not None and not bins_key.is_private():
            raise CryptoError(f"feature holder {name!r}: its bin key must hold its secret key")
        self.context = context
        self.name = name
        self.fingerprint = context_fingerprint(context)
        self.bins_key_: ts.Context | None = bins_key
        self._bins: BinMatrixLayout | None = None
        self.done_ = False

    def setup(self, X: np.ndarray, coverage: np.ndarray, plan: BoostPlan, *, feature_names: Sequence[str] | None = None) -> BinLayout:
        """Bin own features on own covered rows, pre-encode the bins; announce the layout.

        Parameters
        ----------
        X : ndarray (n_rows, n_features)
            Own features in the bank's aligned row order (NaN = missing; uncovered rows ignored).
        coverage : bool ndarray (n_rows,)
        plan : BoostPlan
        """
        plan.check(self.context)
        if self.name not in plan.feature_holders:
            raise ProtocolError(f"the boost plan does not include {self.name!r}")
        X = np.asarray(X, dtype=np.float64)
        cov = np.asarray(coverage, dtype=bool)
        if X.ndim != 2 or X.shape[0] != plan.n_rows or cov.shape != (plan.n_rows,):
            raise DataValidationError(f"{self.name}: X has shape {X.shape}, the plan has {plan.n_rows} aligned rows")
        self.plan_ = plan
        self.feature_names_ = tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(X.shape[1]))
        self.n_features_in_ = X.shape[1]
        self.binner_ = QuantileBinner(plan.n_bins).fit(X, cov)
        codes = self.binner_.transform(X)
        codes[~cov] = MISSING  # a row it does not know is missing everywhere
        self._codes = codes
        self.routing_table_ = RoutingTable.empty(self.name, self.feature_names_)
        self.layout_: HistogramLayout | None = None
        self._bins = None
        self._tree = -1
        self._node_rows: dict[int, np.ndarray] = {}
        self._partitions: dict[int, np.ndarray] = {}
        self.done_ = False
        if not (cov.any() and X.shape[1] > 0):
            return BinLayout(self.fingerprint, self.name, self.n_features_in_, None)
        n_bins, has_missing = self.binner_.n_bins_.tolist(), self.binner_.has_missing_.tolist()
        onehot = one_hot_bins(codes, n_bins, has_missing, cov)
        if self.bins_key_ is None:
            self.bins_key_ = make_bfv_context(galois=False)  # this party's own: the bank never holds it
        self._bins, encrypted = encrypt_bin_matrix(self.bins_key_, onehot)
        self.layout_ = HistogramLayout(
            tuple(int(b) for b in n_bins), tuple(bool(m) for m in has_missing), self._bins.poly_degree, self._bins.columns_per_ciphertext, plan.n_rows
        )
        return BinLayout(
            self.fingerprint, self.name, self.n_features_in_, self.layout_, public_bfv_context_bytes(self.bins_key_, galois=False), tuple(encrypted)
        )

    def handle(self, payloads: Sequence[VerticalPayload]) -> list[VerticalPayload]:
        """Process one round's payloads in order; return the replies (partitions before totals)."""
        replies: list[VerticalPayload] = []
        for payload in payloads:
            if isinstance(payload, SplitDecisions):
                replies.append(self.apply_splits(payload))
            elif isinstance(payload, MaskedHistogramBatch):
                replies.append(self.masked_totals(payload))
            elif isinstance(payload, TrainingDone):
                self.finish(payload)
            else:
                raise ProtocolError(f"{self.name} does not accept {type(payload).__name__}")
        return replies

    def _require_active(self) -> None:
        if getattr(self, "plan_", None) is None or self.done_:
            raise ProtocolError(f"{self.name}: not set up for training (or already finished)")

    def _enter_tree(self, tree: int) -> None:
        """Messages of a later tree start it: the previous tree's row sets are forgotten."""
        if tree < self._tree:
            raise ProtocolError(f"{self.name}: a message for tree {tree}, already at tree {self._tree}")
        if tree > self._tree:
            self._tree = tree
            self._node_rows, self._partitions = {}, {}

    def apply_splits(self, payload: SplitDecisions) -> SplitPartitions:
        """File each "your feature, your bin" under its split id; say which node rows go left."""
        payload.check(self.context)
        self._require_active()
        if payload.party != self.name:
            raise ProtocolError(f"{self.name}: split decisions for {payload.party!r}, tree {payload.tree}")
        self._enter_tree(payload.tree)
        nodes, parts = [], []
        for s in payload.splits:
            if s.feature >= self.n_features_in_ or s.bin >= int(self.binner_.n_bins_[s.feature]):
                raise ProtocolError(f"{self.name}: no feature {s.feature} bin {s.bin} to split on")
            if s.rows.shape != (self.plan_.n_rows,):
                raise ProtocolError(f"{self.name}: split node row set has the wrong size")
            code = self._codes[:, s.feature]
            go_left = np.where(code == MISSING, s.default_left, code <= s.bin)
            self.routing_table_.add(s.split_id, s.feature, s.bin, self.binner_.threshold(s.feature, s.bin), s.default_left)
            self._node_rows[s.node] = s.rows
            self._partitions[s.node] = s.rows & go_left
            nodes.append(s.node)
            parts.append(go_left[s.rows])
        return SplitPartitions(self.fingerprint, self.name, self._tree, tuple(nodes), tuple(parts))

    def masked_totals(self, payload: MaskedHistogramBatch) -> MaskedTotals:
        """Decrypt the bank's masked histograms; return each one's total coefficients, still masked."""
        payload.check(self.context)
        self._require_active()
        if payload.party != self.name or self._bins is None or self.bins_key_ is None:
            raise ProtocolError(f"{self.name}: masked histograms for {payload.party!r}")
        if payload.per_node != self._bins.groups:
            raise ProtocolError(f"{self.name}: {payload.per_node} ciphertexts per node, the bins have {self._bins.groups} groups")
        self._enter_tree(payload.tree)
        totals = tuple(decrypt_masked_totals(self.bins_key_, payload.node_ciphertexts(i), self._bins) for i in range(len(payload.nodes)))
        return MaskedTotals(self.fingerprint, self.name, self._tree, payload.nodes, totals)

    def finish(self, payload: TrainingDone) -> None:
        """Training is over: keep the routing table, stop the workers."""
        payload.check(self.context)
        self.done_ = True
        self.close()

    # ------------------------------------------------------------------ scoring
    def answer(self, X: np.ndarray) -> SplitAnswers:
        """Left/right for every own split id on rows of own features (NaN → default)."""
        return answer_splits(self.routing_table_, X, fingerprint=self.fingerprint)

    def close(self) -> None:
        """Nothing runs in the background on this side any more (kept for the parties' shutdown path)."""


# =========================================================================== coordinator


class CoordinatorSB:
    """What the coordinator does for SecureBoost: check routes and contexts, relay.

    Holds only a public context and refuses a secret one.
    """

    ROUTES: ClassVar[dict[tuple[str, str], frozenset[bytes]]] = {
        ("label_holder", "feature_holder"): frozenset({b"SPLN", b"SMHB", b"SDEC", b"SDON"}),
        ("feature_holder", "label_holder"): frozenset({b"SLAY", b"SMTT", b"SPRT", b"SANS"}),
    }
    SENDER_NAMED: ClassVar[frozenset[bytes]] = frozenset({b"SLAY", b"SMTT", b"SPRT", b"SANS"})
    RECEIVER_NAMED: ClassVar[frozenset[bytes]] = frozenset({b"SMHB", b"SDEC"})

    def __init__(self, context: ts.Context, *, label_holder: str, feature_holders: Sequence[str]) -> None:
        if context.is_private():
            raise CryptoError("the coordinator must not hold the CKKS secret key")
        self.context = context
        self.fingerprint = context_fingerprint(context)
        self.label_holder = label_holder
        self.feature_holders = tuple(feature_holders)

    def role(self, party: str) -> str:
        if party == self.label_holder:
            return "label_holder"
        if party in self.feature_holders:
            return "feature_holder"
        raise ProtocolError(f"unknown party {party!r}")

    def relay(self, sender: str, receiver: str, data: bytes) -> bytes:
        """Check a payload against the routing policy and pass it on unchanged.

        Raises
        ------
        ProtocolError
            The kind may not travel on this link, or a payload names another party.
        ContextMismatchError
            The payload was made under another context.
        """
        kind, fp, header = peek_frame(data)
        allowed = self.ROUTES.get((self.role(sender), self.role(receiver)), frozenset())
        if kind not in allowed:
            raise ProtocolError(f"{kind.decode(errors='replace')} may not travel from {sender} to {receiver}")
        check_fingerprint(self.fingerprint, fp, f"{kind.decode()} payload from {sender}")
        if kind in self.SENDER_NAMED and header.get("party") != sender:
            raise ProtocolError(f"{sender} sent a payload in the name of {header.get('party')!r}")
        if kind in self.RECEIVER_NAMED and header.get("party") != receiver:
            raise ProtocolError(f"{kind.decode()} for {header.get('party')!r} routed to {receiver}")
        return data


# =========================================================================== model export and scoring


def answer_splits(table: RoutingTable, X: np.ndarray, *, fingerprint: str) -> SplitAnswers:
    """A party's answers for all of its split ids on rows of its own features.

    This is what the scoring node asks each feature holder: ``X`` in the party's
    training column order, one row per application (all-NaN for an SME the party
    does not know); ``fingerprint`` is the training context's (bundle metadata).
    One round for any number of trees, at a price: the bank learns the side of every
    split of the party for each scored row, not only of the splits on the row's
    path (asking node by node would reveal less and cost ``max_depth`` rounds).
    """
    return SplitAnswers(fingerprint, table.party, table.split_id.copy(), table.answer(X))


def label_holder_bundle(model: SecureBoostModel | LabelHolderSB, *, context_fingerprint: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The bank's bundle content: tree structure, leaf weights, split owners, own thresholds.

    Write it with :func:`fedrisk.models.bundle.write_model_bundle`. No other party's
    threshold, feature or bin is in it.
    """
    fp = context_fingerprint
    if isinstance(model, LabelHolderSB):
        if not model.done_:
            raise ProtocolError("the label holder has not finished training")
        fp = fp or model.fingerprint
        model = model.model_
    arrays, meta = model.to_bundle()
    meta["context_fingerprint"] = fp
    return arrays, meta


def feature_holder_bundle(
    table: RoutingTable | FeatureHolderSB, *, context_fingerprint: str | None = None, label_holder: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A feature holder's bundle content: only its own split thresholds (its routing table).

    ``label_holder`` (default: the one named in the boost plan) is recorded so that the
    party's scoring service answers that label holder only.
    """
    fp = context_fingerprint
    if isinstance(table, FeatureHolderSB):
        fp = fp or table.fingerprint
        plan = getattr(table, "plan_", None)
        label_holder = label_holder or (plan.label_holder if plan is not None else None)
        table = table.routing_table_
    arrays, meta = table.to_bundle()
    meta["context_fingerprint"] = fp
    if label_holder:
        meta["label_holder"] = label_holder
    return arrays, meta


def load_label_holder_bundle(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> SecureBoostModel:
    """Inverse of :func:`label_holder_bundle` (after :func:`fedrisk.models.bundle.load_model_bundle`)."""
    return SecureBoostModel.from_bundle(arrays, meta)


def load_feature_holder_bundle(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> RoutingTable:
    """Inverse of :func:`feature_holder_bundle`."""
    return RoutingTable.from_bundle(arrays, meta)


# =========================================================================== in-process driver


class VerticalSecureBoost(InProcessEstimator):
    """Vertical SecureBoost run in-process with the full encrypted protocol.

    A scikit-learn–shaped facade over :class:`LabelHolderSB`, :class:`FeatureHolderSB`
    and :class:`CoordinatorSB`: every payload is serialised to bytes, relayed through
    the coordinator's checks, parsed by the receiver (and counted).

    Parameters
    ----------
    n_trees, max_depth, learning_rate, reg_lambda, min_child_weight, subsample, n_bins
        See :class:`~fedrisk.models.secureboost_tree.BoostParams`; the defaults are
        FATE's benchmark configuration (30 trees, depth 3, 32 bins) with XGBoost's
        and FATE's learning rate 0.3.
    random_state : int, optional
        Seed of the row subsampling.
    n_jobs : int
        Worker processes per feature holder for the histogram kernel.
    label : str
        Label column of the bank's table.
    label_holder_name : str

    Attributes
    ----------
    label_holder_ : LabelHolderSB
    feature_holders_ : dict of str → FeatureHolderSB
    coordinator_ : CoordinatorSB
    model_ : SecureBoostModel
        The bank's model.
    routing_tables_ : dict of str → RoutingTable
        Each feature holder's own splits.
    tree_seconds_ : list of float
        Wall time per tree (all parties' work, in-process).
    setup_seconds_, fit_seconds_ : float
    rounds_ : int
        Bank → feature holders rounds (Flower round trips a deployment would need).
    bytes_sent_, bytes_received_ : dict of str → int
    bytes_per_tree_ : float

    Notes
    -----
    ``fit`` is :class:`~fedrisk.models.in_process.InProcessEstimator`'s skeleton
    with this protocol's hooks.
    """

    _monotone_noun = "constraints"
    coordinator_: CoordinatorSB

    def __init__(
        self,
        *,
        n_trees: int = 30,
        max_depth: int = 3,
        learning_rate: float = 0.3,
        reg_lambda: float = 1.0,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        n_bins: int = 32,
        random_state: int | None = 0,
        n_jobs: int = 1,
        label: str = "y",
        label_holder_name: str = "bank",
        monotone: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.monotone = monotone
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.reg_lambda = reg_lambda
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.n_bins = n_bins
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.label = label
        self.label_holder_name = label_holder_name

    def fit(
        self,
        label_holder_table: Any,
        feature_holder_tables: Mapping[str, Any],
        *,
        context: ts.Context | None = None,
        transcript: list[WireRecord] | None = None,
        keep_bytes: bool = False,
    ) -> VerticalSecureBoost:
        """Train over the full protocol.

        Parameters
        ----------
        label_holder_table : PartyTable, DataFrame (``id`` index or column, label column) or (X, y)
        feature_holder_tables : mapping name → PartyTable, DataFrame (joined on ID) or ndarray (already aligned)
        context : tenseal.Context, optional
            The bank's secret context (default: a fresh one, see :func:`make_label_holder_context`).
        transcript : list, optional
            Receives a :class:`WireRecord` per payload (``epoch`` = tree index).
        keep_bytes : bool
            Keep each payload's bytes in the transcript.
        """
        return self._fit(label_holder_table, feature_holder_tables, context=context, transcript=transcript, keep_bytes=keep_bytes)

    # ------------------------------------------------------------------ InProcessEstimator hooks
    def _new_context(self) -> ts.Context:
        return make_label_holder_context()

    def _new_coordinator(self, context: ts.Context, feature_holders: list[str]) -> CoordinatorSB:
        return CoordinatorSB(context, label_holder=self.label_holder_name, feature_holders=feature_holders)

    def _new_label_holder(self, context: ts.Context, monotone: Mapping[str, Any] | None) -> LabelHolderSB:
        return LabelHolderSB(
            context,
            name=self.label_holder_name,
            n_trees=self.n_trees,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            reg_lambda=self.reg_lambda,
            min_child_weight=self.min_child_weight,
            subsample=self.subsample,
            n_bins=self.n_bins,
            random_state=self.random_state,
            monotone=monotone,
            n_jobs=self.n_jobs,
        )

    def _new_feature_holder(self, context: ts.Context, name: str, monotone: Mapping[str, Any] | None) -> FeatureHolderSB:
        return FeatureHolderSB(context, name=name)

    def _setup_label_holder(
        self,
        bank: LabelHolderSB,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        aligned: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
        monotone: dict[str, Any],
        **options: Any,
    ) -> BoostPlan:
        for nm, (_, _, fnames) in aligned.items():  # each owner checks its declaration against its own names
            directions = monotone_array(monotone.get(nm), fnames, nm)
            if directions is not None:
                bank.declare_monotone(nm, directions)
        return bank.setup(X, y, {nm: a[1] for nm, a in aligned.items()}, feature_names=feature_names)

    def _join(self, bank: LabelHolderSB, holder: FeatureHolderSB, plan: bytes, aligned: tuple[np.ndarray, np.ndarray, list[str]], wire: Wire) -> bytes:
        X_k, cov_k, fnames = aligned
        got = BoostPlan.from_bytes(plan, context=holder.context)
        return wire.send(holder.name, self.label_holder_name, holder.setup(X_k, cov_k, got, feature_names=fnames))

    def _joined(self, bank: LabelHolderSB, replies: list[Any]) -> None:
        for data in replies:  # the bin layouts, once every feature holder has joined
            bank.register_layout(BinLayout.from_bytes(data, context=bank.context))

    def _set_fitted(self, run: InProcessRun) -> None:
        self.rounds_ = run.result
        self.model_ = run.label_holder.model_
        self.routing_tables_ = {nm: fh.routing_table_ for nm, fh in run.feature_holders.items()}
        self.tree_seconds_ = [float(h["seconds"]) for h in run.label_holder.history_]
        self.fit_seconds_ = time.perf_counter() - run.started
        self.bytes_per_tree_ = (run.wire.total - self._setup_bytes) / max(1, self.n_trees)

    @staticmethod
    def _aligned(ids: Any, table: Any, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        X, cov, names = align_rows(ids, table, name)
        X = X.copy()
        X[~cov] = np.nan  # a row the party does not cover is missing in every feature
        return X, cov, names

    def _run(self, bank: LabelHolderSB, holders: dict[str, FeatureHolderSB], wire: Wire) -> int:
        self._setup_bytes = wire.total
        rounds = 0
        while True:
            out = bank.outbox()
            if not out:
                if bank.done_:
                    return rounds
                raise ProtocolError("SecureBoost stalled: the bank has nothing to send and is not done")
            rounds += 1
            wire.epoch = bank.tree_
            for party, payloads in out.items():
                fh = holders[party]
                got = [parse_payload(wire.send(bank.name, party, p), context=fh.context) for p in payloads]
                for reply in fh.handle(got):
                    bank.receive(parse_payload(wire.send(party, bank.name, reply), context=bank.context))

    # ------------------------------------------------------------------ scoring
    def answers(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, SplitAnswers]]:
        """The bank's own rows and every feature holder's serialised answers on them."""
        ids, Xb, _, _ = table_parts(label_holder_table, self.label, "label holder")
        answers = {}
        for nm, fh in self.feature_holders_.items():
            X_k = self._aligned(ids, feature_holder_tables[nm], nm)[0] if nm in feature_holder_tables else np.full((len(ids), fh.n_features_in_), np.nan)
            data = self.coordinator_.relay(nm, self.label_holder_name, fh.answer(X_k).to_bytes())
            answers[nm] = SplitAnswers.from_bytes(data, context=self.label_holder_.context)
        return Xb, answers

    def decision_function(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any]) -> np.ndarray:
        """Joint log-odds for the bank's rows, each split answered by its owner."""
        Xb, answers = self.answers(label_holder_table, feature_holder_tables)
        return self.label_holder_.decision_function(Xb, answers)

    def predict_proba(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any]) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default]."""
        p = sigmoid(self.decision_function(label_holder_table, feature_holder_tables))
        return np.column_stack([1.0 - p, p])


def train_secureboost(
    label_holder_table: Any,
    feature_holder_tables: Mapping[str, Any],
    *,
    context: ts.Context | None = None,
    transcript: list[WireRecord] | None = None,
    keep_bytes: bool = False,
    **params: Any,
) -> VerticalSecureBoost:
    """Train vertical SecureBoost in-process; ``params`` are :class:`VerticalSecureBoost` parameters."""
    return VerticalSecureBoost(**params).fit(label_holder_table, feature_holder_tables, context=context, transcript=transcript, keep_bytes=keep_bytes)
