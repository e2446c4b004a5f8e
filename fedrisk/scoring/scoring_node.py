"""The bank's scoring node: live credit decisions from the jointly trained model.

For each application the node

1. parses and validates it (:mod:`~fedrisk.scoring.validation`);
2. takes the bank's own features from the application or from its own table;
3. asks every feature holder's party scoring service for its part —
   its partial score (vertical scorecard) or the direction at each of its
   splits (vertical SecureBoost) — concurrently, under the policy's per-call
   deadline (:mod:`~fedrisk.scoring.fanout`; a party that is down,
   slow or resting becomes "missing" instead of an error);
4. combines the parts exactly as training did
   (:class:`~fedrisk.scoring.bundles.LinearScorer` for the scorecard,
   :class:`~fedrisk.scoring.bundles.PointsScorer` for the points
   scorecard, :class:`~fedrisk.scoring.trees.TreeScorer` for the
   trees), a missing party scored as not covering the SME (for trees: its
   splits take their learned default directions);
5. applies the credit policy (:mod:`~fedrisk.scoring.policy`): band,
   decision, differentiated limit, what a missing party means;
6. records the application durably unless it is an estimate
   (:mod:`~fedrisk.scoring.register`), and answers.

With a CRL (``crl``) the node calls a party only over a link whose server
certificate passed it, pinned to that certificate, and refuses loan systems
whose client certificate it revokes
(:mod:`~fedrisk.scoring.revocation`).

The node serves ``fedrisk.v1.ScoringService`` plus gRPC health checking
(``grpc.health.v1.Health``: ``""`` and ``fedrisk.v1.ScoringService`` report
SERVING once the model is loaded and the parties' channels are open) and server
reflection. It reads requests as raw bytes and parses them itself so that every
bad input is an ``INVALID_ARGUMENT`` naming the field.

Points scorecard. When the bank's bundle is a points table
(:mod:`fedrisk.models.points`), each feature holder answers from its own points
table and the score is the sum of every party's points, ``offset − factor·z``
exactly as offline; the decision's ``score`` is that sum rounded (and clipped to
the policy's range), the PD is ``σ(z)``, and the reasons are in points, per
party: ``PARTY_POINTS`` (each party's points), ``SCORE_POINTS`` (party
``node``: the total; the exact figures are ``Decision.points`` and each
``PartyStatus.points``), then the bank's own features that cost the most
points against their best bin (with bin and points: the bank's own data) and,
per feature holder, the names of its features that cost it the most points —
names only, as for the logistic scorecard. The bundle's scale must be the
policy's.

Stacked model. When the bank's bundle is a stack folder (the bank's part of
each base learner plus its meta-learner bundle,
:mod:`~fedrisk.scoring.stack`), the node serves the stack as one
model: each feature holder is asked once per application for its part of every
base learner (``STACK``), each base learner is combined exactly as when served
alone, and the meta-learner turns their log-odds into the PD at the bank. A
party missing (down, slow, resting) is missing for every base learner alike —
the scorecard scores it as not covering the SME, the trees route its splits by
their defaults — and the policy's fallback applies once. A reply that lacks a
base learner's part is a broken answer: that party is ``UNAVAILABLE`` for the
application (detail: which base learner), never half-used. Reasons: each base
learner's reasons as when served alone, per party (their text names the base
learner), after a ``node`` reason per base learner (``BASE_LEARNER``: its
log-odds, PD, meta weight and contribution) and one for the stack
(``STACK_LOG_ODDS``: intercept, contributions, total) — the bank's own data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedrisk.errors import ConfigError, DataValidationError, FedriskError, LedgerError
from fedrisk.models.points import PartyPoints
from fedrisk.models.scorecard import LabelHolderScorecard
from fedrisk.scoring.bundles import (
    POINTS,
    SECUREBOOST,
    LinearScorer,
    LoadedStack,
    PointsScorer,
    load_bank_model,
    parse_trusted_keys,
)
from fedrisk.scoring.config import NodeConfig, parse_endpoint
from fedrisk.scoring.fanout import PartyFanout, PartyResult
from fedrisk.scoring.policy import APPROVE, DECLINE, load_policy
from fedrisk.scoring.revocation import (
    CertificateRefused,
    LinkError,
    PartyLink,
    RevocationGuard,
)
from fedrisk.scoring.register import (
    DuplicateApplication,
    LocalRegister,
    Register,
    RemoteRegister,
)
from fedrisk.scoring.tables import FeatureLookup, load_feature_lookup
from fedrisk.scoring.transport import (
    SERVER_OPTIONS,
    bind,
    secure_channel,
    server_credentials,
)
from fedrisk.scoring.stack import StackScorer
from fedrisk.scoring.trees import Routing, TreeScorer
from fedrisk.scoring.validation import ApplicationValidator, ValidApplication
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["SERVICE_NAME", "ScoringNode", "SmeNotFound"]

log = logging.getLogger("fedrisk.scoring.node")
SERVICE_NAME = "fedrisk.v1.ScoringService"
_OUTCOMES = {APPROVE: pb.APPROVE, DECLINE: pb.DECLINE, "refer": pb.REFER}
_OUTCOME_NAMES = {pb.APPROVE: "approve", pb.DECLINE: "decline", pb.REFER: "refer", pb.OUTCOME_UNSPECIFIED: "none"}
_STATE_NAMES = {v.number: v.name for v in pb.PartyState.DESCRIPTOR.values}
_PURPOSE_NAMES = {v.number: v.name.lower() for v in pb.Purpose.DESCRIPTOR.values}
_BATCH_WINDOW = 128
_BUDGET_MARGIN_S = 0.003


class SmeNotFound(DataValidationError):
    """The application carries no bank features and the bank's table does not hold the SME."""


