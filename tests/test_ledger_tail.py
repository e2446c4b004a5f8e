"""Ledger heads and run-close records: a tail cut at one end, at both ends, or a rewritten ledger is named."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedrisk.audit import Ed25519Signer, ExchangeRecord, Ledger, read_ledger, verify_ledger, verify_run
from fedrisk.audit.entry import RUN_CLOSE_RECEIVER, run_close_record
from fedrisk.errors import LedgerError
from ledger_tamper import cut_tail

NODES = ("coordinator", "bank", "tax_bureau")
# (round, step, sender, receiver, content class)
MESSAGES = [
    (0, "psi.blind", "coordinator", "bank", "public"),
    (0, "psi.blind", "bank", "coordinator", "public"),
    (0, "psi.blind", "coordinator", "tax_bureau", "public"),
    (0, "psi.blind", "tax_bureau", "coordinator", "public"),
    (1, "vlr.residual", "coordinator", "bank", "ciphertext"),
    (1, "vlr.residual", "bank", "coordinator", "ciphertext"),
    (1, "vlr.gradient", "coordinator", "tax_bureau", "ciphertext"),
    (1, "vlr.gradient", "tax_bureau", "coordinator", "masked"),
    (2, "vlr.model", "coordinator", "bank", "aggregate"),
    (2, "vlr.model", "bank", "coordinator", "public"),
]


@dataclass
class Run:
    paths: dict[str, Path]
    signers: dict[str, Ed25519Signer]

    @property
    def trusted(self) -> dict[str, bytes]:
        return {n: s.public_key_bytes for n, s in self.signers.items()}

    def all(self) -> list[Path]:
        return [self.paths[n] for n in NODES]


def send(run: Run, i: int, *, run_id: str = "run-7", payload: bytes | None = None) -> None:
    """One message as the recorder writes it: stamped with the sender's head, recorded at both ends."""
    rnd, step, sender, receiver, cls = MESSAGES[i % len(MESSAGES)]
    with Ledger(run.paths[sender], sender, run.signers[sender]) as led:
        count, head = led.head()
        fields = dict(
            run_id=run_id,
            round=rnd,
            step=step,
            sender=sender,
            receiver=receiver,
            message_type=step,
            content_class=cls,
            key_fingerprint="" if cls == "public" else "ctx-1",
            sender_count=count,
            sender_head=head,
        )
        body = payload if payload is not None else f"{run_id}-{i}".encode()
        led.append(ExchangeRecord.of_payload(body, direction="sent", **fields))
    with Ledger(run.paths[receiver], receiver, run.signers[receiver]) as led:
        led.append(ExchangeRecord.of_payload(body, direction="received", **fields))


def close(run: Run, run_id: str = "run-7", nodes=NODES) -> None:
    for n in nodes:
        with Ledger(run.paths[n], n, run.signers[n]) as led:
            led.close_run(run_id)


@pytest.fixture()
def run(tmp_path: Path) -> Run:
    r = Run({n: tmp_path / n / "ledger.sqlite" for n in NODES}, {n: Ed25519Signer.generate() for n in NODES})
    for i in range(len(MESSAGES)):
        send(r, i)
    close(r)
    return r


def seq_of(path: Path, step: str, direction: str, rnd: int) -> int:
    (seq,) = [e.seq for e in read_ledger(path).entries if e.step == step and e.direction == direction and e.round == rnd]
    return seq


def test_an_attested_closed_run_verifies_clean(run: Run) -> None:
    assert verify_run(run.all(), run.trusted) == []
    for n in NODES:
        entries = read_ledger(run.paths[n]).entries
        last = entries[-1]
        assert last.kind == "run_close" and last.receiver == RUN_CLOSE_RECEIVER
        assert (last.sender_count, last.sender_head) == (last.seq - 1, last.prev_hash)
        assert all(e.sender_head for e in entries)  # every message carried its sender's head


def test_last_exchange_cut_from_both_ends_is_named(run: Run) -> None:
    coord, bank = run.paths["coordinator"], run.paths["bank"]
    c, b = seq_of(coord, "vlr.model", "sent", 2), seq_of(bank, "vlr.model", "received", 2)
    cut_tail(coord, c)
    cut_tail(bank, b)
    for path, last in ((coord, c - 1), (bank, b - 1)):
        findings = verify_ledger(path, run.trusted)
        assert [(f.field, f.message) for f in findings] == [
            ("run_close", f"run 'run-7' ends at entry {last} with no run-close record (its tail was cut, or the run did not end cleanly)")
        ]
    # Together: the pair agrees with itself, the closes are still missing.
    pair = [f for f in verify_run([coord, bank], run.trusted) if f.field != "peer"]  # the tax bureau's ledger is withheld
    assert {(Path(f.file).parent.name, f.field) for f in pair} == {("coordinator", "run_close"), ("bank", "run_close")}, pair


