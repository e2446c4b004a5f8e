"""Signed, hash-chained audit ledger of every message crossing a party line.

Each node (parties and coordinator) writes its own append-only SQLite file
(:class:`Ledger`); :func:`verify_ledger` checks one file, :func:`cross_check`
checks a run's files against each other, and :func:`build_report` writes the
JSON/HTML report a compliance team reads. See :mod:`fedrisk.audit.entry` for
the canonical encoding.
"""

from __future__ import annotations

from fedrisk.audit.entry import (
    ContentClass,
    Direction,
    Ed25519Signer,
    EntryKind,
    ExchangeRecord,
    LedgerEntry,
    Signer,
    derive_message_id,
    key_id_of,
)
from fedrisk.audit.report import ReportResult, build_report
from fedrisk.audit.store import Ledger, LedgerMeta, LedgerSnapshot, read_ledger
from fedrisk.audit.verify import Finding, check_key_bindings, cross_check, verify_ledger, verify_run

__all__ = [
    "ContentClass",
    "Direction",
    "Ed25519Signer",
    "EntryKind",
    "ExchangeRecord",
    "Finding",
    "Ledger",
    "LedgerEntry",
    "LedgerMeta",
    "LedgerSnapshot",
    "ReportResult",
    "Signer",
    "build_report",
    "check_key_bindings",
    "cross_check",
    "derive_message_id",
    "key_id_of",
    "read_ledger",
    "verify_ledger",
    "verify_run",
]
