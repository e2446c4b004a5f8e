"""A Flower Grid that writes every message the coordinator sends and receives to its ledger.

The ServerApp wraps whatever Grid Flower hands it in :class:`LedgeredGrid`
before any protocol runs, so recording cannot be skipped by a protocol.
A message addressed to a node that has not yet said which party it is
(``node:<id>``, the identity query) is recorded once its reply names the
party, under that name — exactly as the party's own ledger records it.

Every message pushed is stamped with the coordinator's ledger head, and each
reply's stamp (the party's head) is recorded and then removed before the
protocol sees the reply (:mod:`fedrisk.audit.recorder`). :func:`close_run`
ends a run in every ledger: each party writes its signed run-close record and
answers with its head, then the coordinator writes its own.
"""

from __future__ import annotations

from typing import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedrisk.audit.recorder import CLOSE_STEP, ExchangeRecorder, PendingRecord, with_head, without_head
from fedrisk.wire.exchange import read_header


class LedgeredGrid(Grid):
    """Delegates to ``inner`` and records each pushed message and each pulled reply."""

    def __init__(self, inner: Grid, recorder: ExchangeRecorder) -> None:
        self.inner = inner
        self.recorder = recorder
        # message id -> (message type, content as stamped and sent): the receiver may replace msg.content
        self._unresolved: dict[str, tuple[str, RecordDict]] = {}

    # -- delegation ---------------------------------------------------------
    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self.inner.set_run(run_id)  # type: ignore[arg-type]

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    # -- recording ----------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        # undeclared content never leaves; a node addressed by id is recorded once it answers
        unresolved = [read_header(msg.content).receiver.startswith("node:") for msg in messages]
        with self.recorder.open() as ledger:
            count, head = ledger.head()
            for msg in messages:
                msg.content = with_head(msg.content, count, head)  # a copy: the caller's content is untouched
            pending = [PendingRecord(msg.content, "sent", msg.metadata.message_type) for msg, later in zip(messages, unresolved) if not later]
            # Recorded before sending: a crash after this point leaves a "sent" the
            # receiver may lack, which verification reports, never the reverse.
            self.recorder.record(*pending, ledger=ledger)
        sent = [msg.content for msg in messages]
        ids = list(self.inner.push_messages(messages))
        for mid, msg, content, later in zip(ids, messages, sent, unresolved):
            if later:
                self._unresolved[mid] = (msg.metadata.message_type, content)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        pending = []
        for reply in replies:
            if not reply.has_content():
                continue
            header = read_header(reply.content)
            request = self._unresolved.pop(reply.metadata.reply_to_message_id, None)
            if request is not None:
                message_type, content = request
                pending.append(PendingRecord(content, "sent", message_type, receiver=header.sender))
            pending.append(PendingRecord(reply.content, "received", reply.metadata.message_type))
        self.recorder.record(*pending)
        for reply in replies:
            if reply.has_content():
                reply.content = without_head(reply.content)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("fedrisk protocols use CoordinatorSession.exchange")


def close_run(session, *, timeout: float = 60.0) -> dict[str, str]:
    """End ``session``'s run in every ledger; returns ``{party: why}`` for parties that did not close.

    Each party records a ``ledger.close`` query, writes its signed run-close
    record and answers with its ledger head (which the coordinator records);
    then the coordinator writes its own run-close record. Sent even when the
    coordinator's own ledger is off: the parties' ledgers are theirs.
    """
    from fedrisk.wire import message_types as mt
    from fedrisk.wire.exchange import build_content

    requests = {name: (mt.IDENTITY, build_content(session.header(0, CLOSE_STEP, name, "public"))) for name in sorted(session.parties)}
    failures: dict[str, str] = {}
    if requests:
        replies, failures = session.exchange_tolerant(requests, timeout=timeout)
        for name, reply in replies.items():
            if reply.config.get("ledger") != "closed":
                failures[name] = f"its ledger is {reply.config.get('ledger', 'not answering the close')}"
    if isinstance(session.grid, LedgeredGrid):
        session.grid.recorder.close_run(session.run_id)
    return failures
