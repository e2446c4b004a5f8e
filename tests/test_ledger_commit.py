"""When ledger entries become durable: kept-open ledgers, one transaction per party message, status refreshes.

A party's reply may leave only once its ledger holds the request and the reply
(one ``synchronous=FULL`` transaction); a ledger kept open between messages
must still notice a file altered or replaced by someone else.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from ledger_tamper import cut_tail

from fedrisk.audit import (
    Ed25519Signer,
    ExchangeRecord,
    Ledger,
    read_ledger,
    verify_ledger,
)
from fedrisk.audit import recorder as recorder_module
from fedrisk.audit.recorder import LEDGER_FILE, ExchangeRecorder, PendingRecord, head_of
from fedrisk.errors import LedgerError, ProtocolError
from fedrisk.wire.exchange import (
    ECHO,
    ExchangeHeader,
    build_content,
    content_digest,
)
from fedrisk.parties.ledger_mod import ledger_mod


def _record(i: int, direction: str = "sent") -> ExchangeRecord:
    sender, receiver = ("bank", "coordinator") if direction == "sent" else ("coordinator", "bank")
    return ExchangeRecord.of_payload(
        f"payload {i}".encode(),
        run_id="r",
        round=i,
        step="s",
        sender=sender,
        receiver=receiver,
        message_type="query.echo",
        direction=direction,
        content_class="public",
    )


def _request(round_: int = 1, payload: bytes = b"abc") -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, round_  # as a task sets them
    content = build_content(ExchangeHeader("r", round_, "echo", "coordinator", "bank", "public"), blobs={"payload": payload})
    msg = Message(content, dst_node_id=7, message_type=ECHO)
    msg.metadata.__dict__["_message_id"] = f"m{round_}"
    return msg


def _context(state_dir: Path) -> Context:
    return Context(run_id=1, node_id=7, node_config={"party": "bank", "party-state-dir": str(state_dir)}, state=RecordDict(), run_config={})


def _answer(msg: Message, context: Context) -> Message:
    header = ExchangeHeader("r", 1, "echo", "bank", "coordinator", "public")
    return Message(build_content(header, blobs={"payload": b"reply"}), reply_to=msg)


def _sound(path: Path) -> bool:
    """Chain, hashes and signatures verify (the run was not closed: these tests end no run)."""
    findings = [f for f in verify_ledger(path) if f.field != "run_close"]
    assert findings == []
    return True


@pytest.fixture(autouse=True)
def _fresh_open_ledgers():
    recorder_module.close_open_ledgers()
    yield
    recorder_module.close_open_ledgers()


# -- one transaction for a message and its reply ------------------------------------------------


def test_append_chain_stamps_a_record_with_the_head_before_it(tmp_path):
    signer = Ed25519Signer.generate()
    seen = []

    def second(count, head):
        seen.append((count, head))
        return _record(2)

    with Ledger(tmp_path / "l.sqlite", "bank", signer) as led:
        first, then = led.append_chain([_record(1, "received"), second])
        assert seen == [(1, first.entry_hash)] and then.prev_hash == first.entry_hash and led.head() == (2, then.entry_hash)
    assert verify_ledger(tmp_path / "l.sqlite") == []


def test_append_chain_stores_all_or_nothing(tmp_path):
    signer = Ed25519Signer.generate()

    def broken(count, head):
        raise ProtocolError("undeclared content")

    with Ledger(tmp_path / "l.sqlite", "bank", signer) as led:
        with pytest.raises(ProtocolError):
            led.append_chain([_record(1, "received"), broken])
        with pytest.raises(LedgerError, match="writer is 'bank'"):  # a callable's record is checked like any other
            led.append_chain(
                [
                    _record(1, "received"),
                    lambda c, h: ExchangeRecord.of_payload(
                        b"x",
                        run_id="r",
                        round=2,
                        step="s",
                        sender="tax_bureau",
                        receiver="coordinator",
                        message_type="query.echo",
                        direction="sent",
                        content_class="public",
                    ),
                ]
            )
        assert len(led) == 0


def test_the_reply_is_on_record_with_its_request_when_the_mod_hands_it_back(tmp_path):
    during = []

    def handler(msg, context):
        during.append(len(read_ledger(tmp_path / LEDGER_FILE).entries) if (tmp_path / LEDGER_FILE).exists() else 0)
        return _answer(msg, context)

    reply = ledger_mod(_request(), _context(tmp_path), handler)
    entries = read_ledger(tmp_path / LEDGER_FILE).entries  # another connection: what is committed
    assert [e.direction for e in entries] == ["received", "sent"]
    received, sent = entries
    assert sent.payload_sha256 == content_digest(reply.content)[0]  # the very content that leaves
    # The reply carries the head that includes its request's entry.
    assert head_of(reply.content) == (received.seq, received.entry_hash)
    # The request keeps its arrival time; the commit is one transaction, after the party answered.
    assert received.timestamp_us <= sent.timestamp_us and during == [0]
    assert _sound(tmp_path / LEDGER_FILE)


def test_no_reply_leaves_when_its_entry_cannot_be_written(tmp_path, monkeypatch):
    ledger_mod(_request(1), _context(tmp_path), _answer)

    def failing(self, items):
        raise LedgerError("disk full")

    monkeypatch.setattr(Ledger, "append_chain", failing)
    with pytest.raises(LedgerError, match="disk full"):
        ledger_mod(_request(2), _context(tmp_path), _answer)
    monkeypatch.undo()
    assert len(read_ledger(tmp_path / LEDGER_FILE).entries) == 2  # nothing of the second message


def test_a_failing_handler_still_leaves_the_request_on_record(tmp_path):
    def handler(msg, context):
        raise ProtocolError("party process down")

    with pytest.raises(ProtocolError):
        ledger_mod(_request(), _context(tmp_path), handler)
    assert [e.direction for e in read_ledger(tmp_path / LEDGER_FILE).entries] == ["received"]


def test_an_undeclared_reply_does_not_leave_but_its_request_is_recorded(tmp_path):
    def handler(msg, context):
        return Message(RecordDict(), reply_to=msg)  # no fedrisk.header: refused

    with pytest.raises(ProtocolError, match="no fedrisk.header"):
        ledger_mod(_request(), _context(tmp_path), handler)
    assert [e.direction for e in read_ledger(tmp_path / LEDGER_FILE).entries] == ["received"]


_KILLED_AFTER_REPLY = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_ledger_commit import _answer, _context, _request
    from fedrisk.wire.exchange import content_digest
    from fedrisk.parties.ledger_mod import ledger_mod

    state = Path(sys.argv[1])
    for i in range(1, 4):
        reply = ledger_mod(_request(i), _context(state), _answer)
    # The reply is handed to Flower now; the process dies before anything else (no close, no checkpoint).
    print(content_digest(reply.content)[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_party_killed_right_after_replying_has_the_reply_on_record(tmp_path):
    """The ledger stays open between messages: each reply's entry is committed, not waiting for a close."""
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_REPLY, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    entries = read_ledger(tmp_path / LEDGER_FILE).entries
    assert len(entries) == 6 and entries[-1].direction == "sent"
    assert entries[-1].payload_sha256 == done.stdout.split()[0]
    assert _sound(tmp_path / LEDGER_FILE)


