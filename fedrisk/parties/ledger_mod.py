"""The Flower mod that writes every message a party receives and sends to its ledger.

Installed on the fedrisk ClientApp itself, so no protocol can skip it: a
message and the party's reply to it are recorded together, in one durable
transaction committed *before the reply is handed back to Flower* — nothing
leaves the party that its ledger does not already hold, with the request it
answers. The reply is stamped, inside that transaction, with the ledger head
that includes the request's entry (:mod:`fedrisk.audit.recorder`). The request's
entry keeps the time the message arrived. The ledger is checked before the
party handles the message (a file altered by someone else, or under another
key, refuses the message as before). A message whose handling fails (no
reply content) is recorded on its own before the failure is reported. A crash
while the party handles a message leaves neither entry: no reply left, and
the coordinator's ledger shows a message sent that this party never recorded —
the same finding as a crash on receipt. The coordinator's head stamp on a
received message is recorded, then removed before the party's protocols see
the message.

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

import contextlib
import os
import threading
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

_OFF = ("false", "0", "off", "no")

#: state folder -> (signing key file's (inode, mtime, size), identity): the key is read once, not per message.
_identities: dict[tuple[str, str], tuple[tuple[int, int, int], object]] = {}
_identities_lock = threading.Lock()


def _identity(state_dir: Path, name: str):
    """The party's identity, loaded again only when its signing key file changed."""
    from fedrisk.parties.identity import SIGNING_KEY_FILE, PartyIdentity

    key = (os.fspath(state_dir), name)
    try:
        st = os.stat(state_dir / SIGNING_KEY_FILE)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    with _identities_lock:
        cached = _identities.get(key)
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]
        identity = PartyIdentity.load_or_create(state_dir, name)
        st = os.stat(state_dir / SIGNING_KEY_FILE)
        _identities[key] = ((st.st_ino, st.st_mtime_ns, st.st_size), identity)
        return identity


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
    from fedrisk.wire import message_types as mt
    from fedrisk.wire.exchange import read_header

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
    if state_dir is None or not recording:
        if closing:
            return _close_reply(msg, None)
        if msg.has_content():
            msg.content = without_head(msg.content)
        return call_next(msg, context)
    from fedrisk.audit.recorder import (
        LEDGER_FILE,
        ExchangeRecorder,
        PendingRecord,
        with_head,
    )

    arrived_us = time.time_ns() // 1000
    name = str(context.node_config.get("party", ""))
    identity = _identity(state_dir, name)
    recorder = ExchangeRecorder(state_dir / LEDGER_FILE, name, identity.signing)
    message_type = msg.metadata.message_type
    if closing:
        with recorder.open() as ledger:
            recorder.record(PendingRecord(msg.content, "received", message_type, receiver=name), ledger=ledger)
            recorder.close_run(_run_id(msg), ledger=ledger)
            reply = _close_reply(msg, ledger.head())
            recorder.record(PendingRecord(reply.content, "sent", message_type), ledger=ledger)
            ledger.checkpoint()  # the run is over: its entries into the main file
        return reply
    # Digest now (undeclared content is refused before the party sees it); stored with the reply.
    received = recorder.entry(PendingRecord(msg.content, "received", message_type, receiver=name), timestamp_us=arrived_us)
    # A ledger that could not take the entries (altered file, wrong key) refuses the message before the party handles it.
    recorder.check()
    msg.content = without_head(msg.content)
    try:
        reply = call_next(msg, context)
    except BaseException:
        recorder.record_chain(received)  # the failure is reported only once the message is on record
        raise
    if not reply.has_content():
        recorder.record_chain(received)
        return reply
    unstamped = reply.content

    def reply_entry(count: int, head: str):
        # Inside the transaction, after the request's entry: the head includes it.
        reply.content = with_head(unstamped, count, head)
        return recorder.entry(PendingRecord(reply.content, "sent", message_type))

    # One durable transaction for the request and the reply, committed before the reply leaves.
    try:
        recorder.record_chain(received, reply_entry)
    except Exception:
        # The reply cannot be recorded (undeclared content, another sender, a failed write): it does
        # not leave, and the request is still put on record, alone, if the ledger takes it.
        with contextlib.suppress(Exception):  # the first failure is the one to report
            recorder.record_chain(received)
        raise
    return reply


def _run_id(msg: Message) -> str:
    from fedrisk.wire.exchange import read_header

    return read_header(msg.content).run_id


def _close_reply(msg: Message, head: tuple[int, str] | None) -> Message:
    """The answer to ``ledger.close``: stamped with the head that includes the run-close record."""
    from fedrisk.audit.recorder import with_head
    from fedrisk.wire.exchange import build_content, read_header

    header = read_header(msg.content).reply("public")
    if head is None:
        return Message(build_content(header, config={"ledger": "off"}), reply_to=msg)
    return Message(with_head(build_content(header, config={"ledger": "closed"}), *head), reply_to=msg)
