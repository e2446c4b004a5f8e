"""CKKS contexts, fingerprints and encrypted vector payloads."""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import time

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrisk.crypto import ckks
from fedrisk.crypto.ckks import (
    AGGREGATION,
    COMPUTE,
    CKKSParams,
    EncryptedVector,
    KeyHolderContext,
    PublicContext,
    add_encrypted,
    decrypt_vector,
    encrypt_vector,
    from_tenseal_vectors,
    to_tenseal_vectors,
)
from fedrisk.errors import ContextMismatchError, CryptoError


@pytest.fixture(scope="module")
def agg() -> KeyHolderContext:
    return KeyHolderContext.generate(AGGREGATION)


@pytest.fixture(scope="module")
def agg_pub(agg: KeyHolderContext) -> PublicContext:
    return agg.public_context()


@pytest.fixture(scope="module")
def other() -> KeyHolderContext:
    return KeyHolderContext.generate(AGGREGATION)


@pytest.fixture(scope="module")
def comp() -> KeyHolderContext:
    return KeyHolderContext.generate(COMPUTE)


@pytest.fixture(scope="module")
def sample_ev(agg_pub: PublicContext) -> EncryptedVector:
    rng = np.random.default_rng(3)
    return encrypt_vector(agg_pub, rng.uniform(-100, 100, 5000))


# --- parameters --------------------------------------------------------------


def test_presets_are_within_the_128_bit_bound() -> None:
    for p in (AGGREGATION, COMPUTE):
        assert sum(p.coeff_mod_bit_sizes) <= ckks.HE_STANDARD_MAX_LOGQ[p.poly_modulus_degree]
    assert AGGREGATION.slots == 4096
    assert AGGREGATION.value_limit == 2.0**17
    assert AGGREGATION.max_terms == 128
    assert not AGGREGATION.galois_keys and COMPUTE.galois_keys and COMPUTE.relin_keys


def test_insecure_parameters_are_refused_by_fedrisk_and_by_seal() -> None:
    with pytest.raises(CryptoError, match="insecure CKKS parameters"):
        CKKSParams(8192, (60, 60, 60, 60), 40, galois_keys=False, relin_keys=False)
    # SEAL enforces tc128 by itself too.
    with pytest.raises(ValueError, match="encryption parameters are not set correctly"):
        ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60, 60, 60])


def test_inconsistent_parameters_are_refused() -> None:
    with pytest.raises(CryptoError):
        CKKSParams(8000, (56, 56), 36, False, False)
    with pytest.raises(CryptoError):
        CKKSParams(8192, (56,), 36, False, False)
    with pytest.raises(CryptoError):
        CKKSParams(8192, (56, 56), 54, False, False)  # scale leaves no headroom
    with pytest.raises(CryptoError):
        dataclasses.replace(AGGREGATION, max_abs_value=2.0**20)  # above value_limit


def test_params_dict_round_trip() -> None:
    assert CKKSParams.from_dict(COMPUTE.to_dict()) == COMPUTE
    with pytest.raises(CryptoError):
        CKKSParams.from_dict({"poly_modulus_degree": 8192})


# --- round trips -------------------------------------------------------------


def test_aggregation_round_trip_accuracy(agg: KeyHolderContext, agg_pub: PublicContext) -> None:
    x = np.random.default_rng(0).uniform(-100, 100, 20_000)
    for ctx in (agg, agg_pub):  # public-key encryption works with either context
        y = decrypt_vector(agg, encrypt_vector(ctx, x))
        assert y.shape == x.shape and y.dtype == np.float64
        assert np.abs(y - x).max() < 1e-6


def test_compute_round_trip_accuracy(comp: KeyHolderContext) -> None:
    x = np.random.default_rng(1).uniform(-100, 100, 10_000)
    y = decrypt_vector(comp, encrypt_vector(comp, x))
    assert np.abs(y - x).max() < 1e-6


@pytest.mark.parametrize("n", [1, 4095, 4096, 4097, 8192, 8193, 20_000])
def test_complex_packing_round_trips_and_sums_at_any_length(agg: KeyHolderContext, agg_pub: PublicContext, n: int) -> None:
    rng = np.random.default_rng(n)
    x, y = rng.uniform(-100, 100, n), rng.uniform(-100, 100, n)
    total = add_encrypted(agg_pub, [encrypt_vector(agg_pub, x), encrypt_vector(agg_pub, y)])
    assert total.complex_packed and total.chunk_size == 2 * AGGREGATION.slots
    assert np.abs(decrypt_vector(agg, total) - (x + y)).max() < 1e-5