# -- a ledger kept open -----------------------------------------------------------------------


def _recorder(tmp_path: Path) -> tuple[ExchangeRecorder, Path]:
    path = tmp_path / LEDGER_FILE
    return ExchangeRecorder(path, "bank", Ed25519Signer.generate()), path


def _pending(i: int) -> PendingRecord:
    return PendingRecord(build_content(ExchangeHeader("r", i, "s", "bank", "coordinator", "public")), "sent", "query.echo")


def test_the_recorder_keeps_one_ledger_open_between_messages(tmp_path, monkeypatch):
    rec, path = _recorder(tmp_path)
    opened = []
    real_init = Ledger.__init__

    def counting_init(self, *args, **kwargs):
        opened.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "__init__", counting_init)
    for i in range(5):
        rec.record(_pending(i))
    assert len(opened) == 1 and len(read_ledger(path).entries) == 5


def test_a_kept_open_ledger_extends_the_chain_as_it_is_on_disk(tmp_path):
    rec, path = _recorder(tmp_path)
    for i in range(3):
        rec.record(_pending(i))
    cut_tail(path, 3)  # another connection deletes the last entry (cross-checks against heads catch that)
    rec.record(_pending(3))  # the head is read inside the transaction, never remembered
    entries = read_ledger(path).entries
    assert [e.seq for e in entries] == [1, 2, 3] and entries[2].prev_hash == entries[1].entry_hash and entries[2].round == 3


