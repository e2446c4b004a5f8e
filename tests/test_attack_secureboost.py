"""Vertical SecureBoost, attacked by the curious feature holder and the curious coordinator.

A small real federation (bank = label holder 2,000 rows, tax bureau = feature
holder 1,900 rows of which 1,700 overlap, credit-code IDs; 2 trees of depth 3, 16
bins) runs over the InProcessGrid; each attacker parses everything its role
received (:mod:`privacy_view`, never the declared class) and tries to read
labels, gradients, the bank's features, raw IDs and the intersection size out of it.

SecureBoost discloses to a feature holder the row sets of the nodes split on its
own features (README, "Vertical SecureBoost"): row sets are the one
label-dependent thing it may read, so they are probed only for labels in
disguise (a "row set" that *is* the label vector), every other readable number
for any correlation. The feature holder holds a key of its own: the bank's
masked histograms arrive under it, so the curious feature holder decrypts every
one of them and must find uniform residues, nothing label-shaped.
"""

from __future__ import annotations

import numpy as np
import pytest

from privacy_view import (
    CIPHERTEXT,
    MASKED,
    NUMBERS,
    POINTS,
    PUBLIC_CONTEXT,
    ROWS,
    SCALAR,
    SEALED,
    STRUCTURE,
    TEXT,
    Tap,
    audit,
    ciphertext_size_findings,
    decrypts,
    label_recovery,
    run_federation,
    vertical_config,
    vertical_parties,
    vertical_secrets,
    view_of,
)

TREES, DEPTH = 2, 3
#: What a SecureBoost feature holder may see: ciphertexts, public contexts, node row sets, split/bin indices
#: (and the PSI points and sealed answers of the alignment before it).
FEATURE_HOLDER_MAY_SEE = frozenset({CIPHERTEXT, PUBLIC_CONTEXT, ROWS, STRUCTURE, SCALAR, TEXT, POINTS, SEALED})


