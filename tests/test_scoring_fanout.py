"""The node's fan-out to a party: coalescing, deadlines, circuit breaker, stream and unary transports.

A scripted fake party (plain gRPC on loopback, no TLS: the transport here is
not the subject) answers, stalls, breaks the protocol or lacks the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from fedrisk.scoring.fanout import PartyFanout
from fedrisk.v1 import scoring_pb2 as pb

SERVICE = "fedrisk.v1.PartyScoringService"


class FakeParty:
    """Answers every ID with partial score 0.5 unless told to misbehave."""

    def __init__(self, *, stream: bool = True, delay: float = 0.0, broken: bool = False, refuse: bool = False) -> None:
        self.stream, self.delay, self.broken, self.refuse = stream, delay, broken, refuse
        self.batches: list[int] = []
        self.server: grpc.aio.Server | None = None

    def _answer(self, request: pb.PartyScoreRequest) -> pb.PartyScoreResponse:
        self.batches.append(len(request.sme_ids))
        if self.refuse:
            return pb.PartyScoreResponse(request_id=request.request_id, error_code=grpc.StatusCode.FAILED_PRECONDITION.value[0], error="wrong model")
        ids = list(request.sme_ids)[:-1] if self.broken else request.sme_ids
        answers = [pb.PartyAnswer(sme_id=i, state=pb.COVERED, scorecard=pb.ScorecardPart(partial_score=0.5, reasons=["f1"])) if not i.startswith("no")
                   else pb.PartyAnswer(sme_id=i, state=pb.NOT_COVERED) for i in ids]  # fmt: skip
        return pb.PartyScoreResponse(request_id=request.request_id, answers=answers)

    async def unary(self, request: pb.PartyScoreRequest, context: grpc.aio.ServicerContext) -> pb.PartyScoreResponse:
        await asyncio.sleep(self.delay)
        return self._answer(request)

    async def streamed(self, requests: AsyncIterator[pb.PartyScoreRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PartyScoreResponse]:
        async for request in requests:
            await asyncio.sleep(self.delay)
            yield self._answer(request)

    async def start(self) -> str:
        handlers = {"PartialScores": grpc.unary_unary_rpc_method_handler(self.unary, pb.PartyScoreRequest.FromString, pb.PartyScoreResponse.SerializeToString)}
        if self.stream:
            handlers["PartialScoresStream"] = grpc.stream_stream_rpc_method_handler(
                self.streamed, pb.PartyScoreRequest.FromString, pb.PartyScoreResponse.SerializeToString
            )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(0)


async def _fanout(address: str, **kw: object) -> PartyFanout:
    return PartyFanout("platform", grpc.aio.insecure_channel(address), model_version="run", **{"deadline_s": 0.5, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_concurrent_asks_are_coalesced_into_batches(stream):
    async def scenario() -> tuple[list, list[int], dict]:
        party = FakeParty(stream=stream)
        fan = await _fanout(await party.start(), use_stream=stream)
        results = await asyncio.gather(*(fan.ask(f"id{i}" if i % 5 else f"no{i}") for i in range(40)))
        results += [await fan.ask("id99")]  # later asks reuse the long-lived stream
        await fan.close()
        await party.stop()
        return results[:40], party.batches, fan.stats.summary()

    results, batches, stats = asyncio.run(scenario())
    assert stats["streams_opened"] == (1 if stream else 0)
    assert stats["calls"] == len(batches) and stats["ids"] == 41
    assert sum(batches) == 41 and len(batches) < 40  # several IDs per call
    assert [r.state for r in results] == [pb.NOT_COVERED if i % 5 == 0 else pb.COVERED for i in range(40)]
    assert all(r.partial_score == 0.5 and r.reasons == ("f1",) for r in results if r.state == pb.COVERED)


def test_a_party_without_the_stream_is_asked_with_unary_calls():
    async def scenario() -> tuple[int, bool]:
        party = FakeParty(stream=False)
        fan = await _fanout(await party.start())
        result = await fan.ask("id1")
        again = await fan.ask("id2")
        await fan.close()
        await party.stop()
        return (result.state == pb.COVERED) + (again.state == pb.COVERED), fan.use_stream

    covered, use_stream = asyncio.run(scenario())
    assert covered == 2 and not use_stream


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_a_slow_party_times_out_then_rests(stream):
    async def scenario() -> list:
        now = [0.0]
        party = FakeParty(delay=0.3, stream=stream)
        fan = await _fanout(await party.start(), deadline_s=0.05, failure_threshold=2, reset_after_s=10.0, use_stream=stream, clock=lambda: now[0])
        out = [await fan.ask("id1"), await fan.ask("id2"), await fan.ask("id3")]
        now[0] = 11.0  # the rest is over: the next ask probes the party again
        party.delay = 0.0
        out.append(await fan.ask("id4"))
        await fan.close()
        await party.stop()
        return out

    first, second, third, fourth = asyncio.run(scenario())
    assert first.state == pb.TIMEOUT and "no answer within 50 ms" in first.detail
    assert first.latency_ms < 250
    assert second.state == pb.TIMEOUT
    assert third.state == pb.CIRCUIT_OPEN and third.latency_ms == 0.0
    assert fourth.state == pb.COVERED


def test_a_party_that_is_down_fails_fast():
    async def scenario() -> tuple:
        fan = await _fanout("127.0.0.1:9", deadline_s=2.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await fan.ask("id1")
        took = loop.time() - t0
        await fan.close()
        return result, took

    result, took = asyncio.run(scenario())
    assert result.state in (pb.UNAVAILABLE, pb.TIMEOUT) and result.failed
    assert took < 2.5 and result.detail


@pytest.mark.parametrize("misbehaviour", ["broken", "refuse"])
def test_protocol_violations_and_refusals_are_failures_with_a_reason(misbehaviour):
    async def scenario():
        party = FakeParty(**{misbehaviour: True})
        fan = await _fanout(await party.start())
        result = await fan.ask("id1")
        await fan.close()
        await party.stop()
        return result

    result = asyncio.run(scenario())
    assert result.state == pb.UNAVAILABLE
    assert (
        ("answered 0 IDs for 1 asked" in result.detail)
        if misbehaviour == "broken"
        else ("FAILED_PRECONDITION" in result.detail and "wrong model" in result.detail)
    )


class _StuckStream:
    """A stream whose write never completes (a party that stopped reading) until the call is cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def write(self, request: pb.PartyScoreRequest) -> None:
        await self.cancelled.wait()
        raise asyncio.CancelledError()  # what grpc.aio raises in a write of a locally cancelled call

    async def read(self) -> object:
        await self.cancelled.wait()
        raise asyncio.CancelledError()

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


