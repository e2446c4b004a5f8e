"""The coordinator's side of vertical logistic regression over Flower messages.

It holds only the label holder's *public* CKKS context (no Galois keys, no
secret key — :class:`~fedrisk.models.vertical_lr.CoordinatorLR` refuses a
secret one), adds the feature holders' encrypted partial scores, and relays
every other payload after checking it against the routing policy (which
payload kind may travel on which link, made under which context). See
:mod:`fedrisk.parties.vertical_lr` for the message flow of an epoch and
:mod:`fedrisk.models.vertical_lr` for the protocol and its threat model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fedrisk.protocols import vertical_lr as spec
from fedrisk.protocols.vertical_lr import VerticalLRConfig
from fedrisk.federation.alignment import VerticalRoles
from fedrisk.wire.config_values import config_bytes, config_float, config_int
from fedrisk.wire.exchange import build_content
from fedrisk.federation.session import CoordinatorSession

if TYPE_CHECKING:
    from fedrisk.checkpoint import Checkpoint, CheckpointStore

COORDINATOR = "coordinator"


@dataclass
class VerticalLRResult:
    """What the coordinator saw: sizes and the label holder's public metrics, never data."""

    epochs: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    bundles: dict[str, str] = field(default_factory=dict)
    key_fingerprint: str = "-"
    label_holder: str = ""
    rows: int = 0


