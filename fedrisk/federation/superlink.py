"""fedrisk's SuperLink entry point: Flower's own SuperLink, with bundled transfers, long polls and a node registry.

``python -m fedrisk.federation.superlink [--node-registry FILE] [--no-bundles] [flower-superlink options]``
runs the unmodified ``flower-superlink`` (its Fleet gRPC API, its Runtime and
Control HTTP APIs, its SuperExec, its state, all its options) in this process
after adding three things, all built from Flower's own servicers and state.

**Where the time went** (``benchmarks/exchange.py --quick``, three parties,
TLS, node authentication, ledgers on; Flower 1.39, measured with py-spy and
per-handler CPU counters): the SuperLink process spent ~0.9 s of CPU per
exchange, for ~160 requests (110 Fleet gRPC calls, 48 Runtime HTTP calls).
Two thirds of it was Flower's SQLite state (SQLAlchemy ORM, 1.5–32 ms of CPU
per handler: ``PushMessages`` 15 ms, ``PullObject`` 3 ms, ``PushObject`` 5 ms);
with Flower's in-memory state the handlers cost 0.04–0.4 ms and what remains
is per-request overhead: gRPC and FastAPI machinery, TLS, and the node
signature check (0.6 ms per Fleet call). Half of the requests were empty
polls; most of the rest moved one object each (a fedrisk message is seven
objects), and about a third of the object pulls found the object not yet
uploaded and retried.

So, here:

1. **Bundles** (:mod:`fedrisk.wire.bundles`): a pull returns a message
   with all its objects and confirms it, a push stores a message with its
   objects, each in one request. Flower's handlers do the work, one call per
   object, in process. Served as ``fedrisk.v1.FleetBundle`` on the Fleet gRPC
   server (authenticated by Flower's own ``NodeAuthServerInterceptor``: the
   node's signature and node id, as for ``/flwr.proto.Fleet/``) and under
   ``/v1/fedrisk/`` on the Runtime HTTP API (Flower's task-token authentication,
   :class:`RuntimeRoutes`).
2. **Long polls**: a bundled pull waits, up to what the caller asks (at most
   :data:`~fedrisk.wire.bundles.MAX_WAIT_SECONDS`), until there is a
   message for it whose objects have all arrived — a SuperNode's pull until a
   message for that node is complete, the ServerApp's until every reply it
   asks for is complete (or :data:`REPLY_LINGER_SECONDS` after the first one).
   Nobody polls an empty inbox every few milliseconds, and nobody pulls an
   object that is still being uploaded.
3. **A node registry** (``--node-registry FILE``) for Flower's in-memory state
   (``--database :flwr-in-memory:``, Flower's default): the nodes an operator
   registered or unregistered on the Control API are written to ``FILE`` and
   restored, with the same node ids, when the SuperLink restarts, so that a
   restarted SuperLink admits the same node keys (and still refuses
   unregistered ones) as it did with the SQLite database. Runs and messages in
   flight are not kept: a restarted coordinator resumes from its own
   checkpoint, as before.

``--no-bundles`` serves Flower's APIs only (fedrisk's SuperNode and ServerApp
then fall back to Flower's per-object calls), for comparison.

**After** (``python benchmarks/exchange.py``, same conditions): about eight
requests per exchange (one push and one or two pulls from the ServerApp, one
pull and one push from each SuperNode) and ~18 ms of SuperLink CPU per
exchange instead of ~0.9 s; the 1 KB exchange went from p50 ~1 s to ~45 ms
(in process: ~18 ms, the same ledgers included). ``--flower-superlink`` on the
benchmark shows the before, in the same run conditions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from fedrisk.federation.run_results import RESULTS_DIR_ENV, ResultArtifacts, ResultRoutes
from fedrisk.wire.flower_args import option_value, pop_option
from fedrisk.wire.bundles import (
    FLEET_PULL,
    FLEET_PUSH,
    MAX_WAIT_SECONDS,
    RUNTIME_PULL,
    RUNTIME_PUSH,
    Bundle,
    BundleError,
    gather_messages,
)

#: After the first of several awaited replies is complete, how long a ServerApp pull waits for the others.
REPLY_LINGER_SECONDS = 0.02


class StateChanges:
    """A generation counter bumped whenever a message or an object is stored; long polls wait on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        #: Held while a bundle is stored and while Flower's pull handlers run, so that a pull never
        #: hands out a message whose bundle is half stored.
        self.bundle_lock = threading.RLock()
        self._local = threading.local()

    def notify(self) -> None:
        if getattr(self._local, "quiet", False):
            return  # a bundle being stored: one notification at its end, not one per object
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def storing_bundle(self):
        """Hold :attr:`bundle_lock` while a bundle is stored, and wake the waiting pulls once, after it."""
        with self.bundle_lock:
            self._local.quiet = True
            try:
                yield
            finally:
                self._local.quiet = False
        self.notify()

    def wait(self, generation: int, timeout: float) -> bool:
        """Wait until something changed after ``generation`` was read, or ``timeout`` seconds."""
        if timeout <= 0:
            return self.generation != generation
        with self._cond:
            return self._cond.wait_for(lambda: self.generation != generation, timeout)


