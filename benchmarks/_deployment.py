"""Shared by the benchmarks' ``--deployment`` mode: the same job over Flower's Deployment Engine.

A benchmark that measures a protocol in one process (``benchmarks/secureboost.py``,
``benchmarks/vertical_lr.py``) can run the same job the way users run it:
:class:`fedrisk.federation.local.LocalFederation` — what ``fedrisk train`` and
``fedrisk demo`` start — with a Flower SuperLink and one SuperNode plus one warm
party process per party on 127.0.0.1 (ports picked free), TLS on the Fleet and
Control APIs, SuperNode authentication, every ledger on, and the run submitted
with ``flwr run``. Each party reads its table from a file in a temporary folder
(CSV or Parquet, as :func:`fedrisk.data.table.load_party_table` reads them);
the folder, the processes and the run folder are removed when the run ends,
also when it fails or the benchmark is interrupted (Ctrl-C, SIGTERM, SIGHUP).

:func:`exchange_timing` reads where the time of a protocol went from the run's
ledgers: the coordinator's ledger stamps each request before it is pushed and
each reply after it is pulled, a party's ledger stamps a request when its
ClientApp receives it and the reply when it leaves. Per exchange, the round
trip seen by the coordinator minus the longest time a party held the message
is what Flower's transport (SuperLink, SuperNode pulls, object push/pull,
a fresh ``flwr-clientapp`` process) cost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

#: What every deployed figure was measured over.
TRANSPORT = "Flower 1.39 Deployment Engine: SuperLink + SuperNodes on 127.0.0.1, gRPC+TLS, node authentication, ledgers on"


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception while inside, so ``with`` blocks stop servers and remove folders."""

    def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise SystemExit(128 + signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, _raise)
        except (ValueError, OSError):  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A private temporary folder, removed afterwards whatever happened."""
    with cleanup_on_signals(), tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        os.chmod(root, 0o700)
        yield root


def schema(features: list[str], *, label: str | None = None, id_column: str = "id") -> dict:
    """A party table's schema (as :class:`fedrisk.data.table.TableSchema` reads it): float features, opaque IDs."""
    out: dict[str, Any] = {"id_column": id_column, "features": {f: "float" for f in features}, "id_format": "opaque"}
    if label is not None:
        out["label_column"] = label
    return out


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write a party's table (``id`` as a column) as CSV or Parquet, by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@dataclass
class DeployedRun:
    """What one deployed run left: the coordinator's result, and figures read from its ledgers."""

    result: dict
    run_dir: Path
    run_id: str
    seconds_start: float
    seconds_run: float
    keys: list[bytes] = field(default_factory=list)
    bundles: dict[str, Path] = field(default_factory=dict)


def run_deployed(root: Path, parties: list, config: dict, *, run_id: str, timeout: float = 7200.0, inspect=None) -> tuple[DeployedRun, Any]:
    """Start a local federation (TLS, node auth) under ``root``, run ``config`` once, stop it.

    ``inspect(run)`` is called while the run folder still exists (bundles, ledgers)
    and its return value is handed back with the run.
    """
    from fedrisk.federation.local import LocalFederation

    run_dir = root / "run"
    config = {**config, "fedrisk-run-id": run_id}
    t0 = time.perf_counter()
    with LocalFederation(run_dir, parties, config, tls=True, node_auth=True, log=_log) as federation:
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            result = federation.run(timeout=timeout)
        except BaseException:
            # Stopping the SuperLink leaves its flwr-serverapp child to notice on its own; do not wait for that.
            federation.kill_coordinator()
            raise
        ran = time.perf_counter() - t1
    trusted = run_dir / "coordinator" / "signing_keys.json"
    keys = [bytes.fromhex(k) for k in json.loads(trusted.read_text()).values()]
    run = DeployedRun(result, run_dir, run_id, started, ran, keys, {p: Path(b) for p, b in result.get("bundles", {}).items()})
    return run, (inspect(run) if inspect is not None else None)


def _entries(path: Path, run_id: str) -> list:
    from fedrisk.audit import read_ledger

    return [e for e in read_ledger(path).entries if e.run_id == run_id and e.kind == "exchange"]


