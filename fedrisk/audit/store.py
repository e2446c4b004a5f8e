"""Append-only SQLite storage of one node's ledger.

One file per node. The file is in WAL mode with ``synchronous=FULL`` so that
a commit is on disk when ``append``/``append_many`` return; a crash leaves
every committed entry and nothing of an uncommitted batch.

Append-only is enforced by the schema itself: ``BEFORE UPDATE`` and
``BEFORE DELETE`` triggers abort on both tables, a ``BEFORE INSERT`` trigger
on ``entries`` accepts only the next sequence number carrying the previous
entry's hash (which also defeats ``INSERT OR REPLACE``), and ``meta`` refuses
new rows once sealed. Someone with raw file access can still drop the
triggers; that is what :mod:`fedrisk.audit.verify` is for.

Appends take SQLite's write lock first (``BEGIN IMMEDIATE``) and read the
chain head inside the transaction, so several processes of one node (a
Flower SuperNode starts a ClientApp process per message) can share a file.

A :class:`Ledger` may stay open for many appends (a party's SuperNode keeps
its ledger open across messages, :mod:`fedrisk.audit.recorder`). What opening
checks — writer, key, triggers, the last entry's hash and signature — is
checked again inside the appending transaction whenever another connection
committed to the file since this one last looked (SQLite's
``PRAGMA data_version``), so a long-lived ledger never extends a chain that
someone else altered in the meantime.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedrisk.audit.entry import (
    ENTRY_FIELDS,
    EntryKind,
    FORMAT,
    ExchangeRecord,
    LedgerEntry,
    Signer,
    check_name,
    entry_hash_of,
    genesis_hash,
    key_id_of,
    run_close_record,
    seal,
    signed_message,
    signer_public_key,
    verify_signature,
)
from fedrisk.errors import LedgerError

_COLUMNS: tuple[str, ...] = (*ENTRY_FIELDS, "body")

#: ``PRAGMA application_id`` of a ledger file ("FRLG").
APPLICATION_ID = 0x46524C47

_ABORT_UPDATE = "SELECT RAISE(ABORT, 'fedrisk ledger is append-only: UPDATE refused');"
_ABORT_DELETE = "SELECT RAISE(ABORT, 'fedrisk ledger is append-only: DELETE refused');"

#: Trigger name -> DDL. Verification reports any that is missing.
TRIGGERS: dict[str, str] = {
    "entries_no_update": f"CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN {_ABORT_UPDATE} END",
    "entries_no_delete": f"CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN {_ABORT_DELETE} END",
    "entries_extend_only": (
        "CREATE TRIGGER entries_extend_only BEFORE INSERT ON entries "
        "WHEN NEW.seq IS NOT (SELECT IFNULL(MAX(seq), 0) + 1 FROM entries) "
        "OR NEW.prev_hash IS NOT IFNULL((SELECT entry_hash FROM entries WHERE seq = NEW.seq - 1), "
        "(SELECT value FROM meta WHERE key = 'genesis_hash')) "
        "BEGIN SELECT RAISE(ABORT, 'fedrisk ledger is append-only: an entry must extend the chain'); END"
    ),
    "meta_no_update": f"CREATE TRIGGER meta_no_update BEFORE UPDATE ON meta BEGIN {_ABORT_UPDATE} END",
    "meta_no_delete": f"CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta BEGIN {_ABORT_DELETE} END",
    "meta_sealed": (
        "CREATE TRIGGER meta_sealed BEFORE INSERT ON meta "
        "WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'sealed') "
        "BEGIN SELECT RAISE(ABORT, 'fedrisk ledger meta is sealed'); END"
    ),
}

_INT_COLUMNS = frozenset({"round", "size_bytes", "sender_count", "timestamp_us"})
# Columns in body order (then entry_hash, signature, body), so a row reads back as a LedgerEntry.
_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE entries (seq INTEGER PRIMARY KEY, " + ", ".join(f"{c} {'INTEGER' if c in _INT_COLUMNS else 'TEXT'} NOT NULL" for c in _COLUMNS[1:]) + ")",
)

_INSERT = f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM entries"


#: Formats an older fedrisk wrote; they have no ledger heads or run-close records.
_OLD_FORMATS = frozenset({"fedrisk-ledger/1"})


def _old_format(fmt: object) -> str:
    return (
        f"ledger format {fmt!r} predates {FORMAT!r} (no ledger heads or run-close records, "
        "so a tail cut at both ends cannot be detected); verify it with the fedrisk release that wrote it"
    )


@dataclass(frozen=True)
class LedgerMeta:
    """Who writes a ledger, under which key."""

    writer: str
    public_key: bytes
    key_id: str
    format: str
    created_us: int
    genesis_hash: str

    @classmethod
    def from_raw(cls, raw: Mapping[str, object], path: str) -> LedgerMeta:
        """Parse the ``meta`` table's rows; raise LedgerError if unusable."""
        try:
            values = {k: raw[k] for k in ("writer", "public_key", "key_id", "format", "created_us", "genesis_hash")}
            public_key = bytes.fromhex(str(values["public_key"]))
            created = int(str(values["created_us"]))
        except (KeyError, ValueError) as exc:
            raise LedgerError(f"{path}: meta table is incomplete or malformed ({exc})") from None
        if len(public_key) != 32:
            raise LedgerError(f"{path}: meta public_key is not a 32-byte Ed25519 key")
        return cls(
            writer=str(values["writer"]),
            public_key=public_key,
            key_id=str(values["key_id"]),
            format=str(values["format"]),
            created_us=created,
            genesis_hash=str(values["genesis_hash"]),
        )


