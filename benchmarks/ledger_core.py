"""Micro-benchmark of the audit ledger: durable appends/s and verified entries/s.

Prints one JSON object:

* ``entries`` - entries appended in batches (and then verified, with the singles);
* ``appends_per_s`` - batched ``append_many`` (one durable commit per batch);
* ``single_appends_per_s`` - ``append`` (one durable commit per entry);
* ``verify_entries_per_s`` - ``verify_ledger`` (hash chain + Ed25519 per entry).

Every commit is durable (WAL, ``synchronous=FULL``). Timings cover sealing
(canonical JSON, SHA-256, Ed25519 signing) and SQLite; building the
``ExchangeRecord`` records (hashing the payloads) is done beforehand.

Usage: ``python benchmarks/ledger_core.py [--quick] [--entries N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fedrisk.audit import Ed25519Signer, ExchangeRecord, Ledger, verify_ledger

GOAL_APPENDS_PER_S = 5000


def _exchanges(n: int, offset: int = 0) -> list[ExchangeRecord]:
    return [
        ExchangeRecord.of_payload(
            (offset + i).to_bytes(8, "big") * 4,
            run_id="bench-run",
            round=1 + (offset + i) // 1000,
            step="vlr.gradient",
            sender="bank",
            receiver="coordinator",
            message_type="vlr.gradient",
            direction="sent",
            content_class="ciphertext",
            key_fingerprint="ctx-0123456789abcdef",
        )
        for i in range(n)
    ]


def run(entries: int, batch: int, singles: int) -> dict[str, object]:
    """Measure and return the benchmark's JSON object."""
    signer = Ed25519Signer.generate()
    with tempfile.TemporaryDirectory(prefix="fedrisk-ledger-bench-") as tmp:
        path = Path(tmp) / "bank.sqlite"
        batched = _exchanges(entries)
        single = _exchanges(singles, offset=entries)
        with Ledger(path, "bank", signer) as led:
            t0 = time.perf_counter()
            for i in range(0, entries, batch):
                led.append_many(batched[i : i + batch])
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            for ex in single:
                led.append(ex)
            t_single = time.perf_counter() - t0
        total = entries + singles
        t0 = time.perf_counter()
        findings = verify_ledger(path, {"bank": signer.public_key_bytes})
        t_verify = time.perf_counter() - t0
        size = path.stat().st_size
    if findings:
        raise SystemExit(f"benchmark ledger failed verification: {findings[0]}")
    appends = entries / t_batched
    return {
        "entries": entries,
        "appends_per_s": round(appends, 1),
        "single_appends_per_s": round(singles / t_single, 1),
        "verify_entries_per_s": round(total / t_verify, 1),
        "batch_size": batch,
        "single_entries": singles,
        "verified_entries": total,
        "bytes_per_entry": round(size / total, 1),
        "durability": "sqlite WAL, synchronous=FULL, one fsync per commit",
        "goal_appends_per_s": GOAL_APPENDS_PER_S,
        "meets_goal": appends >= GOAL_APPENDS_PER_S,
        "cpu_count": os.cpu_count(),
        # Other work on the machine skews every number above; say how much there was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 entries instead of 50,000")
    parser.add_argument("--entries", type=int, default=None, help="entries appended in batches")
    parser.add_argument("--batch", type=int, default=500, help="entries per append_many transaction")
    parser.add_argument("--json", action="store_true", help="accepted for CLI symmetry; output is always JSON")
    args = parser.parse_args(argv)
    entries = args.entries or (2_000 if args.quick else 50_000)
    singles = min(2_000, max(100, entries // 10))
    print(json.dumps(run(entries, max(1, args.batch), singles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