def test_complex_packing_halves_the_bytes_and_is_refused_by_the_raw_layer(agg_pub: PublicContext) -> None:
    x = np.random.default_rng(8).uniform(-1, 1, 50_000)
    packed, real = encrypt_vector(agg_pub, x), encrypt_vector(agg_pub, x, packing="real")
    assert packed.nbytes < 0.55 * real.nbytes
    with pytest.raises(CryptoError, match="complex-packed"):
        to_tenseal_vectors(agg_pub, packed)
    with pytest.raises(CryptoError, match="packing"):
        add_encrypted(agg_pub, [packed, real])


def test_one_million_values_span_many_chunks(agg: KeyHolderContext, agg_pub: PublicContext) -> None:
    x = np.random.default_rng(2).uniform(-1, 1, 1_000_000)
    ev = encrypt_vector(agg_pub, x)
    assert ev.complex_packed and len(ev.chunks) == -(-1_000_000 // 8192) == 123  # two values per slot
    ev2 = EncryptedVector.from_bytes(ev.to_bytes())
    assert ev2 == ev
    assert np.abs(decrypt_vector(agg, ev2) - x).max() < 1e-6


def test_wire_bytes_per_value_meet_the_goal(sample_ev: EncryptedVector, agg_pub: PublicContext) -> None:
    x = np.random.default_rng(4).uniform(-100, 100, 100_000)
    ev = encrypt_vector(agg_pub, x)
    assert len(ev.to_bytes()) == ev.nbytes
    assert ev.nbytes / x.size <= 32.0


def test_encryption_speed_is_reasonable(agg: KeyHolderContext, agg_pub: PublicContext) -> None:
    # Measured here: ~0.075 s to encrypt and ~0.02 s to decrypt 100,000 values;
    # the bound is loose so that a busy CI runner does not flake.
    x = np.random.default_rng(5).uniform(-1, 1, 100_000)
    t0 = time.perf_counter()
    ev = encrypt_vector(agg_pub, x)
    t1 = time.perf_counter()
    decrypt_vector(agg, ev)
    t2 = time.perf_counter()
    assert t1 - t0 < 2.0 and t2 - t1 < 1.0


def test_add_encrypted_sums(agg: KeyHolderContext, agg_pub: PublicContext) -> None:
    rng = np.random.default_rng(6)
    xs = [rng.uniform(-100, 100, 9000) for _ in range(10)]
    evs = [encrypt_vector(agg_pub, x) for x in xs]
    total = add_encrypted(agg_pub, evs)
    assert total.terms == 10
    assert np.abs(decrypt_vector(agg, total) - np.sum(xs, axis=0)).max() < 1e-5
    again = add_encrypted(agg_pub, [total, evs[0]])
    assert again.terms == 11


def test_add_encrypted_refuses_bad_inputs(agg_pub: PublicContext, sample_ev: EncryptedVector) -> None:
    with pytest.raises(CryptoError, match="at least one"):
        add_encrypted(agg_pub, [])
    short = encrypt_vector(agg_pub, np.ones(10))
    with pytest.raises(CryptoError, match="length"):
        add_encrypted(agg_pub, [sample_ev, short])
    many = dataclasses.replace(sample_ev, terms=100)
    with pytest.raises(CryptoError, match="exceeds the 128"):
        add_encrypted(agg_pub, [many, many])


# --- keys and contexts ----------------------------------------------------------


def test_fingerprints(agg: KeyHolderContext, agg_pub: PublicContext, other: KeyHolderContext) -> None:
    assert agg.fingerprint == agg_pub.fingerprint
    assert len(agg.fingerprint) == 32 and int(agg.fingerprint, 16) >= 0
    assert agg.fingerprint != other.fingerprint
    assert KeyHolderContext.from_bytes(agg.to_bytes()).fingerprint == agg.fingerprint
    assert PublicContext.from_bytes(agg_pub.to_bytes()).fingerprint == agg.fingerprint


def test_public_context_cannot_decrypt(agg_pub: PublicContext, sample_ev: EncryptedVector) -> None:
    assert not agg_pub.tenseal_context.has_secret_key()
    with pytest.raises(CryptoError, match="public context cannot decrypt"):
        decrypt_vector(agg_pub, sample_ev)  # type: ignore[arg-type]
    # TenSEAL itself refuses too (the coordinator has no way round it).
    raw = ts.ckks_vector_from(agg_pub.tenseal_context, sample_ev.chunks[0])
    with pytest.raises(ValueError):
        raw.decrypt()


def test_public_from_bytes_refuses_secret_bytes(agg: KeyHolderContext) -> None:
    with pytest.raises(CryptoError, match="secret"):
        PublicContext.from_bytes(agg.to_bytes())
    # Even when the header claims "public", secret key material is detected.
    secret_tenseal = agg.tenseal_context.serialize(save_secret_key=True)
    forged = ckks._pack_context(ckks._KIND_PUBLIC, agg.params, secret_tenseal)
    with pytest.raises(CryptoError, match="contain a secret key"):
        PublicContext.from_bytes(forged)


def test_public_bytes_carry_no_secret_key(agg_pub: PublicContext, comp: KeyHolderContext) -> None:
    _, _, tb = ckks._unpack_context(agg_pub.to_bytes())
    assert not ckks.context_anatomy(tb).has_secret_key
    comp_pub = comp.public_context()
    assert comp_pub.tenseal_context.has_galois_keys()
    assert not comp_pub.tenseal_context.is_private()


def test_keyholder_from_bytes_refuses_public_bytes(agg_pub: PublicContext) -> None:
    with pytest.raises(CryptoError, match="no secret key"):
        KeyHolderContext.from_bytes(agg_pub.to_bytes())


@pytest.mark.parametrize("blob", [b"", b"FRCX", b"nonsense" * 10, b"FRCX\x01\x01\xff\xff\x00\x00"])
def test_context_from_garbage(blob: bytes) -> None:
    for cls in (PublicContext, KeyHolderContext):
        with pytest.raises(CryptoError):
            cls.from_bytes(blob)


def test_secret_file_is_0600_even_with_umask_000(tmp_path, agg: KeyHolderContext, agg_pub: PublicContext) -> None:
    old = os.umask(0)
    try:
        path = agg.save(tmp_path / "keys" / "ckks.secret")
        pub_path = agg_pub.save(tmp_path / "keys" / "ckks.public")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert KeyHolderContext.load(path).fingerprint == agg.fingerprint
    assert PublicContext.load(pub_path).fingerprint == agg.fingerprint
    path.chmod(0o644)
    with pytest.raises(CryptoError, match="0644"):
        KeyHolderContext.load(path)


def test_reloaded_compute_key_holder_has_galois_keys(comp: KeyHolderContext) -> None:
    loaded = KeyHolderContext.from_bytes(comp.to_bytes())
    assert loaded.fingerprint == comp.fingerprint
    assert loaded.tenseal_context.has_galois_keys()
    # A rotation-based op done with the hazmat layer, decrypted by the original.
    x = np.arange(1.0, 9.0)
    (vec,) = to_tenseal_vectors(loaded, encrypt_vector(loaded, x, packing="real"))
    dot = from_tenseal_vectors(loaded, [vec.dot(np.ones(8))])
    assert abs(decrypt_vector(comp, dot)[0] - 36.0) < 1e-4


# --- mismatch, range and tampering --------------------------------------------------


def test_mismatched_context_is_detected(other: KeyHolderContext, agg_pub: PublicContext, sample_ev) -> None:
    pattern = r"made under context [0-9a-f]{12}.* but this context is [0-9a-f]{12}"
    with pytest.raises(ContextMismatchError, match=pattern):
        decrypt_vector(other, sample_ev)
    foreign = encrypt_vector(other, np.ones(sample_ev.length))
    with pytest.raises(ContextMismatchError):
        add_encrypted(agg_pub, [sample_ev, foreign])
    # Why the check matters: TenSEAL decrypts a foreign ciphertext to garbage without an error.
    raw = ts.ckks_vector_from(other.tenseal_context, sample_ev.chunks[0]).decrypt()
    assert max(abs(v) for v in raw) > 1e6


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([0.0, 1025.0]), "exceeds the CKKS safe bound"),
        (np.array([-5000.0]), "exceeds the CKKS safe bound"),
        (np.array([1.0, np.nan]), "non-finite"),
        (np.array([np.inf]), "non-finite"),
        (np.zeros((2, 2)), "1-D"),
        (np.zeros(0), "empty"),
    ],
)
def test_out_of_range_values_are_refused(agg_pub: PublicContext, values, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        encrypt_vector(agg_pub, values)


def test_bound_itself_is_accepted(agg: KeyHolderContext) -> None:
    x = np.array([AGGREGATION.max_abs_value, -AGGREGATION.max_abs_value])
    assert np.abs(decrypt_vector(agg, encrypt_vector(agg, x)) - x).max() < 1e-6


def test_overflowing_hazmat_sum_is_refused_on_decrypt(agg: KeyHolderContext) -> None:
    # 150 x 1000 = 150,000 > value_limit 131,072: add_encrypted would refuse this,
    # and decrypt_vector catches it when the hazmat layer is used instead.
    (acc,) = to_tenseal_vectors(agg, encrypt_vector(agg, np.full(16, 1000.0), packing="real"))
    one = acc.copy()
    for _ in range(149):
        acc.add_(one)
    with pytest.raises(CryptoError, match="safe range"):
        decrypt_vector(agg, from_tenseal_vectors(agg, [acc]))


def test_truncated_and_tampered_payload_bytes(sample_ev: EncryptedVector) -> None:
    blob = sample_ev.to_bytes()
    assert EncryptedVector.from_bytes(blob) == sample_ev
    for cut in (0, 3, 10, ckks._EV_HEADER.size, ckks._EV_HEADER.size + 7, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CryptoError):
            EncryptedVector.from_bytes(blob[:cut])
    for pos in list(range(0, ckks._EV_HEADER.size + 8)) + [len(blob) // 2, len(blob) - 40, len(blob) - 1]:
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(CryptoError):
            EncryptedVector.from_bytes(bytes(tampered))
    with pytest.raises(CryptoError):
        EncryptedVector.from_bytes(blob + b"\x00")
    with pytest.raises(CryptoError):
        EncryptedVector.from_bytes("not bytes")  # type: ignore[arg-type]


def test_malformed_chunk_with_valid_checksum_is_refused(agg: KeyHolderContext, agg_pub, sample_ev) -> None:
    chunk = sample_ev.chunks[0]
    bad_chunks = [chunk[: len(chunk) // 2], b"\x00" * 64, chunk[:40] + b"\xff" * 40 + chunk[80:]]
    # A CKKSVector proto that claims 4096 values but holds no ciphertext.
    bad_chunks.append(bytes([0x0A, 0x02, 0x80, 0x20]))
    for bad in bad_chunks:
        ev = dataclasses.replace(sample_ev, chunks=(bad, *sample_ev.chunks[1:]))
        ev = EncryptedVector.from_bytes(ev.to_bytes())  # the checksum is fine
        with pytest.raises(CryptoError):
            decrypt_vector(agg, ev)
        with pytest.raises(CryptoError):
            add_encrypted(agg_pub, [ev, sample_ev])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    with pytest.raises(CryptoError):
        EncryptedVector.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_header_like_bytes(data) -> None:
    """Well-formed magic and version with arbitrary fields and a valid checksum."""
    fields = data.draw(
        st.tuples(
            st.integers(0, 255),
            st.binary(min_size=16, max_size=16),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 40),
        )
    )
    flags, fp, length, chunk_size, terms, n_chunks = fields
    header = ckks._EV_HEADER.pack(b"FRCV", 1, flags, fp, length, chunk_size, terms, n_chunks)
    tail = data.draw(st.binary(max_size=200))
    body = header + tail
    import hashlib

    blob = body + hashlib.sha256(body).digest()
    try:
        ev = EncryptedVector.from_bytes(blob)
    except CryptoError:
        return
    assert ev.to_bytes() == blob


@pytest.fixture(scope="module")
def small_blob(agg_pub: PublicContext) -> bytes:
    return encrypt_vector(agg_pub, np.linspace(-1, 1, 50)).to_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_payload(small_blob: bytes, data) -> None:
    blob = bytearray(small_blob)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(blob)))
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos : pos + 4] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
        if bytes(blob) == small_blob:
            return
    with pytest.raises(CryptoError):
        EncryptedVector.from_bytes(bytes(blob))