def watch_state(state, changes: StateChanges) -> None:
    """Bump ``changes`` after each message or object the state stores (idempotent)."""
    for name in ("store_message_and_object_tree", "store_object"):
        flower = getattr(state, name, None)
        if flower is None or getattr(flower, "_fedrisk", False):
            continue

        def stored(*args, __flower=flower, **kwargs):
            try:
                return __flower(*args, **kwargs)
            finally:
                changes.notify()

        stored._fedrisk = True  # type: ignore[attr-defined]
        setattr(state, name, stored)


# -- what is waiting (Flower's in-memory state; None: another state, no peeking) --------------
def _complete(store, message_id: str) -> bool:
    """Every object of the message's tree is in the object store with its content."""
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    try:
        tree = store.get_object_tree(message_id)
    except Exception:  # noqa: BLE001 - not (or no longer) registered
        return False
    return all(store.get(node.object_id) for node in iterate_object_tree(tree))


def node_inbox(state, node_id: int) -> str | None:
    """``"none"``, ``"incomplete"`` or ``"complete"``: the undelivered messages for ``node_id``."""
    messages, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if messages is None or lock is None:
        return None
    with lock:
        pending = [mid for mid, m in messages.items() if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""]
    if not pending:
        return "none"
    return "complete" if all(_complete(state.object_store, mid) for mid in pending) else "incomplete"


def reply_states(state, message_ids: list[str]) -> dict[str, str] | None:
    """For each of ``message_ids``: ``"ready"`` (Flower answers it now: a complete reply, or an
    error for an unknown message), ``"incomplete"`` (its reply's objects are still arriving) or
    ``"waiting"`` (no reply yet)."""
    ins = getattr(state, "message_ins_store", None)
    res = getattr(state, "message_res_store", None)
    links = getattr(state, "message_ins_id_to_message_res_id", None)
    lock = getattr(state, "lock", None)
    if ins is None or res is None or links is None or lock is None:
        return None
    out, replies = {}, {}
    with lock:
        for mid in message_ids:
            if mid not in ins:
                out[mid] = "ready"  # unknown or gone: Flower answers (with an error) at once
                continue
            reply = res.get(links.get(mid, ""))
            if reply is not None and reply.metadata.delivered_at == "":
                replies[mid] = reply.metadata.message_id
            else:
                out[mid] = "waiting"
    for mid, rid in replies.items():
        out[mid] = "ready" if _complete(state.object_store, rid) else "incomplete"
    return out


def _wait_seconds(bundle: Bundle) -> float:
    try:
        return min(max(float(bundle.meta.get("wait", 0.0)), 0.0), MAX_WAIT_SECONDS)
    except (TypeError, ValueError):
        return 0.0


# -- Fleet API (gRPC) ----------------------------------------------------------------------------
class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple


