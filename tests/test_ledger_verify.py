"""Audit ledger verification: every kind of tampering is detected and named."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedrisk.audit import Ed25519Signer, ExchangeRecord, Finding, Ledger, cross_check, read_ledger, verify_ledger, verify_run
from fedrisk.audit.entry import BODY_FIELDS, seal
from fedrisk.audit.store import TRIGGERS

NODES = ("coordinator", "bank", "tax_bureau")
# (round, step, sender, receiver, content class): a small vertical round.
MESSAGES = [
    (0, "psi.blind", "bank", "coordinator", "public"),
    (0, "psi.blind", "coordinator", "tax_bureau", "public"),
    (0, "psi.reblind", "tax_bureau", "coordinator", "public"),
    (0, "psi.reblind", "coordinator", "bank", "public"),
    (1, "vlr.residual", "bank", "coordinator", "ciphertext"),
    (1, "vlr.residual", "coordinator", "tax_bureau", "ciphertext"),
    (1, "vlr.gradient", "tax_bureau", "coordinator", "masked"),
    (1, "vlr.gradient", "coordinator", "bank", "masked"),
    (1, "vlr.unmasked", "bank", "coordinator", "masked"),
    (1, "vlr.unmasked", "coordinator", "tax_bureau", "masked"),
    (2, "vlr.residual", "bank", "coordinator", "ciphertext"),
    (2, "vlr.residual", "coordinator", "tax_bureau", "ciphertext"),
    (2, "vlr.model", "coordinator", "bank", "aggregate"),
]


@dataclass
class Run:
    dir: Path
    signers: dict[str, Ed25519Signer]
    paths: dict[str, Path]

    @property
    def trusted(self) -> dict[str, bytes]:
        return {n: s.public_key_bytes for n, s in self.signers.items()}

    def all_paths(self) -> list[Path]:
        return [self.paths[n] for n in NODES]


def message(i: int, direction: str, *, run_id: str = "run-7", payload: bytes | None = None, cls: str | None = None) -> ExchangeRecord:
    rnd, step, sender, receiver, content = MESSAGES[i]
    return ExchangeRecord.of_payload(
        payload if payload is not None else f"msg-{i}".encode() * (i + 1),
        run_id=run_id,
        round=rnd,
        step=step,
        sender=sender,
        receiver=receiver,
        message_type=step.split(".")[0],
        direction=direction,
        content_class=cls or content,
        key_fingerprint="" if content == "public" else "ctx-1f2e",
    )


def record(run: Run, ex_sent: ExchangeRecord, ex_received: ExchangeRecord) -> None:
    with Ledger(run.paths[ex_sent.sender], ex_sent.sender, run.signers[ex_sent.sender]) as led:
        led.append(ex_sent)
    with Ledger(run.paths[ex_received.receiver], ex_received.receiver, run.signers[ex_received.receiver]) as led:
        led.append(ex_received)


@pytest.fixture()
def run(tmp_path: Path) -> Run:
    signers = {n: Ed25519Signer.generate() for n in NODES}
    paths = {n: tmp_path / "ledgers" / f"{n}.sqlite" for n in NODES}
    ledgers = {n: Ledger(paths[n], n, signers[n]) for n in NODES}
    for i in range(len(MESSAGES)):
        sent, received = message(i, "sent"), message(i, "received")
        ledgers[sent.sender].append(sent)
        ledgers[received.receiver].append(received)
    for led in ledgers.values():
        led.close()
    return Run(tmp_path, signers, paths)


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection with the append-only triggers dropped (an attacker can)."""
    conn = sqlite3.connect(path)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def fields_of(findings: list[Finding], file: Path | None = None) -> set[tuple[int | None, str]]:
    return {(f.seq, f.field) for f in findings if file is None or f.file == str(file)}


def flip(value: object, column: str) -> object:
    """Flip one bit of one byte of a stored value."""
    if isinstance(value, int):
        # seq is the primary key: flip a bit of its second byte so it stays unique.
        return value ^ (0x100 if column == "seq" else 0x01)
    text = str(value)
    if not text:
        return "0"  # an empty value (no ledger head) gains a character
    mid = len(text) // 2
    return text[:mid] + chr(ord(text[mid]) ^ 0x01) + text[mid + 1 :]


def without_schema(findings: list[Finding]) -> list[Finding]:
    # Tamper helpers drop the triggers, which is itself (rightly) reported.
    return [f for f in findings if f.field != "schema"]


