"""The application register: an append-only, hash-chained SQLite file of decisions.

Every decided application (not estimates) is recorded durably before its
decision is returned: who (SME ID), when, the outcome, PD, score, band, limit,
the reason codes, each party's state, the model and policy versions, and what
the applicant declared (revenue, requested amount). **No feature values** are
stored — neither the bank's nor, a fortiori, any other party's (the node never
sees those); reasons are feature *names*.

Append-only is enforced three ways: SQLite triggers abort any UPDATE or DELETE;
each row carries ``row_hash = SHA-256(prev_hash ‖ canonical JSON of the row)``,
so an edit made behind SQLite's back breaks :func:`verify_register`; and, when
the node runs in the sandbox, it cannot open the file at all — it sends records
over a Unix socket to its launcher (:class:`RegisterServer`), which appends them.

Writes are group-committed by one writer thread: records arriving while a
commit is in progress are written together in the next transaction (``synchronous=FULL`` in WAL
mode: durable at commit), so durability costs one fsync per batch, not per
decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from fedrisk.errors import FedriskError, LedgerError

__all__ = [
    "DuplicateApplication",
    "LocalRegister",
    "Register",
    "RegisterServer",
    "RemoteRegister",
    "SqliteRegister",
    "read_register",
    "verify_register",
]

_GENESIS = "0" * 64
_COLUMNS = (
    "application_id", "sme_id", "received_at", "purpose", "outcome", "probability_of_default",
    "score", "risk_band", "credit_limit", "currency", "degraded", "reasons", "parties",
    "applicant_declared_revenue", "applicant_requested_amount", "model_version", "policy_version", "latency_ms",
)  # fmt: skip
_SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (
    seq INTEGER PRIMARY KEY,
    application_id TEXT NOT NULL UNIQUE,
    sme_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    purpose TEXT NOT NULL,
    outcome TEXT NOT NULL,
    probability_of_default REAL NOT NULL,
    score INTEGER NOT NULL,
    risk_band TEXT NOT NULL,
    credit_limit INTEGER NOT NULL,
    currency TEXT NOT NULL,
    degraded INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    parties TEXT NOT NULL,
    applicant_declared_revenue REAL,
    applicant_requested_amount REAL,
    model_version TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS applications_no_update BEFORE UPDATE ON applications
BEGIN SELECT RAISE(ABORT, 'the application register is append-only'); END;
CREATE TRIGGER IF NOT EXISTS applications_no_delete BEFORE DELETE ON applications
BEGIN SELECT RAISE(ABORT, 'the application register is append-only'); END;
"""
_MAX_FRAME = 8 * 1024 * 1024
_INSERT = f"INSERT INTO applications ({', '.join(_COLUMNS)}, prev_hash, row_hash) VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})"
_REASONS, _PARTIES, _DEGRADED, _APP_ID = (_COLUMNS.index(c) for c in ("reasons", "parties", "degraded", "application_id"))


class DuplicateApplication(FedriskError):
    """An application with this ID was already recorded."""


