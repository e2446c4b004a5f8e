"""Record a Flower message crossing a party line into the writer's ledger.

Both ends call :meth:`ExchangeRecorder.record` with the same message content,
so both compute the same SHA-256 and size (over Flower's deterministic
protobuf encoding of the content) and the same message id, and the run's
ledgers can be cross-checked.  Content without a declared
:class:`~fedrisk.federation.exchange.ExchangeHeader` is refused here: a
protocol cannot send an undeclared payload past the ledger.

Ledger heads. Before a node sends a message it stamps the content with its
ledger's head — entry count and last entry hash — in the ``ConfigRecord``
named :data:`HEAD_RECORD` (:func:`with_head`); the stamp is part of the
content both ends hash and both ends store it in their entry
(``sender_count`` / ``sender_head``). The receiver removes the stamp
(:func:`without_head`) before the protocol sees the message, so protocols,
their reply caches and their digests never depend on it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from flwr.app import ConfigRecord, RecordDict

from fedrisk.audit.entry import CLOSE_HANDSHAKE_STEP, ExchangeRecord
from fedrisk.audit.store import Ledger
from fedrisk.federation.exchange import content_digest, read_header

LEDGER_FILE = "ledger.sqlite"
#: The content record carrying the sender's ledger head: ``{"count": int, "head": hex}``.
HEAD_RECORD = "fedrisk.ledger"
#: Step of the message that asks a party to close its ledger for the run.
CLOSE_STEP = CLOSE_HANDSHAKE_STEP

_HEX64 = re.compile(r"[0-9a-f]{64}")


def with_head(content: RecordDict, count: int, head: str) -> RecordDict:
    """A copy of ``content`` (records shared, not copied) stamped with a ledger head."""
    out = RecordDict({name: record for name, record in content.items() if name != HEAD_RECORD})
    out[HEAD_RECORD] = ConfigRecord({"count": int(count), "head": str(head)})
    return out


def without_head(content: RecordDict) -> RecordDict:
    """``content`` without its ledger-head stamp (the same object if it has none)."""
    if HEAD_RECORD not in content:
        return content
    return RecordDict({name: record for name, record in content.items() if name != HEAD_RECORD})


def head_of(content: RecordDict) -> tuple[int, str]:
    """The ledger head a message carries: ``(count, hash)``, or ``(0, "")`` if none (or malformed)."""
    record = content.get(HEAD_RECORD) if HEAD_RECORD in content else None
    if not isinstance(record, ConfigRecord):
        return 0, ""
    count, head = record.get("count"), record.get("head")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 0, ""
    if not isinstance(head, str) or not _HEX64.fullmatch(head):
        return 0, ""
    return count, head


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
        count, head = head_of(pending.content)
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
            sender_count=count,
            sender_head=head,
        )

    @contextmanager
    def open(self) -> Iterator[Ledger]:
        """The writer's ledger, open for a few appends (one open per message, as before)."""
        with Ledger(self.path, self.writer, self.signer) as ledger:
            yield ledger

    def record(self, *pending: PendingRecord, ledger: Ledger | None = None) -> int:
        """Append entries in one durable transaction; returns how many."""
        entries = [self.entry(p) for p in pending]
        if not entries:
            return 0
        if ledger is not None:
            ledger.append_many(entries)
            return len(entries)
        with self.open() as opened:
            opened.append_many(entries)
        return len(entries)

    def close_run(self, run_id: str, *, ledger: Ledger | None = None):
        """Write this writer's signed run-close record of ``run_id`` (see :meth:`Ledger.close_run`)."""
        if ledger is not None:
            return ledger.close_run(run_id)
        with self.open() as opened:
            return opened.close_run(run_id)
