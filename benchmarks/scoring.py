"""Benchmark: live credit decisions per second from the sandboxed scoring node, fanning out to two parties.

Builds a small trained federation (synthetic SMEs, the vertical scorecard trained
in-process over the encrypted protocol, signed bundles, a federation PKI), starts
the two party scoring services (tax bureau, platform) and the bank's scoring node
as real processes — each ``fedrisk score ...`` launcher with its sandboxed child,
TLS everywhere, mTLS to the parties — then drives the node from a **separate
process** at fixed concurrency for a fixed time. Every request is a full
decision: validation, bank features from the bank's table, fan-out to both
parties under the policy's deadline, policy, and (unless ``--estimate``) a
durable record in the application register (SQLite WAL, ``synchronous=FULL``:
an fsync per group commit, written by the launcher outside the sandbox).

The reference in the same run is the same decision computed offline
(in-process, no network): the node's PD must equal it (``max_abs_pd_error``).

Prints one JSON object (last stdout line): ``requests``, ``errors``, ``rps``,
``p50_ms``, ``p99_ms``, ``fanout_parties``, and for context ``concurrency``,
``seconds``, ``sandbox``, ``via``, ``recorded``, ``degraded`` (decisions missing
a party), ``node_p50_ms``/``node_p99_ms`` (time inside the node), per-party
fan-out counters (``fanout``: calls, mean batch size, streams opened, call
latency), the launcher's group commits (``register``: commits, records per
commit, commit time), CPU seconds per process (``server_cpu_s``;
``launcher_cpu_s`` is the part spent outside the sandbox on the doors and the
register), the driver's CPU, ``cpu_ms_per_decision`` (all of the benchmark's
processes) and the same split by process (``cpu_ms_per_decision_by_process``:
driver, each service inside its sandbox, each launcher), the CPU that *other*
processes on this shared machine used meanwhile (``other_processes_cpu_s``:
noise), ``max_abs_pd_error`` and the goal.

``--floor`` measures something else: what one bare Python gRPC round trip costs
here (TLS, uvloop, the node's server options, echo handlers, two processes) —
a unary call, and a message on a long-lived stream — as CPU ms per call on each
side (``unary``/``stream``: ``client_cpu_ms_per_call``,
``server_cpu_ms_per_call``). A decision needs one unary call from the loan
system plus one stream exchange per party per coalesced batch, so these are
the floor under ``cpu_ms_per_decision``.

Where the time goes (per-process CPU, py-spy on the sandboxed node): about
2 ms of CPU per decision across all processes with recording, on this 2-core
machine — which by itself caps the node near 1,000 decisions/s however many
requests are in flight. Split by process (quiet machine, concurrency 8): the
sandboxed node ~0.9 ms, its launcher ~0.35 ms (the doors ~0.2, the durable
register ~0.13 at ~2 records per commit), the two parties ~0.45 ms together
(their doors included), the driver ~0.3 ms. Of the node's share the decision
itself — validation, scoring, policy, reasons, the record — is ~0.08 ms of
Python; the rest is gRPC's C core and its asyncio glue (TLS, HTTP/2 framing,
the completion-queue poller thread waking the event loop for every
completion). ``--floor`` puts the bare transport at ~0.2 ms (client) + ~0.3 ms
(server) per unary call and ~0.15 + ~0.15 ms per stream message on this
machine: with one unary call, two party exchanges per batch of ~2, four door
hops and a group commit, a decision cannot cost much under ~1.2 ms of CPU
here, i.e. ≤ ~1,700 decisions/s on two otherwise idle cores.

Usage::

    python benchmarks/scoring.py [--quick] [--concurrency N] [--seconds S] [--sandbox auto|bwrap|namespaces|rlimits|none] [--estimate] [--via tcp|unix] [--api unary|batch]
    python benchmarks/scoring.py --floor [--concurrency N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _log(message: str) -> None:
    print(f"[scoring-bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- driver


async def _drive(address: str, ca: str, ids: list[str], concurrency: int, seconds: float, warmup: float, estimate: bool, api: str = "unary") -> dict:
    import grpc

    from fedrisk.scoring.transport import secure_channel
    from fedrisk.v1 import scoring_pb2 as pb

    channel = secure_channel(address, ca=ca, authority="localhost" if address.startswith("unix:") else None)
    call = channel.unary_unary(
        "/fedrisk.v1.ScoringService/Score", request_serializer=pb.Application.SerializeToString, response_deserializer=pb.Decision.FromString
    )  # type: ignore[union-attr]
    await asyncio.wait_for(channel.channel_ready(), 10)  # type: ignore[union-attr]
    rng = random.Random(7)
    requests = [pb.Application(sme_id=rng.choice(ids), declared_annual_revenue=rng.uniform(2e5, 5e6), estimate_only=estimate) for _ in range(4096)]
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}
    degraded = 0
    pds: dict[str, float] = {}
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds

    total = 0

    async def worker(k: int) -> None:
        nonlocal degraded, total
        i = k
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            req = requests[i % len(requests)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                d = await call(req, timeout=2.0)
                ok = True
            except grpc.aio.AioRpcError as err:
                ok = False
                code = err.code().name
            t1 = time.perf_counter()
            total += 1
            if t0 >= measure_from:
                if ok:
                    latencies.append(t1 - t0)
                    server_ms.append(d.latency_ms)
                    degraded += d.degraded
                    if not d.degraded:
                        pds[d.sme_id] = d.probability_of_default
                else:
                    errors[code] = errors.get(code, 0) + 1

    async def batch_stream() -> None:
        """``ScoreBatch``: one stream, at most ``concurrency`` applications in flight (decisions come back in order)."""
        nonlocal degraded, total
        stream = channel.stream_stream("/fedrisk.v1.ScoringService/ScoreBatch", request_serializer=pb.Application.SerializeToString,  # type: ignore[union-attr]
                                       response_deserializer=pb.Decision.FromString)()  # fmt: skip
        window = asyncio.Semaphore(concurrency)
        sent: collections.deque[float] = collections.deque()

        async def writer() -> None:
            i = 0
            while time.perf_counter() < end:
                await window.acquire()
                sent.append(time.perf_counter())
                await stream.write(requests[i % len(requests)])
                i += 1
            await stream.done_writing()

        writing = asyncio.ensure_future(writer())
        try:
            while (d := await stream.read()) is not grpc.aio.EOF:
                t0, t1 = sent.popleft(), time.perf_counter()
                window.release()
                total += 1
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    server_ms.append(d.latency_ms)
                    degraded += d.degraded
                    if not d.degraded:
                        pds[d.sme_id] = d.probability_of_default
        except grpc.aio.AioRpcError as err:
            errors[err.code().name] = errors.get(err.code().name, 0) + 1 + len(sent)
        finally:
            writing.cancel()

    cpu0 = time.process_time()
    if api == "batch":
        await batch_stream()
    else:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    cpu = time.process_time() - cpu0
    elapsed = time.perf_counter() - measure_from
    await channel.close()  # type: ignore[union-attr]
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return round(latencies[min(n - 1, int(q * n))] * 1000.0, 3) if n else 0.0

    return {
        "requests": n + sum(errors.values()),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "rps": round(n / elapsed, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000.0, 3) if n else 0.0,
        "node_p50_ms": round(sorted(server_ms)[n // 2], 3) if n else 0.0,
        "node_p99_ms": round(sorted(server_ms)[min(n - 1, int(0.99 * n))], 3) if n else 0.0,
        "seconds": round(elapsed, 3),
        "degraded": degraded,
        "client_cpu_s": round(cpu, 3),
        "all_requests": total,
        "pds": pds,
    }


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have used (user+nice+system+irq+softirq), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int, descendants: bool = True) -> float:
    """CPU seconds of ``pid`` (and all its live descendants), from /proc (10 ms resolution)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    seen: set[int] = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += cpu.get(p, 0.0)
        if descendants:
            stack += [c for c, pp in parents.items() if pp == p]
    return total


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------ the floor


