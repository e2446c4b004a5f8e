"""Record a Flower message crossing a party line into the writer's ledger.

Both ends call :meth:`ExchangeRecorder.record` with the same message content,
so both compute the same SHA-256 and size (over Flower's deterministic
protobuf encoding of the content) and the same message id, and the run's
ledgers can be cross-checked.  Content without a declared
:class:`~fedrisk.federation.exchange.ExchangeHeader` is refused here: a
protocol cannot send an undeclared payload past the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import RecordDict

from fedrisk.audit.entry import ExchangeRecord
from fedrisk.audit.store import Ledger
from fedrisk.federation.exchange import content_digest, read_header

LEDGER_FILE = "ledger.sqlite"


@dataclass(frozen=True)
class PendingRecord:
    """One side of one message, ready to append."""

    content: RecordDict
    direction: str
    message_type: str
    sender: str | None = None
    receiver: str | None = None


class ExchangeRecorder:
    """Appends what its writer sent and received to the writer's own ledger."""

    def __init__(self, path: Path, writer: str, signer) -> None:
        self.path = Path(path)
        self.writer = writer
        self.signer = signer

    def entry(self, pending: PendingRecord) -> ExchangeRecord:
        header = read_header(pending.content)  # raises on undeclared content
        sha256, size = content_digest(pending.content)
        return ExchangeRecord.of_digest(
            sha256,
            size,
            run_id=header.run_id,
            round=header.round,
            step=header.step,
            # A node addressed by its Flower id before it introduced itself
            # (``node:<id>``) is recorded under the party name it answered with.
            sender=pending.sender or header.sender,
            receiver=pending.receiver or header.receiver,
            message_type=pending.message_type,
            direction=pending.direction,
            content_class=header.content_class,
            key_fingerprint="" if header.key_fingerprint == "-" else header.key_fingerprint,
        )

    def record(self, *pending: PendingRecord) -> int:
        """Append entries in one durable transaction; returns how many."""
        entries = [self.entry(p) for p in pending]
        if not entries:
            return 0
        with Ledger(self.path, self.writer, self.signer) as ledger:
            ledger.append_many(entries)
        return len(entries)
