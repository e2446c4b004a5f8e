"""A local socket between a party's ClientApp and its warm party process.

Flower's SuperNode starts a fresh ``flwr-clientapp`` process for every
message it receives.  Re-importing tenseal/torch/pandas and reloading a
party's table and its 35 MB secret context per message would cost seconds, so
the ClientApp is a thin relay: it forwards the message content over a Unix
domain socket to the party's long-lived process (:mod:`fedrisk.parties.service`)
and returns that process's answer.

Wire format (both directions), no pickle anywhere::

    b"FRR1" | u32 header length | UTF-8 JSON header | u64 body length | body

The body is a Flower ``RecordDict`` serialised with Flower's own protobuf
serde.  The socket file lives in the party's private (0700) state folder.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import config_record_to_proto, metric_record_to_proto, recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=no-name-in-module

from fedrisk.errors import PartyUnavailableError, ProtocolError
from fedrisk.wire.exchange import ECHO

MAGIC = b"FRR1"
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024 * 1024

#: Handler run by the party process: (message type, metadata, content) -> reply content.
RelayHandler = Callable[[str, dict, RecordDict], "RecordDict | bytes"]  # bytes: the reply already encoded


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 16 * 1024 * 1024))
        if not n:
            raise ProtocolError(f"relay connection closed after {got} of {size} bytes")
        got += n
    return bytes(buffer)


def send_frame(sock: socket.socket, header: dict, body: bytes) -> None:
    head = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(MAGIC + struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)))
    sock.sendall(body)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    if _recv_exact(sock, 4) != MAGIC:
        raise ProtocolError("relay frame has a bad magic number (not a fedrisk relay peer)")
    (head_len,) = struct.unpack(">I", _recv_exact(sock, 4))
    if head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"relay header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_recv_exact(sock, head_len))
    except ValueError:
        raise ProtocolError("relay header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("relay header is not a JSON object")
    (body_len,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if body_len > MAX_BODY_BYTES:
        raise ProtocolError(f"relay body of {body_len:,} bytes exceeds {MAX_BODY_BYTES:,}")
    return header, _recv_exact(sock, body_len)


def encode_content(content: RecordDict) -> bytes:
    """Flower's protobuf encoding of ``content`` (byte for byte ``recorddict_to_proto``'s).

    Built in place: Flower's serde constructs each nested message from the one
    below and copies every array's bytes at each level (0.9 s for a 120 MB
    encrypted bin matrix); here they are copied once into the message, then once
    by the serialisation (0.18 s).
    """
    proto = ProtoRecordDict()
    for key, record in content.items():
        item = proto.items.add(key=key)
        if isinstance(record, ArrayRecord):
            arrays = item.array_record
            arrays.SetInParent()  # an empty record is still a record
            for name, array in record.items():
                value = arrays.items.add(key=name).value
                value.SetInParent()
                value.dtype, value.stype, value.data = array.dtype, array.stype, array.data
                value.shape.extend(array.shape)
        elif isinstance(record, MetricRecord):
            item.metric_record.CopyFrom(metric_record_to_proto(record))
        elif isinstance(record, ConfigRecord):
            item.config_record.CopyFrom(config_record_to_proto(record))
        else:
            raise ProtocolError(f"relay cannot encode a record of type {type(record).__name__}")
    return proto.SerializeToString()


def decode_content(body: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(body)
    except Exception:  # protobuf raises DecodeError or RuntimeWarning subclasses
        raise ProtocolError("relay body is not a valid Flower RecordDict") from None
    return recorddict_from_proto(proto)


def relay_call(
    socket_path: str | os.PathLike[str],
    message_type: str,
    meta: dict,
    content: RecordDict,
    *,
    timeout: float = 3600.0,
) -> RecordDict:
    """Forward one message to the party process and return its reply content."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(os.fspath(socket_path))
        except OSError as err:
            raise PartyUnavailableError(f"party process is not listening on {socket_path}: {err.strerror or err}") from None
        send_frame(sock, {"message_type": message_type, **meta}, encode_content(content))
        header, body = recv_frame(sock)
    finally:
        sock.close()
    if not header.get("ok"):
        raise ProtocolError(str(header.get("error", "party process failed without a reason")))
    return decode_content(body)


class _Handler(socketserver.BaseRequestHandler):
    server: "PartyRelayServer"

    def handle(self) -> None:
        try:
            header, body = recv_frame(self.request)
            message_type = str(header.pop("message_type", ""))
            if message_type == ECHO:
                # A transport probe: the bytes go back untouched (the ClientApp readdresses them).
                send_frame(self.request, {"ok": True}, body)
                return
            content = decode_content(body)
            with self.server.lock:
                reply = self.server.handler(message_type, header, content)
            send_frame(self.request, {"ok": True}, reply if isinstance(reply, bytes) else encode_content(reply))
        except Exception as err:  # every failure goes back as a one-line error
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            try:
                send_frame(self.request, {"ok": False, "error": message}, b"")
            except OSError:
                pass
            if self.server.on_error is not None:
                self.server.on_error(err)


class PartyRelayServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The party process's end of the relay: one message handled at a time."""

    daemon_threads = True

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        handler: RelayHandler,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        path = Path(socket_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            path.unlink()
        self.handler = handler
        self.on_error = on_error
        # Protocol state is per party, not per connection: serialise handling.
        self.lock = threading.Lock()
        old_umask = os.umask(0o177)
        try:
            super().__init__(os.fspath(path), _Handler)
        finally:
            os.umask(old_umask)