class ScoringNode:
    """The scoring node: model, policy, fan-out, register and the gRPC server.

    Parameters
    ----------
    config : NodeConfig
        Paths are as seen by this process (inside the sandbox when sandboxed).

    Raises
    ------
    CryptoError
        When the bundle is unsigned, tampered or signed by an untrusted key.
    ConfigError
        When the policy, the parties or the TLS files do not fit the model.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.model = load_bank_model(config.bundle, parse_trusted_keys(config.trusted_keys))
        self.policy = load_policy(config.policy or None)
        model = self.model
        self.trees: TreeScorer | None = None
        self.points: PointsScorer | None = None
        self.stack: StackScorer | None = None
        self.scorer: LinearScorer | TreeScorer | PointsScorer | StackScorer
        features: Sequence[str]
        mean: Iterable[float]
        scale: Iterable[float]
        if isinstance(model, LoadedStack):  # kind STACK
            self.stack = StackScorer(model)
            self.scorer = self.stack
            features = self.stack.features
            self.table = load_feature_lookup(config.bank_table, model.schema, features, name="bank") if config.bank_table else None
            ref_mean, ref_scale = _range_reference(self.table, len(features))
            for member in self.stack.members:  # a scorecard's training moments where it has them
                if isinstance(member.scorer, LinearScorer):
                    block = member.model.part
                    if not isinstance(block, LabelHolderScorecard):
                        raise ConfigError(f"stack base learner {member.name!r}: the bank's bundle holds no label holder scorecard")
                    for j, col in enumerate(member.columns):
                        ref_mean[col], ref_scale[col] = float(block.mean[j]), float(block.scale[j])
            mean, scale = ref_mean, ref_scale
            known = self.stack.known_parties()
        elif model.kind == POINTS:
            lh = model.part
            if not isinstance(lh, PartyPoints):
                raise ConfigError(f"bundle {config.bundle}: a points bundle holds no points table")
            self.points = PointsScorer(lh, list(model.meta.get("feature_holders") or ()))
            self.scorer = self.points
            features = self.points.features
            _check_scale(self.points.scale, self.policy)
            self.table = load_feature_lookup(config.bank_table, model.schema, features, name="bank") if config.bank_table else None
            mean, scale = _range_reference(self.table, len(features))
            known = set(self.points.parties)
        elif model.kind == SECUREBOOST:
            # imported here as in the bundle loader (which already loaded it for this bundle)
            from fedrisk.models.secureboost_tree import SecureBoostModel

            lh = model.part
            if not isinstance(lh, SecureBoostModel):
                raise ConfigError(f"bundle {config.bundle}: a SecureBoost bundle holds no label holder trees")
            self.trees = TreeScorer(lh)
            self.scorer = self.trees
            features = self.trees.features
            self.table = load_feature_lookup(config.bank_table, model.schema, features, name="bank") if config.bank_table else None
            mean, scale = _range_reference(self.table, len(features))
            known = set(lh.parties[1:])  # (a party owning no split is not asked)
        else:
            lh = model.part
            if not isinstance(lh, LabelHolderScorecard):
                raise ConfigError(f"bundle {config.bundle}: a scorecard bundle holds no label holder scorecard")
            self.scorer = LinearScorer(lh)
            features, mean, scale = lh.features, lh.mean, lh.scale
            self.table = load_feature_lookup(config.bank_table, model.schema, features, name="bank") if config.bank_table else None
            known = set(self.scorer.parties)
        self.validator = ApplicationValidator.for_model(
            features, mean, scale, self.model.schema, max_bytes=config.max_message_bytes, max_abs_z=config.max_abs_z
        )
        wanted, given = set(self.scorer.parties), set(config.parties)
        if wanted - given:
            raise ConfigError(f"the model needs feature holder {min(wanted - given)!r}, but no endpoint was given for it")
        if given - known:
            raise ConfigError(f"endpoint given for {min(given - known)!r}, which is not part of the model {self.model.run_id}")
        self.register: Register | None = None
        self.revocations = RevocationGuard(config.crl, config.ca) if config.crl else None
        self._crl_watcher: asyncio.Future[None] | None = None
        self.fanouts: dict[str, PartyFanout] = {}
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.decisions = 0
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> str:
        """Open channels and the register, bind, and serve; returns the bound address."""
        cfg = self.config
        prefix = f"{self.model.run_id[:12]}-{int(time.time())}"
        for party in self.scorer.parties:
            endpoint = cfg.parties[party]
            link, channel = None, None
            if self.revocations is not None:
                link = self._link(party, endpoint.target, endpoint.authority)
            else:
                channel = secure_channel(endpoint.target, ca=cfg.ca, cert=cfg.client_cert, key=cfg.client_key, authority=endpoint.authority or None)
            self.fanouts[party] = PartyFanout(
                party,
                channel,
                link=link,
                model_version=self.model.run_id,
                deadline_s=self.policy.deadline_ms / 1000.0,
                kind=pb.STACK if self.stack is not None else pb.TREE_ROUTING if self.trees is not None else pb.SCORECARD,
                split_ids=self.trees.split_ids[party] if self.trees is not None else (),
                bases=self.stack.requests(party) if self.stack is not None else (),
                max_reasons=self.policy.max_reasons_per_party,
                max_inflight=cfg.max_inflight_per_party,
                request_prefix=prefix,
            )
        await self._warm_up()
        if self.revocations is not None:
            self._crl_watcher = asyncio.ensure_future(self.revocations.watch(on_change=self._recheck_links))
        if cfg.register_socket:
            self.register = RemoteRegister(cfg.register_socket)
        elif cfg.register:
            self.register = LocalRegister(cfg.register)
        interceptors = [self.revocations.interceptor()] if self.revocations is not None and cfg.client_ca else []
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        server.add_generic_rpc_handlers((self._handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        creds = server_credentials(cfg.tls_cert, cfg.tls_key, client_ca=cfg.client_ca or None)
        self.address = bind(server, cfg.listen, creds)
        await server.start()
        self.server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("scoring node %s serving on %s (model %s, policy %s)", prefix, self.address, self.model.model_version, self.policy.label)
        return self.address

    def _link(self, party: str, target: str, authority: str) -> PartyLink:
        cfg = self.config
        if not authority:
            if target.startswith("unix:"):
                raise ConfigError(f"party {party}: a Unix-socket endpoint needs the name its certificate carries (authority)")
            authority = parse_endpoint(target)[0]

        def channel(target: str, root_pem: bytes, authority: str) -> grpc.aio.Channel:
            return secure_channel(target, ca=cfg.ca, cert=cfg.client_cert, key=cfg.client_key, authority=authority, root_pem=root_pem)

        assert self.revocations is not None
        return PartyLink(party, target, authority, ca=cfg.ca, cert=cfg.client_cert, key=cfg.client_key, guard=self.revocations, channel_factory=channel)

    def _recheck_links(self) -> None:
        """A new CRL: drop every party link whose pinned certificate it revokes."""
        for fanout in self.fanouts.values():
            if fanout.link is not None:
                fanout.link.recheck()

    async def _warm_up(self, timeout: float = 5.0) -> None:
        """Connect to every party (TCP + TLS) before serving; a party that is down is left to the policy."""
        loop = asyncio.get_running_loop()

        async def ready(party: str, fanout: PartyFanout) -> None:
            if fanout.link is not None:  # check the party's certificate against the CRL, then pin it
                try:
                    fanout.use_channel(await asyncio.wait_for(fanout.link.ensure(), timeout))
                except CertificateRefused:
                    return  # the link said which certificate, and why
                except (LinkError, TimeoutError) as err:
                    log.warning("party %s is not reachable yet (%s); decisions follow the policy until it is", party, err or "timed out")
                    return
            channel = fanout.channel
            assert channel is not None
            deadline = loop.time() + timeout
            state = channel.get_state(try_to_connect=True)
            while state != grpc.ChannelConnectivity.READY:
                remaining = deadline - loop.time()
                if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE or remaining <= 0:
                    log.warning("party %s is not reachable yet; decisions follow the policy until it is", party)
                    return
                try:
                    await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
                except TimeoutError:
                    continue
                state = channel.get_state()

        await asyncio.gather(*(ready(p, f) for p, f in self.fanouts.items()))

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving (in-flight decisions get ``grace`` seconds), then close everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._crl_watcher is not None:
            self._crl_watcher.cancel()
        await self._health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        for fanout in self.fanouts.values():
            await fanout.close()
        if self.register is not None:
            await self.register.close()

    async def wait(self) -> None:
        """Until :meth:`stop` has run."""
        await self._stopped.wait()

    def fanout_summary(self) -> dict[str, Any]:
        """Per-party fan-out counters (calls, mean batch, latency percentiles)."""
        return {p: f.stats.summary() for p, f in self.fanouts.items()}

    # -------------------------------------------------------------- handlers
    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Score": grpc.unary_unary_rpc_method_handler(self._score, response_serializer=pb.Decision.SerializeToString),
                "ScoreBatch": grpc.stream_stream_rpc_method_handler(self._score_batch, response_serializer=pb.Decision.SerializeToString),
                "Describe": grpc.unary_unary_rpc_method_handler(self._describe, response_serializer=pb.NodeDescription.SerializeToString),
            },
        )

    async def _score(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Decision:
        t0 = time.perf_counter()
        try:
            app = self.validator.validate(self.validator.parse(request))
            return await self.decide(app, t0, context.time_remaining())
        except Exception as exc:  # mapped to a status with one line
            code, message = _status_of(exc)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    async def _score_batch(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Decision]:
        queue: asyncio.Queue[asyncio.Future[pb.Decision] | BaseException | None] = asyncio.Queue(maxsize=_BATCH_WINDOW)

        async def reader() -> None:
            index = 0
            try:
                async for raw in requests:
                    what = f"application #{index}"
                    try:
                        app = self.validator.validate(self.validator.parse(raw, what), what)
                    except DataValidationError as exc:
                        await queue.put(exc)
                        return
                    await queue.put(asyncio.ensure_future(self._decide_in_batch(app, index)))
                    index += 1
            except Exception as exc:  # a broken stream ends the batch
                await queue.put(exc)
                return
            await queue.put(None)

        feeder = asyncio.ensure_future(reader())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    code, message = _status_of(item)
                    await context.abort(code, message)
                try:
                    yield await item  # type: ignore[misc]
                except Exception as exc:
                    code, message = _status_of(exc)
                    await context.abort(code, message)
        finally:
            feeder.cancel()

    async def _decide_in_batch(self, app: ValidApplication, index: int) -> pb.Decision:
        t0 = time.perf_counter()
        try:
            decision = await self.decide(app, t0, None)
        except SmeNotFound as exc:
            decision = pb.Decision(
                application_id=app.application_id,
                sme_id=app.sme_id,
                outcome=pb.OUTCOME_UNSPECIFIED,
                reasons=[pb.Reason(party="node", code="NOT_FOUND", text=str(exc))],
                model_version=self.model.model_version,
                policy_version=self.policy.label,
            )
        decision.index = index
        return decision

    async def _describe(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.NodeDescription:
        return pb.NodeDescription(
            model_version=self.model.model_version,
            policy_version=self.policy.label,
            label_holder=self.model.party,
            feature_holders=list(self.scorer.parties),
            bank_features=list(self.scorer.features),
            id_format=self.validator.id_format,
            sandbox=self.config.sandbox,
            parties=[f.status() for f in self.fanouts.values()],
        )

    # -------------------------------------------------------------- decision
    async def decide(self, app: ValidApplication, t0: float, budget_s: float | None) -> pb.Decision:
        """One decision (raises :class:`FedriskError` subclasses for the caller to map)."""
        x = app.features
        if x is None:
            if self.table is None:
                raise DataValidationError("Application.features is empty and this node has no bank table to read them from")
            x = self.table.row(app.sme_id)
            if x is None:
                raise SmeNotFound(f"SME {app.sme_id} is not in the bank's table and the application carries no features")
        party_budget = None if budget_s is None else budget_s - _BUDGET_MARGIN_S
        # every ask is already in flight; awaiting them in turn costs less than a gather
        pending = [f.ask(app.sme_id, party_budget) for f in self.fanouts.values()]
        results: list[PartyResult] = [await fut for fut in pending]
        missing = [r.party for r in results if r.failed]
        points = None
        party_points: dict[str, float] = {}
        if self.stack is not None:
            pd, model_reasons = self._stack_part(self.stack, x, results)
        elif self.points is not None:
            pd, model_reasons, points, party_points = self._points_part(self.points, x, results)
        elif self.trees is None:
            pd, model_reasons = self._scorecard_part(x, results)
        else:
            pd, model_reasons = self._tree_part(self.trees, x, results)
        outcome = self.policy.decide(pd, declared_revenue=app.declared_revenue, requested_amount=app.requested_amount, unavailable=missing)
        score = outcome.score if points is None else int(min(max(round(points), self.policy.min_points), self.policy.max_points))
        reasons = [pb.Reason(party="policy", code=r.code, text=r.text) for r in outcome.reasons]
        reasons += model_reasons
        decision = pb.Decision(
            application_id=app.application_id,
            sme_id=app.sme_id,
            outcome=_OUTCOMES[outcome.decision],
            probability_of_default=pd,
            score=score,
            credit_limit=outcome.credit_limit,
            currency=self.policy.currency,
            risk_band=outcome.band,
            reasons=reasons,
            parties=[
                pb.PartyStatus(party=r.party, state=r.state, latency_ms=round(r.latency_ms, 3), detail=r.detail, points=party_points.get(r.party, 0.0))
                for r in results
            ],
            model_version=self.model.model_version,
            policy_version=self.policy.label,
            degraded=bool(missing),
            points=0.0 if points is None else points,
        )
        if not app.estimate_only and self.register is not None:
            decision.latency_ms = (time.perf_counter() - t0) * 1000.0
            await self.register.record(self._record(app, decision))
            decision.recorded = True
        self.decisions += 1
        decision.latency_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        return decision

    def _scorecard_part(self, x: Sequence[float], results: Sequence[PartyResult]) -> tuple[float, list[pb.Reason]]:
        """PD and model reasons from the scorecard: own block, coverage indicators, the parties' partial scores."""
        z, reasons = self._scorecard_log_odds(self.scorer, x, results)  # type: ignore[arg-type]
        return LinearScorer.probability(z), reasons

    def _scorecard_log_odds(self, scorer: LinearScorer, x: Sequence[float], results: Sequence[PartyResult], tag: str = "") -> tuple[float, list[pb.Reason]]:
        """Log-odds and model reasons from a scorecard (``tag``: appended to each reason's text)."""
        partials: dict[str, float | None] = {}
        covered: dict[str, bool] = {}
        for r in results:
            partials[r.party] = r.partial_score if r.state == pb.COVERED else None
            covered[r.party] = r.state == pb.COVERED
        own = scorer.contributions(x)
        indicators = scorer.indicator_contributions(covered)
        z = scorer.log_odds(own, indicators, partials)
        reasons = self._bank_reasons(own, indicators, covered, scorer.features, tag)
        for r in results:
            for feature in r.reasons:
                reasons.append(pb.Reason(party=r.party, code=feature, text=f"{r.party} data: {feature} raises the risk{tag}"))
        return z, reasons

    def _points_part(self, scorer: PointsScorer, x: Sequence[float], results: Sequence[PartyResult]) -> tuple[float, list[pb.Reason], float, dict[str, float]]:
        """PD, reasons in points per party, the exact score and each feature holder's points from the points tables: the bank's, the parties' points."""
        covered = {r.party: r.state == pb.COVERED for r in results}
        own = scorer.own_points(x)
        bank = scorer.bank_points(own, scorer.indicator_points(covered))
        parts = {r.party: scorer.party_points(r.partial_score if r.state == pb.COVERED else None) for r in results}
        total = bank
        for party in scorer.parties:  # the order of PointsScorecard.partial_points: the bank, then each feature holder
            total += parts.get(party, 0.0)
        pd = PointsScorer.probability(scorer.log_odds(total))
        reasons = [pb.Reason(party="node", code="SCORE_POINTS", text=f"score {total:.2f} points: the sum of every party's points")]
        reasons.append(pb.Reason(party=self.model.party, code="PARTY_POINTS", text=f"{self.model.party}: {bank:.2f} points (base points included)"))
        k = self.policy.max_reasons_per_party
        for below, code, bin_text, pts in scorer.reasons(x, covered)[: max(k, 0)]:
            if code.startswith("thin_file:"):
                party = code.split(":", 1)[1]
                text = f"{party} holds no data on this SME (thin file): {pts:.1f} points, {below:.1f} below covered"
            else:
                text = f"bank data: {code} in {bin_text} scores {pts:.1f} points, {below:.1f} below its best bin"
            reasons.append(pb.Reason(party=self.model.party, code=code, text=text))
        for r in results:
            state = "" if r.state == pb.COVERED else f" ({_STATE_NAMES.get(r.state, 'missing').lower().replace('_', ' ')}: 0 points)"
            reasons.append(pb.Reason(party=r.party, code="PARTY_POINTS", text=f"{r.party}: {parts[r.party]:.2f} points{state}"))
            for feature in r.reasons:
                reasons.append(pb.Reason(party=r.party, code=feature, text=f"{r.party} data: {feature} costs points against its best bin"))
        return pd, reasons, total, parts

    def _tree_part(self, trees: TreeScorer, x: Sequence[float], results: Sequence[PartyResult]) -> tuple[float, list[pb.Reason]]:
        """PD and model reasons from the trees, routed with the parties' answers (defaults for the others).

        Reasons: the bank's own features whose values raise the log-odds most
        against treating them as missing, then each party whose answers raise it
        against its splits' default directions — names only.
        """
        z, reasons = self._tree_log_odds(trees, x, results)
        return TreeScorer.probability(z), reasons

    def _tree_log_odds(self, trees: TreeScorer, x: Sequence[float], results: Sequence[PartyResult], tag: str = "") -> tuple[float, list[pb.Reason]]:
        """Log-odds and model reasons from the trees (``tag``: appended to each reason's text)."""
        answers: dict[str, Routing] = {r.party: r.routing if r.state == pb.COVERED else None for r in results}
        z = trees.log_odds(x, answers)
        k = self.policy.max_reasons_per_party
        if k <= 0:
            return z, []
        own, parties = trees.contributions(x, answers)
        ranked = sorted((name for name, c in own.items() if c > 0), key=lambda name: -own[name])
        reasons = [pb.Reason(party="bank", code=name, text=f"bank data: {name} raises the risk{tag}") for name in ranked[:k]]
        for party in sorted(parties, key=lambda p: -parties[p]):
            if parties[party] > 0:
                reasons.append(pb.Reason(party=party, code="tree_routing", text=f"{party} data: where the SME falls at {party}'s splits raises the risk{tag}"))
        return z, reasons

    def _stack_part(self, stack: StackScorer, x: Sequence[float], results: Sequence[PartyResult]) -> tuple[float, list[pb.Reason]]:
        """PD and reasons of the stack: every base learner combined as when served alone, then the meta-learner (at the bank).

        A party's one answer carries its part of each base learner it takes part
        in; a party that did not cover the SME or did not answer is that for every
        base learner.
        """
        per_base: list[list[PartyResult]] = [[] for _ in stack.members]
        for r in results:
            for j, k in enumerate(stack.party_bases.get(r.party, ())):
                if r.state == pb.COVERED:
                    assert r.parts is not None  # the fan-out checked one part per base learner asked
                    part = r.parts[j]
                else:
                    part = PartyResult(r.party, r.state, latency_ms=r.latency_ms, detail=r.detail)
                per_base[k].append(part)
        zs: list[float] = []
        base_reasons: list[pb.Reason] = []
        for member, parts in zip(stack.members, per_base):
            xb = [x[c] for c in member.columns]
            tag = f" ({member.name})"
            if isinstance(member.scorer, TreeScorer):
                z, reasons = self._tree_log_odds(member.scorer, xb, parts, tag)
            else:
                z, reasons = self._scorecard_log_odds(member.scorer, xb, parts, tag)
            zs.append(z)
            base_reasons += reasons
        z_stack = stack.log_odds(zs)
        pd = StackScorer.probability(z_stack)
        reasons = []
        for member, a, z in zip(stack.members, stack.coef, zs):
            reasons.append(
                pb.Reason(
                    party="node",
                    code=f"BASE_LEARNER:{member.name}",
                    text=(f"{member.name}: log-odds {z:+.4f} (PD {StackScorer.probability(z):.4f}) x meta weight {a:+.4f} = {a * z:+.4f}"),
                )
            )
        terms = " ".join(f"{a * z:+.4f}" for a, z in zip(stack.coef, zs))
        reasons.append(
            pb.Reason(
                party="node", code="STACK_LOG_ODDS", text=(f"stack log-odds {z_stack:+.4f} = meta intercept {stack.intercept:+.4f} {terms} (PD {pd:.4f})")
            )
        )
        return pd, reasons + base_reasons

    def _bank_reasons(
        self, own: list[float], indicators: Mapping[str, float], covered: Mapping[str, bool], features: Sequence[str], tag: str = ""
    ) -> list[pb.Reason]:
        k = self.policy.max_reasons_per_party
        if k <= 0:
            return []
        items = [(c, name, False) for c, name in zip(own, features) if c > 0]
        items += [(c, party, True) for party, c in indicators.items() if c > 0 and not covered.get(party, False)]
        items.sort(key=lambda t: -t[0])
        out = []
        for _, name, is_indicator in items[:k]:
            if is_indicator:
                out.append(pb.Reason(party="bank", code=f"thin_file:{name}", text=f"{name} holds no data on this SME (thin file){tag}"))
            else:
                out.append(pb.Reason(party="bank", code=name, text=f"bank data: {name} raises the risk{tag}"))
        return out

    def _record(self, app: ValidApplication, d: pb.Decision) -> list[Any]:
        """The register row of a decision, in the register's column order (reasons and parties as canonical JSON)."""
        return [
            d.application_id,
            d.sme_id,
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            _PURPOSE_NAMES.get(app.purpose, "application"),
            _OUTCOME_NAMES[d.outcome],
            d.probability_of_default,
            d.score,
            d.risk_band,
            d.credit_limit,
            d.currency,
            int(d.degraded),
            _json([[r.party, r.code] for r in d.reasons]),
            _json({p.party: _STATE_NAMES[p.state] for p in d.parties}),
            app.declared_revenue,
            app.requested_amount,
            d.model_version,
            d.policy_version,
            round(d.latency_ms, 3),
        ]


