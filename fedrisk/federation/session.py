"""The coordinator's view of a federation: parties by name, and timed exchanges.

Protocols talk to parties by *name* through :class:`CoordinatorSession`;
it maps names to Flower node ids (asking each node who it is), sends
messages through Flower's ``Grid``, and waits for the replies with a short
poll (Flower's own ``send_and_receive`` sleeps 3 s between pulls, which a
vertical protocol with several round trips per epoch cannot afford).  A
party that answers with an error or not at all within the deadline raises a
one-line :class:`~fedrisk.errors.PartyUnavailableError` naming it and the step.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedrisk.errors import PartyUnavailableError, ProtocolError
from fedrisk.federation import message_types as mt
from fedrisk.federation.exchange import COORDINATOR, Exchange, ExchangeHeader, build_content, content_digest, read_content


@dataclass(frozen=True)
class PartyInfo:
    """What a party told the coordinator about itself (all public)."""

    name: str
    role: str
    node_id: int
    envelope_public_key: str
    signing_public_key: str
    signing_key_id: str


@dataclass
class TrafficCounter:
    """Bytes sent to and received from each party, per round."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    per_round: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, party: str, round_: int, sent: int = 0, received: int = 0) -> None:
        self.sent[party] += sent
        self.received[party] += received
        self.per_round[round_][party] += sent + received

    def total(self) -> int:
        return sum(self.sent.values()) + sum(self.received.values())

    def by_party(self) -> dict[str, dict[str, int]]:
        names = sorted(set(self.sent) | set(self.received))
        return {n: {"sent_to_party": self.sent[n], "received_from_party": self.received[n]} for n in names}


_FLOWER_REASON = re.compile(r"^<class '([\w.]+)'>:<'(.*)'>$", re.S)


def _reason(raw: object) -> str:
    """The one-line cause inside Flower's ``<class 'X'>:<'message'>`` error reason."""
    text = str(raw or "").strip()
    match = _FLOWER_REASON.match(text)
    if match:
        text = match.group(2)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


