"""Byte forwarders: the only doors in and out of a sandbox without a network.

A sandboxed scoring process has no network interface but its own loopback
(a fresh network namespace). Its launcher, outside, opens exactly the doors the
configuration names:

* **in**: a TCP listener on the node's public address whose connections are
  spliced to the node's Unix socket inside the sandbox;
* **out**: one Unix socket per configured party endpoint, inside the sandbox's
  private directory, each spliced to that one ``host:port`` and nowhere else.

The forwarders copy opaque bytes: TLS runs end to end between the loan system
and the node, and between the node and each party (the node checks the party's
certificate against the name of its real address), so the launcher never sees
plaintext or keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

__all__ = ["Forwarder", "tcp_to_unix", "unix_to_tcp"]

_CHUNK = 256 * 1024


class _Pipe(asyncio.Protocol):
    """One direction-pair of a forwarded connection (transport ↔ peer transport)."""

    def __init__(self) -> None:
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for chunk in self._buffer:
            peer.write(chunk)
        self._buffer.clear()
        if self._eof and peer.can_write_eof():
            peer.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._buffer.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    # Backpressure: when the peer's buffer fills, stop reading from this side.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Forwarder:
    """A listening door and where its connections go.

    Use :func:`tcp_to_unix` or :func:`unix_to_tcp` to build one.
    """

    def __init__(self, name: str, connect: object) -> None:
        self.name = name
        self._connect = connect
        self.server: asyncio.AbstractServer | None = None
        self.address = ""
        self.connections = 0
        self.refused = 0

    def _factory(self) -> _Pipe:
        inbound = _Pipe()
        asyncio.get_running_loop().create_task(self._link(inbound))
        return inbound

    async def _link(self, inbound: _Pipe) -> None:
        await asyncio.sleep(0)
        try:
            _, outbound = await self._connect(_Pipe)  # type: ignore[operator]
        except OSError:
            self.refused += 1
            if inbound.transport is not None:
                inbound.transport.close()
            return
        self.connections += 1
        assert inbound.transport is not None
        outbound.attach(inbound.transport)
        inbound.attach(outbound.transport)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)


async def tcp_to_unix(name: str, host: str, port: int, socket_path: str | Path) -> Forwarder:
    """Listen on ``host:port`` (0 picks a port) and splice each connection to a Unix socket."""
    loop = asyncio.get_running_loop()
    fwd = Forwarder(name, lambda proto: loop.create_unix_connection(proto, str(socket_path)))
    fwd.server = await loop.create_server(fwd._factory, host, port, reuse_address=True)
    sock = fwd.server.sockets[0]
    bound = sock.getsockname()
    fwd.address = f"{host}:{bound[1]}"
    return fwd


async def unix_to_tcp(name: str, socket_path: str | Path, host: str, port: int) -> Forwarder:
    """Listen on a Unix socket (mode 0600) and splice each connection to ``host:port``."""
    loop = asyncio.get_running_loop()
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fwd = Forwarder(name, lambda proto: loop.create_connection(proto, host, port))
    fwd.server = await loop.create_unix_server(fwd._factory, str(path))
    os.chmod(path, 0o600)
    fwd.address = str(path)
    return fwd