@dataclass(frozen=True)
class LedgerSnapshot:
    """Everything stored in a ledger file, read without judging it.

    Attributes
    ----------
    meta
        The ``meta`` rows as stored.
    entries
        Entries in ``seq`` order, values exactly as stored.
    bodies
        The stored canonical body of each entry (same order).
    triggers
        Names of the triggers present in the file.
    """

    path: str
    meta: Mapping[str, object]
    entries: tuple[LedgerEntry, ...]
    bodies: tuple[object, ...]
    triggers: frozenset[str]


def _text_factory(raw: bytes) -> str | bytes:
    # A flipped byte can make a TEXT value invalid UTF-8; keep the bytes so
    # verification can report the field instead of the read failing.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _row_entry(row: tuple[object, ...]) -> tuple[LedgerEntry, object]:
    return LedgerEntry(*row[: len(ENTRY_FIELDS)]), row[-1]  # type: ignore[arg-type]


def read_ledger(path: str | os.PathLike[str]) -> LedgerSnapshot:
    """Read a ledger file read-only.

    Raises
    ------
    LedgerError
        If the file is missing, not SQLite, damaged or has no ledger tables.
    """
    p = Path(path)
    name = str(path)
    if not p.is_file():
        raise LedgerError(f"{name}: ledger file not found")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise LedgerError(f"{name}: cannot open ledger ({exc})") from None
    try:
        conn.text_factory = _text_factory
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") in _OLD_FORMATS:
            raise LedgerError(f"{name}: {_old_format(meta['format'])}")
        rows = conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
        triggers = frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    except sqlite3.Error as exc:
        raise LedgerError(f"{name}: cannot read ledger ({exc})") from None
    finally:
        conn.close()
    pairs = [_row_entry(r) for r in rows]
    return LedgerSnapshot(
        path=name,
        meta=meta,
        entries=tuple(e for e, _ in pairs),
        bodies=tuple(b for _, b in pairs),
        triggers=triggers,
    )


