"""Run the fedrisk ClientApp warm inside the SuperNode process, instead of one process per message.

Flower 1.39's SuperNode, in its default ``subprocess`` isolation, starts a
``flower-superexec`` that starts a fresh ``flwr-clientapp`` process for every
message: about 1.2 s of interpreter start-up and imports on this 2-core machine
before the ClientApp sees the message, which dominates a vertical protocol's
four exchanges per epoch. Flower's ``process`` isolation lets something else
execute the tasks; :class:`WarmClientAppExecutor` is that something: a thread
in the SuperNode process that acquires each ClientApp task from the SuperNode's
Runtime API and runs it exactly as ``flwr-clientapp`` does — pull the message
and context, install the FAB, load the ClientApp, call it, push the reply and
the task's final status — with the imports and the loaded app kept warm.

A party runs only the installed fedrisk ClientApp. Flower would install
whatever app package (FAB) the coordinator submitted and import its code here,
in the process that holds the party's 0600 keys and runs its ledger mod. The
executor never does: before a run's first task it checks the FAB
(:func:`check_app_package`) — its ClientApp component must be fedrisk's
(:data:`CLIENT_APP`), and every file in it other than ``pyproject.toml`` and
documentation must be byte-identical to the installed fedrisk package's file
at the same path (fedrisk's own run app carries no code at all; ``flwr build``
of the fedrisk project carries fedrisk's sources) — and then loads the
ClientApp from the *installed* package, never from the FAB (nothing is
extracted, nothing is put on ``sys.path``). Another app package is refused
with one line naming the problem, reported to the coordinator as the task's
error; none of its code runs and the party's keys are not touched.
(:mod:`fedrisk.parties.supernode` refuses Flower's ``subprocess`` isolation,
whose ``flwr-clientapp`` would install and import the FAB.)

The executor runs one task at a time, as the subprocess executor's ClientApp
would see it, and a task that raises is reported to the SuperNode as failed
with the exception's reason, as ``flwr-clientapp`` does.

It relies on Flower's Runtime API client and the helpers of
``flwr.supernode.runtime.run_clientapp`` (pinned ``flwr>=1.39,<1.40``).
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import threading
import time
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

from fedrisk.errors import FedriskError

log = logging.getLogger("fedrisk.warm_executor")

#: Poll interval of the Runtime HTTP API (without the SuperNode's state in hand).
POLL_SECONDS = 0.01
#: In process, the SuperNode wakes the executor when it stored a message and the executor claims that
#: message's task by id; a full ``AcquireTask`` (a scan of every task the node ever ran, so its cost grows
#: with the run) is only the fallback, made at most once per this many seconds — not after every message.
IDLE_WAIT_SECONDS = 0.5
#: The only ClientApp a fedrisk party runs (the installed package's).
CLIENT_APP = "fedrisk.parties.client_app:app"
PUBLISHER = "fedrisk"
#: Files an app package may carry that nothing ever executes.
_DOCUMENTS = (".md", ".rst", ".txt")
_MAX_FILES = 4096
_MAX_BYTES = 64 * 1024 * 1024


class ForeignAppError(FedriskError):
    """The run's app package is not fedrisk's ClientApp (one line)."""


def _installed_root() -> Path:
    import fedrisk

    return Path(fedrisk.__file__).resolve().parent


def _problem(content: bytes, fab_hash: str | None) -> str | None:
    """What makes ``content`` something other than a fedrisk app package, or ``None``."""
    if fab_hash and hashlib.sha256(content).hexdigest() != fab_hash:
        return "its content does not match its SHA-256"
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        entries = [e for e in archive.infolist() if not e.is_dir()]
    except (zipfile.BadZipFile, ValueError):
        return "it is not a Flower app package (not a zip archive)"
    if len(entries) > _MAX_FILES or sum(e.file_size for e in entries) > _MAX_BYTES:
        return f"it is larger than {_MAX_FILES} files or {_MAX_BYTES // 2**20} MiB"
    names = {e.filename for e in entries}
    if "pyproject.toml" not in names:
        return "it has no pyproject.toml"
    try:
        config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        app = config["tool"]["flwr"]["app"]
        clientapp = app["components"]["clientapp"]
    except (KeyError, TypeError, ValueError, UnicodeDecodeError):
        return "its pyproject.toml names no ClientApp ([tool.flwr.app.components] clientapp)"
    if clientapp != CLIENT_APP:
        return f"its ClientApp is {clientapp!r}, not fedrisk's {CLIENT_APP!r}"
    if app.get("publisher") != PUBLISHER:
        return f"its publisher is {app.get('publisher')!r}, not {PUBLISHER!r}"
    root = _installed_root()
    for entry in sorted(entries, key=lambda e: e.filename):
        name = entry.filename
        path = PurePosixPath(name)
        if name == "pyproject.toml" or path.parts[0] == ".info":
            continue  # Flower's own manifest of the files' hashes
        if name.startswith("/") or "\\" in name or ".." in path.parts:
            return f"it has a file outside the package: {name!r}"
        if path.suffix in _DOCUMENTS or path.name.startswith("LICENSE"):
            continue
        if path.parts[0] != "fedrisk" or len(path.parts) < 2:
            return f"it carries code that is not part of the installed fedrisk: {name}"
        installed = root.joinpath(*path.parts[1:])
        try:
            same = installed.resolve().is_relative_to(root) and installed.read_bytes() == archive.read(entry)
        except OSError:
            return f"it carries {name}, which the installed fedrisk does not have"
        if not same:
            return f"its {name} differs from the installed fedrisk's"
    return None


def check_app_package(content: bytes, *, fab_hash: str | None = None, fab_id: str = "", fab_version: str = "") -> None:
    """Refuse (:class:`ForeignAppError`, one line) an app package that is not fedrisk's ClientApp.

    Accepted: a FAB whose ClientApp component is :data:`CLIENT_APP`, published by
    ``fedrisk``, whose other files are documentation or byte-identical copies of
    the installed fedrisk package's files. Nothing in it is extracted or run.
    """
    problem = _problem(content, fab_hash)
    if problem is not None:
        name = f"{fab_id} {fab_version}".strip() or "(unnamed)"
        digest = (fab_hash or hashlib.sha256(content).hexdigest())[:16]
        raise ForeignAppError(f"refused the run's app package {name} (sha256 {digest}): {problem}; a fedrisk party runs only the installed fedrisk ClientApp")


class InProcessRuntimeClient:
    """Flower's SuperNode Runtime API, called in this process instead of over HTTP.

    The warm executor runs in the SuperNode process, next to the SuperNode's
    ``NodeState``. Over the Runtime HTTP API each message cost it about twenty
    loopback HTTP requests (acquire the task, pull its input, the message and
    each of its objects, confirm, push the reply and each of its objects, push
    the task's output) plus an ``AcquireTask`` request every 10 ms while idle,
    each one a FastAPI request in this same process competing for the GIL
    (measured: 0.14-0.9 s per ``pull_task_input`` on the shared 2-core box).
    This client has the same method names as Flower's ``RuntimeHttpClient`` and
    calls the very handlers the HTTP routes call
    (``flwr.supernode.servicer.runtime.runtime_handlers``, and the task
    authentication the routes apply: a request is refused unless ``token``
    names a claimed task), so ``pull_task_input``, ``push_message`` and
    ``push_task_output`` of ``flwr.supernode.runtime.run_clientapp`` run
    unchanged. Nothing leaves the process.
    """

    def __init__(self, state, token: str = "") -> None:
        self.state = state
        self.token = token

    def _task(self):
        from flwr.supercore.error import ApiErrorCode, FlowerError

        task = self.state.get_task_by_token(self.token) if self.token else None
        if task is None:
            raise FlowerError(ApiErrorCode.RUNTIME_AUTHENTICATION_FAILED, "Runtime task-token authentication failed.")
        return task

    @staticmethod
    def _handlers():
        from flwr.supernode.servicer.runtime import runtime_handlers

        return runtime_handlers

    def AcquireTask(self, request):  # noqa: N802 - Flower's RPC names
        return self._handlers().acquire_task(request, self.state)

    def PullTaskInput(self, request):  # noqa: N802
        return self._handlers().pull_task_input(request, self.state, self._task())

    def PullMessages(self, request):  # noqa: N802
        return self._handlers().pull_messages(request, self.state, self._task())

    def PullObject(self, request):  # noqa: N802
        return self._handlers().pull_object(request, self.state, self._task())

    def ConfirmMessageReceived(self, request):  # noqa: N802
        return self._handlers().confirm_message_received(request, self.state, self._task())

    def PushMessages(self, request):  # noqa: N802
        return self._handlers().push_messages(request, self.state, self._task())

    def PushObject(self, request):  # noqa: N802
        return self._handlers().push_object(request, self.state, self._task())

    def PushTaskOutput(self, request):  # noqa: N802
        return self._handlers().push_task_output(request, self.state, self._task())

    def SendTaskHeartbeat(self, request):  # noqa: N802
        from flwr.supercore.servicer.runtime import runtime_handlers as core

        return core.send_task_heartbeat(request, self.state, self._task())

    def close(self) -> None:
        pass


class TaskBeats(threading.Thread):
    """One long-lived thread that keeps the running in-process task's token alive.

    Flower's ``HeartbeatSender`` is a new thread per task that beats at once and
    then every ~20 s; for a warm task of a few milliseconds that thread's start,
    first beat and join were a millisecond of every message. The token is fresh
    when the task is claimed, so here one thread beats for whichever task is
    running, at Flower's cadence (:data:`INTERVAL` after the task started, then
    every :data:`INTERVAL`).
    """

    #: Flower's heartbeat cadence: (30 s interval - 5 s call timeout) x 0.8.
    INTERVAL = 20.0

    def __init__(self) -> None:
        super().__init__(name="fedrisk-task-heartbeat", daemon=True)
        self._cond = threading.Condition()
        self._beat = None
        self._since = 0.0

    def sender(self, beat) -> _BeatHandle:
        """A handle with ``HeartbeatSender``'s ``start``/``stop``/``is_running`` for one task's ``beat``."""
        return _BeatHandle(self, beat)

    def _begin(self, beat) -> None:
        with self._cond:
            self._beat, self._since = beat, time.monotonic()
            self._cond.notify()

    def _end(self, beat) -> None:
        with self._cond:
            if self._beat is beat:
                self._beat = None

    def run(self) -> None:  # pragma: no cover - beats only for tasks longer than INTERVAL
        while True:
            with self._cond:
                while self._beat is None:
                    self._cond.wait()
                remaining = self._since + self.INTERVAL - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                beat, self._since = self._beat, time.monotonic()
            beat()


class _BeatHandle:
    def __init__(self, beats: TaskBeats, beat) -> None:
        self._beats, self._beat, self._running = beats, beat, False

    def start(self) -> None:
        self._running = True
        self._beats._begin(self._beat)

    def stop(self) -> None:
        self._running = False
        self._beats._end(self._beat)

    @property
    def is_running(self) -> bool:
        return self._running


class WarmClientAppExecutor(threading.Thread):
    """Acquire ClientApp tasks from a SuperNode's Runtime API and run them in this process.

    Parameters
    ----------
    runtime_api_address : str
        ``HOST:PORT`` of the SuperNode's Runtime API (``--host``/``--port``; loopback).
    state : callable, optional
        Returns the SuperNode's ``NodeState`` once it exists (``None`` before).
        Given, tasks are taken and run through :class:`InProcessRuntimeClient`
        (no HTTP); otherwise over the Runtime HTTP API at ``runtime_api_address``.
    """

    def __init__(self, runtime_api_address: str, state=None) -> None:
        super().__init__(name="fedrisk-warm-clientapp", daemon=True)
        self.runtime_api_address = runtime_api_address
        self.state_provider = state
        self.stop_event = threading.Event()
        #: Set when a message may be waiting (the SuperNode stored one); polled every IDLE_WAIT_SECONDS anyway.
        self.wakeup = threading.Event()
        self._apps: dict[str, object] = {}
        self.tasks_run = 0
        #: ClientApp tasks the SuperNode created since the last look (claimed by id, oldest first).
        self._created: collections.deque[int] = collections.deque()
        self._beats: TaskBeats | None = None
        #: When the last full ``AcquireTask`` scan was made (in process).
        self._last_scan = float("-inf")
        #: Full scans made (diagnostics and tests).
        self.scans = 0
        #: Called once a task's reply is in the SuperNode's state (the SuperNode loop then sends it at once).
        self.on_reply = None

    def notify(self) -> None:
        """A message was stored for this node: look for its task now."""
        self.wakeup.set()

    def _acquire_client(self):
        """A Runtime API client for acquiring tasks (in-process when the SuperNode's state is known)."""
        if self.state_provider is not None:
            state = self.state_provider()
            if state is None:
                return None
            self._watch_created_tasks(state)
            return InProcessRuntimeClient(state)
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def _watch_created_tasks(self, state) -> None:
        """Note the id of each ClientApp task the SuperNode creates (Flower's ``create_task``), once."""
        from flwr.supercore.constant import TaskType

        flower_create = getattr(state, "create_task", None)
        if flower_create is None or getattr(flower_create, "_fedrisk", False):
            return

        def create_task(*args, **kwargs):
            task_id = flower_create(*args, **kwargs)
            task_type = kwargs.get("task_type", args[0] if args else None)
            if task_id is not None and task_type == TaskType.CLIENT_APP:
                self._created.append(task_id)  # claimed once the SuperNode has the message whole (notify)
            return task_id

        create_task._fedrisk = True  # type: ignore[attr-defined]
        state.create_task = create_task

    def _claim_created(self, client):
        """Flower's ``ClaimTask`` for the oldest task noted by :meth:`_watch_created_tasks`: a token or ``None``."""
        from flwr.proto.runtime_pb2 import ClaimTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.servicer.runtime import runtime_handlers as core

        while self._created:
            token = core.claim_task(ClaimTaskRequest(task_id=self._created.popleft()), client.state).token
            if token:
                return token
        return None

    def run(self) -> None:  # pragma: no cover - exercised by the end-to-end tests
        client = None
        while not self.stop_event.is_set():
            try:
                if client is None:
                    client = self._acquire_client()
                    if client is None:  # the SuperNode has not made its state yet
                        time.sleep(0.05)
                        continue
                token = self._next_task(client)
            except Exception as err:  # the Runtime API is not up yet, or restarting
                log.debug("acquire task: %s", err)
                time.sleep(0.2)
                continue
            if token:
                self._run_task(token)
                self.tasks_run += 1

    def _next_task(self, client) -> str | None:
        """The token of a task to run now, or ``None`` after waiting a little for one.

        In process: a task the SuperNode announced is claimed by id; only when
        none is, and no full scan was made for :data:`IDLE_WAIT_SECONDS`, is the
        node's whole task list scanned (``AcquireTask``), for a task created
        unannounced; otherwise wait for the next announcement, at most until the
        next scan is due. Over HTTP: one ``AcquireTask``, then a short sleep.
        """
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.constant import TaskType

        in_process = isinstance(client, InProcessRuntimeClient)
        if in_process:
            self.wakeup.clear()
            token = self._claim_created(client)
            if token:
                return token
            due = self._last_scan + IDLE_WAIT_SECONDS - time.monotonic()
            if due > 0:
                self.wakeup.wait(due)
                return None
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]))
        if in_process:
            self._last_scan = time.monotonic()
            self.scans += 1
        if res.HasField("task") and res.token:
            return res.token
        if in_process:
            self.wakeup.wait(IDLE_WAIT_SECONDS)
        else:
            time.sleep(POLL_SECONDS)
        return None

    def _client_app(self, run, fab):
        """The installed fedrisk ClientApp, once the run's app package is checked to be fedrisk's."""
        key = fab.hash_str
        app = self._apps.get(key)
        if app is None:
            check_app_package(fab.content, fab_hash=fab.hash_str, fab_id=run.fab_id, fab_version=run.fab_version)
            from fedrisk.parties.client_app import app as installed  # the installed package, never the FAB

            app = installed
            self._apps = {key: app}  # one run's app at a time
        return app

    def _task_client(self, token: str):
        """The Runtime API client of one task, and the heartbeat that keeps its token alive."""
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http

        if self.state_provider is not None:
            client = InProcessRuntimeClient(self.state_provider(), token)

            def beat() -> bool:
                # A stale token fails this task (its clean-up reports it), never the SuperNode process.
                from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module

                try:
                    client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
                except Exception:  # noqa: BLE001
                    pass
                return True

            if self._beats is None:
                self._beats = TaskBeats()
                self._beats.start()
            return client, self._beats.sender(beat)
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        http_client = RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        return http_client, HeartbeatSender(make_task_heartbeat_fn_http(http_client))

    def _run_task(self, token: str) -> None:  # pragma: no cover - exercised by the end-to-end tests
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client, heartbeat = self._task_client(token)
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            app = self._client_app(run, fab)
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # reported to the SuperNode as Flower's own executor does
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            if isinstance(ex, ForeignAppError):
                reason = str(ex)
                log.error("%s", ex)
            else:
                log.error("ClientApp raised an exception: %s", str(ex).splitlines()[0] if str(ex) else type(ex).__name__)
            details = reason
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001
                log.error("failed to push the reply: %s", ex)
            if self.on_reply is not None:
                self.on_reply()
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.wakeup.set()
