"""A client of the scoring node (portfolio jobs, tests, the demo)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from fedrisk.errors import PartyUnavailableError, ProtocolError
from fedrisk.scoring.transport import secure_channel
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["ScoringClient"]


class ScoringClient:
    """Blocking client of ``fedrisk.v1.ScoringService`` over TLS (mTLS with ``cert``/``key``).

    Parameters
    ----------
    address : str
        ``host:port`` of the node (or ``unix:/path``, with ``authority``).
    ca : path
        The federation CA that signed the node's certificate.
    cert, key : path, optional
        The caller's client certificate, when the node requires mTLS.
    """

    def __init__(self, address: str, *, ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None, authority: str | None = None) -> None:
        self.address = address
        self.channel: grpc.Channel = secure_channel(address, ca=ca, cert=cert, key=key, authority=authority, aio=False)
        self._score = self.channel.unary_unary(
            "/fedrisk.v1.ScoringService/Score", request_serializer=pb.Application.SerializeToString, response_deserializer=pb.Decision.FromString
        )
        self._batch = self.channel.stream_stream(
            "/fedrisk.v1.ScoringService/ScoreBatch", request_serializer=pb.Application.SerializeToString, response_deserializer=pb.Decision.FromString
        )
        self._describe = self.channel.unary_unary(
            "/fedrisk.v1.ScoringService/Describe", request_serializer=pb.DescribeRequest.SerializeToString, response_deserializer=pb.NodeDescription.FromString
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (raises :class:`PartyUnavailableError`)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise PartyUnavailableError(f"scoring node {self.address} is not reachable within {timeout:g} s") from None

    def score(self, application: pb.Application, timeout: float = 5.0) -> pb.Decision:
        """One decision (raises ``grpc.RpcError`` with the node's status)."""
        return self._score(application, timeout=timeout)

    def describe(self, timeout: float = 5.0) -> pb.NodeDescription:
        """The node's model, policy, parties and sandbox."""
        return self._describe(pb.DescribeRequest(), timeout=timeout)

    def score_stream(self, applications: Iterable[pb.Application], timeout: float | None = None) -> Iterator[pb.Decision]:
        """Decisions for a stream of applications, in order (``ScoreBatch``)."""
        try:
            yield from self._batch(iter(applications), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            detail = err.details() if hasattr(err, "details") else str(err)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise PartyUnavailableError(f"scoring node {self.address}: {detail}") from None
            raise ProtocolError(f"scoring node refused the batch ({code.name if code else 'error'}): {detail}") from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ScoringClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
