"""The ledger cannot be skipped: the ClientApp mod and the ServerApp grid wrapper record everything."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedrisk.audit import read_ledger, verify_run
from fedrisk.audit.recorder import ExchangeRecorder
from fedrisk.audit.run_files import collect_ledgers
from fedrisk.crypto.signing import SigningIdentity
from fedrisk.errors import ProtocolError
from fedrisk.federation.exchange import ExchangeHeader, build_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.ledger_grid import LedgeredGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings

SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "opaque"}


def _run(tmp_path: Path, data_dir: Path, **config) -> Path:
    parties = []
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        path = tmp_path / f"{name}.csv"
        pd.read_csv(data_dir / f"default_credit_homo_{file}.csv").head(500).to_csv(path, index=False)
        parties.append(PartySettings(name, "bank", str(path), SCHEMA, str(tmp_path / "parties" / name)))
    run_config = {"mode": "horizontal", "num-rounds": 2, "model": "logistic", "run-dir": str(tmp_path),
                  "parties": "bank_a,bank_b", "fedrisk-run-id": "wiring", **config}
    grid = InProcessGrid(parties, run_config=run_config)
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


def test_ledger_can_be_switched_off_only_explicitly(tmp_path, default_credit_dir):
    run_dir = _run(tmp_path, default_credit_dir, ledger=False)
    assert not list(run_dir.rglob("ledger.sqlite"))


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

    from fedrisk.federation.exchange import (
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
