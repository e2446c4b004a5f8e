"""Revoked certificates on the scoring links: the federation's CRL, enforced in both directions.

gRPC's Python TLS stack checks that a peer's certificate chains to the
federation CA and carries the right name, but it never reads a CRL, so on its
own a revoked certificate keeps working. Here:

* **accepting** (a party scoring service accepting the bank's node; the node
  accepting loan systems when it requires client certificates): a server
  interceptor (:meth:`RevocationGuard.interceptor`) reads the verified client
  certificate from each call's auth context and refuses a revoked one with
  ``UNAUTHENTICATED`` and one line naming it, before any handler runs (health
  and reflection too). A long-lived stream is checked again when the CRL changes.
* **calling** (the node calling a party service): gRPC's Python client never
  shows the server's certificate, so :class:`PartyLink` makes a TLS handshake of
  its own first (Python's ``ssl``: the federation CA, the certificate's name, the
  bank's client certificate), checks the certificate it got against the CRL,
  and then opens the gRPC channel with *that certificate alone* as its trust
  root. gRPC then accepts exactly this certificate, so the certificate checked
  is the certificate used. A party that presents another certificate later (a
  renewal) fails gRPC's handshake; the link checks the new one and pins it. A
  pinned certificate that a new CRL revokes has its channel closed at once.

The CRL (``crl.pem``, written by ``fedrisk keys revoke`` / ``revoke-cert``) is
verified against the CA before it is used, and reloaded when its file changes
(every :data:`RELOAD_EVERY_S` seconds; a bad new file keeps the previous list).
Under a sandbox the launcher copies the host's file into the sandbox's private
directory when it changes, since a read-only bind would keep showing the old
file after an atomic replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from fedrisk.crypto.pki import RevocationList, certificate_label, load_revocation_list
from fedrisk.errors import CryptoError, FedriskError

__all__ = ["RELOAD_EVERY_S", "CertificateRefused", "LinkError", "PartyLink", "RevocationGuard"]

log = logging.getLogger("fedrisk.scoring.revocation")
RELOAD_EVERY_S = 2.0


@functools.lru_cache(maxsize=256)
def _peer_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


class RevocationGuard:
    """The federation CA's current CRL, reloaded when its file changes.

    Parameters
    ----------
    crl : str
        ``crl.pem`` as seen by this process.
    ca : str
        The CA that must have issued and signed it.

    Raises
    ------
    CryptoError
        One line, when the CRL cannot be read or verified at start.
    """

    def __init__(self, crl: str | Path, ca: str | Path) -> None:
        self.path, self.ca = Path(crl), Path(ca)
        self.current: RevocationList = load_revocation_list(self.path, self.ca)
        self.generation = 0
        self._seen = self._signature()
        self._refused: set[tuple[int, int]] = set()  # (generation, serial) already logged
        if self.current.stale:
            log.warning("%s is past its next update (%s): revocations issued since may be missing", self.path.name, self.current.next_update)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Reload after the file changed; ``True`` when a new list is in force."""
        now = self._signature()
        if now is None or now == self._seen:
            return False
        self._seen = now
        try:
            fresh = load_revocation_list(self.path, self.ca)
        except CryptoError as err:
            log.warning("kept the previous revocation list: %s", err)
            return False
        self.current = fresh
        self.generation += 1
        log.info("revocation list reloaded: %d revoked certificates", len(fresh.revoked))
        return True

    async def watch(self, on_change: Callable[[], Any] | None = None, every: float | None = None) -> None:
        """Reload forever (every :data:`RELOAD_EVERY_S` seconds); ``on_change`` runs after each new list."""
        while True:
            await asyncio.sleep(every or RELOAD_EVERY_S)
            if self.reload_if_changed() and on_change is not None:
                result = on_change()
                if inspect.isawaitable(result):
                    await result

    # ------------------------------------------------------------ accepting
    def refusal(self, context: grpc.aio.ServicerContext) -> str | None:
        """Why the call's verified client certificate is refused (revoked), or ``None``."""
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return None
        try:
            cert = _peer_certificate(bytes(pems[0]))
        except ValueError:
            return "the client certificate cannot be parsed"
        try:
            self.current.check(cert, "client certificate")
        except CryptoError as err:
            key = (self.generation, cert.serial_number)
            if key not in self._refused:
                self._refused.add(key)
                log.warning("refused a caller: %s", err)
            return str(err)
        return None

    async def enforce(self, context: grpc.aio.ServicerContext) -> None:
        """Abort the call (``UNAUTHENTICATED``) when its client certificate is revoked."""
        message = self.refusal(context)
        if message is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """A server interceptor that runs :meth:`enforce` before every handler."""
        return _RevocationInterceptor(self)


class _RevocationInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guard: RevocationGuard) -> None:
        self.guard = guard

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        changes = {}
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind, None)
            if behaviour is not None:
                changes[kind] = _guarded(behaviour, self.guard)
        return handler._replace(**changes)


def _guarded(behaviour: Callable[..., Any], guard: RevocationGuard) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard.enforce(context)
            async for item in behaviour(request, context):
                yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await guard.enforce(context)
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


# --------------------------------------------------------------------- calling
def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a check's outcome as seen (its callers may all have given up waiting)."""
    if not task.cancelled():
        task.exception()


class LinkError(FedriskError):
    """The link to a party cannot be used: unreachable, or its certificate is refused (one line)."""


class CertificateRefused(LinkError):
    """The party's server certificate is revoked or not accepted (one line naming it)."""