def _row_hash(prev: str, row: Sequence[Any]) -> str:
    """SHA-256 of the previous row's hash and this row's canonical JSON (column order)."""
    body = json.dumps(list(row), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(prev.encode() + body.encode()).hexdigest()


_OPTIONAL = ("applicant_declared_revenue", "applicant_requested_amount")


def as_row(record: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
    """A record as the list of its column values (reasons/parties as JSON text, degraded as 0/1)."""
    if isinstance(record, Mapping):
        row = [record.get(k) for k in _COLUMNS]
    else:
        row = list(record)
        if len(row) != len(_COLUMNS):
            raise LedgerError(f"application record has {len(row)} values for {len(_COLUMNS)} columns")
    for k, value in zip(_COLUMNS, row):
        if value is None and k not in _OPTIONAL:
            raise LedgerError(f"application record lacks {k!r}")
    for j in (_REASONS, _PARTIES):
        if not isinstance(row[j], str):
            row[j] = json.dumps(row[j], sort_keys=True, separators=(",", ":"))
    row[_DEGRADED] = int(bool(row[_DEGRADED]))
    return row


def _app_id(record: Mapping[str, Any] | Sequence[Any]) -> Any:
    return record.get("application_id") if isinstance(record, Mapping) else record[_APP_ID]


class SqliteRegister:
    """The register file itself; use from one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the application register {self.path}: {exc}") from None
        try:
            self.path.chmod(0o600)
        except OSError:
            pass
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(applications)")]
        if columns != ["seq", *_COLUMNS, "prev_hash", "row_hash"]:
            self._db.close()
            raise LedgerError(f"{self.path} is not an application register of this fedrisk version (its columns differ)")
        row = self._db.execute("SELECT row_hash FROM applications ORDER BY seq DESC LIMIT 1").fetchone()
        self._last = row[0] if row else _GENESIS

    def append(self, records: Sequence[Mapping[str, Any] | Sequence[Any]]) -> list[bool]:
        """Append records in one transaction; ``False`` where the application ID was already recorded.

        The batch is inserted optimistically (application IDs are unique in the
        table, so a duplicate aborts the transaction); only then is it redone
        with a look-up of the IDs already recorded — one query less per commit
        in the usual case.
        """
        rows = [as_row(r) for r in records]
        try:
            return self._append(rows, lookup=False)
        except sqlite3.IntegrityError:
            pass
        except (sqlite3.Error, ValueError) as exc:
            raise LedgerError(f"application register {self.path}: write failed: {exc}") from None
        try:
            return self._append(rows, lookup=True)
        except (sqlite3.Error, ValueError) as exc:
            raise LedgerError(f"application register {self.path}: write failed: {exc}") from None

    def _append(self, rows: list[list[Any]], *, lookup: bool) -> list[bool]:
        ids = [row[_APP_ID] for row in rows]
        last = self._last
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seen = (
                {r[0] for r in self._db.execute(f"SELECT application_id FROM applications WHERE application_id IN ({', '.join('?' * len(ids))})", ids)}
                if ids and lookup
                else set()
            )
            results: list[bool] = []
            values = []
            for row, app_id in zip(rows, ids):
                if app_id in seen:
                    results.append(False)
                    continue
                seen.add(app_id)
                digest = _row_hash(last, row)
                values.append([*row, last, digest])
                last = digest
                results.append(True)
            self._db.executemany(_INSERT, values)
            self._db.execute("COMMIT")
        except BaseException:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._last = last
        return results

    def close(self) -> None:
        self._db.close()


def read_register(path: str | Path) -> list[dict[str, Any]]:
    """Every recorded application, oldest first (reasons and parties decoded)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM applications ORDER BY seq")]
    finally:
        db.close()
    for row in rows:
        row["reasons"] = json.loads(row["reasons"])
        row["parties"] = json.loads(row["parties"])
    return rows


def verify_register(path: str | Path) -> list[str]:
    """Re-walk the hash chain; returns findings (empty when intact)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    findings: list[str] = []
    prev = _GENESIS
    try:
        for row in db.execute("SELECT * FROM applications ORDER BY seq"):
            record = dict(row)
            if record["prev_hash"] != prev:
                findings.append(f"row {record['seq']}: prev_hash does not continue the chain")
            if _row_hash(record["prev_hash"], [record[k] for k in _COLUMNS]) != record["row_hash"]:
                findings.append(f"row {record['seq']} ({record['application_id']}): content does not match its hash")
            prev = record["row_hash"]
    finally:
        db.close()
    return findings


class Register(Protocol):
    """What the scoring node records through (a record: a mapping by column, or a row in column order)."""

    async def record(self, record: Mapping[str, Any] | Sequence[Any]) -> None: ...

    async def close(self) -> None: ...


class _GroupCommitter:
    """Collect records and hand whole batches to ``flush`` (a coroutine), one batch at a time."""

    def __init__(self, flush: Any) -> None:
        self._flush = flush
        self._pending: list[tuple[Mapping[str, Any] | Sequence[Any], asyncio.Future[None]]] = []
        self._busy = False

    async def record(self, record: Mapping[str, Any] | Sequence[Any]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._flush([r for r, _ in batch])
                    if len(results) != len(batch):
                        raise LedgerError(f"the register answered {len(results)} results for {len(batch)} records")
                    for (record, fut), ok in zip(batch, results):
                        if fut.done():
                            continue
                        if ok:
                            fut.set_result(None)
                        else:
                            fut.set_exception(DuplicateApplication(f"application {_app_id(record)!r} was already recorded"))
                except Exception as exc:  # every waiter learns why; none is left hanging
                    error = exc if isinstance(exc, FedriskError) else LedgerError(f"application register: {exc}")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
        finally:
            self._busy = False


class LocalRegister:
    """Group-committing register writing the SQLite file from one writer thread.

    A durable commit waits for an fsync (milliseconds of I/O); that wait happens
    in the writer thread, with the GIL released, while the event loop keeps
    deciding. The JSON of each record is prepared in the loop, so the thread
    holds the GIL only for a few microseconds per record.
    """

    def __init__(self, path: str | Path) -> None:
        self._sqlite = SqliteRegister(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="register")
        self._committer = _GroupCommitter(self._flush)
        self.path = self._sqlite.path

    async def _flush(self, records: list[Mapping[str, Any] | Sequence[Any]]) -> list[bool]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._sqlite.append, records)

    async def record(self, record: Mapping[str, Any] | Sequence[Any]) -> None:
        """Append one record durably (raises :class:`DuplicateApplication`)."""
        await self._committer.record(as_row(record))

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._sqlite.close()


# ------------------------------------------------------ across the sandbox wall


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        header = await reader.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (size,) = struct.unpack(">I", header)
    if size > _MAX_FRAME:
        raise LedgerError(f"register frame of {size} bytes exceeds {_MAX_FRAME}")
    return json.loads(await reader.readexactly(size))


def _frame(obj: Mapping[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


class RemoteRegister:
    """The sandboxed node's side: send batches to the launcher's :class:`RegisterServer`."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = str(socket_path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._next = 0
        self._committer = _GroupCommitter(self._flush)

    async def _flush(self, records: list[Mapping[str, Any] | Sequence[Any]]) -> list[bool]:
        async with self._lock:
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
                self._next += 1
                self._writer.write(_frame({"id": self._next, "records": [as_row(r) for r in records]}))
                await self._writer.drain()
                assert self._reader is not None
                reply = await _read_frame(self._reader)
            except OSError as exc:
                self._writer = None
                raise LedgerError(f"the application register (launcher) is not reachable: {exc.strerror or exc}") from None
        if reply is None:
            self._writer = None
            raise LedgerError("the application register (launcher) closed the connection")
        if reply.get("error"):
            raise LedgerError(str(reply["error"]))
        return [bool(v) for v in reply["results"]]

    async def record(self, record: Mapping[str, Any] | Sequence[Any]) -> None:
        await self._committer.record(record)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class RegisterServer:
    """The launcher's side: append what the sandboxed node sends.

    Served by one plain thread with blocking I/O — receive a frame, commit it
    (the fsync releases the GIL), reply — so that the launcher's event loop,
    which forwards every byte of every decision, never waits on the disk and
    no per-frame hand-off between loop and thread is paid.
    """

    def __init__(self, register_path: str | Path, socket_path: str | Path) -> None:
        self._sqlite = SqliteRegister(register_path)
        self.socket_path = str(socket_path)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.commits = 0
        self.records = 0
        self._commit_ms: deque[float] = deque(maxlen=20_000)

    def stats(self) -> dict[str, float]:
        """Group commits so far: how many, records per commit, and how long a commit took (ms)."""
        lat = sorted(self._commit_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else 0.0

        return {
            "commits": self.commits,
            "records": self.records,
            "mean_batch": round(self.records / self.commits, 2) if self.commits else 0.0,
            "commit_p50_ms": pct(0.5),
            "commit_p99_ms": pct(0.99),
        }

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        sock.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        sock.listen(4)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="register", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self._serve_connection(conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        while True:
            header = reader.read(4)
            if len(header) < 4:
                return
            (size,) = struct.unpack(">I", header)
            if size > _MAX_FRAME:
                conn.sendall(_frame({"id": None, "error": f"register frame of {size} bytes exceeds {_MAX_FRAME}"}))
                return
            body = reader.read(size)
            try:
                frame = json.loads(body)
                records = frame["records"]
                if not isinstance(records, list):
                    raise LedgerError("register frame without a list of records")
                t0 = time.perf_counter()
                results = self._sqlite.append(records)
                self._commit_ms.append((time.perf_counter() - t0) * 1000.0)
                self.commits += 1
                self.records += len(records)
                reply = {"id": frame.get("id"), "results": results}
            except (LedgerError, KeyError, TypeError, ValueError) as exc:
                reply = {"id": None, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
            try:
                conn.sendall(_frame(reply))
            except OSError:
                return

    async def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
        self._sqlite.close()