@pytest.fixture(scope="module")
def sb(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("attack_sb")
    parties, data = vertical_parties(root, default_credit_dir)
    tap = Tap()
    result = run_federation(root, parties, vertical_config("attack-sb", "secureboost", trees=TREES, depth=DEPTH, bins=16), tap)
    assert result["status"] == "ok", result
    yield {"root": root, "result": result, "tap": tap, "data": data}
    tap.close()


def _holder_key(tap: Tap):
    """The feature holder's own bins key, as the curious feature holder holds it (secret) and as its public copy."""
    from fedrisk.crypto.bfv import load_public_bfv_context, public_bfv_context_bytes

    key = tap.protocol("tax_bureau", "FeatureHolderSecureBoost").model.bins_key_
    return key, load_public_bfv_context(public_bfv_context_bytes(key, galois=False), "test")


def _federation_keys(tap: Tap, result: dict) -> set[str]:
    from fedrisk.crypto.seal_runtime import context_fingerprint

    return {result["key_fingerprint"], context_fingerprint(_holder_key(tap)[1])}


def _gradients(tap: Tap) -> list[np.ndarray]:
    """The label holder's first-tree gradients g = p − y on its training rows (ground truth for the probes)."""
    bank = tap.protocol("bank", "LabelHolderAlignment").aligned
    y = np.asarray(bank.y)[np.asarray(bank.train_mask, dtype=bool)]
    return [y.mean() - y]


def test_curious_feature_holder_sees_only_ciphertexts_row_sets_and_split_indices(sb):
    tap, result = sb["tap"], sb["result"]
    view = view_of(tap.received_by("tax_bureau"), "tax_bureau", own_keys=[_holder_key(tap)[1]])
    secrets = vertical_secrets(tap, sb["data"], role="feature_holder", residuals=_gradients(tap))
    findings = audit(view, secrets, allowed=FEATURE_HOLDER_MAY_SEE, fingerprint=_federation_keys(tap, result))
    assert not findings, "\n".join(map(str, findings))
    kinds = view.kinds()
    assert kinds.get(CIPHERTEXT, 0) >= TREES  # masked histograms, verified under its own key
    assert kinds.get(ROWS, 0) >= 1 and not kinds.get(MASKED) and not kinds.get(NUMBERS)
    assert all(not decrypts(k.context) for k in view.ring.keys) and view.ring.keys


def test_curious_feature_holder_decrypts_only_uniform_residues(sb):
    """It opens every masked histogram it received with its own secret key: uniform mod t (Kolmogorov–Smirnov), nothing label-shaped."""
    from scipy import stats

    from fedrisk.crypto import encrypted_bins as eb
    from fedrisk.crypto.bfv import BFVRuntime
    from fedrisk.crypto.frames import unpack_frame

    tap = sb["tap"]
    key, _ = _holder_key(tap)
    runtime = BFVRuntime.for_context(key)
    opened = []
    for captured in tap.received_by("tax_bureau"):
        for blob in _frames(captured.content):
            kind, _, _, blobs = unpack_frame(blob)
            if kind == b"SMHB":
                for b in blobs:  # c0 travels at the total positions only: those are all it can open
                    layout = eb.BinMatrixLayout(1, 1, runtime.slots, int(unpack_frame(b)[2]["rows_per_block"]))
                    opened.append(runtime.decrypt_coefficients(eb.load_masked_histogram(key, b, layout), layout.total_positions))
    assert opened, "no masked histogram found: the attack read nothing"
    values = np.concatenate(opened).astype(np.float64) / runtime.plain_modulus
    assert stats.kstest(values, "uniform").pvalue > 1e-6, "what the feature holder decrypts is not uniform"


def _frames(content) -> list[bytes]:
    from privacy_view import all_blobs

    out, todo = [], list(all_blobs(content))
    while todo:
        data = bytes(todo.pop())
        if data[:4] != b"FRSK":
            continue
        out.append(data)
        from fedrisk.crypto.frames import unpack_frame

        try:
            todo += [bytes(b) for b in unpack_frame(data)[3] if bytes(b[:4]) == b"FRSK"]
        except Exception:
            continue
    return out


def test_curious_feature_holder_infers_no_labels_from_anything_it_can_read(sb):
    """Labels guessed (both orientations) from every readable vector of label length but the node row sets;
    the node row sets — SecureBoost's inherent disclosure — must not be the labels in disguise."""
    tap = sb["tap"]
    bank = tap.protocol("bank", "LabelHolderAlignment").aligned
    train = np.asarray(bank.train_mask, dtype=bool)
    y_train, y_all = np.asarray(bank.y)[train], np.asarray(bank.y)
    view = view_of(tap.received_by("tax_bureau"), "tax_bureau")
    tried, node_sets = 0, 0
    for part in view.parts:
        for name, vector in part.vectors:
            node_set = part.kind == ROWS and name not in ("bitmap", "train_mask")
            for y in (y_train, y_all):
                if vector.size != y.size:
                    continue
                if node_set:
                    node_sets += 1
                    if np.std(vector) > 0:
                        r = abs(np.corrcoef(vector, y)[0, 1])
                        assert r < 0.8, f"{part.where} {name} is the label vector in disguise (|r| = {r:.3f})"
                    continue
                for sign in (1.0, -1.0):
                    recovery = label_recovery(sign * vector, y)
                    tried += 1
                    assert not recovery.leaks, f"{part.where} {name}: {recovery}"
    print(f"feature holder: {tried} readable label-length guesses, {node_sets} node row sets checked")
    assert tried >= 2, "the row split the feature holder receives was not found: the attack read nothing"
    assert node_sets >= TREES, "no node row sets found: the attack read nothing"


def test_curious_coordinator_sees_only_ciphertexts_public_payloads_and_no_secret(sb):
    tap, result = sb["tap"], sb["result"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    secrets = vertical_secrets(tap, sb["data"], role="coordinator", residuals=_gradients(tap))
    findings = audit(view, secrets, allowed=FEATURE_HOLDER_MAY_SEE | {MASKED}, fingerprint=_federation_keys(tap, result))
    assert not findings, "\n".join(map(str, findings))
    assert all(not decrypts(k.context) for k in view.ring.keys) and view.ring.keys


def test_curious_coordinator_reads_nothing_from_ciphertext_sizes(sb):
    view = view_of(sb["tap"].received_by("coordinator"), "coordinator")
    findings = ciphertext_size_findings(view)
    assert not findings, "\n".join(map(str, findings))