_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # as register.as_row encodes reasons and parties


def _check_scale(scale: Any, policy: Any) -> None:
    """A points scorecard's scale must be the policy's: the decision's score and PD bands speak the same points."""
    ours = (float(policy.points_to_double_odds), float(policy.base_odds), float(policy.base_points))
    theirs = (float(scale.pdo), float(scale.base_odds), float(scale.base_score))
    if any(not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) for a, b in zip(ours, theirs)):
        raise ConfigError(
            f"the points scorecard's scale ({theirs[2]:g} points at {theirs[1]:g}:1, PDO {theirs[0]:g}) is not the policy's "
            f"({ours[2]:g} points at {ours[1]:g}:1, PDO {ours[0]:g})"
        )


def _range_reference(table: FeatureLookup | None, n_features: int) -> tuple[list[float], list[float]]:
    """Means and standard deviations the validator's range check measures against, for a tree model.

    Trees keep no feature moments (a scorecard does), so the bank's own table gives
    them; without a table the range check is off (scale ∞), other checks still apply.
    """
    if table is None or not len(table):
        return [0.0] * n_features, [math.inf] * n_features
    with warnings.catch_warnings():  # an all-missing column: mean 0, scale 1
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nan_to_num(np.nanmean(table.matrix, axis=0), nan=0.0)
        std = np.nan_to_num(np.nanstd(table.matrix, axis=0), nan=0.0)
    return mean.tolist(), np.where(std > 1e-12, std, 1.0).tolist()


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """gRPC status and one-line message for an error raised while deciding."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, SmeNotFound):
        return grpc.StatusCode.NOT_FOUND, message
    if isinstance(exc, DataValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, DuplicateApplication):
        return grpc.StatusCode.ALREADY_EXISTS, message
    if isinstance(exc, LedgerError):
        return grpc.StatusCode.UNAVAILABLE, f"application register: {message}"
    if isinstance(exc, FedriskError):
        return grpc.StatusCode.FAILED_PRECONDITION, message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    log.exception("internal error while deciding", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the node's log"
