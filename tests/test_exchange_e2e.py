"""Echo exchanges over a real deployment: SuperLink, three SuperNodes, TLS, node authentication, ledgers on."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_echo_exchanges_complete_over_a_real_deployment(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import exchange as bench  # benchmarks/exchange.py

    echoes, _ = bench.deployed(tmp_path, 3, [4, 1, 1], 1)
    assert [e["bytes"] for e in echoes] == list(bench.SIZES)
    assert [len(e["latencies_ms"]) for e in echoes] == [4, 1, 1]  # every echo checked byte for byte by the coordinator
    for name in bench.PARTY_NAMES:
        log = (tmp_path / "run" / "logs" / f"supernode-{name}.log").read_text()
        assert "query.echo" in log and "Traceback" not in log
        assert (tmp_path / "run" / "parties" / name / "ledger.sqlite").exists()
