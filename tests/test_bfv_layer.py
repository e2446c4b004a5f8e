"""BFV recipes (fedrisk.crypto.bfv): one place loads SecureBoost's and WOE's contexts, and checks them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tenseal as ts

from fedrisk.crypto.bfv import (
    load_key_holder_bfv_context,
    load_public_bfv_context,
    make_bfv_context,
    public_bfv_context,
    public_bfv_context_bytes,
)
from fedrisk.crypto.encrypted_histogram import BFVRuntime
from fedrisk.crypto.seal_runtime import context_fingerprint
from fedrisk.errors import CryptoError, ProtocolError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def secret() -> ts.Context:
    return make_bfv_context()


def _one_line(exc: pytest.ExceptionInfo[BaseException], kind: type[Exception]) -> str:
    assert isinstance(exc.value, kind), type(exc.value)
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


def test_public_copies_load_checked_with_one_fingerprint_and_seeded_keys(secret):
    fh_bytes = public_bfv_context_bytes(secret, galois=True)
    fh = load_public_bfv_context(fh_bytes, "feature holder 'tax'")
    co = load_public_bfv_context(public_bfv_context_bytes(secret, galois=False), "coordinator")
    assert not fh.is_private() and not co.is_private()
    assert context_fingerprint(fh) == context_fingerprint(co) == context_fingerprint(secret)
    # The seeded Galois keys survive the load, so worker processes get the half-size form.
    assert len(fh._fedrisk_seeded_galois) == len(secret._fedrisk_seeded_galois)
    BFVRuntime.for_context(fh)  # the kernel accepts it: all the Galois keys it needs are there
    assert not public_bfv_context(secret).is_private()


def test_a_secret_key_is_refused_before_tenseal_loads_it(secret):
    blob = secret.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    with pytest.raises(CryptoError) as exc:
        load_public_bfv_context(blob, "feature holder 'tax'")
    assert _one_line(exc, CryptoError).startswith("feature holder 'tax': ")
    assert "secret key" in str(exc.value)


def test_other_parameters_are_refused_by_name():
    small = ts.context(ts.SCHEME_TYPE.BFV, 8192, 786433, coeff_mod_bit_sizes=[60, 60, 60])
    blob = small.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    with pytest.raises(CryptoError) as exc:
        load_public_bfv_context(blob, "coordinator")
    message = _one_line(exc, CryptoError)
    assert message.startswith("coordinator: ") and "N=8192" in message and "recipe" in message
    ckks = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    with pytest.raises(CryptoError) as exc:
        load_public_bfv_context(ckks.serialize(save_secret_key=False), "coordinator")
    assert "BFV" in _one_line(exc, CryptoError)


@pytest.mark.parametrize("blob", [b"", b"garbage" * 10, b"FRSK" + bytes(40)])
def test_garbage_is_a_protocol_error(blob):
    with pytest.raises(ProtocolError) as exc:
        load_public_bfv_context(blob, "feature holder 'tax'")
    assert _one_line(exc, ProtocolError).startswith("feature holder 'tax': ")


def test_the_key_holder_reloads_its_own_context_and_nothing_else(secret):
    saved = secret.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    again = load_key_holder_bfv_context(saved, "label holder 'bank'")
    assert again.is_private() and context_fingerprint(again) == context_fingerprint(secret)
    with pytest.raises(CryptoError) as exc:
        load_key_holder_bfv_context(public_bfv_context_bytes(secret, galois=False), "label holder 'bank'")
    assert "no secret key" in _one_line(exc, CryptoError)
    with pytest.raises(ProtocolError):
        load_key_holder_bfv_context(b"not a context", "label holder 'bank'")


def test_no_bfv_context_is_loaded_outside_the_crypto_layer():
    """Models, parties and the coordinator go through the recipes; only fedrisk/crypto calls ts.context_from."""
    offenders = []
    for path in (ROOT / "fedrisk").rglob("*.py"):
        if path.parent.name == "crypto":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"context_from", "load_public_tenseal"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize("bits", [0, 5, 62, 63, 64, 100, 110, 126, 127, 128, 162, 190])
def test_flooding_noise_residues_are_exactly_the_python_integers_residues(bits, monkeypatch):
    """The uint64 reduction (Shoup's quotient over 32-bit partial products) against Python integers on the same bytes, edges included."""
    import os

    import numpy as np

    from fedrisk.crypto.bfv import uniform_noise_rns

    n, width = 2000, bits + 1
    size = 8 * max(2, -(-width // 64))  # bytes drawn per value
    raw = bytearray(os.urandom(size * n))
    raw[: 2 * size], raw[2 * size : 4 * size] = b"\xff" * 2 * size, b"\x00" * 2 * size  # the largest and the smallest draw
    monkeypatch.setattr(os, "urandom", lambda k: bytes(raw[:k]))
    moduli = [(1 << 60) - (1 << 14) + 1, 3, 65537, (1 << 62) + 135, (1 << 63) - 25]
    got = uniform_noise_rns(moduli, n, bits)

    expected = [(int.from_bytes(raw[size * i : size * (i + 1)], "little") & ((1 << width) - 1)) - (1 << bits) for i in range(n)]
    assert got.dtype == np.uint64 and got.shape == (len(moduli), n)
    assert np.array_equal(got, np.array([[v % q for v in expected] for q in moduli], dtype=np.uint64))


def test_uniform_residues_are_the_128_bit_draws_reduced(monkeypatch):
    import os

    import numpy as np

    from fedrisk.crypto.bfv import uniform_residues

    raw = os.urandom(16 * 500)
    monkeypatch.setattr(os, "urandom", lambda k: raw[:k])
    q = (1 << 59) - 55
    expected = [int.from_bytes(raw[16 * i : 16 * (i + 1)], "little") % q for i in range(500)]
    assert np.array_equal(uniform_residues(q, 500), np.array(expected, dtype=np.uint64))


def test_flooding_noise_refuses_moduli_it_cannot_reduce_exactly():
    from fedrisk.crypto.bfv import uniform_noise_rns

    with pytest.raises(CryptoError, match="between 2 and 2\\^63"):
        uniform_noise_rns([1 << 63], 8, 10)