def exchange_timing(run: DeployedRun, party_state_dirs: dict[str, Path], request_steps: tuple[str, ...]) -> dict[str, Any]:
    """Exchanges of one protocol in a run and where their time went, from the run's ledgers.

    An exchange is one coordinator request step of ``request_steps`` at one round
    (sent to one or several parties at once) and its replies. Returns
    ``exchanges``, ``seconds`` (first request pushed → last reply pulled),
    ``seconds_in_parties`` (per exchange the longest a party held it: relay to
    its warm process, the protocol's work, its ledger), ``seconds_transport``
    (round trips minus that), ``seconds_coordinator`` (between exchanges: the
    coordinator's relay checks, sums and checkpoints), ``transport_ms_p50`` /
    ``transport_ms_max`` per exchange, ``bytes`` on the wire.
    """
    from fedrisk.audit.recorder import LEDGER_FILE

    coordinator = _entries(run.run_dir / "coordinator" / LEDGER_FILE, run.run_id)
    received_at = {e.message_id: e.timestamp_us for e in coordinator if e.direction == "received"}
    size_of = {e.message_id: e.size_bytes for e in coordinator}
    # A party's ledger: request received, then its reply sent (the ledger mod writes both around the call).
    held: dict[str, tuple[int, str, int]] = {}  # request id -> (µs held, reply id, reply µs)
    for party, state_dir in party_state_dirs.items():
        entries = _entries(Path(state_dir) / LEDGER_FILE, run.run_id)
        for i, e in enumerate(entries):
            if e.direction != "received":
                continue
            reply = next((r for r in entries[i + 1 :] if r.direction == "sent"), None)
            if reply is not None:
                held[e.message_id] = (reply.timestamp_us - e.timestamp_us, reply.message_id, reply.timestamp_us)
    groups: list[list] = []
    for e in coordinator:
        if e.direction != "sent" or e.step not in request_steps:
            continue
        if groups and (groups[-1][0].round, groups[-1][0].step) == (e.round, e.step) and e.receiver not in {g.receiver for g in groups[-1]}:
            groups[-1].append(e)
        else:
            groups.append([e])
    rtts, in_parties, transport, nbytes = [], [], [], 0
    by_step: dict[str, list[tuple[float, float]]] = {}
    first = last = None
    for group in groups:
        start = min(e.timestamp_us for e in group)
        ends, holds = [], []
        for e in group:
            nbytes += e.size_bytes
            if e.message_id not in held:
                continue
            us, reply_id, _ = held[e.message_id]
            holds.append(us)
            if reply_id in received_at:
                ends.append(received_at[reply_id])
                nbytes += size_of.get(reply_id, 0)
        if not ends or len(ends) != len(group):
            continue  # a reply missing from a ledger: leave the exchange out of the breakdown
        end = max(ends)
        first = start if first is None else min(first, start)
        last = end if last is None else max(last, end)
        rtts.append((end - start) / 1e6)
        in_parties.append(max(holds) / 1e6)
        transport.append((end - start - max(holds)) / 1e6)
        by_step.setdefault(group[0].step, []).append((max(holds) / 1e6, transport[-1]))
    if not rtts or first is None or last is None:
        return {"exchanges": len(groups)}
    span = (last - first) / 1e6
    return {
        "exchanges": len(groups),
        "exchanges_timed": len(rtts),
        "seconds": round(span, 3),
        "seconds_in_parties": round(sum(in_parties), 3),
        "seconds_transport": round(sum(transport), 3),
        "seconds_coordinator": round(span - sum(rtts), 3),
        "transport_ms_p50": round(1e3 * statistics.median(transport), 1),
        "transport_ms_max": round(1e3 * max(transport), 1),
        "round_trip_ms_p50": round(1e3 * statistics.median(rtts), 1),
        "bytes": int(nbytes),
        "by_step": {
            step: {
                "exchanges": len(pairs),
                "in_parties_ms_p50": round(1e3 * statistics.median(h for h, _ in pairs), 1),
                "transport_ms_p50": round(1e3 * statistics.median(t for _, t in pairs), 1),
            }
            for step, pairs in by_step.items()
        },
    }


_ANSWERED = re.compile(r"party (\S+): (\S+) answered in ([0-9.]+) s")


def handler_seconds(run: DeployedRun, message_types: tuple[str, ...]) -> dict[str, float]:
    """Per party, seconds its warm process spent in the protocol's handlers (its log's ``answered in`` lines).

    What a party held an exchange beyond this went to its ClientApp: a fresh
    ``flwr-clientapp`` process's pull of the message, the ledger mod, the relay.
    """
    out: dict[str, float] = {}
    for log_file in sorted((run.run_dir / "logs").glob("party-*.log")):
        for match in _ANSWERED.finditer(log_file.read_text(errors="replace")):
            party, message_type, seconds = match.groups()
            if message_type in message_types:
                out[party] = out.get(party, 0.0) + float(seconds)
    return {party: round(v, 3) for party, v in sorted(out.items())}