class Ledger:
    """A node's append-only, signed, hash-chained ledger file.

    Parameters
    ----------
    path
        The SQLite file; created (with its folder) if missing.
    writer
        The node's name (``"bank"``, ``"coordinator"``...).
    signer
        The node's identity key: anything with ``sign(bytes) -> bytes`` and
        ``public_key_bytes`` (see :class:`fedrisk.audit.entry.Signer`).
    busy_timeout_s
        How long to wait for another process holding the write lock.

    Raises
    ------
    LedgerError
        If the file belongs to another writer or key, is not a ledger, lost
        its append-only triggers, or its last entry fails verification.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        writer: str,
        signer: Signer,
        *,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.writer = check_name(writer, "writer")
        self._signer = signer
        self.public_key = signer_public_key(signer)
        self.key_id = key_id_of(self.public_key)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open ledger ({exc})") from None
        try:
            self._setup()
            # Read before the checks below: a commit by anyone else after this makes the next append check again.
            self._data_version = self._read_data_version()
            self.meta = self._load_meta()
            self._check_identity()
            self._check_triggers()
            self._check_tail()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -----------------------------------------------------------

    def _setup(self) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"{self.path}: cannot switch ledger to WAL mode (got {mode})")
            # FULL: every commit syncs the WAL, so a returned append survives power loss.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "meta" not in tables:
                    if tables:
                        raise LedgerError(f"{self.path}: not a fedrisk ledger (has tables {sorted(tables)})")
                    self._create_schema()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot initialise ledger ({exc})") from None

    def _create_schema(self) -> None:
        for ddl in (*_TABLES, *TRIGGERS.values()):
            self._conn.execute(ddl)
        self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        rows = {
            "format": FORMAT,
            "writer": self.writer,
            "public_key": self.public_key.hex(),
            "key_id": self.key_id,
            "created_us": str(time.time_ns() // 1000),
            "genesis_hash": genesis_hash(self.writer, self.public_key),
        }
        self._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        # Last row: from here on the meta_sealed trigger refuses new rows.
        self._conn.execute("INSERT INTO meta (key, value) VALUES ('sealed', '1')")

    def _load_meta(self) -> LedgerMeta:
        try:
            raw = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot read ledger meta ({exc})") from None
        return LedgerMeta.from_raw(raw, str(self.path))

    def _check_identity(self) -> None:
        if self.meta.format != FORMAT:
            detail = _old_format(self.meta.format) if self.meta.format in _OLD_FORMATS else f"unknown ledger format {self.meta.format!r}"
            raise LedgerError(f"{self.path}: {detail}; refusing to append (start a new ledger file)")
        if self.meta.writer != self.writer:
            raise LedgerError(f"{self.path}: ledger belongs to writer {self.meta.writer!r}, refusing to write as {self.writer!r}")
        if self.meta.public_key != self.public_key:
            raise LedgerError(f"{self.path}: ledger was created under key {key_id_of(self.meta.public_key)}, refusing to sign with key {self.key_id}")
        if self.meta.genesis_hash != genesis_hash(self.writer, self.public_key):
            raise LedgerError(f"{self.path}: meta genesis_hash does not match writer and key")

    def _check_triggers(self) -> None:
        names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        missing = sorted(set(TRIGGERS) - names)
        if missing:
            raise LedgerError(f"{self.path}: append-only triggers missing ({', '.join(missing)}); file was altered")

    def _check_tail(self) -> None:
        # Never extend a chain whose head is already broken; the full check
        # is `verify_ledger`, this one costs one row.
        row = self._conn.execute(f"{_SELECT} ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return
        entry, body = _row_entry(row)
        ok = False
        try:
            text = entry.body_text()
            ok = (
                text == body
                and entry_hash_of(text) == entry.entry_hash
                and verify_signature(self.public_key, signed_message(entry.entry_hash), bytes.fromhex(entry.signature))
            )
        except (TypeError, ValueError, UnicodeError):
            ok = False
        if not ok:
            raise LedgerError(f"{self.path}: last entry {entry.seq} fails verification; run `fedrisk audit verify` on it")

    # -- writing -----------------------------------------------------------

    def append(self, exchange: ExchangeRecord) -> LedgerEntry:
        """Append one exchange in its own durable transaction."""
        return self.append_many((exchange,))[0]

    def append_many(self, exchanges: Iterable[ExchangeRecord]) -> list[LedgerEntry]:
        """Append exchanges in one durable transaction: all or none.

        Raises
        ------
        LedgerError
            If an exchange is not this writer's (sent by it or received by it),
            or the write fails; nothing of the batch is then stored.
        """
        batch = list(exchanges)
        for ex in batch:
            self._check_exchange(ex)
        if not batch:
            return []
        return self._append(lambda seq, prev: batch)

    def append_chain(self, items: Iterable[ExchangeRecord | Callable[[int, str], ExchangeRecord]]) -> list[LedgerEntry]:
        """Append records in one durable transaction, where a record may depend on the entry before it.

        An item is an :class:`ExchangeRecord`, or a callable given the head
        ``(count, entry_hash)`` the ledger has once every earlier item is
        sealed, returning the record to append there (a reply stamped with the
        head that includes the request's entry). Callables run inside the
        transaction, under the write lock: nothing else can extend the chain
        between them. All or none is stored; the same checks as
        :meth:`append_many` apply to every record.
        """
        items = list(items)

        def build(seq: int, prev: str) -> Generator[ExchangeRecord, LedgerEntry, None]:
            for item in items:
                record = item(seq, prev) if callable(item) else item
                self._check_exchange(record)
                entry = yield record
                seq, prev = entry.seq, entry.entry_hash

        if not items:
            return []
        return self._append(build)

    def _check_exchange(self, ex: object) -> None:
        if not isinstance(ex, ExchangeRecord):
            raise LedgerError(f"{self.path}: append expects ExchangeRecord, got {type(ex).__name__}")
        if ex.kind is not EntryKind.EXCHANGE:
            raise LedgerError(f"{self.path}: a {ex.kind.value} record is written by close_run, not append")
        if ex.writer != self.writer:
            side = "sender" if ex.direction.value == "sent" else "receiver"
            raise LedgerError(f"{self.path}: {ex.direction.value} message has {side} {ex.writer!r}, but this ledger's writer is {self.writer!r}")

    def close_run(self, run_id: str) -> LedgerEntry:
        """Append the signed run-close record of ``run_id``: it names the head it closes.

        The head is read inside the appending transaction, so the record's
        ``sender_count`` / ``sender_head`` are exactly its own ``seq - 1`` and
        ``prev_hash``. Written once per run, when the run ends.
        """
        check_name(run_id, "run_id")
        return self._append(lambda seq, prev: [run_close_record(run_id, self.writer, seq, prev)])[0]

    def _append(self, build: Callable[[int, str], Iterable[ExchangeRecord]]) -> list[LedgerEntry]:
        """Seal and insert ``build(head_seq, head_hash)`` in one durable transaction.

        ``build`` may return a generator: each entry sealed is sent back into
        it (``send``) before it yields the next record.
        """
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._revalidate_locked()
                    seq, prev = self._head_locked()
                    batch = build(seq, prev)
                    now = time.time_ns() // 1000
                    sealed: list[tuple[LedgerEntry, str]] = []
                    rows: list[tuple[object, ...]] = []
                    feed = getattr(batch, "send", None)
                    records = iter(batch)
                    entry = None
                    while True:
                        try:
                            ex = feed(entry) if feed is not None and entry is not None else next(records)
                        except StopIteration:
                            break
                        seq += 1
                        entry, text = seal(ex, seq, prev, self._signer, now)
                        prev = entry.entry_hash
                        sealed.append((entry, text))
                        rows.append((*(getattr(entry, f) for f in ENTRY_FIELDS), text))
                    conn.executemany(_INSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.path}: append failed ({exc})") from None
        return [e for e, _ in sealed]

    def check(self) -> None:
        """Redo the opening checks now if another connection wrote to the file since this one last looked.

        Cheap when nobody did (one pragma). Appends do the same inside their
        transaction; this lets a caller refuse work before it starts (a party
        before it handles a message whose record would be refused).
        """
        with self._lock:
            try:
                self._revalidate_locked()
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.path}: cannot check ledger ({exc})") from None

    def _read_data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _revalidate_locked(self) -> None:
        """Inside the write transaction: redo the opening checks if another connection committed since."""
        version = self._read_data_version()
        if version == self._data_version:
            return  # nobody else wrote: the file is as this connection left it (checked)
        self.meta = self._load_meta()
        self._check_identity()
        self._check_triggers()
        self._check_tail()
        self._data_version = version

    # -- reading -----------------------------------------------------------

    def _head_locked(self) -> tuple[int, str]:
        row = self._conn.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return 0, self.meta.genesis_hash
        return int(row[0]), str(row[1])

    def head(self) -> tuple[int, str]:
        """Return ``(seq, entry_hash)`` of the last committed entry (``(0, genesis)`` if empty)."""
        with self._lock:
            return self._head_locked()

    def __len__(self) -> int:
        return self.head()[0]

    def entries(self) -> list[LedgerEntry]:
        """Return all entries in ``seq`` order."""
        with self._lock:
            rows = self._conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
        return [_row_entry(r)[0] for r in rows]

    def checkpoint(self) -> None:
        """Copy committed entries from the WAL into the main file, if no reader is in the way (best effort).

        Entries are durable in the WAL already; this only keeps the main file
        complete on its own (e.g. for a copy taken of it alone) at quiet points, such as a run's end.
        """
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the file (checkpointing the WAL into it)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, writer={self.writer!r}, key_id={self.key_id!r})"


__all__ = ["APPLICATION_ID", "TRIGGERS", "Ledger", "LedgerMeta", "LedgerSnapshot", "read_ledger"]
