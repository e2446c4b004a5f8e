"""The ledger cannot be skipped: the ClientApp mod and the ServerApp grid wrapper record everything."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedrisk.audit import read_ledger, verify_ledger, verify_run
from fedrisk.audit.recorder import ExchangeRecorder
from fedrisk.audit.run_files import collect_ledgers
from fedrisk.crypto.signing import SigningIdentity
from fedrisk.errors import ProtocolError
from fedrisk.wire.exchange import ExchangeHeader, build_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.ledger_grid import LedgeredGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings
from ledger_tamper import cut_tail

SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "opaque"}


def _run(tmp_path: Path, data_dir: Path, *, tap=None, node_config: dict | None = None, **config) -> Path:
    """A two-bank CKKS FedAvg run through the real ServerApp and ClientApp (ledger mod included)."""
    parties = []
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        path = tmp_path / f"{name}.csv"
        pd.read_csv(data_dir / f"default_credit_homo_{file}.csv").head(500).to_csv(path, index=False)
        parties.append(PartySettings(name, "bank", str(path), SCHEMA, str(tmp_path / "parties" / name)))
    run_config = {
        "mode": "horizontal",
        "num-rounds": 2,
        "model": "logistic",
        "run-dir": str(tmp_path),
        "parties": "bank_a,bank_b",
        "fedrisk-run-id": "wiring",
        **config,
    }
    grid = InProcessGrid(parties, run_config=run_config, tap=tap)
    for context in grid.contexts.values():
        context.node_config.update((node_config or {}).get(str(context.node_config["party"]), {}))
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    return tmp_path


def test_every_message_is_recorded_on_both_sides(tmp_path, default_credit_dir):
    run_dir = _run(tmp_path, default_credit_dir)
    ledgers, keys = collect_ledgers([run_dir])
    assert verify_run(ledgers, trusted_keys=keys, run_id="wiring") == []
    coordinator = read_ledger(run_dir / "coordinator" / "ledger.sqlite")
    bank_a = read_ledger(run_dir / "parties" / "bank_a" / "ledger.sqlite")
    sent_to_a = [e for e in coordinator.entries if e.receiver == "bank_a" and e.direction == "sent"]
    received_by_a = [e for e in bank_a.entries if e.direction == "received"]
    assert len(sent_to_a) == len(received_by_a) > 5
    assert {e.payload_sha256 for e in sent_to_a} == {e.payload_sha256 for e in received_by_a}
    # What left the banks: the identity (public), key material, encrypted updates.
    classes = {e.step: e.content_class for e in bank_a.entries if e.direction == "sent"}
    assert classes["fedavg.update"] == "ciphertext" and classes["identity"] == "public"


def test_run_config_cannot_switch_a_partys_ledger_off(tmp_path, default_credit_dir):
    """The run config comes from the coordinator: ``ledger = false`` there turns off only the coordinator's own."""
    run_dir = _run(tmp_path, default_credit_dir, ledger=False)
    assert not (run_dir / "coordinator" / "ledger.sqlite").exists()
    for name in ("bank_a", "bank_b"):
        path = run_dir / "parties" / name / "ledger.sqlite"
        assert path.exists(), f"{name} stopped recording because the coordinator's run config said so"
        entries = read_ledger(path).entries
        steps = {e.step for e in entries}
        assert {"identity", "fedavg.update", "fedavg.final"} <= steps
        assert verify_ledger(path) == [], name  # and its run is closed (the coordinator still asks)


def test_only_the_nodes_own_config_turns_its_ledger_off(tmp_path, default_credit_dir):
    run_dir = _run(tmp_path, default_credit_dir, node_config={"bank_b": {"ledger": "off"}})
    assert not (run_dir / "parties" / "bank_b" / "ledger.sqlite").exists()
    assert (run_dir / "parties" / "bank_a" / "ledger.sqlite").exists()
    ledgers, keys = collect_ledgers([run_dir])
    findings = verify_run(ledgers, trusted_keys=keys, run_id="wiring")
    # The coordinator's ledger says whose ledger is missing; bank_a's is intact.
    assert {(Path(f.file).parent.name, f.field) for f in findings} == {("coordinator", "peer")}, findings
    assert "no ledger of 'bank_b'" in findings[0].message
    assert "ledger_unclosed" in json.loads((run_dir / "coordinator" / "result.json").read_text())


