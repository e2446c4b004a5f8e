"""Encrypted FedAvg, attacked by the curious coordinator with the messages it really received.

Three banks (1,000 rows each of the real homogeneous default-credit split,
credit-code IDs) train a logistic model for two rounds over the InProcessGrid.
The coordinator's view is parsed by :mod:`privacy_view` (never by the declared
content class): every bank update must be a CKKS ciphertext under the
federation key (its SEAL ciphertexts loaded and re-serialised byte for byte),
the keys it relays sealed, its own context public and unable to decrypt — a
check that fails when handed the key holder's context — and no label, feature
column or raw ID of any bank may appear anywhere in what it holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from privacy_view import (
    CIPHERTEXT,
    SEALED,
    Tap,
    audit,
    ciphertext_size_findings,
    decrypts,
    horizontal_config,
    horizontal_parties,
    horizontal_secrets,
    run_federation,
    update_findings,
    view_of,
)

ROUNDS = 2


@pytest.fixture(scope="module")
def fedavg(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("attack_fedavg")
    parties, data = horizontal_parties(root, default_credit_dir)
    tap = Tap()
    result = run_federation(root, parties, horizontal_config("attack-fedavg", **{"num-rounds": ROUNDS}), tap)
    assert result["status"] == "ok", result
    yield {"root": root, "result": result, "tap": tap, "data": data}
    tap.close()


def test_every_bank_update_parses_as_a_ciphertext_under_the_federation_key(fedavg):
    tap, result = fedavg["tap"], fedavg["result"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    findings = update_findings(view, result["key_fingerprint"])
    assert not findings, "\n".join(map(str, findings))
    updates = [m for m in view.messages if m.captured.direction == "to_coordinator" and m.step in ("fedavg.update", "fedavg.stats")]
    assert len(updates) == 3 * (1 + ROUNDS)
    assert all(p.kind == CIPHERTEXT for m in updates for p in m.parts if p.key == "vector")


def test_the_coordinators_public_context_cannot_decrypt_an_update(fedavg):
    """On a real update: TenSEAL refuses to decrypt with the coordinator's context; the key holder's decrypts it."""
    from fedrisk.crypto.ckks import EncryptedVector, KeyHolderContext, decrypt_vector

    tap, result = fedavg["tap"], fedavg["result"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    (key,) = [k for k in view.ring.keys if result["key_fingerprint"] in k.fingerprints]
    assert not key.context.is_private() and not key.context.has_secret_key()
    update = next(m for m in view.messages if m.step == "fedavg.update" and m.captured.direction == "to_coordinator")
    vector = EncryptedVector.from_bytes(next(p.raw for p in update.parts if p.key == "vector"))
    chunk = ts.ckks_vector_from(key.context, vector.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        chunk.decrypt()
    assert not decrypts(key.context)
    # Positive control: the same chunk decrypts under the key holder's secret context, so the refusal above is the key's absence.
    bank = tap.protocol(update.captured.party, "HorizontalParty")
    secret = KeyHolderContext.load(bank.secret_path)
    assert secret.fingerprint == result["key_fingerprint"] and decrypts(secret.tenseal_context)
    values = decrypt_vector(secret, vector)
    weight = values[-1]
    assert 0 < weight <= 1 and np.all(np.isfinite(values))  # [(n/U)·w, n/U]: a real update, read only by a key holder
    # The key holder's secret context crossed the coordinator only sealed.
    keygen = next(m for m in view.messages if any(p.key == "public_context" for p in m.parts))
    assert [p.kind for p in keygen.parts if p.key.startswith("sealed:")] == [SEALED, SEALED]


def test_curious_coordinator_learns_no_label_feature_or_id(fedavg):
    tap, result = fedavg["tap"], fedavg["result"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    findings = audit(view, horizontal_secrets(tap, fedavg["data"]), fingerprint=result["key_fingerprint"])
    findings += ciphertext_size_findings(view)
    assert not findings, "\n".join(map(str, findings))
