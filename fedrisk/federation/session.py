"""The coordinator's view of a federation: parties by name, and timed exchanges.

Protocols talk to parties by *name* through :class:`CoordinatorSession`;
it maps names to Flower node ids (asking each node who it is), sends
messages through Flower's ``Grid``, and waits for the replies with a short
poll (Flower's own ``send_and_receive`` sleeps 3 s between pulls, which a
vertical protocol with several round trips per epoch cannot afford; here
the pulls follow :meth:`CoordinatorSession.pull_delay`).  A
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
from fedrisk.wire import message_types as mt
from fedrisk.wire.exchange import (
    COORDINATOR,
    Exchange,
    ExchangeHeader,
    build_content,
    content_digest,
    read_content,
    read_header,
)
from fedrisk.federation.status import RunStatus


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

    def __init__(
        self,
        grid: Grid,
        run_id: str,
        *,
        poll_interval: float = 0.05,
        timeout: float = 900.0,
        pause_timeout: float = 0.0,
        probe_after: float = 0.0,
        status: RunStatus | None = None,
    ) -> None:
        self.grid = grid
        self.run_id = run_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        #: How long a strict exchange waits for a party that fails transiently (0 = fail at once).
        self.pause_timeout = pause_timeout
        #: Seconds without an answer before a node is probed for a lost message (0 = never).
        self.probe_after = probe_after
        self.status = status if status is not None else RunStatus(None, run_id)
        #: Parties whose request had to be sent again (a redone step), since the last reset.
        self.rounds_redone_parties: set[str] = set()
        self.parties: dict[str, PartyInfo] = {}
        self.traffic = TrafficCounter()
        #: Messages (probes, identity queries, older copies of resent messages) whose replies are no
        #: longer awaited but are still pulled when they come, so that the ledger records both ends.
        self._stray: dict[str, int] = {}

    # -- discovery -----------------------------------------------------------
    def discover(self, expected: list[str], *, timeout: float = 120.0) -> dict[str, PartyInfo]:
        """Wait for the expected parties' nodes and learn which node is which party.

        Every connected node is asked who it is; a node that does not answer
        (a SuperNode that died but is not yet marked offline) is ignored as
        long as every expected party is found on another node before the
        deadline.
        """
        deadline = time.monotonic() + timeout
        self.status.set(state="discovering")
        asked: dict[str, int] = {}  # message id -> node id
        known: set[int] = set()
        last_listed = 0.0
        node_ids: list[int] = []
        while True:
            now = time.monotonic()
            if now - last_listed >= 1.0:
                node_ids = sorted(self.grid.get_node_ids())
                last_listed = now
                fresh = [n for n in node_ids if n not in known and n not in asked.values()]
                if fresh:
                    messages = []
                    for node_id in fresh:
                        header = ExchangeHeader(self.run_id, 0, "identity", COORDINATOR, f"node:{node_id}", "public")
                        messages.append(Message(build_content(header), dst_node_id=node_id, message_type=mt.IDENTITY))
                    for mid, msg in zip(self.grid.push_messages(messages), messages):
                        asked[mid] = msg.metadata.dst_node_id
                    self.status.event(f"asked {len(fresh)} connected node(s) which party they are")
            for reply in self.grid.pull_messages(list(asked) + list(self._stray)) if asked or self._stray else []:
                if self._stray.pop(reply.metadata.reply_to_message_id, None) is not None:
                    continue
                replier = asked.pop(reply.metadata.reply_to_message_id, None)
                if replier is None:
                    continue
                if reply.has_error():
                    continue  # asked again when it is listed again
                known.add(replier)
                cfg = read_content(reply.content).config
                info = PartyInfo(
                    name=str(cfg["name"]),
                    role=str(cfg["role"]),
                    node_id=replier,
                    envelope_public_key=str(cfg["envelope_public_key"]),
                    signing_public_key=str(cfg["signing_public_key"]),
                    signing_key_id=str(cfg["signing_key_id"]),
                )
                if info.name in self.parties and self.parties[info.name].node_id != replier:
                    raise ProtocolError(f"two nodes claim to be party {info.name!r}")
                self.parties[info.name] = info
                self.status.party(info.name, "connected", role=info.role, node_id=str(replier))
            missing = sorted(set(expected) - set(self.parties))
            if not missing:
                self._stray.update(asked)  # nodes that have not answered yet (a dead SuperNode, a second copy)
                return self.parties
            if time.monotonic() > deadline:
                if len(node_ids) < len(expected):
                    raise PartyUnavailableError(f"only {len(node_ids)} of {len(expected)} parties connected within {timeout:.0f} s")
                raise PartyUnavailableError(f"expected parties not connected: {', '.join(missing)}")
            self.status.heartbeat()
            time.sleep(self.poll_interval)

    # -- exchange ------------------------------------------------------------
    def pull_delay(self, waited: float) -> float:
        """Seconds to sleep before the next pull of an exchange that has waited ``waited`` seconds.

        Flower's Grid has no long poll: each pull is one request to the
        SuperLink. A reply to a short step comes within milliseconds, a reply
        to a heavy one after seconds, so the pulls start every
        :data:`FIRST_PULL_DELAY` and slow down to a tenth of the time waited
        so far, capped at :attr:`poll_interval`: a reply waits at most ~10 %
        longer than it took, or ``poll_interval``.
        """
        return min(self.poll_interval, max(FIRST_PULL_DELAY, PULL_DELAY_FRACTION * waited))

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

    def exchange_tolerant(self, requests: dict[str, tuple[str, RecordDict]], *, timeout: float | None = None) -> tuple[dict[str, Exchange], dict[str, str]]:
        """Like :meth:`exchange`, but a party that fails or is late is reported, not raised.

        Returns the replies of the parties that answered and, for the others, a
        one-line reason. A reply that breaks the protocol (wrong sender) still raises.
        """
        return self._round_trip(requests, timeout or self.timeout, tolerant=True)

    def _round_trip(self, requests: dict[str, tuple[str, RecordDict]], timeout: float, *, tolerant: bool) -> tuple[dict[str, Exchange], dict[str, str]]:
        messages: dict[int, Message] = {}
        names: dict[int, str] = {}
        step = "?"
        for name, (message_type, content) in requests.items():
            info = self.parties.get(name)
            if info is None:
                raise ProtocolError(f"unknown party {name!r}")
            header = read_header(content)
            step = header.step
            _, size = content_digest(content)
            self.traffic.add(name, header.round, sent=size)
            messages[info.node_id] = Message(content, dst_node_id=info.node_id, message_type=message_type, group_id=str(header.round))
            names[info.node_id] = name
        replies, failures = self._push_and_wait(messages, step=step, timeout=timeout, names=names, tolerant=tolerant)
        out: dict[str, Exchange] = {}
        for node_id, reply in replies.items():
            name = names[node_id]
            exchange = read_content(reply.content)
            if exchange.header.sender != name or exchange.header.receiver != COORDINATOR:
                raise ProtocolError(f"step {step!r}: reply from node of {name!r} claims sender {exchange.header.sender!r}")
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
        """Push one message per node and wait for the replies.

        Beyond Flower's own error replies, two failures are handled here:

        * a node whose SuperNode restarted after pulling a message loses it for
          good (Flower delivers a message once). After :attr:`probe_after`
          seconds without an answer the node is sent a liveness probe
          (``query.whoami``); a probe answered while the message still is not
          means the message was lost;
        * with :attr:`pause_timeout` > 0 a strict exchange survives a party
          that is restarting: a lost message or a transient error (node
          offline, party process not listening) pauses the run, with the
          reason in the status file, and the *same* message is sent again
          until the party answers or ``pause_timeout`` runs out. Parties answer
          a repeated message from their reply cache, so nothing is computed
          or released twice.
        """
        resilient = not tolerant and self.pause_timeout > 0 and names is not None
        started = time.monotonic()
        deadline = started + timeout
        live: dict[str, int] = {}  # message id -> node id
        sent_at: dict[int, float] = {}
        for mid, msg in zip(self.grid.push_messages(list(messages.values())), messages.values()):
            live[mid] = msg.metadata.dst_node_id
            sent_at[msg.metadata.dst_node_id] = started
        pending = set(messages)
        probes: dict[str, int] = {}
        probed_at: dict[int, float] = {}
        probe_answered: dict[int, float] = {}
        retry_at: dict[int, float] = {}
        paused_since: dict[int, float] = {}
        waiting: dict[int, str] = {}
        replies: dict[int, Message] = {}
        failures: dict[int, str] = {}

        def who(node_id: int) -> str:
            return names[node_id] if names else f"node {node_id}"

        def give_up(node_id: int, reason: str) -> None:
            if not tolerant:
                self.status.party(who(node_id), "failed", error=reason)
                raise PartyUnavailableError(f"party {who(node_id)} failed at step {step!r}: {reason}")
            failures[node_id] = reason
            pending.discard(node_id)
            self.status.party(who(node_id), "failed", error=reason)

        def pause(node_id: int, reason: str, now: float) -> None:
            for mid in [m for m, n in live.items() if n == node_id]:
                del live[mid]
            paused_since.setdefault(node_id, now)
            waiting[node_id] = reason
            retry_at[node_id] = now + RESEND_BACKOFF
            probe_answered.pop(node_id, None)
            self.status.party(who(node_id), "waiting", error=reason)
            self.status.paused({who(n): r for n, r in waiting.items()})

        while pending:
            now = time.monotonic()
            asked = list(live) + list(probes) + list(self._stray)
            for reply in self.grid.pull_messages(asked) if asked else []:
                mid = reply.metadata.reply_to_message_id
                if self._stray.pop(mid, None) is not None:
                    continue  # recorded by the ledgered grid; nothing else to do
                if mid in probes:
                    probe_answered[probes.pop(mid)] = time.monotonic()
                    continue
                node_id = live.pop(mid, None)
                if node_id is None or node_id not in pending:
                    continue  # an answer to an older copy of a message already answered
                if reply.has_error():
                    reason = _reason(reply.error.reason)
                    if resilient and _transient(reply.error):
                        pause(node_id, reason, time.monotonic())
                        continue
                    give_up(node_id, reason)
                    continue
                replies[node_id] = reply
                pending.discard(node_id)
                if node_id in waiting:
                    del waiting[node_id]
                    self.rounds_redone_parties.add(who(node_id))
                    if not waiting:
                        self.status.running()
                if names:
                    self.status.party(who(node_id), "answered")
            now = time.monotonic()
            for node_id in sorted(pending):
                if node_id in retry_at:
                    continue
                answered = probe_answered.get(node_id)
                if answered is not None and now - answered > LOST_GRACE:
                    reason = "its SuperNode restarted and lost the message"
                    if resilient:
                        pause(node_id, reason, now)
                    else:
                        for mid in [m for m, n in live.items() if n == node_id]:
                            del live[mid]
                        give_up(node_id, reason)
                elif self.probe_after > 0 and now - max(sent_at[node_id], probed_at.get(node_id, 0.0)) > self.probe_after:
                    probes[self._push_probe(node_id)] = node_id
                    probed_at[node_id] = now
            due = [n for n, at in sorted(retry_at.items()) if now >= at and n in pending]
            online = set(self.grid.get_node_ids()) if due else set()
            for node_id in due:
                if node_id not in online:  # still offline: resend once it is back, not into the void
                    retry_at[node_id] = now + RESEND_BACKOFF
                    continue
                original = messages[node_id]
                copy = Message(
                    original.content,
                    dst_node_id=node_id,
                    message_type=original.metadata.message_type,
                    group_id=original.metadata.group_id,
                )
                for mid in self.grid.push_messages([copy]):
                    live[mid] = node_id
                sent_at[node_id] = now
                probed_at.pop(node_id, None)
                del retry_at[node_id]
            if not pending:
                break
            expired = sorted(n for n in pending if n in paused_since and now > paused_since[n] + self.pause_timeout)
            for node_id in expired:
                reason = f"did not come back within pause-timeout {self.pause_timeout:.0f} s ({waiting.get(node_id, 'no answer')})"
                give_up(node_id, reason)
            if now > deadline:
                late = sorted(n for n in pending if n not in paused_since)
                if late:
                    if tolerant:
                        for node_id in late:
                            give_up(node_id, f"no answer within {timeout:.0f} s")
                        break
                    raise PartyUnavailableError(f"no answer from {', '.join(who(n) for n in late)} at step {step!r} within {timeout:.0f} s")
            self.status.heartbeat()
            time.sleep(self.pull_delay(time.monotonic() - started))
        self._stray.update(probes)
        self._stray.update(live)
        return replies, failures

    def drain(self, timeout: float = 10.0) -> int:
        """Pull the replies of probes and resent copies still on their way, so every ledger has both ends.

        Returns how many are still outstanding after ``timeout`` seconds (the
        message never reached a live node: neither end recorded it).
        """
        deadline = time.monotonic() + timeout
        while self._stray and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(self._stray)):
                self._stray.pop(reply.metadata.reply_to_message_id, None)
            if self._stray:
                time.sleep(self.poll_interval)
        return len(self._stray)

    def _push_probe(self, node_id: int) -> str:
        """Send a liveness probe (an identity query) to a node; returns its message id."""
        header = ExchangeHeader(self.run_id, 0, "liveness.probe", COORDINATOR, f"node:{node_id}", "public")
        message = Message(build_content(header), dst_node_id=node_id, message_type=mt.IDENTITY)
        return next(iter(self.grid.push_messages([message])))


#: First pauses between the pulls of an exchange, and the fraction of the time waited they grow to.
FIRST_PULL_DELAY = 0.002
PULL_DELAY_FRACTION = 0.1
#: Seconds between a transient failure and sending the same message again.
RESEND_BACKOFF = 2.0
#: Seconds a message may still arrive after its node answered a later probe.
LOST_GRACE = 2.0


def _transient(error: object) -> bool:
    """A failure a restarting party recovers from: node offline, reply lost, party process down."""
    from flwr.common.constant import ErrorCode

    code = getattr(error, "code", None)
    if code in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.CLIENT_APP_CRASHED):
        return True
    reason = str(getattr(error, "reason", ""))
    return "PartyUnavailableError" in reason or "party process is not listening" in reason or "relay connection closed" in reason