class FleetBundleHandler:
    """``fedrisk.v1.FleetBundle``: bundled pull and push over Flower's ``FleetServicer``."""

    def __init__(self, servicer, changes: StateChanges) -> None:
        import grpc
        from flwr.proto.fleet_pb2 import PullMessagesRequest, PushMessagesRequest  # pylint: disable=no-name-in-module
        from flwr.server.superlink.fleet.grpc_rere.node_auth_server_interceptor import (
            NodeAuthServerInterceptor,
        )

        self.servicer = servicer
        self.changes = changes
        self.auth = NodeAuthServerInterceptor(servicer.state_factory)

        def parse(head_type):
            def deserialize(data: bytes) -> Bundle:
                bundle = Bundle.FromString(data)
                bundle.head_message = head_type.FromString(bundle.head)
                bundle.node = bundle.head_message.node
                return bundle

            return deserialize

        self.methods = {
            FLEET_PULL: (
                "PullMessages",
                grpc.unary_unary_rpc_method_handler(self.pull, request_deserializer=parse(PullMessagesRequest), response_serializer=Bundle.SerializeToString),
            ),
            FLEET_PUSH: (
                "PushMessages",
                grpc.unary_unary_rpc_method_handler(self.push, request_deserializer=parse(PushMessagesRequest), response_serializer=Bundle.SerializeToString),
            ),
        }

    # grpc.GenericRpcHandler
    def service(self, handler_call_details):
        found = self.methods.get(handler_call_details.method)
        if found is None:
            return None
        flower_name, handler = found
        # Flower's own node authentication, as for the Fleet method of the same name:
        # the signature over the timestamp, its age, and (in the handler) the node id against the key.
        details = _Details(f"/flwr.proto.Fleet/{flower_name}", tuple(handler_call_details.invocation_metadata or ()))
        return self.auth.intercept_service(lambda _details: handler, details)

    def pull(self, bundle: Bundle, context) -> Bundle:
        from flwr.proto.message_pb2 import (  # pylint: disable=no-name-in-module
            ConfirmMessageReceivedRequest,
            PullObjectRequest,
        )

        request = bundle.head_message
        state = self.servicer.state_factory.state()
        node_id = request.node.node_id
        deadline = time.monotonic() + _wait_seconds(bundle)
        while True:
            generation = self.changes.generation
            inbox = node_inbox(state, node_id)
            late = time.monotonic() >= deadline or not context.is_active()
            if inbox in (None, "complete") or late:
                with self.changes.bundle_lock:
                    response = self.servicer.PullMessages(request, context)
                if response.messages_list or inbox == "complete" or late:
                    break
            self.changes.wait(generation, deadline - time.monotonic())

        def content_of(message, object_id: str) -> bytes | None:
            found = self.servicer.PullObject(PullObjectRequest(node=request.node, run_id=message.metadata.run_id, object_id=object_id), context)
            return found.object_content if found.object_found and found.object_available else None

        def confirm(message) -> None:
            self.servicer.ConfirmMessageReceived(
                ConfirmMessageReceivedRequest(node=request.node, run_id=message.metadata.run_id, message_object_id=message.metadata.message_id),
                context,
            )

        objects, confirmed = gather_messages(zip(response.messages_list, response.message_object_trees), content_of, confirm)
        return Bundle(response.SerializeToString(), {"confirmed": confirmed, "long_poll": MAX_WAIT_SECONDS}, objects)

    def push(self, bundle: Bundle, context) -> Bundle:
        from flwr.proto.message_pb2 import PushObjectRequest  # pylint: disable=no-name-in-module

        request = bundle.head_message
        run_id = request.messages_list[0].metadata.run_id if request.messages_list else 0
        provided = dict(bundle.objects)
        remaining = []
        with self.changes.storing_bundle():
            response = self.servicer.PushMessages(request, context)
            for object_id in response.objects_to_push:
                content = provided.get(object_id)
                stored = (
                    content is not None
                    and self.servicer.PushObject(
                        PushObjectRequest(node=request.node, run_id=run_id, object_id=object_id, object_content=content, session_id=response.session_id),
                        context,
                    ).stored
                )
                if not stored:
                    remaining.append(object_id)
        del response.objects_to_push[:]
        response.objects_to_push.extend(remaining)
        return Bundle(response.SerializeToString())


