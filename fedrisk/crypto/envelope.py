"""Sealing a secret (a CKKS secret context) to a peer party through a relay.

In horizontal FedAvg several banks share one CKKS secret key, and the
coordinator relays their messages but must not learn it. The bank that
generated the context seals it to each peer bank's X25519 identity key; only
that peer can open it.

Construction (HPKE-like, RFC 9180 in spirit; DHKEM(X25519) + HKDF-SHA256 +
AES-256-GCM, single shot)::

    eph            = fresh X25519 key pair
    dh             = X25519(eph.private, recipient.public)
                     || X25519(sender.private, recipient.public)   (auth mode only)
    info           = LABEL || mode || eph.public || recipient.public
                     || sender.public                              (auth mode only)
    key || nonce   = HKDF-SHA256(ikm=dh, salt="", info=info, length=32 + 12)
    sealed         = header || AES-256-GCM(key, nonce, plaintext, ad=header || aad)
    header         = "FRSE" || version (1) || mode || eph.public

* The key and nonce are used once (fresh ephemeral key per message), so the
  fixed derived nonce is safe.
* ``aad`` binds the message to its context: use :func:`envelope_aad` with the
  run id and the recipient's name, so that a sealed key relayed for one run or
  recipient cannot be replayed into another.
* Base mode proves nothing about the sender: a relay could seal its *own*
  context to a bank. Pass ``sender=`` (the key holder's :class:`PartyKeyPair`)
  and ``sender_public=`` on opening to get HPKE-Auth-style sender
  authentication; fedrisk uses it whenever the sender's identity key is known.

Any tampering, wrong recipient, wrong sender or wrong ``aad`` raises
:class:`CryptoError` with one message (no oracle on which check failed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrisk.crypto.keyfiles import read_secret_file, write_public_file, write_secret_file
from fedrisk.errors import CryptoError

__all__ = [
    "PartyKeyPair",
    "seal",
    "open_sealed",
    "envelope_aad",
    "public_key_id",
]

_MAGIC = b"FRSE"
_VERSION = 1
_MODE_BASE = 0
_MODE_AUTH = 1
_HEADER_LEN = 4 + 1 + 1 + 32
_TAG_LEN = 16
_LABEL = b"fedrisk/envelope/v1 X25519-HKDF-SHA256-AES256GCM\x00"
_MAX_PLAINTEXT = (1 << 31) - 1  # AES-GCM via OpenSSL takes < 2 GiB per call
_OPEN_FAILED = "cannot open sealed message: wrong recipient, wrong sender, wrong aad, or tampered"


def public_key_id(public_bytes: bytes) -> str:
    """Short hex id (16 chars) of a raw 32-byte X25519 public key."""
    return hashlib.sha256(b"fedrisk/x25519-key-id\x00" + bytes(public_bytes)).hexdigest()[:16]


def envelope_aad(run_id: str, recipient: str, purpose: str = "ckks-secret-context") -> bytes:
    """Canonical associated data binding a sealed message to its run and recipient.

    Parameters
    ----------
    run_id : str
        The federation run id.
    recipient : str
        The recipient party's name.
    purpose : str
        What is sealed (default: a CKKS secret context).

    Returns
    -------
    bytes
        Length-prefixed UTF-8 encoding of the three fields (unambiguous).
    """
    out = bytearray(b"fedrisk/envelope-aad/v1")
    for part in (purpose, run_id, recipient):
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _load_public(public_bytes: bytes, what: str) -> X25519PublicKey:
    if not isinstance(public_bytes, (bytes, bytearray)) or len(public_bytes) != 32:
        raise CryptoError(f"{what} public key must be 32 raw X25519 bytes")
    return X25519PublicKey.from_public_bytes(bytes(public_bytes))


class PartyKeyPair:
    """A party's long-term X25519 identity key pair (for receiving sealed secrets).

    Create with :meth:`generate`; persist with :meth:`save` (PKCS#8 PEM, mode
    0600) and :meth:`load` (PEM or 32 raw bytes, refuses group/world-readable
    files). Share :meth:`public_bytes` (32 raw bytes) with peers.
    """

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise CryptoError("PartyKeyPair needs an X25519 private key")
        self._key = private_key

    @classmethod
    def generate(cls) -> PartyKeyPair:
        """Generate a fresh key pair."""
        return cls(X25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """Short hex id of the public key."""
        return public_key_id(self.public_bytes())

    def exchange(self, peer_public: bytes) -> bytes:
        """Hazmat: raw X25519 shared secret with ``peer_public`` (rejects low-order points)."""
        try:
            return self._key.exchange(_load_public(peer_public, "peer"))
        except ValueError:
            raise CryptoError("X25519 exchange failed (low-order or invalid public key)") from None

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (unencrypted: store it with mode 0600)."""
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the private key (PKCS#8 PEM) atomically with mode 0600."""
        return write_secret_file(path, self.private_pem())

    def save_public(self, path: str | os.PathLike[str]) -> Path:
        """Write the raw 32-byte public key with mode 0644."""
        return write_public_file(path, self.public_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PartyKeyPair:
        """Load a private key saved by :meth:`save` (PEM) or as 32 raw bytes."""
        data = read_secret_file(path)
        if len(data) == 32:
            return cls(X25519PrivateKey.from_private_bytes(data))
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CryptoError(f"{path} is not an X25519 private key (PEM or 32 raw bytes)") from None
        if not isinstance(key, X25519PrivateKey):
            raise CryptoError(f"{path} holds a {type(key).__name__}, not an X25519 private key")
        return cls(key)

    def __repr__(self) -> str:
        return f"PartyKeyPair(key_id={self.key_id!r})"


def _derive(dh: bytes, info: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=info).derive(dh)
    return okm[:32], okm[32:]


def _info(mode: int, eph_pub: bytes, recipient_pub: bytes, sender_pub: bytes | None) -> bytes:
    return _LABEL + bytes([mode]) + eph_pub + recipient_pub + (sender_pub or b"")


def seal(
    recipient_public: bytes,
    plaintext: bytes,
    *,
    aad: bytes,
    sender: PartyKeyPair | None = None,
) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of ``recipient_public`` can open it.

    Parameters
    ----------
    recipient_public : bytes
        The recipient's raw 32-byte X25519 public key.
    plaintext : bytes
        The secret (e.g. ``KeyHolderContext.to_bytes()``).
    aad : bytes
        Associated data the recipient must present to open it; use
        :func:`envelope_aad`.
    sender : PartyKeyPair, optional
        The sender's identity key: authenticates the sender to the recipient.

    Returns
    -------
    bytes
        ``header || ciphertext || tag``; 54 bytes longer than ``plaintext``.
    """
    if not isinstance(plaintext, (bytes, bytearray, memoryview)):
        raise CryptoError("plaintext to seal must be bytes")
    if len(plaintext) > _MAX_PLAINTEXT:
        raise CryptoError(f"plaintext of {len(plaintext)} bytes is too large to seal in one message")
    if not isinstance(aad, (bytes, bytearray)):
        raise CryptoError("aad must be bytes")
    recipient_public = bytes(recipient_public) if isinstance(recipient_public, bytearray) else recipient_public
    recipient_key = _load_public(recipient_public, "recipient")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        dh = eph.exchange(recipient_key)
    except ValueError:
        raise CryptoError("recipient public key is invalid (low-order point)") from None
    mode = _MODE_BASE
    sender_pub = None
    if sender is not None:
        mode = _MODE_AUTH
        sender_pub = sender.public_bytes()
        dh += sender.exchange(recipient_public)
    key, nonce = _derive(dh, _info(mode, eph_pub, recipient_public, sender_pub))
    header = _MAGIC + bytes([_VERSION, mode]) + eph_pub
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header + bytes(aad))


def open_sealed(
    recipient: PartyKeyPair,
    sealed: bytes,
    *,
    aad: bytes,
    sender_public: bytes | None = None,
) -> bytes:
    """Decrypt a message made by :func:`seal`.

    Parameters
    ----------
    recipient : PartyKeyPair
        The recipient's identity key pair.
    sealed : bytes
        Output of :func:`seal`.
    aad : bytes
        The same associated data the sender used.
    sender_public : bytes, optional
        The expected sender's raw X25519 public key. Required if, and only if,
        the message was sealed with ``sender=``.

    Returns
    -------
    bytes
        The plaintext.

    Raises
    ------
    CryptoError
        On a wrong recipient, wrong sender, wrong ``aad``, mode mismatch, or any
        modified or truncated byte.
    """
    if not isinstance(recipient, PartyKeyPair):
        raise CryptoError("open_sealed needs the recipient's PartyKeyPair")
    if not isinstance(sealed, (bytes, bytearray, memoryview)):
        raise CryptoError("sealed message must be bytes")
    if not isinstance(aad, (bytes, bytearray)):
        raise CryptoError("aad must be bytes")
    sealed = bytes(sealed)
    if len(sealed) < _HEADER_LEN + _TAG_LEN:
        raise CryptoError(f"sealed message is truncated ({len(sealed)} bytes)")
    header, body = sealed[:_HEADER_LEN], sealed[_HEADER_LEN:]
    if header[:4] != _MAGIC:
        raise CryptoError("not a fedrisk sealed message (bad magic)")
    if header[4] != _VERSION:
        raise CryptoError(f"unsupported sealed message version {header[4]}")
    mode = header[5]
    if mode not in (_MODE_BASE, _MODE_AUTH):
        raise CryptoError(f"unknown sealed message mode {mode}")
    if mode == _MODE_AUTH and sender_public is None:
        raise CryptoError("sealed message is sender-authenticated; pass sender_public to open it")
    if mode == _MODE_BASE and sender_public is not None:
        raise CryptoError("sealed message is not sender-authenticated but a sender was expected")
    eph_pub = header[6:]
    try:
        dh = recipient.exchange(eph_pub)
        if mode == _MODE_AUTH:
            assert sender_public is not None
            dh += recipient.exchange(sender_public)
    except CryptoError:
        raise CryptoError(_OPEN_FAILED) from None
    key, nonce = _derive(dh, _info(mode, eph_pub, recipient.public_bytes(), bytes(sender_public) if sender_public else None))
    try:
        return AESGCM(key).decrypt(nonce, body, header + bytes(aad))
    except InvalidTag:
        raise CryptoError(_OPEN_FAILED) from None
