"""The Flower mod that writes every message a party receives and sends to its ledger.

Installed on the fedrisk ClientApp itself, so no protocol can skip it: the
received message is recorded before the party handles it, the reply after.
The party's ledger and signing key live in its private state folder (node
config ``party-state-dir``, or the folder named by ``party-settings`` in the
Simulation Engine).  Run config ``ledger = false`` turns recording off (for
the overhead benchmark only).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable


def _state_dir(context: Context) -> Path | None:
    state_dir = context.node_config.get("party-state-dir")
    if state_dir:
        return Path(str(state_dir))
    settings = context.node_config.get("party-settings")
    if settings:
        from fedrisk.parties.settings import PartySettings

        return Path(PartySettings.read(Path(str(settings))).state_dir)
    return None


def ledger_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Record ``msg`` as received and its reply as sent in this party's ledger."""
    state_dir = _state_dir(context)
    if state_dir is None or str(context.run_config.get("ledger", True)).lower() in ("false", "0"):
        return call_next(msg, context)
    from fedrisk.audit.recorder import LEDGER_FILE, ExchangeRecorder, PendingRecord
    from fedrisk.parties.identity import PartyIdentity

    name = str(context.node_config.get("party", ""))
    identity = PartyIdentity.load_or_create(state_dir, name)
    recorder = ExchangeRecorder(state_dir / LEDGER_FILE, name, identity.signing)
    message_type = msg.metadata.message_type
    recorder.record(PendingRecord(msg.content, "received", message_type, receiver=name))
    reply = call_next(msg, context)
    if reply.has_content():
        recorder.record(PendingRecord(reply.content, "sent", message_type))
    return reply
