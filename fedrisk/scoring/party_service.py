"""A feature holder's party scoring service: its part of the joint model, on its own table.

Runs at the tax bureau or the platform, next to its data. For each SME the bank's
node asks about, it answers with its part of the joint model, as its bundle says:

* vertical scorecard (``SCORECARD``): its partial log-odds
  ``u_k = Σ_j w_kj·std(x_kj)`` and the *names* of its features that raise the
  risk most — never a feature value, never its coefficients;
* points scorecard (a WOE scorecard as points, :mod:`fedrisk.models.points`;
  ``SCORECARD`` on the wire): its partial points, the sum of the points of the
  bins its SME falls in, read from its own points table (its bundle holds no
  other), sent as its share of the log-odds ``u = −points / factor`` on the
  public scale; and the *names* of its features that cost the most points
  against their best bin, worst first — never a value, a bin or a point amount
  per feature;
* vertical SecureBoost (``TREE_ROUTING``): for each of its own splits (all, or
  those the request lists), whether the SME goes ``LEFT`` or ``RIGHT`` — one
  direction per split id, computed with its own thresholds on its own table
  (a missing value takes the split's learned default). Never a threshold, a
  feature, a value or which feature a split is on. The bank learns the side of
  every split of the party for the SME, not only those on the SME's paths (one
  round for all trees; see :func:`fedrisk.models.secureboost.answer_splits`).

It answers only

* to callers whose mTLS client certificate (signed by the federation CA) has a
  common name on its ``allowed_callers`` list — by default the label holder
  named in its own bundle — and is not revoked by the CA's CRL (``crl``,
  reloaded when it changes: :mod:`~fedrisk.scoring.revocation`);
* for IDs on its allow-list: the trained intersection plus newly aligned IDs
  (append them to the file, in place: the service notices within
  ``RELOAD_EVERY_S`` seconds, or at once on ``SIGHUP`` when not sandboxed). Any
  other ID — unknown to the party, or known but not allowed — gets
  ``NOT_COVERED``, so the bank learns nothing about the party's table beyond the
  allow-list;
* for the joint model it was trained in (``model_version`` = run id; another
  gets ``FAILED_PRECONDITION``).

What the party learns: which SMEs the bank scores and when (the ID travels in
the request; inherent to scoring at decision time, and logged per caller).

Stacked model (``STACK``). Given a stack folder (its own signed bundle for
each base learner of a stacked model: a scorecard block and/or a routing
table, each verified as a single bundle is) the service answers the bank's node
once per SME for every base learner: the request lists the base learners
(``bases``: run id, kind, reasons or split ids asked) and each covered answer
carries one part per base learner (``parts``), each exactly the part above —
partial log-odds and feature names, or directions at its own splits. Coverage
is one allow-list for all of them, so an SME is covered for every base learner
or for none. What each role learns, compared with serving the base learners
alone (one call per base learner per SME):

* the feature holder: the same SME IDs, once instead of once per base learner,
  and that the bank serves these base learners together — which it knew, as it
  holds a bundle of each. Never the meta-learner (its weights stay in the bank's
  bundle), a base learner's joint log-odds, the PD or the decision;
* the bank: exactly each base learner's part as when served alone (partial
  log-odds and reason names; the side of every split of the party) — nothing
  about how the parts relate beyond what it could join from separate calls;
* the meta-learner's inputs (each base learner's log-odds) and output (the PD)
  are computed at the bank's node only.

Answers are precomputed when the table is loaded (one vectorised pass), so a
request costs a dictionary lookup per ID: each answer's protobuf encoding is
cached (per number of reasons, or per set of split ids asked) and the response
is assembled by concatenation — valid protobuf, as a repeated field's elements
may be written one after another.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedrisk.errors import ConfigError, DataValidationError, ProtocolError
from fedrisk.models.scorecard import ScorecardPart
from fedrisk.scoring.bundles import (
    POINTS,
    SECUREBOOST,
    LoadedModel,
    is_stack_folder,
    load_party_models,
    parse_trusted_keys,
)
from fedrisk.scoring.config import PartyServiceConfig
from fedrisk.scoring.revocation import RevocationGuard
from fedrisk.scoring.tables import FeatureLookup, load_feature_lookup
from fedrisk.scoring.transport import (
    SERVER_OPTIONS,
    bind,
    peer_common_name,
    server_credentials,
)
from fedrisk.scoring.validation import (
    check_known_fields,
    check_size,
    normalise_id,
)
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["SERVICE_NAME", "PartyScoringService", "read_allow_list"]

log = logging.getLogger("fedrisk.scoring.party")
SERVICE_NAME = "fedrisk.v1.PartyScoringService"
RELOAD_EVERY_S = 5.0
_MAX_SPLIT_VIEWS = 16  # distinct split-id lists whose encoded answers are cached


def read_allow_list(path: str | Path, id_format: str) -> set[str]:
    """IDs from a file, one per line (``#`` comments and blank lines ignored), normalised."""
    out: set[str] = set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read allow-list {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.add(normalise_id(text, id_format, f"{Path(path).name} line {number}"))
    return out


class _Served:
    """One bundle this party serves (its part of one joint model), precomputed on its own table.

    Parameters
    ----------
    model : LoadedModel
        A verified feature-holder bundle.
    table : str
        The party's own table.
    """

    def __init__(self, model: LoadedModel, table: str) -> None:
        self.model = model
        self.part = model.part
        self.run_id = model.run_id
        self.kind = pb.TREE_ROUTING if model.kind == SECUREBOOST else pb.SCORECARD
        self.points = model.kind == POINTS  # a points table: SCORECARD on the wire
        part = self.part
        features: Sequence[str]
        if self.kind == pb.TREE_ROUTING or self.points:
            # a routing table (trees) or a points table: both name their features
            if isinstance(part, ScorecardPart):
                raise ProtocolError(f"bundle of {model.party!r}: a {model.kind} bundle holds a scorecard block")
            features = part.feature_names
        else:
            if not isinstance(part, ScorecardPart):
                raise ProtocolError(f"bundle of {model.party!r}: a scorecard bundle holds no scorecard block")
            features = part.features
        self.lookup: FeatureLookup = load_feature_lookup(table, model.schema, features, name=model.party)
        # scorecard: ID -> (partial score, adverse feature names); points: ID -> (partial log-odds, names of
        # features costing points, worst first); trees: ID -> goes left at each own split
        self.answers: dict[str, Any] = {}
        self.encoded: dict[tuple[str, int], bytes] = {}
        if self.kind == pb.TREE_ROUTING:
            self.split_ids: tuple[int, ...] = tuple(int(v) for v in self.part.split_id)  # type: ignore[union-attr]
            self._split_column = {sid: j for j, sid in enumerate(self.split_ids)}
            # cached encodings are keyed by a small view number per distinct list of split ids asked
            self._views: dict[tuple[int, ...], int] = {}
            self.view_columns: dict[int, tuple[tuple[int, int], ...]] = {}  # view -> (split id, column)

    def precompute(self, allowed: set[str] | None) -> None:
        """Answers for every ID of the table on the allow-list (one vectorised pass)."""
        ids = [i for i in self.lookup.index if allowed is None or i in allowed]
        rows = np.array([self.lookup.index[i] for i in ids], dtype=np.int64)
        answers: dict[str, Any] = {}
        part: Any = self.part
        if len(rows) and self.kind == pb.TREE_ROUTING:
            go_left = part.answer(self.lookup.matrix[rows])
            for k, sme_id in enumerate(ids):
                answers[sme_id] = tuple(go_left[k].tolist())
        elif len(rows) and self.points:
            X = self.lookup.matrix[rows]
            partial = part.partial_points(X)
            u = -partial / part.scale.factor
            below = part.points_below_best(X)
            order = np.argsort(-below, axis=1, kind="stable")[:, :20]
            names = part.feature_names
            for k, sme_id in enumerate(ids):
                answers[sme_id] = (float(u[k]), tuple(names[j] for j in order[k] if below[k, j] > 1e-9))
        elif len(rows):
            contrib = part.contributions(self.lookup.matrix[rows])
            partial = contrib.sum(axis=1)
            order = np.argsort(-contrib, axis=1, kind="stable")[:, :20]
            names = part.features
            for k, sme_id in enumerate(ids):
                top = tuple(names[j] for j in order[k] if contrib[k, j] > 0)
                answers[sme_id] = (float(partial[k]), top)
        self.answers = answers
        self.encoded = {}

    def view(self, max_reasons: int, split_ids: Sequence[int], party: str) -> int:
        """Reasons asked (scorecard), or the number of the list of split ids asked (trees, see :meth:`split_view`)."""
        return self.split_view(split_ids, party) if self.kind == pb.TREE_ROUTING else min(int(max_reasons), 20)

    def split_view(self, split_ids: Sequence[int], party: str) -> int:
        """Number of the list of split ids a request asks for (empty: all of this party's).

        Registered on first use; at most ``_MAX_SPLIT_VIEWS`` lists are kept (then
        the lists and the cached encodings start afresh). Raises :class:`Refused`
        for a split id this party does not own.
        """
        wanted = tuple(split_ids) or self.split_ids
        view = self._views.get(wanted)
        if view is not None:
            return view
        columns = []
        for sid in dict.fromkeys(wanted):
            j = self._split_column.get(sid)
            if j is None:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"PartyScoreRequest.split_ids: {party} has no split {sid}")
            columns.append((sid, j))
        if len(self._views) >= _MAX_SPLIT_VIEWS:
            self._views, self.view_columns, self.encoded = {}, {}, {}
        view = len(self._views)
        self._views[wanted] = view
        self.view_columns[view] = tuple(columns)
        return view

    def part_kwargs(self, found: Any, view: int) -> dict[str, Any]:
        """The ``scorecard=`` or ``routing=`` field of this model's part for a covered SME."""
        if self.kind == pb.TREE_ROUTING:
            return {"routing": pb.TreeRouting(branches={sid: pb.LEFT if found[j] else pb.RIGHT for sid, j in self.view_columns[view]})}
        return {"scorecard": pb.ScorecardPart(partial_score=found[0], reasons=found[1][:view])}

    def kind_name(self) -> str:
        return "SecureBoost tree routing" if self.kind == pb.TREE_ROUTING else "a scorecard"


class PartyScoringService:
    """Answer the bank's node with this party's part: partial scores, or directions at its splits.

    Parameters
    ----------
    config : PartyServiceConfig
        Paths as seen by this process. ``bundle`` is the party's signed bundle,
        or a stack folder of its bundles, one per base learner of a stacked model
        (:func:`~fedrisk.scoring.bundles.load_party_models`).
    """

    def __init__(self, config: PartyServiceConfig) -> None:
        self.config = config
        models = load_party_models(config.bundle, parse_trusted_keys(config.trusted_keys))
        self.model = models[0]
        self.scorecard = self.model.part
        self.party = self.model.party
        self.id_format = str(self.model.schema.get("id_format", "opaque"))
        self.callers = set(config.allowed_callers) or {self.model.label_holder} - {""}
        if not self.callers:
            raise ConfigError("no caller may ask: the bundle names no label holder and allowed_callers is empty")
        if not config.allow_list and not config.allow_any_known:
            raise ConfigError("give an allow-list of IDs this party may answer for (or allow_any_known explicitly)")
        #: every model this party serves, by run id (one; several for a stack folder)
        self.served: dict[str, _Served] = {m.run_id: _Served(m, config.table) for m in models}
        first = self.served[self.model.run_id]
        self.stacked = is_stack_folder(config.bundle)
        self.kind = pb.STACK if self.stacked else first.kind
        self.points = first.points
        self.lookup: FeatureLookup = first.lookup
        self._stack_encoded: dict[tuple[str, tuple[Any, ...]], bytes] = {}
        self._stack_keys: set[tuple[Any, ...]] = set()
        self.reload()
        self.revocations = RevocationGuard(config.crl, config.client_ca) if config.crl else None
        self._crl_watcher: asyncio.Future[None] | None = None
        self.server: grpc.aio.Server | None = None
        self.address = ""
        #: per caller: requests answered (one per fan-out call), IDs asked, IDs covered
        self.requests: Counter[str] = Counter()
        self.ids_asked: Counter[str] = Counter()
        self.ids_answered: Counter[str] = Counter()
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        self._watcher: asyncio.Future[None] | None = None

    @property
    def _answers(self) -> dict[str, Any]:
        """The first model's answers (which IDs this party covers: the same for every model it serves)."""
        return self.served[self.model.run_id].answers

    # ------------------------------------------------------------- answers
    def reload(self) -> int:
        """(Re)read the allow-list and precompute answers; returns how many IDs it answers for."""
        allowed = read_allow_list(self.config.allow_list, self.id_format) if self.config.allow_list else None
        for served in self.served.values():
            served.precompute(allowed)
        self._stack_encoded, self._stack_keys = {}, set()
        n = len(self._answers)
        log.info("%s answers for %d IDs (%d in its table)", self.party, n, len(self.lookup))
        return n

    async def _watch_allow_list(self) -> None:
        """Reload when the allow-list file changes (size, mtime or inode)."""
        path = Path(self.config.allow_list)

        def signature() -> tuple[int, int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return (st.st_ino, st.st_size, st.st_mtime_ns)

        seen = signature()
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            now = signature()
            if now is not None and now != seen:
                seen = now
                try:
                    self.reload()
                except Exception as exc:  # a bad edit keeps the previous allow-list
                    log.warning("%s kept its previous allow-list: %s", self.party, str(exc).splitlines()[0] if str(exc) else exc)

    def answer_bytes(self, sme_id: str, view: int, served: _Served | None = None) -> bytes:
        """The encoded ``PartyAnswer`` for one ID (cached).

        ``view`` is the number of reasons asked (scorecard) or the number of the
        list of split ids asked (trees, see :meth:`_Served.split_view`).
        """
        served = served or self.served[self.model.run_id]
        key = (sme_id, view)
        cached = served.encoded.get(key)
        if cached is not None:
            return cached
        encoded = self._answer_as(sme_id, sme_id, view, served)
        if sme_id in served.answers:  # only IDs it answers for: the cache is bounded by the allow-list
            served.encoded[key] = encoded
        return encoded

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> str:
        """Bind and serve; returns the bound address."""
        cfg = self.config
        interceptors = [self.revocations.interceptor()] if self.revocations is not None else []
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        "PartialScores": grpc.unary_unary_rpc_method_handler(self._partial_scores),
                        "PartialScoresStream": grpc.stream_stream_rpc_method_handler(self._partial_scores_stream),
                    },
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server)
        if not cfg.client_ca:
            raise ConfigError("a party scoring service requires mTLS: give the federation CA for client certificates")
        self.address = bind(server, cfg.listen, server_credentials(cfg.tls_cert, cfg.tls_key, client_ca=cfg.client_ca))
        await server.start()
        self.server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        if cfg.allow_list:
            self._watcher = asyncio.ensure_future(self._watch_allow_list())
        if self.revocations is not None:
            self._crl_watcher = asyncio.ensure_future(self.revocations.watch())
        log.info("%s party scoring service on %s (model %s)", self.party, self.address, self.model.run_id)
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving and log who asked for what."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for watcher in (self._watcher, self._crl_watcher):
            if watcher is not None:
                watcher.cancel()
        await self._health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        for caller in sorted(self.requests):
            log.info(
                "%s answered %s: %d requests, %d IDs asked, %d covered",
                self.party,
                caller,
                self.requests[caller],
                self.ids_asked[caller],
                self.ids_answered[caller],
            )

    async def wait(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------- handlers
    async def _partial_scores(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = peer_common_name(context)
        if caller not in self.callers:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._denied(caller))
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the request was read")
        try:
            return self.answer(request, caller or "")
        except Refused as refusal:
            await context.abort(refusal.code, refusal.message)
            raise  # unreachable

    async def _partial_scores_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        caller = peer_common_name(context)
        if caller not in self.callers:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._denied(caller))
        guard = self.revocations
        seen = guard.generation if guard is not None else 0
        async for request in requests:
            if guard is not None and guard.generation != seen:  # a new CRL: is this open stream's caller still valid?
                seen = guard.generation
                await guard.enforce(context)
            try:
                yield self.answer(request, caller or "")
            except Refused as refusal:
                request_id = _request_id_of(request)
                yield pb.PartyScoreResponse(request_id=request_id, party=self.party, model_version=self.model.run_id,
                                            error_code=refusal.code.value[0], error=refusal.message).SerializeToString()  # fmt: skip

    def _denied(self, caller: str | None) -> str:
        return f"{caller or 'an unauthenticated caller'} may not ask {self.party} for scores"

    def answer(self, request: bytes, caller: str) -> bytes:
        """Encoded ``PartyScoreResponse`` for an encoded request (raises :class:`Refused`)."""
        try:
            check_size(request, "PartyScoreRequest", self.config.max_message_bytes)
            req = pb.PartyScoreRequest.FromString(request)
            check_known_fields(req, "PartyScoreRequest")
        except DataValidationError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except Exception:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "PartyScoreRequest is not a valid fedrisk.v1.PartyScoreRequest message") from None
        n = len(req.sme_ids)
        if n > self.config.max_ids:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"PartyScoreRequest asks for {n} IDs; at most {self.config.max_ids} per request")
        if req.kind == pb.STACK:
            parts, covered = self._answer_stack(req)
        else:
            parts, covered = self._answer_one(req)
        self.requests[caller] += 1
        self.ids_asked[caller] += n
        self.ids_answered[caller] += covered
        return b"".join(parts)

    def _served_for(self, model_version: str, kind: int, where: str) -> _Served:
        """The model a request (or one base learner of a stacked request) names, of the kind it asks."""
        served = self.served.get(model_version)
        if served is None:
            serving = ", ".join(repr(r) for r in self.served)
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"{where}{self.party} serves model {serving}, not {model_version!r}")
        if kind not in (served.kind, pb.MODEL_KIND_UNSPECIFIED):
            name = pb.ModelKind.Name(kind) if kind in pb.ModelKind.values() else str(kind)
            raise Refused(grpc.StatusCode.UNIMPLEMENTED, f"{where}{self.party} serves {served.kind_name()}; model kind {name} is not available")
        return served

    def _answer_one(self, req: pb.PartyScoreRequest) -> tuple[list[bytes], int]:
        """One model's parts (a base learner served alone, or a single bundle)."""
        if req.bases:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "PartyScoreRequest.bases is only for kind STACK")
        served = self._served_for(req.model_version, req.kind, "")
        k = served.view(req.max_reasons, req.split_ids, self.party)
        parts = [pb.PartyScoreResponse(request_id=req.request_id, party=self.party, model_version=served.run_id).SerializeToString()]
        covered = 0
        answers = served.answers
        for raw_id in req.sme_ids:
            if raw_id in answers:
                covered += 1
                parts.append(self.answer_bytes(raw_id, k, served))
                continue
            sme_id = self._normalised(raw_id)
            covered += sme_id in answers
            parts.append(self._answer_as(raw_id, sme_id, k, served))
        return parts, covered

    def _answer_stack(self, req: pb.PartyScoreRequest) -> tuple[list[bytes], int]:
        """Every base learner's part in one answer per SME: exactly what each base learner alone would get, nothing more."""
        if not req.bases:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "PartyScoreRequest.bases is empty: a STACK request names its base learners")
        models: list[tuple[_Served, int]] = []
        for i, base in enumerate(req.bases):
            if base.kind == pb.STACK:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"PartyScoreRequest.bases[{i}]: a base learner cannot be a stack")
            served = self._served_for(base.model_version, base.kind, f"PartyScoreRequest.bases[{i}]: ")
            if any(s is served for s, _ in models):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"PartyScoreRequest.bases[{i}]: model {base.model_version!r} is asked twice")
            models.append((served, served.view(base.max_reasons, base.split_ids, self.party)))
        # cache key: the bases asked, by what they ask (view numbers can be renumbered; the request itself cannot)
        key = tuple((s.run_id, min(int(b.max_reasons), 20) if s.kind == pb.SCORECARD else tuple(b.split_ids)) for (s, _), b in zip(models, req.bases))
        if key not in self._stack_keys:
            if len(self._stack_keys) >= _MAX_SPLIT_VIEWS:
                self._stack_encoded, self._stack_keys = {}, set()
            self._stack_keys.add(key)
        parts = [pb.PartyScoreResponse(request_id=req.request_id, party=self.party, model_version=req.model_version).SerializeToString()]
        covered = 0
        for raw_id in req.sme_ids:
            cached = self._stack_encoded.get((raw_id, key))
            if cached is not None:
                covered += 1
                parts.append(cached)
                continue
            sme_id = raw_id if all(raw_id in s.answers for s, _ in models) else self._normalised(raw_id)
            found = [s.answers.get(sme_id) for s, _ in models]
            if all(f is not None for f in found):
                covered += 1
                answer = pb.PartyAnswer(sme_id=raw_id, state=pb.COVERED, parts=[
                    pb.BaseModelPart(model_version=s.run_id, **s.part_kwargs(f, view)) for (s, view), f in zip(models, found)
                ])  # fmt: skip
            else:
                answer = pb.PartyAnswer(sme_id=raw_id, state=pb.NOT_COVERED)
            body = answer.SerializeToString()
            encoded = b"\x22" + _varint(len(body)) + body
            if answer.state == pb.COVERED and raw_id == sme_id:  # bounded by the allow-list
                self._stack_encoded[(raw_id, key)] = encoded
            parts.append(encoded)
        return parts, covered

    def _normalised(self, raw_id: str) -> str:
        try:
            return normalise_id(raw_id, self.id_format, "sme_id")
        except DataValidationError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"PartyScoreRequest: {exc}") from None

    def _answer_as(self, raw_id: str, sme_id: str, k: int, served: _Served) -> bytes:
        """Encoded answer for ``sme_id``, reported under the ID as the caller wrote it.

        ``k``: reasons (scorecard) or split view (trees). A ``PartyScoreResponse``
        field 4 element: tag 0x22, varint length, bytes.
        """
        found = served.answers.get(sme_id)
        if found is None:
            answer = pb.PartyAnswer(sme_id=raw_id, state=pb.NOT_COVERED)
        else:
            answer = pb.PartyAnswer(sme_id=raw_id, state=pb.COVERED, **served.part_kwargs(found, k))
        body = answer.SerializeToString()
        return b"\x22" + _varint(len(body)) + body


class Refused(Exception):
    """A request the party will not answer: a gRPC status and one line."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _request_id_of(request: bytes) -> str:
    try:
        return pb.PartyScoreRequest.FromString(request).request_id
    except Exception:
        return ""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
