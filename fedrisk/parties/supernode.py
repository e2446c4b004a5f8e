"""Run Flower's SuperNode with bundled long-poll transfers and the fedrisk ClientApp kept warm.

Flower 1.39's SuperNode sleeps 3 s whenever a pull from the SuperLink finds
no message, and moves every object of a message in its own request.  Vertical
protocols exchange several messages per epoch, so those waits and requests,
not computation, would dominate an epoch.  This entry point runs the
unmodified ``flower-supernode`` with:

* against fedrisk's SuperLink (:mod:`fedrisk.federation.superlink`), a pull
  that waits at the SuperLink for the next message (up to
  :data:`LONG_POLL_SECONDS`) and brings it with its objects, and a reply pushed
  with its objects, one request each (:class:`BundleLink`,
  :mod:`fedrisk.wire.bundles`);
* against any other SuperLink, Flower's own calls with waits following the
  node's activity (:class:`FleetPoll`: a pull 5 ms after the node's last
  message, slowing to a tenth of the idle time and at most every
  :data:`IDLE_POLL_SECONDS`);
* the ClientApp's reply sent as soon as the warm executor stored it.

It also runs the SuperNode in Flower's ``process`` isolation with the
ClientApp tasks executed by :class:`~fedrisk.parties.warm_executor.WarmClientAppExecutor`
in this process, instead of a fresh ``flwr-clientapp`` process per message.
The executor uses the SuperNode's own state through Flower's Runtime API
handlers in process (:class:`~fedrisk.parties.warm_executor.InProcessRuntimeClient`,
no loopback HTTP), woken when the SuperNode has stored a message.
That executor runs only the installed fedrisk ClientApp and refuses any other
app package the coordinator submits; ``--isolation subprocess`` is refused
with one line, since Flower's ``flwr-clientapp`` would install and import
whatever app package arrives, next to the party's keys. Everything else is
Flower's own code and flags.

Link settings (:func:`tune_fleet_link`), set deliberately for parties on
other hosts, behind NATs and firewalls:

* **heartbeat**: Flower 1.39's SuperNode announces a 30 s heartbeat interval,
  and the SuperLink marks a node offline only after two missed intervals, so
  a SuperNode killed mid-round kept the coordinator waiting 60 s before
  Flower answered its message with ``NODE_UNAVAILABLE``. fedrisk announces
  :data:`HEARTBEAT_SECONDS` (10 s, Flower's minimum): a dead node is noticed
  within ~20 s at the price of one small RPC every ~4 s.
* **keepalive**: Flower opens the Fleet channel without gRPC keepalive, and
  its pull RPCs have no deadline, so a connection silently dropped by a
  middlebox would hang a SuperNode. The channel gets HTTP/2 keepalive pings
  every :data:`KEEPALIVE_MS` (60 s, timeout 20 s) while calls are in flight
  (``keepalive_permit_without_calls`` stays 0, as Flower's server requires:
  its server allows pings only with calls active, and the SuperNode always
  has one — a long poll, or a pull every 100 ms at most, so the server's
  5-minute minimum ping interval without data never applies).
* **message size**: Flower's limit is 2 GiB - 1 each way
  (``flwr.supercore.grpc.GRPC_MAX_MESSAGE_LENGTH``) and is kept; fedrisk caps
  a single payload blob at 256 MiB (:data:`fedrisk.wire.exchange.MAX_BLOB_BYTES`),
  Flower 1.39 sends large arrays as separately pulled objects of 5 MiB, and a
  bundle carries at most :data:`fedrisk.wire.bundles.MAX_BUNDLE_BYTES`
  of them, so no single gRPC message approaches it.
"""

from __future__ import annotations

import sys
import threading
import time as _time
from typing import Any

from fedrisk.wire.flower_args import option_value

