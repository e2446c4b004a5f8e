"""What crosses the party line in encrypted FedAvg, asserted on the actual messages.

The fedrisk ServerApp and ClientApp run in one process over
:class:`~fedrisk.federation.inprocess.InProcessGrid`, which hands every message
to a tap before delivery: the assertions are on those messages, parsed by
:mod:`privacy_view` (never by the content class the sender declares), and every
one of them can fail — the decryption check is an actual TenSEAL decryption
attempt, with the key holder's context as the positive control.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrisk.crypto.ckks import PublicContext
from fedrisk.errors import CryptoError, PartyUnavailableError
from fedrisk.wire.exchange import read_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.parties.settings import PartySettings
from privacy_view import (
    CIPHERTEXT,
    PUBLIC_CONTEXT,
    SEALED,
    TEXT,
    UNPARSED,
    Captured,
    Tap,
    check_classes,
    decrypts,
    update_findings,
    view_of,
)

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
        "mode": "horizontal",
        "aggregation": "ckks",
        "num-rounds": 2,
        "model": "logistic",
        "run-dir": str(tmp_path),
        "parties": ",".join(p.name for p in parties),
        "fedrisk-run-id": "privacy",
        "party-timeout": 60.0,
        **config,
    }
    grid = InProcessGrid(parties, tap=tap)
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    return json.loads((tmp_path / "coordinator" / "result.json").read_text())


def _view(seen):
    """The coordinator's messages, classified by parsing (never by the declared content class)."""
    tap = Tap()
    for direction, node_id, msg in seen:
        tap.messages.append(Captured(len(tap.messages), direction, node_id, str(node_id), msg.metadata.message_type, msg.content))
    return view_of(tap.messages, "coordinator")


def test_every_payload_from_a_bank_is_a_ciphertext_under_the_federation_key(tmp_path, default_credit_dir):
    seen = []
    result = _run(tmp_path, _banks(tmp_path, default_credit_dir), lambda d, n, m: seen.append((d, n, m)))
    fingerprint = result["key_fingerprint"]
    view = _view(seen)
    findings = update_findings(view, fingerprint)
    assert not findings, "\n".join(map(str, findings))
    updates, other = 0, []
    for message in view.messages:
        if message.captured.direction != "to_coordinator":
            continue
        for part in message.parts:
            if part.raw is None or part.kind in (TEXT,):
                continue  # scalars and names (training loss, metrics, key ids)
            if part.kind == CIPHERTEXT:
                assert fingerprint in view.ring.get(part.fingerprint).fingerprints, part.where
                updates += 1
            elif part.kind == PUBLIC_CONTEXT:
                (key,) = [k for k in view.ring.keys if fingerprint in k.fingerprints]
                assert not decrypts(key.context)  # a real decryption attempt, refused
            elif part.kind == SEALED:
                assert part.key.startswith("sealed:")  # the secret context, sealed to a peer bank's X25519 key
            else:
                other.append(f"{part.where}: {part.kind} {part.detail}")
    assert not other, other
    assert updates == 3 * (1 + 2)  # stats + two rounds, three banks


def test_coordinator_public_context_cannot_decrypt(tmp_path, default_credit_dir):
    import tenseal as ts

    from fedrisk.crypto.ckks import EncryptedVector, KeyHolderContext, decrypt_vector

    seen = []
    result = _run(tmp_path, _banks(tmp_path, default_credit_dir), lambda d, n, m: seen.append((d, n, m)))
    keygen = next(read_content(m.content) for d, _, m in seen if d == "to_coordinator" and "public_context" in read_content(m.content).blobs)
    public = PublicContext.from_bytes(keygen.blob("public_context"))  # refuses a context that carries a secret key
    assert public.fingerprint == result["key_fingerprint"]
    assert not public.tenseal_context.is_private() and not public.tenseal_context.has_secret_key()
    update = next(
        EncryptedVector.from_bytes(read_content(m.content).blob("vector"))
        for d, _, m in seen
        if d == "to_coordinator" and read_content(m.content).header.step == "fedavg.update"
    )
    chunk = ts.ckks_vector_from(public.tenseal_context, update.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        chunk.decrypt()  # TenSEAL itself: no secret key in the coordinator's context
    assert not decrypts(public.tenseal_context)
    # The same ciphertext decrypts under a bank's secret context: the refusal above is the key's absence, not a bad ciphertext.
    secret = KeyHolderContext.load(tmp_path / "parties" / "bank_a" / "ckks_aggregation.secret")
    assert secret.fingerprint == public.fingerprint and decrypts(secret.tenseal_context)
    values = decrypt_vector(secret, update)
    assert np.all(np.isfinite(values)) and 0 < values[-1] <= 1  # [(n/U)·w, n/U]
    with pytest.raises(CryptoError):
        decrypt_vector(public, update)  # fedrisk's own API refuses too


def test_plaintext_mode_is_labelled_plaintext(tmp_path, default_credit_dir):
    seen = []
    _run(tmp_path, _banks(tmp_path, default_credit_dir, rows=600), lambda d, n, m: seen.append((d, n, m)), aggregation="plain")
    view = _view(seen)
    updates = [m for m in view.messages if m.captured.direction == "to_coordinator" and m.step in ("fedavg.update", "fedavg.stats")]
    assert updates and {m.declared for m in updates} == {"plaintext"}
    # The parse agrees with the declaration: no update is a ciphertext, each is flagged by the checks.
    blobs = [p for m in updates for p in m.parts if p.key == "vector"]
    assert len(blobs) == len(updates) and all(p.kind == UNPARSED for p in blobs)
    flagged = {f.where for f in check_classes(view)}
    assert all(p.where in flagged for p in blobs)


def test_a_bank_that_leaves_mid_training_is_named(tmp_path, default_credit_dir):
    parties = _banks(tmp_path, default_credit_dir, rows=600)
    state = {"grid": None}

    def tap(direction, node_id, msg):
        # bank_c's node goes offline when round 2 starts
        if direction == "to_party" and read_content(msg.content).header.round == 2:
            state["grid"].offline.add(1002)

    run_config = {
        "mode": "horizontal",
        "aggregation": "ckks",
        "num-rounds": 3,
        "model": "logistic",
        "run-dir": str(tmp_path),
        "parties": "bank_a,bank_b,bank_c",
        "fedrisk-run-id": "dropout",
    }
    grid = InProcessGrid(parties, tap=tap)
    state["grid"] = grid
    with pytest.raises(PartyUnavailableError, match="bank_c"):
        server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    result = json.loads((tmp_path / "coordinator" / "result.json").read_text())
    assert result["status"] == "error" and "bank_c" in result["error"]
