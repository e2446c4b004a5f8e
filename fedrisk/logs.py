"""Structured logs: one JSON object per line for the long-running fedrisk processes.

``--log-format json`` on ``fedrisk node start`` (and ``FEDRISK_LOG_FORMAT=json``
in the environment, which the node passes to the party process and the
SuperNode it starts) makes every log line a JSON object::

    {"ts": "2026-05-01T09:30:00.123+00:00", "level": "INFO", "logger": "fedrisk.party",
     "message": "party bank: fedavg.train answered in 0.412 s", "process": "party-bank", "pid": 4242}

so a log shipper can index them without parsing text. Flower's own logger
(``flwr``) is switched to the same format in processes fedrisk starts. Log
lines never carry payloads, keys or rows: only names, steps, sizes, timings
and one-line reasons.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys

ENV = "FEDRISK_LOG_FORMAT"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object (``ts``, ``level``, ``logger``, ``message`` and extras)."""

    def __init__(self, process_name: str = "") -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage().strip(),
            "pid": record.process,
        }
        if self.process_name:
            out["process"] = self.process_name
        for key in ("party", "step", "round", "run_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["error"] = str(record.exc_info[1]).splitlines()[0] if record.exc_info[1] else ""
        return json.dumps(out, ensure_ascii=False, default=str)


def log_format(explicit: str | None = None) -> str:
    """The chosen format: ``explicit``, else ``$FEDRISK_LOG_FORMAT``, else ``text``."""
    value = (explicit or os.environ.get(ENV) or "text").lower()
    if value not in FORMATS:
        from fedrisk.errors import ConfigError

        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)}, got {value!r}")
    return value


def configure_logging(fmt: str | None = None, *, process_name: str = "", level: int = logging.INFO) -> str:
    """Set up the root logger on stderr (and Flower's ``flwr`` logger) in the chosen format.

    Returns
    -------
    str
        The format in effect (``text`` or ``json``).
    """
    chosen = log_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    if chosen == "json":
        handler.setFormatter(JsonFormatter(process_name))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call otherwise
    if chosen == "json":
        # Flower's console handler formats records itself (colours, prefixes): replace it.
        flwr = logging.getLogger("flwr")
        flwr_handler = logging.StreamHandler(sys.stderr)
        flwr_handler.setFormatter(JsonFormatter(process_name))
        flwr_handler.setLevel(level)
        flwr.handlers[:] = [flwr_handler]
        flwr.propagate = False
    return chosen


def json_line(message: str, *, level: str = "INFO", logger: str = "fedrisk", **fields: object) -> str:
    """One JSON log line for messages printed directly (CLI progress lines)."""
    out = {"ts": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"), "level": level, "logger": logger, "message": message, "pid": os.getpid()}
    out.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(out, ensure_ascii=False, default=str)
