"""Ed25519 identities and signed bundles (models, reports) verified before loading.

Identities
----------
:class:`SigningIdentity` wraps an Ed25519 private key (saved as PKCS#8 PEM with
mode 0600). Its ``key_id`` is the first 16 hex characters of SHA-256 over the
raw 32-byte public key. :func:`verify_signature` raises :class:`CryptoError`
instead of returning a flag, so a forgotten check cannot pass silently.

Bundles
-------
A bundle is a flat directory::

    model.safetensors  model.json  ...   the payload files
    MANIFEST.json                        canonical JSON, see below
    MANIFEST.sig                         64-byte Ed25519 signature

``MANIFEST.json`` is canonical JSON (sorted keys, ``","``/``":"`` separators,
ASCII only, no NaN) of::

    {"format": "fedrisk-bundle/1", "created_at": "2025-01-01T00:00:00Z",
     "signer": {"algorithm": "Ed25519", "key_id": "...", "public_key": "<hex>"},
     "files": {"model.json": {"sha256": "<hex>", "size": 123}, ...},
     "meta": {...}}

and ``MANIFEST.sig`` is ``Ed25519(BUNDLE_SIGNATURE_CONTEXT || MANIFEST.json
bytes)``. The context prefix keeps a bundle signature from ever being valid as
a signature of anything else the same identity signs (ledger records...).
:func:`verify_bundle` reads each file once, checks it against the manifest and
returns exactly the bytes it checked.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrisk.crypto.keyfiles import read_secret_file, write_secret_file
from fedrisk.errors import CryptoError

__all__ = [
    "SigningIdentity",
    "key_id_of",
    "verify_signature",
    "canonical_json",
    "write_signed_bundle",
    "verify_bundle",
    "verify_bundle_with_manifest",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "BUNDLE_FORMAT",
    "BUNDLE_SIGNATURE_CONTEXT",
]

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.sig"
BUNDLE_FORMAT = "fedrisk-bundle/1"
BUNDLE_SIGNATURE_CONTEXT = b"fedrisk/bundle-manifest/v1\x00"
_RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MAX_MANIFEST = 1 << 20


def key_id_of(public_key_bytes: bytes) -> str:
    """Short hex id (16 chars) of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(bytes(public_key_bytes)).hexdigest()[:16]


