"""Crash recovery of the coordinator and parties, in one process (fast; the real-process kills are in test_recovery_e2e.py).

The fedrisk ServerApp and ClientApps run over
:class:`~fedrisk.federation.inprocess.InProcessGrid`; the parties' runtimes live
on between ServerApp calls exactly as a party's warm process outlives a
coordinator. A "kill" is a ``BaseException`` raised while a message is being
delivered: nothing after it runs, no ``except Exception`` sees it, no result
is written — what SIGKILL does to ``flwr-serverapp``. Then the ServerApp is
called again with the same run id, as ``LocalFederation`` resubmits it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.checkpoint import CheckpointStore
from fedrisk.wire.exchange import read_content
from fedrisk.federation.inprocess import InProcessGrid
from fedrisk.federation.server_app import app as server_app
from fedrisk.federation.status import read_status
from fedrisk.models.bundle import load_model_bundle
from fedrisk.parties.settings import PartySettings

SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "opaque"}
GUEST_SCHEMA = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(13)}, "id_format": "opaque"}
HOST_SCHEMA = {"id_column": "id", "features": {f"x{i}": "float" for i in range(10)}, "id_format": "opaque"}


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler in the ServerApp sees it."""


def _signing_key(state_dir: str) -> bytes:
    from fedrisk.crypto.signing import SigningIdentity

    return SigningIdentity.load(Path(state_dir) / "identity_ed25519.key").public_key_bytes


def _serve(run_dir: Path, parties: list[PartySettings], run_id: str, tap=None, **config) -> dict:
    run_config = {
        "run-dir": str(run_dir),
        "parties": ",".join(p.name for p in parties),
        "fedrisk-run-id": run_id,
        "party-timeout": 60.0,
        "recovery": True,
        "probe-interval": 0.0,
        "pause-timeout": 30.0,
        **config,
    }
    grid = InProcessGrid(parties, tap=tap)
    server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    return json.loads((run_dir / "coordinator" / "result.json").read_text())


def _kill_at(step: str, round_: int, receiver: str):
    """A tap that 'kills the coordinator' as it hands ``step`` of ``round_`` to ``receiver``."""

    def tap(direction, node_id, msg):
        if direction != "to_party":
            return
        header = read_content(msg.content).header
        if header.step == step and header.round == round_ and header.receiver == receiver:
            raise Killed(f"coordinator killed at {step} round {round_}")

    return tap


def _weights(result: dict, parties: list[PartySettings], name: str) -> dict[str, np.ndarray]:
    state = next(p.state_dir for p in parties if p.name == name)
    bundle = result["final"][name]["bundle"] if "final" in result and name in result["final"] else result["bundles"][name]
    arrays, _ = load_model_bundle(Path(bundle), [_signing_key(state)])
    return {k: np.asarray(v, dtype=float) for k, v in arrays.items() if np.asarray(v).dtype.kind == "f"}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="module")
def banks(tmp_path_factory, default_credit_dir) -> list[PartySettings]:
    root = tmp_path_factory.mktemp("banks")
    parties = []
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1")):
        path = root / f"{name}.csv"
        pd.read_csv(default_credit_dir / f"default_credit_homo_{file}.csv").head(800).to_csv(path, index=False)
        parties.append(PartySettings(name, "bank", str(path), SCHEMA, str(root / "parties" / name)))
    return parties


HORIZONTAL = {"mode": "horizontal", "num-rounds": 3, "model": "logistic", "seed": 5}