# -- untouched ----------------------------------------------------------------------


def test_untouched_run_verifies_clean(run: Run) -> None:
    for n in NODES:
        assert verify_ledger(run.paths[n], run.trusted) == []
        assert verify_ledger(run.paths[n]) == []
    assert cross_check(run.all_paths()) == []
    assert verify_run(run.all_paths(), run.trusted) == []
    assert len(read_ledger(run.paths["coordinator"]).entries) == len(MESSAGES)


def test_finding_str_names_file_entry_field() -> None:
    f = Finding("ledgers/bank.sqlite", 17, "payload_sha256", "hash mismatch with tax_bureau.sqlite entry 9")
    assert str(f) == "ledgers/bank.sqlite entry 17 field payload_sha256: hash mismatch with tax_bureau.sqlite entry 9"
    assert str(Finding("x.sqlite", None, "schema", "m")) == "x.sqlite field schema: m"


# -- single-field tampering -----------------------------------------------------------

COLUMNS = (*BODY_FIELDS, "entry_hash", "signature", "body")


@pytest.mark.parametrize("column", COLUMNS)
def test_flipping_any_field_is_named(run: Run, column: str) -> None:
    path = run.paths["bank"]
    target = 3
    with attacker(path) as conn:
        (value,) = conn.execute(f"SELECT {column} FROM entries WHERE seq = ?", (target,)).fetchone()
        conn.execute(f"UPDATE entries SET {column} = ? WHERE seq = ?", (flip(value, column), target))
    findings = verify_ledger(path, run.trusted)
    assert any(f.field == "schema" for f in findings)
    named = fields_of(without_schema(findings))
    stored_seq = flip(target, "seq") if column == "seq" else target
    assert (stored_seq, column) in named, findings
    # Nothing else in the ledger is blamed.
    assert {s for s, _ in named} <= {target, stored_seq}, findings
    for f in findings:
        assert str(f).startswith(f"{path} ")


@pytest.mark.parametrize("column", ["payload_sha256", "size_bytes", "content_class", "key_fingerprint"])
def test_cross_check_names_other_side_of_a_tampered_field(run: Run, column: str) -> None:
    # bank entry 5 is its sent copy of message 4 (vlr.residual, round 1).
    bank, coord = run.paths["bank"], run.paths["coordinator"]
    with attacker(bank) as conn:
        (seq, value) = conn.execute(f"SELECT seq, {column} FROM entries WHERE step = 'vlr.residual' AND round = 1").fetchone()
        conn.execute(f"UPDATE entries SET {column} = ? WHERE seq = ?", (flip(value, column), seq))
    (coord_seq,) = [e.seq for e in read_ledger(coord).entries if e.step == "vlr.residual" and e.round == 1 and e.sender == "bank"]
    findings = cross_check(run.all_paths())
    mine = [f for f in findings if f.file == str(bank) and f.seq == seq and f.field == column]
    theirs = [f for f in findings if f.file == str(coord) and f.seq == coord_seq and f.field == column]
    assert mine and theirs, findings
    assert f"with coordinator.sqlite entry {coord_seq}" in mine[0].message
    if column == "payload_sha256":
        assert str(mine[0]).startswith(f"{bank} entry {seq} field payload_sha256: hash mismatch with coordinator.sqlite entry {coord_seq}")


def test_file_level_byte_flip_is_named(run: Run) -> None:
    path = run.paths["tax_bureau"]
    entry = read_ledger(path).entries[4]
    conn = sqlite3.connect(path)  # move every page into the main file first
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    needle = entry.payload_sha256.encode()
    first = data.find(needle)  # the column precedes the stored body in the record
    assert first >= 0 and data.find(needle, first + 1) > first
    data[first + 10] ^= 0x01  # stays a hex digit
    path.write_bytes(bytes(data))
    findings = verify_ledger(path, run.trusted)
    assert fields_of(findings) == {(entry.seq, "payload_sha256")}, findings
    assert "stored" in findings[0].message and "signed" in findings[0].message
    # The other side now disagrees too.
    assert any(f.field == "payload_sha256" and f.file == str(path) for f in cross_check(run.all_paths()))


