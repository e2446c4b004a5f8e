"""Sealing a secret CKKS context to a peer party."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fedrisk.crypto.ckks import AGGREGATION, KeyHolderContext, decrypt_vector, encrypt_vector
from fedrisk.crypto.envelope import PartyKeyPair, envelope_aad, open_sealed, seal
from fedrisk.errors import CryptoError

AAD = envelope_aad("run-42", "bank_b")


@pytest.fixture(scope="module")
def bank_a() -> PartyKeyPair:
    return PartyKeyPair.generate()


@pytest.fixture(scope="module")
def bank_b() -> PartyKeyPair:
    return PartyKeyPair.generate()


def test_round_trip_of_a_secret_ckks_context(bank_b: PartyKeyPair) -> None:
    ctx = KeyHolderContext.generate(AGGREGATION)
    sealed = seal(bank_b.public_bytes(), ctx.to_bytes(), aad=AAD)
    assert len(sealed) == len(ctx.to_bytes()) + 54
    opened = KeyHolderContext.from_bytes(open_sealed(bank_b, sealed, aad=AAD))
    assert opened.fingerprint == ctx.fingerprint
    # Bank B can now decrypt what bank A encrypted.
    x = np.linspace(-3, 3, 100)
    assert np.abs(decrypt_vector(opened, encrypt_vector(ctx, x)) - x).max() < 1e-6


def test_sealing_is_randomised(bank_b: PartyKeyPair) -> None:
    assert seal(bank_b.public_bytes(), b"secret", aad=AAD) != seal(bank_b.public_bytes(), b"secret", aad=AAD)


def test_wrong_recipient(bank_a: PartyKeyPair, bank_b: PartyKeyPair) -> None:
    sealed = seal(bank_b.public_bytes(), b"secret", aad=AAD)
    with pytest.raises(CryptoError, match="cannot open sealed message"):
        open_sealed(bank_a, sealed, aad=AAD)


@pytest.mark.parametrize(
    "aad",
    [envelope_aad("run-43", "bank_b"), envelope_aad("run-42", "bank_c"), b"", AAD + b"\x00"],
)
def test_wrong_aad(bank_b: PartyKeyPair, aad: bytes) -> None:
    sealed = seal(bank_b.public_bytes(), b"secret", aad=AAD)
    with pytest.raises(CryptoError, match="cannot open sealed message"):
        open_sealed(bank_b, sealed, aad=aad)


def test_every_tampered_byte_is_detected(bank_b: PartyKeyPair) -> None:
    sealed = seal(bank_b.public_bytes(), b"a small secret", aad=AAD)
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x80
        with pytest.raises(CryptoError):
            open_sealed(bank_b, bytes(tampered), aad=AAD)


def test_truncated_or_extended(bank_b: PartyKeyPair) -> None:
    sealed = seal(bank_b.public_bytes(), b"a small secret", aad=AAD)
    for cut in (0, 4, 37, 38, 53, len(sealed) - 1):
        with pytest.raises(CryptoError):
            open_sealed(bank_b, sealed[:cut], aad=AAD)
    with pytest.raises(CryptoError):
        open_sealed(bank_b, sealed + b"\x00", aad=AAD)


def test_sender_authentication(bank_a: PartyKeyPair, bank_b: PartyKeyPair) -> None:
    relay = PartyKeyPair.generate()  # e.g. a coordinator substituting its own context
    sealed = seal(bank_b.public_bytes(), b"ctx", aad=AAD, sender=bank_a)
    assert open_sealed(bank_b, sealed, aad=AAD, sender_public=bank_a.public_bytes()) == b"ctx"
    forged = seal(bank_b.public_bytes(), b"evil ctx", aad=AAD, sender=relay)
    with pytest.raises(CryptoError, match="cannot open sealed message"):
        open_sealed(bank_b, forged, aad=AAD, sender_public=bank_a.public_bytes())
    # Mode mismatches are refused both ways.
    with pytest.raises(CryptoError, match="sender-authenticated"):
        open_sealed(bank_b, sealed, aad=AAD)
    unauth = seal(bank_b.public_bytes(), b"ctx", aad=AAD)
    with pytest.raises(CryptoError, match="not sender-authenticated"):
        open_sealed(bank_b, unauth, aad=AAD, sender_public=bank_a.public_bytes())
    # Downgrading an authenticated message to base mode fails too.
    downgraded = bytearray(sealed)
    downgraded[5] = 0
    with pytest.raises(CryptoError):
        open_sealed(bank_b, bytes(downgraded), aad=AAD)


def test_invalid_public_keys_are_refused(bank_b: PartyKeyPair) -> None:
    with pytest.raises(CryptoError, match="32 raw"):
        seal(b"\x01" * 31, b"x", aad=AAD)
    with pytest.raises(CryptoError, match="low-order"):
        seal(b"\x00" * 32, b"x", aad=AAD)  # the identity point: all-zero shared secret
    sealed = bytearray(seal(bank_b.public_bytes(), b"x", aad=AAD))
    sealed[6:38] = b"\x00" * 32  # replace the ephemeral key by a low-order point
    with pytest.raises(CryptoError):
        open_sealed(bank_b, bytes(sealed), aad=AAD)


def test_key_pair_save_load(tmp_path, bank_b: PartyKeyPair) -> None:
    old = os.umask(0)
    try:
        path = bank_b.save(tmp_path / "bank_b.x25519.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    loaded = PartyKeyPair.load(path)
    assert loaded.public_bytes() == bank_b.public_bytes()
    assert loaded.key_id == bank_b.key_id and len(bank_b.key_id) == 16
    sealed = seal(bank_b.public_bytes(), b"secret", aad=AAD)
    assert open_sealed(loaded, sealed, aad=AAD) == b"secret"
    path.chmod(0o640)
    with pytest.raises(CryptoError, match="0640"):
        PartyKeyPair.load(path)


def test_load_raw_and_wrong_key_types(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedrisk.crypto.keyfiles import write_secret_file

    raw = os.urandom(32)
    write_secret_file(tmp_path / "raw.key", raw)
    assert len(PartyKeyPair.load(tmp_path / "raw.key").public_bytes()) == 32
    ed = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret_file(tmp_path / "ed.pem", ed)
    with pytest.raises(CryptoError, match="not an X25519"):
        PartyKeyPair.load(tmp_path / "ed.pem")
    write_secret_file(tmp_path / "junk.pem", b"junk")
    with pytest.raises(CryptoError):
        PartyKeyPair.load(tmp_path / "junk.pem")


def test_aad_encoding_is_unambiguous() -> None:
    assert envelope_aad("ab", "c") != envelope_aad("a", "bc")
    assert envelope_aad("r", "p", purpose="x") != envelope_aad("r", "p")
