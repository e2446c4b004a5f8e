"""The coordinator's side of vertical SecureBoost over Flower messages.

It holds only the label holder's public context (no secret key:
:class:`~fedrisk.models.secureboost.CoordinatorSB` refuses one) and relays:
each round it hands every feature holder what the bank's outbox holds for it,
then hands the bank every reply — checking each payload against the routing
policy (kind per link, context fingerprint, the party named in it) on the way.
See :mod:`fedrisk.parties.secureboost` for the messages of a round and
:mod:`fedrisk.models.secureboost` for the protocol and its threat model.

Recovery: with a :class:`~fedrisk.checkpoint.CheckpointStore` the
coordinator checkpoints after the setup and after every completed round (the
bank's round and the feature holders' answers to it) what the next round starts
from — the replies it still has to hand the bank, the public context, the
counters and the per-tree rows — and a resubmitted run resumes from there. The
parties keep their own state (warm, and on disk for a restarted process) and
answer a repeated request from their reply cache, so no round is applied twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fedrisk.errors import ProtocolError
from fedrisk.protocols import secureboost as spec
from fedrisk.protocols.secureboost import SecureBoostConfig
from fedrisk.federation.alignment import VerticalRoles
from fedrisk.wire.config_values import config_bytes, config_int
from fedrisk.wire.exchange import build_content
from fedrisk.wire.payload_batch import BatchItem, batch_class, batch_content, batch_items
from fedrisk.federation.session import CoordinatorSession

if TYPE_CHECKING:
    from fedrisk.checkpoint import Checkpoint, CheckpointStore


@dataclass
class SecureBoostResult:
    """What the coordinator saw: per-tree progress, sizes, the bank's public metrics."""

    trees: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    bundles: dict[str, str] = field(default_factory=dict)
    key_fingerprint: str = "-"
    rounds: int = 0


