"""The explicit record every fedrisk message carries across a party line.

Every message the coordinator or a party sends holds, besides its payload,
an :class:`ExchangeHeader` in the ``ConfigRecord`` named ``fedrisk.header``:
who sends it to whom, in which protocol step and round, the *content class*
of the payload (``ciphertext``, ``masked``, ``public``, ``aggregate`` or
``plaintext``) and the fingerprint of the key or context the payload was made
under.  The audit ledger records exactly this header plus the payload's hash
and size, so a message without a declared content class is refused here,
before it can be sent.

Payload blobs (ciphertexts, blinded points, masked vectors) travel as raw
byte ``Array`` entries of the ``ArrayRecord`` named ``fedrisk.payload``;
small public parameters travel in the ``ConfigRecord`` named
``fedrisk.config``.  Flower chunks large arrays on the wire; a single blob is
still capped (:data:`MAX_BLOB_BYTES`) so that one payload can never approach
Flower's 512 MiB gRPC message limit — protocols split larger payloads.

This module imports only Flower and the standard library: the ClientApp that
relays messages to a party's warm process imports it once per message.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Mapping

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedrisk.errors import ProtocolError

HEADER_RECORD = "fedrisk.header"
PAYLOAD_RECORD = "fedrisk.payload"
CONFIG_RECORD = "fedrisk.config"

#: What a payload is, as far as a compliance officer is concerned.
CONTENT_CLASSES = ("ciphertext", "masked", "public", "aggregate", "plaintext")
#: Content classes that may cross a party line; ``plaintext`` is a violation.
ALLOWED_ACROSS_PARTY_LINE = frozenset({"ciphertext", "masked", "public", "aggregate"})

#: Largest single blob; bigger payloads are split by the protocol.
MAX_BLOB_BYTES = 256 * 1024 * 1024

COORDINATOR = "coordinator"
NO_KEY = "-"


@dataclass(frozen=True)
class ExchangeHeader:
    """Who sends what to whom, and what kind of content it is.

    Parameters
    ----------
    run_id : str
        The fedrisk run id (the folder name under ``runs/``).
    round : int
        Protocol round or epoch (0 for setup steps).
    step : str
        Protocol step, e.g. ``fedavg.update`` or ``psi.blinded_ids``.
    sender, receiver : str
        Party names, or ``coordinator``.
    content_class : str
        One of :data:`CONTENT_CLASSES`.
    key_fingerprint : str
        Fingerprint of the CKKS context or key the payload was made under,
        ``-`` for payloads that involve no key.
    """

    run_id: str
    round: int
    step: str
    sender: str
    receiver: str
    content_class: str
    key_fingerprint: str = NO_KEY

    def __post_init__(self) -> None:
        if self.content_class not in CONTENT_CLASSES:
            raise ProtocolError(
                f"step {self.step!r}: undeclared content class {self.content_class!r} "
                f"(expected one of {', '.join(CONTENT_CLASSES)})"
            )
        if not self.step or not self.sender or not self.receiver:
            raise ProtocolError("exchange header needs a step, a sender and a receiver")

    def reply(self, content_class: str, key_fingerprint: str = NO_KEY, step: str | None = None) -> "ExchangeHeader":
        """Header for the answer to this message (sender and receiver swapped)."""
        return ExchangeHeader(
            run_id=self.run_id,
            round=self.round,
            step=step or self.step,
            sender=self.receiver,
            receiver=self.sender,
            content_class=content_class,
            key_fingerprint=key_fingerprint,
        )

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(asdict(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> "ExchangeHeader":
        try:
            return cls(
                run_id=str(record["run_id"]),
                round=int(record["round"]),
                step=str(record["step"]),
                sender=str(record["sender"]),
                receiver=str(record["receiver"]),
                content_class=str(record["content_class"]),
                key_fingerprint=str(record["key_fingerprint"]),
            )
        except KeyError as err:
            raise ProtocolError(f"exchange header lacks field {err.args[0]!r}") from None


def _raw_array(blob: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(blob),), stype="raw", data=blob)


def build_content(
    header: ExchangeHeader,
    blobs: Mapping[str, bytes] | None = None,
    config: Mapping[str, object] | None = None,
) -> RecordDict:
    """Assemble a message's content from a header, byte blobs and public config."""
    content = RecordDict({HEADER_RECORD: header.to_record()})
    if blobs:
        arrays = ArrayRecord()
        for name, blob in blobs.items():
            if not isinstance(blob, (bytes, bytearray, memoryview)):
                raise ProtocolError(f"step {header.step!r}: blob {name!r} is not bytes")
            if len(blob) > MAX_BLOB_BYTES:
                raise ProtocolError(
                    f"step {header.step!r}: blob {name!r} is {len(blob):,} bytes, "
                    f"over the {MAX_BLOB_BYTES:,}-byte limit; split it"
                )
            arrays[name] = _raw_array(bytes(blob))
        content[PAYLOAD_RECORD] = arrays
    if config:
        content[CONFIG_RECORD] = ConfigRecord(dict(config))  # type: ignore[arg-type]
    return content


@dataclass(frozen=True)
class Exchange:
    """A received message's content, unpacked."""

    header: ExchangeHeader
    blobs: dict[str, bytes]
    config: dict[str, object]

    def blob(self, name: str) -> bytes:
        try:
            return self.blobs[name]
        except KeyError:
            raise ProtocolError(f"step {self.header.step!r}: payload lacks blob {name!r}") from None

    def value(self, name: str, default: object = ...) -> object:
        if name in self.config:
            return self.config[name]
        if default is ...:
            raise ProtocolError(f"step {self.header.step!r}: config lacks {name!r}")
        return default


def read_content(content: RecordDict) -> Exchange:
    """Unpack a message's content; refuses content without a valid header."""
    if HEADER_RECORD not in content:
        raise ProtocolError("message has no fedrisk.header record (undeclared content)")
    record = content[HEADER_RECORD]
    if not isinstance(record, ConfigRecord):
        raise ProtocolError("fedrisk.header is not a ConfigRecord")
    header = ExchangeHeader.from_record(record)
    blobs: dict[str, bytes] = {}
    if PAYLOAD_RECORD in content:
        arrays = content[PAYLOAD_RECORD]
        if not isinstance(arrays, ArrayRecord):
            raise ProtocolError(f"step {header.step!r}: fedrisk.payload is not an ArrayRecord")
        for name in arrays:
            blobs[name] = bytes(arrays[name].data)
    config: dict[str, object] = {}
    if CONFIG_RECORD in content:
        config = dict(content[CONFIG_RECORD])
    return Exchange(header=header, blobs=blobs, config=config)


def content_digest_bytes(content: RecordDict) -> bytes:
    """The canonical bytes of a message's content (Flower's protobuf, deterministic)."""
    return recorddict_to_proto(content).SerializeToString(deterministic=True)


def content_digest(content: RecordDict) -> tuple[str, int]:
    """SHA-256 and byte size of a message's content, as both ends compute it."""
    data = content_digest_bytes(content)
    return hashlib.sha256(data).hexdigest(), len(data)
