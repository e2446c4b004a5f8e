"""What crosses the party line in encrypted FedAvg, asserted on the actual messages.

The fedrisk ServerApp and ClientApp run in one process over
:class:`~fedrisk.federation.inprocess.InProcessGrid`, which hands every message
to a tap before delivery: the assertions are on those messages, not on intent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrisk.crypto.ckks import EncryptedVector, PublicContext
from fedrisk.errors import PartyUnavailableError
from fedrisk.federation.exchange import read_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings

SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "opaque"}


def _banks(tmp_path: Path, data_dir: Path, rows: int = 1500) -> list[PartySettings]:
    parties = []
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1"), ("bank_c", "host_2")):
        frame = pd.read_csv(data_dir / f"default_credit_homo_{file}.csv").head(rows)
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        parties.append(PartySettings(name, "bank", str(path), SCHEMA, str(tmp_path / "parties" / name)))
    return parties


def _run(tmp_path: Path, parties: list[PartySettings], tap, **config) -> dict:
    run_config = {
        "mode": "horizontal", "aggregation": "ckks", "num-rounds": 2, "model": "logistic",
        "run-dir": str(tmp_path), "parties": ",".join(p.name for p in parties), "fedrisk-run-id": "privacy",
        "party-timeout": 60.0, **config,
    }
    grid = InProcessGrid(parties, tap=tap)
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    return json.loads((tmp_path / "coordinator" / "result.json").read_text())


def test_every_payload_from_a_bank_is_a_ciphertext_under_the_federation_key(tmp_path, default_credit_dir):
    seen = []
    result = _run(tmp_path, _banks(tmp_path, default_credit_dir), lambda d, n, m: seen.append((d, m)))
    fingerprint = result["key_fingerprint"]
    updates = 0
    for direction, msg in seen:
        exchange = read_content(msg.content)
        if direction != "to_coordinator" or not exchange.blobs:
            continue
        assert exchange.header.content_class == "ciphertext", exchange.header
        for name, blob in exchange.blobs.items():
            if name == "public_context":
                PublicContext.from_bytes(blob)  # refuses any context that carries a secret key
                continue
            if name.startswith("sealed:"):
                continue  # the secret context sealed to a peer bank's X25519 key
            vector = EncryptedVector.from_bytes(blob)
            assert vector.fingerprint == fingerprint
            updates += 1
    assert updates == 3 * (1 + 2)  # stats + two rounds, three banks


def test_coordinator_public_context_cannot_decrypt(tmp_path, default_credit_dir):
    seen = []
    _run(tmp_path, _banks(tmp_path, default_credit_dir), lambda d, n, m: seen.append((d, m)))
    keygen = next(read_content(m.content) for d, m in seen if d == "to_coordinator" and "public_context" in read_content(m.content).blobs)
    public = PublicContext.from_bytes(keygen.blob("public_context"))
    update = next(
        EncryptedVector.from_bytes(read_content(m.content).blob("vector"))
        for d, m in seen
        if d == "to_coordinator" and read_content(m.content).header.step == "fedavg.update"
    )
    with pytest.raises(Exception):
        public.tenseal_context.decrypt  # noqa: B018 - the context object exists...
        from fedrisk.crypto.ckks import decrypt_vector

        decrypt_vector(public, update)  # ...but holds no secret key


def test_plaintext_mode_is_labelled_plaintext(tmp_path, default_credit_dir):
    seen = []
    _run(tmp_path, _banks(tmp_path, default_credit_dir, rows=600), lambda d, n, m: seen.append((d, m)), aggregation="plain")
    classes = {read_content(m.content).header.content_class for d, m in seen if d == "to_coordinator" and read_content(m.content).blobs}
    assert classes == {"plaintext"}


def test_a_bank_that_leaves_mid_training_is_named(tmp_path, default_credit_dir):
    parties = _banks(tmp_path, default_credit_dir, rows=600)
    state = {"grid": None}

    def tap(direction, node_id, msg):
        # bank_c's node goes offline when round 2 starts
        if direction == "to_party" and read_content(msg.content).header.round == 2:
            state["grid"].offline.add(1002)

    run_config = {
        "mode": "horizontal", "aggregation": "ckks", "num-rounds": 3, "model": "logistic",
        "run-dir": str(tmp_path), "parties": "bank_a,bank_b,bank_c", "fedrisk-run-id": "dropout",
    }
    grid = InProcessGrid(parties, tap=tap)
    state["grid"] = grid
    with pytest.raises(PartyUnavailableError, match="bank_c"):
        server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    result = json.loads((tmp_path / "coordinator" / "result.json").read_text())
    assert result["status"] == "error" and "bank_c" in result["error"]
