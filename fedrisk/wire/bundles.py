"""A Flower message and its objects in one round trip: the wire format of fedrisk's SuperLink extension.

Flower 1.39 moves a message as a tree of objects (a fedrisk message is seven:
``Message``, ``RecordDict``, its records, an ``Array`` and its chunk), and
every object travels in its own request: a push is ``PushMessages`` plus one
``PushObject`` per object the SuperLink lacks, a pull is ``PullMessages``,
one ``PullObject`` per object and ``ConfirmMessageReceived``. A three-party
exchange was ~90 requests through one Python SuperLink, plus the empty polls
in between (``benchmarks/exchange.py``).

fedrisk's SuperLink entry point (:mod:`fedrisk.federation.superlink`) serves
two more calls on each of its APIs, and fedrisk's SuperNode
(:mod:`fedrisk.parties.supernode`) and ServerApp
(:mod:`fedrisk.wire.flower_tuning`) use them when the SuperLink offers
them:

* **pull**: Flower's own ``PullMessages`` handler, then, in the same request,
  Flower's ``PullObject`` handler for every object of the message and Flower's
  ``ConfirmMessageReceived``; the request may wait (long poll) until a message
  whose objects have all arrived is there;
* **push**: Flower's own ``PushMessages`` handler, then Flower's ``PushObject``
  handler for every object the SuperLink asked for that the request carries.

Nothing else changes: the same handlers run, with the same checks (node
authentication and node id on the Fleet API, the task token on the Runtime
API, run status, push sessions, each object's SHA-256 against its id when it
is stored), the same state and object store. Objects beyond
:data:`MAX_BUNDLE_BYTES` per request, or not yet available when a long poll
ends, are left to Flower's per-object calls, which the receiver makes as
before. A SuperLink without the extension answers ``UNIMPLEMENTED`` (gRPC) or
404 (HTTP) and the caller falls back to Flower's calls for good.

The bundle itself (:class:`Bundle`) is a head (a serialised Flower protobuf
message: ``PullMessagesRequest``, ``PushMessagesResponse``...), a small JSON
map of options, and ``(object id, content)`` pairs, length-prefixed.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

#: gRPC service of the Fleet API extension (same server, TLS and node authentication as Flower's Fleet).
FLEET_SERVICE = "fedrisk.v1.FleetBundle"
FLEET_PULL = f"/{FLEET_SERVICE}/PullMessages"
FLEET_PUSH = f"/{FLEET_SERVICE}/PushMessages"
#: HTTP routes of the Runtime API extension (same server, TLS and task-token authentication as Flower's Runtime API).
RUNTIME_PREFIX = "/v1/fedrisk"
RUNTIME_PULL = f"{RUNTIME_PREFIX}/pull-messages"
RUNTIME_PUSH = f"{RUNTIME_PREFIX}/push-messages"

#: Object bytes carried by one bundle; larger messages move their remaining objects one by one, as Flower does.
MAX_BUNDLE_BYTES = 32 * 1024 * 1024
#: Longest wait a SuperLink grants one long-poll pull.
MAX_WAIT_SECONDS = 5.0

_MAGIC = b"FRB1"
_MAX_OBJECTS = 1_000_000
_MAX_ID = 256


class BundleError(ValueError):
    """A malformed bundle."""


class Bundle:
    """Head (a serialised protobuf message), options and objects, as one length-prefixed blob.

    It has the two methods Flower's protobuf clients call on a request and a
    response (``SerializeToString``, ``ParseFromString``), so it travels through
    Flower's own gRPC channel and HTTP client (their interceptors, TLS, node
    signature or task token, retries) like any Flower message.
    """

    __slots__ = ("head", "head_message", "meta", "node", "objects")

    def __init__(self, head: bytes = b"", meta: dict | None = None, objects: list[tuple[str, bytes]] | None = None) -> None:
        self.head = bytes(head)
        self.meta = dict(meta or {})
        self.objects = list(objects or [])
        #: The requesting node (``flwr.proto.Node``), for Flower's node-id check on the Fleet API.
        self.node: Any = None
        #: The parsed head (a Flower protobuf message), where the receiver knows its type.
        self.head_message: Any = None

    def SerializeToString(self, deterministic: bool = False) -> bytes:  # noqa: N802 - protobuf's name
        meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()
        parts = [_MAGIC, struct.pack(">II", len(self.head), len(meta)), self.head, meta, struct.pack(">I", len(self.objects))]
        for object_id, content in self.objects:
            key = object_id.encode("ascii")
            parts += [struct.pack(">HQ", len(key), len(content)), key, content]
        return b"".join(parts)

    def ParseFromString(self, data: bytes) -> None:  # noqa: N802 - protobuf's name
        view = memoryview(data)
        if bytes(view[:4]) != _MAGIC:
            raise BundleError("not a fedrisk bundle")
        at = 4
        head_len, meta_len = _unpack(">II", view, at)
        at += 8
        self.head = _take(view, at, head_len)
        at += head_len
        try:
            meta = json.loads(_take(view, at, meta_len) or b"{}")
        except ValueError:
            raise BundleError("bundle options are not JSON") from None
        if not isinstance(meta, dict):
            raise BundleError("bundle options are not a JSON object")
        self.meta = meta
        at += meta_len
        (count,) = _unpack(">I", view, at)
        at += 4
        if count > _MAX_OBJECTS:
            raise BundleError(f"bundle claims {count} objects")
        objects = []
        for _ in range(count):
            key_len, content_len = _unpack(">HQ", view, at)
            at += 10
            if key_len > _MAX_ID:
                raise BundleError("bundle object id too long")
            try:
                key = _take(view, at, key_len).decode("ascii")
            except UnicodeDecodeError:
                raise BundleError("bundle object id is not ASCII") from None
            at += key_len
            objects.append((key, _take(view, at, content_len)))
            at += content_len
        if at != len(view):
            raise BundleError("trailing bytes after the bundle")
        self.objects = objects

    @classmethod
    def FromString(cls, data: bytes) -> Bundle:  # noqa: N802 - protobuf's name
        bundle = cls()
        bundle.ParseFromString(data)
        return bundle


def _unpack(fmt: str, view: memoryview, at: int) -> tuple:
    size = struct.calcsize(fmt)
    if at + size > len(view):
        raise BundleError("truncated bundle")
    return struct.unpack_from(fmt, view, at)


def _take(view: memoryview, at: int, length: int) -> bytes:
    if at + length > len(view):
        raise BundleError("truncated bundle")
    return bytes(view[at : at + length])


def gather_objects(object_ids, content_of, budget: int = MAX_BUNDLE_BYTES) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``(carried, left)``: the objects whose content is available and fits in ``budget`` bytes, and the others.

    ``content_of(object_id)`` returns the content, or ``None``/``b""`` when it is not (yet) available.
    """
    carried: list[tuple[str, bytes]] = []
    left: list[str] = []
    seen: set[str] = set()
    for object_id in object_ids:
        if object_id in seen:
            continue
        seen.add(object_id)
        content = content_of(object_id)
        if not content or len(content) > budget:
            left.append(object_id)
            continue
        budget -= len(content)
        carried.append((object_id, content))
    return carried, left


