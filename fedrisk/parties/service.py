"""A party's long-lived process: keeps its table and keys warm between messages.

Started by ``fedrisk node start`` (and by the local federation runner) next
to the party's SuperNode; the ClientApp relays every message here over a
Unix socket (:mod:`fedrisk.parties.relay`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from fedrisk.parties.relay import PartyRelayServer
from fedrisk.parties.registry import party_runtime
from fedrisk.parties.settings import PartySettings

log = logging.getLogger("fedrisk.party")


def serve(settings: PartySettings, socket_path: Path, ready_file: Path | None = None) -> None:
    """Serve relay requests until SIGTERM/SIGINT."""
    runtime = party_runtime(settings)
    _ = runtime.identity  # create keys before the first message arrives

    def on_error(err: BaseException) -> None:
        log.error("party %s: %s", settings.name, str(err).splitlines()[0] if str(err) else type(err).__name__)

    def handle(message_type, meta, content):
        started = time.perf_counter()
        reply = runtime.handle_encoded(message_type, meta, content)
        log.info("party %s: %s answered in %.3f s", settings.name, message_type, time.perf_counter() - started)
        return reply

    server = PartyRelayServer(socket_path, handle, on_error=on_error)
    stop = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if ready_file is not None:
        ready_file.write_text(str(socket_path))
    log.info("party %s (%s) listening on %s", settings.name, settings.role, socket_path)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        socket_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedrisk.parties.service", description=__doc__)
    parser.add_argument("--settings", required=True, type=Path, help="party settings JSON")
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket to listen on")
    parser.add_argument("--ready-file", type=Path, default=None, help="written once listening")
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help="log line format (default: $FEDRISK_LOG_FORMAT or text)")
    args = parser.parse_args(argv)
    from fedrisk.logs import configure_logging

    settings = PartySettings.read(args.settings)
    configure_logging(args.log_format, process_name=f"party-{settings.name}")
    serve(settings, args.socket, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