#: Longest idle sleep between two pulls from the SuperLink (Flower: 3 s).
IDLE_POLL_SECONDS = 0.1
#: Shortest idle sleep, right after the node received or answered a message.
FAST_POLL_SECONDS = 0.005
#: Between the two, the idle sleep is this fraction of the time since the node's last message.
IDLE_POLL_FRACTION = 0.1
#: Longest wait for the ClientApp's reply between looks at the in-memory state (Flower: 0.5 s); the warm
#: executor wakes the loop as soon as it stored the reply, so this is only the fallback.
REPLY_POLL_SECONDS = 0.02
#: How long one pull may wait at a fedrisk SuperLink for a message for this node (long poll).
LONG_POLL_SECONDS = 1.0
#: After a long poll that waited, the loop pulls again after this pause (instead of its idle sleep).
AFTER_LONG_POLL_SECONDS = 0.0005
#: Heartbeat interval the SuperNode announces (Flower's minimum; Flower's default is 30 s).
HEARTBEAT_SECONDS = 10
#: HTTP/2 keepalive on the Fleet channel.
KEEPALIVE_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


def drop_messages_of_stopped_runs() -> None:
    """Make a message whose run stopped mid-pull fail cleanly instead of leaving a task that never starts.

    Flower 1.39's SuperNode creates a ClientApp task for a message *before*
    pulling the message's objects; when the run stops meanwhile (its
    coordinator was killed) the pull raises ``RunNotRunningException``, a
    ``BaseException`` that skips the clean-up branch, and the task stays
    pending with objects that will never arrive. The task executor then waits
    up to ``PULL_MAX_TIME`` (2 h) on it, and every later message — those of the
    restarted coordinator too — waits behind it. Turned into an ordinary
    exception here, the SuperNode's own clean-up runs: the message is deleted
    and its task finished as failed.
    """
    from flwr.supercore.run import RunNotRunningException
    from flwr.supernode import start_client_internal

    flower_pull_objects = getattr(start_client_internal, "pull_objects", None)
    if flower_pull_objects is None or getattr(flower_pull_objects, "_fedrisk", False):
        return  # another Flower: leave it alone

    def pull_objects(*args, **kwargs):
        # The objects a bundled pull brought (fedrisk's SuperLink): no per-object pull, no thread pool.
        carried = BUNDLES.take_carried(args[0] if args else kwargs.get("object_ids", ()))
        if carried is not None:
            return carried
        try:
            return flower_pull_objects(*args, **kwargs)
        except RunNotRunningException:
            raise RuntimeError("its run is no longer running (coordinator stopped)") from None

    pull_objects._fedrisk = True  # type: ignore[attr-defined]
    start_client_internal.pull_objects = pull_objects


def transfer_in_process_objects_in_line() -> None:
    """Move the warm ClientApp's objects one after the other, not through a thread pool per message.

    Flower's ClientApp runtime pulls a message's objects and pushes its reply's
    objects through a new thread pool each time (``pull_objects``,
    ``push_object_contents_from_iterable``): right for a ``flwr-clientapp``
    process talking HTTP, pure overhead for the warm executor, whose Runtime
    API calls are function calls on the SuperNode's state (measured: 4 ms of
    wall time each way per message, 1.2 ms of it CPU). Here each object is
    moved in turn; an object not yet available falls back to Flower's own
    pull, with its retries and deadline, for the objects still missing.
    Only the ClientApp runtime calls these through ``inflatable_utils``; the
    SuperNode's Fleet transfers keep their own references to Flower's functions.
    """
    from flwr.supercore.inflatable import inflatable_utils as utils

    flower_pull, flower_push = getattr(utils, "pull_objects", None), getattr(utils, "push_object_contents_from_iterable", None)
    unavailable = getattr(utils, "ObjectUnavailableError", None)
    if flower_pull is None or flower_push is None or unavailable is None or getattr(flower_pull, "_fedrisk", False):
        return

    def pull_objects(object_ids, pull_object_fn, **kwargs):
        contents: dict[str, bytes] = {}
        for i, object_id in enumerate(object_ids):
            try:
                contents[object_id] = pull_object_fn(object_id)
            except unavailable:
                contents.update(flower_pull([o for o in object_ids[i:] if o not in contents], pull_object_fn, **kwargs))
                break
        return contents

    def push_object_contents_from_iterable(object_contents, push_object_fn, **kwargs):
        for object_id, content in object_contents:
            push_object_fn(object_id, content)

    pull_objects._fedrisk = True  # type: ignore[attr-defined]
    utils.pull_objects = pull_objects
    utils.push_object_contents_from_iterable = push_object_contents_from_iterable


