"""Fan-out from the bank's scoring node to each feature holder's party scoring service.

One :class:`PartyFanout` per feature holder keeps one long-lived mTLS channel
and asks for its part of the joint model under a per-call deadline: a partial
score (``SCORECARD``) or, for SecureBoost, the direction at each of its splits
(``TREE_ROUTING``), or for a stacked model its part of every base learner at
once (``STACK``: one call per SME, one part per base learner in each answer;
see :class:`StackBase`). It never raises and
never hangs: every :meth:`PartyFanout.ask` resolves to a :class:`PartyResult`
whose state is ``COVERED``, ``NOT_COVERED``, ``TIMEOUT``, ``UNAVAILABLE`` or
``CIRCUIT_OPEN``; the credit policy decides what a missing part means.

Coalescing. Decisions that need a party while a call to it is already in
flight wait for the next call and ride on it together (the request carries a
list of IDs): at most ``max_inflight`` calls per party are outstanding, and a
batch is sent as soon as one finishes — no timer, so a lone request goes out at
once and under load each call carries every decision that arrived meanwhile.
This is what keeps the parties' per-RPC cost off the critical path at
thousands of decisions a second.

Transport. Batches travel as messages on one long-lived bidirectional stream
per party (``PartialScoresStream``), matched to their answers by request id;
the node enforces each batch's deadline itself and replaces a stream that timed
out. A stream message costs a fraction of a new unary call in Python gRPC (no
call setup, headers or per-call deadline timer), which matters at thousands of
decisions a second. A party that does not offer the stream is asked with unary
``PartialScores`` calls.

Certificates. With a :class:`~fedrisk.scoring.revocation.PartyLink`
the channel is the link's: opened only once the party's server certificate
passed the CRL, pinned to that certificate, and checked again after a failed
connection; a party whose certificate is revoked is ``UNAVAILABLE`` with the
one line that names the certificate.

Circuit breaker. After ``failure_threshold`` failed calls in a row a party
"rests" for ``reset_after_s`` seconds: decisions skip it at once (state
``CIRCUIT_OPEN``) instead of each paying the deadline; the first call after the
rest probes it again.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from fedrisk.scoring.revocation import LinkError, PartyLink
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["FanoutStats", "PartyFanout", "PartyResult", "StackBase"]

_METHOD = "/fedrisk.v1.PartyScoringService/PartialScores"
_STREAM_METHOD = "/fedrisk.v1.PartyScoringService/PartialScoresStream"
_MAX_PARTIAL = 50.0  # a partial log-odds beyond this is a broken or hostile answer


@dataclass(frozen=True)
class PartyResult:
    """One party's answer for one SME."""

    party: str
    state: pb.PartyState
    partial_score: float | None = None
    reasons: tuple[str, ...] = ()
    latency_ms: float = 0.0
    detail: str = ""
    routing: Mapping[int, bool] | None = None  # TREE_ROUTING: split id -> goes left
    parts: tuple[PartyResult, ...] | None = None  # STACK, COVERED: one per base learner, in the fan-out's order

    @property
    def failed(self) -> bool:
        """The party's part is missing because of a failure (not because it does not cover the SME)."""
        return self.state in (pb.UNAVAILABLE, pb.TIMEOUT, pb.CIRCUIT_OPEN)


@dataclass(frozen=True)
class StackBase:
    """One base learner of a stacked model, as the node asks one party for it.

    Attributes
    ----------
    model_version : str
        The base learner's run id (the party checks it; its answer's part is matched by it).
    kind : int
        ``pb.SCORECARD`` or ``pb.TREE_ROUTING``.
    split_ids : tuple of int
        ``TREE_ROUTING``: the party's splits the base learner uses.
    name : str
        The base learner's name (messages only).
    """

    model_version: str
    kind: int
    split_ids: tuple[int, ...] = ()
    name: str = ""


@dataclass
class FanoutStats:
    """Counters of one party's fan-out (what the benchmark reports)."""

    calls: int = 0
    ids: int = 0
    failures: int = 0
    timeouts: int = 0
    skipped: int = 0
    streams_opened: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=20_000))

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else 0.0

        return {
            "calls": self.calls,
            "ids": self.ids,
            "mean_batch": round(self.ids / self.calls, 2) if self.calls else 0.0,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "skipped": self.skipped,
            "streams_opened": self.streams_opened,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }


class PartyFanout:
    """Ask one feature holder for partial scores, coalescing concurrent requests.

    Parameters
    ----------
    party : str
        The feature holder's name (as in the bank's model).
    channel : grpc.aio.Channel or None
        A long-lived mTLS channel to its party scoring service (``None`` with a ``link``).
    model_version : str
        The joint model's run id (the party refuses another).
    kind : int
        ``pb.SCORECARD`` (partial scores), ``pb.TREE_ROUTING`` (directions at the
        party's splits) or ``pb.STACK`` (every base learner of ``bases`` in one call).
    split_ids : sequence of int
        ``TREE_ROUTING``: the party's splits the model uses; every answer must route exactly these.
    bases : sequence of StackBase
        ``STACK``: the base learners this party takes part in, in the stack's order;
        a covered answer must carry exactly one part per base, in this order.
    deadline_s : float
        Per-call deadline.
    max_reasons : int
        Adverse factors to ask for per SME.
    max_batch, max_inflight : int
        Coalescing bounds.
    failure_threshold : int
        Failed calls in a row that open the circuit.
    reset_after_s : float
        How long an open circuit rests.
    request_prefix : str
        Prefix of request ids (the node's identity and start time).
    use_stream : bool
        Send batches as messages on one long-lived ``PartialScoresStream`` (2-3x
        less CPU per batch than a unary call in Python gRPC); falls back to unary
        calls for a party that does not offer the stream.
    clock : callable
        Monotonic clock (tests).
    link : PartyLink, optional
        Where the channel comes from when server certificates are checked against the CRL.
    """

    def __init__(
        self,
        party: str,
        channel: grpc.aio.Channel | None,
        *,
        model_version: str,
        deadline_s: float,
        kind: int = pb.SCORECARD,
        split_ids: Sequence[int] = (),
        bases: Sequence[StackBase] = (),
        max_reasons: int = 3,
        max_batch: int = 512,
        max_inflight: int = 2,
        failure_threshold: int = 3,
        reset_after_s: float = 2.0,
        request_prefix: str = "node",
        use_stream: bool = True,
        clock: Callable[[], float] = time.monotonic,
        link: PartyLink | None = None,
    ) -> None:
        self.party = party
        self.link = link
        self.model_version = model_version
        self.deadline_s = float(deadline_s)
        self.kind = int(kind)
        self.split_ids = tuple(int(s) for s in split_ids)
        self._split_set = frozenset(self.split_ids)
        if self.kind == pb.TREE_ROUTING and not self.split_ids:
            raise ValueError(f"{party}: a tree-routing fan-out needs the party's split ids")
        self.bases = tuple(bases)
        if self.kind == pb.STACK and not self.bases:
            raise ValueError(f"{party}: a stacked fan-out needs the base learners to ask for")
        for base in self.bases:
            if base.kind == pb.TREE_ROUTING and not base.split_ids:
                raise ValueError(f"{party}: base learner {base.name or base.model_version} needs the party's split ids")
        self._base_split_sets = tuple(frozenset(b.split_ids) for b in self.bases)
        self.max_reasons = int(max_reasons)
        self.max_batch = int(max_batch)
        self.max_inflight = int(max_inflight)
        self.failure_threshold = int(failure_threshold)
        self.reset_after_s = float(reset_after_s)
        self.channel: grpc.aio.Channel | None = None
        self.use_stream = bool(use_stream)
        self._stream: grpc.aio.StreamStreamCall | None = None
        if channel is not None:
            self.use_channel(channel)
        elif link is None:
            raise ValueError(f"{party}: a fan-out needs a channel or a link")
        self._waiting: dict[str, asyncio.Future[pb.PartyScoreResponse]] = {}
        self._clock = clock
        self._pending: list[tuple[str, float, asyncio.Future[PartyResult]]] = []
        self._inflight = 0
        self._scheduled = False
        self._failures_in_row = 0
        self._open_until = 0.0
        self._ids = itertools.count(1)
        self._prefix = request_prefix
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = FanoutStats()
        self.last_error = ""

    def use_channel(self, channel: grpc.aio.Channel) -> None:
        """Send from now on over ``channel`` (a new pinned channel of the link)."""
        if channel is self.channel:
            return
        self._reset_stream()
        self.channel = channel
        self._call = channel.unary_unary(
            _METHOD, request_serializer=pb.PartyScoreRequest.SerializeToString, response_deserializer=pb.PartyScoreResponse.FromString
        )
        self._stream_call = channel.stream_stream(
            _STREAM_METHOD, request_serializer=pb.PartyScoreRequest.SerializeToString, response_deserializer=pb.PartyScoreResponse.FromString
        )

    # ------------------------------------------------------------------ state
    @property
    def circuit_open(self) -> bool:
        """Whether the party is resting after repeated failures."""
        return self._clock() < self._open_until

    def status(self) -> pb.PartyStatus:
        """The node's current view of the party."""
        if self.circuit_open:
            return pb.PartyStatus(party=self.party, state=pb.CIRCUIT_OPEN, detail=self.last_error)
        if self._failures_in_row:
            return pb.PartyStatus(party=self.party, state=pb.UNAVAILABLE, detail=self.last_error)
        if self.link is not None and self.link.channel is None:
            return pb.PartyStatus(party=self.party, state=pb.UNAVAILABLE, detail=self.link.error or "not connected yet")
        return pb.PartyStatus(party=self.party, state=pb.COVERED, detail="answering")

    # ------------------------------------------------------------------- asks
    def ask(self, sme_id: str, budget_s: float | None = None) -> asyncio.Future[PartyResult]:
        """A future of this party's answer for ``sme_id`` (never fails, resolves within the deadline)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PartyResult] = loop.create_future()
        if self.circuit_open:
            self.stats.skipped += 1
            fut.set_result(PartyResult(self.party, pb.CIRCUIT_OPEN, detail=f"resting after {self._failures_in_row} failed calls: {self.last_error}"))
            return fut
        deadline = self.deadline_s if budget_s is None else max(0.001, min(self.deadline_s, budget_s))
        self._pending.append((sme_id, deadline, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._pending and self._inflight < self.max_inflight:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._inflight += 1
            task = loop.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, float, asyncio.Future[PartyResult]]]) -> None:
        deadline = min(d for _, d, _ in batch)
        ids = [i for i, _, _ in batch]
        request = pb.PartyScoreRequest(
            request_id=f"{self._prefix}-{next(self._ids)}",
            model_version=self.model_version,
            kind=self.kind,  # type: ignore[arg-type]
            sme_ids=ids,
            max_reasons=self.max_reasons if self.kind == pb.SCORECARD else 0,
            deadline_ms=max(1, int(deadline * 1000)),
            split_ids=self.split_ids,
            bases=[
                pb.BaseModelRequest(
                    model_version=b.model_version,
                    kind=b.kind,  # type: ignore[arg-type]
                    max_reasons=self.max_reasons if b.kind == pb.SCORECARD else 0,
                    split_ids=b.split_ids,
                )
                for b in self.bases
            ],
        )
        t0 = time.perf_counter()
        results: list[PartyResult]
        try:
            link = self.link
            if link is not None and (link.stale or link.channel is not self.channel or self.channel is None):
                self.use_channel(await asyncio.wait_for(link.ensure(), deadline))
            response = await self._exchange(request, deadline)
            latency = (time.perf_counter() - t0) * 1000.0
            if response.error_code:
                raise _BrokenAnswer(f"refused ({_code_name(response.error_code)}): {response.error}")
            results = self._parse(response, ids, latency)
            self._failures_in_row = 0
        except (TimeoutError, grpc.aio.AioRpcError) as err:
            latency = (time.perf_counter() - t0) * 1000.0
            if isinstance(err, asyncio.TimeoutError) or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                state, detail = pb.TIMEOUT, f"no answer within {deadline * 1000:.0f} ms"
                self.stats.timeouts += 1
                self._reset_stream()  # a hung stream is replaced, not reused
            else:
                details = (err.details() or "").splitlines()
                state, detail = pb.UNAVAILABLE, f"{err.code().name}: {details[0] if details else 'call failed'}"
                if self.link is not None and err.code() == grpc.StatusCode.UNAVAILABLE:
                    self.link.invalidate()  # a new certificate, or the party is back: check it again
            results = self._failed(ids, state, detail, latency)
        except LinkError as err:
            latency = (time.perf_counter() - t0) * 1000.0
            results = self._failed(ids, pb.UNAVAILABLE, str(err), latency)
        except _BrokenAnswer as err:
            latency = (time.perf_counter() - t0) * 1000.0
            results = self._failed(ids, pb.UNAVAILABLE, str(err), latency)
        except Exception as err:  # never let a decision hang on an unexpected error
            latency = (time.perf_counter() - t0) * 1000.0
            results = self._failed(ids, pb.UNAVAILABLE, f"{type(err).__name__}: {err}", latency)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        self.stats.calls += 1
        self.stats.ids += len(ids)
        self.stats.latencies_ms.append(latency)
        for (_, _, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    async def _exchange(self, request: pb.PartyScoreRequest, deadline: float) -> pb.PartyScoreResponse:
        """One request/response, on the long-lived stream (or unary when the party has no stream)."""
        if not self.use_stream:
            return await self._call(request, timeout=deadline, wait_for_ready=False)
        try:
            return await self._over_stream(request, deadline)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self.use_stream = False  # an older party: ask it one call at a time
            return await self._call(request, timeout=deadline, wait_for_ready=False)

    async def _over_stream(self, request: pb.PartyScoreRequest, deadline: float) -> pb.PartyScoreResponse:
        """One request on the long-lived stream and its answer, within ``deadline`` seconds (else ``TimeoutError``).

        The deadline is one timer on the answer's future — no ``wait_for`` task
        per batch. Should the write itself still be blocked when it fires (the
        party stopped reading), the stream is reset and the wait for the write
        cancelled; either way the batch times out.
        """
        loop = asyncio.get_running_loop()
        call = self._stream
        if call is None:
            call = self._stream_call(wait_for_ready=False)
            self._stream = call
            self._waiting = {}  # each stream has its own waiters: a reset fails only its own
            self.stats.streams_opened += 1
            reader = loop.create_task(self._read(call, self._waiting))
            self._tasks.add(reader)
            reader.add_done_callback(self._tasks.discard)
        waiting = self._waiting
        fut: asyncio.Future[pb.PartyScoreResponse] = loop.create_future()
        waiting[request.request_id] = fut
        expired = False
        task = asyncio.current_task()

        def expire() -> None:
            nonlocal expired
            expired = True
            if not fut.done():
                fut.set_exception(TimeoutError())
            if writing:  # a write blocked past the deadline: end it with the stream, and stop waiting for it
                if self._stream is call:
                    self._reset_stream()
                if task is not None:
                    task.cancel()

        writing = True
        timer = loop.call_later(deadline, expire)
        try:
            await call.write(request)
            writing = False
            return await fut
        except asyncio.InvalidStateError:
            if expired:
                raise TimeoutError() from None
            raise _BrokenAnswer("the stream to the party closed") from None
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            if expired and writing:
                raise TimeoutError() from None
            raise
        finally:
            timer.cancel()
            waiting.pop(request.request_id, None)

    async def _read(self, call: grpc.aio.StreamStreamCall, waiting: dict[str, asyncio.Future[pb.PartyScoreResponse]]) -> None:
        error: BaseException = _BrokenAnswer("the party closed the stream")
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                fut = waiting.pop(response.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(response)
        except grpc.aio.AioRpcError as err:
            error = err
        except asyncio.CancelledError:
            error = _BrokenAnswer("the stream to the party was reset")
        finally:
            if self._stream is call:
                self._stream = None
            for fut in list(waiting.values()):
                if not fut.done():
                    fut.set_exception(error)
            waiting.clear()

    def _reset_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _failed(self, ids: list[str], state: pb.PartyState, detail: str, latency: float) -> list[PartyResult]:
        self.stats.failures += 1
        self._failures_in_row += 1
        self.last_error = detail
        if self._failures_in_row >= self.failure_threshold:
            self._open_until = self._clock() + self.reset_after_s
        return [PartyResult(self.party, state, latency_ms=latency, detail=detail) for _ in ids]

    def _parse(self, response: pb.PartyScoreResponse, ids: list[str], latency: float) -> list[PartyResult]:
        answers = response.answers
        if len(answers) != len(ids):
            raise _BrokenAnswer(f"answered {len(answers)} IDs for {len(ids)} asked")
        out = []
        trees = self.kind == pb.TREE_ROUTING
        stack = self.kind == pb.STACK
        for sme_id, answer in zip(ids, answers):
            if answer.sme_id != sme_id:
                raise _BrokenAnswer("answers are not in request order")
            if answer.state == pb.COVERED and stack:
                out.append(PartyResult(self.party, pb.COVERED, latency_ms=latency, parts=self._stack_parts(answer, latency)))
            elif answer.state == pb.COVERED and trees:
                out.append(PartyResult(self.party, pb.COVERED, latency_ms=latency, routing=self._routing(answer)))
            elif answer.state == pb.COVERED:
                out.append(self._scorecard(answer, latency))
            elif answer.state == pb.NOT_COVERED:
                out.append(PartyResult(self.party, pb.NOT_COVERED, None, (), latency))
            else:
                raise _BrokenAnswer(f"unexpected answer state {answer.state}")
        return out

    def _scorecard(self, answer: pb.PartyAnswer | pb.BaseModelPart, latency: float) -> PartyResult:
        """A covered scorecard part, checked: present, finite, in range."""
        if answer.WhichOneof("part") != "scorecard":
            raise _BrokenAnswer("a covered answer without a scorecard part")
        u = answer.scorecard.partial_score
        if not math.isfinite(u) or abs(u) > _MAX_PARTIAL:
            raise _BrokenAnswer(f"partial score {u!r} is out of range")
        return PartyResult(self.party, pb.COVERED, u, tuple(answer.scorecard.reasons[: self.max_reasons]), latency)

    def _stack_parts(self, answer: pb.PartyAnswer, latency: float) -> tuple[PartyResult, ...]:
        """One checked part per base learner asked, in order (a missing, extra or unasked part breaks the answer)."""
        parts = answer.parts
        if answer.WhichOneof("part") is not None:
            raise _BrokenAnswer("a stacked answer with a single model's part")
        out = []
        for k, base in enumerate(self.bases):
            if k >= len(parts) or parts[k].model_version != base.model_version:
                raise _BrokenAnswer(f"no part for base learner {base.name or base.model_version!r} (run {base.model_version})")
            if base.kind == pb.TREE_ROUTING:
                out.append(PartyResult(self.party, pb.COVERED, latency_ms=latency, routing=self._routing(parts[k], self._base_split_sets[k])))
            else:
                out.append(self._scorecard(parts[k], latency))
        if len(parts) != len(self.bases):
            raise _BrokenAnswer(f"{len(parts)} base learner parts for the {len(self.bases)} asked")
        return tuple(out)

    def _routing(self, answer: pb.PartyAnswer | pb.BaseModelPart, split_set: frozenset[int] | None = None) -> dict[int, bool]:
        """Split id -> goes left, checked: exactly the splits asked, each LEFT or RIGHT."""
        split_set = self._split_set if split_set is None else split_set
        if answer.WhichOneof("part") != "routing":
            raise _BrokenAnswer("a covered answer without a routing part")
        routing = {}
        for split_id, branch in answer.routing.branches.items():
            if branch == pb.LEFT:
                routing[split_id] = True
            elif branch == pb.RIGHT:
                routing[split_id] = False
            else:
                raise _BrokenAnswer(f"split {split_id} routed neither left nor right")
        if routing.keys() != split_set:
            raise _BrokenAnswer(f"routed {len(routing)} splits, not the {len(split_set)} asked")
        return routing

    async def close(self) -> None:
        """Close the stream and the channel (pending asks resolve as unavailable)."""
        self._reset_stream()
        if self.link is not None:
            await self.link.close()
        elif self.channel is not None:
            await self.channel.close()


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


class _BrokenAnswer(Exception):
    """The party's response does not follow the protocol."""

    def __str__(self) -> str:
        return f"broken answer: {self.args[0]}"