def _load_ed25519_public(public_key_bytes: bytes) -> Ed25519PublicKey:
    if not isinstance(public_key_bytes, (bytes, bytearray)) or len(public_key_bytes) != 32:
        raise CryptoError("Ed25519 public key must be 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(bytes(public_key_bytes))


def verify_signature(public_key_bytes: bytes, data: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature, raising on failure.

    Parameters
    ----------
    public_key_bytes : bytes
        Raw 32-byte Ed25519 public key.
    data : bytes
        The signed bytes.
    signature : bytes
        64-byte signature.

    Raises
    ------
    CryptoError
        If the key is malformed or the signature does not verify.
    """
    key = _load_ed25519_public(public_key_bytes)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        raise CryptoError(f"bad Ed25519 signature by key {key_id_of(public_key_bytes)}: must be 64 bytes")
    try:
        key.verify(bytes(signature), bytes(data))
    except InvalidSignature:
        raise CryptoError(f"bad Ed25519 signature by key {key_id_of(public_key_bytes)}") from None


class SigningIdentity:
    """An Ed25519 signing identity (a party, the coordinator, a model publisher)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise CryptoError("SigningIdentity needs an Ed25519 private key")
        self._key = private_key

    @classmethod
    def generate(cls) -> SigningIdentity:
        """Generate a fresh identity."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key_bytes(self) -> bytes:
        """Raw 32-byte public key."""
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """Short hex fingerprint of the public key (16 chars)."""
        return key_id_of(self.public_key_bytes)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; returns a 64-byte Ed25519 signature."""
        return self._key.sign(bytes(data))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the private key (PKCS#8 PEM, unencrypted) atomically with mode 0600."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return write_secret_file(path, pem)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningIdentity:
        """Load a key written by :meth:`save`, refusing group/world-readable files."""
        data = read_secret_file(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CryptoError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CryptoError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningIdentity(key_id={self.key_id!r})"


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, ASCII, no NaN."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise CryptoError(f"value is not canonical-JSON serialisable: {exc}") from None


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
        raise CryptoError(f"bundle file name {name!r} is not allowed (flat names of letters, digits, '._-'; not {sorted(_RESERVED)})")


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_signed_bundle(
    folder: str | os.PathLike[str],
    files: Mapping[str, bytes],
    identity: SigningIdentity,
    *,
    meta: Mapping[str, Any],
) -> Path:
    """Write a signed bundle atomically.

    The files, manifest and signature are written into a temporary directory
    beside ``folder``, flushed, and renamed into place, so a reader never sees a
    half-written bundle. An existing bundle at ``folder`` (a folder holding a
    ``MANIFEST.json``) or an empty folder is replaced; anything else there is
    refused, so a wrong path can never delete unrelated files.

    Parameters
    ----------
    folder : str or os.PathLike
        Destination directory: new, empty, or an existing bundle to replace.
    files : mapping of str to bytes
        Flat file names to contents.
    identity : SigningIdentity
        The signer.
    meta : mapping
        JSON-able metadata recorded (and signed) in the manifest.

    Returns
    -------
    pathlib.Path
        ``folder``.
    """
    target = Path(folder)
    if not files:
        raise CryptoError("a bundle needs at least one file")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise CryptoError(f"bundle folder {target} exists and is not a directory")
    if target.exists() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise CryptoError(f"bundle folder {target} exists, is not empty and is not a bundle; refusing to replace it")
    entries = {}
    for name, content in files.items():
        check_name(name)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise CryptoError(f"bundle file {name} must be bytes")
        content = bytes(content)
        entries[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    manifest = {
        "format": BUNDLE_FORMAT,
        "created_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "signer": {"algorithm": "Ed25519", "key_id": identity.key_id, "public_key": identity.public_key_bytes.hex()},
        "files": entries,
        "meta": dict(meta),
    }
    manifest_bytes = canonical_json(manifest)
    signature = identity.sign(BUNDLE_SIGNATURE_CONTEXT + manifest_bytes)

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir(mode=0o755)
    old: Path | None = None
    try:
        to_write = [(n, bytes(c)) for n, c in files.items()]
        to_write += [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature)]
        for name, content in to_write:
            path = tmp / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_path(tmp)
        if target.exists():
            old = parent / f".{target.name}.{secrets.token_hex(6)}.old"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_path(parent)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _read_regular(path: Path, label: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CryptoError(f"bundle {label} is missing") from None
    except OSError as exc:
        raise CryptoError(f"cannot read bundle {label}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CryptoError(f"bundle {label} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def verify_bundle_with_manifest(folder: str | os.PathLike[str], trusted_public_keys: Iterable[bytes] | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verify a bundle and return ``(manifest, files)``.

    See :func:`verify_bundle`; this variant also returns the parsed manifest
    (for ``meta``, ``created_at`` and the signer's ``key_id``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise CryptoError(f"bundle folder {root} does not exist")
    if not (root / SIGNATURE_NAME).exists() and not (root / SIGNATURE_NAME).is_symlink():
        raise CryptoError(f"bundle {root} is unsigned: {SIGNATURE_NAME} is missing")
    if not (root / MANIFEST_NAME).exists() and not (root / MANIFEST_NAME).is_symlink():
        raise CryptoError(f"bundle {root} is unsigned: {MANIFEST_NAME} is missing")
    manifest_bytes = _read_regular(root / MANIFEST_NAME, MANIFEST_NAME)
    signature = _read_regular(root / SIGNATURE_NAME, SIGNATURE_NAME)
    if len(manifest_bytes) > _MAX_MANIFEST:
        raise CryptoError(f"bundle {MANIFEST_NAME} is larger than {_MAX_MANIFEST} bytes")
    try:
        manifest = json.loads(manifest_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CryptoError(f"bundle {MANIFEST_NAME} is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise CryptoError(f"bundle {MANIFEST_NAME} is not a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'format' is not {BUNDLE_FORMAT!r}")
    signer = manifest.get("signer")
    if not isinstance(signer, dict) or signer.get("algorithm") != "Ed25519":
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'signer' is missing or not Ed25519")
    try:
        public_key = bytes.fromhex(signer.get("public_key", ""))
    except (TypeError, ValueError):
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'signer.public_key' is not hex") from None
    if len(public_key) != 32:
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'signer.public_key' is not a 32-byte key")
    if signer.get("key_id") != key_id_of(public_key):
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'signer.key_id' does not match signer.public_key")

    if trusted_public_keys is not None:
        trusted = {bytes(k) for k in trusted_public_keys}
        if public_key not in trusted:
            raise CryptoError(f"bundle signer {key_id_of(public_key)} is not in the trusted set")
    try:
        verify_signature(public_key, BUNDLE_SIGNATURE_CONTEXT + manifest_bytes, signature)
    except CryptoError:
        raise CryptoError(f"bundle {SIGNATURE_NAME} does not verify for signer {key_id_of(public_key)}") from None
    # Signed bytes must also be the canonical form, so that what was signed and
    # what is parsed cannot differ (duplicate keys, odd number forms...).
    if canonical_json(manifest) != manifest_bytes:
        raise CryptoError(f"bundle {MANIFEST_NAME} is not in canonical form")

    entries = manifest.get("files")
    if not isinstance(entries, dict) or not entries:
        raise CryptoError(f"bundle {MANIFEST_NAME} field 'files' is missing or empty")
    for name in entries:
        check_name(name)
    present = {p.name for p in root.iterdir()} - _RESERVED
    extra = sorted(present - set(entries))
    if extra:
        raise CryptoError(f"bundle has a file not listed in {MANIFEST_NAME}: {extra[0]}")
    out: dict[str, bytes] = {}
    for name, entry in sorted(entries.items()):
        if not isinstance(entry, dict):
            raise CryptoError(f"bundle {MANIFEST_NAME} entry for {name} is not an object")
        if name not in present:
            raise CryptoError(f"bundle file {name} listed in {MANIFEST_NAME} is missing")
        content = _read_regular(root / name, f"file {name}")
        if len(content) != entry.get("size"):
            raise CryptoError(f"bundle file {name}: size {len(content)} differs from manifest {entry.get('size')}")
        if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
            raise CryptoError(f"bundle file {name}: sha256 differs from the manifest")
        out[name] = content
    return manifest, out


def verify_bundle(folder: str | os.PathLike[str], trusted_public_keys: Iterable[bytes] | None) -> dict[str, bytes]:
    """Verify a signed bundle and return its files' verified contents.

    Parameters
    ----------
    folder : str or os.PathLike
        The bundle directory.
    trusted_public_keys : iterable of bytes or None
        Raw Ed25519 public keys allowed to sign. ``None`` accepts any signer
        (integrity only: proves the files match what *someone* signed); pass the
        publisher's key whenever it is known.

    Returns
    -------
    dict of str to bytes
        File name to the exact bytes that were verified.

    Raises
    ------
    CryptoError
        One line naming the problem: unsigned bundle, malformed manifest field,
        untrusted signer, bad signature, missing/extra file, size or hash
        mismatch.
    """
    return verify_bundle_with_manifest(folder, trusted_public_keys)[1]