def test_unreadable_file_is_a_finding(run: Run) -> None:
    path = run.paths["bank"]
    data = bytearray(path.read_bytes())
    data[:16] = b"not sqlite here!"
    path.write_bytes(bytes(data))
    (finding,) = verify_ledger(path)
    assert finding.file == str(path) and finding.seq is None and finding.field == "file"
    missing = run.dir / "nope.sqlite"
    assert [f.field for f in verify_ledger(missing)] == ["file"]


# -- deletion, reordering, dropped messages -----------------------------------------------


def test_deleted_entry_is_named(run: Run) -> None:
    path = run.paths["coordinator"]
    with attacker(path) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 7")
    findings = without_schema(verify_ledger(path, run.trusted))
    assert fields_of(findings) == {(7, "seq")}, findings
    assert "entry 7 missing" in findings[0].message
    # The peer's entry for that message now has no counterpart.
    assert any(f.field == "message_id" for f in cross_check(run.all_paths()))


def test_reordered_entries_are_named(run: Run) -> None:
    path = run.paths["coordinator"]
    cols = [c for c in COLUMNS if c != "seq"]
    with attacker(path) as conn:
        rows = {s: conn.execute(f"SELECT {', '.join(cols)} FROM entries WHERE seq = ?", (s,)).fetchone() for s in (4, 5)}
        for seq, other in ((4, 5), (5, 4)):
            conn.execute(f"UPDATE entries SET {', '.join(f'{c} = ?' for c in cols)} WHERE seq = ?", (*rows[other], seq))
    findings = without_schema(verify_ledger(path, run.trusted))
    named = fields_of(findings)
    assert named == {(4, "seq"), (5, "seq")}, findings
    assert all("reordered" in f.message for f in findings)


def test_duplicated_entry_is_named(run: Run) -> None:
    path = run.paths["coordinator"]
    with attacker(path) as conn:
        conn.execute("INSERT INTO entries SELECT seq + 1000, " + ", ".join(COLUMNS[1:]) + " FROM entries WHERE seq = 2")
    findings = without_schema(verify_ledger(path, run.trusted))
    assert (1002, "seq") in fields_of(findings), findings
    assert any("repeats entry 2" in f.message for f in findings)


def test_dropped_message_on_one_side_is_named(run: Run) -> None:
    # Tail truncation leaves a valid chain: only the peer's ledger can tell.
    path = run.paths["bank"]
    last = read_ledger(path).entries[-1]
    assert last.direction == "received"
    with attacker(path) as conn:
        conn.execute("DELETE FROM entries WHERE seq = ?", (last.seq,))
    assert without_schema(verify_ledger(path, run.trusted)) == []
    findings = cross_check(run.all_paths())
    coord = run.paths["coordinator"]
    (sent_seq,) = [e.seq for e in read_ledger(coord).entries if e.message_id == last.message_id]
    assert fields_of(findings) == {(sent_seq, "message_id")}, findings
    assert findings[0].file == str(coord)
    assert "sent to 'bank' but bank.sqlite has no matching received entry" in findings[0].message


def test_message_recorded_only_as_received_is_named(run: Run) -> None:
    ex = message(0, "received", payload=b"never sent")
    with Ledger(run.paths["coordinator"], "coordinator", run.signers["coordinator"]) as led:
        entry = led.append(ex)
    assert verify_ledger(run.paths["coordinator"], run.trusted) == []
    findings = cross_check(run.all_paths())
    assert fields_of(findings) == {(entry.seq, "message_id")}
    assert "received from 'bank' but bank.sqlite has no matching sent entry" in findings[0].message


def test_honest_hash_mismatch_between_sides(run: Run) -> None:
    # Both sides sign what they saw; the payloads differ in transit.
    sent = message(4, "sent", payload=b"A" * 64)
    received = ExchangeRecord(**{**message(4, "received", payload=b"B" * 64).__dict__, "message_id": sent.message_id})
    record(run, sent, received)
    assert verify_run(run.all_paths(), run.trusted) != []
    findings = cross_check(run.all_paths())
    assert {f.field for f in findings} == {"payload_sha256"}
    assert {f.file for f in findings} == {str(run.paths["bank"]), str(run.paths["coordinator"])}


# -- forgery and keys ------------------------------------------------------------------------


