"""A Flower Grid that writes every message the coordinator sends and receives to its ledger.

The ServerApp wraps whatever Grid Flower hands it in :class:`LedgeredGrid`
before any protocol runs, so recording cannot be skipped by a protocol.
A message addressed to a node that has not yet said which party it is
(``node:<id>``, the identity query) is recorded once its reply names the
party, under that name — exactly as the party's own ledger records it.
"""

from __future__ import annotations

from typing import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedrisk.audit.recorder import ExchangeRecorder, PendingRecord
from fedrisk.federation.exchange import read_header


class LedgeredGrid(Grid):
    """Delegates to ``inner`` and records each pushed message and each pulled reply."""

    def __init__(self, inner: Grid, recorder: ExchangeRecorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self._unresolved: dict[str, Message] = {}

    # -- delegation ---------------------------------------------------------
    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self.inner.set_run(run_id)  # type: ignore[arg-type]

    @property
    def run(self):  # type: ignore[override]
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
        pending = [PendingRecord(msg.content, "sent", msg.metadata.message_type) for msg, later in zip(messages, unresolved) if not later]
        # Recorded before sending: a crash after this point leaves a "sent" the
        # receiver may lack, which verification reports, never the reverse.
        self.recorder.record(*pending)
        ids = list(self.inner.push_messages(messages))
        for mid, msg, later in zip(ids, messages, unresolved):
            if later:
                self._unresolved[mid] = msg
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
                pending.append(PendingRecord(request.content, "sent", request.metadata.message_type, receiver=header.sender))
            pending.append(PendingRecord(reply.content, "received", reply.metadata.message_type))
        self.recorder.record(*pending)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("fedrisk protocols use CoordinatorSession.exchange")
