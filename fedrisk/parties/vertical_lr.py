"""A party's side of vertical logistic regression over Flower messages.

The protocol objects are :class:`~fedrisk.models.vertical_lr.LabelHolderLR` and
:class:`~fedrisk.models.vertical_lr.FeatureHolderLR`; this module feeds them the
payloads the coordinator relays and returns theirs. One epoch is four exchanges
(the coordinator's side is :mod:`fedrisk.federation.vertical_lr`)::

    vlr.scores     coordinator → feature holders   [masked] last epoch's X_kᵀd + r_k (none at epoch 0)
                   feature holders → coordinator   [ciphertext] [[u_k]]
    vlr.score_sum  coordinator → label holder      [aggregate] Σ_k [[u_k]]
                   label holder → coordinator      [ciphertext] [[d]] (+ the epoch's public control bits)
    vlr.residual   coordinator → feature holders   [ciphertext] [[d]]
                   feature holders → coordinator   [ciphertext] [[X_kᵀd + r_k]]
    vlr.products   coordinator → label holder      [ciphertext] every [[X_kᵀd + r_k]]
                   label holder → coordinator      [masked] per party m values (one per feature of X_kᵀd + r_k),
                                                   decrypted, reduced and flooded; m fixed from feature_counts

Control bits (improved / restart / stop) and metrics travel in the message's
public config; the content class describes the blobs.

Every party keeps a signed checkpoint bundle of its own block at the best epoch
so far (``models/<run-id>/``), replaced atomically after each epoch and by the
final bundle at the end: a party that leaves mid-training costs the others no
more than the epochs since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any


from fedrisk.errors import CryptoError, ProtocolError
from fedrisk.wire import message_types as mt
from fedrisk.protocols import vertical_lr as spec
from fedrisk.wire.config_values import config_bytes
from fedrisk.wire.exchange import Exchange, build_content
from fedrisk.parties.alignment import AlignedRowsProtocol, bank_only_metrics
from fedrisk.parties.durable_role import DurableRole
from fedrisk.parties.vertical_lr_state import FEATURE_HOLDER_FIELDS, LABEL_HOLDER_FIELDS

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.parties.protocol import Party


def load_public_context(blob: bytes, who: str):
    """Vertical LR's received public CKKS context; refuses one that carries a secret key.

    It arrives as the recipes layer's frame
    (:meth:`fedrisk.crypto.ckks.KeyHolderContext.public_bytes`) and loads as a
    :class:`~fedrisk.crypto.ckks.PublicContext`, its ``VERTICAL_LR`` parameters
    and fingerprint checked (SecureBoost's BFV context:
    :func:`fedrisk.crypto.bfv.load_public_bfv_context`).
    """
    from fedrisk.crypto.ckks import VERTICAL_LR, PublicContext

    try:
        return PublicContext.from_bytes(blob, expect=VERTICAL_LR)
    except (CryptoError, ProtocolError) as exc:
        raise type(exc)(f"{who}: {exc}") from None
    except CryptoError as exc:
        raise CryptoError(f"{who}: {exc}") from None


class LabelHolderVerticalLR(DurableRole, AlignedRowsProtocol):
    """The bank's handlers: key generation, residuals, decryption of masked products."""

    FIELDS = LABEL_HOLDER_FIELDS

    def __init__(self, runtime: "Party") -> None:
        super().__init__(runtime)
        self.model = None  # LabelHolderLR
        self.baseline: dict[str, float] = {}

    def close(self) -> None:
        """A new run replaces this one: its recovery state is no longer needed."""
        self.discard_durable()

    def _rebuild(self, static, aligned) -> None:
        from fedrisk.crypto.ckks import KeyHolderContext
        from fedrisk.models.vertical_lr import LabelHolderLR
        from fedrisk.parties.vertical_lr_state import from_json

        params = {k: from_json(v) for k, v in static.state.items()}
        model = LabelHolderLR(
            KeyHolderContext.from_bytes(static.blob("context")),
            name=self.name,
            C=float(params["c"]),
            max_epochs=int(params["epochs"]),
            patience=int(params["patience"]),
            tol=float(params["tol"]),
            momentum=bool(params["momentum"]),
        )
        model.setup(
            aligned.X,
            aligned.y,
            aligned.coverage,
            feature_names=aligned.feature_names,
            train_mask=aligned.train_mask,
            eval_mask=aligned.eval_mask,
        )
        self.model, self.baseline = model, dict(params["baseline"])

    def handlers(self) -> dict:
        return {mt.VLR_SETUP: self._on_setup, mt.VLR_RESIDUAL: self._on_score_sum, mt.VLR_DECRYPT: self._on_products}

    def _require_model(self):
        if self.model is None:
            raise ProtocolError(f"label holder {self.name!r} got a training step before setup")
        return self.model

    def _on_setup(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import LabelHolderLR, make_context

        aligned = self._aligned()
        assert aligned.y is not None and aligned.train_mask is not None
        context = make_context()  # generated here; the secret key never leaves this process
        params = spec.setup_params(exchange)
        model = LabelHolderLR(
            context,
            name=self.name,
            C=params.c,
            max_epochs=params.epochs,
            patience=params.patience,
            tol=params.tol,
            momentum=params.momentum,
        )
        plan = model.setup(
            aligned.X,
            aligned.y,
            aligned.coverage,
            feature_names=aligned.feature_names,
            train_mask=aligned.train_mask,
            eval_mask=aligned.eval_mask,
        )
        self.model = model
        self.baseline = bank_only_metrics(aligned, "vertical_lr", {"c": params.c})
        self._save_static(exchange, context, aligned, params)
        blobs = {
            "plan": plan.to_bytes(),
            "feature_holder_context": context.public_bytes(),  # public key + Galois keys, never the secret key
            "coordinator_context": context.public_bytes(minimal=True),  # the public key alone
        }
        header = exchange.header.reply(spec.SETUP.reply_class, model.fingerprint, step=spec.SETUP.reply)
        return build_content(header, blobs, {"rows": int(plan.n_rows), "train_rows": int(plan.n_train)})

    def _save_static(self, exchange: Exchange, context, aligned, params: spec.VerticalLRConfig) -> None:
        """What a restarted process needs to rebuild this run's model: the secret context (0600), the rows, the parameters."""
        from fedrisk.parties.vertical_lr_state import aligned_blobs

        values, blobs = aligned_blobs(aligned)
        values.update(
            c=params.c,
            epochs=params.epochs,
            patience=params.patience,
            tol=params.tol,
            momentum=params.momentum,
            baseline=dict(self.baseline),
        )
        secret = context.to_bytes()  # the KeyHolderContext recipe; Galois keys are regenerated on load
        self._durable(exchange.header.run_id).save_static(values, {**blobs, "context": secret})

    def _on_score_sum(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import EncryptedScoreSum

        model = self._require_model()
        if "feature_counts" in exchange.config:
            counts = json.loads(str(exchange.value("feature_counts")))
            for party, (n_features, n_products) in counts.items():
                model.record_feature_count(party, int(n_features), int(n_products))
        total = EncryptedScoreSum.from_bytes(exchange.blob("score_sum"), context=model.context)
        control, residual = model.receive_scores(total)
        entry = dict(model.history_[-1])
        config: dict[str, Any] = {"control": control.to_bytes(), "train_loss": float(entry["train_loss"])}
        for key in ("val_auc", "val_ks"):
            if key in entry:
                config[key] = float(entry[key])
        run_id = exchange.header.run_id
        if residual is None:
            bundle = self._write_bundle(run_id, final=True)
            config.update(self._final_metrics(), bundle=str(bundle))
            return build_content(exchange.header.reply("public", model.fingerprint, step=spec.SCORE_SUM.other_reply), config=config)
        if entry.get("improved"):
            self._write_bundle(run_id, final=False)
        header = exchange.header.reply("ciphertext", model.fingerprint, step=spec.SCORE_SUM.reply)
        return build_content(header, {"residual": residual.to_bytes()}, config)

    def _on_products(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import EncryptedMaskedGradient

        model = self._require_model()
        out = {}
        for name in sorted(exchange.blobs):
            party = name.removeprefix("product:")
            payload = EncryptedMaskedGradient.from_bytes(exchange.blobs[name], context=model.context)
            if payload.party != party:
                raise ProtocolError(f"product of {payload.party!r} relayed as {party!r}")
            out[f"masked:{party}"] = model.decrypt_gradient(payload).to_bytes()
        return build_content(exchange.header.reply(spec.PRODUCTS.reply_class, model.fingerprint, step=spec.PRODUCTS.reply), out)

    def _write_bundle(self, run_id: str, *, final: bool) -> Path:
        from fedrisk.models.scorecard import label_holder_bundle

        model = self._require_model()
        aligned = self._aligned()
        extra = {
            "status": "final" if final else "checkpoint",
            "intersection": aligned.intersection,
            "bank_only": self.baseline,
        }
        arrays, meta = label_holder_bundle(model, run_id=run_id, schema=self.runtime.settings.schema, extra=extra, best_so_far=not final)
        return self._write(run_id, arrays, meta)

    def _final_metrics(self) -> dict[str, Any]:
        model = self._require_model()
        aligned = self._aligned()
        best = next((h for h in model.history_ if h["epoch"] == model.best_epoch_), model.history_[-1])
        out: dict[str, Any] = {
            "best_epoch": int(model.best_epoch_),
            "epochs": int(model.n_epochs_),
            "rows": int(aligned.X.shape[0]),
            "train_rows": int(model.n_train_),
        }  # the intersection sizes stay with the label holder (fedrisk.parties.alignment.read_alignment_report)
        if model.eval_auc_ is not None:  # measured on rows early stopping never saw
            out.update(auc_federated=float(model.eval_auc_), ks_federated=float(model.eval_ks_))
        elif "val_auc" in best:
            out.update(auc_federated=float(best["val_auc"]), ks_federated=float(best["val_ks"]))
        out.update({f"{k}_bank_only": v for k, v in self.baseline.items()})
        return out


class FeatureHolderVerticalLR(DurableRole, AlignedRowsProtocol):
    """A feature holder's handlers: partial scores, X_kᵀ[[d]] masked, its own update."""

    FIELDS = FEATURE_HOLDER_FIELDS

    def __init__(self, runtime: "Party") -> None:
        super().__init__(runtime)
        self.model = None  # FeatureHolderLR
        self.label_holder = ""

    def handlers(self) -> dict:
        return {
            mt.VLR_JOIN: self._on_join,
            mt.VLR_SCORES: self._on_scores,
            mt.VLR_GRADIENT: self._on_residual,
            mt.VLR_FINISH: self._on_finish,
        }

    def _require_model(self):
        if self.model is None:
            raise ProtocolError(f"feature holder {self.name!r} got a training step before joining")
        return self.model

    def close(self) -> None:
        """Stop the product kernel's worker processes (a new run replaces this one)."""
        if self.model is not None:
            self.model.close()
        self.discard_durable()

    def _rebuild(self, static, aligned) -> None:
        from fedrisk.models.vertical_lr import FeatureHolderLR, TrainingPlan
        from fedrisk.parties.vertical_lr_state import from_json

        params = {k: from_json(v) for k, v in static.state.items()}
        context = load_public_context(static.blob("context"), f"feature holder {self.name!r}")
        plan = TrainingPlan.from_bytes(static.blob("plan"), context=context)
        model = FeatureHolderLR(context, name=self.name, n_jobs=int(params["n_jobs"]))
        model.setup(aligned.X, aligned.coverage[self.name], plan, feature_names=aligned.feature_names, momentum=bool(params["momentum"]))
        self.model, self.label_holder = model, plan.label_holder

    def _after_restore(self) -> None:
        if self.model is not None and self.model.done_:
            self.model.close()

    def _on_join(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import FeatureHolderLR, TrainingPlan

        aligned = self._aligned()
        context = load_public_context(exchange.blob("context"), f"feature holder {self.name!r}")
        plan = TrainingPlan.from_bytes(exchange.blob("plan"), context=context)
        if self.model is not None:
            self.model.close()
        params = spec.join_params(exchange)
        model = FeatureHolderLR(context, name=self.name, n_jobs=params.n_jobs)
        model.setup(aligned.X, aligned.coverage[self.name], plan, feature_names=aligned.feature_names, momentum=params.momentum)
        self.model, self.label_holder = model, plan.label_holder
        from fedrisk.parties.vertical_lr_state import aligned_blobs

        values, blobs = aligned_blobs(aligned)
        values.update(n_jobs=params.n_jobs, momentum=params.momentum)
        self._durable(exchange.header.run_id).save_static(values, {**blobs, "context": exchange.blob("context"), "plan": exchange.blob("plan")})
        config = {"n_features": int(model.n_features_in_), "n_products": int(model.layout_.n_ciphertexts), "mask_bits": int(model.mask_bits_)}
        return build_content(exchange.header.reply(spec.JOIN.reply_class, model.fingerprint, step=spec.JOIN.reply), config=config)

    def _on_scores(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import MaskedGradient

        model = self._require_model()
        if "masked_gradient" in exchange.blobs:
            model.update(MaskedGradient.from_bytes(exchange.blob("masked_gradient"), context=model.context))
        elif model.epoch_ > 0:
            raise ProtocolError(f"feature holder {self.name!r} at epoch {model.epoch_} got no masked gradient to apply")
        scores = model.scores()
        return build_content(exchange.header.reply(spec.SCORES.reply_class, model.fingerprint, step=spec.SCORES.reply), {"scores": scores.to_bytes()})

    def _apply_control(self, exchange: Exchange) -> None:
        from fedrisk.models.vertical_lr import EpochControl

        model = self._require_model()
        control = EpochControl.from_bytes(config_bytes(exchange, "control"), context=model.context)
        model.control(control)
        if control.improved and not control.stop:
            self._write_bundle(exchange.header.run_id, final=False)

    def _on_residual(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.vertical_lr import EncryptedResidual

        model = self._require_model()
        self._apply_control(exchange)
        residual = EncryptedResidual.from_bytes(exchange.blob("residual"), context=model.context)
        product = model.gradient(residual)
        return build_content(exchange.header.reply(spec.RESIDUAL.reply_class, model.fingerprint, step=spec.RESIDUAL.reply), {"product": product.to_bytes()})

    def _on_finish(self, exchange: Exchange) -> "RecordDict":
        model = self._require_model()
        self._apply_control(exchange)
        if not model.done_:
            raise ProtocolError(f"feature holder {self.name!r} was told to finish without a stop bit")
        bundle = self._write_bundle(exchange.header.run_id, final=True)
        return build_content(exchange.header.reply(spec.FINISH.reply_class, model.fingerprint, step=spec.FINISH.reply), config={"bundle": str(bundle)})

    def _write_bundle(self, run_id: str, *, final: bool) -> Path:
        from fedrisk.models.scorecard import feature_holder_bundle

        model = self._require_model()
        arrays, meta = feature_holder_bundle(
            model,
            run_id=run_id,
            label_holder=self.label_holder,
            schema=self.runtime.settings.schema,
            extra={"status": "final" if final else "checkpoint"},
            best_so_far=not final,
        )
        return self._write(run_id, arrays, meta)
