"""fedrisk's binary frame: one payload as magic, version, kind, context fingerprint, JSON header and blobs.

Every encrypted payload a kernel or protocol sends is a frame, and so is every
message between a kernel and its worker processes; parsing never unpickles and
refuses truncated, trailing or oversize data with one line.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from fedrisk.errors import ProtocolError

__all__ = ["FRAME_MAGIC", "FRAME_VERSION", "pack_frame", "peek_frame", "unpack_frame"]

FRAME_MAGIC = b"FRSK"
FRAME_VERSION = 1
_MAX_HEADER = 1 << 20


def pack_frame(kind: bytes, fingerprint: str, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """Serialise one payload: magic, version, kind, fingerprint, JSON header, blobs.

    Layout (little endian)::

        b"FRSK" | u8 version | 4-byte kind | 8-byte fingerprint |
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
    if len(view) < 21 or bytes(view[:4]) != FRAME_MAGIC:
        raise ProtocolError("payload is not a fedrisk frame (bad magic or too short)")
    if view[4] != FRAME_VERSION:
        raise ProtocolError(f"payload frame version {view[4]} is not supported (expected {FRAME_VERSION})")
    got_kind = bytes(view[5:9])
    if kind is not None and got_kind != kind:
        raise ProtocolError(f"expected a {kind.decode()} payload, got {got_kind.decode(errors='replace')}")
    fingerprint = bytes(view[9:17]).hex()
    (hlen,) = struct.unpack_from("<I", view, 17)
    pos = 21
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
    if len(view) < 21 or bytes(view[:4]) != FRAME_MAGIC or view[4] != FRAME_VERSION:
        raise ProtocolError("payload is not a fedrisk frame (bad magic, version or length)")
    (hlen,) = struct.unpack_from("<I", view, 17)
    if hlen > _MAX_HEADER or 21 + hlen > len(view):
        raise ProtocolError("payload header is truncated or too large")
    try:
        header = json.loads(bytes(view[21 : 21 + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("payload header is not a JSON object")
    return bytes(view[5:9]), bytes(view[9:17]).hex(), header


def _fingerprint_bytes(fingerprint: str) -> bytes:
    try:
        raw = bytes.fromhex(fingerprint)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ProtocolError(f"context fingerprint must be 16 hex digits, got {fingerprint!r}")
    return raw