def gather_messages(
    messages: Iterable[tuple[Any, Any]],
    content_of: Callable[[Any, str], bytes | None],
    confirm: Callable[[Any], None],
    budget: int = MAX_BUNDLE_BYTES,
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Fill a pull's bundle: each message's objects, and the confirmation of each message carried whole.

    The SuperLink's two bundled pulls (Fleet and Runtime) run this over what
    Flower's ``PullMessages`` answered.

    Parameters
    ----------
    messages : iterable of (message, object tree)
        Flower's ``messages_list`` zipped with its ``message_object_trees``.
    content_of : callable
        ``content_of(message, object_id)``: the object's content, or ``None``/``b""`` when it is not (yet) available.
    confirm : callable
        ``confirm(message)``: Flower's ``ConfirmMessageReceived`` for a message all of whose objects are carried.
    budget : int
        Object bytes the whole bundle may carry.

    Returns
    -------
    objects : list of (object id, content)
        Every object carried, each once even when several messages share it.
    confirmed : list of str
        The ids of the messages confirmed.
    """
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    objects: list[tuple[str, bytes]] = []
    confirmed: list[str] = []
    seen: set[str] = set()
    for message, tree in messages:
        ids = [node.object_id for node in iterate_object_tree(tree)]
        # An object an earlier message carried is not sent twice, and does not keep this message unconfirmed.
        carried, left = gather_objects([i for i in ids if i not in seen], functools.partial(content_of, message), budget)
        seen.update(i for i, _ in carried)
        budget -= sum(len(c) for _, c in carried)
        objects += carried
        if not left:
            # Confirmed only when carried whole: otherwise the receiver fetches the rest with Flower's per-object calls.
            confirm(message)
            confirmed.append(message.metadata.message_id)
    return objects, confirmed