def run_vertical_lr(
    session: CoordinatorSession,
    roles: VerticalRoles,
    config: VerticalLRConfig,
    *,
    progress: Callable[[int, dict], None] | None = None,
    checkpoints: "CheckpointStore | None" = None,
    resume: "Checkpoint | None" = None,
    alignment: dict | None = None,
) -> VerticalLRResult:
    """Set up the parties and run epochs until the label holder says stop.

    With ``checkpoints`` the coordinator saves, after the setup and after every
    completed epoch, what the next epoch starts from: the masked gradients it
    still has to deliver, the feature counts, the public context and the
    per-epoch rows (``alignment`` — aligned rows and PSI time — is kept with
    them). With ``resume`` (a checkpoint of the same configuration) it skips
    the setup and starts at the epoch after the checkpoint's: the parties keep
    their blocks, momentum and masks warm, and answer a repeated request of an
    epoch they already served from their reply cache, so no party applies an
    update twice.
    """
    from fedrisk.models.vertical_lr import CoordinatorLR, EncryptedMaskedGradient, EncryptedScores
    from fedrisk.parties.vertical_lr import load_public_context

    lh, fhs = roles.label_holder, roles.feature_holders
    result = VerticalLRResult(label_holder=lh)
    digest = roles.checkpoint_digest("vertical_lr", config)
    status = session.status
    status.set(protocol="vertical_lr", unit="epoch", rounds=config.epochs, state="running")

    if resume is not None:
        state = resume.state
        context_blob = resume.blob("coordinator_context")
        fp = str(state["key_fingerprint"])
        counts = {p: list(v) for p, v in state["counts"].items()}
        result.rows = int(state["train_rows"])
        result.epochs = list(state["rows"])
        masked = {p: resume.blob(f"masked:{p}") for p in fhs if resume.has_blob(f"masked:{p}")}
        epoch = int(state["next_epoch"])
        status.set(resumed_from=epoch - 1 if epoch > 0 else None)
        status.event(f"resumed at epoch {epoch} from the checkpoint")
        coordinator = roles.coordinator(CoordinatorLR, load_public_context(context_blob, "coordinator"), fp)
    else:
        status.set(step=spec.SETUP.request)
        setup_request = build_content(session.header(0, spec.SETUP.request, lh, spec.SETUP.request_class), config=config.setup_config())
        setup = session.exchange({lh: (spec.SETUP.message_type, setup_request)})[lh]
        context_blob = setup.blob("coordinator_context")
        fp = setup.header.key_fingerprint
        result.rows = config_int(setup, "rows")
        coordinator = roles.coordinator(CoordinatorLR, load_public_context(context_blob, "coordinator"), fp)
        plan = coordinator.relay(lh, fhs[0], setup.blob("plan"))
        joined = session.exchange(
            {
                p: (
                    spec.JOIN.message_type,
                    build_content(
                        session.header(0, spec.JOIN.request, p, spec.JOIN.request_class, fp),
                        {"plan": plan, "context": setup.blob("feature_holder_context")},
                        config.join_config(),
                    ),
                )
                for p in fhs
            }
        )
        counts = {p: [config_int(r, "n_features"), config_int(r, "n_products")] for p, r in joined.items()}
        masked = {}
        epoch = 0
    result.key_fingerprint = fp

    def save(next_epoch: int) -> None:
        if checkpoints is None:
            return
        state = {
            "key_fingerprint": fp,
            "counts": counts,
            "train_rows": result.rows,
            "rows": result.epochs,
            "next_epoch": next_epoch,
            "alignment": alignment or {},
        }
        blobs = {"coordinator_context": context_blob, **{f"masked:{p}": data for p, data in masked.items()}}
        checkpoints.save("vertical_lr", next_epoch, state, blobs, config_sha256=digest)

    if resume is None:
        save(0)
    while True:
        status.set(round=epoch, step=spec.SCORES.request)
        started, bytes_before = time.perf_counter(), session.traffic.total()
        requests = {}
        for p in fhs:
            blobs = {"masked_gradient": coordinator.relay(lh, p, masked[p])} if masked else None
            header = session.header(epoch, spec.SCORES.request, p, "masked" if masked else "public", fp)
            requests[p] = (spec.SCORES.message_type, build_content(header, blobs, {"epoch": epoch}))
        scores = session.exchange(requests)
        partials = [EncryptedScores.from_bytes(coordinator.relay(p, COORDINATOR, r.blob("scores")), context=coordinator.context) for p, r in scores.items()]
        total = coordinator.sum_scores(partials)
        config_lh: dict[str, object] = {"epoch": epoch}
        if epoch == 0:
            config_lh["feature_counts"] = json.dumps(counts, sort_keys=True)
        status.set(step=spec.SCORE_SUM.request)
        score_sum = {"score_sum": coordinator.relay(COORDINATOR, lh, total.to_bytes())}
        header = session.header(epoch, spec.SCORE_SUM.request, lh, spec.SCORE_SUM.request_class, fp)
        decision = session.exchange({lh: (spec.SCORE_SUM.message_type, build_content(header, score_sum, config_lh))})[lh]
        control = coordinator.relay(lh, fhs[0], config_bytes(decision, "control"))
        row = {"epoch": epoch, "train_loss": config_float(decision, "train_loss")}
        for key in ("val_auc", "val_ks"):
            if key in decision.config:
                row[key] = config_float(decision, key)
        if "residual" not in decision.blobs:  # the label holder stopped: its best epoch is final
            result.final = dict(decision.config)
            result.final.pop("control", None)
            result.bundles[lh] = str(decision.value("bundle"))
            finished = session.exchange(
                {
                    p: (
                        spec.FINISH.message_type,
                        build_content(session.header(epoch, spec.FINISH.request, p, spec.FINISH.request_class, fp), config={"control": control}),
                    )
                    for p in fhs
                }
            )
            result.bundles.update({p: str(r.value("bundle")) for p, r in finished.items()})
            row.update(seconds=time.perf_counter() - started, bytes=session.traffic.total() - bytes_before)
            result.epochs.append(row)
            if checkpoints is not None:
                checkpoints.save("vertical_lr", epoch + 1, {"rows": result.epochs}, config_sha256=digest, finished=True)
            if progress is not None:
                progress(epoch, row)
            return result
        residual = decision.blob("residual")
        status.set(step=spec.RESIDUAL.request)
        products = session.exchange(
            {
                p: (
                    spec.RESIDUAL.message_type,
                    build_content(
                        session.header(epoch, spec.RESIDUAL.request, p, spec.RESIDUAL.request_class, fp),
                        {"residual": coordinator.relay(lh, p, residual)},
                        {"control": control},
                    ),
                )
                for p in fhs
            }
        )
        blobs = {}
        for p, reply in products.items():
            data = coordinator.relay(p, lh, reply.blob("product"))
            EncryptedMaskedGradient.from_bytes(data, context=coordinator.context)  # well-formed, right key
            blobs[f"product:{p}"] = data
        status.set(step=spec.PRODUCTS.request)
        header = session.header(epoch, spec.PRODUCTS.request, lh, spec.PRODUCTS.request_class, fp)
        decrypted = session.exchange({lh: (spec.PRODUCTS.message_type, build_content(header, blobs))})[lh]
        masked = {p: decrypted.blob(f"masked:{p}") for p in fhs}
        row.update(seconds=time.perf_counter() - started, bytes=session.traffic.total() - bytes_before)
        result.epochs.append(row)
        save(epoch + 1)
        if progress is not None:
            progress(epoch, row)
        epoch += 1
