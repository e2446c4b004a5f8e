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

Why this is safe here: Flower isolates ClientApps because a SuperNode may run
apps it does not trust; a fedrisk node runs only fedrisk's own ClientApp (a
thin relay to the party's process, with the ledger mod), installed with the
package. The executor runs one task at a time, as the subprocess executor's
ClientApp would see it, and a task that raises is reported to the SuperNode as
failed with the exception's reason, as ``flwr-clientapp`` does.

It relies on Flower's Runtime API client and the helpers of
``flwr.supernode.runtime.run_clientapp`` (pinned ``flwr>=1.39,<1.40``).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("fedrisk.warm_executor")

POLL_SECONDS = 0.01


class WarmClientAppExecutor(threading.Thread):
    """Acquire ClientApp tasks from a SuperNode's Runtime API and run them in this process.

    Parameters
    ----------
    runtime_api_address : str
        ``HOST:PORT`` of the SuperNode's Runtime API (``--host``/``--port``; loopback).
    """

    def __init__(self, runtime_api_address: str) -> None:
        super().__init__(name="fedrisk-warm-clientapp", daemon=True)
        self.runtime_api_address = runtime_api_address
        self.stop_event = threading.Event()
        self._apps: dict[str, object] = {}
        self.tasks_run = 0

    def run(self) -> None:  # pragma: no cover - exercised by the end-to-end tests
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        client = None
        while not self.stop_event.is_set():
            try:
                if client is None:
                    client = RuntimeHttpClient.from_server_address(
                        server_address=self.runtime_api_address,
                        insecure=True,
                        root_certificates=None,
                        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
                        retry_invoker=make_simple_http_retry_invoker(),
                    )
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]))
            except Exception as err:  # the Runtime API is not up yet, or restarting
                log.debug("acquire task: %s", err)
                time.sleep(0.2)
                continue
            if res.HasField("task") and res.token:
                self._run_task(res.token)
                self.tasks_run += 1
            else:
                time.sleep(POLL_SECONDS)

    def _client_app(self, run, fab):
        """Install the run's FAB once and keep its loaded ClientApp."""
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        key = fab.hash_str
        app = self._apps.get(key)
        if app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = load(run.fab_id, run.fab_version, fab.hash_str)
            self._apps = {key: app}  # one run's app at a time
        return app

    def _run_task(self, token: str) -> None:  # pragma: no cover - exercised by the end-to-end tests
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            app = self._client_app(run, fab)
            reply = app(message=message, context=context)  # type: ignore[operator]
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # reported to the SuperNode as Flower's own executor does
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
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
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()

    def stop(self) -> None:
        self.stop_event.set()
