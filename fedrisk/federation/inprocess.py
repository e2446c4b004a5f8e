"""Run the fedrisk ServerApp and ClientApp in one process, message by message.

:class:`InProcessGrid` is a Flower ``Grid`` that delivers each pushed message
straight to the ClientApp of its destination node (each node with its own
``Context`` and its own party runtime) and keeps the reply for the next pull.
The ServerApp and ClientApp code is exactly what runs on the Deployment
Engine; only the transport is gone.  It is the simulation lab's default
engine (Flower's Ray engine is optional) and lets tests observe every
message that would cross a party line (``tap``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.supercore.run import Run
from flwr.serverapp import Grid

from fedrisk.parties.settings import PartySettings

#: Called with (direction, party node id, message) for every message: "to_party" or "to_coordinator".
Tap = Callable[[str, int, Message], None]


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are ClientApps in this process."""

    def __init__(
        self,
        parties: list[PartySettings],
        *,
        run_id: int = 1,
        tap: Tap | None = None,
        run_config: dict | None = None,
        node_config: dict | None = None,
    ) -> None:
        """``node_config``: extra node-config keys for every party (e.g. ``{"ledger": "off"}``), as a
        researcher who runs every node of a simulation sets them; a run config cannot."""
        from fedrisk.parties.client_app import app as client_app

        from flwr.supercore.task_identity import TaskIdentity

        self.client_app = client_app
        self.tap = tap
        self._run = Run.create_empty(run_id)
        # Flower's Message constructor reads the run/node id of the current task.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = 1
        TaskIdentity.task_id = 1
        self.contexts: dict[int, Context] = {}
        for index, party in enumerate(parties):
            node_id = 1000 + index
            settings_path = Path(party.state_dir) / "settings.json"
            Path(party.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            party.write(settings_path)
            self.contexts[node_id] = Context(
                run_id=run_id,
                node_id=node_id,
                node_config={
                    **(node_config or {}),
                    "party": party.name,
                    "party-settings": str(settings_path),
                    "party-state-dir": party.state_dir,
                },
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
        self._replies: dict[str, Message] = {}
        self.offline: set[int] = set()

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self._run = Run.create_empty(int(run_id))

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_src_node_id"] = 1
            node_id = msg.metadata.dst_node_id
            if self.tap is not None:
                self.tap("to_party", node_id, msg)
            context = self.contexts.get(node_id)
            if context is None or node_id in self.offline:
                reply = Message(_error(f"node {node_id} is offline"), reply_to=msg)
            else:
                try:
                    reply = self.client_app(msg, context)
                except Exception as err:  # the Deployment Engine turns these into error replies too
                    reply = Message(_error(f"<class '{type(err).__module__}.{type(err).__name__}'>:<'{err}'>"), reply_to=msg)
            reply.metadata.__dict__["_reply_to_message_id"] = msg.metadata.message_id
            if self.tap is not None and reply.has_content():
                self.tap("to_coordinator", node_id, reply)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        deadline = time.monotonic() + (timeout or 0)
        replies = list(self.pull_messages(ids))
        while len(replies) < len(ids) and timeout is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return replies


def _error(reason: str):
    from flwr.app import Error

    return Error(code=0, reason=reason)