class PartyLink:
    """The node's mTLS link to one party scoring service, refusing a revoked server certificate.

    Parameters
    ----------
    party : str
    target : str
        ``host:port`` or ``unix:/path`` (a sandbox door).
    authority : str
        The name the party's certificate must carry.
    ca, cert, key : str
        The federation CA and the bank's client certificate and key (0600).
    guard : RevocationGuard
    channel_factory : callable
        ``(target, root_pem, authority) -> grpc.aio.Channel``.
    """

    def __init__(
        self,
        party: str,
        target: str,
        authority: str,
        *,
        ca: str,
        cert: str,
        key: str,
        guard: RevocationGuard,
        channel_factory: Callable[[str, bytes, str], grpc.aio.Channel],
        probe_timeout: float = 5.0,
        retry_after_s: float = 1.0,
    ) -> None:
        self.party, self.target, self.authority = party, target, authority
        self.guard = guard
        self.channel: grpc.aio.Channel | None = None
        self.pinned: x509.Certificate | None = None
        self.error = ""
        self.stale = True
        self._factory = channel_factory
        self._timeout = probe_timeout
        self._retry_after = retry_after_s
        self._last_probe = -1e9
        self._probing: asyncio.Future[grpc.aio.Channel] | None = None
        self._old: set[asyncio.Task[None]] = set()
        self._context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        self._context.load_cert_chain(cert, key)
        self._context.set_alpn_protocols(["h2"])

    async def ensure(self) -> grpc.aio.Channel:
        """The pinned channel; checks the party's certificate first when needed (raises :class:`LinkError`).

        The check runs as its own task, so a caller whose deadline is shorter than
        a TLS handshake gives up waiting without cancelling it: the next caller
        finds the link ready. At most one check per ``retry_after_s`` seconds.
        """
        if not self.stale and self.channel is not None:
            return self.channel
        if self._probing is None or self._probing.done():
            if time.monotonic() - self._last_probe < self._retry_after:
                if self.channel is not None:
                    return self.channel
                raise LinkError(self.error or f"{self.party}'s scoring service: not connected yet")
            self._last_probe = time.monotonic()
            self._probing = asyncio.ensure_future(self._refresh())
            self._probing.add_done_callback(_retrieve)
        return await asyncio.shield(self._probing)

    async def _refresh(self) -> grpc.aio.Channel:
        try:
            cert = await self._probe()
            self.guard.current.check(cert, f"{self.party}'s server certificate")
        except CertificateRefused as err:
            if self.error != str(err):
                log.warning("refusing party %s: %s", self.party, err)
            self._drop(str(err))
            raise
        except LinkError as err:
            self.error = str(err)
            raise
        except CryptoError as err:
            if self.error != str(err):
                log.warning("refusing party %s: %s", self.party, err)
            self._drop(str(err))
            raise CertificateRefused(str(err)) from None
        self.stale = False
        self.error = ""
        if self.pinned is not None and self.pinned == cert and self.channel is not None:
            return self.channel
        from cryptography.hazmat.primitives.serialization import Encoding

        self._retire()
        self.pinned = cert
        self.channel = self._factory(self.target, cert.public_bytes(Encoding.PEM), self.authority)
        log.info("party %s: pinned server certificate %s", self.party, certificate_label(cert))
        return self.channel

    def invalidate(self) -> None:
        """Check the party's certificate again before the next call (after a failed connection)."""
        self.stale = True

    def recheck(self) -> None:
        """After a new CRL: close the channel at once if its pinned certificate is now revoked."""
        if self.pinned is None:
            return
        try:
            self.guard.current.check(self.pinned, f"{self.party}'s server certificate")
        except CryptoError as err:
            log.warning("refusing party %s: %s", self.party, err)
            self._drop(str(err))

    def _drop(self, reason: str) -> None:
        self.error = reason
        self.stale = True
        self.pinned = None
        self._retire()

    def _retire(self) -> None:
        if self.channel is not None:
            task = asyncio.ensure_future(self.channel.close(grace=None))
            self._old.add(task)
            task.add_done_callback(self._old.discard)
        self.channel = None

    async def _probe(self) -> x509.Certificate:
        """One TLS handshake with the party (CA and name checked); its certificate."""
        where = self.target
        try:
            if self.target.startswith("unix:"):
                opening = asyncio.open_unix_connection(self.target[len("unix:") :], ssl=self._context, server_hostname=self.authority)
            else:
                host, _, port = self.target.rpartition(":")
                opening = asyncio.open_connection(host.strip("[]"), int(port), ssl=self._context, server_hostname=self.authority)
            _, writer = await asyncio.wait_for(opening, self._timeout)
        except ssl.SSLCertVerificationError as err:
            raise CertificateRefused(f"{self.party}'s scoring service at {where}: its certificate is not accepted ({err.verify_message})") from None
        except (OSError, TimeoutError, ssl.SSLError) as err:
            reason = "timed out" if isinstance(err, TimeoutError) else (getattr(err, "strerror", None) or str(err) or type(err).__name__)
            raise LinkError(f"{self.party}'s scoring service at {where} is not reachable: {reason}") from None
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        return x509.load_der_x509_certificate(der)

    async def close(self) -> None:
        """Close the channel (and channels being retired)."""
        if self._probing is not None and not self._probing.done():
            self._probing.cancel()
        self._retire()
        if self._old:
            await asyncio.gather(*self._old, return_exceptions=True)
