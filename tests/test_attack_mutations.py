"""Planted leaks: the checks the attack tests use must catch each one.

Each test patches a party's own code so that the *real* message it sends
carries a leak, runs a small real federation over the InProcessGrid, and calls
the same check functions as ``test_attack_*.py`` on what the attacked role
received. Every planted leak must produce a finding; each test also shows that
the declared content class (what the audit ledger records) does not reveal it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from privacy_view import (
    NUMBERS,
    SECRET_CONTEXT,
    UNPARSED,
    Tap,
    audit,
    capture_residuals,
    check_classes,
    ciphertext_size_findings,
    horizontal_config,
    horizontal_parties,
    horizontal_secrets,
    probe_labels,
    run_federation,
    update_findings,
    vertical_config,
    vertical_parties,
    vertical_secrets,
    view_of,
)

SMALL = {"bank_rows": 1000, "tax_rows": 950, "overlap": 850}


@pytest.fixture
def tap():
    tap = Tap()
    yield tap
    tap.close()


def _vertical_with(tmp_path, default_credit_dir, patch_reply, monkeypatch, tap):
    """A small vertical-LR run whose label holder's score-sum answer goes through ``patch_reply(reply, d, y_train)``."""
    from fedrisk.parties.vertical_lr import LabelHolderVerticalLR

    residuals = capture_residuals(monkeypatch)
    original = LabelHolderVerticalLR._on_score_sum

    def on_score_sum(self, exchange):
        reply = original(self, exchange)
        if "fedrisk.payload" in reply:  # an epoch that sends [[d]] (not the final stop)
            aligned = self._aligned()
            y_train = np.asarray(aligned.y)[np.asarray(aligned.train_mask, dtype=bool)]
            d = residuals[-1] if residuals else y_train.mean() - y_train
            patch_reply(reply, d, y_train)
        return reply

    monkeypatch.setattr(LabelHolderVerticalLR, "_on_score_sum", on_score_sum)
    parties, data = vertical_parties(tmp_path, default_credit_dir, **SMALL)
    result = run_federation(tmp_path, parties, vertical_config("mutation", epochs=2, patience=50), tap)
    assert result["status"] == "ok", result
    view = view_of(tap.received_by("coordinator"), "coordinator")
    return view, vertical_secrets(tap, data, role="coordinator", residuals=residuals), result, data


def test_a_residual_in_the_answers_config_is_caught(tmp_path, default_credit_dir, monkeypatch, tap):
    """(a) The label holder's answer gains config["residual"] = d.tolist(): plain numbers that are the residual."""

    def plant(reply, d, y_train):
        reply["fedrisk.config"]["residual"] = [float(v) for v in d]

    view, secrets, result, _ = _vertical_with(tmp_path, default_credit_dir, plant, monkeypatch, tap)
    planted = [m for m in view.messages if any(p.key == "residual" and p.kind == NUMBERS for p in m.parts)]
    assert planted and all(m.declared == "ciphertext" for m in planted)  # the ledger would record "ciphertext"
    findings = audit(view, secrets, fingerprint=result["key_fingerprint"])
    label_findings = [f for f in probe_labels(view, secrets) if "'residual'" in f.where]
    assert label_findings, "the residual in the config was not recognised as label information"
    assert any(f.check == "class" and "'residual'" in f.where for f in findings)
    assert {f.check for f in findings} >= {"class", "labels"}


def test_a_plaintext_array_declared_ciphertext_is_caught(tmp_path, default_credit_dir, monkeypatch, tap):
    """(b) A bank sends its update as a plain numpy array under content class "ciphertext" and the federation key."""
    from fedrisk.wire.exchange import build_content
    from fedrisk.parties.horizontal import HorizontalParty

    original = HorizontalParty._encode

    def encode(self, exchange, vector, step):
        if step != "fedavg.update":
            return original(self, exchange, vector, step)
        header = exchange.header.reply("ciphertext", exchange.header.key_fingerprint, step=step)
        return build_content(header, {"vector": np.ascontiguousarray(vector, dtype="<f8").tobytes()})

    monkeypatch.setattr(HorizontalParty, "_encode", encode)
    parties, data = horizontal_parties(tmp_path, default_credit_dir, rows=500)
    run_federation(tmp_path, parties, horizontal_config("mutation", **{"num-rounds": 1}), tap, expect_error=True)
    fingerprint = tap.protocol("bank_a", "HorizontalParty")._context.fingerprint
    view = view_of(tap.received_by("coordinator"), "coordinator")
    updates = [m for m in view.messages if m.step == "fedavg.update" and m.captured.direction == "to_coordinator"]
    assert updates and all(m.declared == "ciphertext" for m in updates)
    findings = update_findings(view, fingerprint)
    assert findings and all("parses as unparsed" in f.detail for f in findings), findings
    assert any(f.check == "class" and UNPARSED in f.detail for f in audit(view, horizontal_secrets(tap, data), fingerprint=fingerprint))


