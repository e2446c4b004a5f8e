"""fedrisk's SuperLink extension: bundles, long-poll wake-ups, the node registry, and the deployed path using them."""

from __future__ import annotations

import os
import threading

import pytest

from fedrisk.errors import FedriskError
from fedrisk.wire.bundles import (
    Bundle,
    BundleError,
    gather_messages,
    gather_objects,
)
from fedrisk.wire.flower_args import option_value, pop_option
from fedrisk.federation.superlink import (
    NodeRegistry,
    StateChanges,
    main,
    watch_state,
)


def _memory_state():
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()


def test_a_bundle_round_trips_and_refuses_malformed_bytes():
    objects = [("a" * 64, b"x" * 10), ("b" * 64, b""), ("c" * 64, os.urandom(70_000))]
    data = Bundle(b"\x08\x01", {"wait": 0.5, "confirmed": ["m"]}, objects).SerializeToString()
    back = Bundle.FromString(data)
    assert (back.head, back.meta, back.objects) == (b"\x08\x01", {"wait": 0.5, "confirmed": ["m"]}, objects)
    for bad in (b"", b"nope", data[:-1], data + b"\x00", data[:4] + b"\xff" * 8 + data[12:]):
        with pytest.raises(BundleError):
            Bundle.FromString(bad)


def test_objects_fill_a_bundle_up_to_its_budget_once_each_and_only_when_available():
    contents = {"a": b"1" * 4, "b": b"", "c": b"3" * 8, "d": b"4" * 2}
    carried, left = gather_objects(["a", "b", "c", "a", "d"], contents.get, budget=7)
    assert carried == [("a", b"1111"), ("d", b"44")]  # "c" does not fit, "b" is not uploaded yet
    assert left == ["b", "c"]


def test_a_pull_bundle_carries_each_object_once_and_confirms_only_whole_messages():
    from types import SimpleNamespace

    from flwr.proto.message_pb2 import ObjectTree  # pylint: disable=no-name-in-module

    def message(mid: str):
        return SimpleNamespace(metadata=SimpleNamespace(message_id=mid))

    def tree(root: str, *leaves: str) -> ObjectTree:
        return ObjectTree(object_id=root, children=[ObjectTree(object_id=leaf) for leaf in leaves])

    contents = {"m1": b"1", "shared": b"s", "m2": b"2", "m3": b"3"}  # "late" not uploaded yet
    asked: list[tuple[str, str]] = []
    confirmed_by_flower: list[str] = []

    def content_of(msg, object_id: str) -> bytes | None:
        asked.append((msg.metadata.message_id, object_id))
        return contents.get(object_id)

    messages = [(message("m1"), tree("m1", "shared")), (message("m2"), tree("m2", "shared")), (message("m3"), tree("m3", "late"))]
    objects, confirmed = gather_messages(messages, content_of, lambda msg: confirmed_by_flower.append(msg.metadata.message_id))
    assert objects == [("shared", b"s"), ("m1", b"1"), ("m2", b"2"), ("m3", b"3")]
    assert confirmed == confirmed_by_flower == ["m1", "m2"]  # m3 is missing "late": left to Flower's calls
    assert ("m2", "shared") not in asked  # carried once, with the first message
    assert gather_messages(messages, content_of, lambda msg: None, budget=2)[1] == ["m1"]  # the budget is the whole bundle's


def test_the_superlink_entry_point_takes_its_own_options_and_leaves_flowers():
    args = ["--fleet-api-address", "127.0.0.1:1", "--node-registry=/r.bin", "--no-bundles", "--database", ":flwr-in-memory:"]
    assert pop_option(args, "--node-registry") == "/r.bin"
    assert pop_option(args, "--no-bundles", flag=True) is True
    assert pop_option(args, "--no-bundles", flag=True) is False
    assert args == ["--fleet-api-address", "127.0.0.1:1", "--database", ":flwr-in-memory:"]
    assert option_value(args, "--database") == ":flwr-in-memory:" and option_value(args, "--port") is None
    assert option_value(["--port=9093"], "--port") == "9093" and option_value(["--port"], "--port") is None  # no value: not given


def test_a_stored_object_wakes_the_waiting_pulls_and_a_bundle_wakes_them_once():
    state = _memory_state()
    changes = StateChanges()
    watch_state(state, changes)
    watch_state(state, changes)  # idempotent
    generation = changes.generation
    state.store_object(1, "no-such-session", "0" * 64, b"")  # refused by Flower, still a change to look at
    assert changes.generation == generation + 1
    woke = threading.Event()
    before = changes.generation
    waiter = threading.Thread(target=lambda: changes.wait(before, 30) and woke.set())
    waiter.start()
    with changes.storing_bundle():
        for _ in range(5):
            state.store_object(1, "no-such-session", "0" * 64, b"")
    waiter.join(30)
    assert woke.is_set() and changes.generation == generation + 2


