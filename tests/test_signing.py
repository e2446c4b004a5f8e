"""Ed25519 identities and signed bundles."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedrisk.crypto.signing import (
    BUNDLE_SIGNATURE_CONTEXT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SigningIdentity,
    canonical_json,
    key_id_of,
    verify_bundle,
    verify_bundle_with_manifest,
    verify_signature,
    write_signed_bundle,
)
from fedrisk.errors import CryptoError

FILES = {"model.safetensors": b"\x00\x01binary weights" * 100, "model.json": b'{"kind": "logistic"}'}


@pytest.fixture(scope="module")
def publisher() -> SigningIdentity:
    return SigningIdentity.generate()


@pytest.fixture()
def bundle(tmp_path: Path, publisher: SigningIdentity) -> Path:
    return write_signed_bundle(tmp_path / "bundle", FILES, publisher, meta={"run_id": "r1", "auc": 0.81})


# --- identities ----------------------------------------------------------------


def test_sign_and_verify(publisher: SigningIdentity) -> None:
    sig = publisher.sign(b"hello")
    assert len(sig) == 64
    verify_signature(publisher.public_key_bytes, b"hello", sig)
    with pytest.raises(CryptoError, match="bad Ed25519 signature"):
        verify_signature(publisher.public_key_bytes, b"hellO", sig)
    with pytest.raises(CryptoError, match="bad Ed25519 signature"):
        verify_signature(SigningIdentity.generate().public_key_bytes, b"hello", sig)
    with pytest.raises(CryptoError, match="64 bytes"):
        verify_signature(publisher.public_key_bytes, b"hello", sig[:-1])
    with pytest.raises(CryptoError, match="32 raw bytes"):
        verify_signature(b"short", b"hello", sig)


def test_key_id(publisher: SigningIdentity) -> None:
    assert publisher.key_id == key_id_of(publisher.public_key_bytes)
    assert len(publisher.key_id) == 16
    assert publisher.key_id != SigningIdentity.generate().key_id


def test_identity_save_load(tmp_path: Path, publisher: SigningIdentity) -> None:
    old = os.umask(0)
    try:
        path = publisher.save(tmp_path / "id" / "publisher.ed25519.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningIdentity.load(path)
    assert loaded.public_key_bytes == publisher.public_key_bytes
    verify_signature(publisher.public_key_bytes, b"x", loaded.sign(b"x"))
    path.chmod(0o604)
    with pytest.raises(CryptoError, match="0604"):
        SigningIdentity.load(path)


def test_identity_load_refuses_other_key_types(tmp_path: Path) -> None:
    from fedrisk.crypto.envelope import PartyKeyPair

    PartyKeyPair.generate().save(tmp_path / "x.pem")
    with pytest.raises(CryptoError, match="not an Ed25519"):
        SigningIdentity.load(tmp_path / "x.pem")


# --- bundles -------------------------------------------------------------------


def test_bundle_round_trip(bundle: Path, publisher: SigningIdentity) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*FILES, MANIFEST_NAME, SIGNATURE_NAME])
    assert verify_bundle(bundle, [publisher.public_key_bytes]) == FILES
    manifest, files = verify_bundle_with_manifest(bundle, None)
    assert files == FILES
    assert manifest["meta"] == {"run_id": "r1", "auc": 0.81}
    assert manifest["signer"]["key_id"] == publisher.key_id
    assert manifest["created_at"].endswith("Z")
    assert manifest["files"]["model.json"]["size"] == len(FILES["model.json"])
    raw = (bundle / MANIFEST_NAME).read_bytes()
    assert raw == canonical_json(json.loads(raw))
    verify_signature(publisher.public_key_bytes, BUNDLE_SIGNATURE_CONTEXT + raw, (bundle / SIGNATURE_NAME).read_bytes())
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_unsigned_bundle(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / SIGNATURE_NAME).unlink()
    with pytest.raises(CryptoError, match="unsigned: MANIFEST.sig is missing"):
        verify_bundle(bundle, [publisher.public_key_bytes])
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(CryptoError, match="unsigned"):
        verify_bundle(bundle, None)


def test_bad_signature(bundle: Path, publisher: SigningIdentity) -> None:
    sig = bytearray((bundle / SIGNATURE_NAME).read_bytes())
    sig[0] ^= 1
    (bundle / SIGNATURE_NAME).write_bytes(bytes(sig))
    with pytest.raises(CryptoError, match="MANIFEST.sig does not verify"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_edited_manifest_breaks_the_signature(bundle: Path, publisher: SigningIdentity) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_bytes())
    manifest["meta"]["auc"] = 0.99
    (bundle / MANIFEST_NAME).write_bytes(canonical_json(manifest))
    with pytest.raises(CryptoError, match="does not verify"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_resigned_by_an_untrusted_key(bundle: Path, publisher: SigningIdentity) -> None:
    mallory = SigningIdentity.generate()
    manifest = json.loads((bundle / MANIFEST_NAME).read_bytes())
    manifest["signer"] = {
        "algorithm": "Ed25519",
        "key_id": mallory.key_id,
        "public_key": mallory.public_key_bytes.hex(),
    }
    raw = canonical_json(manifest)
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(mallory.sign(BUNDLE_SIGNATURE_CONTEXT + raw))
    with pytest.raises(CryptoError, match=f"signer {mallory.key_id} is not in the trusted set"):
        verify_bundle(bundle, [publisher.public_key_bytes])
    assert verify_bundle(bundle, [mallory.public_key_bytes]) == FILES  # self-consistent otherwise


def test_signer_not_trusted(bundle: Path) -> None:
    with pytest.raises(CryptoError, match="not in the trusted set"):
        verify_bundle(bundle, [SigningIdentity.generate().public_key_bytes])
    with pytest.raises(CryptoError, match="not in the trusted set"):
        verify_bundle(bundle, [])


def test_file_hash_differs(bundle: Path, publisher: SigningIdentity) -> None:
    data = bytearray((bundle / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (bundle / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CryptoError, match="model.safetensors: sha256 differs"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_file_size_differs(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / "model.json").write_bytes(FILES["model.json"] + b" ")
    with pytest.raises(CryptoError, match="model.json: size"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_missing_file(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / "model.json").unlink()
    with pytest.raises(CryptoError, match="model.json listed in MANIFEST.json is missing"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_extra_file(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / "backdoor.py").write_text("import os")
    with pytest.raises(CryptoError, match="not listed in MANIFEST.json: backdoor.py"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_symlinked_file_is_refused(bundle: Path, publisher: SigningIdentity, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes(FILES["model.json"])
    (bundle / "model.json").unlink()
    (bundle / "model.json").symlink_to(outside)
    with pytest.raises(CryptoError, match="model.json"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_non_canonical_manifest_is_refused(bundle: Path, publisher: SigningIdentity) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_bytes())
    raw = json.dumps(manifest, indent=1).encode()  # same content, not canonical
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(publisher.sign(BUNDLE_SIGNATURE_CONTEXT + raw))
    with pytest.raises(CryptoError, match="canonical"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_malformed_manifest_fields(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / MANIFEST_NAME).write_bytes(b"not json")
    with pytest.raises(CryptoError, match="not valid JSON"):
        verify_bundle(bundle, None)
    (bundle / MANIFEST_NAME).write_bytes(canonical_json({"format": "fedrisk-bundle/1", "signer": {}}))
    with pytest.raises(CryptoError, match="field 'signer'"):
        verify_bundle(bundle, None)


def test_write_refuses_bad_names_and_existing_folder(tmp_path: Path, publisher: SigningIdentity, bundle: Path) -> None:
    for name in ("../escape", "sub/dir.bin", ".hidden", MANIFEST_NAME, SIGNATURE_NAME, ""):
        with pytest.raises(CryptoError, match="not allowed"):
            write_signed_bundle(tmp_path / "b2", {name: b"x"}, publisher, meta={})
    not_a_bundle = tmp_path / "documents"
    not_a_bundle.mkdir()
    (not_a_bundle / "thesis.tex").write_text("precious")
    with pytest.raises(CryptoError, match="is not a bundle; refusing"):
        write_signed_bundle(not_a_bundle, FILES, publisher, meta={})
    assert (not_a_bundle / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(CryptoError, match="not a directory"):
        write_signed_bundle(a_file, FILES, publisher, meta={})
    with pytest.raises(CryptoError, match="at least one file"):
        write_signed_bundle(tmp_path / "b3", {}, publisher, meta={})
    with pytest.raises(CryptoError, match="canonical-JSON"):
        write_signed_bundle(tmp_path / "b4", FILES, publisher, meta={"x": float("nan")})
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b4").exists()


def test_rewriting_a_bundle_replaces_it_atomically(bundle: Path, publisher: SigningIdentity) -> None:
    new_files = {"model.json": b'{"kind": "mlp"}'}
    write_signed_bundle(bundle, new_files, publisher, meta={"v": 2})
    assert verify_bundle(bundle, [publisher.public_key_bytes]) == new_files
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]


def test_directory_in_place_of_a_file(bundle: Path, publisher: SigningIdentity) -> None:
    (bundle / "model.json").unlink()
    (bundle / "model.json").mkdir()
    with pytest.raises(CryptoError, match="model.json is not a regular file"):
        verify_bundle(bundle, [publisher.public_key_bytes])


def test_empty_existing_folder_is_used(tmp_path: Path, publisher: SigningIdentity) -> None:
    (tmp_path / "empty").mkdir()
    write_signed_bundle(tmp_path / "empty", FILES, publisher, meta={})
    assert verify_bundle(tmp_path / "empty", [publisher.public_key_bytes]) == FILES
