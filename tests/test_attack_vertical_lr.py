"""Vertical logistic regression, attacked by each curious role with only the messages it really received.

A small real federation (bank = label holder, 2,000 × 13; tax bureau = feature
holder, 1,900 × 10, 1,700 rows in common; the UCI default-credit hetero split with
credit-code IDs) runs through the fedrisk ServerApp and ClientApps over the
InProcessGrid; the tap keeps every message. Each attacker then works on what its
role received, parsed by :mod:`privacy_view` (never by the declared content class):

* the **feature holder** knows its own features, its own masks and everything
  relayed to it over all epochs; it solves by least squares for the residual
  d = σ(z) − y of every epoch from the gradient values it gets back, and guesses
  the labels (y = 1 where d < 0, or the k most negative d). Its recovery must stay
  within 4 standard errors of the base rate on the rows it covers;
* the **coordinator** holds every message: each part must parse as a ciphertext
  under the federation key, a public context that cannot decrypt, a sealed blob,
  PSI points or a public-by-protocol payload; no label, residual, feature column,
  raw ID or the intersection size may appear anywhere; ciphertext sizes must be
  those of encryptions of zeros (nothing to read from sizes).
"""

from __future__ import annotations

import numpy as np
import pytest

from privacy_view import (
    CIPHERTEXT,
    MASKED,
    PUBLIC_CONTEXT,
    Tap,
    audit,
    capture_residuals,
    ciphertext_size_findings,
    decrypts,
    label_recovery,
    run_federation,
    vertical_config,
    vertical_parties,
    vertical_secrets,
    view_of,
)

EPOCHS = 5


def _snapshot_masks(tap: Tap, party: str):
    """Before each message reaches the feature holder: copies of its own mask state and last gradient (what it knows)."""

    def hook(captured):
        if captured.direction != "to_party" or captured.party != party:
            return
        try:
            model = tap.protocol(party, "FeatureHolderVerticalLR").model
        except LookupError:
            return
        if model is None:
            return
        captured.state["arrays"] = _private_arrays(model)
        gradient = getattr(model, "last_gradient_", None)
        captured.state["last_gradient"] = None if gradient is None else np.array(gradient, dtype=float)

    return hook


def _private_arrays(obj, path: str = "", depth: int = 0) -> dict[str, np.ndarray]:
    """Arrays under attributes named like masks/offsets, two levels deep (the feature holder's own mask record)."""
    out: dict[str, np.ndarray] = {}
    if depth > 2 or not hasattr(obj, "__dict__"):
        return out
    for name, value in vars(obj).items():
        here = f"{path}.{name}" if path else name
        interesting = any(w in here.lower() for w in ("mask", "offset"))
        if isinstance(value, np.ndarray) and interesting and value.dtype.kind == "f":
            out[here] = value.copy()
        elif interesting and hasattr(value, "__dict__") and not isinstance(value, type):
            out.update(_private_arrays(value, here, depth + 1))
    return out


@pytest.fixture(scope="module")
def vlr(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("attack_vlr")
    parties, data = vertical_parties(root, default_credit_dir)
    tap = Tap()
    tap.hooks.append(_snapshot_masks(tap, "tax_bureau"))
    with pytest.MonkeyPatch.context() as mp:
        residuals = capture_residuals(mp)
        result = run_federation(root, parties, vertical_config("attack-vlr", epochs=EPOCHS, patience=50), tap)
    assert result["status"] == "ok", result
    yield {"root": root, "result": result, "tap": tap, "data": data, "residuals": residuals}
    tap.close()


# --------------------------------------------------------------------------- feature holder


def test_feature_holder_receives_only_ciphertexts_public_payloads_and_its_masked_gradient(vlr):
    tap, result = vlr["tap"], vlr["result"]
    view = view_of(tap.received_by("tax_bureau"), "tax_bureau")
    secrets = vertical_secrets(tap, vlr["data"], role="feature_holder", residuals=vlr["residuals"])
    findings = audit(view, secrets, fingerprint=result["key_fingerprint"])
    assert not findings, "\n".join(map(str, findings))
    kinds = view.kinds()
    assert kinds.get(CIPHERTEXT, 0) >= EPOCHS  # [[d]] every epoch, each verified under the federation key
    assert kinds.get(MASKED, 0) >= EPOCHS - 1
    # Its context is the label holder's public one: it must not decrypt (and the check can fail: the bank's does).
    assert [k.fingerprints for k in view.ring.keys if result["key_fingerprint"] in k.fingerprints]
    for key in view.ring.keys:
        assert not key.context.is_private() and not key.context.has_secret_key()
        assert not decrypts(key.context)
    bank_model = tap.protocol("bank", "LabelHolderVerticalLR").model
    assert decrypts(bank_model.context), "positive control: the key holder's context does decrypt"


def _design_rows(model) -> np.ndarray:
    """The feature holder's own standardised training rows (its X, as its kernel uses it)."""
    Z, train = getattr(model, "_Z", None), getattr(model, "_train", None)
    if Z is None or train is None:
        raise AssertionError("the feature holder model no longer exposes its rows as _Z/_train: update the attack")
    return np.asarray(Z, dtype=float)[np.asarray(train, dtype=bool)]


def _linear_map(Z: np.ndarray, q: int, layout):
    """Which combination of d each of the ``q`` received gradient values is (the feature holder knows its own layout)."""
    import scipy.sparse as sp

    n, m = Z.shape
    if q == m:
        return sp.csr_matrix(Z.T)
    if layout is not None and q == layout.n_ciphertexts * layout.slots:
        # Packed product: slot f·L + i of group (start, F) sums feature start+f over the rows r ≡ i (mod L) of every chunk.
        S = layout.slots
        rows, cols, vals = [], [], []
        r = np.arange(n)
        t = r % S
        for g, (start, size) in enumerate(layout.groups):
            L = S // size
            for f in range(size):
                rows.append(g * S + f * L + t % L)
                cols.append(r)
                vals.append(Z[:, start + f])
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(q, n))
    raise AssertionError(f"the feature holder receives {q} gradient values for {m} features: unknown layout, update the attack")


