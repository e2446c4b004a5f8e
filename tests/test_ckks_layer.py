"""One CKKS layer: recipes (fedrisk.crypto.ckks) over hazmat (the kernels), one context type, one fingerprint."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedrisk.crypto import ckks
from fedrisk.crypto.ckks import AGGREGATION, VERTICAL_LR, KeyHolderContext, PublicContext
from fedrisk.crypto.encrypted_matvec import CKKSRuntime, EncryptedMatVec, EncryptedVector, residual_level, residual_scale
from fedrisk.crypto.frames import FINGERPRINT_BYTES, pack_frame, peek_frame, unpack_frame
from fedrisk.crypto.seal_runtime import context_anatomy, context_fingerprint
from fedrisk.errors import ContextMismatchError, CryptoError, ProtocolError
from fedrisk.models.in_process import public_copies
from fedrisk.models.vertical_lr import CoordinatorLR, EncryptedResidual, FeatureHolderLR, LabelHolderLR, TrainingPlan, make_context

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def secret() -> KeyHolderContext:
    return make_context()


@pytest.fixture(scope="module")
def other() -> KeyHolderContext:
    return make_context(galois=False)


def _one_line_crypto_error(exc: pytest.ExceptionInfo[BaseException]) -> str:
    assert isinstance(exc.value, CryptoError), type(exc.value)
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


# --------------------------------------------------------------------------- one fingerprint


def test_one_fingerprint_for_the_same_context_across_the_layers(secret, other):
    fp = secret.fingerprint
    assert len(fp) == 2 * FINGERPRINT_BYTES == 32 and int(fp, 16) >= 0  # 128 bits
    copies = public_copies(secret)
    x = np.linspace(-1, 1, 50)
    seen = {
        "recipe, key holder": fp,
        "hazmat fingerprint of the recipe": context_fingerprint(secret),
        "hazmat fingerprint of its TenSEAL context": context_fingerprint(secret.tenseal_context),
        "public copy (feature holder)": copies.feature_holder.fingerprint,
        "public copy (coordinator, no Galois keys)": copies.coordinator.fingerprint,
        "public context reloaded from bytes": PublicContext.from_bytes(secret.public_bytes()).fingerprint,
        "key holder reloaded from bytes": KeyHolderContext.from_bytes(secret.to_bytes()).fingerprint,
        "context frame": peek_frame(secret.public_bytes())[1],
        "CKKS runtime (hazmat)": CKKSRuntime.for_context(copies.feature_holder).fingerprint,
        "matvec payload (hazmat)": EncryptedVector.encrypt(copies.feature_holder, x).fingerprint,
        "FedAvg payload (recipes)": ckks.encrypt_vector(copies.coordinator, x).fingerprint,
        "label holder model": LabelHolderLR(secret).fingerprint,
        "coordinator model": CoordinatorLR(copies.coordinator, label_holder="bank", feature_holders=["tax"]).fingerprint,
    }
    assert set(seen.values()) == {fp}, {k: v for k, v in seen.items() if v != fp}
    assert other.fingerprint != fp and len({other.fingerprint, fp, make_context(galois=False).fingerprint}) == 3


def test_the_bfv_kernel_uses_the_same_fingerprint_function():
    from fedrisk.crypto.bfv import BFVRuntime
    from fedrisk.crypto.encrypted_histogram import make_histogram_context

    bfv = make_histogram_context()
    fp = context_fingerprint(bfv)
    assert len(fp) == 32
    assert BFVRuntime.for_context(bfv).fingerprint == fp
    assert context_fingerprint(public_copies(bfv).feature_holder) == fp


def test_payloads_carry_the_full_128_bit_fingerprint(secret):
    fp = secret.fingerprint
    frame = TrainingPlan(fp, "bank", ("tax",), np.ones(4, bool), 1e-3, 2.0, 3).to_bytes()
    assert frame[4] == 2 and frame[9 : 9 + FINGERPRINT_BYTES].hex() == fp
    assert unpack_frame(frame)[1] == fp
    with pytest.raises(ProtocolError, match="32 hex digits"):
        pack_frame(b"TEST", fp[:16], {})  # the old 64-bit fingerprints are refused


# --------------------------------------------------------------------------- refusals, one line each


def test_a_payload_from_another_context_is_refused(secret, other):
    pub = public_copies(secret).feature_holder
    foreign_runtime = CKKSRuntime.for_context(other)
    blobs = foreign_runtime.encrypt(np.zeros(10), residual_level(foreign_runtime), residual_scale())
    data = EncryptedResidual(other.fingerprint, "bank", 0, 10, tuple(blobs)).to_bytes()
    with pytest.raises(ContextMismatchError) as exc:
        EncryptedResidual.from_bytes(data, context=pub)
    assert other.fingerprint in _one_line_crypto_error(exc)
    with pytest.raises(ContextMismatchError) as exc:
        ckks.decrypt_vector(secret, ckks.encrypt_vector(other.public_context(minimal=True), np.ones(3)))
    _one_line_crypto_error(exc)


def test_a_tampered_context_is_refused(secret, other):
    data = secret.public_bytes(minimal=True)
    kind, fp, header, (tenseal_bytes,) = unpack_frame(data)
    # the other key under this context's fingerprint: swapped in transit
    _, _, _, (foreign,) = unpack_frame(other.public_bytes(minimal=True))
    with pytest.raises(CryptoError) as exc:
        PublicContext.from_bytes(pack_frame(kind, fp, header, [foreign]))
    assert "tampered" in _one_line_crypto_error(exc)
    # one flipped byte in the public key
    key = context_anatomy(tenseal_bytes).public_key
    at = tenseal_bytes.index(key) + len(key) // 2
    flipped = tenseal_bytes[:at] + bytes([tenseal_bytes[at] ^ 0x01]) + tenseal_bytes[at + 1 :]
    with pytest.raises(CryptoError) as exc:
        PublicContext.from_bytes(pack_frame(kind, fp, header, [flipped]))
    _one_line_crypto_error(exc)
    # a secret context where a public one is expected, and parameters the protocol does not use
    with pytest.raises(CryptoError) as exc:
        PublicContext.from_bytes(secret.to_bytes())
    _one_line_crypto_error(exc)
    with pytest.raises(CryptoError) as exc:
        PublicContext.from_bytes(KeyHolderContext.generate(AGGREGATION).public_bytes(), expect=VERTICAL_LR)
    assert "expected" in _one_line_crypto_error(exc)


def test_the_party_loader_checks_what_it_receives(secret):
    from fedrisk.parties.vertical_lr import load_public_context

    loaded = load_public_context(secret.public_bytes(), "feature holder 'tax'")
    assert isinstance(loaded, PublicContext) and loaded.fingerprint == secret.fingerprint
    with pytest.raises(CryptoError) as exc:
        load_public_context(secret.to_bytes(), "feature holder 'tax'")
    assert _one_line_crypto_error(exc).startswith("feature holder 'tax': ")
    raw_secret = secret.tenseal_context.serialize(save_secret_key=True)
    with pytest.raises(CryptoError) as exc:
        load_public_context(raw_secret, "coordinator")
    _one_line_crypto_error(exc)


def test_each_role_takes_only_its_context_type(secret):
    pub = public_copies(secret).feature_holder
    raw_public = ts.context_from(secret.tenseal_context.serialize(save_secret_key=False))
    for make in (
        lambda: LabelHolderLR(pub),
        lambda: LabelHolderLR(secret.tenseal_context),
        lambda: FeatureHolderLR(secret, name="tax"),
        lambda: FeatureHolderLR(raw_public, name="tax"),
        lambda: CoordinatorLR(secret, label_holder="bank", feature_holders=["tax"]),
        lambda: CoordinatorLR(raw_public, label_holder="bank", feature_holders=["tax"]),
    ):
        with pytest.raises(CryptoError) as exc:
            make()
        _one_line_crypto_error(exc)


# --------------------------------------------------------------------------- public copies


def test_public_copies_hold_no_secret_key(secret):
    copies = public_copies(secret)
    for name, copy, size in (
        ("feature holder", copies.feature_holder, copies.feature_holder_bytes),
        ("coordinator", copies.coordinator, copies.coordinator_bytes),
    ):
        assert isinstance(copy, PublicContext) and not copy.is_key_holder, name
        raw = copy.tenseal_context
        assert not raw.is_private() and not raw.has_secret_key(), name
        with pytest.raises(ValueError):  # TenSEAL itself cannot decrypt with it
            ts.ckks_vector(raw, [1.0]).decrypt()
        assert size == len(copy.to_bytes())
    assert copies.feature_holder.tenseal_context.has_galois_keys()  # the packed product rotates
    assert not copies.coordinator.tenseal_context.has_galois_keys()  # the coordinator only adds
    for data in (secret.public_bytes(), secret.public_bytes(minimal=True)):
        _, _, _, (tenseal_bytes,) = unpack_frame(data)
        assert not context_anatomy(tenseal_bytes).has_secret_key


def test_the_kernel_takes_the_recipe_context(secret):
    """Hazmat beneath recipes: X^T[[d]] with the recipe's public copy, decrypted by the recipe's key holder."""
    from fedrisk.crypto.encrypted_matvec import decrypt_ciphertexts, reduce_product

    rng = np.random.default_rng(0)
    X, d = rng.normal(size=(300, 5)), rng.uniform(-1, 1, 300)
    runtime = CKKSRuntime.for_context(secret)
    enc = EncryptedVector.encrypt(secret, d, level=residual_level(runtime), scale=residual_scale())
    with EncryptedMatVec(X, public_copies(secret).feature_holder) as kernel:
        blobs, state = kernel.mask(kernel.compute(EncryptedVector.from_bytes(enc.to_bytes(), context=kernel.context)))
        values = reduce_product(decrypt_ciphertexts(secret, blobs), kernel.layout_.group_sizes, runtime.slots, reduced=kernel.reduced_)
        np.testing.assert_allclose(kernel.unmask(values, state), X.T @ d, atol=0.1)


# --------------------------------------------------------------------------- nobody above crypto builds a CKKS context

#: ``tenseal`` calls that build or load a context.
BUILDERS = {
    ("ts", "context"),
    ("ts", "context_from"),
    ("tenseal", "context"),
    ("tenseal", "context_from"),
    ("Context", "load"),
    ("ts", "Context"),
    ("tenseal", "Context"),
}
#: Files that may still build TenSEAL contexts: both run on SecureBoost's exact BFV context (hazmat,
#: fedrisk.crypto.encrypted_histogram), which has no recipes layer (CKKS only).
BFV_PATHS = {
    "fedrisk/parties/secureboost.py": "SecureBoost party: reloads its BFV secret context after a restart",
    "fedrisk/models/woe.py": "WOE binning: public copies of SecureBoost's BFV histogram context",
}


def _context_builders(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else None
        if (name, node.func.attr) in BUILDERS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}.{node.func.attr}(")
        if (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "serialize"
            and any(k.arg == "save_secret_key" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .serialize(save_secret_key=True)")
    return found


def test_no_caller_above_crypto_builds_or_loads_a_tenseal_context():
    files = sorted(p for d in ("models", "parties", "federation") for p in (ROOT / "fedrisk" / d).rglob("*.py"))
    assert len(files) > 20
    offenders = [hit for p in files if str(p.relative_to(ROOT)) not in BFV_PATHS for hit in _context_builders(p)]
    assert not offenders, offenders
    # the scan does see them where they are (BFV), so an empty result means something
    assert any(_context_builders(ROOT / path) for path in BFV_PATHS)