def test_a_runs_last_exchange_cut_from_both_ends_is_named(tmp_path, default_credit_dir):
    """The coordinator's and bank_a's ledgers both lose their last exchange (and what follows): named in one line each."""
    run_dir = _run(tmp_path, default_credit_dir)
    coord, bank_a = run_dir / "coordinator" / "ledger.sqlite", run_dir / "parties" / "bank_a" / "ledger.sqlite"
    ledgers, keys = collect_ledgers([run_dir])
    assert verify_run(ledgers, trusted_keys=keys, run_id="wiring") == []
    # The run's last exchange with bank_a: the final model down, bank_a's metrics back.
    (c_first,) = [e.seq for e in read_ledger(coord).entries if e.step == "fedavg.final" and e.receiver == "bank_a"]
    (b_first,) = [e.seq for e in read_ledger(bank_a).entries if e.step == "fedavg.final" and e.direction == "received"]
    cut_tail(coord, c_first)
    cut_tail(bank_a, b_first)
    # Each ledger alone: a valid chain, with its triggers back — but its run was never closed.
    for path, last in ((coord, c_first - 1), (bank_a, b_first - 1)):
        lines = [str(f) for f in verify_ledger(path, keys)]
        assert lines == [
            f"{path} field run_close: run 'wiring' ends at entry {last} with no run-close record (its tail was cut, or the run did not end cleanly)"
        ], lines
    # Only the two cut ledgers (the third party's ledger withheld): still named.
    both = verify_run([coord, bank_a], trusted_keys=keys, run_id="wiring")
    assert {(Path(f.file).parent.name, f.field) for f in both if f.field == "run_close"} == {("coordinator", "run_close"), ("bank_a", "run_close")}
    # With bank_b's ledger: it recorded the coordinator's head beyond what is left of the coordinator's ledger.
    lines = [str(f) for f in verify_run(ledgers, trusted_keys=keys, run_id="wiring")]
    tail = [line for line in lines if " field tail: " in line]
    assert len(tail) == 1 and tail[0].startswith(f"{coord} entry {c_first} field tail: 'bank_b' recorded 'coordinator''s ledger head ")
    assert f"'coordinator''s ledger has {c_first - 1} entries: its tail was cut" in tail[0]
    # The command a compliance team runs names it too (one line per finding, exit 1).
    from typer.testing import CliRunner

    from fedrisk.cli import app

    result = CliRunner().invoke(app, ["audit", "verify", str(coord), str(bank_a), "--run-id", "wiring"])
    assert result.exit_code == 1
    assert f"{bank_a} field run_close: run 'wiring' ends at entry {b_first - 1} with no run-close record" in result.stdout