def test_a_signed_close_of_a_shorter_run_is_caught_by_the_peer(run: Run) -> None:
    """The bank (with its own key) cuts its tail and signs a fresh close: the coordinator recorded a longer bank ledger."""
    bank = run.paths["bank"]
    first = seq_of(bank, "vlr.residual", "sent", 1)  # its last two exchanges go
    cut_tail(bank, first)
    with Ledger(bank, "bank", run.signers["bank"]) as led:
        led.close_run("run-7")
    assert verify_ledger(bank, run.trusted) == []  # alone it looks complete
    findings = verify_run(run.all(), run.trusted)
    tail = [f for f in findings if f.field == "tail"]
    assert len(tail) == 1 and tail[0].file == str(bank) and tail[0].seq == first + 1, findings
    assert tail[0].message.startswith("'coordinator' recorded 'bank''s ledger head ")
    assert f"at count {first + 1} (ledger.sqlite entry " in tail[0].message
    assert tail[0].message.endswith(f"'bank''s ledger has {first} entries: its tail was cut")


def test_a_rewritten_ledger_no_longer_matches_the_heads_its_peers_recorded(run: Run, tmp_path: Path) -> None:
    """The tax bureau re-signs its whole ledger, one payload changed, its own heads recomputed: valid alone, not against its peer."""
    tax = run.paths["tax_bureau"]
    entries = read_ledger(tax).entries
    tax.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{tax}{suffix}").unlink(missing_ok=True)
    with Ledger(tax, "tax_bureau", run.signers["tax_bureau"]) as led:
        for e in entries:
            if e.kind == "run_close":
                led.close_run(e.run_id)
                continue
            fields = {
                k: getattr(e, k)
                for k in (
                    "run_id",
                    "round",
                    "step",
                    "sender",
                    "receiver",
                    "message_type",
                    "message_id",
                    "direction",
                    "payload_sha256",
                    "size_bytes",
                    "content_class",
                    "key_fingerprint",
                )
            }
            if e.step == "psi.blind" and e.direction == "received":
                fields["payload_sha256"] = "0" * 64  # "we were never sent that"
            count, head = (e.sender_count, e.sender_head) if e.direction == "received" else led.head()
            led.append(ExchangeRecord(**fields, sender_count=count, sender_head=head))
    assert verify_ledger(tax, run.trusted) == []
    findings = verify_run(run.all(), run.trusted)
    rewritten = [f for f in findings if f.field == "entry_hash" and f.file == str(tax)]
    assert len(rewritten) == 1 and "this ledger was rewritten" in rewritten[0].message, findings


def test_run_reopened_after_its_close_must_be_closed_again(run: Run) -> None:
    send(run, 4)  # run-7 goes on (e.g. resumed) after every node closed it
    coord = run.paths["coordinator"]
    (finding,) = verify_ledger(coord, run.trusted)
    assert finding.field == "run_close" and "goes on after its run-close record" in finding.message
    close(run)
    assert verify_run(run.all(), run.trusted) == []


def test_naming_a_run_judges_only_that_runs_close(run: Run) -> None:
    send(run, 0, run_id="run-8")  # another run, still open
    assert verify_run(run.all(), run.trusted, run_id="run-7") == []
    open_run = verify_run(run.all(), run.trusted, run_id="run-8")
    assert {f.field for f in open_run} == {"run_close"} and len(open_run) == 2  # the coordinator's and the bank's


def test_a_ledger_without_heads_is_not_held_to_closing(tmp_path: Path) -> None:
    """Entries that carry no head (written by hand, not by the recorder) promise no tail evidence."""
    signer = Ed25519Signer.generate()
    path = tmp_path / "bank.sqlite"
    with Ledger(path, "bank", signer) as led:
        led.append(
            ExchangeRecord.of_payload(
                b"x", run_id="r", round=1, step="s", sender="bank", receiver="coordinator", message_type="t", direction="sent", content_class="public"
            )
        )
    assert verify_ledger(path) == []


def test_run_close_records_are_written_only_by_close_run(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    with Ledger(tmp_path / "b.sqlite", "bank", signer) as led:
        with pytest.raises(LedgerError, match="written by close_run"):
            led.append(run_close_record("r", "bank", 0, led.head()[1]))
        entry = led.close_run("r")
    assert entry.seq == 1 and entry.sender_count == 0 and entry.sender_head == entry.prev_hash
    with pytest.raises(LedgerError, match="sender_count without a sender_head"):
        ExchangeRecord.of_payload(
            b"x", run_id="r", round=1, step="s", sender="bank", receiver="c", message_type="t", direction="sent", content_class="public", sender_count=3
        )


def test_a_head_naming_another_entry_is_named(run: Run) -> None:
    """A sender's own entry must carry a head of its own chain before it."""
    bank = run.paths["bank"]
    with Ledger(bank, "bank", run.signers["bank"]) as led:
        count, _ = led.head()
        led.append(
            ExchangeRecord.of_payload(
                b"y",
                run_id="run-9",
                round=1,
                step="s",
                sender="bank",
                receiver="coordinator",
                message_type="t",
                direction="sent",
                content_class="public",
                sender_count=count,
                sender_head="ab" * 32,
            )
        )
        led.close_run("run-9")
    findings = verify_ledger(bank, run.trusted)
    assert [(f.seq, f.field) for f in findings] == [(count + 1, "sender_head")], findings


def test_an_old_format_ledger_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO meta VALUES ('format', 'fedrisk-ledger/1')")
    conn.commit()
    conn.close()
    (finding,) = verify_ledger(path)
    assert finding.field == "file" and "predates 'fedrisk-ledger/2'" in finding.message