# -- Runtime API (HTTP, the ServerApp's) -------------------------------------------------------
def runtime_pull(body: bytes, state, task, changes: StateChanges) -> bytes:
    """Flower's Runtime ``pull_messages`` (after a long poll), then each object and the confirmation."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest, PullObjectRequest  # pylint: disable=no-name-in-module
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=no-name-in-module
    from flwr.superlink.servicer.runtime import runtime_handlers as handlers

    bundle = Bundle.FromString(body)
    request = PullAppMessagesRequest.FromString(bundle.head)
    ids = list(request.message_ids)
    deadline = time.monotonic() + _wait_seconds(bundle)
    first_ready: float | None = None
    while True:
        generation = changes.generation
        states = reply_states(state, ids)
        now = time.monotonic()
        if states is None or now >= deadline:
            break
        ready = sum(1 for v in states.values() if v == "ready")
        if ready == len(ids):
            break
        if ready and first_ready is None:
            first_ready = now
        limit = deadline if first_ready is None else min(deadline, first_ready + REPLY_LINGER_SECONDS)
        if now >= limit:
            break
        changes.wait(generation, limit - now)
    if states is not None and time.monotonic() < deadline:
        # A reply whose objects are still arriving is left for the next pull (it comes whole, then).
        del request.message_ids[:]
        request.message_ids.extend(mid for mid in ids if states.get(mid) != "incomplete")
    with changes.bundle_lock:
        response = handlers.pull_messages(request, state, task)
    node = Node(node_id=SUPERLINK_NODE_ID)

    def content_of(_message, object_id: str) -> bytes | None:
        found = handlers.pull_object(PullObjectRequest(node=node, run_id=task.run_id, object_id=object_id), state, task)
        return found.object_content if found.object_found and found.object_available else None

    def confirm(message) -> None:
        handlers.confirm_message_received(
            ConfirmMessageReceivedRequest(node=node, run_id=task.run_id, message_object_id=message.metadata.message_id), state, task
        )

    objects, confirmed = gather_messages(zip(response.messages_list, response.message_object_trees), content_of, confirm)
    return Bundle(response.SerializeToString(), {"confirmed": confirmed, "long_poll": MAX_WAIT_SECONDS}, objects).SerializeToString()


def runtime_push(body: bytes, state, task, changes: StateChanges) -> bytes:
    """Flower's Runtime ``push_messages``, then ``push_object`` for each object asked for that the bundle carries."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.message_pb2 import PushObjectRequest  # pylint: disable=no-name-in-module
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PushAppMessagesRequest  # pylint: disable=no-name-in-module
    from flwr.superlink.servicer.runtime import runtime_handlers as handlers

    bundle = Bundle.FromString(body)
    node = Node(node_id=SUPERLINK_NODE_ID)
    provided = dict(bundle.objects)
    remaining = []
    with changes.storing_bundle():
        response = handlers.push_messages(PushAppMessagesRequest.FromString(bundle.head), state, task)
        for object_id in response.objects_to_push:
            content = provided.get(object_id)
            stored = (
                content is not None
                and handlers.push_object(
                    PushObjectRequest(node=node, run_id=task.run_id, object_id=object_id, object_content=content, session_id=response.session_id),
                    state,
                    task,
                ).stored
            )
            if not stored:
                remaining.append(object_id)
    del response.objects_to_push[:]
    response.objects_to_push.extend(remaining)
    return Bundle(response.SerializeToString()).SerializeToString()


class RuntimeRoutes:
    """ASGI front of Flower's SuperLink app that serves the two ``/v1/fedrisk/`` routes itself.

    Each request is authenticated exactly as Flower's Runtime routes are — its
    task token, by Flower's own ``authenticate_task`` on the SuperLink state —
    and an error becomes the response Flower's own ``http_error_translator``
    makes of it. What it skips is the rest of the FastAPI stack in front of
    Flower's routes (six middlewares, most of them for the Control API, and
    dependency resolution): measured, that stack was two thirds of the
    SuperLink's CPU once each exchange was down to two HTTP requests. Every
    other request, and the lifespan, go to Flower's app unchanged.
    """

    def __init__(self, app, changes: StateChanges) -> None:
        self.app = app
        self.changes = changes
        self.routes = {RUNTIME_PULL: runtime_pull, RUNTIME_PUSH: runtime_push}

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # ``state`` and the like: Flower's app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in self.routes:
            await self.app(scope, receive, send)
            return
        from fastapi.exceptions import HTTPException
        from flwr.supercore.constant import TASK_TOKEN_HEADER
        from flwr.supercore.dependencies.task import authenticate_task
        from flwr.supercore.error.http import http_error_translator
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import Response

        request = Request(scope, receive)
        function = self.routes[scope["path"]]
        try:
            body = await request.body()
            state = self.app.state.linkstate_factory.state()
            task = authenticate_task(request, request.headers.get(TASK_TOKEN_HEADER), state)
            try:
                data = await run_in_threadpool(function, body, state, task, self.changes)
            except BundleError as err:
                raise HTTPException(status_code=400, detail=str(err)) from None
            response = Response(content=data, media_type="application/octet-stream")
        except Exception as err:  # noqa: BLE001 - Flower's translator decides what the caller sees
            error = err

            async def reraise(_request):
                raise error

            response = await http_error_translator(request, reraise)
        await response(scope, receive, send)


