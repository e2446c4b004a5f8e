"""Ledger records: what crossed a party line, and how an entry is sealed.

An :class:`ExchangeRecord` is what the caller knows about one message (who, what,
which key, how big, its SHA-256). The ledger turns it into a
:class:`LedgerEntry` by giving it a sequence number, a timestamp, the hash of
the previous entry, its own hash and an Ed25519 signature.

Canonical encoding (format ``fedrisk-ledger/2``)
------------------------------------------------
The signed *body* of an entry is the JSON object of exactly these fields::

    seq, kind, run_id, round, step, sender, receiver, message_type, message_id,
    direction, payload_sha256, size_bytes, content_class, key_fingerprint,
    sender_count, sender_head, timestamp_us, prev_hash

serialised with ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)``: keys sorted, no whitespace, every
non-ASCII character escaped as ``\\uXXXX``, integers in plain decimal, no
floats. The result is pure ASCII.

* ``entry_hash = SHA-256(b"fedrisk-ledger-entry-v2\\n" + body_ascii)``, hex.
* ``signature  = Ed25519(b"fedrisk-ledger-sig-v2\\n" + entry_hash_raw_32_bytes)``,
  made with the writer's identity key, hex.
* ``prev_hash`` of entry ``seq = 1`` is the *genesis hash*
  ``SHA-256(b"fedrisk-ledger-genesis-v2\\n" + canonical_json({"format",
  "public_key", "writer"}))``, which ties the chain to the writer and its key;
  every later entry carries the ``entry_hash`` of entry ``seq - 1``.
* ``key_id`` of a public key is the first 16 hex characters of SHA-256 of
  its 32 raw bytes (the same id as ``fedrisk.crypto.signing.key_id_of``).
* ``timestamp_us`` is the writer's wall clock, microseconds since the Unix
  epoch (UTC).

The domain prefixes keep a ledger hash or signature from ever being valid as
any other fedrisk hash or signature.

Ledger heads and run-close records (what makes a cut tail visible)
------------------------------------------------------------------
Every message a node sends carries its ledger's *head* at sending time — the
entry count and the ``entry_hash`` of its last entry (``0`` and the genesis
hash when empty) — in the ``fedrisk.ledger`` record of its content
(:mod:`fedrisk.audit.recorder`). Both ends store it in their entry of that
message as ``sender_count`` / ``sender_head`` (``0`` / ``""`` when a message
carried none), so the *receiver's* ledger holds signed evidence of how long
the sender's ledger was; a sender's ledger cut below that count, or rewritten,
no longer matches (:func:`fedrisk.audit.verify.cross_check`).

``kind`` is ``exchange`` for a message and ``run_close`` for the record a node
writes when a run ends: ``sender_count`` / ``sender_head`` are then the head it
closes (always ``seq - 1`` and ``prev_hash``), ``sender`` is the writer,
``receiver`` is ``*``, ``step`` is ``run.close``, ``message_type`` is
``ledger.close``, ``payload_sha256`` / ``size_bytes`` are the SHA-256 and length
of the canonical close statement
``{"count", "format": "fedrisk-run-close/1", "head", "run_id", "writer"}``.
A run whose entries carry heads must end, in each ledger, with a run-close
record; one that does not had its tail cut (or never ended cleanly).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedrisk.errors import LedgerError

FORMAT = "fedrisk-ledger/2"
ENTRY_DOMAIN = b"fedrisk-ledger-entry-v2\n"
SIG_DOMAIN = b"fedrisk-ledger-sig-v2\n"
GENESIS_DOMAIN = b"fedrisk-ledger-genesis-v2\n"
MESSAGE_ID_DOMAIN = b"fedrisk-ledger-msgid-v1\n"
RUN_CLOSE_FORMAT = "fedrisk-run-close/1"
#: ``step``, ``message_type`` and ``receiver`` of a run-close record.
RUN_CLOSE_STEP = "run.close"
RUN_CLOSE_TYPE = "ledger.close"
RUN_CLOSE_RECEIVER = "*"
#: Step of the messages that ask a party to close its ledger and carry its answer
#: (:func:`fedrisk.federation.ledger_grid.close_run`); they may follow a run-close record.
CLOSE_HANDSHAKE_STEP = "ledger.close"

#: Fields of the signed body, in the order of the ``entries`` table.
BODY_FIELDS: tuple[str, ...] = (
    "seq",
    "kind",
    "run_id",
    "round",
    "step",
    "sender",
    "receiver",
    "message_type",
    "message_id",
    "direction",
    "payload_sha256",
    "size_bytes",
    "content_class",
    "key_fingerprint",
    "sender_count",
    "sender_head",
    "timestamp_us",
    "prev_hash",
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 256


class ContentClass(str, Enum):
    """What kind of bytes a message carried, by protocol."""

    CIPHERTEXT = "ciphertext"
    MASKED = "masked"
    PUBLIC = "public"
    AGGREGATE = "aggregate"
    # Exists only so that a plaintext crossing can be recorded and flagged.
    PLAINTEXT = "plaintext"


class EntryKind(str, Enum):
    """What an entry records: a message, or the end of a run in this ledger."""

    EXCHANGE = "exchange"
    RUN_CLOSE = "run_close"


class Direction(str, Enum):
    """Whether the ledger's writer sent or received the message."""

    SENT = "sent"
    RECEIVED = "received"


