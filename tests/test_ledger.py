"""Audit ledger storage: append-only schema, identity binding, durability."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedrisk.audit import ContentClass, Direction, Ed25519Signer, ExchangeRecord, Ledger, read_ledger, verify_ledger
from fedrisk.audit.entry import derive_message_id, entry_hash_of, genesis_hash
from fedrisk.errors import LedgerError


def exchange(i: int = 0, *, direction: str = "sent", sender: str = "bank", receiver: str = "coordinator", **kw) -> ExchangeRecord:
    fields = dict(
        run_id="run-1",
        round=1,
        step=f"step-{i}",
        sender=sender,
        receiver=receiver,
        message_type="vlr.gradient",
        direction=direction,
        content_class="ciphertext",
        key_fingerprint="ctx-abc",
    )
    fields.update(kw)
    return ExchangeRecord.of_payload(f"payload {i}".encode(), **fields)


@pytest.fixture()
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


def test_append_and_read_back(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "ledgers" / "bank.sqlite"
    with Ledger(path, "bank", signer) as led:
        first = led.append(exchange(0))
        rest = led.append_many([exchange(i) for i in range(1, 5)])
        assert len(led) == 5
        assert led.head() == (5, rest[-1].entry_hash)
    assert first.seq == 1 and first.prev_hash == genesis_hash("bank", signer.public_key_bytes)
    assert [e.seq for e in rest] == [2, 3, 4, 5]
    assert all(b.prev_hash == a.entry_hash for a, b in zip([first, *rest], rest))
    snap = read_ledger(path)
    assert snap.entries[0] == first and snap.bodies[0] == first.body_text()
    assert entry_hash_of(first.body_text()) == first.entry_hash
    assert snap.meta["writer"] == "bank" and snap.meta["public_key"] == signer.public_key_bytes.hex()
    assert verify_ledger(path, {"bank": signer.public_key_bytes}) == []


def test_pragmas_are_durable(tmp_path: Path, signer: Ed25519Signer) -> None:
    with Ledger(tmp_path / "b.sqlite", "bank", signer) as led:
        conn = led._conn  # the ledger's own connection: synchronous is per connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_of_payload_hashes_and_derives_shared_message_id() -> None:
    sent = exchange(3, direction="sent")
    received = exchange(3, direction="received")
    assert sent.payload_sha256 == hashlib.sha256(b"payload 3").hexdigest()
    assert sent.size_bytes == len(b"payload 3")
    assert sent.message_id == received.message_id
    assert sent.message_id == derive_message_id("run-1", 1, "step-3", "bank", "coordinator", "vlr.gradient", sent.payload_sha256)
    assert sent.direction is Direction.SENT and sent.content_class is ContentClass.CIPHERTEXT
    assert sent.writer == "bank" and received.writer == "coordinator"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"receiver": "bank"}, "not a party-line crossing"),
        ({"content_class": "secret"}, "content_class 'secret' is not one of"),
        ({"direction": "sideways"}, "direction 'sideways'"),
        ({"round": -1}, "round must be a non-negative int"),
        ({"step": "a\nb"}, "control characters"),
        ({"run_id": ""}, "run_id must be a non-empty string"),
    ],
)
def test_exchange_validation(change: dict, match: str) -> None:
    with pytest.raises(LedgerError, match=match):
        exchange(0, **change)


def test_bad_sha_refused() -> None:
    good = exchange(0)
    with pytest.raises(LedgerError, match="payload_sha256"):
        ExchangeRecord(**{**good.__dict__, "payload_sha256": "ABC"})


def test_refuses_exchanges_of_another_writer(tmp_path: Path, signer: Ed25519Signer) -> None:
    with Ledger(tmp_path / "b.sqlite", "bank", signer) as led:
        with pytest.raises(LedgerError, match="this ledger's writer is 'bank'"):
            led.append_many([exchange(0), exchange(1, sender="tax_bureau")])
        assert len(led) == 0  # the whole batch was refused
        led.append(exchange(2, direction="received", sender="coordinator", receiver="bank"))
        assert len(led) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE entries SET size_bytes = 1",
        "DELETE FROM entries WHERE seq = 2",
        "DELETE FROM entries",
        "UPDATE meta SET value = 'evil' WHERE key = 'writer'",
        "DELETE FROM meta",
        "INSERT INTO meta (key, value) VALUES ('extra', '1')",
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('writer', 'evil')",
        "INSERT OR REPLACE INTO entries SELECT * FROM entries WHERE seq = 1",
    ],
)
def test_sql_update_and_delete_refused(tmp_path: Path, signer: Ed25519Signer, sql: str) -> None:
    path = tmp_path / "b.sqlite"
    with Ledger(path, "bank", signer) as led:
        led.append_many([exchange(i) for i in range(3)])
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="fedrisk ledger"):
            conn.execute(sql)
    finally:
        conn.close()
    assert verify_ledger(path) == []


def test_reopen_with_other_key_or_writer_refused(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "b.sqlite"
    with Ledger(path, "bank", signer) as led:
        led.append(exchange(0))
    with pytest.raises(LedgerError, match="refusing to sign with key"):
        Ledger(path, "bank", Ed25519Signer.generate())
    with pytest.raises(LedgerError, match="belongs to writer 'bank'"):
        Ledger(path, "tax_bureau", signer)
    with Ledger(path, "bank", signer) as led:  # the right identity still works
        assert led.append(exchange(1)).seq == 2


def test_reopen_refuses_altered_file(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "b.sqlite"
    with Ledger(path, "bank", signer) as led:
        led.append_many([exchange(i) for i in range(3)])
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET size_bytes = 999 WHERE seq = 3")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="triggers missing"):
        Ledger(path, "bank", signer)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'x'); END")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="last entry 3 fails verification"):
        Ledger(path, "bank", signer)


def test_not_a_ledger_refused(tmp_path: Path, signer: Ed25519Signer) -> None:
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="not a fedrisk ledger"):
        Ledger(other, "bank", signer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(LedgerError, match="junk.sqlite"):
        Ledger(junk, "bank", signer)


_WRITER = textwrap.dedent(
    """
    import sys
    from fedrisk.audit import Ed25519Signer, ExchangeRecord, Ledger

    path, seed, batch, start = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    led = Ledger(path, "bank", Ed25519Signer.from_private_bytes(seed))
    i = start
    while True:
        batch_ex = []
        for _ in range(batch):
            batch_ex.append(ExchangeRecord.of_payload(
                i.to_bytes(8, "big"), run_id="run-1", round=1, step=f"s{i}", sender="bank",
                receiver="coordinator", message_type="m", direction="sent",
                content_class="ciphertext", key_fingerprint="k"))
            i += 1
        last = led.append_many(batch_ex)[-1]
        print(last.seq, flush=True)
        if start and i - start >= 300:
            break
    """
)


@pytest.mark.parametrize("batch", [1, 250])
def test_sigkill_mid_stream_leaves_valid_chain(tmp_path: Path, signer: Ed25519Signer, batch: int) -> None:
    path = tmp_path / "bank.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), signer.private_bytes().hex(), str(batch), "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    committed = 0
    stop_at = 200 if batch == 1 else 1500  # one fsync per entry vs per batch
    try:
        for line in proc.stdout:
            committed = int(line)
            if committed >= stop_at:
                break
    finally:
        # SIGKILL while the child is inside its next append (no cleanup runs).
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert committed >= stop_at

    assert verify_ledger(path, {"bank": signer.public_key_bytes}) == []
    last = read_ledger(path).entries[-1].seq
    assert last >= committed  # everything reported as committed survived
    assert last % batch == 0  # no half batch: append_many is atomic

    with Ledger(path, "bank", signer) as led:
        entry = led.append(exchange(0))
    assert entry.seq == last + 1
    assert verify_ledger(path) == []


def test_two_processes_share_one_ledger(tmp_path: Path, signer: Ed25519Signer) -> None:
    # A SuperNode starts a ClientApp process per message: appends must serialise.
    path = tmp_path / "bank.sqlite"
    Ledger(path, "bank", signer).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), signer.private_bytes().hex(), "5", str(start)],
            stdout=subprocess.DEVNULL,
        )
        for start in (1, 100_000)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    snap = read_ledger(path)
    assert len(snap.entries) == 600
    assert verify_ledger(path) == []


def test_accepts_project_signing_identity(tmp_path: Path) -> None:
    signing = pytest.importorskip("fedrisk.crypto.signing")
    identity = signing.SigningIdentity.generate()
    path = tmp_path / "bank.sqlite"
    with Ledger(path, "bank", identity) as led:
        led.append(exchange(0))
        assert led.key_id == identity.key_id  # one key id across the project
    assert verify_ledger(path, {"bank": identity.public_key_bytes}) == []