@pytest.mark.parametrize("aggregation", ["plain", "ckks"])
def test_fedavg_coordinator_killed_mid_round_resumes_and_matches(tmp_path, banks, horizontal_base, aggregation):
    config = {**HORIZONTAL, "aggregation": aggregation}
    base = horizontal_base(aggregation)
    seen: list[tuple[int, str]] = []

    def count(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step == "fedavg.train":
            seen.append((header.round, header.receiver))

    killer = _kill_at("fedavg.train", 2, "bank_b")
    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        _serve(run_dir, banks, f"killed-{aggregation}", tap=lambda *a: (count(*a), killer(*a)), **config)
    assert not (run_dir / "coordinator" / "result.json").exists()
    assert CheckpointStore(run_dir / "coordinator" / "checkpoints" / f"killed-{aggregation}").load().round == 1
    resumed = _serve(run_dir, banks, f"killed-{aggregation}", tap=count, **config)
    assert resumed["status"] == "ok" and resumed["recovery"]["resumed_from"] == 1 and resumed["recovery"]["attempt"] == 2
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    # Round 2 was the only one sent twice (bank_a got it in the killed attempt, both in the resumed one).
    assert [r for r in (1, 2, 3) if sum(1 for x in seen if x[0] == r) > 2] == [2]
    diff = _max_diff(_weights(base, banks, "bank_a"), _weights(resumed, banks, "bank_a"))
    if aggregation == "plain":
        assert diff == 0.0  # the same computation, bit for bit
    else:
        assert diff < 1e-3  # CKKS: each encryption adds fresh noise (~1e-7 per aggregate), training carries it on
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["attempt"] == 2 and status["resumed_from"] == 1


def test_fedavg_pauses_for_a_restarting_bank_and_resumes(tmp_path, banks, horizontal_base):
    """Every bank required (min-parties = 2 of 2): a bank that goes away mid-round pauses the run, not fails it."""
    from fedrisk.parties.registry import forget_runtime

    config = {**HORIZONTAL, "aggregation": "plain"}
    base = horizontal_base("plain")
    state = {"grid": None, "done": False}

    def grid_tap(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step == "fedavg.train" and header.round == 2 and header.receiver == "bank_b" and not state["done"]:
            state["done"] = True
            grid = state["grid"]
            grid.offline.add(node_id)  # bank_b's node is gone...
            forget_runtime(Path(banks[1].state_dir) / "settings.json")  # ...and its warm state with it

            def back():
                time.sleep(1.5)
                grid.offline.discard(node_id)

            threading.Thread(target=back, daemon=True).start()

    original = InProcessGrid.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        state["grid"] = self

    InProcessGrid.__init__ = init
    try:
        resumed = _serve(tmp_path / "paused", banks, "paused", tap=grid_tap, **config)
    finally:
        InProcessGrid.__init__ = original
    assert resumed["rounds"][1]["redone_for"] == ["bank_b"] and resumed["rounds"][1]["answered"] == 2
    assert _max_diff(_weights(base, banks, "bank_a"), _weights(resumed, banks, "bank_a")) == 0.0
    events = [e["message"] for e in read_status(tmp_path / "paused")["events"]]
    assert any(m.startswith("paused: waiting for bank_b") for m in events) and "resumed: every party answered" in events


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, banks):
    config = {**HORIZONTAL, "aggregation": "plain"}
    with pytest.raises(Killed):
        _serve(tmp_path, banks, "mixed", tap=_kill_at("fedavg.train", 2, "bank_a"), **config)
    with pytest.raises(ConfigError, match="made under a different fedavg configuration"):
        _serve(tmp_path, banks, "mixed", **{**config, "seed": 6})


@pytest.fixture(scope="module")
def vertical(tmp_path_factory, default_credit_dir) -> list[PartySettings]:
    root = tmp_path_factory.mktemp("vertical")
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").head(1200)
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").iloc[200:1400]
    guest.to_csv(root / "bank.csv", index=False)
    host.to_csv(root / "tax.csv", index=False)
    return [
        PartySettings("bank", "label_holder", str(root / "bank.csv"), GUEST_SCHEMA, str(root / "parties" / "bank")),
        PartySettings("tax_bureau", "feature_holder", str(root / "tax.csv"), HOST_SCHEMA, str(root / "parties" / "tax_bureau")),
    ]


VERTICAL = {"mode": "vertical", "algorithm": "vertical_lr", "epochs": 4, "patience": 10}


@pytest.fixture(scope="module")
def vertical_base(tmp_path_factory, vertical) -> dict:
    """One uninterrupted vertical run, the reference of every vertical kill below."""
    return _serve(tmp_path_factory.mktemp("vbase"), vertical, "v-base", **VERTICAL)


@pytest.fixture(scope="module")
def horizontal_base(tmp_path_factory, banks):
    """Uninterrupted FedAvg runs by aggregation, computed once."""
    cache: dict[str, dict] = {}

    def get(aggregation: str) -> dict:
        if aggregation not in cache:
            cache[aggregation] = _serve(
                tmp_path_factory.mktemp(f"hbase-{aggregation}"), banks, f"base-{aggregation}", **{**HORIZONTAL, "aggregation": aggregation}
            )
        return cache[aggregation]

    return get


@pytest.mark.parametrize("step, receiver", [("vlr.residual", "tax_bureau"), ("vlr.products", "bank")])
def test_vertical_lr_coordinator_killed_mid_epoch_resumes_and_matches(tmp_path, vertical, vertical_base, step, receiver):
    base = vertical_base
    sent: list[tuple[int, str, str]] = []

    def count(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step.startswith("vlr."):
            sent.append((header.round, header.step, header.receiver))

    killer = _kill_at(step, 2, receiver)
    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        _serve(run_dir, vertical, "v-killed", tap=lambda *a: (count(*a), killer(*a)), **VERTICAL)
    resumed = _serve(run_dir, vertical, "v-killed", tap=count, **VERTICAL)
    assert resumed["status"] == "ok" and resumed["recovery"]["resumed_from"] == 1
    assert [e["epoch"] for e in resumed["epochs"]] == [e["epoch"] for e in base["epochs"]]
    # Only epoch 2 was sent twice; every party answered its repeats from its reply cache.
    twice = sorted({r for r, s, p in sent if sent.count((r, s, p)) > 1})
    assert twice == [2]
    losses = np.array([e["train_loss"] for e in resumed["epochs"]]), np.array([e["train_loss"] for e in base["epochs"]])
    assert np.max(np.abs(losses[0] - losses[1])) < 1e-4  # CKKS and flooding noise differ between any two runs
    for name in ("bank", "tax_bureau"):
        a, b = _weights(base, vertical, name), _weights(resumed, vertical, name)
        assert _max_diff(a, b) < 5e-3 * max(1.0, max(float(np.max(np.abs(v))) for v in a.values()))


@pytest.fixture(scope="module")
def boosting(tmp_path_factory, default_credit_dir) -> list[PartySettings]:
    """A small vertical federation of its own (its parties' runtimes and state folders are not shared)."""
    root = tmp_path_factory.mktemp("boosting")
    guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").head(500)
    host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").iloc[80:580]
    guest.to_csv(root / "bank.csv", index=False)
    host.to_csv(root / "tax.csv", index=False)
    return [
        PartySettings("bank", "label_holder", str(root / "bank.csv"), GUEST_SCHEMA, str(root / "parties" / "bank")),
        # Exact (BFV) histograms: an interrupted run and an uninterrupted one compare split for split.
        PartySettings("tax_bureau", "feature_holder", str(root / "tax.csv"), HOST_SCHEMA, str(root / "parties" / "tax_bureau")),
    ]


#: Three trees of depth 2 on 400 training rows, 11 rounds: tree t starts in round 3t + 1 (its [[g + ih]] go out),
#: the feature holder gets "done" in round 10, the bank evaluates in round 11. No row subsampling: every run's
#: PSI draws a fresh secret row order, so a subsample of the same seed would be other rows in another run
#: (the restored subsampling generator is checked in test_secureboost_state.py).
SECUREBOOST = {"mode": "vertical", "algorithm": "secureboost", "trees": 3, "depth": 2, "seed": 3}


@pytest.fixture(scope="module")
def boosting_base(tmp_path_factory, boosting) -> dict:
    """One uninterrupted SecureBoost run, the reference of every SecureBoost kill below."""
    return _serve(tmp_path_factory.mktemp("sbbase"), boosting, "sb-base", **SECUREBOOST)


def _bundle(result: dict, parties: list[PartySettings], name: str) -> dict[str, np.ndarray]:
    state = next(p.state_dir for p in parties if p.name == name)
    arrays, _ = load_model_bundle(Path(result["bundles"][name]), [_signing_key(state)])
    return {k: np.asarray(v) for k, v in arrays.items()}


def _assert_same_trees(base: dict, resumed: dict, parties: list[PartySettings]) -> None:
    """The resumed model is the uninterrupted one: same splits everywhere, same leaf weights.

    Tolerance: tree structure, split owners, split ids, features, bins and
    default directions equal exactly; leaf weights and thresholds within 1e-12
    (absolute). CKKS and masking noise (~1e-5 on each decrypted per-bin sum
    on these rows) acts only through which split wins, and on this data no
    split is that close a call: three uninterrupted runs with fresh keys chose
    the same splits. The bank computes leaf weights from its own plaintext
    gradient sums, which differ between runs only by float summation order
    (each run's PSI draws a fresh secret row order): ~1e-16 measured.
    """
    assert resumed["status"] == "ok" and len(resumed["trees"]) == len(base["trees"]) == SECUREBOOST["trees"]
    for name in ("bank", "tax_bureau"):
        a, b = _bundle(base, parties, name), _bundle(resumed, parties, name)
        assert a.keys() == b.keys()
        for key in a:
            if a[key].dtype.kind == "f":
                np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-12, err_msg=f"{name} {key}")
            else:
                np.testing.assert_array_equal(b[key], a[key], err_msg=f"{name} {key}")
    assert [t["train_loss"] for t in resumed["trees"]] == pytest.approx([t["train_loss"] for t in base["trees"]], abs=1e-12)
    assert resumed["final"]["auc_federated"] == pytest.approx(base["final"]["auc_federated"], abs=1e-12)


def _ledgers_verify(run_dir: Path, parties: list[PartySettings], run_id: str) -> list:
    """Each ledger's chain verifies alone; returns the cross-check findings of ``run_id``."""
    from fedrisk.audit import verify_ledger, verify_run
    from fedrisk.audit.run_files import collect_ledgers

    ledgers, keys = collect_ledgers([run_dir, *(Path(p.state_dir) for p in parties)])
    keys = {**(keys or {}), **json.loads((run_dir / "coordinator" / "signing_keys.json").read_text())}
    for path in ledgers:
        assert verify_ledger(path, keys) == [], path
    return verify_run(ledgers, trusted_keys=keys, run_id=run_id)


def test_secureboost_coordinator_killed_mid_tree_resumes_and_matches(tmp_path, boosting, boosting_base):
    """Killed twice (handing a tree's round to the tax bureau, then handing the bank its round), resumed twice."""
    sent: list[tuple[int, str, str]] = []

    def count(direction, node_id, msg):
        header = read_content(msg.content).header
        if direction == "to_party" and header.step.startswith("sb."):
            sent.append((header.round, header.step, header.receiver))

    run_dir = tmp_path / "killed"
    store = CheckpointStore(run_dir / "coordinator" / "checkpoints" / "sb-killed")
    killer = _kill_at("sb.round", 5, "tax_bureau")
    with pytest.raises(Killed):
        _serve(run_dir, boosting, "sb-killed", tap=lambda *a: (count(*a), killer(*a)), **SECUREBOOST)
    assert not (run_dir / "coordinator" / "result.json").exists()
    checkpoint = store.load()
    assert checkpoint.protocol == "secureboost" and checkpoint.round == 4 and not checkpoint.finished
    with pytest.raises(ConfigError, match="made under a different secureboost configuration"):
        _serve(run_dir, boosting, "sb-killed", **{**SECUREBOOST, "trees": 4})
    killer = _kill_at("sb.bank", 8, "bank")
    with pytest.raises(Killed):
        _serve(run_dir, boosting, "sb-killed", tap=lambda *a: (count(*a), killer(*a)), **SECUREBOOST)
    assert store.load().round == 7
    resumed = _serve(run_dir, boosting, "sb-killed", tap=count, **SECUREBOOST)
    assert resumed["recovery"]["resumed_from"] == 7 and resumed["rounds"] == boosting_base["rounds"]
    # PSI and setup ran once; only the rounds in flight at a kill were sent twice, answered from the reply cache.
    assert sum(1 for r, s, p in sent if s == "sb.setup") == 1
    twice = sorted({(r, s, p) for r, s, p in sent if sent.count((r, s, p)) > 1})
    assert twice == [(5, "sb.bank", "bank"), (5, "sb.round", "tax_bureau"), (8, "sb.bank", "bank")]
    _assert_same_trees(boosting_base, resumed, boosting)
    assert store.load().finished
    findings = _ledgers_verify(run_dir, boosting, "sb-killed")
    # The cross-check names exactly the two messages the coordinator recorded as sent and died before delivering.
    assert [(f.field, Path(f.file).parent.name) for f in findings] == [("message_id", "coordinator")] * 2, findings


@pytest.mark.parametrize(
    "kills",
    [
        # (party, Flower message type, round, after answering)
        # the tax bureau needs tree 1's [[g + ih]] (round 4) back in its kernel; the bank its saved answer of round 8
        # ...and again as it is to evaluate the finished model (restored trees, validation answers of round 10)
        (("tax_bureau", "train.sbround", 5, False), ("bank", "train.sbbank", 8, True), ("bank", "train.sbbank", 11, False)),
        # the bank needs round 5's decrypted histograms and pending partition; the tax bureau its final answer and bundle
        (("bank", "train.sbbank", 6, False), ("tax_bureau", "train.sbround", 10, True)),
    ],
    ids=["tax-before-bank-after", "bank-before-tax-after"],
)
def test_secureboost_party_processes_killed_resume_from_their_disk_state(tmp_path, boosting, boosting_base, monkeypatch, kills):
    """Both parties' processes die mid-tree (one before answering, one after): the run pauses, they restore, it matches."""
    from fedrisk.errors import PartyUnavailableError
    from fedrisk.parties import runtime as runtime_module
    from fedrisk.parties.registry import forget_runtime

    settings = {p.name: str(Path(p.state_dir) / "settings.json") for p in boosting}
    original = runtime_module.PartyRuntime.handle
    state = {"dead": {}, "killed": set(), "repeats": {"bank": 0, "tax_bureau": 0}}

    def handle(self, mtype, meta, content):
        name = self.settings.name
        if time.monotonic() < state["dead"].get(name, 0.0):
            raise PartyUnavailableError(f"party process is not listening on {settings[name]}: Connection refused")
        header = read_content(content).header
        for kill in kills:
            party, message_type, round_, after_answering = kill
            if name == party and mtype == message_type and header.round == round_ and kill not in state["killed"]:
                if after_answering:
                    original(self, mtype, meta, content)  # state and answer are on disk; the answer never leaves
                state["killed"].add(kill)
                forget_runtime(settings[name])  # the warm process and everything in it are gone
                state["dead"][name] = time.monotonic() + 1.0
                raise PartyUnavailableError(f"party process is not listening on {settings[name]}: Connection refused")
        before = self.repeats
        reply = original(self, mtype, meta, content)
        if mtype != "query.identity":
            state["repeats"][name] += self.repeats - before
        return reply

    monkeypatch.setattr(runtime_module.PartyRuntime, "handle", handle)
    run_dir, run_id = tmp_path / "killed", "sbp-" + "-".join(f"{k[0]}{k[2]}" for k in kills)  # the parties' ledgers are shared
    resumed = _serve(run_dir, boosting, run_id, **SECUREBOOST)
    assert state["killed"] == set(kills) and resumed["recovery"]["attempt"] == 1
    assert resumed["recovery"]["resent_to"] == ["bank", "tax_bureau"]
    # Each request a party had answered before it died was answered again from its restored cache, and only those.
    assert state["repeats"] == {name: sum(int(k[3]) for k in kills if k[0] == name) for name in ("bank", "tax_bureau")}
    _assert_same_trees(boosting_base, resumed, boosting)
    events = [e["message"] for e in read_status(run_dir)["events"]]
    assert all(any(m.startswith(f"paused: waiting for {name}") for m in events) for name in ("bank", "tax_bureau"))
    files = [p for party in boosting for p in (Path(party.state_dir) / "recovery" / run_id).rglob("*") if p.is_file()]
    assert {p.parent.parent.name for p in files if p.parent.name == "blobs"} >= {
        "LabelHolderSecureBoost-static",
        "LabelHolderSecureBoost-state",
        "FeatureHolderSecureBoost-static",
        "FeatureHolderSecureBoost-state",
    }
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    assert all(json.loads(p.read_text())["format"] == "fedrisk-checkpoint/1" for p in files if p.name == "checkpoint.json")
    # Zero findings: while a process was down its node answered "not listening", so every message has both ends.
    assert _ledgers_verify(run_dir, boosting, run_id) == []


def test_checkpoint_store_is_atomic_checked_and_plain(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.load() is None
    store.save("fedavg", 1, {"rows": [1]}, {"aggregate": b"a" * 10}, config_sha256="c1")
    store.save("fedavg", 2, {"rows": [1, 2]}, {"aggregate": b"b" * 10}, config_sha256="c1")
    checkpoint = store.resumable("fedavg", "c1")
    assert checkpoint.round == 2 and checkpoint.blob("aggregate") == b"b" * 10
    assert len(list((tmp_path / "ckpt" / "blobs").iterdir())) == 1  # the old aggregate is gone
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())  # JSON, not pickle
    blob = next((tmp_path / "ckpt" / "blobs").iterdir())
    blob.write_bytes(b"tampered!!")
    with pytest.raises(ProtocolError, match="corrupt"):
        store.load().blob("aggregate")
    with pytest.raises(ConfigError, match="unfinished fedavg checkpoint"):
        store.resumable("vertical_lr", "c1")
    store.save("fedavg", 3, {}, config_sha256="c1", finished=True)
    assert store.resumable("fedavg", "c1") is None


def test_status_command_reads_what_the_coordinator_wrote(tmp_path, banks):
    import subprocess
    import sys

    _serve(tmp_path, banks, "status-run", **{**HORIZONTAL, "aggregation": "plain", "num-rounds": 1})
    shown = subprocess.run([sys.executable, "-m", "fedrisk.cli", "status", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith("run status-run: finished, round 1/1 (fedavg")
    assert "parties (2/2 connected):" in shown.stdout
    as_json = subprocess.run([sys.executable, "-m", "fedrisk.cli", "status", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60, check=False)
    data = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert data["state"] == "finished" and set(data["parties"]) == {"bank_a", "bank_b"} and data["stale"] is False
    missing = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "status", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2 and "error: no run status at" in missing.stderr


@pytest.mark.parametrize(
    "party, message_type, after_answering",
    [
        ("tax_bureau", "train.vlrgradient", False),  # dies as the epoch-2 residual arrives
        ("bank", "train.vlrdecrypt", False),  # the label holder (and its secret key) dies mid-epoch
        ("tax_bureau", "train.vlrscores", True),  # dies after applying its update, before the answer left
    ],
)
def test_vertical_party_process_killed_resumes_from_its_disk_state(tmp_path, vertical, vertical_base, monkeypatch, party, message_type, after_answering):
    """A vertical party's process dies mid-epoch: its state comes back from disk, the run pauses, then finishes."""
    from fedrisk.errors import PartyUnavailableError
    from fedrisk.parties import runtime as runtime_module
    from fedrisk.parties.registry import forget_runtime

    base = vertical_base
    settings_path = str(Path(next(p.state_dir for p in vertical if p.name == party)) / "settings.json")
    original = runtime_module.PartyRuntime.handle
    state = {"dead_until": 0.0, "killed": False, "repeats": 0}

    def handle(self, mtype, meta, content):
        if self.settings.name == party and time.monotonic() < state["dead_until"]:
            raise PartyUnavailableError(f"party process is not listening on {settings_path}: Connection refused")
        header = read_content(content).header
        kill_now = self.settings.name == party and mtype == message_type and header.round == 2 and not state["killed"]
        if kill_now and after_answering:
            original(self, mtype, meta, content)  # state and answer are on disk; the answer never leaves
        if kill_now:
            state["killed"] = True
            forget_runtime(settings_path)  # the warm process and everything in it are gone
            state["dead_until"] = time.monotonic() + 1.0
            raise PartyUnavailableError(f"party process is not listening on {settings_path}: Connection refused")
        before = self.repeats
        reply = original(self, mtype, meta, content)
        if self.settings.name == party and mtype != "query.identity":
            state["repeats"] += self.repeats - before
        return reply

    monkeypatch.setattr(runtime_module.PartyRuntime, "handle", handle)
    resumed = _serve(tmp_path / "killed", vertical, "vp-killed", **VERTICAL)
    assert state["killed"] and resumed["status"] == "ok" and resumed["recovery"]["attempt"] == 1
    assert resumed["recovery"]["resent_to"] == [party]
    assert state["repeats"] == (1 if after_answering else 0)  # the repeat was answered from the restored cache
    losses = np.array([e["train_loss"] for e in resumed["epochs"]]) - np.array([e["train_loss"] for e in base["epochs"]])
    assert np.max(np.abs(losses)) < 1e-4
    for name in ("bank", "tax_bureau"):
        a, b = _weights(base, vertical, name), _weights(resumed, vertical, name)
        assert _max_diff(a, b) < 5e-3 * max(1.0, max(float(np.max(np.abs(v))) for v in a.values()))
    events = [e["message"] for e in read_status(tmp_path / "killed")["events"]]
    assert any(m.startswith(f"paused: waiting for {party}") for m in events)
    secret = list((Path(next(p.state_dir for p in vertical if p.name == "bank")) / "recovery").rglob("*.bin"))
    assert secret and all(p.stat().st_mode & 0o777 == 0o600 for p in secret)
