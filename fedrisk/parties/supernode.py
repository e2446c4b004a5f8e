"""Run Flower's SuperNode with a short idle poll and the fedrisk ClientApp kept warm.

Flower 1.39's SuperNode sleeps 3 s whenever a pull from the SuperLink finds
no message.  Vertical protocols exchange several messages per epoch, so that
idle sleep, not computation, would dominate an epoch.  This entry point runs
the unmodified ``flower-supernode`` with its idle waits capped at
:data:`IDLE_POLL_SECONDS` (a pull every 100 ms per node on a TLS channel
that is already open).

It also runs the SuperNode in Flower's ``process`` isolation with the
ClientApp tasks executed by :class:`~fedrisk.parties.warm_executor.WarmClientAppExecutor`
in this process, instead of a fresh ``flwr-clientapp`` process per message.
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

IDLE_POLL_SECONDS = 0.1
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


def _guarded_executor(runtime: str):
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

    return GuardedWarmClientAppExecutor(runtime)


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


class _ShortSleepTime:
    """The ``time`` module, with ``sleep`` capped for the SuperNode's poll loop."""

    def __getattr__(self, name: str):
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        _time.sleep(min(seconds, IDLE_POLL_SECONDS))


def _option(args: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str] | None = None) -> int:
    from flwr.supernode import start_client_internal
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
    start_client_internal.time = _ShortSleepTime()  # type: ignore[assignment]
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
    _guarded_executor(runtime).start()
    sys.argv = ["flower-supernode", *args]
    result = flower_supernode()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