class CoordinatorSession:
    """Named, deadline-bounded message exchange with the federation's parties."""

    def __init__(self, grid: Grid, run_id: str, *, poll_interval: float = 0.05, timeout: float = 900.0) -> None:
        self.grid = grid
        self.run_id = run_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.parties: dict[str, PartyInfo] = {}
        self.traffic = TrafficCounter()

    # -- discovery -----------------------------------------------------------
    def discover(self, expected: list[str], *, timeout: float = 120.0) -> dict[str, PartyInfo]:
        """Wait for the expected parties' nodes and learn which node is which party."""
        deadline = time.monotonic() + timeout
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= len(expected):
                break
            if time.monotonic() > deadline:
                raise PartyUnavailableError(
                    f"only {len(node_ids)} of {len(expected)} parties connected within {timeout:.0f} s"
                )
            time.sleep(0.2)
        messages = {}
        for node_id in node_ids:
            header = ExchangeHeader(self.run_id, 0, "identity", COORDINATOR, f"node:{node_id}", "public")
            messages[node_id] = Message(build_content(header), dst_node_id=node_id, message_type=mt.IDENTITY)
        replies, _ = self._push_and_wait(messages, step="identity", timeout=max(deadline - time.monotonic(), 30.0), names=None)
        for node_id, reply in replies.items():
            cfg = read_content(reply.content).config
            info = PartyInfo(
                name=str(cfg["name"]),
                role=str(cfg["role"]),
                node_id=node_id,
                envelope_public_key=str(cfg["envelope_public_key"]),
                signing_public_key=str(cfg["signing_public_key"]),
                signing_key_id=str(cfg["signing_key_id"]),
            )
            if info.name in self.parties:
                raise ProtocolError(f"two nodes claim to be party {info.name!r}")
            self.parties[info.name] = info
        missing = sorted(set(expected) - set(self.parties))
        if missing:
            raise PartyUnavailableError(f"expected parties not connected: {', '.join(missing)}")
        return self.parties

    # -- exchange ------------------------------------------------------------
    def header(self, round_: int, step: str, receiver: str, content_class: str, key_fingerprint: str = "-") -> ExchangeHeader:
        return ExchangeHeader(self.run_id, round_, step, COORDINATOR, receiver, content_class, key_fingerprint)

    def exchange(
        self,
        requests: dict[str, tuple[str, RecordDict]],
        *,
        timeout: float | None = None,
    ) -> dict[str, Exchange]:
        """Send one message to each named party and return their unpacked replies.

        A party that answers with an error or not at all within the deadline
        raises :class:`~fedrisk.errors.PartyUnavailableError` naming it.
        """
        replies, _ = self._round_trip(requests, timeout or self.timeout, tolerant=False)
        return replies

    def exchange_tolerant(
        self, requests: dict[str, tuple[str, RecordDict]], *, timeout: float | None = None
    ) -> tuple[dict[str, Exchange], dict[str, str]]:
        """Like :meth:`exchange`, but a party that fails or is late is reported, not raised.

        Returns the replies of the parties that answered and, for the others, a
        one-line reason. A reply that breaks the protocol (wrong sender) still raises.
        """
        return self._round_trip(requests, timeout or self.timeout, tolerant=True)

    def _round_trip(
        self, requests: dict[str, tuple[str, RecordDict]], timeout: float, *, tolerant: bool
    ) -> tuple[dict[str, Exchange], dict[str, str]]:
        messages: dict[int, Message] = {}
        names: dict[int, str] = {}
        step = "?"
        for name, (message_type, content) in requests.items():
            info = self.parties.get(name)
            if info is None:
                raise ProtocolError(f"unknown party {name!r}")
            header = read_content(content).header
            step = header.step
            _, size = content_digest(content)
            self.traffic.add(name, header.round, sent=size)
            messages[info.node_id] = Message(
                content, dst_node_id=info.node_id, message_type=message_type, group_id=str(header.round)
            )
            names[info.node_id] = name
        replies, failures = self._push_and_wait(messages, step=step, timeout=timeout, names=names, tolerant=tolerant)
        out: dict[str, Exchange] = {}
        for node_id, reply in replies.items():
            name = names[node_id]
            exchange = read_content(reply.content)
            if exchange.header.sender != name or exchange.header.receiver != COORDINATOR:
                raise ProtocolError(
                    f"step {step!r}: reply from node of {name!r} claims sender {exchange.header.sender!r}"
                )
            _, size = content_digest(reply.content)
            self.traffic.add(name, exchange.header.round, received=size)
            out[name] = exchange
        return out, {names[n]: why for n, why in failures.items()}

    def _push_and_wait(
        self,
        messages: dict[int, Message],
        *,
        step: str,
        timeout: float,
        names: dict[int, str] | None,
        tolerant: bool = False,
    ) -> tuple[dict[int, Message], dict[int, str]]:
        ids = list(self.grid.push_messages(list(messages.values())))
        id_to_node = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages.values())}
        pending = set(ids)
        replies: dict[int, Message] = {}
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                node_id = id_to_node[mid]
                who = names[node_id] if names else f"node {node_id}"
                if reply.has_error():
                    if not tolerant:
                        raise PartyUnavailableError(f"party {who} failed at step {step!r}: {_reason(reply.error.reason)}")
                    failures[node_id] = _reason(reply.error.reason)
                    continue
                replies[node_id] = reply
            if pending:
                if time.monotonic() > deadline:
                    if tolerant:
                        failures.update({id_to_node[m]: f"no answer within {timeout:.0f} s" for m in pending})
                        break
                    late = sorted((names or {}).get(id_to_node[m], f"node {id_to_node[m]}") for m in pending)
                    raise PartyUnavailableError(
                        f"no answer from {', '.join(late)} at step {step!r} within {timeout:.0f} s"
                    )
                time.sleep(self.poll_interval)
        return replies, failures
