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
import struct
from dataclasses import asdict, dataclass
from typing import Mapping

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

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

#: A transport probe: the party's warm process sends the content straight back (``benchmarks/exchange.py``).
#: It carries only what the coordinator sent, so a party releases nothing of its own by answering it.
ECHO = "query.echo"
#: The only content class an echo may carry: it is the coordinator's own public test payload.
ECHO_CONTENT_CLASS = "public"


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
            raise ProtocolError(f"step {self.step!r}: undeclared content class {self.content_class!r} (expected one of {', '.join(CONTENT_CLASSES)})")
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
            round_value = record["round"]
            if isinstance(round_value, list):
                raise ProtocolError("exchange header field 'round' is a list, not a round number")
            return cls(
                run_id=str(record["run_id"]),
                round=int(round_value),
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
                raise ProtocolError(f"step {header.step!r}: blob {name!r} is {len(blob):,} bytes, over the {MAX_BLOB_BYTES:,}-byte limit; split it")
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


def echo_reply(content: RecordDict, party: str) -> RecordDict:
    """The answer to an :data:`ECHO`: the same payload and config, addressed back to its sender.

    Refuses an echo addressed to another party or declared anything but
    :data:`ECHO_CONTENT_CLASS` (an echo must never be a way to bounce a
    ciphertext or a masked value through a party).
    """
    header = read_header(content)
    if header.receiver != party:
        raise ProtocolError(f"party {party!r} got an echo addressed to {header.receiver!r}")
    if header.content_class != ECHO_CONTENT_CLASS:
        raise ProtocolError(f"an echo carries {ECHO_CONTENT_CLASS!r} content only, not {header.content_class!r}")
    reply = RecordDict({name: record for name, record in content.items() if name != HEADER_RECORD})
    reply[HEADER_RECORD] = header.reply(ECHO_CONTENT_CLASS).to_record()
    return reply


def read_header(content: RecordDict) -> ExchangeHeader:
    """A message's header alone (no payload copied); refuses content without a valid header."""
    if HEADER_RECORD not in content:
        raise ProtocolError("message has no fedrisk.header record (undeclared content)")
    record = content[HEADER_RECORD]
    if not isinstance(record, ConfigRecord):
        raise ProtocolError("fedrisk.header is not a ConfigRecord")
    return ExchangeHeader.from_record(record)


def read_content(content: RecordDict) -> Exchange:
    """Unpack a message's content; refuses content without a valid header."""
    header = read_header(content)
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


#: Domain of :func:`content_digest` (bump on any change to the encoding below).
DIGEST_DOMAIN = b"fedrisk.content-digest.v1\0"


class _Digest:
    """SHA-256 over a length-prefixed, type-tagged stream; counts the bytes it hashed."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256(DIGEST_DOMAIN)
        self.size = 0

    def put(self, tag: bytes, data: bytes | memoryview) -> None:
        self.hash.update(tag + struct.pack("<Q", len(data)))
        self.hash.update(data)
        self.size += len(data)

    def value(self, value: object) -> None:
        # exact types: bool before int, as bool is an int in Python
        if isinstance(value, bool):
            self.put(b"b", b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            self.put(b"i", str(value).encode("ascii"))
        elif isinstance(value, float):
            self.put(b"f", struct.pack("<d", value))
        elif isinstance(value, str):
            self.put(b"s", value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self.put(b"y", bytes(value))
        elif isinstance(value, list):
            self.put(b"l", struct.pack("<Q", len(value)))
            for item in value:
                self.value(item)
        else:
            raise ProtocolError(f"content value of type {type(value).__name__} has no digest encoding")


def content_digest(content: RecordDict) -> tuple[str, int]:
    """SHA-256 and byte size of a message's content, as both ends compute it.

    A canonical, type-tagged encoding of every record (by name), array (by
    name: dtype, shape, storage type, data) and config or metric value,
    hashed as a stream — no serialised copy of the content is made, so a
    multi-megabyte ciphertext costs one SHA-256 pass. The size is the number
    of value bytes hashed (blob bytes plus names and small values). Flower
    delivers the same records, arrays and typed values at the other end, so
    sender and receiver compute the same pair.
    """
    digest = _Digest()
    for name in sorted(content.keys()):
        record = content[name]
        digest.put(b"R", name.encode("utf-8"))
        if isinstance(record, ArrayRecord):
            digest.put(b"A", struct.pack("<Q", len(record)))
            for key in sorted(record.keys()):
                array: Array = record[key]
                digest.put(b"n", key.encode("utf-8"))
                digest.put(b"t", f"{array.dtype}|{array.stype}|{','.join(map(str, array.shape))}".encode("utf-8"))
                digest.put(b"d", array.data)
        elif isinstance(record, (ConfigRecord, MetricRecord)):
            digest.put(b"C" if isinstance(record, ConfigRecord) else b"M", struct.pack("<Q", len(record)))
            for key in sorted(record.keys()):
                digest.put(b"n", key.encode("utf-8"))
                digest.value(record[key])
        else:
            raise ProtocolError(f"content record {name!r} of type {type(record).__name__} has no digest encoding")
    return digest.hash.hexdigest(), digest.size
