"""The application register: append-only, hash-chained, durable, reachable across the sandbox wall."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from fedrisk.errors import LedgerError
from fedrisk.scoring.register import (
    DuplicateApplication,
    LocalRegister,
    RegisterServer,
    RemoteRegister,
    SqliteRegister,
    read_register,
    verify_register,
)


def record(i: int, **kw: object) -> dict:
    base = dict(application_id=f"APP-{i}", sme_id="91440300192203821X", received_at="2026-12-01T00:00:00.000Z", purpose="application",
                outcome="approve", probability_of_default=0.02, score=610, risk_band="A", credit_limit=100_000, currency="CNY",
                degraded=False, reasons=[["bank", "past_delinquencies"]], parties={"tax_bureau": "COVERED"},
                applicant_declared_revenue=1e6, applicant_requested_amount=None, model_version="run+abc", policy_version="p@1",
                latency_ms=1.5)  # fmt: skip
    base.update(kw)
    return base


def test_append_only_and_chained(tmp_path):
    path = tmp_path / "applications.sqlite"
    reg = SqliteRegister(path)
    assert reg.append([record(1), record(2), record(1)]) == [True, True, False]
    reg.close()
    assert verify_register(path) == []
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE applications SET outcome='decline' WHERE seq=1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM applications")
    # an edit behind SQLite's back (triggers dropped) is caught by the chain
    db.execute("DROP TRIGGER applications_no_update")
    db.execute("UPDATE applications SET credit_limit=999999 WHERE seq=1")
    db.commit()
    db.close()
    findings = verify_register(path)
    assert findings and "does not match its hash" in findings[0]
    assert (path.stat().st_mode & 0o777) == 0o600


def test_reopening_continues_the_chain(tmp_path):
    path = tmp_path / "r.sqlite"
    SqliteRegister(path).append([record(1)])
    SqliteRegister(path).append([record(2)])
    assert [r["application_id"] for r in read_register(path)] == ["APP-1", "APP-2"]
    assert verify_register(path) == []


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE applications (seq INTEGER PRIMARY KEY, x TEXT)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not an application register"):
        SqliteRegister(path)


def test_group_commit_locally_and_through_the_launcher(tmp_path):
    async def scenario() -> tuple[int, int]:
        local = LocalRegister(tmp_path / "local.sqlite")
        await asyncio.gather(*(local.record(record(i)) for i in range(50)))
        with pytest.raises(DuplicateApplication):
            await local.record(record(3))
        await local.close()
        server = RegisterServer(tmp_path / "remote.sqlite", tmp_path / "register.sock")
        await server.start()
        remote = RemoteRegister(tmp_path / "register.sock")
        await asyncio.gather(*(remote.record(record(i)) for i in range(40)))
        with pytest.raises(DuplicateApplication):
            await remote.record(record(5))
        await remote.close()
        await server.close()
        return len(read_register(tmp_path / "local.sqlite")), len(read_register(tmp_path / "remote.sqlite"))

    assert asyncio.run(scenario()) == (50, 40)
    assert verify_register(tmp_path / "remote.sqlite") == []


def test_remote_register_reports_a_missing_launcher(tmp_path):
    async def scenario() -> None:
        remote = RemoteRegister(tmp_path / "nobody.sock")
        await remote.record(record(1))

    with pytest.raises(LedgerError, match="application register"):
        asyncio.run(scenario())


def test_duplicates_inside_a_batch_and_against_the_file_keep_the_chain(tmp_path):
    """A batch is inserted optimistically; a duplicate ID (recorded before, or twice in the batch) redoes it with a look-up."""
    reg = SqliteRegister(tmp_path / "r.sqlite")
    assert reg.append([record(1), record(2)]) == [True, True]
    assert reg.append([record(2), record(3), record(3, score=1), record(4)]) == [False, True, False, True]
    assert reg.append([record(5)]) == [True]
    reg.close()
    rows = read_register(tmp_path / "r.sqlite")
    assert [r["application_id"] for r in rows] == ["APP-1", "APP-2", "APP-3", "APP-4", "APP-5"]
    assert rows[2]["score"] == 610  # the first APP-3 of the batch, not the duplicate
    assert verify_register(tmp_path / "r.sqlite") == []


def test_rows_in_column_order_record_like_mappings(tmp_path):
    """The node sends rows (column order, reasons and parties as canonical JSON); the file holds the same as for a mapping."""
    from fedrisk.scoring.register import as_row

    reg = SqliteRegister(tmp_path / "r.sqlite")
    assert reg.append([record(1), as_row(record(2))]) == [True, True]
    reg.close()
    a, b = read_register(tmp_path / "r.sqlite")
    assert {k: v for k, v in a.items() if k not in ("seq", "application_id", "prev_hash", "row_hash")} == {
        k: v for k, v in b.items() if k not in ("seq", "application_id", "prev_hash", "row_hash")
    }
    with pytest.raises(LedgerError, match="18 columns"):
        as_row(as_row(record(3))[:-1])


def test_the_launcher_counts_its_group_commits(tmp_path):
    async def scenario() -> dict:
        server = RegisterServer(tmp_path / "remote.sqlite", tmp_path / "register.sock")
        await server.start()
        remote = RemoteRegister(tmp_path / "register.sock")
        await asyncio.gather(*(remote.record(record(i)) for i in range(30)))
        await remote.record(record(99))
        await remote.close()
        stats = server.stats()
        await server.close()
        return stats

    stats = asyncio.run(scenario())
    assert stats["records"] == 31
    assert 2 <= stats["commits"] <= 31  # concurrent records share commits; the last one came alone
    assert stats["mean_batch"] == round(31 / stats["commits"], 2)
    assert stats["commit_p99_ms"] >= stats["commit_p50_ms"] > 0
