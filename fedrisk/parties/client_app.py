"""The fedrisk ClientApp: a thin relay from Flower to the party's warm process.

In the Deployment Engine the SuperNode runs this in a fresh process for every
message, so it imports nothing heavy: it forwards the message content to the
party process named by the node config key ``party-socket`` and returns the
answer.  Without that key (Flower's Simulation Engine, where ClientApps live
in long-lived workers) it runs the same party runtime in-process.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrisk.wire.exchange import ECHO, echo_reply
from fedrisk.wire.message_types import MESSAGE_TYPES
from fedrisk.parties.ledger_mod import ledger_mod
from fedrisk.parties.relay import relay_call

# Every message in and out of a party goes through its audit ledger.
app = ClientApp(mods=[ledger_mod])


def _relay(msg: Message, context: Context) -> Message:
    meta = {
        "run_id": int(msg.metadata.run_id),
        "message_id": msg.metadata.message_id,
        "group_id": msg.metadata.group_id,
        "node_id": int(msg.metadata.dst_node_id),
    }
    socket_path = context.node_config.get("party-socket")
    if msg.metadata.message_type == ECHO:
        # A transport probe (benchmarks/exchange.py): through the warm party process and back when
        # there is one; the reply carries only what the coordinator sent, readdressed.
        content = relay_call(str(socket_path), ECHO, meta, msg.content) if socket_path else msg.content
        return Message(echo_reply(content, str(context.node_config.get("party", ""))), reply_to=msg)
    if socket_path:
        reply = relay_call(str(socket_path), msg.metadata.message_type, meta, msg.content)
    else:
        from fedrisk.parties.registry import runtime_for_context  # heavy: only in simulation

        reply = runtime_for_context(context).handle(msg.metadata.message_type, meta, msg.content)
    return Message(reply, reply_to=msg)


for _message_type in (*MESSAGE_TYPES, ECHO):
    _category, _action = _message_type.split(".")
    getattr(app, _category)(_action)(_relay)