# --- key files (fedrisk.crypto.keyfiles, used for every secret) ---------------------


def test_keyfiles_modes_and_atomicity(tmp_path) -> None:
    from fedrisk.crypto.keyfiles import read_secret_file, write_public_file, write_secret_file

    target = tmp_path / "k"
    target.write_bytes(b"old")
    target.chmod(0o666)
    old = os.umask(0o077)
    try:
        write_secret_file(target, b"new secret")  # replaces a loose file with a 0600 one
        pub = write_public_file(tmp_path / "p", b"public")  # 0644 even under umask 077
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert read_secret_file(target) == b"new secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "p"]  # no temp files left
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_secret_file(link) == b"new secret"  # like ssh: the target's mode counts


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o777])
def test_read_secret_file_refuses_loose_modes(tmp_path, mode: int) -> None:
    from fedrisk.crypto.keyfiles import read_secret_file, write_secret_file

    path = write_secret_file(tmp_path / "s", b"x")
    path.chmod(mode)
    with pytest.raises(CryptoError, match=f"{path} has mode {mode:04o}"):
        read_secret_file(path)
    path.chmod(0o400)
    assert read_secret_file(path) == b"x"


def test_read_secret_file_missing_or_directory(tmp_path) -> None:
    from fedrisk.crypto.keyfiles import read_secret_file

    with pytest.raises(CryptoError, match="does not exist"):
        read_secret_file(tmp_path / "missing")
    with pytest.raises(CryptoError):
        read_secret_file(tmp_path)
