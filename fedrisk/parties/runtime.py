"""The party runtime: a party's warm state and the protocol handlers it serves.

One :class:`PartyRuntime` lives in each party's long-lived process (see
:mod:`fedrisk.parties.service`) or, in Flower's Simulation Engine, in the
worker that runs the ClientApp.  It loads the party's table and keys once and
dispatches each incoming message to the handler of its protocol step.

Repeated messages get the same answer. A coordinator that restarted, or that
lost a reply when a SuperNode died, sends the same request again; the runtime
keeps its last :data:`REPLY_CACHE_SIZE` answers keyed by the SHA-256 of the
request's content and message type, and answers a repeat from that cache
without running the handler again. That makes every protocol step
exactly-once as far as the party's state goes (a vertical-LR feature holder
never applies one masked gradient twice, a key holder never makes a second
key) and means a redone step never releases a second, differently noised or
differently encrypted, version of the same answer.

Protocols whose state cannot be rebuilt from the coordinator's messages
(vertical LR: the label holder's secret key, every party's block, momentum
and masks) also keep it on disk: a protocol with ``save_durable`` has its
state and its answer written after each message, before the answer leaves,
and ``restore_durable`` brings both back in a restarted party process, so a
repeated request is still answered once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from flwr.app import RecordDict

from fedrisk.errors import ProtocolError
from fedrisk.wire import message_types as mt
from fedrisk.wire.exchange import Exchange, ExchangeHeader, build_content, read_content
from fedrisk.parties.identity import PartyIdentity
from fedrisk.parties.relay import encode_content
from fedrisk.parties.protocol import ClosingProtocol, DurableProtocol, Handler, PartyProtocol, Registry
from fedrisk.parties.settings import PartySettings, ensure_private_dir

P = TypeVar("P")

#: Answers kept for repeated requests (a coordinator re-sends only its latest request per party).
REPLY_CACHE_SIZE = 4


class PartyRuntime:
    """A party's state and its handlers, keyed by Flower message type.

    Parameters
    ----------
    settings : PartySettings
    registry : Registry
        Party role → its protocol roles (:data:`fedrisk.parties.registry.PROTOCOLS`).
    """

    def __init__(self, settings: PartySettings, registry: Registry) -> None:
        self.settings = settings
        self.state_dir = ensure_private_dir(Path(settings.state_dir))
        # Protocol state is per run: a warm party process serves run after run.
        load = registry.get(settings.role)
        self._protocol_classes = list(load()) if load is not None else []
        self._runs: dict[str, dict[str, PartyProtocol]] = {}
        self._replies: OrderedDict[str, RecordDict] = OrderedDict()
        #: Requests answered from the reply cache (a measure of redone steps).
        self.repeats = 0

    # -- state loaded once -------------------------------------------------
    @cached_property
    def identity(self) -> PartyIdentity:
        return PartyIdentity.load_or_create(self.state_dir, self.settings.name)

    @cached_property
    def table(self):  # -> PartyTable
        from fedrisk.data.table import TableSchema, load_party_table

        schema = TableSchema.from_dict(self.settings.schema)
        return load_party_table(self.settings.data, schema, name=self.settings.name)

    # -- dispatch ----------------------------------------------------------
    def protocol(self, cls: type[P]) -> P | None:
        """The current run's instance of protocol ``cls`` (protocols of one run share state)."""
        for protocols in self._runs.values():
            found = protocols.get(cls.__name__)
            if isinstance(found, cls):
                return found
        return None

    def _handler(self, run_id: str, message_type: str) -> Handler | None:
        if message_type == mt.IDENTITY:
            return self._on_identity
        protocols = self._runs.get(run_id)
        if protocols is None:
            for old in self._runs.values():
                for protocol in old.values():
                    if isinstance(protocol, ClosingProtocol):
                        protocol.close()
            protocols = {getattr(cls, "__name__", repr(cls)): cls(self) for cls in self._protocol_classes}
            self._runs = {run_id: protocols}  # keep only the current run warm
            self._replies.clear()
            for protocol in protocols.values():
                # A restarted party process picks up a run where its last answer left it.
                restored = protocol.restore_durable(run_id) if isinstance(protocol, DurableProtocol) else None
                if restored is not None:
                    key, reply = restored
                    self._replies[key] = reply
        for protocol in protocols.values():
            handler = protocol.handlers().get(message_type)
            if handler is not None:
                return handler
        return None

    def handle(self, message_type: str, meta: dict, content: RecordDict) -> RecordDict:
        """Answer one message; raises a one-line error the coordinator will see."""
        return self._answer(message_type, content)[0]

    def handle_encoded(self, message_type: str, meta: dict, content: RecordDict) -> bytes:
        """:meth:`handle`, the reply encoded as the relay sends it (the bytes the durable state kept, when there are some)."""
        reply, encoded = self._answer(message_type, content)
        return encoded if encoded is not None else encode_content(reply)

    def _answer(self, message_type: str, content: RecordDict) -> tuple[RecordDict, bytes | None]:
        """The reply, and its encoding if the durable state needed it (encoded once: an SLAY is ≈ 120 MB)."""
        exchange = read_content(content)
        addressed_to_node = message_type == mt.IDENTITY and exchange.header.receiver.startswith("node:")
        if exchange.header.receiver != self.settings.name and not addressed_to_node:
            raise ProtocolError(f"party {self.settings.name!r} got a message addressed to {exchange.header.receiver!r}")
        handler = self._handler(exchange.header.run_id, message_type)  # a restarted process restores here
        if handler is None:
            raise ProtocolError(f"party {self.settings.name!r} ({self.settings.role}) does not serve {message_type!r}")
        key = None
        if message_type != mt.IDENTITY:
            from fedrisk.wire.exchange import content_digest

            key = hashlib.sha256(message_type.encode() + b"\0" + content_digest(content)[0].encode("ascii")).hexdigest()
            cached = self._replies.get(key)
            if cached is not None:
                self.repeats += 1
                return cached, None
        reply = handler(exchange)
        encoded = None
        if key is not None:
            owner = getattr(handler, "__self__", None)  # the role whose bound method answered
            if isinstance(owner, DurableProtocol):  # state and answer on disk before the answer leaves
                encoded = encode_content(reply)
                owner.save_durable(exchange.header.run_id, key, encoded)
            self._replies[key] = reply
            while len(self._replies) > REPLY_CACHE_SIZE:
                self._replies.popitem(last=False)
        return reply, encoded

    def _on_identity(self, exchange: Exchange) -> RecordDict:
        request = exchange.header
        # The query addressed this node by its Flower id; the answer names the party.
        header = ExchangeHeader(request.run_id, request.round, request.step, self.settings.name, request.sender, "public")
        return build_content(
            header,
            config={
                "name": self.settings.name,
                "role": self.settings.role,
                "envelope_public_key": self.identity.envelope_public_key.hex(),
                "signing_public_key": self.identity.signing_public_key.hex(),
                "signing_key_id": self.identity.signing_key_id,
            },
        )
