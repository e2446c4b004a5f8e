"""fedrisk's binary frame: one payload as magic, version, kind, context fingerprint, JSON header and blobs (hazmat).

Every encrypted payload a kernel or protocol sends is a frame, and so is every
CKKS context (kinds ``CKPK``/``CKSK``, :mod:`fedrisk.crypto.ckks`) and every
message between a kernel and its worker processes; parsing never unpickles and
refuses truncated, trailing or oversize data with one line. The fingerprint
field holds the 16 bytes (128 bits) of
:func:`fedrisk.crypto.seal_runtime.context_fingerprint`, the one context id.

fedrisk's binary magics (the one list)
--------------------------------------
Every binary format fedrisk defines starts with one of these four-byte magics::

    magic  format                                   defined in                      version
    FRSK   frame: HE payloads, CKKS contexts        fedrisk.crypto.frames           2 (16-byte fingerprint)
           (CKPK/CKSK), kernel-worker messages
    FRCV   CKKS EncryptedVector (FedAvg updates;    fedrisk.crypto.ckks             1
           checksummed, compact chunk table)
    FRSE   sealed envelope (a secret CKKS context   fedrisk.crypto.envelope         1
           to a peer bank: X25519 + AES-GCM)
    FRPS   ECDH-PSI messages (X25519 points)        fedrisk.crypto.psi_messages     1
    FRB1   Flower message + objects in one round    fedrisk.wire.bundles            in the magic
           trip (SuperLink extension)
    FRR1   ClientApp <-> warm party process         fedrisk.parties.relay           in the magic
           (local Unix socket)

``FRCX`` (the former CKKS context container) is gone: a context is a frame. A
new binary format should be a frame kind before it is a new magic.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from fedrisk.errors import ProtocolError

__all__ = ["FINGERPRINT_BYTES", "FRAME_MAGIC", "FRAME_VERSION", "NO_FINGERPRINT", "pack_frame", "peek_frame", "unpack_frame"]

FRAME_MAGIC = b"FRSK"
FRAME_VERSION = 2
FINGERPRINT_BYTES = 16
_FP = slice(9, 9 + FINGERPRINT_BYTES)
_HEADER_AT = 9 + FINGERPRINT_BYTES  # u32 header length
_MIN = _HEADER_AT + 4
_MAX_HEADER = 1 << 20
NO_FINGERPRINT = "0" * (2 * FINGERPRINT_BYTES)
"""The fingerprint of a frame made under no context (a worker's STOP)."""


def pack_frame(kind: bytes, fingerprint: str, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """Serialise one payload: magic, version, kind, fingerprint, JSON header, blobs.

    Layout (little endian)::

        b"FRSK" | u8 version = 2 | 4-byte kind | 16-byte fingerprint |
        u32 header length | UTF-8 JSON header | u32 blob count | (u64 length | bytes)*
    """
    if len(kind) != 4:
        raise ProtocolError(f"payload kind must be 4 bytes, got {kind!r}")
    fp = _fingerprint_bytes(fingerprint)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    parts = [FRAME_MAGIC, bytes([FRAME_VERSION]), kind, fp, struct.pack("<I", len(head)), head]
    parts.append(struct.pack("<I", len(blobs)))
    for blob in blobs:
        parts.append(struct.pack("<Q", len(blob)))
        parts.append(bytes(blob))
    return b"".join(parts)


def unpack_frame(data: bytes, kind: bytes | None = None) -> tuple[bytes, str, dict[str, Any], list[bytes]]:
    """Parse a frame made by :func:`pack_frame`; returns ``(kind, fingerprint, header, blobs)``.

    Raises
    ------
    ProtocolError
        Bad magic, version, kind, truncated or trailing data, or a header that is not a JSON object.
    """
    view = memoryview(data)
    if len(view) < _MIN or bytes(view[:4]) != FRAME_MAGIC:
        raise ProtocolError("payload is not a fedrisk frame (bad magic or too short)")
    if view[4] != FRAME_VERSION:
        raise ProtocolError(f"payload frame version {view[4]} is not supported (expected {FRAME_VERSION})")
    got_kind = bytes(view[5:9])
    if kind is not None and got_kind != kind:
        raise ProtocolError(f"expected a {kind.decode()} payload, got {got_kind.decode(errors='replace')}")
    fingerprint = bytes(view[_FP]).hex()
    (hlen,) = struct.unpack_from("<I", view, _HEADER_AT)
    pos = _MIN
    if hlen > _MAX_HEADER or pos + hlen + 4 > len(view):
        raise ProtocolError("payload header is truncated or too large")
    try:
        header = json.loads(bytes(view[pos : pos + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("payload header is not a JSON object")
    pos += hlen
    (count,) = struct.unpack_from("<I", view, pos)
    pos += 4
    blobs: list[bytes] = []
    for _ in range(count):
        if pos + 8 > len(view):
            raise ProtocolError("payload is truncated (blob length)")
        (blen,) = struct.unpack_from("<Q", view, pos)
        pos += 8
        if pos + blen > len(view):
            raise ProtocolError("payload is truncated (blob data)")
        blobs.append(bytes(view[pos : pos + blen]))
        pos += blen
    if pos != len(view):
        raise ProtocolError(f"payload has {len(view) - pos} trailing bytes")
    return got_kind, fingerprint, header, blobs


def peek_frame(data: bytes) -> tuple[bytes, str, dict[str, Any]]:
    """Kind, fingerprint and header of a frame without copying its blobs (for routing)."""
    view = memoryview(data)
    if len(view) < _MIN or bytes(view[:4]) != FRAME_MAGIC or view[4] != FRAME_VERSION:
        raise ProtocolError("payload is not a fedrisk frame (bad magic, version or length)")
    (hlen,) = struct.unpack_from("<I", view, _HEADER_AT)
    if hlen > _MAX_HEADER or _MIN + hlen > len(view):
        raise ProtocolError("payload header is truncated or too large")
    try:
        header = json.loads(bytes(view[_MIN : _MIN + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("payload header is not a JSON object")
    return bytes(view[5:9]), bytes(view[_FP]).hex(), header


def _fingerprint_bytes(fingerprint: str) -> bytes:
    try:
        raw = bytes.fromhex(fingerprint)
    except ValueError:
        raw = b""
    if len(raw) != FINGERPRINT_BYTES:
        raise ProtocolError(f"context fingerprint must be {2 * FINGERPRINT_BYTES} hex digits, got {fingerprint!r}")
    return raw
