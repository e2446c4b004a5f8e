"""Several protocol payloads in one Flower message, with one honest content class.

A protocol round may carry payloads of different kinds at once (SecureBoost:
encrypted gradients together with public split decisions). The audit ledger
records one content class per message, and that class must describe the data:
so every non-public payload of a batch travels as a blob and must share one
class (that becomes the message's class), and every public-by-protocol payload
travels in the message's public config (``item:<i>`` as bytes), where fedrisk
puts public protocol parameters. A batch of public payloads only is a
``public`` message.

Each item may be addressed to a party (``item:<i>:party``), for a reply that
the coordinator must route on to several parties.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import RecordDict

from fedrisk.errors import ProtocolError
from fedrisk.wire.exchange import Exchange, ExchangeHeader, build_content

PUBLIC = "public"


@dataclass(frozen=True)
class BatchItem:
    """One serialised payload, its content class, and (optionally) the party it is for."""

    data: bytes
    content_class: str
    party: str = ""


def batch_class(items: list[BatchItem]) -> str:
    """The content class of a message carrying ``items`` (see the module docstring)."""
    private = {item.content_class for item in items if item.content_class != PUBLIC}
    if len(private) > 1:
        raise ProtocolError(f"one message cannot carry payloads of classes {sorted(private)}")
    return private.pop() if private else PUBLIC


def batch_content(header: ExchangeHeader, items: list[BatchItem], config: dict | None = None) -> RecordDict:
    """Build a message's content; ``header.content_class`` must equal :func:`batch_class`."""
    if header.content_class != batch_class(items):
        raise ProtocolError(f"step {header.step!r}: declared {header.content_class!r} for a {batch_class(items)!r} batch")
    blobs: dict[str, bytes] = {}
    public: dict[str, object] = dict(config or {})
    for i, item in enumerate(items):
        if item.content_class == PUBLIC:
            public[f"item:{i}"] = item.data
        else:
            blobs[f"item:{i}"] = item.data
        if item.party:
            public[f"item:{i}:party"] = item.party
    public["items"] = len(items)
    return build_content(header, blobs, public)


def batch_items(exchange: Exchange) -> list[BatchItem]:
    """The items of a received batch, in order."""
    count = exchange.value("items", 0)
    if not isinstance(count, int) or count < 0:
        raise ProtocolError(f"step {exchange.header.step!r}: bad item count {count!r}")
    items = []
    for i in range(count):
        key = f"item:{i}"
        inline = exchange.config.get(key)
        if key in exchange.blobs:
            data, cls = exchange.blobs[key], exchange.header.content_class
        elif isinstance(inline, bytes):
            data, cls = bytes(inline), PUBLIC
        else:
            raise ProtocolError(f"step {exchange.header.step!r}: item {i} is missing")
        items.append(BatchItem(data, cls, str(exchange.config.get(f"{key}:party", ""))))
    return items