def test_forged_entry_signed_with_other_key_is_rejected(run: Run) -> None:
    path = run.paths["bank"]
    snap = read_ledger(path)
    last = snap.entries[-1]
    forged, body = seal(message(4, "sent", payload=b"forged"), last.seq + 1, last.entry_hash, Ed25519Signer.generate())
    # The insert trigger accepts it (right seq, right prev_hash): only the signature betrays it.
    conn = sqlite3.connect(path)
    conn.execute(
        f"INSERT INTO entries VALUES ({', '.join('?' * (len(COLUMNS)))})",
        (*(getattr(forged, c) for c in COLUMNS[:-1]), body),
    )
    conn.commit()
    conn.close()
    for keys in (run.trusted, None):
        findings = verify_ledger(path, keys)
        assert fields_of(findings) == {(forged.seq, "signature")}, findings
        assert "does not verify under bank's key" in findings[0].message


def test_forged_ledger_under_other_key_needs_trusted_keys(run: Run, tmp_path: Path) -> None:
    impostor = Ed25519Signer.generate()
    fake = tmp_path / "fake" / "bank.sqlite"
    with Ledger(fake, "bank", impostor) as led:
        led.append(message(0, "sent"))
        led.append(message(3, "received"))
    assert verify_ledger(fake) == []  # self-consistent ...
    findings = verify_ledger(fake, run.trusted)  # ... but not under the bank's real key
    assert (None, "meta.public_key") in fields_of(findings)
    assert {(1, "signature"), (2, "signature")} <= fields_of(findings)
    assert fields_of(verify_ledger(fake, {"coordinator": run.trusted["coordinator"]})) == {(None, "meta.writer")}


def test_trusted_key_as_hex_is_accepted(run: Run) -> None:
    keys = {n: k.hex() for n, k in run.trusted.items()}
    assert verify_run(run.all_paths(), keys) == []


# -- protocol violations ------------------------------------------------------------------------


def test_plaintext_crossing_is_a_violation(run: Run) -> None:
    sent = message(6, "sent", payload=b"raw tax rows", cls="plaintext")
    received = message(6, "received", payload=b"raw tax rows", cls="plaintext")
    record(run, sent, received)
    for n in NODES:
        assert verify_ledger(run.paths[n], run.trusted) == []  # validly signed ...
    findings = cross_check(run.all_paths())  # ... but a violation
    assert {f.field for f in findings} == {"content_class"}
    assert {f.file for f in findings} == {str(run.paths["tax_bureau"]), str(run.paths["coordinator"])}
    assert all("plaintext crossed the party line tax_bureau -> coordinator (violation)" in f.message for f in findings)


def test_ciphertext_without_key_fingerprint_is_flagged(run: Run) -> None:
    ex = {**message(4, "sent", payload=b"c").__dict__, "key_fingerprint": ""}
    record(run, ExchangeRecord(**ex), ExchangeRecord(**{**ex, "direction": "received"}))
    findings = cross_check(run.all_paths())
    assert {f.field for f in findings} == {"key_fingerprint"} and len(findings) == 2


def test_other_run_ids_are_flagged(run: Run) -> None:
    record(run, message(2, "sent", run_id="run-8"), message(2, "received", run_id="run-8"))
    findings = cross_check(run.all_paths())
    assert {f.field for f in findings} == {"run_id"} and len(findings) == 2
    assert all("run 'run-8' differs from run 'run-7'" in f.message for f in findings)


def test_naming_a_run_checks_only_that_run(run: Run) -> None:
    # A node's ledger spans every run it served; checking run-7 ignores run-8's entries...
    record(run, message(2, "sent", run_id="run-8"), message(2, "received", run_id="run-8"))
    assert cross_check(run.all_paths(), run_id="run-7") == []
    # ...but a gap inside the named run is still found.
    sent = message(3, "sent", run_id="run-8")
    with Ledger(run.paths[sent.sender], sent.sender, run.signers[sent.sender]) as led:
        led.append(sent)
    assert {f.field for f in cross_check(run.all_paths(), run_id="run-8")} == {"message_id"}


def test_missing_peer_ledger_is_reported_once(run: Run) -> None:
    findings = cross_check([run.paths["bank"], run.paths["coordinator"]])
    assert {(Path(f.file).name, f.field) for f in findings} == {("coordinator.sqlite", "peer")}
    assert "no ledger of 'tax_bureau'" in findings[0].message


def test_duplicate_writer_is_flagged(run: Run) -> None:
    findings = cross_check([*run.all_paths(), run.paths["bank"]])
    assert [f.field for f in findings] == ["meta.writer"]