class _StuckChannel:
    def __init__(self) -> None:
        self.streams: list[_StuckStream] = []

    def unary_unary(self, *args: object, **kwargs: object) -> object:
        return None

    def stream_stream(self, *args: object, **kwargs: object) -> object:
        def open_stream(**kw: object) -> _StuckStream:
            self.streams.append(_StuckStream())
            return self.streams[-1]

        return open_stream

    async def close(self) -> None:
        pass


def test_a_write_blocked_past_the_deadline_times_out_and_replaces_the_stream():
    """The deadline covers the write too: a stream whose write hangs is reset, the ask resolves TIMEOUT, the next ask opens a new stream."""

    async def scenario() -> tuple[list, _StuckChannel, PartyFanout]:
        channel = _StuckChannel()
        fan = PartyFanout("platform", channel, model_version="run", deadline_s=0.05, failure_threshold=5)  # type: ignore[arg-type]
        out = [await asyncio.wait_for(fan.ask("id1"), 5), await asyncio.wait_for(fan.ask("id2"), 5)]
        await fan.close()
        return out, channel, fan

    (first, second), channel, fan = asyncio.run(scenario())
    assert first.state == pb.TIMEOUT and "no answer within 50 ms" in first.detail
    assert second.state == pb.TIMEOUT
    assert len(channel.streams) == 2 and all(s.cancelled.is_set() for s in channel.streams)
    assert fan.stats.timeouts == 2 and fan.stats.streams_opened == 2


def test_an_answer_after_the_deadline_is_dropped_and_the_next_batch_is_answered():
    """A late answer on the stream finds no waiter (the batch timed out); the replaced stream answers the next batch."""

    async def scenario() -> list:
        party = FakeParty(delay=0.2)
        fan = await _fanout(await party.start(), deadline_s=0.05, failure_threshold=5)
        late = await fan.ask("id1")
        party.delay = 0.0
        await asyncio.sleep(0.3)  # the late answer arrives (on the stream that was reset)
        on_time = await fan.ask("id2")
        await fan.close()
        await party.stop()
        return [late, on_time, fan.stats.streams_opened]

    late, on_time, streams = asyncio.run(scenario())
    assert late.state == pb.TIMEOUT
    assert on_time.state == pb.COVERED and on_time.partial_score == 0.5
    assert streams == 2
