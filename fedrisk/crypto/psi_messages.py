"""Wire messages of fedrisk's ECDH-PSI: three frozen dataclasses with a compact byte format.

Every message is ``MAGIC | version | kind`` followed by its fields; strings are
``u16 length | UTF-8`` (1..1024 bytes), counts ``u32`` big endian, and sets of points
the plain concatenation of 32-byte X25519 u-coordinates (``n * 32`` bytes, no
per-point framing). :meth:`to_bytes` / :meth:`from_bytes` round-trip exactly, and
``from_bytes`` rejects anything else (wrong magic, version or kind, truncation,
trailing bytes, bad UTF-8, a length that disagrees with a count) with a one-line
:class:`~fedrisk.errors.ProtocolError`. Nothing here is ever pickled.

======================  ==========================  =====================================
message                 direction                   content
======================  ==========================  =====================================
:class:`BlindedSet`     every party -> its peer(s)  ``H(id)^k`` for all own IDs, shuffled,
                                                    plus the party's per-run public key
:class:`DoubleBlindedSet` feature -> label holder   ``(H(x)^a)^b`` in the order received
:class:`PSIResult`      label -> feature holder     AEAD-encrypted bitmap over the feature
                                                    holder's shuffled set: which matched
======================  ==========================  =====================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from fedrisk.errors import ProtocolError

__all__ = [
    "MAGIC",
    "VERSION",
    "BlindedSet",
    "DoubleBlindedSet",
    "PSIMessage",
    "PSIResult",
    "decode_psi_message",
]

MAGIC = b"FRPS"
VERSION = 2  # 2: IDs hashed with RFC 9380 hash_to_curve (1: raw SHA-512 u-coordinates)
POINT_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_COUNT = 2**32 - 1
_MAX_STR = 1024
_ROLES: tuple[str, str] = ("label", "feature")

_KIND_BLINDED = 1
_KIND_DOUBLE = 2
_KIND_RESULT = 3
_KIND_NAMES = {_KIND_BLINDED: "BlindedSet", _KIND_DOUBLE: "DoubleBlindedSet", _KIND_RESULT: "PSIResult"}


def _header(kind: int) -> bytes:
    return MAGIC + bytes((VERSION, kind))


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _check_string(what: str, name: str, value: object) -> None:
    try:
        ok = isinstance(value, str) and 1 <= len(value.encode("utf-8")) <= _MAX_STR
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise ProtocolError(f"PSI {what}: {name} must be a string of 1..{_MAX_STR} UTF-8 bytes")


def _check_points(what: str, name: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) % POINT_SIZE:
        raise ProtocolError(f"PSI {what}: {name} must be bytes of a multiple of 32 in length")
    if len(value) // POINT_SIZE > MAX_COUNT:
        raise ProtocolError(f"PSI {what}: more than {MAX_COUNT} points")


def _points_array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, POINT_SIZE)


class _Reader:
    """Bounds-checked cursor over a message; every failure is a one-line ProtocolError."""

    def __init__(self, data: bytes, expected_kind: int | None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"PSI message must be bytes, got {type(data).__name__}")
        self._data = memoryview(data).cast("B")
        self._pos = 0
        self.what = _KIND_NAMES.get(expected_kind or 0, "message")
        if len(self._data) < len(MAGIC) + 2 or bytes(self._data[: len(MAGIC)]) != MAGIC:
            raise ProtocolError("not a fedrisk PSI message (bad magic)")
        self._pos = len(MAGIC)
        version, kind = self.u8(), self.u8()
        if version != VERSION:
            raise ProtocolError(f"unsupported PSI message version {version} (expected {VERSION})")
        if kind not in _KIND_NAMES:
            raise ProtocolError(f"unknown PSI message kind {kind}")
        if expected_kind is not None and kind != expected_kind:
            raise ProtocolError(f"expected a PSI {_KIND_NAMES[expected_kind]}, got a {_KIND_NAMES[kind]}")
        self.kind = kind
        self.what = _KIND_NAMES[kind]

    def fail(self, reason: str) -> ProtocolError:
        return ProtocolError(f"malformed PSI {self.what}: {reason}")

    def take(self, n: int, name: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self.fail(f"truncated in {name} (needs {n} bytes at offset {self._pos}, {len(self._data)} in all)")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1, "header")[0]

    def u32(self, name: str) -> int:
        return int(struct.unpack(">I", self.take(4, name))[0])

    def string(self, name: str) -> str:
        (size,) = struct.unpack(">H", self.take(2, name))
        if not 1 <= size <= _MAX_STR:
            raise self.fail(f"{name} length {size} outside 1..{_MAX_STR}")
        try:
            return self.take(size, name).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{name} is not valid UTF-8") from None

    def points(self, count: int, name: str) -> bytes:
        return self.take(count * POINT_SIZE, name)

    def done(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} trailing bytes")


@dataclass(frozen=True)
class BlindedSet:
    """One party's IDs, hashed to X25519 u-coordinates, blinded by its secret, shuffled.

    Attributes
    ----------
    run_id
        The PSI run this belongs to.
    sender
        Name of the sending party.
    role
        ``"label"`` (sent by the label holder to every feature holder) or
        ``"feature"`` (sent by a feature holder to the label holder).
    public_key
        The sender's per-run X25519 public key (its PSI scalar times the base point);
        the label and a feature holder derive the key of :class:`PSIResult` from it.
    points
        ``n * 32`` bytes: ``X25519(k, H(id))`` for every ID, in a random order.
    """

    KIND: ClassVar[int] = _KIND_BLINDED

    run_id: str
    sender: str
    role: Literal["label", "feature"]
    public_key: bytes = field(repr=False)
    points: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_string("BlindedSet", "run_id", self.run_id)
        _check_string("BlindedSet", "sender", self.sender)
        if self.role not in _ROLES:
            raise ProtocolError(f"PSI BlindedSet: role must be 'label' or 'feature', got {self.role!r}")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != POINT_SIZE:
            raise ProtocolError("PSI BlindedSet: public_key must be 32 bytes")
        _check_points("BlindedSet", "points", self.points)

    @property
    def count(self) -> int:
        """Number of blinded IDs."""
        return len(self.points) // POINT_SIZE

    def points_array(self) -> np.ndarray:
        """The points as a read-only ``(count, 32)`` uint8 array (no copy)."""
        return _points_array(self.points)

    def __repr__(self) -> str:
        return f"BlindedSet(run_id={self.run_id!r}, sender={self.sender!r}, role={self.role!r}, count={self.count})"

    def to_bytes(self) -> bytes:
        """Serialise for the wire."""
        return b"".join(
            (
                _header(self.KIND),
                _string(self.run_id),
                _string(self.sender),
                bytes((_ROLES.index(self.role),)),
                self.public_key,
                struct.pack(">I", self.count),
                self.points,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> BlindedSet:
        """Parse :meth:`to_bytes` output; raise :class:`ProtocolError` on anything else."""
        return _parse_blinded(_Reader(data, _KIND_BLINDED))


@dataclass(frozen=True)
class DoubleBlindedSet:
    """The label holder's blinded set, blinded again by a feature holder, order kept.

    Attributes
    ----------
    run_id
        The PSI run this belongs to.
    sender
        Name of the feature holder.
    points
        ``n * 32`` bytes: ``X25519(b, p_i)`` for the label holder's points ``p_i``,
        row ``i`` answering row ``i`` of the label holder's :class:`BlindedSet`.
    """

    KIND: ClassVar[int] = _KIND_DOUBLE

    run_id: str
    sender: str
    points: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_string("DoubleBlindedSet", "run_id", self.run_id)
        _check_string("DoubleBlindedSet", "sender", self.sender)
        _check_points("DoubleBlindedSet", "points", self.points)

    @property
    def count(self) -> int:
        """Number of points."""
        return len(self.points) // POINT_SIZE

    def points_array(self) -> np.ndarray:
        """The points as a read-only ``(count, 32)`` uint8 array (no copy)."""
        return _points_array(self.points)

    def __repr__(self) -> str:
        return f"DoubleBlindedSet(run_id={self.run_id!r}, sender={self.sender!r}, count={self.count})"

    def to_bytes(self) -> bytes:
        """Serialise for the wire."""
        return b"".join(
            (
                _header(self.KIND),
                _string(self.run_id),
                _string(self.sender),
                struct.pack(">I", self.count),
                self.points,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DoubleBlindedSet:
        """Parse :meth:`to_bytes` output; raise :class:`ProtocolError` on anything else."""
        return _parse_double(_Reader(data, _KIND_DOUBLE))


@dataclass(frozen=True)
class PSIResult:
    """The label holder's answer to one feature holder, readable only by that feature holder.

    The plaintext is a bitmap of ``n_bits`` bits (``numpy.packbits``, little bit order):
    bit ``j`` is set when row ``j`` of the feature holder's :class:`BlindedSet` is in
    the intersection. It is sealed with ChaCha20-Poly1305 under a key that only the two
    parties can derive (X25519 of their per-run keys, through HKDF-SHA256), with
    :meth:`associated_data` as AAD; so the coordinator relaying it learns neither the
    matches nor their number, and cannot alter them unnoticed.

    Attributes
    ----------
    run_id
        The PSI run this belongs to.
    sender
        Name of the label holder.
    recipient
        Name of the feature holder.
    n_bits
        Size of the feature holder's blinded set.
    nonce
        12-byte AEAD nonce.
    ciphertext
        ``ceil(n_bits / 8) + 16`` bytes.
    """

    KIND: ClassVar[int] = _KIND_RESULT

    run_id: str
    sender: str
    recipient: str
    n_bits: int
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_string("PSIResult", "run_id", self.run_id)
        _check_string("PSIResult", "sender", self.sender)
        _check_string("PSIResult", "recipient", self.recipient)
        if not isinstance(self.n_bits, int) or not 0 <= self.n_bits <= MAX_COUNT:
            raise ProtocolError(f"PSI PSIResult: n_bits must be an int in 0..{MAX_COUNT}")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise ProtocolError("PSI PSIResult: nonce must be 12 bytes")
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) != self.ciphertext_size(self.n_bits):
            raise ProtocolError(f"PSI PSIResult: ciphertext must be {self.ciphertext_size(self.n_bits)} bytes for {self.n_bits} bits")

    @staticmethod
    def ciphertext_size(n_bits: int) -> int:
        """Ciphertext length for a bitmap of ``n_bits`` bits."""
        return (n_bits + 7) // 8 + TAG_SIZE

    def associated_data(self) -> bytes:
        """Everything but the ciphertext, as authenticated by the AEAD."""
        return b"".join(
            (
                _header(self.KIND),
                _string(self.run_id),
                _string(self.sender),
                _string(self.recipient),
                struct.pack(">I", self.n_bits),
                self.nonce,
            )
        )

    def to_bytes(self) -> bytes:
        """Serialise for the wire."""
        return self.associated_data() + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> PSIResult:
        """Parse :meth:`to_bytes` output; raise :class:`ProtocolError` on anything else."""
        return _parse_result(_Reader(data, _KIND_RESULT))


PSIMessage = BlindedSet | DoubleBlindedSet | PSIResult
_Message = TypeVar("_Message", BlindedSet, DoubleBlindedSet, PSIResult)


def _build(reader: _Reader, cls: type[_Message], **fields: Any) -> _Message:
    reader.done()
    try:
        return cls(**fields)
    except ProtocolError as exc:
        raise reader.fail(str(exc).split(": ", 1)[-1]) from None


def _parse_blinded(r: _Reader) -> BlindedSet:
    run_id, sender = r.string("run_id"), r.string("sender")
    role_byte = r.take(1, "role")[0]
    if role_byte >= len(_ROLES):
        raise r.fail(f"unknown role {role_byte}")
    public_key = r.take(POINT_SIZE, "public_key")
    count = r.u32("count")
    points = r.points(count, "points")
    return _build(r, BlindedSet, run_id=run_id, sender=sender, role=_ROLES[role_byte], public_key=public_key, points=points)


def _parse_double(r: _Reader) -> DoubleBlindedSet:
    run_id, sender = r.string("run_id"), r.string("sender")
    count = r.u32("count")
    points = r.points(count, "points")
    return _build(r, DoubleBlindedSet, run_id=run_id, sender=sender, points=points)


def _parse_result(r: _Reader) -> PSIResult:
    run_id, sender, recipient = r.string("run_id"), r.string("sender"), r.string("recipient")
    n_bits = r.u32("n_bits")
    nonce = r.take(NONCE_SIZE, "nonce")
    ciphertext = r.take(PSIResult.ciphertext_size(n_bits), "ciphertext")
    return _build(r, PSIResult, run_id=run_id, sender=sender, recipient=recipient, n_bits=n_bits, nonce=nonce, ciphertext=ciphertext)


def decode_psi_message(data: bytes) -> PSIMessage:
    """Parse any PSI message by its kind byte.

    Raises
    ------
    ProtocolError
        If ``data`` is not exactly one well-formed PSI message.
    """
    reader = _Reader(data, None)
    parsers: dict[int, Callable[[_Reader], PSIMessage]] = {
        _KIND_BLINDED: _parse_blinded,
        _KIND_DOUBLE: _parse_double,
        _KIND_RESULT: _parse_result,
    }
    parser = parsers[reader.kind]
    return parser(reader)
