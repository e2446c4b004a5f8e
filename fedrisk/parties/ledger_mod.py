"""The Flower mod that writes every message a party receives and sends to its ledger.

Installed on the fedrisk ClientApp itself, so no protocol can skip it: the
received message is recorded before the party handles it, the reply after,
stamped with this party's ledger head (:mod:`fedrisk.audit.recorder`). The
coordinator's head stamp on a received message is recorded, then removed
before the party's protocols see the message.

When the coordinator ends a run it sends a ``ledger.close`` query: the mod
answers it itself — received entry, signed run-close record, reply carrying
the head that includes the close record, sent entry — so the coordinator's
ledger holds evidence of where this party's ledger ended for the run.

The party's ledger and signing key live in its private state folder (node
config ``party-state-dir``, or the folder named by ``party-settings`` in the
Simulation Engine). Only the node's own configuration can turn recording off:
node config ``ledger = "off"`` (or ``false``/``0``). The run config comes from
the coordinator and cannot.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

_OFF = ("false", "0", "off", "no")


def _state_dir(context: Context) -> Path | None:
    state_dir = context.node_config.get("party-state-dir")
    if state_dir:
        return Path(str(state_dir))
    settings = context.node_config.get("party-settings")
    if settings:
        from fedrisk.parties.settings import PartySettings

        return Path(PartySettings.read(Path(str(settings))).state_dir)
    return None


def ledger_enabled(context: Context) -> bool:
    """Whether this node records: its node config alone decides (``ledger = "off"`` turns it off)."""
    return str(context.node_config.get("ledger", True)).strip().lower() not in _OFF


def _is_close(msg: Message) -> bool:
    from fedrisk.audit.recorder import CLOSE_STEP
    from fedrisk.federation import message_types as mt
    from fedrisk.federation.exchange import read_header

    if msg.metadata.message_type != mt.IDENTITY or not msg.has_content():
        return False
    try:
        return read_header(msg.content).step == CLOSE_STEP
    except Exception:  # undeclared content: the recorder (or the party) refuses it
        return False


def ledger_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Record ``msg`` as received and its reply as sent in this party's ledger."""
    from fedrisk.audit.recorder import without_head

    state_dir = _state_dir(context)
    recording = state_dir is not None and ledger_enabled(context)
    closing = _is_close(msg)
    if not recording:
        if closing:
            return _close_reply(msg, None)
        if msg.has_content():
            msg.content = without_head(msg.content)
        return call_next(msg, context)
    from fedrisk.audit.recorder import LEDGER_FILE, ExchangeRecorder, PendingRecord, with_head
    from fedrisk.parties.identity import PartyIdentity

    name = str(context.node_config.get("party", ""))
    identity = PartyIdentity.load_or_create(state_dir, name)
    recorder = ExchangeRecorder(state_dir / LEDGER_FILE, name, identity.signing)
    message_type = msg.metadata.message_type
    if closing:
        with recorder.open() as ledger:
            recorder.record(PendingRecord(msg.content, "received", message_type, receiver=name), ledger=ledger)
            recorder.close_run(_run_id(msg), ledger=ledger)
            reply = _close_reply(msg, ledger.head())
            recorder.record(PendingRecord(reply.content, "sent", message_type), ledger=ledger)
        return reply
    recorder.record(PendingRecord(msg.content, "received", message_type, receiver=name))
    msg.content = without_head(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        with recorder.open() as ledger:
            reply.content = with_head(reply.content, *ledger.head())
            recorder.record(PendingRecord(reply.content, "sent", message_type), ledger=ledger)
    return reply


def _run_id(msg: Message) -> str:
    from fedrisk.federation.exchange import read_header

    return read_header(msg.content).run_id


def _close_reply(msg: Message, head: tuple[int, str] | None) -> Message:
    """The answer to ``ledger.close``: stamped with the head that includes the run-close record."""
    from fedrisk.audit.recorder import with_head
    from fedrisk.federation.exchange import build_content, read_header

    header = read_header(msg.content).reply("public")
    if head is None:
        return Message(build_content(header, config={"ledger": "off"}), reply_to=msg)
    return Message(with_head(build_content(header, config={"ledger": "closed"}), *head), reply_to=msg)
