"""Record a Flower message crossing a party line into the writer's ledger.

Both ends call :meth:`ExchangeRecorder.record` with the same message content,
so both compute the same SHA-256 and size (over Flower's deterministic
protobuf encoding of the content) and the same message id, and the run's
ledgers can be cross-checked.  Content without a declared
:class:`~fedrisk.wire.exchange.ExchangeHeader` is refused here: a
protocol cannot send an undeclared payload past the ledger.

Ledger heads. Before a node sends a message it stamps the content with its
ledger's head — entry count and last entry hash — in the ``ConfigRecord``
named :data:`HEAD_RECORD` (:func:`with_head`); the stamp is part of the
content both ends hash and both ends store it in their entry
(``sender_count`` / ``sender_head``). The receiver removes the stamp
(:func:`without_head`) before the protocol sees the message, so protocols,
their reply caches and their digests never depend on it.

Open ledgers are kept. Opening a ledger file (connect, WAL set-up, checks of
writer, key, triggers and last entry) and closing it (which checkpoints the
WAL into the main file, with fsyncs) cost more than the append itself, and a
node appends several times per message. :meth:`ExchangeRecorder.open` hands
out one open :class:`~fedrisk.audit.store.Ledger` per file, writer and key for
the life of the process (a few at most, least recently used closed first);
each append is still its own ``synchronous=FULL`` transaction, durable when it
returns, and the opening checks are redone inside the transaction when another
connection wrote to the file meanwhile (see :mod:`fedrisk.audit.store`). A
ledger file removed or replaced on disk is noticed (by its inode) and opened
anew.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from fedrisk.audit.entry import CLOSE_HANDSHAKE_STEP, ExchangeRecord, LedgerEntry, Signer, signer_public_key
from fedrisk.audit.store import Ledger
from fedrisk.errors import LedgerError
from fedrisk.wire.exchange import content_digest, read_header

LEDGER_FILE = "ledger.sqlite"
#: The content record carrying the sender's ledger head: ``{"count": int, "head": hex}``.
HEAD_RECORD = "fedrisk.ledger"
#: Step of the message that asks a party to close its ledger for the run.
CLOSE_STEP = CLOSE_HANDSHAKE_STEP

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: How many ledgers a process keeps open (a node has one; tests running many in-process nodes more).
MAX_OPEN_LEDGERS = 16


class _OpenLedger:
    __slots__ = ("inode", "ledger", "users")

    def __init__(self, ledger: Ledger, inode: tuple[int, int]) -> None:
        self.ledger, self.inode, self.users = ledger, inode, 0


_open_ledgers: OrderedDict[tuple[str, str, bytes], _OpenLedger] = OrderedDict()
_open_lock = threading.Lock()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _acquire(path: Path, writer: str, signer: Signer) -> _OpenLedger:
    """The process's open ledger for (file, writer, key), opened (and checked) if need be."""
    key = (os.path.realpath(path), writer, signer_public_key(signer))
    with _open_lock:
        cached = _open_ledgers.get(key)
        if cached is not None and cached.inode != _inode(path):
            # The file was removed or replaced since it was opened: never append to a file no longer there.
            del _open_ledgers[key]
            if cached.users == 0:
                cached.ledger.close()
            cached = None
        if cached is None:
            ledger = Ledger(path, writer, signer)
            inode = _inode(path)
            if inode is None:  # pragma: no cover - removed while being opened
                ledger.close()
                raise LedgerError(f"{path}: ledger file vanished while opening it")
            cached = _open_ledgers[key] = _OpenLedger(ledger, inode)
            idle = [k for k, v in _open_ledgers.items() if v.users == 0 and k != key]  # oldest first
            for old_key in idle[: len(_open_ledgers) - MAX_OPEN_LEDGERS]:
                _open_ledgers.pop(old_key).ledger.close()
        _open_ledgers.move_to_end(key)
        cached.users += 1
        return cached


def _release(cached: _OpenLedger) -> None:
    with _open_lock:
        cached.users -= 1
        if cached.users == 0 and all(v is not cached for v in _open_ledgers.values()):
            cached.ledger.close()  # evicted or replaced while in use


def close_open_ledgers() -> None:
    """Close every ledger this process keeps open (checkpointing their WAL); they reopen on next use."""
    with _open_lock:
        while _open_ledgers:
            _, cached = _open_ledgers.popitem()
            if cached.users == 0:
                cached.ledger.close()


atexit.register(close_open_ledgers)


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

    def __init__(self, path: Path, writer: str, signer: Signer) -> None:
        self.path = Path(path)
        self.writer = writer
        self.signer = signer

    def entry(self, pending: PendingRecord, *, timestamp_us: int | None = None) -> ExchangeRecord:
        """The record of ``pending`` (digest of its content); stamped at ``timestamp_us`` if given, else when sealed."""
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
            timestamp_us=timestamp_us,
        )

    @contextmanager
    def open(self) -> Iterator[Ledger]:
        """The writer's ledger, open (kept open between messages: see the module's notes)."""
        cached = _acquire(self.path, self.writer, self.signer)
        try:
            yield cached.ledger
        finally:
            _release(cached)

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

    def check(self) -> None:
        """Open the writer's ledger if need be and check it is fit to extend (:meth:`Ledger.check`)."""
        with self.open() as ledger:
            ledger.check()

    def record_chain(self, *items: ExchangeRecord | Callable[[int, str], ExchangeRecord], ledger: Ledger | None = None) -> int:
        """Append records in one durable transaction, a callable item getting the head before it
        (:meth:`fedrisk.audit.store.Ledger.append_chain`); returns how many."""
        if not items:
            return 0
        if ledger is not None:
            return len(ledger.append_chain(items))
        with self.open() as opened:
            return len(opened.append_chain(items))

    def close_run(self, run_id: str, *, ledger: Ledger | None = None) -> LedgerEntry:
        """Write this writer's signed run-close record of ``run_id`` (see :meth:`Ledger.close_run`)."""
        if ledger is not None:
            return ledger.close_run(run_id)
        with self.open() as opened:
            entry = opened.close_run(run_id)
            opened.checkpoint()  # the run is over: its entries into the main file
            return entry