def test_recorded_entries_are_what_crossed(tmp_path, default_credit_dir):
    """Parse every message that crossed (not what the ledger or the sender declared) and hold each entry to it."""
    from fedrisk.audit.recorder import HEAD_RECORD, head_of
    from fedrisk.crypto.ckks import EncryptedVector
    from fedrisk.wire.exchange import PAYLOAD_RECORD, content_digest

    crossed: dict[str, list] = {}

    def tap(direction, node_id, msg):
        crossed.setdefault(content_digest(msg.content)[0], []).append(msg.content)

    run_dir = _run(tmp_path, default_credit_dir, tap=tap)
    snaps = {p.parent.name: read_ledger(p) for p in collect_ledgers([run_dir])[0]}
    hashes = {name: {0: snap.meta["genesis_hash"], **{e.seq: e.entry_hash for e in snap.entries}} for name, snap in snaps.items()}
    recorded = 0
    for name, snap in snaps.items():
        for e in snap.entries:
            if e.kind == "run_close":
                continue
            contents = crossed.get(e.payload_sha256)
            assert contents, f"{name} entry {e.seq} ({e.step}) records a message that never crossed"
            content = contents[0]
            # The sender's ledger head, as the message itself carried it, and as the sender's ledger really was.
            assert HEAD_RECORD in content
            assert head_of(content) == (e.sender_count, e.sender_head)
            assert hashes[e.sender][e.sender_count] == e.sender_head
            if e.step == "fedavg.update":  # declared ciphertext: every blob must parse as one, under the recorded key
                blobs = content[PAYLOAD_RECORD]
                assert len(blobs) >= 1
                for blob_name in blobs.keys():
                    vector = EncryptedVector.from_bytes(bytes(blobs[blob_name].data))
                    assert vector.fingerprint == e.key_fingerprint
            recorded += 1
    # Every message that crossed is in both ledgers.
    assert recorded == 2 * sum(len(v) for v in crossed.values())


def test_undeclared_content_cannot_leave_the_coordinator(tmp_path):
    identity = SigningIdentity.generate()
    recorder = ExchangeRecorder(tmp_path / "ledger.sqlite", "coordinator", identity)
    grid = LedgeredGrid(InProcessGrid([]), recorder)
    bare = Message(RecordDict({"payload": ConfigRecord({"x": 1})}), dst_node_id=1000, message_type="query.identity")
    with pytest.raises(ProtocolError, match="fedrisk.header"):
        grid.push_messages([bare])
    with pytest.raises(ProtocolError, match="undeclared content class"):
        ExchangeHeader("run", 1, "step", "coordinator", "bank_a", "secret-ish")
    # A declared one goes through and is recorded.
    ok = Message(build_content(ExchangeHeader("run", 1, "s", "coordinator", "bank_a", "public")), dst_node_id=1000, message_type="query.identity")
    grid.push_messages([ok])
    assert len(read_ledger(tmp_path / "ledger.sqlite").entries) == 1


def _digest_content() -> RecordDict:
    header = ExchangeHeader(run_id="r", round=3, step="vlr.residual", sender="coordinator", receiver="bank", content_class="ciphertext", key_fingerprint="ab12")
    return build_content(header, {"residual": bytes(range(256)) * 4000, "mask": b"\x01\x02"}, {"epoch": 3, "lr": 0.5, "stop": False, "names": ["a", "b"]})


def test_content_digest_is_the_same_after_flowers_wire_format_and_names_every_change():
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    from fedrisk.wire.exchange import (
        CONFIG_RECORD,
        PAYLOAD_RECORD,
        content_digest,
    )

    content = _digest_content()
    digest, size = content_digest(content)
    assert size >= 256 * 4000 + 2
    # what the receiver holds: the content after Flower's protobuf round trip
    received = recorddict_from_proto(recorddict_to_proto(content))
    assert content_digest(received) == (digest, size)

    def changed(edit) -> str:
        other = recorddict_from_proto(recorddict_to_proto(content))
        edit(other)
        return content_digest(other)[0]

    flipped = bytearray(content[PAYLOAD_RECORD]["residual"].data)
    flipped[1000] ^= 1
    from flwr.app import Array

    for edit in (
        lambda c: c[PAYLOAD_RECORD].__setitem__("residual", Array(dtype="uint8", shape=(len(flipped),), stype="raw", data=bytes(flipped))),
        lambda c: c[CONFIG_RECORD].__setitem__("epoch", 3.0),  # same number, another type
        lambda c: c[CONFIG_RECORD].__setitem__("stop", 0),
        lambda c: c[CONFIG_RECORD].__setitem__("names", ["ab"]),  # same characters, other split
        lambda c: c[CONFIG_RECORD].__setitem__("extra", ""),
    ):
        assert changed(edit) != digest
