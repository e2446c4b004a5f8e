"""SIGKILL on real processes: the coordinator (``flwr-serverapp``) and a bank's party process, mid-round.

One local federation (SuperLink, two SuperNodes and two warm party processes,
TLS and node authentication on loopback) serves an uninterrupted CKKS FedAvg
run and two killed runs that both redo round 2 (the coordinator killed in
round 2; bank_b's party process killed once it has answered round 1, so that
round 2 finds it gone): the run completes, the final model matches the
uninterrupted one within CKKS noise, every ledger entry written before the
kill is still there, each chain verifies, and the only cross-check findings
are the messages that were in flight at the kill.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.audit import read_ledger, verify_ledger, verify_run
from fedrisk.audit.recorder import LEDGER_FILE
from fedrisk.audit.run_files import collect_ledgers
from fedrisk.errors import LedgerError
from fedrisk.federation.federation_file import load_federation_file
from fedrisk.federation.local import LocalFederation
from fedrisk.federation.status import read_status
from fedrisk.federation.train import party_settings_for, run_config_for

pytestmark = pytest.mark.e2e

FEDERATION = """
[federation]
name = "recovery"
mode = "horizontal"
algorithm = "fedavg"

[algorithm]
rounds = 3
model = "logistic"
seed = 11

[validation]
fraction = 0.2
seed = 1

