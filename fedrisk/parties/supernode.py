"""Run Flower's SuperNode with a short idle poll.

Flower 1.39's SuperNode sleeps 3 s whenever a pull from the SuperLink finds
no message.  Vertical protocols exchange several messages per epoch, so that
idle sleep, not computation, would dominate an epoch.  This entry point runs
the unmodified ``flower-supernode`` with its idle waits capped at
:data:`IDLE_POLL_SECONDS` (a pull every 100 ms per node on a TLS channel
that is already open); everything else is Flower's own code and flags.
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


def main(argv: list[str] | None = None) -> int:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = _ShortSleepTime()  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    result = flower_supernode()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