async def _floor_serve(folder: str, seconds: float) -> None:
    """A bare gRPC server (TLS, the node's server options, uvloop): echo, unary and on a stream."""
    import grpc

    from fedrisk.scoring.transport import SERVER_OPTIONS, bind, server_credentials

    async def unary(request: bytes, context: object) -> bytes:
        return request

    async def stream(requests: object, context: object) -> object:
        async for request in requests:  # type: ignore[attr-defined]
            yield request

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary), "Stream": grpc.stream_stream_rpc_method_handler(stream)}),))  # fmt: skip
    address = bind(server, "127.0.0.1:0", server_credentials(f"{folder}/server.crt", f"{folder}/server.key"))
    await server.start()
    cpu0 = time.process_time()
    sys.stdout.write(json.dumps({"address": address}) + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    sys.stdout.write(json.dumps({"server_cpu_s": time.process_time() - cpu0}) + "\n")
    sys.stdout.flush()
    await server.stop(0)


async def _floor_drive(address: str, ca: str, kind: str, concurrency: int, seconds: float) -> dict:
    """Echo 120-byte messages as fast as ``concurrency`` callers can: unary calls, or messages on one stream."""
    import grpc

    from fedrisk.scoring.transport import secure_channel

    channel = secure_channel(address, ca=ca, authority="localhost")
    await asyncio.wait_for(channel.channel_ready(), 10)  # type: ignore[union-attr]
    payload, done, end = b"x" * 120, 0, time.perf_counter() + seconds
    cpu0 = time.process_time()
    if kind == "unary":
        call = channel.unary_unary("/floor.Echo/Unary")  # type: ignore[union-attr]

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await call(payload, timeout=5)
                done += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    else:
        stream = channel.stream_stream("/floor.Echo/Stream")()  # type: ignore[union-attr]
        waiting: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        lock = asyncio.Lock()

        async def reader() -> None:
            nonlocal done
            while (await stream.read()) is not grpc.aio.EOF:
                waiting.get_nowait().set_result(None)
                done += 1

        reading = asyncio.ensure_future(reader())

        async def caller() -> None:
            while time.perf_counter() < end:
                fut = asyncio.get_running_loop().create_future()
                async with lock:  # one write at a time on a stream
                    waiting.put_nowait(fut)
                    await stream.write(payload)
                await fut

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        await stream.done_writing()
        await reading
    cpu = time.process_time() - cpu0
    await channel.close()  # type: ignore[union-attr]
    return {"kind": kind, "calls": done, "client_cpu_s": cpu, "seconds": seconds}


def _floor(concurrency: int, seconds: float) -> dict:
    """CPU per round trip of bare Python gRPC (TLS, uvloop) between two processes on this machine."""
    from fedrisk.crypto.pki import create_federation_pki, create_server_cert

    out: dict = {"concurrency": concurrency, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="fedrisk-scoring-floor-") as tmp:
        pki = create_federation_pki(Path(tmp) / "pki", parties=["loan-system"])
        cert, key = create_server_cert(pki, "floor", ["127.0.0.1", "localhost"])
        for name, source in (("server.crt", cert), ("server.key", key), ("ca.crt", pki.ca_cert)):
            (Path(tmp) / name).write_bytes(Path(source).read_bytes())
            os.chmod(Path(tmp) / name, 0o600)
        for kind in ("unary", "stream"):
            server = subprocess.Popen([sys.executable, __file__, "--floor-serve", tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                address = json.loads(server.stdout.readline())["address"]  # type: ignore[union-attr]
                busy0 = _busy_cpu_seconds()
                client = subprocess.run([sys.executable, __file__, "--floor-drive", address, str(Path(tmp) / "ca.crt"), kind, str(concurrency), str(seconds)],
                                        capture_output=True, text=True, timeout=seconds + 60)  # fmt: skip
                busy = _busy_cpu_seconds() - busy0
                server.stdin.close()  # type: ignore[union-attr]
                served = json.loads(server.stdout.readline())  # type: ignore[union-attr]
            finally:
                server.wait(10)
            result = json.loads(client.stdout.strip().splitlines()[-1])
            n = max(1, result["calls"])
            out[kind] = {
                "per_s": round(n / seconds, 1),
                "client_cpu_ms_per_call": round(1000 * result["client_cpu_s"] / n, 3),
                "server_cpu_ms_per_call": round(1000 * served["server_cpu_s"] / n, 3),
                "other_processes_cpu_s": round(busy - result["client_cpu_s"] - served["server_cpu_s"], 2),
            }
    return out


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s of load instead of 20.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--estimate", action="store_true", help="Estimates only: nothing recorded in the register.")
    parser.add_argument(
        "--via",
        choices=("tcp", "unix"),
        default="tcp",
        help="tcp: the node's public address (through the launcher's door when sandboxed); unix: its socket inside the sandbox, as a loan system on the same host could use",
    )
    parser.add_argument(
        "--api",
        choices=("unary", "batch"),
        default="unary",
        help="unary: one Score call per application (a loan system's call, the default); batch: applications on one ScoreBatch stream, `concurrency` in flight",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="Instead: measure the floor, the CPU of one bare Python gRPC round trip (TLS, uvloop) between two processes here, unary and on a stream",
    )
    parser.add_argument("--drive", nargs=2, metavar=("ADDRESS", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--floor-serve", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--floor-drive", nargs=5, metavar=("ADDRESS", "CA", "KIND", "CONCURRENCY", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_serve or args.floor_drive:
        from fedrisk.scoring.main import run_loop

        if args.floor_serve:
            run_loop(_floor_serve(args.floor_serve, 0))
        else:
            a = args.floor_drive
            sys.stdout.write(json.dumps(run_loop(_floor_drive(a[0], a[1], a[2], int(a[3]), float(a[4])))) + "\n")
        return
    if args.floor:
        sys.stdout.write(
            json.dumps(_floor(args.concurrency, args.seconds if args.seconds is not None else (5.0 if args.quick else 10.0)), sort_keys=True) + "\n"
        )
        return
    if args.drive:
        spec = json.loads(Path(args.drive[1]).read_text())
        from fedrisk.scoring.main import run_loop

        result = run_loop(
            _drive(args.drive[0], spec["ca"], spec["ids"], spec["concurrency"], spec["seconds"], spec["warmup"], spec["estimate"], spec.get("api", "unary"))
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    seconds = args.seconds if args.seconds is not None else (8.0 if args.quick else 20.0)

    from fedrisk.scoring.deploy import start_example_deployment
    from fedrisk.scoring.example import build_example

    with tempfile.TemporaryDirectory(prefix="fedrisk-scoring-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        _log(f"training the example federation ({args.rows} SMEs)")
        example = build_example(root / "federation", rows=args.rows)
        _log(f"trained and signed in {time.perf_counter() - t0:.1f} s; starting two party services and the node")
        load_before = round(os.getloadavg()[0], 2)
        deployment = start_example_deployment(example, None if args.estimate else root / "state", sandbox=args.sandbox)
        try:
            node = deployment.node
            _log(f"node {node.address} (sandbox {node.sandbox}); driving at concurrency {args.concurrency} for {seconds:g} s")
            spec_path = root / "drive.json"
            spec_path.write_text(json.dumps({"ca": str(example.pki.ca_cert), "ids": list(example.offline_pd), "concurrency": args.concurrency,
                                             "seconds": seconds, "warmup": args.warmup, "estimate": args.estimate, "api": args.api}))  # fmt: skip
            pids = {"node": node.process.pid, **{p: s.process.pid for p, s in deployment.parties.items()}}
            cpu_before = {k: _cpu_ticks(pid) for k, pid in pids.items()}
            launcher_before = {k: _cpu_ticks(pid, descendants=False) for k, pid in pids.items()}
            busy_before, children_before = _busy_cpu_seconds(), _children_cpu()
            target = node.address
            if args.via == "unix" and node.ready.get("unix"):
                target = "unix:" + str(node.ready["unix"])
            wall0 = time.perf_counter()
            driver = subprocess.run([sys.executable, __file__, "--drive", target, str(spec_path)], capture_output=True, text=True, timeout=seconds + 120)
            cpu_after = {k: _cpu_ticks(pid) for k, pid in pids.items()}
            launcher_after = {k: _cpu_ticks(pid, descendants=False) for k, pid in pids.items()}
            busy = _busy_cpu_seconds() - busy_before
            wall = time.perf_counter() - wall0
            driver_cpu = _children_cpu() - children_before
            if driver.returncode != 0:
                raise SystemExit(f"driver failed: {driver.stderr.strip().splitlines()[-1:]}")
            result = json.loads(driver.stdout.strip().splitlines()[-1])
        finally:
            deployment.stop()
        pds = result.pop("pds")
        errors = [abs(pd - example.offline_pd[sme]) for sme, pd in pds.items()]
        fanout = (node.stopped or {}).get("fanout") or {}
        decisions = max(1, result["all_requests"])
        by_process = {"driver": round(1000 * driver_cpu / decisions, 3)}
        for k in pids:
            inside = (cpu_after[k] - cpu_before[k]) - (launcher_after[k] - launcher_before[k])
            by_process[f"{k}_sandboxed"] = round(1000 * inside / decisions, 3)
            by_process[f"{k}_launcher"] = round(1000 * (launcher_after[k] - launcher_before[k]) / decisions, 3)
        summary = {
            **result,
            "loadavg_1m_before": load_before,
            "fanout_parties": len(deployment.parties),
            "concurrency": args.concurrency,
            "api": args.api,
            "sandbox": node.sandbox,
            "via": "unix" if target.startswith("unix:") else "tcp",
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "recorded": not args.estimate,
            "fanout": fanout,
            "register": (node.stopped or {}).get("register") or {},  # the launcher's group commits: records per commit, commit time
            # CPU ms per decision of each process: the driver, each service inside its sandbox, each launcher (doors, register)
            "cpu_ms_per_decision_by_process": by_process,
            "server_cpu_s": {k: round(cpu_after[k] - cpu_before[k], 2) for k in pids},
            "launcher_cpu_s": {k: round(launcher_after[k] - launcher_before[k], 2) for k in pids},  # doors + register, outside the sandbox
            "driver_process_cpu_s": round(driver_cpu, 2),
            # CPU that other processes on this shared machine used during the run (noise)
            "other_processes_cpu_s": round(busy - driver_cpu - sum(cpu_after[k] - cpu_before[k] for k in pids), 2),
            "wall_s": round(wall, 2),
            # every process of the benchmark (node + launcher, parties + launchers, driver) per decision, warm-up included
            "cpu_ms_per_decision": round(1000 * (driver_cpu + sum(cpu_after[k] - cpu_before[k] for k in pids)) / max(1, result["all_requests"]), 3),
            "max_abs_pd_error": max(errors) if errors else None,
            "reference": "offline in-process decision of the same model (PD must match)",
            "goal": {"rps": 2000, "p99_ms": 20},
            "cores": os.cpu_count(),
        }
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
