"""A party's side of vertical SecureBoost over Flower messages.

The protocol objects are :class:`~fedrisk.models.secureboost.LabelHolderSB` and
:class:`~fedrisk.models.secureboost.FeatureHolderSB` (read
:mod:`fedrisk.models.secureboost` for the algorithm, the payloads and the
threat model); this module feeds them what the coordinator relays. A round is
two exchanges (the coordinator's side is :mod:`fedrisk.federation.secureboost`)::

    sb.round  coordinator → feature holder   what the bank's outbox holds for it:
                                             masked histograms under its own key [ciphertext],
                                             split decisions, "done" [public]
              feature holder → coordinator   masked totals [masked],
                                             split partitions [public]
    sb.bank   coordinator → label holder     every feature holder's replies
              label holder → coordinator     its next outbox, per feature holder

Payloads of several kinds share a message as :mod:`fedrisk.wire.payload_batch`
describes. The label holder trains on its training rows only; once the trees are
done each feature holder answers its splits for the validation rows (public, as
at scoring time) so that the bank can measure the joint model, and each party
writes a signed bundle of its own part.

Each party keeps its protocol state on disk as it goes (label holder: its
context, its rows, each feature holder's encrypted bins — kept once, in the static
state — and the tree being grown with its masks; feature holder: its rows, its own
bins key, its routing table and row sets), written before each answer
leaves, so a restarted party process picks the run up where its last answer
left it (:mod:`fedrisk.parties.secureboost_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedrisk.errors import ProtocolError
from fedrisk.protocols import secureboost as spec
from fedrisk.wire.config_values import config_bytes, config_int
from fedrisk.wire.exchange import Exchange, build_content
from fedrisk.parties.alignment import AlignedRowsProtocol, bank_only_metrics
from fedrisk.wire.payload_batch import BatchItem, batch_class, batch_content, batch_items
from fedrisk.parties.secureboost_state import FEATURE_HOLDER_FIELDS, LABEL_HOLDER_FIELDS
from fedrisk.parties.durable_role import DurableRole

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.parties.protocol import Party


def _item(payload, party: str = "") -> BatchItem:
    return BatchItem(payload.to_bytes(), payload.content_class, party)


class LabelHolderSecureBoost(DurableRole, AlignedRowsProtocol):
    """The bank's handlers: the plan, every round's decisions, the final evaluation."""

    FIELDS = LABEL_HOLDER_FIELDS

    def __init__(self, runtime: "Party") -> None:
        super().__init__(runtime)
        self.model = None  # LabelHolderSB
        self.answers: dict[str, Any] = {}
        self.baseline: dict[str, float] = {}
        self.final: dict[str, Any] | None = None

    def handlers(self) -> dict:
        return {spec.SETUP.message_type: self._on_setup, spec.BANK.message_type: self._on_round}

    def close(self) -> None:
        """A new run replaces this one: stop the histogram evaluators' workers; its recovery state (with the secret key) is no longer needed."""
        if self.model is not None:
            self.model.close()
        self.discard_durable()

    def _make_model(self, context, params: dict[str, Any], aligned):
        """The label holder's model (``params``: its keywords, :func:`fedrisk.protocols.secureboost.setup_params`), set up on the training rows; returns ``(model, plan)``."""
        from fedrisk.models.secureboost import LabelHolderSB

        train = aligned.train_mask
        assert aligned.y is not None and train is not None
        model = LabelHolderSB(context, name=self.name, **params)
        coverage = {p: c[train] for p, c in aligned.coverage.items()}
        plan = model.setup(aligned.X[train], aligned.y[train], coverage, feature_names=aligned.feature_names)
        return model, plan

    def _rebuild(self, static, aligned) -> None:
        from fedrisk.crypto.bfv import load_key_holder_bfv_context
        from fedrisk.parties.vertical_lr_state import from_json

        values = {k: from_json(v) for k, v in static.state.items()}
        context = load_key_holder_bfv_context(static.blob("context"), f"label holder {self.name!r}")
        self.model, _ = self._make_model(context, dict(values["params"]), aligned)
        self.baseline = dict(values["baseline"])
        from fedrisk.models.secureboost import BinLayout

        for name in sorted(static.blob_refs):
            if name.startswith("bins:"):  # each feature holder's encrypted bins, kept once when they arrived
                self.model.load_bins(BinLayout.from_bytes(static.blob(name), context=context))

    def _capture(self) -> tuple[int, dict[str, Any], dict[str, bytes]]:
        from fedrisk.parties.secureboost_state import StateEncoder, capture

        model = self.model
        assert model is not None
        values, blobs = capture(model, self.FIELDS)
        encoder = StateEncoder("wrapper:")
        values["wrapper"] = encoder.encode({"final": self.final, "answers": sorted(self.answers)})
        blobs.update(encoder.blobs)
        blobs.update({f"answers:{party}": payload.to_bytes() for party, payload in self.answers.items()})
        return int(max(model.tree_, 0)), values, blobs

    def _apply(self, values: dict[str, Any], state) -> None:
        from fedrisk.models.secureboost import SplitAnswers
        from fedrisk.parties.secureboost_state import apply, decode

        model = self.model
        assert model is not None
        apply(model, self.FIELDS, values, state)
        wrapper = decode(values["wrapper"], state)
        self.final = wrapper["final"]
        self.answers = {p: SplitAnswers.from_bytes(state.blob(f"answers:{p}"), context=model.context) for p in wrapper["answers"]}

    def _on_setup(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.bfv import public_bfv_context_bytes
        from fedrisk.models.secureboost import make_label_holder_context
        from fedrisk.parties.vertical_lr_state import aligned_blobs

        aligned = self._aligned()
        train = aligned.train_mask
        assert aligned.y is not None and train is not None
        context = make_label_holder_context()  # generated here; the secret key never leaves this process
        params = spec.setup_params(exchange)
        model, plan = self._make_model(context, params, aligned)
        self.model, self.answers, self.final = model, {}, None
        self.baseline = bank_only_metrics(aligned, "secureboost", model.params.to_dict())
        # What a restarted process needs to rebuild this run's model: the secret context (0600), the rows, the parameters.
        values, blobs = aligned_blobs(aligned)
        values.update(params=params, baseline=dict(self.baseline))
        secret = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        self._durable(exchange.header.run_id).save_static(values, {**blobs, "context": secret})
        blobs = {
            "plan": plan.to_bytes(),
            "feature_holder_context": public_bfv_context_bytes(context, galois=False),
            "coordinator_context": public_bfv_context_bytes(context, galois=False),
        }
        config = {
            "rows": int(train.size),
            "train_rows": int(train.sum()),
            "train_mask": np.packbits(train).tobytes(),  # public by protocol: the row split
        }
        return build_content(exchange.header.reply(spec.SETUP.reply_class, model.fingerprint, step=spec.SETUP.reply), blobs, config)

    def _on_round(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import BinLayout, SplitAnswers, parse_payload

        model = self.model
        if model is None:
            raise ProtocolError(f"label holder {self.name!r} got a SecureBoost round before setup")
        trees_before = len(model.history_) if hasattr(model, "history_") else 0
        for item in batch_items(exchange):
            payload = parse_payload(item.data, context=model.context)
            sender = getattr(payload, "party", item.party)
            if sender != item.party:
                raise ProtocolError(f"a payload of {sender!r} was relayed as {item.party!r}")
            if isinstance(payload, BinLayout):
                model.register_layout(payload)
                if payload.layout is not None:
                    self._keep_bins(exchange.header.run_id, payload.party, item.data)
            elif isinstance(payload, SplitAnswers):
                self.answers[payload.party] = payload
            else:
                model.receive(payload)
        config: dict[str, Any] = {"tree": int(max(model.tree_, 0))}
        if len(model.history_) > trees_before:
            last = model.history_[-1]
            config.update(trees_done=len(model.history_), train_loss=float(last.get("train_loss", float("nan"))))
        items = [_item(p, party) for party, payloads in sorted(model.outbox().items()) for p in payloads]
        if model.done_ and not items:
            if self.final is None:
                self.final = self._evaluate_and_save(exchange.header.run_id)
            config.update(self.final, done=True)
        header = exchange.header.reply(batch_class(items), model.fingerprint, step=spec.BANK.reply)
        return batch_content(header, items, config)

    def _keep_bins(self, run_id: str, party: str, data: bytes) -> None:
        """A feature holder's encrypted bins join the static state, once: a restarted bank rebuilds its evaluator from them.

        Not the per-message state: that is hashed and written after every message, and the bins are ≈ 120 MB.
        """
        from fedrisk.parties.vertical_lr_state import from_json

        durable = self._durable(run_id)
        static = durable.static.load()
        if static is None:
            raise ProtocolError(f"label holder {self.name!r} has no setup state to keep {party!r}'s bins with")
        values = {k: from_json(v) for k, v in static.state.items()}
        durable.save_static(values, {**{name: static.blob(name) for name in static.blob_refs}, f"bins:{party}": data})

    def _evaluate_and_save(self, run_id: str) -> dict[str, Any]:
        from fedrisk.models.metrics import auc, ks
        from fedrisk.models.secureboost import label_holder_bundle

        model = self.model
        assert model is not None
        aligned = self._aligned()
        if aligned.train_mask is None or aligned.y is None:
            raise ProtocolError(f"label holder {self.name!r} has no labels or training split in its aligned rows")
        val = ~aligned.train_mask
        missing = sorted(set(model.active_) - set(self.answers)) if hasattr(model, "active_") else []
        if missing:
            raise ProtocolError(f"no validation answers from {', '.join(missing)}")
        out: dict[str, Any] = {
            "trees": int(model.params.n_trees),
            "rows": int(val.size),
            "train_rows": int((~val).sum()),
        }  # the intersection sizes stay with the label holder (fedrisk.parties.alignment.read_alignment_report)
        if val.any():
            z = model.decision_function(aligned.X[val], {p: self.answers.get(p) for p in model.feature_holders_})
            y = aligned.y[val]
            # Report on the same rows as every other model of this federation (no early stopping here).
            keep = aligned.eval_mask[val] if aligned.eval_mask is not None and aligned.eval_mask.any() else np.ones(val.sum(), bool)
            out.update(auc_federated=float(auc(y[keep], z[keep])), ks_federated=float(ks(y[keep], z[keep])))
        out.update({f"{k}_bank_only": v for k, v in self.baseline.items()})
        arrays, meta = label_holder_bundle(model)
        meta.update(
            run_id=run_id, party=self.name, status="final", intersection=aligned.intersection, bank_only=self.baseline, schema=self.runtime.settings.schema
        )
        out["bundle"] = str(self._write(run_id, arrays, meta))
        return out


class FeatureHolderSecureBoost(DurableRole, AlignedRowsProtocol):
    """A feature holder's handlers: bins, encrypted histograms, its own splits."""

    FIELDS = FEATURE_HOLDER_FIELDS

    def __init__(self, runtime: "Party") -> None:
        super().__init__(runtime)
        self.model = None  # FeatureHolderSB
        self.train_mask: np.ndarray | None = None

    def handlers(self) -> dict:
        return {spec.JOIN.message_type: self._on_join, spec.ROUND.message_type: self._on_round}

    def close(self) -> None:
        """A new run replaces this one: drop its recovery state (with its bins key)."""
        self.discard_durable()

    def _make_model(self, context, plan, train: np.ndarray, bins_key=None):
        """The feature holder's model, set up on its training rows (under ``bins_key``, or a fresh key of its own); returns ``(model, bin layout)``."""
        from fedrisk.models.secureboost import FeatureHolderSB

        X, cov = self._own_rows()
        model = FeatureHolderSB(context, name=self.name, bins_key=bins_key)
        layout = model.setup(X[train], cov[train], plan, feature_names=self._aligned().feature_names)
        return model, layout

    def _rebuild(self, static, aligned) -> None:
        from fedrisk.crypto.bfv import load_key_holder_bfv_context, load_public_bfv_context
        from fedrisk.crypto.encrypted_histogram import HistogramLayout
        from fedrisk.models.secureboost import BoostPlan
        from fedrisk.parties.vertical_lr_state import from_json

        values = {k: from_json(v) for k, v in static.state.items()}

        context = load_public_bfv_context(static.blob("context"), f"feature holder {self.name!r}")
        plan = BoostPlan.from_bytes(static.blob("plan"), context=context)
        train = np.unpackbits(np.frombuffer(static.blob("train_mask"), dtype=np.uint8), count=int(values["rows"])).astype(bool)
        bins_key = None
        if static.has_blob("bins_key"):
            bins_key = load_key_holder_bfv_context(static.blob("bins_key"), f"feature holder {self.name!r}")
        model, layout = self._make_model(context, plan, train, bins_key)
        announced = None if values["layout"] is None else HistogramLayout.from_dict(dict(values["layout"]))
        announced_key = static.blob("bins_public") if static.has_blob("bins_public") else b""
        if layout.layout != announced or layout.bins_context != announced_key:
            raise ProtocolError(f"feature holder {self.name!r}: the rebuilt bins differ from the ones it announced")
        self.model, self.train_mask = model, train

    def _capture(self) -> tuple[int, dict[str, Any], dict[str, bytes]]:
        from fedrisk.parties.secureboost_state import capture

        model = self.model
        assert model is not None
        values, blobs = capture(model, self.FIELDS)
        return int(max(model._tree, 0)), values, blobs

    def _apply(self, values: dict[str, Any], state) -> None:
        from fedrisk.parties.secureboost_state import apply

        assert self.model is not None
        apply(self.model, self.FIELDS, values, state)

    def _after_restore(self) -> None:
        if self.model is not None and self.model.done_:
            self.model.close()

    def _own_rows(self) -> tuple[np.ndarray, np.ndarray]:
        aligned = self._aligned()
        X = aligned.X.copy()
        cov = aligned.coverage[self.name]
        X[~cov] = np.nan  # an SME this party does not know is missing in every feature
        return X, cov

    def _on_join(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import BoostPlan
        from fedrisk.parties.vertical_lr_state import aligned_blobs

        from fedrisk.crypto.bfv import load_public_bfv_context

        context = load_public_bfv_context(exchange.blob("context"), f"feature holder {self.name!r}")
        plan = BoostPlan.from_bytes(exchange.blob("plan"), context=context)
        aligned = self._aligned()
        rows = config_int(exchange, "rows")
        if rows != aligned.X.shape[0]:
            raise ProtocolError(f"{self.name}: the plan covers {rows} rows, this party aligned {aligned.X.shape[0]}")
        packed = config_bytes(exchange, "train_mask")
        train = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=rows).astype(bool)
        if self.model is not None:
            self.model.close()
        model, layout = self._make_model(context, plan, train)
        self.model, self.train_mask = model, train
        values, blobs = aligned_blobs(aligned)
        # what it announced, without the ≈ 120 MB of ciphertexts: a rebuilt holder checks its layout and key against these
        values.update(rows=rows, layout=None if layout.layout is None else layout.layout.to_dict())
        assert model.bins_key_ is not None or layout.layout is None
        self._durable(exchange.header.run_id).save_static(
            values,
            {
                **blobs,
                "context": exchange.blob("context"),
                "plan": exchange.blob("plan"),
                "train_mask": packed,
                **({"bins_public": layout.bins_context} if layout.layout is not None else {}),
                # its own secret bins key (0600 like every recovery file): a restarted process decrypts under it again
                **({"bins_key": model.bins_key_.serialize(save_public_key=True, save_secret_key=True)} if model.bins_key_ is not None else {}),
            },
        )
        items = [_item(layout)]
        return batch_content(exchange.header.reply(batch_class(items), model.fingerprint, step=spec.JOIN.reply), items)

    def _on_round(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import TrainingDone, answer_splits, feature_holder_bundle, parse_payload

        model = self.model
        if model is None or self.train_mask is None:
            raise ProtocolError(f"feature holder {self.name!r} got a SecureBoost round before joining")
        payloads = [parse_payload(item.data, context=model.context) for item in batch_items(exchange)]
        replies = model.handle(payloads)
        items = [_item(p) for p in replies]
        config: dict[str, Any] = {}
        if any(isinstance(p, TrainingDone) for p in payloads):
            X, _ = self._own_rows()
            # The bank measures the joint model on its validation rows: this party's
            # split answers for them, exactly what it would answer at scoring time.
            items.append(_item(answer_splits(model.routing_table_, X[~self.train_mask], fingerprint=model.fingerprint)))
            arrays, meta = feature_holder_bundle(model)
            meta.update(run_id=exchange.header.run_id, party=self.name, status="final", schema=self.runtime.settings.schema)
            config["bundle"] = str(self._write(exchange.header.run_id, arrays, meta))
        return batch_content(exchange.header.reply(batch_class(items), model.fingerprint, step=spec.ROUND.reply), items, config)
