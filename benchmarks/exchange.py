"""Benchmark: one coordinator -> party -> coordinator exchange on the Deployment Engine.

Deploys a real federation on loopback (:class:`fedrisk.federation.local.LocalFederation`):
Flower's SuperLink (through fedrisk's entry point, :mod:`fedrisk.federation.superlink`)
with TLS and SuperNode authentication, three parties each with
its warm party process and fedrisk's SuperNode, every ledger on (the coordinator's
``LedgeredGrid`` and each party's ledger mod). The fedrisk ServerApp runs in
``echo`` mode (:func:`fedrisk.federation.server_app.run_echo`): one *exchange*
sends the same public payload to all three parties at once and waits for the three
echoes, as a protocol step does (through ServerApp -> SuperLink -> SuperNode ->
warm ClientApp + ledger mod -> the party's warm process over its Unix socket, and
back), each echo checked byte for byte.

The reference, measured in the same run: the same ServerApp code and ClientApp
(ledger mod included) over :class:`fedrisk.federation.inprocess.InProcessGrid`,
i.e. the exchange without any transport.

Prints one JSON object (the last stdout line): ``p50_ms``, ``p99_ms``,
``exchanges`` and ``mb_per_s`` for the small (1 KB) payload, ``sizes`` with the
same keys for 1 KB, 1 MB and 10 MB, ``inprocess`` (the reference figures per size),
``goal_p50_ms`` / ``goal_p99_ms`` and the conditions. ``mb_per_s`` counts payload
bytes that crossed the wire both ways (to and from every party) per second of
exchange. ``--quick`` runs fewer exchanges. ``cpu_ms_per_exchange`` is the CPU
each process spent per exchange: the SuperLink and its SuperExec on their own,
the coordinator (``flwr-serverapp``) for its timed loop, the SuperNodes and the
party processes with their children. ``--flower-superlink`` runs the same with
a SuperLink that serves Flower's own per-object calls on Flower's SQLite state
(how it ran before fedrisk's SuperLink extension), for comparison.

Usage::

    python benchmarks/exchange.py [--quick] [--small N] [--medium N] [--large N] [--parties 3] [--flower-superlink]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = (1024, 1024 * 1024, 10 * 1024 * 1024)
GOAL_P50_MS, GOAL_P99_MS = 30.0, 100.0
PARTY_NAMES = ("bank", "tax_bureau", "platform")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100.0 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(size: int, parties: int, latencies_ms: list[float]) -> dict:
    total_s = sum(latencies_ms) / 1000.0
    moved = 2 * parties * size * len(latencies_ms)  # to every party and back
    return {
        "bytes": size,
        "exchanges": len(latencies_ms),
        "p50_ms": round(_percentile(latencies_ms, 50), 2),
        "p99_ms": round(_percentile(latencies_ms, 99), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2) if latencies_ms else None,
        "max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
        "mb_per_s": round(moved / 1e6 / total_s, 2) if total_s > 0 else None,
    }


def parties(root: Path, n: int) -> list:
    """``n`` feature-holder parties with a two-row table each (an echo reads no table)."""
    from fedrisk.parties.settings import PartySettings

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PARTY_NAMES[:n] if n <= len(PARTY_NAMES) else [f"party_{i}" for i in range(n)]:
        table = root / f"{name}.csv"
        table.write_text("id,x\na,1\nb,2\n")
        out.append(
            PartySettings(
                name=name,
                role="feature_holder",
                data=str(table),
                schema={"id_column": "id"},
                state_dir=str(root / "run" / "parties" / name),
            )
        )
    return out


def echo_config(counts: list[int], warmup: int, sizes: tuple[int, ...] = SIZES) -> dict:
    return {
        "mode": "echo",
        "echo-sizes": ",".join(str(s) for s in sizes),
        "echo-counts": ",".join(str(c) for c in counts),
        "echo-warmup": warmup,
        "party-timeout": 120.0,
    }


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process (and of its waited-for children), from Linux /proc; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11 : 15 if children else 13]) / ticks  # utime, stime[, cutime, cstime]


def _cpu(federation) -> dict[str, float]:
    """CPU seconds so far per role. The SuperLink and its SuperExec count alone: the coordinator
    (``flwr-serverapp``, their child) reports its own CPU for the timed exchanges (``coordinator``)."""
    from fedrisk.federation.local import _cmdline, _descendants

    link = federation.superlink.popen.pid
    return {
        "superlink": _cpu_seconds(link, children=False),
        "superexec": sum(_cpu_seconds(p, children=False) for p in _descendants(link) if "flower-superexec" in _cmdline(p)),
        "supernodes": sum(_cpu_seconds(n.supernode_process.popen.pid) for n in federation.nodes),
        "party_processes": sum(_cpu_seconds(n.party_process.popen.pid) for n in federation.nodes),
    }


def _flower_superlink(federation_class):
    """``LocalFederation`` whose SuperLink serves Flower's calls only, on Flower's SQLite state (``--flower-superlink``).

    The same fedrisk entry point with ``--no-bundles`` and ``--database FILE``:
    fedrisk's SuperNode and ServerApp then fall back to Flower's per-object
    calls and short polls, as before fedrisk's SuperLink extension existed.
    """

    class FlowerSuperLinkFederation(federation_class):
        def _spawn(self, name, argv):
            if name == "superlink":
                argv = list(argv)
                at = argv.index("--node-registry")
                del argv[at : at + 2]
                argv[argv.index("--database") + 1] = str(self.run_dir / "flwr" / "superlink.db")
                argv.append("--no-bundles")
            return super()._spawn(name, argv)

    return FlowerSuperLinkFederation


def deployed(root: Path, n_parties: int, counts: list[int], warmup: int, *, flower_superlink: bool = False) -> tuple[list[dict], float]:
    """One run per payload size on one deployed federation, with the CPU every process spent on it.

    Two runs with no exchanges come first: one that pays the processes' one-time
    costs (imports, first connections), and one that measures what a run costs
    besides its exchanges (submission, discovery, app check, ledger close); the
    second is subtracted. What is left is divided by the exchanges (warm-up
    included); it can come out slightly negative for a process that spends
    almost nothing per exchange (the noise of the subtraction), and is reported as is.
    """
    from fedrisk.federation.local import LocalFederation

    if flower_superlink:
        LocalFederation = _flower_superlink(LocalFederation)  # noqa: N806
    settings = parties(root, n_parties)
    results = []
    started = time.perf_counter()
    with LocalFederation(root / "run", settings, echo_config([0], 0, (SIZES[0],)), log=lambda line: print(line, file=sys.stderr)) as federation:
        baseline = None
        for i, (size, count) in enumerate([(SIZES[0], 0), (SIZES[0], 0), *zip(SIZES, counts)]):
            config = {**echo_config([count], warmup if count else 0, (size,)), "fedrisk-run-id": f"bench-exchange-{i}-{size}-{count}"}
            before = _cpu(federation)
            result = federation.run(run_config=config, timeout=3600)
            after = _cpu(federation)
            cpu = {role: after[role] - before[role] for role in after}
            entry = dict(result["echo"][0])
            entry["cpu_s"] = cpu
            if i < 2:
                baseline = cpu
                continue
            n = count + entry.get("warmup", 0)
            per = {role: (cpu[role] - baseline[role]) / n * 1000 for role in cpu}
            per["coordinator"] = entry.get("coordinator_cpu_s", 0.0) / n * 1000
            entry["cpu_ms_per_exchange"] = {k: round(v, 2) for k, v in per.items()}
            entry["cpu_ms_per_exchange"]["total"] = round(sum(per.values()), 2)
            results.append(entry)
    return results, time.perf_counter() - started


def in_process(root: Path, n_parties: int, counts: list[int], warmup: int) -> dict:
    """The same ServerApp echo loop and ClientApp (ledger mod included) with no transport."""
    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.server_app import _ledgered, run_echo
    from fedrisk.federation.session import CoordinatorSession

    settings = parties(root / "inprocess", n_parties)
    grid = _ledgered(InProcessGrid(settings), root / "inprocess" / "coordinator")
    session = CoordinatorSession(grid, "bench-exchange-inprocess", poll_interval=0.0)
    session.discover([p.name for p in settings], timeout=30)
    return run_echo(session, echo_config(counts, warmup))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 / 10 / 4 exchanges (default 300 / 30 / 10)")
    parser.add_argument("--small", type=int, default=None, help="exchanges with the 1 KB payload")
    parser.add_argument("--medium", type=int, default=None, help="exchanges with the 1 MB payload")
    parser.add_argument("--large", type=int, default=None, help="exchanges with the 10 MB payload")
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (logs, ledgers)")
    parser.add_argument(
        "--flower-superlink",
        action="store_true",
        help="for comparison: the SuperLink serves Flower's per-object calls only, on Flower's SQLite state",
    )
    args = parser.parse_args(argv)
    defaults = (60, 10, 4) if args.quick else (300, 30, 10)
    counts = [args.small or defaults[0], args.medium or defaults[1], args.large or defaults[2]]

    started = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="fedrisk-bench-exchange-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        echoes, deployed_s = deployed(root, args.parties, counts, args.warmup, flower_superlink=args.flower_superlink)
        reference = in_process(root, args.parties, counts, args.warmup)

    sizes = {str(e["bytes"]): {**summarise(e["bytes"], e["parties"], e["latencies_ms"]), "cpu_ms_per_exchange": e["cpu_ms_per_exchange"]} for e in echoes}
    ref = {str(e["bytes"]): summarise(e["bytes"], e["parties"], e["latencies_ms"]) for e in reference["echo"]}
    small = sizes[str(SIZES[0])]
    out = {
        "p50_ms": small["p50_ms"],
        "p99_ms": small["p99_ms"],
        "exchanges": small["exchanges"],
        "mb_per_s": small["mb_per_s"],
        "sizes": sizes,
        "inprocess": ref,
        "inprocess_p50_ms": ref[str(SIZES[0])]["p50_ms"],
        "ratio_p50_vs_inprocess": round(small["p50_ms"] / ref[str(SIZES[0])]["p50_ms"], 2) if ref[str(SIZES[0])]["p50_ms"] else None,
        # CPU every process of the federation spent per small exchange: unlike latency it does not
        # depend on what else runs on the machine; total / cores bounds the exchange rate from below.
        "cpu_ms_per_exchange": small["cpu_ms_per_exchange"],
        "goal_p50_ms": GOAL_P50_MS,
        "goal_p99_ms": GOAL_P99_MS,
        "parties": args.parties,
        "transport": "Flower 1.39 Deployment Engine, gRPC+TLS on loopback, node auth, ledgers on",
        "superlink": (
            "fedrisk entry point serving Flower's calls only, SQLite state (--flower-superlink)"
            if args.flower_superlink
            else "fedrisk entry point: bundled long-poll calls, in-memory state, node registry"
        ),
        "deployed_seconds": round(deployed_s, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
        "load_average": round(os.getloadavg()[0], 2),
        # 1, 5 and 15-minute load averages of this (shared) machine before and after the run.
        "load_averages": {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()]},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
