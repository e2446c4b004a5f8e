"""gRPC plumbing shared by the scoring node and the party scoring services.

* TLS everywhere: servers present a certificate from the federation PKI; party
  scoring services require a client certificate signed by the federation CA
  (mTLS), and the scoring node may too (``client_ca``).
* Deliberate message limits: ``grpc.max_receive_message_length`` is 1 MiB on
  every server — far above any legitimate request, low enough that nobody can
  make a node buffer large messages; the services apply their own, smaller
  per-message limits so that callers get a precise ``INVALID_ARGUMENT``.
* ``grpc.so_reuseport`` is off, so two nodes can never silently share a port.
* Long-lived channels with keepalive and a short reconnect backoff (2 s at most)
  so that a party coming back is used again within seconds.
* Targets are ``host:port`` or ``unix:/path``; over a Unix socket (the sandbox's
  only way out) the TLS peer name is given explicitly (``authority``) and
  checked against the party's certificate as if dialling its real address.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from fedrisk.crypto.keyfiles import read_secret_file
from fedrisk.crypto.pki import grpc_channel_credentials, grpc_server_credentials
from fedrisk.errors import ConfigError
from fedrisk.scoring.validation import TRANSPORT_MAX_BYTES

__all__ = ["SERVER_OPTIONS", "bind", "peer_common_name", "secure_channel", "server_credentials"]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.bdp_probe", 0),
]

_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
    ("grpc.http2.bdp_probe", 0),
]


def server_credentials(cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """Server TLS credentials; with ``client_ca`` clients must present a certificate it signed."""
    for label, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"TLS {label} {path} does not exist")
    return grpc_server_credentials(cert, key, client_ca=client_ca)


def secure_channel(
    target: str,
    *,
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    authority: str | None = None,
    options: Sequence[tuple[str, int | str]] = (),
    aio: bool = True,
    root_pem: bytes | None = None,
) -> grpc.aio.Channel | grpc.Channel:
    """A TLS (or mTLS, with ``cert``/``key``) channel trusting only the federation CA.

    Parameters
    ----------
    target : str
        ``host:port`` or ``unix:/path``.
    authority : str, optional
        Name the server's certificate must carry (default: the host of ``target``;
        needed for Unix sockets).
    root_pem : bytes, optional
        Trust exactly this certificate instead of ``ca`` (a server certificate
        already checked against the CA and the CRL: see
        :class:`~fedrisk.scoring.revocation.PartyLink`).
    """
    if root_pem is None:
        creds = grpc_channel_credentials(ca, cert=cert, key=key)
    else:
        if (cert is None) != (key is None):
            raise ConfigError("pass both cert and key for a client certificate, or neither")
        creds = grpc.ssl_channel_credentials(
            root_certificates=root_pem,
            private_key=read_secret_file(key) if key is not None else None,
            certificate_chain=Path(cert).read_bytes() if cert is not None else None,
        )
    opts = list(_CHANNEL_OPTIONS) + list(options)
    if authority:
        opts.append(("grpc.ssl_target_name_override", authority))
        opts.append(("grpc.default_authority", authority))
    if aio:
        return grpc.aio.secure_channel(target, creds, options=opts)
    return grpc.secure_channel(target, creds, options=opts)


def bind(server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials) -> str:
    """Add a TLS port; returns the address actually bound (port 0 picks a free port)."""
    try:
        port = server.add_secure_port(listen, creds)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}") from None
    if listen.startswith("unix:"):
        return listen
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (address in use or not local)")
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


def peer_common_name(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's common name (mTLS), or ``None``."""
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode("utf-8", "replace") if values else None