def test_labels_in_training_order_beyond_the_first_4_kb_are_caught(tmp_path, default_credit_dir, monkeypatch, tap):
    """(c) A blob of 8 KB of random bytes, then the labels in the secret training order."""
    blobs = {}

    def plant(reply, d, y_train):
        blob = os.urandom(8192) + y_train.astype("<f8").tobytes()
        blobs["planted"] = blob
        reply["fedrisk.payload"]["padding"] = _raw(blob)

    view, secrets, result, data = _vertical_with(tmp_path, default_credit_dir, plant, monkeypatch, tap)
    findings = probe_labels(view, secrets)
    in_blob = [f for f in findings if "'padding'" in f.where]
    assert any("training order, training rows" in f.detail and "at byte 8192" in f.detail for f in in_blob), findings
    assert any(f.check == "class" and "'padding'" in f.where for f in check_classes(view))
    # What the old probe looked for (labels in CSV order, first 4 KB of the pattern) is not in the blob.
    old_pattern = data.bank["y"].to_numpy().astype("<f8").tobytes()[:4096]
    assert old_pattern not in blobs["planted"]


def test_a_secret_context_sent_as_the_public_one_is_caught(tmp_path, default_credit_dir, monkeypatch, tap):
    """(d) The key holder sends its secret CKKS context where the coordinator's public context belongs."""
    from fedrisk.parties.horizontal import HorizontalParty

    original = HorizontalParty._on_keygen

    def on_keygen(self, exchange):
        reply = original(self, exchange)
        reply["fedrisk.payload"]["public_context"] = _raw(self._context.to_bytes())
        return reply

    monkeypatch.setattr(HorizontalParty, "_on_keygen", on_keygen)
    parties, _ = horizontal_parties(tmp_path, default_credit_dir, rows=300)
    run_federation(tmp_path, parties, horizontal_config("mutation", **{"num-rounds": 1}), tap, expect_error=True)
    findings = check_classes(view_of(tap.received_by("coordinator"), "coordinator"))
    assert any(SECRET_CONTEXT in f.detail and "'public_context'" in f.where for f in findings), findings


def _raw(blob: bytes):
    from flwr.app import Array

    return Array(dtype="uint8", shape=(len(blob),), stype="raw", data=blob)