# -- node registry -------------------------------------------------------------------------------
class NodeRegistry:
    """The Control API's node registrations, kept in a file across restarts of an in-memory SuperLink.

    The file is a sequence of Flower ``NodeInfo`` protobufs, each prefixed by
    its length (4 bytes, big-endian). It holds the nodes' public keys and
    owners, so it is written with mode 0600, and atomically: a failed write
    leaves the previous file as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> list:
        """The saved ``NodeInfo`` entries (none when the file does not exist yet).

        Raises
        ------
        FedriskError
            The file cannot be read, or is not a whole registry (truncated, or not one at all).
        """
        import struct

        from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
        from google.protobuf.message import DecodeError

        from fedrisk.errors import FedriskError

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise FedriskError(f"cannot read the node registry {self.path}: {err.strerror}") from None
        out: list = []
        at = 0
        while at < len(data):
            # Refuse rather than drop: a registry read short would silently unregister nodes on the next save.
            if at + 4 > len(data):
                raise self._corrupt(f"{len(data) - at} stray byte(s) at offset {at}")
            (length,) = struct.unpack_from(">I", data, at)
            if at + 4 + length > len(data):
                raise self._corrupt(f"entry {len(out) + 1} at offset {at} claims {length} bytes, {len(data) - at - 4} left")
            try:
                info = NodeInfo.FromString(data[at + 4 : at + 4 + length])
            except DecodeError:
                raise self._corrupt(f"entry {len(out) + 1} at offset {at} is not a NodeInfo") from None
            if info.node_id == 0:
                raise self._corrupt(f"entry {len(out) + 1} at offset {at} has no node id")
            out.append(info)
            at += 4 + length
        return out

    def _corrupt(self, why: str) -> Exception:
        from fedrisk.errors import FedriskError

        return FedriskError(f"node registry {self.path} is damaged ({why}); restore it from a backup, or remove it and register the nodes again")

    def save(self, state) -> None:
        """Write every node of ``state`` to the file: a private temporary file, then an atomic rename over the old one."""
        import struct

        with self._lock:
            infos = sorted(state.get_node_info(), key=lambda n: n.node_id)
            data = b"".join(struct.pack(">I", len(b)) + b for b in (info.SerializeToString() for info in infos))
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    os.fchmod(handle.fileno(), 0o600)  # a stale .tmp keeps its old mode through O_CREAT
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)  # the old registry is untouched; leave no half-written copy
                raise
            # The rename itself survives a power cut only once the folder is synced.
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def restore(self, state) -> int:
        """Put the saved nodes back into Flower's in-memory state (same ids, keys, owners); returns how many."""
        from flwr.supercore.constant import NodeStatus

        nodes = getattr(state, "nodes", None)
        by_key = getattr(state, "node_public_key_to_node_id", None)
        owners = getattr(state, "owner_to_node_ids", None)
        if nodes is None or by_key is None or owners is None:
            raise SystemExit("--node-registry needs Flower's in-memory state (--database :flwr-in-memory:)")
        restored = 0
        with state.lock:
            for info in self.load():
                if info.node_id in nodes or info.public_key in by_key:
                    continue
                if info.status != NodeStatus.UNREGISTERED:
                    # Online again with its first heartbeat or activation, as after a restart with SQLite.
                    info.status = NodeStatus.REGISTERED
                    info.online_until = 0.0
                nodes[info.node_id] = info
                by_key[info.public_key] = info.node_id
                owners.setdefault(info.owner_aid, set()).add(info.node_id)
                restored += 1
        return restored

    def watch(self, state) -> None:
        """Save after every registration and unregistration."""
        for name in ("create_node", "delete_node"):
            flower = getattr(state, name)

            def changed(*args, __flower=flower, **kwargs):
                result = __flower(*args, **kwargs)
                self.save(state)
                return result

            setattr(state, name, changed)