def keep_supernode_alive_on_stale_tasks() -> None:
    """A ClientApp task whose token went stale must fail that task, not stop the SuperNode.

    Flower's HTTP retry policy answers a 401 from the Runtime API by sending
    SIGINT to its own process: right for a ``flwr-clientapp`` process whose
    task was cancelled, fatal for the warm executor, which runs in the
    SuperNode process (a task cancelled because its run stopped took the whole
    node down). In this process a 401 gives the call up instead.
    """
    import httpx
    from flwr.supercore import retry

    flower_factory = getattr(retry, "make_simple_http_retry_invoker", None)
    if flower_factory is None or getattr(flower_factory, "_fedrisk", False):
        return  # another Flower: leave it alone

    def make_simple_http_retry_invoker(*args, **kwargs):
        invoker = flower_factory(*args, **kwargs)
        flower_giveup = invoker.should_giveup

        def should_giveup(exc: Exception) -> bool:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
                return True
            return bool(flower_giveup(exc)) if flower_giveup is not None else False

        invoker.should_giveup = should_giveup
        return invoker

    make_simple_http_retry_invoker._fedrisk = True  # type: ignore[attr-defined]
    retry.make_simple_http_retry_invoker = make_simple_http_retry_invoker


def _guarded_executor(runtime: str, state=None):
    """The warm executor, with a task that fails in its clean-up (stale token, stopped run) logged, not fatal."""
    import logging

    from fedrisk.parties.warm_executor import WarmClientAppExecutor

    log = logging.getLogger("fedrisk.warm_executor")

    class GuardedWarmClientAppExecutor(WarmClientAppExecutor):
        def _run_task(self, token: str) -> None:
            try:
                super()._run_task(token)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as err:  # noqa: BLE001 - RunNotRunningException is a BaseException
                log.warning("ClientApp task abandoned: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)

    return GuardedWarmClientAppExecutor(runtime, state)


def tune_fleet_link() -> None:
    """Shorter heartbeat and gRPC keepalive on the SuperNode's Fleet channel (see the module doc)."""
    import grpc
    from flwr.client.grpc_rere_client import connection
    from flwr.supercore import heartbeat

    if not all(hasattr(m, "HEARTBEAT_DEFAULT_INTERVAL") for m in (connection, heartbeat)) or not hasattr(connection, "create_channel"):
        return  # another Flower: leave it alone
    connection.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_SECONDS
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_SECONDS
    flower_create_channel = connection.create_channel
    if getattr(flower_create_channel, "_fedrisk", False):
        return

    def create_channel(server_address, insecure, root_certificates=None, max_message_length=None, interceptors=None):
        from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH

        if insecure:
            return BUNDLES.attach(
                flower_create_channel(server_address, insecure, root_certificates, max_message_length or GRPC_MAX_MESSAGE_LENGTH, interceptors)
            )
        length = max_message_length or GRPC_MAX_MESSAGE_LENGTH
        options = [
            ("grpc.max_send_message_length", length),
            ("grpc.max_receive_message_length", length),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        channel = grpc.secure_channel(server_address, grpc.ssl_channel_credentials(root_certificates), options=options)
        # Flower's interceptors (node signature, runtime version) sign fedrisk's bundled calls on this channel too.
        return BUNDLES.attach(grpc.intercept_channel(channel, *interceptors) if interceptors else channel)

    create_channel._fedrisk = True  # type: ignore[attr-defined]
    connection.create_channel = create_channel


class FleetPoll:
    """When the SuperNode's loop asks the SuperLink again, and how long it waits for its ClientApp's reply.

    Flower 1.39's Fleet API has no long poll: ``PullMessages`` answers at once,
    and the SuperNode sleeps 3 s after an empty pull. A message therefore waits
    at the SuperLink for up to one sleep. Against fedrisk's SuperLink the pull
    itself waits there (:class:`BundleLink`, up to :data:`LONG_POLL_SECONDS`) and
    the loop asks again right away (:data:`AFTER_LONG_POLL_SECONDS`). Against
    another SuperLink the idle sleep follows the node's activity:
    :data:`FAST_POLL_SECONDS` right after the node received or answered a
    message (the next message of a protocol usually follows within
    milliseconds), growing to :data:`IDLE_POLL_FRACTION` of the time since then
    and capped at :data:`IDLE_POLL_SECONDS`: a message that comes after a quiet
    gap ``g`` waits about ``g / 10`` at most (5 ms to 100 ms), and an idle node
    costs the SuperLink ten pulls a second.

    Flower's loop also waits for the ClientApp's reply (and for the reply's
    objects) by sleeping 0.5 s between looks at its in-memory state; the warm
    executor wakes it when the reply is stored (:meth:`reply_stored`), and it
    looks at least every :data:`REPLY_POLL_SECONDS`.
    """

    def __init__(self) -> None:
        self.last_activity = float("-inf")
        #: Idle sleeps taken, and the last one (for tests and diagnostics).
        self.idle_sleeps = 0
        self.last_idle_sleep: float | None = None
        #: Seconds the SuperLink held the last empty pull (a long poll), spent instead of the next idle sleep.
        self.waited = 0.0
        self._reply = threading.Event()

    def activity(self) -> None:
        self.last_activity = _time.monotonic()

    def long_polled(self, seconds: float) -> None:
        """The last pull came back empty after the SuperLink held it ``seconds``."""
        self.waited = seconds

    def reply_stored(self) -> None:
        """The ClientApp's reply is in the node's state: end the loop's wait for it now."""
        self._reply.set()

    def idle_interval(self) -> float:
        since = _time.monotonic() - self.last_activity
        return min(IDLE_POLL_SECONDS, max(FAST_POLL_SECONDS, IDLE_POLL_FRACTION * since))

    def sleep(self, seconds: float) -> None:
        """Flower's ``time.sleep`` in its SuperNode loop: 3 s when idle, 0.5 s while waiting for a reply."""
        if seconds >= 1.0:
            interval = self.idle_interval()
            if self.waited:
                interval = max(AFTER_LONG_POLL_SECONDS, interval - self.waited)
                self.waited = 0.0
            self.idle_sleeps += 1
            self.last_idle_sleep = interval
            _time.sleep(interval)
        else:
            self._reply.wait(min(seconds, REPLY_POLL_SECONDS))
            self._reply.clear()


class _SuperNodeTime:
    """The ``time`` module, as Flower's SuperNode loop sees it: its ``sleep`` is :class:`FleetPoll`'s."""

    def __init__(self, poll: FleetPoll) -> None:
        self.poll = poll

    def __getattr__(self, name: str):
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        self.poll.sleep(seconds)


class BundleLink:
    """The SuperNode's side of fedrisk's bundled Fleet calls (:mod:`fedrisk.wire.bundles`).

    A pull is one request that may wait at the SuperLink for a message and
    brings it with its objects, already confirmed; a push is one request with
    the reply and its objects. Both go through the channel Flower opened (its
    TLS, its node-signature and version interceptors). Everything else stays
    Flower's: the bundle's objects are handed to Flower's own pull loop, which
    stores them in the node's object store (checking each against its SHA-256
    id); objects a bundle lacks are pulled or pushed one by one, by Flower. A
    call that fails falls back to Flower's call, whose retries and errors apply;
    a SuperLink without the extension (``UNIMPLEMENTED``) is not asked again.
    """

    def __init__(self) -> None:
        self.channel = None
        self.enabled = True
        #: Bundled pulls and pushes answered (diagnostics and tests).
        self.pulls = 0
        self.pushes = 0
        #: Objects of the message the last bundled pull brought, until Flower's pull loop takes them.
        self.carried: dict[str, bytes] = {}

    def take_carried(self, object_ids) -> dict[str, bytes] | None:
        """All of ``object_ids`` from the last bundle (removed from it), or ``None`` if one is missing."""
        object_ids = list(object_ids)
        if not object_ids or not all(i in self.carried for i in object_ids):
            return None
        return {i: self.carried.pop(i) for i in object_ids}

    def attach(self, channel):
        from fedrisk.wire.bundles import FLEET_PULL, FLEET_PUSH, Bundle

        self.channel = channel
        self._pull = channel.unary_unary(FLEET_PULL, request_serializer=Bundle.SerializeToString, response_deserializer=Bundle.FromString)
        self._push = channel.unary_unary(FLEET_PUSH, request_serializer=Bundle.SerializeToString, response_deserializer=Bundle.FromString)
        return channel

    @property
    def usable(self) -> bool:
        return self.enabled and self.channel is not None

    def _call(self, method, bundle, timeout: float):
        import grpc

        try:
            return method(bundle, timeout=timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.enabled = False
                sys.stderr.write("[fedrisk] the SuperLink serves no bundled calls: using Flower's per-object calls\n")
            return None

    def pull(self, node, wait: float):
        """``(PullMessagesResponse, Bundle)``, or ``None`` (then use Flower's pull)."""
        from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse  # pylint: disable=no-name-in-module

        from fedrisk.wire.bundles import Bundle

        answer = self._call(self._pull, Bundle(PullMessagesRequest(node=node).SerializeToString(), {"wait": wait}), wait + 30.0)
        if answer is None:
            return None
        self.pulls += 1
        return PullMessagesResponse.FromString(answer.head), answer

    def push(self, request, objects):
        """The ``PushMessagesResponse`` (objects still to push in ``objects_to_push``), or ``None``."""
        from flwr.proto.fleet_pb2 import PushMessagesResponse  # pylint: disable=no-name-in-module

        from fedrisk.wire.bundles import Bundle

        answer = self._call(self._push, Bundle(request.SerializeToString(), {}, objects), 300.0)
        if answer is None:
            return None
        self.pushes += 1
        return PushMessagesResponse.FromString(answer.head)

    def bundled_receive(self, poll: FleetPoll, kwargs: dict) -> None:
        """Swap ``receive``, ``pull_object`` and ``confirm_message_received`` of one ``_pull_and_store_message`` call."""
        from flwr.common.serde import message_from_proto
        from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module

        state = kwargs["state"]
        flower_receive, flower_pull_object, flower_confirm = kwargs["receive"], kwargs["pull_object"], kwargs["confirm_message_received"]
        carried = self.carried = {}
        confirmed: set[str] = set()

        def receive():
            if not self.usable:
                return flower_receive()
            started = _time.monotonic()
            got = self.pull(Node(node_id=state.get_node_id()), LONG_POLL_SECONDS)
            if got is None:
                return flower_receive()
            response, bundle = got
            if not response.messages_list:
                poll.long_polled(_time.monotonic() - started)
                return None
            carried.update(bundle.objects)
            confirmed.update(bundle.meta.get("confirmed", ()))
            return message_from_proto(response.messages_list[0]), response.message_object_trees[0]

        def pull_object(run_id: int, object_id: str) -> bytes:
            content = carried.pop(object_id, None)
            return content if content is not None else flower_pull_object(run_id, object_id)

        def confirm_message_received(run_id: int, message_id: str) -> None:
            if message_id in confirmed:
                confirmed.discard(message_id)  # the bundled pull confirmed it at the SuperLink
                return
            flower_confirm(run_id, message_id)

        kwargs.update(receive=receive, pull_object=pull_object, confirm_message_received=confirm_message_received)

    def bundled_send(self, kwargs: dict) -> None:
        """Swap ``send`` of one ``_push_messages`` call: the reply and its objects in one request."""
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto
        from flwr.proto.fleet_pb2 import PushMessagesRequest  # pylint: disable=no-name-in-module
        from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

        from fedrisk.wire.bundles import gather_objects

        state, store, flower_send = kwargs["state"], kwargs["object_store"], kwargs["send"]

        def send(message, object_tree, clientapp_runtime: float):
            if not self.usable:
                return flower_send(message, object_tree, clientapp_runtime)
            bare = remove_content_from_message(message) if message.has_content() else message
            request = PushMessagesRequest(
                node=Node(node_id=state.get_node_id()),
                messages_list=[message_to_proto(bare)],
                message_object_trees=[object_tree],
                clientapp_runtime_list=[clientapp_runtime],
            )
            objects, _ = gather_objects([t.object_id for t in iterate_object_tree(object_tree)], store.get)
            response = self.push(request, objects)
            if response is None:
                return flower_send(message, object_tree, clientapp_runtime)
            return set(response.objects_to_push), response.session_id

        kwargs.update(send=send)


#: The SuperNode's poll schedule in this process (set by :func:`tune_supernode_loop`).
POLL: FleetPoll | None = None
#: The SuperNode's bundled Fleet calls in this process (its channel is attached by :func:`tune_fleet_link`).
BUNDLES = BundleLink()


def tune_supernode_loop(on_message=None) -> FleetPoll:
    """Bundled long-poll pulls and pushes, idle polling and a short reply wait in Flower's SuperNode loop (idempotent).

    ``on_message`` is called each time the loop stored a message pulled from
    the SuperLink with all its objects (the warm executor takes its task then).
    """
    global POLL
    from flwr.supernode import start_client_internal as loop

    if POLL is None:
        POLL = FleetPoll()
    poll = POLL
    loop.time = _SuperNodeTime(poll)  # type: ignore[assignment]
    flower_pull = getattr(loop, "_pull_and_store_message", None)
    flower_push = getattr(loop, "_push_messages", None)
    if flower_pull is None or flower_push is None or getattr(flower_pull, "_fedrisk", False):
        return poll  # another Flower, or already tuned

    def _pull_and_store_message(*args, **kwargs):
        if not args and {"state", "receive", "pull_object", "confirm_message_received"} <= kwargs.keys():
            BUNDLES.bundled_receive(poll, kwargs)
        run_id = flower_pull(*args, **kwargs)
        if run_id is not None:
            poll.activity()
            if on_message is not None:
                on_message()
        return run_id

    def _push_messages(*args, **kwargs):
        if not args and {"state", "object_store", "send"} <= kwargs.keys():
            BUNDLES.bundled_send(kwargs)
        try:
            return flower_push(*args, **kwargs)
        finally:
            poll.activity()

    _pull_and_store_message._fedrisk = True  # type: ignore[attr-defined]
    loop._pull_and_store_message = _pull_and_store_message
    loop._push_messages = _push_messages
    return poll


def capture_node_state(holder: dict) -> bool:
    """Keep the SuperNode's ``NodeStateFactory`` in ``holder["factory"]`` when Flower creates it.

    ``flower-supernode`` makes the factory and hands it to ``start_client_internal``;
    the warm executor, in this process, uses the same state through Flower's
    Runtime API handlers instead of over HTTP.
    """
    import importlib

    # the module, not the function of that name (its attributes are looked up and replaced at run time)
    cli: Any = importlib.import_module("flwr.supernode.cli.flower_supernode")
    flower_start = getattr(cli, "start_client_internal", None)
    if flower_start is None:
        return False  # another Flower: the executor stays on the Runtime HTTP API
    if getattr(flower_start, "_fedrisk", False):
        return True

    def start_client_internal(*args, **kwargs):
        holder["factory"] = kwargs.get("state_factory")
        return flower_start(*args, **kwargs)

    start_client_internal._fedrisk = True  # type: ignore[attr-defined]
    cli.start_client_internal = start_client_internal
    return True


def main(argv: list[str] | None = None) -> int:
    from flwr.supernode.cli import flower_supernode

    from fedrisk.wire.flower_tuning import shorten_object_pull_backoff

    args = list(sys.argv[1:] if argv is None else argv)
    isolation = option_value(args, "--isolation") or ""
    if isolation not in ("", "process"):
        sys.stderr.write(
            f"error: --isolation {isolation}: a fedrisk party runs only the installed fedrisk ClientApp, in process isolation; "
            "Flower's subprocess isolation would install and run whatever app package the coordinator submits\n"
        )
        return 2
    shorten_object_pull_backoff()
    tune_fleet_link()
    drop_messages_of_stopped_runs()
    transfer_in_process_objects_in_line()
    import faulthandler
    import os
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every thread's stack to the log

    if os.environ.get("FEDRISK_LOG_FORMAT") == "json":
        from fedrisk.logs import configure_logging

        configure_logging("json", process_name="supernode")
    if "--isolation" not in args:
        args += ["--isolation", "process"]
    runtime = f"{option_value(args, '--host') or '127.0.0.1'}:{option_value(args, '--port') or '9094'}"
    keep_supernode_alive_on_stale_tasks()
    holder: dict = {}

    def node_state():
        factory = holder.get("factory")
        return factory.state() if factory is not None else None

    executor = _guarded_executor(runtime, node_state if capture_node_state(holder) else None)
    executor.on_reply = tune_supernode_loop(on_message=executor.notify).reply_stored
    executor.start()
    sys.argv = ["flower-supernode", *args]
    flower_supernode()  # Flower types it "-> None": nothing to pass on
    return 0


if __name__ == "__main__":
    sys.exit(main())