[[parties]]
name = "bank_a"
role = "bank"
data = "{root}/bank_a.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "bank_b"
role = "bank"
data = "{root}/bank_b.csv"
id-column = "id"
label-column = "y"
"""


def _weights(result: dict, run_dir: Path) -> np.ndarray:
    from fedrisk.crypto.signing import SigningIdentity
    from fedrisk.models.bundle import load_model_bundle

    key = SigningIdentity.load(run_dir / "parties" / "bank_a" / "identity_ed25519.key").public_key_bytes
    arrays, _ = load_model_bundle(Path(result["final"]["bank_a"]["bundle"]), [key])
    return np.concatenate([np.asarray(v, dtype=float).ravel() for k, v in sorted(arrays.items()) if k.startswith("net.")])


def _entries(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    return {str(p): [(e.seq, e.entry_hash) for e in read_ledger(p).entries] for p in collect_ledgers([run_dir])[0]}


@pytest.fixture(scope="module")
def federation(tmp_path_factory, default_credit_dir):
    root = tmp_path_factory.mktemp("recovery")
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        pd.read_csv(default_credit_dir / f"default_credit_homo_{file}.csv").head(800).to_csv(root / f"{name}.csv", index=False)
    (root / "federation.toml").write_text(FEDERATION.format(root=root))
    fed = load_federation_file(root / "federation.toml")
    run_dir = root / "run"
    config = run_config_for(fed)
    with LocalFederation(run_dir, party_settings_for(fed, run_dir), config) as running:
        base = running.run(run_config={**config, "fedrisk-run-id": "base"}, timeout=600)
        yield running, config, _weights(base, run_dir)


def _logged(ledger: Path, run_id: str, round_: int, direction: str, step: str | None = None) -> bool:
    """Whether a party's ledger holds such a message of ``run_id`` (its ClientApp records a message
    as received before relaying it to the party process, and the reply as sent after)."""
    try:
        entries = read_ledger(ledger).entries
    except LedgerError:
        return False  # not written yet
    return any(e.run_id == run_id and e.round == round_ and e.direction == direction and step in (None, e.step) for e in entries)


def _wait_for(what: str, reached, thread: threading.Thread, timeout: float = 300.0) -> None:
    """Poll until the run really reached ``what`` (an event in its ledgers), or fail naming it."""
    deadline = time.monotonic() + timeout
    while not reached():
        assert thread.is_alive(), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"the run did not reach {what} within {timeout:.0f} s"
        time.sleep(0.02)


def _start_run(running: LocalFederation, run_config: dict) -> tuple[threading.Thread, dict]:
    """Start ``running.run(run_config)`` in a thread; its result (or error) lands in the returned dict."""
    out: dict = {}

    def go() -> None:
        try:
            out["result"] = running.run(run_config=run_config, timeout=600)
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            out["error"] = err

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def _coordinator_killed_in_round_2(running: LocalFederation, config: dict, run_id: str, gate: str, other: str) -> tuple[dict, dict]:
    """Run ``run_id`` and SIGKILL the coordinator in round 2, after its round-1 checkpoint, before round 2 can complete.

    The order comes from the run's own events, not from timing. ``gate`` is frozen (SIGSTOP)
    once it has answered round 1 and before its ClientApp has handed it round 2: until it is
    thawed round 2 cannot complete, so the coordinator cannot checkpoint round 2. Once
    ``other`` has been handed round 2 (sent only after the round-1 checkpoint) the coordinator
    is killed, then ``gate`` thawed. The resubmitted run resumes from round 1 and redoes round 2
    only, however slow or fast anything runs on a busy machine.
    """
    nodes = {node.settings.name: node for node in running.nodes}
    ledgers = {name: nodes[name].state_dir / LEDGER_FILE for name in (gate, other)}
    restarts = running.coordinator_restarts
    # No liveness probes: the frozen bank is not lost (as in _party_killed_after_round_1).
    thread, out = _start_run(running, {**config, "fedrisk-run-id": run_id, "probe-interval": 0.0})
    frozen: int | None = None
    try:
        _wait_for(f"{gate} answering round 1", lambda: _logged(ledgers[gate], run_id, 1, "sent"), thread)
        frozen = nodes[gate].party_process.popen.pid
        os.kill(frozen, signal.SIGSTOP)
        # Its ClientApp logs round 2 as received before relaying it: not logged now, not handled until thawed.
        assert not _logged(ledgers[gate], run_id, 2, "received"), f"{gate} was handed round 2 before it was frozen"
        _wait_for(f"{other} being handed round 2", lambda: _logged(ledgers[other], run_id, 2, "received"), thread)
        assert not _logged(ledgers[gate], run_id, 2, "sent"), f"{gate} answered round 2 while frozen"
        assert running.coordinator_restarts == restarts, "the coordinator restarted before it was killed"
        assert running.kill_coordinator(), "no coordinator to kill"
        before = _entries(running.run_dir)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
    thread.join(timeout=600)
    assert "result" in out, f"the killed run did not complete: {out.get('error')!r}"
    return out["result"], before


def _party_killed_after_round_1(running: LocalFederation, config: dict, run_id: str, victim: str, gate: str) -> tuple[dict, dict]:
    """Run ``run_id`` and SIGKILL ``victim``'s party process after it answered round 1, before round 2 can reach it.

    The order comes from the run's own events, not from timing. ``gate`` (the other bank) is
    frozen (SIGSTOP) once it has answered its last setup message and before its ClientApp
    has handed it round 1: until it is thawed round 1 cannot complete, so the coordinator
    cannot send round 2. Meanwhile ``victim`` answers round 1 (it now holds the pooled feature
    statistics, in memory only) and is killed. Thawed, round 1 completes and round 2 finds
    ``victim`` down, or restarted without the statistics: either way it fails, and the
    coordinator pauses and redoes round 2 for it. How fast anything runs on a busy machine
    changes nothing here.
    """
    nodes = {node.settings.name: node for node in running.nodes}
    ledgers = {name: nodes[name].state_dir / LEDGER_FILE for name in (gate, victim)}
    # No liveness probes: the frozen bank is not lost, and a probe it answered on thawing, before its
    # round-1 reply, would make the coordinator (rightly) treat that round-1 message as lost.
    thread, out = _start_run(running, {**config, "fedrisk-run-id": run_id, "probe-interval": 0.0})
    frozen: int | None = None
    try:
        _wait_for(f"{gate} answering fedavg.stats", lambda: _logged(ledgers[gate], run_id, 0, "sent", "fedavg.stats"), thread)
        frozen = nodes[gate].party_process.popen.pid
        os.kill(frozen, signal.SIGSTOP)
        # Its ClientApp logs round 1 as received before relaying it: not logged now, not handled until thawed.
        assert not _logged(ledgers[gate], run_id, 1, "received"), f"{gate} was handed round 1 before it was frozen"
        _wait_for(f"{victim} answering round 1", lambda: _logged(ledgers[victim], run_id, 1, "sent"), thread)
        running.kill_party(victim, "party")
        before = _entries(running.run_dir)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
    thread.join(timeout=600)
    assert "result" in out, f"the killed run did not complete: {out.get('error')!r}"
    return out["result"], before


def _check_ledgers(running: LocalFederation, run_id: str, before: dict) -> None:
    after = _entries(running.run_dir)
    for path, entries in before.items():
        assert after[path][: len(entries)] == entries, f"{path}: entries written before the kill changed or vanished"
    ledgers, keys = collect_ledgers([running.run_dir])
    for path in ledgers:
        assert verify_ledger(path, keys) == [], path
    findings = verify_run(ledgers, trusted_keys=keys, run_id=run_id)
    assert all(f.field == "message_id" for f in findings), findings  # only messages lost in flight
    assert len(findings) <= 2
    sent = Counter(
        (e.round, e.step, e.receiver)
        for e in read_ledger(running.run_dir / "coordinator" / "ledger.sqlite").entries
        if e.run_id == run_id and e.direction == "sent" and e.step.startswith("fedavg.")
    )
    assert {r for (r, _, _), n in sent.items() if n > 1} == {2}  # round 2, and only round 2, was redone


def test_killing_the_coordinator_mid_round_resumes_from_its_checkpoint(federation):
    running, config, base = federation
    restarts = running.coordinator_restarts
    result, before = _coordinator_killed_in_round_2(running, config, "killed-coordinator", gate="bank_a", other="bank_b")
    assert running.coordinator_restarts == restarts + 1
    assert result["recovery"]["attempt"] == 2 and result["recovery"]["resumed_from"] == 1
    assert np.max(np.abs(_weights(result, running.run_dir) - base)) < 1e-3  # CKKS noise, ~1e-5 measured
    _check_ledgers(running, "killed-coordinator", before)


def test_killing_a_party_process_mid_round_pauses_then_resumes(federation):
    running, config, base = federation
    result, before = _party_killed_after_round_1(running, config, "killed-party", victim="bank_b", gate="bank_a")
    assert result["recovery"]["attempt"] == 1  # the coordinator itself never stopped
    assert result["rounds"][1]["redone_for"] == ["bank_b"]
    assert any("party process of bank_b" in line for line in running.restarted)
    assert np.max(np.abs(_weights(result, running.run_dir) - base)) < 1e-3
    events = [e["message"] for e in (read_status(running.run_dir) or {})["events"]]
    assert any(m.startswith("paused: waiting for bank_b") for m in events)
    assert "resumed: every party answered" in events
    _check_ledgers(running, "killed-party", before)
    json.dumps(result)  # the result stays plain JSON
