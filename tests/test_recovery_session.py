"""CoordinatorSession on a scripted grid: liveness probes, lost messages, pauses, strays (no processes, a few seconds)."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest
from flwr.app import Message
from flwr.serverapp import Grid

from fedrisk.errors import PartyUnavailableError
from fedrisk.wire import message_types as mt
from fedrisk.federation import session as session_module
from fedrisk.wire.exchange import build_content, read_content
from fedrisk.federation.session import CoordinatorSession, PartyInfo
from fedrisk.federation.status import RunStatus


class ScriptedGrid(Grid):
    """Each node answers after ``delay`` seconds; ``lose`` drops the first copy of a node's next request."""

    def __init__(self, delays: dict[int, float]) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.delays = delays
        self.lose: set[int] = set()
        self.offline: set[int] = set()
        self.ready: dict[str, tuple[float, Message]] = {}
        self.pushed: list[tuple[int, str]] = []
        self.pulled: set[str] = set()

    def get_node_ids(self):
        return [n for n in self.delays if n not in self.offline]

    def set_run(self, run_id):
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            header = read_content(msg.content).header
            self.pushed.append((node, header.step))
            ids.append(mid)
            if node in self.lose and header.step != "liveness.probe":
                self.lose.discard(node)  # this copy vanishes with a SuperNode that died after pulling it
                continue
            reply_header = header.reply("public")
            reply_header = type(reply_header)(**{**reply_header.__dict__, "sender": f"party{node}"})
            reply = Message(build_content(reply_header), reply_to=msg)
            delay = 0.05 if header.step == "liveness.probe" else self.delays[node]
            self.ready[mid] = (time.monotonic() + delay, reply)
        return ids

    def pull_messages(self, message_ids):
        now, out = time.monotonic(), []
        for mid in list(message_ids):
            entry = self.ready.get(mid)
            if entry is not None and entry[0] <= now:
                del self.ready[mid]
                self.pulled.add(mid)
                out.append(entry[1])
        return out


def _session(grid: ScriptedGrid, **kwargs) -> CoordinatorSession:
    session = CoordinatorSession(grid, "run-1", poll_interval=0.01, timeout=20.0, **kwargs)
    for node in grid.delays:
        session.parties[f"party{node}"] = PartyInfo(f"party{node}", "bank", node, "", "", "")
    return session


def _request(session: CoordinatorSession, name: str):
    return mt.FEDAVG_TRAIN, build_content(session.header(1, "fedavg.train", name, "public"))


def test_a_slow_party_is_probed_and_the_probe_answer_is_still_pulled(tmp_path):
    grid = ScriptedGrid({7: 1.0})
    session = _session(grid, probe_after=0.3)
    replies = session.exchange({"party7": _request(session, "party7")})
    assert set(replies) == {"party7"}
    assert (7, "liveness.probe") in grid.pushed  # silent for 0.3 s: probed
    assert session.drain(timeout=5) == 0  # ...and the probe's answer is pulled, so the ledger has both ends
    assert not grid.ready


def test_a_lost_message_pauses_the_run_and_is_sent_again(tmp_path, monkeypatch):
    monkeypatch.setattr(session_module, "LOST_GRACE", 0.2)
    monkeypatch.setattr(session_module, "RESEND_BACKOFF", 0.2)
    grid = ScriptedGrid({7: 0.1, 8: 0.1})
    grid.lose.add(8)
    status = RunStatus(tmp_path / "status.json", "run-1")
    session = _session(grid, probe_after=0.3, pause_timeout=10.0, status=status)
    replies = session.exchange({name: _request(session, name) for name in ("party7", "party8")})
    assert set(replies) == {"party7", "party8"}
    assert [step for node, step in grid.pushed if node == 8] == ["fedavg.train", "liveness.probe", "fedavg.train"]
    assert session.rounds_redone_parties == {"party8"}
    events = [e["message"] for e in status.data["events"]]
    assert "paused: waiting for party8 (its SuperNode restarted and lost the message)" in events
    assert "resumed: every party answered" in events


def test_a_party_that_stays_away_fails_the_run_after_the_pause_timeout(monkeypatch):
    monkeypatch.setattr(session_module, "LOST_GRACE", 0.1)
    monkeypatch.setattr(session_module, "RESEND_BACKOFF", 0.1)
    grid = ScriptedGrid({8: 0.1})
    grid.lose.add(8)
    grid.offline.add(8)  # lost, then never back online: nothing is resent into the void
    session = _session(grid, probe_after=0.2, pause_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(PartyUnavailableError, match=r"party party8 failed at step 'fedavg.train': did not come back within pause-timeout 1 s"):
        session.exchange({"party8": _request(session, "party8")})
    assert time.monotonic() - started < 10
    assert [step for node, step in grid.pushed if node == 8].count("fedavg.train") == 1


def test_without_a_pause_timeout_a_lost_message_fails_at_once(monkeypatch):
    monkeypatch.setattr(session_module, "LOST_GRACE", 0.1)
    grid = ScriptedGrid({8: 0.1})
    grid.lose.add(8)
    session = _session(grid, probe_after=0.2)
    with pytest.raises(PartyUnavailableError, match="its SuperNode restarted and lost the message"):
        session.exchange({"party8": _request(session, "party8")})