@pytest.mark.parametrize("n", [400, 1600, 6400])
def test_probe_thresholds_do_not_flag_unrelated_numbers(n):
    """The correlation bound (6 standard errors + the max over offsets) holds for noise of every size used."""
    from privacy_view import corr_threshold, max_abs_corr

    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.22).astype(float)
    for length in (n, 4 * n, n // 2):
        r, offsets = max_abs_corr(rng.uniform(-(2.0**36), 2.0**36, length), y)
        assert r <= corr_threshold(min(length, n), offsets)
    r, _ = max_abs_corr(np.concatenate([rng.normal(size=n), 0.3 - y + rng.normal(0, 0.05, n)]), y)
    assert r > 0.9  # and a residual hidden after other numbers is found


def test_the_classifier_parses_payloads_instead_of_trusting_their_class():
    """Frames that claim to be ciphertexts, masked values or sealed blobs and are not: each is caught by parsing."""
    import tenseal as ts

    from fedrisk.crypto import ckks
    from fedrisk.crypto.encrypted_matvec import CKKSRuntime, context_fingerprint, residual_level
    from fedrisk.wire.exchange import ExchangeHeader, build_content
    from fedrisk.models.vertical_lr import EncryptedResidual, MaskedGradient, make_context
    from privacy_view import CIPHERTEXT, FOREIGN, MASKED, Captured

    secret, other = make_context(galois=False), make_context(galois=False)
    public = secret.public_bytes(minimal=True)
    fp = context_fingerprint(secret)
    runtime = CKKSRuntime.for_context(secret)
    y = (np.random.default_rng(0).random(300) < 0.3).astype(float)
    blobs = runtime.encrypt(0.2 - y, residual_level(runtime))
    foreign = CKKSRuntime.for_context(other).encrypt(0.2 - y, residual_level(runtime))
    squared = ts.sealapi.Ciphertext()  # [[d]]·[[d]] without relinearisation: three polynomials, a size that gives it away
    runtime.evaluator.multiply(runtime.load(blobs[0]), runtime.load(blobs[0]), squared)
    payloads = {
        "honest": EncryptedResidual(fp, "bank", 0, y.size, tuple(blobs)).to_bytes(),
        "trailing": EncryptedResidual(fp, "bank", 0, y.size, (blobs[0] + (0.2 - y).astype("<f8").tobytes(),)).to_bytes(),
        "foreign": EncryptedResidual(context_fingerprint(other), "bank", 0, y.size, tuple(foreign)).to_bytes(),
        "squared": EncryptedResidual(fp, "bank", 0, y.size, (runtime.dump(squared),)).to_bytes(),
        "unmasked": MaskedGradient(fp, "tax", 0, np.arange(64.0)).to_bytes(),
        "masked": MaskedGradient(fp, "tax", 0, np.random.default_rng(1).uniform(-(2.0**36), 2.0**36, 64)).to_bytes(),
        "fake_sealed": b"FRSE\x01\x01" + bytes(32) + (0.2 - y).astype("<f8").tobytes(),
    }
    header = ExchangeHeader("r", 0, "probe", "bank", "coordinator", "ciphertext", fp)
    content = build_content(header, {"context": public, **payloads})
    view = view_of([Captured(0, "to_coordinator", 1000, "bank", "train.probe", content)], "coordinator")
    kinds = {p.key: p.kind for p in view.parts if p.key in payloads or p.key == "context"}
    assert kinds == {
        "context": "public_context",
        "honest": CIPHERTEXT,
        "trailing": UNPARSED,
        "foreign": FOREIGN,
        "squared": CIPHERTEXT,
        "unmasked": MASKED,
        "masked": MASKED,
        "fake_sealed": UNPARSED,
    }, kinds
    findings = {f.where.split("[")[-1].strip("']"): f.check for f in check_classes(view, fingerprint=fp)}
    assert findings == {"trailing": "class", "foreign": "class", "unmasked": "mask", "fake_sealed": "class"}, findings
    sized = {f.where.split("[")[-1].strip("']") for f in ciphertext_size_findings(view)}
    assert sized == {"squared"}, sized
    assert not ckks.PublicContext.from_bytes(public).tenseal_context.is_private()


def test_id_probes_find_raw_hashed_and_unblinded_ids():
    """A raw credit code in a config string, an ID's SHA-256 in a blob, IDs hashed to the curve but not blinded."""
    import hashlib

    from fedrisk.crypto.psi_group import hash_domain, hash_ids_to_u
    from fedrisk.crypto.psi_messages import BlindedSet
    from fedrisk.wire.exchange import ExchangeHeader, build_content
    from privacy_view import Captured, Secrets, credit_codes_for, probe_ids

    ids = list(credit_codes_for(range(1, 400)).values())
    unblinded = hash_ids_to_u(hash_domain("r"), [i.encode() for i in ids[:50]]).tobytes()
    blinded = BlindedSet("r", "tax", "feature", bytes(range(32)), unblinded).to_bytes()
    header = ExchangeHeader("r", 0, "probe", "tax", "coordinator", "masked")
    content = build_content(
        header,
        {"blinded": blinded, "hashes": os.urandom(100) + hashlib.sha256(ids[7].encode()).digest()},
        {"note": f"customer {ids[3]} defaulted"},
    )
    view = view_of([Captured(0, "to_coordinator", 1001, "tax", "query.probe", content)], "coordinator")
    findings = [str(f) for f in probe_ids(view, Secrets(ids=ids, psi_run_id="r"))]
    assert any("'note'" in f and "raw ID" in f for f in findings), findings
    assert any("'hashes'" in f and "SHA-256" in f for f in findings), findings
    assert any("'blinded'" in f and "not blinded" in f for f in findings), findings


def test_seeded_ciphertexts_pass_only_in_seals_exact_seeded_form():
    """SecureBoost's gradients travel seeded (``c0`` plus the seed of ``c1``): the classifier takes
    that form, and nothing else that fails the canonical check — bytes appended to a seeded blob
    (a planted leak) or a full form posing as seeded."""
    from privacy_view import _seeded_serialisation

    from fedrisk.crypto.bfv import BFVRuntime
    from fedrisk.crypto.encrypted_histogram import encrypt_gradients, make_histogram_context

    secret = make_histogram_context()
    runtime = BFVRuntime.for_context(secret)
    blob = encrypt_gradients(secret, np.zeros(100), np.zeros(100))[0]
    full = runtime.dump(runtime.load(blob))
    assert len(blob) < 0.55 * len(full)  # half the bytes: c1 is a seed
    assert _seeded_serialisation(blob, full)
    assert not _seeded_serialisation(blob + b"\x00" * 64, full)
    assert not _seeded_serialisation(full, full)
