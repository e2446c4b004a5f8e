"""Run Flower's SuperNode with a short idle poll and the fedrisk ClientApp kept warm.

Flower 1.39's SuperNode sleeps 3 s whenever a pull from the SuperLink finds
no message.  Vertical protocols exchange several messages per epoch, so that
idle sleep, not computation, would dominate an epoch.  This entry point runs
the unmodified ``flower-supernode`` with its idle waits capped at
:data:`IDLE_POLL_SECONDS` (a pull every 100 ms per node on a TLS channel
that is already open).

It also runs the SuperNode in Flower's ``process`` isolation with the
ClientApp tasks executed by :class:`~fedrisk.parties.warm_executor.WarmClientAppExecutor`
in this process, instead of a fresh ``flwr-clientapp`` process per message
(``--isolation subprocess`` on the command line restores Flower's default).
Everything else is Flower's own code and flags.
"""

from __future__ import annotations

import sys
import time as _time

IDLE_POLL_SECONDS = 0.1


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
    start_client_internal.time = _ShortSleepTime()  # type: ignore[assignment]
    shorten_object_pull_backoff()
    if _option(args, "--isolation", "") in ("", "process"):
        from fedrisk.parties.warm_executor import WarmClientAppExecutor

        if "--isolation" not in args:
            args += ["--isolation", "process"]
        runtime = f"{_option(args, '--host', '127.0.0.1')}:{_option(args, '--port', '9094')}"
        WarmClientAppExecutor(runtime).start()
    sys.argv = ["flower-supernode", *args]
    result = flower_supernode()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