class Signer(Protocol):
    """Anything that can sign for a ledger writer.

    ``fedrisk.crypto.signing.SigningIdentity`` fits, as does
    :class:`Ed25519Signer`. ``public_key_bytes`` may be an attribute, a
    property or a zero-argument method returning the 32 raw key bytes.
    """

    @property
    def public_key_bytes(self) -> Any:  # pragma: no cover - protocol; read-only, so a property fits
        ...

    def sign(self, data: bytes) -> bytes:  # pragma: no cover - protocol
        ...


class Ed25519Signer:
    """A minimal Ed25519 identity built on ``cryptography``.

    Parameters
    ----------
    private_key
        The writer's private key.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """Return a signer with a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Ed25519Signer:
        """Return the signer of a 32-byte raw private key (seed)."""
        try:
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        except ValueError as exc:
            raise LedgerError(f"invalid Ed25519 private key: {exc}") from None

    def private_bytes(self) -> bytes:
        """Return the 32-byte raw private key (for tests and key files)."""
        return self._key.private_bytes_raw()

    @property
    def public_key_bytes(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return self._public

    @property
    def key_id(self) -> str:
        """The key id of the public key (see :func:`key_id_of`)."""
        return key_id_of(self._public)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


def signer_public_key(signer: Signer) -> bytes:
    """Return the 32 raw public-key bytes of any :class:`Signer`."""
    pub = signer.public_key_bytes
    if callable(pub):
        pub = pub()
    if not isinstance(pub, bytes | bytearray) or len(pub) != 32:
        raise LedgerError("signer.public_key_bytes must be 32 raw Ed25519 bytes")
    return bytes(pub)


def key_id_of(public_key: bytes) -> str:
    """Return the key id: first 16 hex characters of SHA-256 of the raw key.

    Same derivation as ``fedrisk.crypto.signing.key_id_of``, so a node's key
    has one id across the project (kept local to avoid the import).
    """
    return hashlib.sha256(public_key).hexdigest()[:16]


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of ``obj`` (sorted keys, ASCII, compact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash_of(body_text: str) -> str:
    """Return the hex ``entry_hash`` of a canonical body text."""
    return hashlib.sha256(ENTRY_DOMAIN + body_text.encode("ascii")).hexdigest()


def signed_message(entry_hash: str) -> bytes:
    """Return the bytes an entry's signature covers."""
    return SIG_DOMAIN + bytes.fromhex(entry_hash)


def genesis_hash(writer: str, public_key: bytes) -> str:
    """Return the ``prev_hash`` of a ledger's first entry."""
    anchor = canonical_json({"format": FORMAT, "public_key": public_key.hex(), "writer": writer})
    return hashlib.sha256(GENESIS_DOMAIN + anchor.encode("ascii")).hexdigest()


def verify_signature(public_key: bytes | Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``data``."""
    try:
        key = public_key if isinstance(public_key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def derive_message_id(
    run_id: str,
    round: int,
    step: str,
    sender: str,
    receiver: str,
    message_type: str,
    payload_sha256: str,
) -> str:
    """Return a payload-derived message id both sides can compute alone.

    Use it when no transport message id (e.g. Flower's) is shared by both
    ends. Two identical payloads in the same step between the same parties
    get the same id; pass a distinguishing ``step`` (e.g. ``"grad/3"``) then.
    """
    text = canonical_json([run_id, round, step, sender, receiver, message_type, payload_sha256])
    return hashlib.sha256(MESSAGE_ID_DOMAIN + text.encode("ascii")).hexdigest()[:32]


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a usable one-line name, else raise LedgerError."""
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_TEXT:
        raise LedgerError(f"{what} is longer than {_MAX_TEXT} characters")
    # Control characters would break one-line findings and table cells.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise LedgerError(f"{what} contains control characters: {value!r}")
    return value


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _enum(cls: type[Enum], value: object, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise LedgerError(f"{what} {value!r} is not one of {allowed}") from None


@dataclass(frozen=True)
class ExchangeRecord:
    """One message crossing a party line, as seen by the ledger's writer.

    Attributes
    ----------
    run_id, round, step
        Where in the federation the message belongs (``round`` 0 = setup, e.g. PSI).
    sender, receiver
        Node names; they must differ. The writer is ``sender`` when
        ``direction`` is ``sent`` and ``receiver`` when it is ``received``.
    message_type
        Protocol message type, e.g. ``"vlr.residual"``.
    message_id
        Id shared by the sender's and the receiver's entries (the Flower
        message id, or :func:`derive_message_id`).
    direction
        ``sent`` or ``received``.
    payload_sha256
        Lower-case hex SHA-256 of the payload: for a Flower message, of its content's
        canonical encoding (:func:`fedrisk.wire.exchange.content_digest`).
    size_bytes
        Length of those bytes.
    content_class
        ``ciphertext``, ``masked``, ``public``, ``aggregate`` or ``plaintext``.
    key_fingerprint
        Fingerprint of the key or CKKS context the payload was made under;
        ``""`` for payloads made under no key.
    timestamp_us
        When it crossed (µs since epoch, UTC); ``None`` = stamped at append.
    sender_count, sender_head
        The sender's ledger head the message carried (entry count and that
        entry's hash; ``0`` and the genesis hash for an empty ledger), or ``0``
        and ``""`` when it carried none. For a run-close record: the head it closes.
    kind
        ``exchange`` (a message) or ``run_close`` (see :func:`run_close_record`).
    """

    run_id: str
    round: int
    step: str
    sender: str
    receiver: str
    message_type: str
    message_id: str
    direction: Direction
    payload_sha256: str
    size_bytes: int
    content_class: ContentClass
    key_fingerprint: str = ""
    timestamp_us: int | None = None
    sender_count: int = 0
    sender_head: str = ""
    kind: EntryKind = EntryKind.EXCHANGE

    def __post_init__(self) -> None:
        for name in ("run_id", "step", "sender", "receiver", "message_type", "message_id"):
            check_name(getattr(self, name), name)
        _check_int(self.round, "round")
        _check_int(self.size_bytes, "size_bytes")
        if self.timestamp_us is not None:
            _check_int(self.timestamp_us, "timestamp_us")
        if self.sender == self.receiver:
            raise LedgerError(f"sender and receiver are both {self.sender!r}: not a party-line crossing")
        if not isinstance(self.payload_sha256, str) or not _HEX64.fullmatch(self.payload_sha256):
            raise LedgerError(f"payload_sha256 must be 64 lower-case hex characters, got {self.payload_sha256!r}")
        if not isinstance(self.key_fingerprint, str) or len(self.key_fingerprint) > _MAX_TEXT:
            raise LedgerError(f"key_fingerprint must be a string of at most {_MAX_TEXT} characters")
        if self.key_fingerprint:
            check_name(self.key_fingerprint, "key_fingerprint")
        # Frozen: coerce plain strings to the enums through object.__setattr__.
        object.__setattr__(self, "direction", _enum(Direction, self.direction, "direction"))
        object.__setattr__(self, "content_class", _enum(ContentClass, self.content_class, "content_class"))
        object.__setattr__(self, "kind", _enum(EntryKind, self.kind, "kind"))
        _check_int(self.sender_count, "sender_count")
        if not isinstance(self.sender_head, str) or (self.sender_head and not _HEX64.fullmatch(self.sender_head)):
            raise LedgerError(f"sender_head must be empty or 64 lower-case hex characters, got {self.sender_head!r}")
        if not self.sender_head and self.sender_count:
            raise LedgerError("sender_count without a sender_head")
        if self.kind is EntryKind.RUN_CLOSE and (self.receiver != RUN_CLOSE_RECEIVER or self.direction is not Direction.SENT or not self.sender_head):
            raise LedgerError("a run-close record is sent by its writer to '*' and names the head it closes")

    def with_kind(self, kind: EntryKind | str) -> ExchangeRecord:
        """This record as another :class:`EntryKind` (validated again)."""
        return ExchangeRecord(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "kind": kind})

    @property
    def writer(self) -> str:
        """The node whose ledger records this exchange."""
        return self.sender if self.direction is Direction.SENT else self.receiver

    @classmethod
    def of_payload(cls, payload: bytes, **record_fields: Any) -> ExchangeRecord:
        """Build an exchange from the payload bytes (hash and size computed here);
        ``record_fields`` as for :meth:`of_digest`."""
        return cls.of_digest(hashlib.sha256(payload).hexdigest(), len(payload), **record_fields)

    @classmethod
    def of_digest(
        cls,
        digest: str,
        size: int,
        *,
        run_id: str,
        round: int,
        step: str,
        sender: str,
        receiver: str,
        message_type: str,
        direction: Direction | str,
        content_class: ContentClass | str,
        key_fingerprint: str = "",
        message_id: str | None = None,
        timestamp_us: int | None = None,
        sender_count: int = 0,
        sender_head: str = "",
    ) -> ExchangeRecord:
        """Build an exchange from a payload's SHA-256 (hex) and size, computed by the caller
        (:func:`fedrisk.wire.exchange.content_digest` for a Flower message's content).

        ``message_id`` defaults to :func:`derive_message_id`, which the other
        side computes identically from the same digest.
        """
        if message_id is None:
            message_id = derive_message_id(run_id, round, step, sender, receiver, message_type, digest)
        return cls(
            run_id=run_id,
            round=round,
            step=step,
            sender=sender,
            receiver=receiver,
            message_type=message_type,
            message_id=message_id,
            direction=direction,  # type: ignore[arg-type]  # coerced in __post_init__
            payload_sha256=digest,
            size_bytes=size,
            content_class=content_class,  # type: ignore[arg-type]
            key_fingerprint=key_fingerprint,
            timestamp_us=timestamp_us,
            sender_count=sender_count,
            sender_head=sender_head,
        )


@dataclass(frozen=True)
class LedgerEntry:
    """A sealed ledger entry, exactly as stored.

    Entries read back from a file are not validated (a tampered file may hold
    any value in any field); :mod:`fedrisk.audit.verify` judges them.
    """

    seq: int
    kind: str
    run_id: str
    round: int
    step: str
    sender: str
    receiver: str
    message_type: str
    message_id: str
    direction: str
    payload_sha256: str
    size_bytes: int
    content_class: str
    key_fingerprint: str
    sender_count: int
    sender_head: str
    timestamp_us: int
    prev_hash: str
    entry_hash: str
    signature: str

    def body(self) -> dict[str, Any]:
        """Return the signed fields as a plain dict."""
        return {name: getattr(self, name) for name in BODY_FIELDS}

    def body_text(self) -> str:
        """Return the canonical JSON text the entry hash covers."""
        return canonical_json(self.body())

    def as_dict(self) -> dict[str, Any]:
        """Return every field as a plain dict (JSON-ready for valid entries)."""
        return asdict(self)

    @property
    def writer(self) -> str:
        """The node whose ledger holds this entry."""
        return self.sender if self.direction == Direction.SENT.value else self.receiver


ENTRY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LedgerEntry))


def seal(exchange: ExchangeRecord, seq: int, prev_hash: str, signer: Signer, now_us: int | None = None) -> tuple[LedgerEntry, str]:
    """Seal ``exchange`` as entry ``seq`` after ``prev_hash``.

    Returns
    -------
    tuple
        The entry and its canonical body text (stored beside the columns so
        that verification can name the exact field that was altered).
    """
    ts = exchange.timestamp_us
    if ts is None:
        ts = now_us if now_us is not None else time.time_ns() // 1000
    body: dict[str, Any] = {
        "seq": seq,
        "kind": exchange.kind.value,
        "run_id": exchange.run_id,
        "round": exchange.round,
        "step": exchange.step,
        "sender": exchange.sender,
        "receiver": exchange.receiver,
        "message_type": exchange.message_type,
        "message_id": exchange.message_id,
        "direction": exchange.direction.value,
        "payload_sha256": exchange.payload_sha256,
        "size_bytes": exchange.size_bytes,
        "content_class": exchange.content_class.value,
        "key_fingerprint": exchange.key_fingerprint,
        "sender_count": exchange.sender_count,
        "sender_head": exchange.sender_head,
        "timestamp_us": ts,
        "prev_hash": prev_hash,
    }
    text = canonical_json(body)
    digest = entry_hash_of(text)
    signature = signer.sign(signed_message(digest)).hex()
    return LedgerEntry(**body, entry_hash=digest, signature=signature), text


def run_close_statement(run_id: str, writer: str, count: int, head: str) -> bytes:
    """The canonical statement a run-close record's ``payload_sha256`` and ``size_bytes`` cover."""
    return canonical_json({"count": count, "format": RUN_CLOSE_FORMAT, "head": head, "run_id": run_id, "writer": writer}).encode("ascii")


def run_close_record(run_id: str, writer: str, count: int, head: str) -> ExchangeRecord:
    """The record closing run ``run_id`` in ``writer``'s ledger, whose head is ``(count, head)``.

    Append it with :meth:`fedrisk.audit.store.Ledger.close_run`, which reads the
    head inside the appending transaction, so the record always closes the
    entry right before it.
    """
    return ExchangeRecord.of_payload(
        run_close_statement(run_id, writer, count, head),
        run_id=run_id,
        round=0,
        step=RUN_CLOSE_STEP,
        sender=writer,
        receiver=RUN_CLOSE_RECEIVER,
        message_type=RUN_CLOSE_TYPE,
        direction=Direction.SENT,
        content_class=ContentClass.PUBLIC,
        sender_count=count,
        sender_head=head,
    ).with_kind(EntryKind.RUN_CLOSE)