def test_the_node_registry_restores_the_same_node_ids_and_keeps_unregistered_keys_refused(tmp_path):
    from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.supercore.constant import NodeStatus

    registry = NodeRegistry(tmp_path / "nodes.bin")
    first = _memory_state()
    registry.watch(first)
    kept = first.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, b"key-kept", 0, name="bank")
    gone = first.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, b"key-gone", 0, name="stranger")
    first.delete_node(NOOP_FLWR_AID, gone)
    assert (tmp_path / "nodes.bin").stat().st_mode & 0o777 == 0o600

    restarted = _memory_state()  # what a restarted in-memory SuperLink starts from
    assert registry.restore(restarted) == 2
    assert restarted.get_node_id_by_public_key(b"key-kept") == kept
    assert restarted.get_node_id_by_public_key(b"key-gone") is None  # still unregistered: refused
    with pytest.raises(ValueError, match="already in use"):
        restarted.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, b"key-gone", 0)  # and never registered again
    # The running SuperNode's next heartbeat brings its node online again, under the same id.
    assert restarted.acknowledge_node_heartbeat(kept, 10)
    assert restarted.get_node_info(node_ids=[kept])[0].status == NodeStatus.ONLINE
    assert registry.restore(restarted) == 0  # nothing twice


def _registry_with_two_nodes(tmp_path):
    from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID

    registry = NodeRegistry(tmp_path / "nodes.bin")
    state = _memory_state()
    registry.watch(state)
    for key in (b"key-a", b"key-b"):
        state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, key, 0)
    return registry, state


def test_the_node_registry_is_private_even_over_a_stale_temporary_file_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID

    stale = tmp_path / "nodes.bin.tmp"
    stale.write_bytes(b"left by a crash")
    stale.chmod(0o644)
    registry, state = _registry_with_two_nodes(tmp_path)
    assert registry.path.stat().st_mode & 0o777 == 0o600
    before = registry.path.read_bytes()
    assert len(registry.load()) == 2

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, b"key-c", 0)
    assert registry.path.read_bytes() == before  # the old registry, whole
    assert not stale.exists()  # and no half-written copy next to it


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda data: data[:-3], "claims"),  # cut inside the last entry
        (lambda data: data + b"\x00\x01", "stray byte"),  # cut inside a length prefix
        (lambda data: b"\x00\x00\x00\x04\xff\xff\xff\xff", "not a NodeInfo"),
        (lambda data: b"\x00\x00\x00\x00", "no node id"),
        (lambda data: b"this is no registry at all", "claims"),
    ],
)
def test_a_damaged_node_registry_is_one_line_not_a_traceback_nor_lost_nodes(tmp_path, capsys, damage, why):
    registry, _ = _registry_with_two_nodes(tmp_path)
    registry.path.write_bytes(damage(registry.path.read_bytes()))
    with pytest.raises(FedriskError, match=why) as err:
        registry.load()
    assert "\n" not in str(err.value) and str(registry.path) in str(err.value)
    # The entry point refuses it before Flower starts: exit code 2, one line on stderr.
    assert main(["--node-registry", str(registry.path), "--database", ":flwr-in-memory:"]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith(f"error: node registry {registry.path} is damaged")
    assert "Traceback" not in out.err


@pytest.mark.e2e
def test_a_deployed_exchange_moves_each_message_in_one_request_and_survives_a_superlink_restart(tmp_path):
    """Echoes over the real processes: bundled calls only, and a killed SuperLink comes back with its nodes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import exchange as bench  # benchmarks/exchange.py

    from fedrisk.federation.local import LocalFederation

    settings = bench.parties(tmp_path, 2)
    with LocalFederation(tmp_path / "run", settings, bench.echo_config([0], 0, (1024,))) as federation:
        first = federation.run(run_config={**bench.echo_config([3], 1, (1024,)), "fedrisk-run-id": "bundles-1"}, timeout=300)
        assert len(first["echo"][0]["latencies_ms"]) == 3
        federation.kill_superlink()  # restarted by the next check, on the same ports, with its node registry
        second = federation.run(run_config={**bench.echo_config([2], 0, (1024,)), "fedrisk-run-id": "bundles-2"}, timeout=300)
        assert len(second["echo"][0]["latencies_ms"]) == 2
        assert federation.restarted == ["SuperLink"]  # the SuperNodes kept running: their node ids were restored
    log = (tmp_path / "run" / "logs" / "superlink.log").read_text()
    assert "/v1/fedrisk/push-messages" in log and "/v1/fedrisk/pull-messages" in log
    assert "/v1/runtime/push-object" not in log and "/v1/runtime/pull-object" not in log  # no per-object requests
    assert "node(s) restored" in log
    for party in settings:
        node_log = (tmp_path / "run" / "logs" / f"supernode-{party.name}.log").read_text()
        assert "query.echo" in node_log and "per-object calls" not in node_log and "Traceback" not in node_log
