"""The coordinator's status file: what ``fedrisk status`` shows about a running federation.

The coordinator (re)writes ``<run-dir>/coordinator/status.json`` atomically
whenever something changes — a party connects, answers for the first time,
fails or comes back, a round completes, the run pauses waiting for a party or
resumes after a restart — and at least every :data:`HEARTBEAT_SECONDS` while
it waits, so a status older than :data:`STALE_SECONDS` means the coordinator
itself is gone. A change of nothing but a party's ``last_seen`` (it answered
again, as it does at every exchange) is written at most every
:data:`REFRESH_SECONDS` — with the next write, or by the next heartbeat once
that long has passed — not per message (each write is an fsync'd file and
folder)::

    {"format": "fedrisk-status/1", "run_id": ..., "state": "running",
     "protocol": "fedavg", "round": 3, "rounds": 5, "step": "fedavg.train",
     "attempt": 2, "resumed_from": 2, "waiting_for": {"bank_b": "party process is not listening ..."},
     "parties": {"bank_a": {"state": "answered", "role": "bank", "last_seen": ..., "last_error": null}, ...},
     "last_error": null, "events": [...], "updated_at": ..., "pid": 1234}

States: ``starting``, ``discovering``, ``running``, ``paused`` (waiting for a
party to come back), ``finished``, ``failed``. Only names, counts, steps and
one-line reasons are written — never data, keys or payloads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any

from fedrisk.crypto.keyfiles import write_public_file

FORMAT = "fedrisk-status/1"
STATUS_FILE = "status.json"
#: The coordinator rewrites its status at least this often while it waits.
HEARTBEAT_SECONDS = 5.0
#: A party's ``last_seen`` alone is rewritten at most this often.
REFRESH_SECONDS = 1.0
#: A running status not updated for this long means the coordinator is gone.
STALE_SECONDS = 30.0
MAX_EVENTS = 30


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def status_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run's coordinator writes its status."""
    return Path(run_dir) / "coordinator" / STATUS_FILE


class RunStatus:
    """Writer of one run's ``status.json`` (a no-op when ``path`` is ``None``).

    A restarted coordinator continues the same file: the attempt counter goes
    up, parties and events are kept.
    """

    def __init__(self, path: str | os.PathLike[str] | None, run_id: str) -> None:
        self.path = Path(path) if path is not None else None
        self._last_write = 0.0
        #: A ``last_seen`` refresh not written yet.
        self._refresh_pending = False
        previous = read_status_file(self.path) if self.path is not None else None
        if previous and previous.get("run_id") == run_id:
            self.data: dict[str, Any] = previous
            self.data["attempt"] = int(previous.get("attempt", 1)) + 1
        else:
            self.data = {"format": FORMAT, "run_id": run_id, "attempt": 1, "parties": {}, "events": []}
        self.data.update(state="starting", pid=os.getpid(), last_error=None, waiting_for={})
        self.event(f"coordinator attempt {self.data['attempt']} started")

    # -- changes ------------------------------------------------------------
    def set(self, **fields: Any) -> None:
        """Update top-level fields and write."""
        self.data.update(fields)
        self.write()

    def event(self, message: str) -> None:
        events = self.data.setdefault("events", [])
        events.append({"at": _now(), "message": message})
        del events[:-MAX_EVENTS]
        self.write()

    def party(self, name: str, state: str, *, error: str | None = None, **fields: Any) -> None:
        entry = self.data.setdefault("parties", {}).setdefault(name, {})
        before = {k: v for k, v in entry.items() if k != "last_seen"}
        entry.update(fields)
        entry["state"] = state
        if state in ("answered", "connected"):
            entry["last_seen"] = _now()
        if error is not None:
            entry["last_error"] = error
            entry["last_error_at"] = _now()
        if {k: v for k, v in entry.items() if k != "last_seen"} == before:
            self._refresh_pending = True  # only last_seen moved: written soon, not per message
            self.heartbeat()
            return
        self.write()

    def paused(self, waiting: dict[str, str]) -> None:
        """The run waits for ``waiting`` (party -> one-line reason) to come back."""
        new = set(waiting) - set(self.data.get("waiting_for", {}))
        self.data.update(state="paused", waiting_for=dict(waiting))
        for name in sorted(new):
            self.event(f"paused: waiting for {name} ({waiting[name]})")
        self.write()

    def running(self) -> None:
        if self.data.get("state") == "paused":
            self.data["waiting_for"] = {}
            self.event("resumed: every party answered")
        self.data["state"] = "running"
        self.write()

    def failed(self, error: str) -> None:
        self.data.update(state="failed", last_error=error)
        self.event(f"failed: {error}")

    def heartbeat(self) -> None:
        """Rewrite the status if it has not been written for a while (shows the coordinator is alive),
        or if a ``last_seen`` refresh waits and :data:`REFRESH_SECONDS` have passed."""
        elapsed = time.monotonic() - self._last_write
        if elapsed >= HEARTBEAT_SECONDS or (self._refresh_pending and elapsed >= REFRESH_SECONDS):
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.data["updated_at"] = _now()
        self._refresh_pending = False
        try:
            write_public_file(self.path, (json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n").encode())
        except OSError:
            return  # status is best effort: never fail a run over it
        self._last_write = time.monotonic()


def read_status_file(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's status, with ``stale_seconds`` added when a live state has not been updated lately."""
    data = read_status_file(status_path(run_dir))
    if data is None:
        return None
    try:
        age = (_dt.datetime.now(_dt.UTC) - _dt.datetime.fromisoformat(str(data["updated_at"]))).total_seconds()
    except (KeyError, ValueError):
        age = 0.0
    data["age_seconds"] = round(age, 1)
    data["stale"] = data.get("state") in ("starting", "discovering", "running", "paused") and age > STALE_SECONDS
    return data


def describe(data: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``fedrisk status``."""
    state = str(data.get("state", "?"))
    progress = ""
    if data.get("round") is not None:
        progress = f", {data.get('unit', 'round')} {data['round']}" + (f"/{data['rounds']}" if data.get("rounds") else "")
    lines = [
        f"run {data.get('run_id')}: {state}{progress}"
        f" ({data.get('protocol', '?')}, coordinator attempt {data.get('attempt', 1)}"
        + (f", resumed from {data.get('unit', 'round')} {data['resumed_from']}" if data.get("resumed_from") is not None else "")
        + ")"
    ]
    if data.get("stale"):
        lines.append(
            f"warning: no update for {data['age_seconds']:.0f} s: the coordinator is not running "
            "(restart the run with the same run id to resume from its checkpoint)"
        )
    for name, reason in sorted(data.get("waiting_for", {}).items()):
        lines.append(f"waiting for {name}: {reason}")
    parties = data.get("parties", {})
    if parties:
        lines.append(f"parties ({sum(1 for p in parties.values() if p.get('state') != 'failed')}/{len(parties)} connected):")
        for name, entry in sorted(parties.items()):
            error = f"  last error: {entry['last_error']}" if entry.get("last_error") else ""
            lines.append(f"  {name:<16} {entry.get('role', ''):<15} {entry.get('state', '?'):<9} last seen {entry.get('last_seen', '-')}{error}")
    if data.get("last_error"):
        lines.append(f"last error: {data['last_error']}")
    return lines
