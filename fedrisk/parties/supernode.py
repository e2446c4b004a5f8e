"""Run Flower's SuperNode with a short idle poll and the fedrisk ClientApp kept warm.

Flower 1.39's SuperNode sleeps 3 s whenever a pull from the SuperLink finds
no message.  Vertical protocols exchange several messages per epoch, so that
idle sleep, not computation, would dominate an epoch.  This entry point runs
the unmodified ``flower-supernode`` with its waits following the node's
activity (:class:`FleetPoll`: a pull 5 ms after the node's last message,
slowing to a tenth of the idle time and at most every
:data:`IDLE_POLL_SECONDS`; the ClientApp's reply looked for every 2 ms).

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
  has one — it polls every 100 ms, so the server's 5-minute minimum ping
  interval without data never applies).
* **message size**: Flower's limit is 2 GiB - 1 each way
  (``flwr.supercore.grpc.GRPC_MAX_MESSAGE_LENGTH``) and is kept; fedrisk caps
  a single payload blob at 256 MiB (:data:`fedrisk.federation.exchange.MAX_BLOB_BYTES`)
  and Flower 1.39 sends large arrays as separately pulled objects, so no
  single gRPC message approaches it.
"""

from __future__ import annotations

import sys
import time as _time

#: Longest idle sleep between two pulls from the SuperLink (Flower: 3 s).
IDLE_POLL_SECONDS = 0.1
#: Shortest idle sleep, right after the node received or answered a message.
FAST_POLL_SECONDS = 0.005
#: Between the two, the idle sleep is this fraction of the time since the node's last message.
IDLE_POLL_FRACTION = 0.1
#: How often the loop looks for the ClientApp's reply in its in-memory state (Flower: 0.5 s).
REPLY_POLL_SECONDS = 0.002
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
        try:
            return flower_pull_objects(*args, **kwargs)
        except RunNotRunningException:
            raise RuntimeError("its run is no longer running (coordinator stopped)") from None

    pull_objects._fedrisk = True  # type: ignore[attr-defined]
    start_client_internal.pull_objects = pull_objects


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
            return flower_create_channel(server_address, insecure, root_certificates, max_message_length or GRPC_MAX_MESSAGE_LENGTH, interceptors)
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
        return grpc.intercept_channel(channel, *interceptors) if interceptors else channel

    create_channel._fedrisk = True  # type: ignore[attr-defined]
    connection.create_channel = create_channel


class FleetPoll:
    """When the SuperNode's loop asks the SuperLink again, and how long it waits for its ClientApp's reply.

    Flower 1.39's Fleet API has no long poll: ``PullMessages`` answers at once,
    and the SuperNode sleeps 3 s after an empty pull. A message therefore waits
    at the SuperLink for up to one sleep. Here the idle sleep follows the node's
    activity: :data:`FAST_POLL_SECONDS` right after the node received or
    answered a message (the next message of a protocol usually follows within
    milliseconds), growing to :data:`IDLE_POLL_FRACTION` of the time since
    then and capped at :data:`IDLE_POLL_SECONDS`: a message that comes after a
    quiet gap ``g`` waits about ``g / 10`` at most (5 ms to 100 ms), and an idle
    node costs the SuperLink ten pulls a second.

    Flower's loop also waits for the ClientApp's reply (and for the reply's
    objects) by sleeping 0.5 s between looks at its in-memory state; with the
    ClientApp warm in this process the reply is usually ready within
    milliseconds, so that wait looks every :data:`REPLY_POLL_SECONDS`.
    """

    def __init__(self) -> None:
        self.last_activity = float("-inf")
        #: Idle sleeps taken, and the last one (for tests and diagnostics).
        self.idle_sleeps = 0
        self.last_idle_sleep = None

    def activity(self) -> None:
        self.last_activity = _time.monotonic()

    def idle_interval(self) -> float:
        since = _time.monotonic() - self.last_activity
        return min(IDLE_POLL_SECONDS, max(FAST_POLL_SECONDS, IDLE_POLL_FRACTION * since))

    def sleep(self, seconds: float) -> None:
        """Flower's ``time.sleep`` in its SuperNode loop: 3 s when idle, 0.5 s while waiting for a reply."""
        if seconds >= 1.0:
            interval = self.idle_interval()
            self.idle_sleeps += 1
            self.last_idle_sleep = interval
            _time.sleep(interval)
        else:
            _time.sleep(min(seconds, REPLY_POLL_SECONDS))


class _SuperNodeTime:
    """The ``time`` module, as Flower's SuperNode loop sees it: its ``sleep`` is :class:`FleetPoll`'s."""

    def __init__(self, poll: FleetPoll) -> None:
        self.poll = poll

    def __getattr__(self, name: str):
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        self.poll.sleep(seconds)


#: The SuperNode's poll schedule in this process (set by :func:`tune_supernode_loop`).
POLL: FleetPoll | None = None


def tune_supernode_loop(on_message=None) -> FleetPoll:
    """Activity-driven idle polling and a short reply wait in Flower's SuperNode loop (idempotent).

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
        run_id = flower_pull(*args, **kwargs)
        if run_id is not None:
            poll.activity()
            if on_message is not None:
                on_message()
        return run_id

    def _push_messages(*args, **kwargs):
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

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")  # the module, not the function of that name
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


def _option(args: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str] | None = None) -> int:
    from flwr.supernode.cli import flower_supernode

    from fedrisk.federation.flower_tuning import shorten_object_pull_backoff

    args = list(sys.argv[1:] if argv is None else argv)
    isolation = _option(args, "--isolation", "")
    if isolation not in ("", "process"):
        sys.stderr.write(
            f"error: --isolation {isolation}: a fedrisk party runs only the installed fedrisk ClientApp, in process isolation; "
            "Flower's subprocess isolation would install and run whatever app package the coordinator submits\n"
        )
        return 2
    shorten_object_pull_backoff()
    tune_fleet_link()
    drop_messages_of_stopped_runs()
    import faulthandler
    import os
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every thread's stack to the log

    if os.environ.get("FEDRISK_LOG_FORMAT") == "json":
        from fedrisk.logs import configure_logging

        configure_logging("json", process_name="supernode")
    if "--isolation" not in args:
        args += ["--isolation", "process"]
    runtime = f"{_option(args, '--host', '127.0.0.1')}:{_option(args, '--port', '9094')}"
    keep_supernode_alive_on_stale_tasks()
    holder: dict = {}

    def node_state():
        factory = holder.get("factory")
        return factory.state() if factory is not None else None

    executor = _guarded_executor(runtime, node_state if capture_node_state(holder) else None)
    tune_supernode_loop(on_message=executor.notify)
    executor.start()
    sys.argv = ["flower-supernode", *args]
    result = flower_supernode()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
