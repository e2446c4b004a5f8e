"""A party's side of vertical SecureBoost over Flower messages.

The protocol objects are :class:`~fedrisk.models.secureboost.LabelHolderSB` and
:class:`~fedrisk.models.secureboost.FeatureHolderSB` (read
:mod:`fedrisk.models.secureboost` for the algorithm, the payloads and the
threat model); this module feeds them what the coordinator relays. A round is
two exchanges (the coordinator's side is :mod:`fedrisk.federation.secureboost`)::

    sb.round  coordinator → feature holder   what the bank's outbox holds for it:
                                             [[g + ih]] [ciphertext], split decisions,
                                             histogram requests, "done" [public]
              feature holder → coordinator   encrypted histograms [ciphertext],
                                             split partitions [public]
    sb.bank   coordinator → label holder     every feature holder's replies
              label holder → coordinator     its next outbox, per feature holder

Payloads of several kinds share a message as :mod:`fedrisk.federation.payload_batch`
describes. The label holder trains on its training rows only; once the trees are
done each feature holder answers its splits for the validation rows (public, as
at scoring time) so that the bank can measure the joint model, and each party
writes a signed bundle of its own part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedrisk.errors import ProtocolError
from fedrisk.federation import message_types as mt
from fedrisk.federation.exchange import Exchange, build_content
from fedrisk.parties.alignment import AlignedRowsProtocol, bank_only_metrics
from fedrisk.federation.payload_batch import BatchItem, batch_class, batch_content, batch_items
from fedrisk.parties.vertical_lr import _public_context_bytes, load_public_context

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.parties.runtime import PartyRuntime


def _item(payload, party: str = "") -> BatchItem:
    return BatchItem(payload.to_bytes(), payload.content_class, party)


class LabelHolderSecureBoost(AlignedRowsProtocol):
    """The bank's handlers: the plan, every round's decisions, the final evaluation."""

    def __init__(self, runtime: "PartyRuntime") -> None:
        super().__init__(runtime)
        self.model = None  # LabelHolderSB
        self.answers: dict[str, Any] = {}
        self.baseline: dict[str, float] = {}
        self.final: dict[str, Any] | None = None

    def handlers(self) -> dict:
        return {mt.SB_SETUP: self._on_setup, mt.SB_BANK_ROUND: self._on_round}

    def _on_setup(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import LabelHolderSB
        from fedrisk.models.vertical_lr import make_context

        aligned = self._aligned()
        train = aligned.train_mask
        assert aligned.y is not None and train is not None
        context = make_context()  # generated here; the secret key never leaves this process
        model = LabelHolderSB(
            context,
            name=self.name,
            n_trees=int(exchange.value("trees", 30)),  # type: ignore[call-overload]
            max_depth=int(exchange.value("depth", 3)),  # type: ignore[call-overload]
            learning_rate=float(exchange.value("learning_rate", 0.3)),  # type: ignore[arg-type]
            reg_lambda=float(exchange.value("l2", 1.0)),  # type: ignore[arg-type]
            min_child_weight=float(exchange.value("min_child_weight", 1.0)),  # type: ignore[arg-type]
            subsample=float(exchange.value("subsample", 1.0)),  # type: ignore[arg-type]
            n_bins=int(exchange.value("bins", 32)),  # type: ignore[call-overload]
            random_state=int(exchange.value("seed", 0)),  # type: ignore[call-overload]
        )
        coverage = {p: c[train] for p, c in aligned.coverage.items()}
        plan = model.setup(aligned.X[train], aligned.y[train], coverage, feature_names=aligned.feature_names)
        self.model = model
        self.baseline = bank_only_metrics(aligned, "secureboost", {
            "trees": model.params.n_trees, "depth": model.params.max_depth, "learning_rate": model.params.learning_rate,
            "bins": model.params.n_bins, "l2": model.params.reg_lambda,
        })
        blobs = {
            "plan": plan.to_bytes(),
            "feature_holder_context": _public_context_bytes(context, galois=True),
            "coordinator_context": _public_context_bytes(context, galois=False),
        }
        config = {
            "rows": int(train.size),
            "train_rows": int(train.sum()),
            "train_mask": np.packbits(train).tobytes(),  # public by protocol: the row split
        }
        return build_content(exchange.header.reply("public", model.fingerprint, step="sb.plan"), blobs, config)

    def _on_round(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import BinLayout, SplitAnswers, parse_payload

        model = self.model
        if model is None:
            raise ProtocolError(f"label holder {self.name!r} got a SecureBoost round before setup")
        trees_before = len(model.history_) if hasattr(model, "history_") else 0
        for item in batch_items(exchange):
            payload = parse_payload(item.data, context=model.context)
            if getattr(payload, "party", item.party) != item.party:
                raise ProtocolError(f"a payload of {payload.party!r} was relayed as {item.party!r}")
            if isinstance(payload, BinLayout):
                model.register_layout(payload)
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
        header = exchange.header.reply(batch_class(items), model.fingerprint, step="sb.outbox")
        return batch_content(header, items, config)

    def _evaluate_and_save(self, run_id: str) -> dict[str, Any]:
        import json

        from fedrisk.models.metrics import auc, ks
        from fedrisk.models.secureboost import label_holder_bundle

        model = self.model
        assert model is not None
        aligned = self._aligned()
        val = ~aligned.train_mask
        missing = sorted(set(model.active_) - set(self.answers)) if hasattr(model, "active_") else []
        if missing:
            raise ProtocolError(f"no validation answers from {', '.join(missing)}")
        out: dict[str, Any] = {
            "trees": int(model.params.n_trees),
            "rows": int(val.size),
            "train_rows": int((~val).sum()),
            "intersection": json.dumps(aligned.intersection, sort_keys=True),
        }
        if val.any():
            z = model.decision_function(aligned.X[val], {p: self.answers.get(p) for p in model.feature_holders_})
            y = aligned.y[val]
            # Report on the same rows as every other model of this federation (no early stopping here).
            keep = aligned.eval_mask[val] if aligned.eval_mask is not None and aligned.eval_mask.any() else np.ones(val.sum(), bool)
            out.update(auc_federated=float(auc(y[keep], z[keep])), ks_federated=float(ks(y[keep], z[keep])))
        out.update({f"{k}_bank_only": v for k, v in self.baseline.items()})
        arrays, meta = label_holder_bundle(model)
        meta.update(run_id=run_id, party=self.name, status="final", intersection=aligned.intersection,
                    bank_only=self.baseline, schema=self.runtime.settings.schema)
        out["bundle"] = str(self._write(run_id, arrays, meta))
        return out


class FeatureHolderSecureBoost(AlignedRowsProtocol):
    """A feature holder's handlers: bins, encrypted histograms, its own splits."""

    def __init__(self, runtime: "PartyRuntime") -> None:
        super().__init__(runtime)
        self.model = None  # FeatureHolderSB
        self.train_mask: np.ndarray | None = None

    def handlers(self) -> dict:
        return {mt.SB_JOIN: self._on_join, mt.SB_ROUND: self._on_round}

    def close(self) -> None:
        """Stop the histogram kernel's worker processes (a new run replaces this one)."""
        if self.model is not None:
            self.model.close()

    def _own_rows(self) -> tuple[np.ndarray, np.ndarray]:
        aligned = self._aligned()
        X = aligned.X.copy()
        cov = aligned.coverage[self.name]
        X[~cov] = np.nan  # an SME this party does not know is missing in every feature
        return X, cov

    def _on_join(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.models.secureboost import BoostPlan, FeatureHolderSB

        context = load_public_context(exchange.blob("context"), f"feature holder {self.name!r}")
        plan = BoostPlan.from_bytes(exchange.blob("plan"), context=context)
        X, cov = self._own_rows()
        rows = int(exchange.value("rows"))  # type: ignore[call-overload]
        if rows != X.shape[0]:
            raise ProtocolError(f"{self.name}: the plan covers {rows} rows, this party aligned {X.shape[0]}")
        train = np.unpackbits(np.frombuffer(bytes(exchange.value("train_mask")), dtype=np.uint8), count=rows).astype(bool)  # type: ignore[arg-type]
        self.close()
        model = FeatureHolderSB(context, name=self.name, n_jobs=int(exchange.value("n_jobs", 1)))  # type: ignore[call-overload]
        layout = model.setup(X[train], cov[train], plan, feature_names=self._aligned().feature_names)
        self.model, self.train_mask = model, train
        items = [_item(layout)]
        return batch_content(exchange.header.reply(batch_class(items), model.fingerprint, step="sb.layout"), items)

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
        return batch_content(exchange.header.reply(batch_class(items), model.fingerprint, step="sb.replies"), items, config)