def run_secureboost(
    session: CoordinatorSession,
    roles: VerticalRoles,
    config: SecureBoostConfig,
    *,
    progress: Callable[[int, dict], None] | None = None,
    checkpoints: "CheckpointStore | None" = None,
    resume: "Checkpoint | None" = None,
    alignment: dict | None = None,
) -> SecureBoostResult:
    """Set up the parties and relay rounds until the bank has evaluated the finished model.

    With ``checkpoints`` the coordinator saves, after the setup and after every
    completed round, what the next round starts from: the feature holders'
    replies still to be handed to the bank (as relayed, one blob each), the
    public context, the round and tree counters, the per-tree rows and the
    bundles reported so far (``alignment`` — aligned rows and PSI time — is kept
    with them). With ``resume`` (a checkpoint of the same configuration) it skips
    the setup and starts with the bank's round after the checkpoint's: the
    parties keep their state, and answer a request they already served from
    their reply cache, so no round is applied twice.
    """
    from fedrisk.crypto.bfv import load_public_bfv_context
    from fedrisk.models.secureboost import CoordinatorSB

    lh, fhs = roles.label_holder, roles.feature_holders
    result = SecureBoostResult()
    digest = roles.checkpoint_digest("secureboost", config)
    status = session.status
    status.set(protocol="secureboost", unit="round", state="running")
    if resume is not None:
        state = resume.state
        context_blob = resume.blob("coordinator_context")
        fp = str(state["key_fingerprint"])
        coordinator = roles.coordinator(CoordinatorSB, load_public_bfv_context(context_blob, "coordinator"), fp)
        result.rounds, trees_done = int(state["rounds"]), int(state["trees_done"])
        result.trees, result.bundles = list(state["trees"]), dict(state["bundles"])
        to_bank = [BatchItem(resume.blob(f"to_bank:{i}"), str(item["class"]), str(item["party"])) for i, item in enumerate(state["to_bank"])]
        status.set(resumed_from=result.rounds)
        status.event(f"resumed at round {result.rounds + 1} (tree {trees_done + 1}) from the checkpoint")
    else:
        status.set(step=spec.SETUP.request)
        setup_request = build_content(session.header(0, spec.SETUP.request, lh, spec.SETUP.request_class), config=config.setup_config())
        setup = session.exchange({lh: (spec.SETUP.message_type, setup_request)})[lh]
        fp = setup.header.key_fingerprint
        context_blob = setup.blob("coordinator_context")
        coordinator = roles.coordinator(CoordinatorSB, load_public_bfv_context(context_blob, "coordinator"), fp)
        plan = coordinator.relay(lh, fhs[0], setup.blob("plan"))
        status.set(step=spec.JOIN.request)
        joined = session.exchange(
            {
                p: (
                    spec.JOIN.message_type,
                    build_content(
                        session.header(0, spec.JOIN.request, p, spec.JOIN.request_class, fp),
                        {"plan": plan, "context": setup.blob("feature_holder_context")},
                        {"rows": config_int(setup, "rows"), "train_mask": config_bytes(setup, "train_mask")},
                    ),
                )
                for p in fhs
            }
        )
        to_bank = [BatchItem(coordinator.relay(p, lh, item.data), item.content_class, p) for p, r in joined.items() for item in batch_items(r)]
        trees_done = 0
    result.key_fingerprint = fp

    def save() -> None:
        if checkpoints is None:
            return
        state = {
            "key_fingerprint": fp,
            "rounds": result.rounds,
            "trees_done": trees_done,
            "trees": result.trees,
            "bundles": result.bundles,
            "alignment": alignment or {},
            "to_bank": [{"class": item.content_class, "party": item.party} for item in to_bank],
        }
        blobs = {"coordinator_context": context_blob, **{f"to_bank:{i}": item.data for i, item in enumerate(to_bank)}}
        checkpoints.save("secureboost", result.rounds, state, blobs, config_sha256=digest)

    if resume is None:
        save()
    started = time.perf_counter()
    while True:
        result.rounds += 1
        round_ = result.rounds
        status.set(round=round_, step=spec.BANK.request, tree=trees_done)
        header = session.header(round_, spec.BANK.request, lh, batch_class(to_bank), fp)
        bank = session.exchange({lh: (spec.BANK.message_type, batch_content(header, to_bank))})[lh]
        if int(bank.value("trees_done", trees_done)) > trees_done:  # type: ignore[call-overload]
            trees_done = int(bank.value("trees_done"))  # type: ignore[call-overload]
            row = {
                "tree": trees_done - 1,
                "seconds": time.perf_counter() - started,
                "bytes": session.traffic.total(),
                "train_loss": float(bank.value("train_loss", float("nan"))),  # type: ignore[arg-type]
            }
            result.trees.append(row)
            started = time.perf_counter()
            if progress is not None:
                progress(trees_done - 1, row)
        if bank.value("done", False):
            result.final = {k: v for k, v in bank.config.items() if not k.startswith("item") and k not in ("done",)}
            result.bundles[lh] = str(bank.value("bundle"))
            if checkpoints is not None:
                checkpoints.save("secureboost", round_, {"trees": result.trees}, config_sha256=digest, finished=True)
            return result
        outbox: dict[str, list[BatchItem]] = {}
        for item in batch_items(bank):
            outbox.setdefault(item.party, []).append(BatchItem(coordinator.relay(lh, item.party, item.data), item.content_class))
        if not outbox:
            raise ProtocolError("SecureBoost stalled: the label holder sent nothing and is not done")
        status.set(step=spec.ROUND.request)
        replies = session.exchange(
            {
                p: (spec.ROUND.message_type, batch_content(session.header(round_, spec.ROUND.request, p, batch_class(items), fp), items))
                for p, items in outbox.items()
            }
        )
        to_bank = [BatchItem(coordinator.relay(p, lh, item.data), item.content_class, p) for p, r in replies.items() for item in batch_items(r)]
        result.bundles.update({p: str(r.value("bundle")) for p, r in replies.items() if "bundle" in r.config})
        save()


def secureboost_summary(result: SecureBoostResult) -> dict:
    """The coordinator-side result fields of a SecureBoost run."""
    final = dict(result.final)
    final.pop("intersection", None)  # the label holder's to know (its alignment report), never the coordinator's
    return {
        "trees": result.trees,
        "rounds": result.rounds,
        "final": final,
        "bundles": result.bundles,
        "key_fingerprint": result.key_fingerprint,
    }