# -- installation --------------------------------------------------------------------------------
def install(*, bundles: bool = True, registry: NodeRegistry | None = None, results: ResultArtifacts | None = None) -> None:
    """Extend the ``flower-superlink`` about to run in this process (see the module doc)."""
    import importlib
    from logging import INFO

    from flwr.supercore import log

    superlink_main: Any = importlib.import_module("flwr.superlink.main")
    cli: Any = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function of that name

    changes = StateChanges()
    flower_create_app = superlink_main.create_app

    def create_app(*args, **kwargs):
        app = flower_create_app(*args, **kwargs)
        state = app.state.linkstate_factory.state()
        if results is not None:
            app.state.artifact_provider = results  # what PullArtifacts asks
            log(INFO, "[fedrisk] run results served from %s", results.folder)
            app = ResultRoutes(app, results)
        if registry is not None:
            restored = registry.restore(state)
            registry.watch(state)
            log(INFO, "[fedrisk] node registry %s: %d node(s) restored", registry.path, restored)
        if bundles:
            watch_state(state, changes)
            log(INFO, "[fedrisk] bundled pulls and pushes with long polls on the Fleet and Runtime APIs")
            return RuntimeRoutes(app, changes)
        return app

    superlink_main.create_app = create_app
    if bundles:
        flower_add = cli.add_FleetServicer_to_server

        def add_fleet_servicer(servicer, server):
            flower_add(servicer, server)
            server.add_generic_rpc_handlers((FleetBundleHandler(servicer, changes),))

        cli.add_FleetServicer_to_server = add_fleet_servicer


_FEDRISK_OPTIONS = """fedrisk SuperLink: Flower's flower-superlink with bundled long-poll pulls and pushes.

fedrisk options (before or among Flower's):
  --node-registry FILE  keep registered node ids and public keys in FILE (0600), so a
                        restarted in-memory SuperLink keeps its nodes
  --no-bundles          serve Flower's per-object calls only (as a stock flower-superlink)
  --results-dir DIR     where coordinators publish run results for `flwr pull` / `fedrisk train
                        --superlink` (0700; default: a new private temporary folder)

Flower's options follow.
"""


def _results(folder: str | None, flower_args: list[str]) -> ResultArtifacts:
    """The result provider, at the address Flower's HTTP API will listen on."""
    import tempfile

    from flwr.supercore.constant import SUPERLINK_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    from fedrisk.federation.run_results import base_url

    if folder is None:
        path = Path(tempfile.mkdtemp(prefix="fedrisk-superlink-results-"))
    else:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    host = option_value(flower_args, "--host") or UVICORN_DEFAULT_HOST
    port = option_value(flower_args, "--port") or SUPERLINK_UVICORN_DEFAULT_PORT
    return ResultArtifacts(path, base_url(host, port, insecure="--insecure" in flower_args))


def main(argv: list[str] | None = None) -> int:
    """Run ``flower-superlink`` with fedrisk's extensions; ``argv``: fedrisk's options and Flower's.

    Returns
    -------
    int
        0 after the SuperLink stopped; 2 when the node registry cannot be read (one line on stderr).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    from flwr.superlink.cli.flower_superlink import flower_superlink

    if "-h" in args or "--help" in args:
        print(_FEDRISK_OPTIONS)
        sys.argv = ["flower-superlink", "--help"]
        flower_superlink()  # prints Flower's help and exits, before anything is patched
    registry_path = pop_option(args, "--node-registry")
    no_bundles = bool(pop_option(args, "--no-bundles", flag=True))
    results_dir = pop_option(args, "--results-dir")
    registry = NodeRegistry(Path(str(registry_path))) if registry_path else None
    if registry is not None:
        from fedrisk.errors import FedriskError

        try:
            registry.load()  # read here, before Flower starts: a damaged file is one line, not a traceback mid-startup
        except FedriskError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    results = _results(str(results_dir) if results_dir else None, args)
    os.environ[RESULTS_DIR_ENV] = str(results.folder)  # the SuperExec and its ServerApps inherit it
    install(bundles=not no_bundles, registry=registry, results=results)
    sys.argv = ["flower-superlink", *args]
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