def test_a_kept_open_ledger_notices_its_triggers_dropped(tmp_path):
    rec, path = _recorder(tmp_path)
    rec.record(_pending(0))
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="triggers missing"):
        rec.record(_pending(1))


def test_a_kept_open_ledger_notices_a_last_entry_altered_by_someone_else(tmp_path):
    rec, path = _recorder(tmp_path)
    rec.record(_pending(0))
    rec.record(_pending(1))
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET size_bytes = 999 WHERE seq = 2")
    conn.execute("CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'x'); END")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="last entry 2 fails verification"):
        rec.record(_pending(2))


def test_a_ledger_file_moved_away_is_not_written_through_the_old_connection(tmp_path):
    rec, path = _recorder(tmp_path)
    rec.record(_pending(0))
    archive = tmp_path / "archive"
    archive.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            os.rename(f"{path}{suffix}", archive / f"{LEDGER_FILE}{suffix}")
    rec.record(_pending(1))  # a new ledger at the path, not an entry in the moved file
    assert [e.round for e in read_ledger(path).entries] == [1]
    assert [e.round for e in read_ledger(archive / LEDGER_FILE).entries] == [0]


def test_another_writer_in_between_is_fine(tmp_path):
    rec, path = _recorder(tmp_path)
    rec.record(_pending(0))
    with Ledger(path, "bank", rec.signer) as other:  # e.g. another process of the same node
        other.append(_record(9))
    rec.record(_pending(1))
    assert len(read_ledger(path).entries) == 3 and verify_ledger(path) == []


# -- status.json: one write per change, not per message -------------------------------------------


def test_status_refreshes_of_last_seen_are_coalesced(tmp_path, monkeypatch):
    from fedrisk.federation import status as status_module

    clock = [1000.0]
    monkeypatch.setattr(status_module.time, "monotonic", lambda: clock[0])
    writes = []
    real = status_module.write_public_file
    monkeypatch.setattr(status_module, "write_public_file", lambda path, data: (writes.append(json.loads(data)), real(path, data)))
    status = status_module.RunStatus(tmp_path / "status.json", "r")
    status.party("bank", "connected", role="bank")
    writes.clear()
    status.party("bank", "answered")  # a change: written at once
    assert len(writes) == 1 and writes[-1]["parties"]["bank"]["state"] == "answered"
    for _ in range(50):  # the same party answering again and again: nothing new but last_seen
        status.party("bank", "answered")
        status.heartbeat()
    assert len(writes) == 1
    clock[0] += status_module.REFRESH_SECONDS
    status.heartbeat()  # a waiting refresh goes out once REFRESH_SECONDS have passed
    assert len(writes) == 2
    status.party("bank", "failed", error="gone")  # a change again: at once
    assert len(writes) == 3 and status_module.read_status_file(tmp_path / "status.json")["parties"]["bank"]["state"] == "failed"


def test_a_ledger_altered_since_the_last_message_refuses_the_next_before_the_party_handles_it(tmp_path):
    ledger_mod(_request(1), _context(tmp_path), _answer)  # the ledger is open (kept) from here on
    conn = sqlite3.connect(tmp_path / LEDGER_FILE)
    conn.execute("DROP TRIGGER entries_no_delete")
    conn.commit()
    conn.close()
    handled = []

    def handler(msg, context):
        handled.append(msg)
        return _answer(msg, context)

    with pytest.raises(LedgerError, match="triggers missing"):
        ledger_mod(_request(2), _context(tmp_path), handler)
    assert handled == []
