"""The Deployment Engine transport tuning: SuperNode poll schedule, coordinator pull delays, echo, in-process Runtime API."""

from __future__ import annotations

import importlib
import threading

import pytest
from flwr.app import Message

from fedrisk.errors import ProtocolError
from fedrisk.wire.exchange import (
    ECHO,
    ExchangeHeader,
    build_content,
    echo_reply,
    read_content,
)
from fedrisk.federation.session import FIRST_PULL_DELAY, CoordinatorSession
from fedrisk.parties import supernode


def test_the_supernode_loop_gets_the_activity_driven_poll():
    from flwr.supernode import start_client_internal as loop

    seen = []
    poll = supernode.tune_supernode_loop(on_message=lambda: seen.append(1))
    assert loop.time.poll is poll and loop._pull_and_store_message._fedrisk
    # right after a message: a fast pull; long idle: the cap; a reply wait: the short look
    poll.activity()
    assert poll.idle_interval() == supernode.FAST_POLL_SECONDS
    poll.last_activity -= 3600
    assert poll.idle_interval() == supernode.IDLE_POLL_SECONDS
    poll.last_activity += 3600 - 0.3
    assert poll.idle_interval() == pytest.approx(0.03, abs=0.005)
    loop.time.sleep(3)  # Flower's idle sleep goes through the schedule
    assert poll.idle_sleeps >= 1 and poll.last_idle_sleep <= supernode.IDLE_POLL_SECONDS


def test_the_supernode_hands_its_state_to_the_warm_executor():
    holder: dict = {}
    assert supernode.capture_node_state(holder)
    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    assert cli.start_client_internal._fedrisk


def test_coordinator_pulls_start_fast_and_slow_down():
    session = CoordinatorSession(grid=None, run_id="r", poll_interval=0.05)  # type: ignore[arg-type]
    assert session.pull_delay(0.0) == FIRST_PULL_DELAY
    assert session.pull_delay(0.2) == pytest.approx(0.02)
    assert session.pull_delay(60.0) == 0.05


def test_an_echo_returns_only_what_was_sent_and_only_public_content():
    content = build_content(ExchangeHeader("r", 1, "echo", "coordinator", "bank", "public"), blobs={"payload": b"x" * 100})
    back = read_content(echo_reply(content, "bank"))
    assert back.header.sender == "bank" and back.header.receiver == "coordinator" and back.blob("payload") == b"x" * 100
    with pytest.raises(ProtocolError, match="addressed to 'bank'"):
        echo_reply(content, "tax_bureau")
    secret = build_content(ExchangeHeader("r", 1, "echo", "coordinator", "bank", "ciphertext", "fp"), blobs={"payload": b"c"})
    with pytest.raises(ProtocolError, match="'public' content only"):
        echo_reply(secret, "bank")


def test_the_client_app_echoes_through_the_ledger_mod(tmp_path):
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedrisk.parties.client_app import app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    content = build_content(ExchangeHeader("r", 1, "echo", "coordinator", "bank", "public"), blobs={"payload": b"abc"})
    msg = Message(content, dst_node_id=7, message_type=ECHO)
    msg.metadata.__dict__["_message_id"] = "m1"
    context = Context(run_id=1, node_id=7, node_config={"party": "bank", "party-state-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    reply = app(msg, context)
    assert read_content(reply.content).blob("payload") == b"abc"
    assert (tmp_path / "ledger.sqlite").exists()  # both directions recorded


def test_the_in_process_runtime_client_refuses_an_unknown_token():
    from flwr.proto.runtime_pb2 import PullTaskInputRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.error import FlowerError
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    from fedrisk.parties.warm_executor import InProcessRuntimeClient

    state = NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()
    with pytest.raises(FlowerError):
        InProcessRuntimeClient(state, "not-a-token").PullTaskInput(PullTaskInputRequest())
    assert not InProcessRuntimeClient(state).AcquireTask.__self__.token


def test_the_warm_executor_claims_announced_tasks_without_rescanning_the_node(monkeypatch):
    """A full AcquireTask scans every task the node ever ran: made at most every IDLE_WAIT_SECONDS, not per message."""
    from flwr.proto.runtime_pb2 import AcquireTaskResponse  # pylint: disable=no-name-in-module

    from fedrisk.parties import warm_executor
    from fedrisk.parties.warm_executor import (
        IDLE_WAIT_SECONDS,
        InProcessRuntimeClient,
        WarmClientAppExecutor,
    )

    clock = [100.0]
    monkeypatch.setattr(warm_executor.time, "monotonic", lambda: clock[0])

    class Client(InProcessRuntimeClient):
        def AcquireTask(self, request):
            return AcquireTaskResponse()  # nothing unannounced

    executor = WarmClientAppExecutor("127.0.0.1:0", state=lambda: None)
    announced: list[str] = []
    executor._claim_created = lambda client: announced.pop(0) if announced else None  # type: ignore[method-assign]
    client = Client(state=None)
    waits: list[float] = []

    class Wakeup(threading.Event):
        def wait(self, timeout=None):  # no sleeping in this test: record how long it would wait
            waits.append(timeout)
            return False

    executor.wakeup = Wakeup()
    assert executor._next_task(client) is None and executor.scans == 1  # the first look scans
    for i in range(20):  # a message announced, claimed by id, then the look after it: no scan
        announced.append(f"t{i}")
        executor.notify()
        assert executor._next_task(client) == f"t{i}"
        assert executor._next_task(client) is None
    assert executor.scans == 1 and all(0 < w <= IDLE_WAIT_SECONDS for w in waits)
    clock[0] += IDLE_WAIT_SECONDS  # quiet for that long: the fallback scan again
    assert executor._next_task(client) is None and executor.scans == 2