def _unmasked_receipts(tap: Tap, party: str) -> list[tuple[int, np.ndarray]]:
    """Per epoch, the gradient values the feature holder received, with its own mask removed."""
    received = tap.received_by(party)
    view = view_of(received, party)
    out = []
    for i, message in enumerate(view.messages):
        for part in message.parts:
            if part.kind != MASKED:
                continue
            values = next(v for name, v in part.vectors if name == "masked")
            arrays = message.captured.state.get("arrays", {})
            same = [a for a in arrays.values() if a.size == values.size]
            if same:
                out.append((message.round, values - same[0]))
                continue
            later = next((m.state.get("last_gradient") for m in received[i + 1 :] if m.state.get("last_gradient") is not None), None)
            if later is None or later.size != values.size:
                raise AssertionError(f"cannot unmask the {values.size} values of {part.where} with the feature holder's own state")
            out.append((message.round, later))
    return out


def test_curious_feature_holder_solving_for_residuals_learns_no_labels(vlr):
    """Least squares for d from every gradient value received over all epochs, then labels from d's sign."""
    from scipy.sparse.linalg import lsqr

    tap = vlr["tap"]
    model = tap.protocol("tax_bureau", "FeatureHolderVerticalLR").model
    Z = _design_rows(model)
    covered = np.any(Z != 0, axis=1)  # rows the tax bureau knows; it can learn nothing about the others
    bank = tap.protocol("bank", "LabelHolderAlignment").aligned
    y = np.asarray(bank.y)[np.asarray(bank.train_mask, dtype=bool)]  # truth, in training order
    receipts = _unmasked_receipts(tap, "tax_bureau")
    assert len(receipts) >= EPOCHS - 1, "the feature holder received too few gradients to attack"
    estimates = []
    reports = []
    for epoch, u in receipts:
        A = _linear_map(Z, u.size, getattr(model, "layout_", None))
        d_hat = lsqr(A, u, atol=1e-12, btol=1e-12, iter_lim=2000)[0]
        estimates.append(d_hat)
        recovery = label_recovery(d_hat[covered], y[covered])
        reports.append((f"epoch {epoch}", recovery))
    reports.append(("mean over epochs", label_recovery(np.mean(estimates, axis=0)[covered], y[covered])))
    for name, recovery in reports:
        print(f"feature holder, {name}: {recovery}")
    leaks = [f"{name}: {r}" for name, r in reports if r.leaks]
    assert not leaks, "the feature holder recovers labels from what it received:\n" + "\n".join(leaks)


# --------------------------------------------------------------------------- coordinator


def test_curious_coordinator_sees_only_ciphertexts_public_payloads_and_no_secret(vlr):
    tap, result = vlr["tap"], vlr["result"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    secrets = vertical_secrets(tap, vlr["data"], role="coordinator", residuals=vlr["residuals"])
    findings = audit(view, secrets, fingerprint=result["key_fingerprint"])
    assert not findings, "\n".join(map(str, findings))
    coordinator_keys = [k for k in view.ring.keys if result["key_fingerprint"] in k.fingerprints]
    assert coordinator_keys and all(not decrypts(k.context) for k in view.ring.keys)
    assert view.kinds().get(PUBLIC_CONTEXT, 0) >= 2


def test_curious_coordinator_reads_nothing_from_sizes(vlr):
    """Sizes: each ciphertext is as long as an encryption of zeros at its level, and every epoch looks the same."""
    tap = vlr["tap"]
    view = view_of(tap.received_by("coordinator"), "coordinator")
    findings = ciphertext_size_findings(view)
    assert not findings, "\n".join(map(str, findings))
    shapes: dict[tuple[str, str], set] = {}
    for message in view.messages:
        if message.step.startswith("vlr.") and 0 < message.round < EPOCHS:
            key = (message.step, message.captured.direction)
            shapes.setdefault(key, set()).add(tuple(sorted((p.key, p.kind, len(p.levels)) for p in message.parts if p.kind in (CIPHERTEXT, MASKED))))
    varying = {k: v for k, v in shapes.items() if len(v) > 1}
    assert not varying, f"message shapes vary between epochs: {varying}"
