"""A bank's side of horizontal FedAvg with CKKS-encrypted aggregation.

Every bank trains the same network on its own rows.  What leaves a bank is
always a CKKS ciphertext under the federation's aggregation key, which only
the banks hold: the coordinator adds ciphertexts with a public context and
sends the encrypted sum back; each bank decrypts it itself.

Key ceremony (``aggregation = "ckks"``): the *key holder* bank generates the
CKKS context and seals its secret copy to every other bank's X25519 key
(:mod:`fedrisk.crypto.envelope`); the coordinator relays sealed blobs it
cannot open and receives only the public context.

Update encoding: a bank with ``n`` training rows sends the vector
``[(n / U) * w, n / U]``; the encrypted sum over banks divided by its last
slot is the FedAvg weighted mean.  ``U`` is the federation's *row unit*, the
smallest power of two at least as large as every bank's row count, so each
weight ``n / U`` lies in (0, 1] and every slot stays inside the aggregation
preset's value bound (|v| <= 1024) without losing relative precision.
Feature scaling is federated the same way: one encrypted ``[n, Σx, Σx²] / U``
per bank before round 1, so every bank standardises with the pooled mean and
std.  To set ``U`` and keep those sums in range whatever the units (revenue in
yuan...), each bank first reveals only powers of two: ``ceil(log2 n)`` and,
per feature, ``ceil(log2 max|x|)`` (public by protocol; Flower's own FedAvg
reveals exact row counts); every bank then scales each column by the
federation-wide bound.

``aggregation = "plain"`` runs the identical algorithm with plaintext
vectors (classed ``plaintext``: a comparison baseline the ledger flags).

Local differential privacy: when the request carries ``dp_noise_multiplier``
``z`` and ``dp_clip`` ``C``, the bank clips its round update (its trained
weights minus the weights it started the round from) to L2 norm ``C`` with
Flower's ``compute_clip_model_update`` and adds ``N(0, (zC)²)`` to every
weight before encoding; the coordinator calibrates ``z`` for the run and keeps
the accounting (:mod:`fedrisk.federation.horizontal`).  The noise is drawn
from fresh OS entropy unless ``dp_noise_seed >= 0`` (simulations only).

Simulation hooks: ``sim_drop`` makes the bank fail the round (the same error
path as a crash), ``sim_delay`` makes it answer that many seconds late.
"""

from __future__ import annotations

import time
import zlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrisk.errors import PartyUnavailableError, ProtocolError
from fedrisk.protocols import fedavg as spec
from fedrisk.protocols.fedavg import MAX_SIM_DELAY
from fedrisk.wire.config_values import config_float, config_int, config_strings
from fedrisk.wire.exchange import Exchange, build_content
from fedrisk.models.metrics import auc, ks
from fedrisk.models.neural import ModelSpec, RiskNet
from fedrisk.data.datasplit import train_validation_split

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.crypto.ckks import KeyHolderContext

    from fedrisk.parties.protocol import Party

SECRET_CONTEXT_FILE = "ckks_aggregation.secret"


def privatise_update(local: np.ndarray, reference: np.ndarray, *, clip: float, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """Clip ``local - reference`` to L2 norm ``clip`` and add Gaussian noise of std ``noise_multiplier * clip``.

    Parameters
    ----------
    local, reference : numpy.ndarray
        The bank's trained weights and the weights it started the round from (flat float64).
    clip : float
        ``C``, the L2 bound of the update (Flower's FlatClip, ``compute_clip_model_update``).
    noise_multiplier : float
        ``z``; the noise std is ``z * C`` per weight.
    rng : numpy.random.Generator
        Source of the noise.

    Returns
    -------
    numpy.ndarray
        ``reference + clip(local - reference) + noise``.
    """
    from flwr.supercore.differential_privacy import compute_clip_model_update

    params = [np.array(local, dtype=np.float64)]
    compute_clip_model_update(params, [np.asarray(reference, dtype=np.float64)], clip)
    return params[0] + rng.normal(0.0, noise_multiplier * clip, size=params[0].shape)


class HorizontalParty:
    """Handlers for the key ceremony and FedAvg rounds of one bank."""

    def __init__(self, runtime: "Party") -> None:
        self.runtime = runtime
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.model_: RiskNet | None = None
        self._context: KeyHolderContext | None = None  # loaded lazily

    def handlers(self) -> dict:
        return {
            spec.KEYGEN.message_type: self._on_keygen,
            spec.KEYSHARE.message_type: self._on_keyshare,
            spec.SCALE.message_type: self._on_scale,
            spec.STATS.message_type: self._on_stats,
            spec.TRAIN.message_type: self._on_train,
            spec.FINAL.message_type: self._on_final,
        }

    # -- data ----------------------------------------------------------------
    @cached_property
    def split(self):
        settings = self.runtime.settings
        return train_validation_split(self.runtime.table, settings.validation, schema=settings.schema)

    # -- keys ----------------------------------------------------------------
    @property
    def secret_path(self) -> Path:
        return self.runtime.state_dir / SECRET_CONTEXT_FILE

    def context(self, expected_fingerprint: str) -> KeyHolderContext:
        from fedrisk.crypto.ckks import KeyHolderContext

        if self._context is None:
            if not self.secret_path.exists():
                raise ProtocolError(f"party {self.runtime.settings.name!r} holds no aggregation key yet")
            self._context = KeyHolderContext.load(self.secret_path)
        if self._context.fingerprint != expected_fingerprint:
            raise ProtocolError(f"party {self.runtime.settings.name!r} holds key {self._context.fingerprint}, the federation uses {expected_fingerprint}")
        return self._context

    def _on_keygen(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.ckks import AGGREGATION, KeyHolderContext
        from fedrisk.crypto.envelope import envelope_aad, seal

        context = KeyHolderContext.generate(AGGREGATION)
        context.save(self.secret_path)
        self._context = context
        peers = dict(zip(config_strings(exchange, "peer_names"), config_strings(exchange, "peer_keys")))
        blobs = {"public_context": context.public_context().to_bytes()}
        secret = context.to_bytes()
        for peer_name, peer_key_hex in sorted(peers.items()):
            blobs[f"sealed:{peer_name}"] = seal(
                bytes.fromhex(str(peer_key_hex)),
                secret,
                aad=envelope_aad(exchange.header.run_id, peer_name),
                sender=self.runtime.identity.envelope,
            )
        header = exchange.header.reply(spec.KEYGEN.reply_class, context.fingerprint, step=spec.KEYGEN.reply)
        return build_content(header, blobs)

    def _on_keyshare(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.ckks import KeyHolderContext
        from fedrisk.crypto.envelope import envelope_aad, open_sealed

        name = self.runtime.settings.name
        # Authenticated: only the key holder's X25519 key can have sealed this.
        secret = open_sealed(
            self.runtime.identity.envelope,
            exchange.blob("sealed"),
            aad=envelope_aad(exchange.header.run_id, name),
            sender_public=bytes.fromhex(str(exchange.value("key_holder_public_key"))),
        )
        context = KeyHolderContext.from_bytes(secret)
        if context.fingerprint != exchange.header.key_fingerprint:
            raise ProtocolError(f"party {name!r}: the shared key's fingerprint does not match the announced one")
        context.save(self.secret_path)
        self._context = context
        return build_content(
            exchange.header.reply(spec.KEYSHARE.reply_class, context.fingerprint, step=spec.KEYSHARE.reply), config={"fingerprint": context.fingerprint}
        )

    # -- encode / decode vectors --------------------------------------------
    def _encode(self, exchange: Exchange, vector: np.ndarray, step: str) -> "RecordDict":
        mode = str(exchange.value("aggregation"))
        if mode == "ckks":
            from fedrisk.crypto.ckks import encrypt_vector

            fingerprint = exchange.header.key_fingerprint
            blob = encrypt_vector(self.context(fingerprint), vector).to_bytes()
            header = exchange.header.reply("ciphertext", fingerprint, step=step)
        else:
            blob = np.ascontiguousarray(vector, dtype="<f8").tobytes()
            header = exchange.header.reply("plaintext", step=step)
        return build_content(header, {"vector": blob})

    def _decode(self, exchange: Exchange, name: str) -> np.ndarray:
        mode = str(exchange.value("aggregation"))
        blob = exchange.blob(name)
        if mode == "ckks":
            from fedrisk.crypto.ckks import EncryptedVector, decrypt_vector

            ciphertext = EncryptedVector.from_bytes(blob)
            return decrypt_vector(self.context(exchange.header.key_fingerprint), ciphertext)
        return np.frombuffer(blob, dtype="<f8").copy()

    # -- FedAvg --------------------------------------------------------------
    def _on_scale(self, exchange: Exchange) -> "RecordDict":
        magnitude = np.nanmax(np.abs(self.split.x_train), axis=0, initial=1.0)
        exponents = np.ceil(np.log2(magnitude + 1.0)).astype(int)
        row_exponent = int(np.ceil(np.log2(max(len(self.split.x_train), 1))))
        header = exchange.header.reply(spec.SCALE.reply_class, step=spec.SCALE.reply)
        return build_content(header, config={"exponents": [int(e) for e in exponents], "row_exponent": row_exponent})

    def _row_unit(self, exchange: Exchange) -> float:
        return float(2 ** config_int(exchange, "row_exponent"))

    def _scale(self, exchange: Exchange) -> np.ndarray:
        exponents = np.asarray(exchange.value("exponents"), dtype=float)
        if exponents.shape != (self.split.x_train.shape[1],):
            raise ProtocolError("scale exponents do not match this party's feature count")
        return np.exp2(exponents)

    def _on_stats(self, exchange: Exchange) -> "RecordDict":
        x = np.nan_to_num(self.split.x_train) / self._scale(exchange)
        stats = np.concatenate([[len(x)], x.sum(axis=0), (x * x).sum(axis=0)]) / self._row_unit(exchange)
        return self._encode(exchange, stats, spec.STATS.reply)

    def _apply_stats(self, exchange: Exchange, pooled: np.ndarray) -> None:
        n_features = self.split.x_train.shape[1]
        n = pooled[0]
        if n <= 0:
            raise ProtocolError("pooled row count is not positive: the stats aggregate is corrupt")
        scale = self._scale(exchange)
        mean = pooled[1 : 1 + n_features] / n
        var = pooled[1 + n_features :] / n - mean**2
        self.mean_ = mean * scale
        self.std_ = np.sqrt(np.clip(var, 1e-12, None)) * scale

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        assert self.mean_ is not None and self.std_ is not None
        # Missing values sit at the pooled mean (0 after standardising).
        return np.nan_to_num((x - self.mean_) / self.std_)

    def _model(self, exchange: Exchange) -> RiskNet:
        if self.model_ is None:
            model_spec = ModelSpec.from_dict(
                {
                    "kind": exchange.value("model"),
                    "n_features": self.split.x_train.shape[1],
                    "hidden_units": exchange.value("hidden_units", 64),
                    "hidden_layers": exchange.value("hidden_layers", 2),
                }
            )
            self.model_ = model_spec.build(seed=config_int(exchange, "seed"))
        return self.model_

    def _apply_global(self, exchange: Exchange, model: RiskNet) -> None:
        pooled = self._decode(exchange, "aggregate")
        if pooled[-1] <= 0:
            raise ProtocolError("aggregate carries no rows: corrupt or empty round")
        model.set_flat(pooled[:-1] / pooled[-1])

    def _validation_metrics(self, model: RiskNet) -> dict[str, float]:
        split = self.split
        if split.y_val is None or len(np.unique(split.y_val)) < 2:
            return {}
        p = model.predict_proba(self._standardize(split.x_val))
        return {"val_auc": float(auc(split.y_val, p)), "val_ks": float(ks(split.y_val, p)), "val_rows": int(len(p))}

    def _noise_rng(self, exchange: Exchange) -> np.random.Generator:
        seed = config_int(exchange, "dp_noise_seed", -1)
        if seed < 0:
            return np.random.default_rng()  # fresh OS entropy
        name = zlib.crc32(self.runtime.settings.name.encode())
        return np.random.default_rng([seed, exchange.header.round, name])

    def _on_train(self, exchange: Exchange) -> "RecordDict":
        round_ = exchange.header.round
        delay = config_float(exchange, "sim_delay", 0.0)
        if delay > 0:
            time.sleep(min(delay, MAX_SIM_DELAY))
        if exchange.value("sim_drop", False):
            raise PartyUnavailableError(f"party {self.runtime.settings.name!r} dropped out of round {round_} (simulated)")
        if "stats" in exchange.blobs:
            self._apply_stats(exchange, self._decode(exchange, "stats"))
        elif self.mean_ is None:
            raise ProtocolError(f"party {self.runtime.settings.name!r} has no pooled feature statistics: it missed round 1 (restarted?)")
        model = self._model(exchange)
        metrics: dict[str, float] = {}
        if "aggregate" in exchange.blobs:
            self._apply_global(exchange, model)
            metrics = self._validation_metrics(model)
        split = self.split
        reference = model.get_flat()
        loss = model.fit_local(
            self._standardize(split.x_train),
            split.y_train,
            epochs=config_int(exchange, "local_epochs"),
            learning_rate=config_float(exchange, "learning_rate"),
            batch_size=config_int(exchange, "batch_size"),
            seed=config_int(exchange, "seed") * 1000 + round_,
        )
        weights = model.get_flat()
        noise_multiplier = config_float(exchange, "dp_noise_multiplier", 0.0)
        if noise_multiplier > 0:
            clip = config_float(exchange, "dp_clip")
            weights = privatise_update(weights, reference, clip=clip, noise_multiplier=noise_multiplier, rng=self._noise_rng(exchange))
        weight = len(split.x_train) / self._row_unit(exchange)
        update = np.concatenate([weights * weight, [weight]])
        content = self._encode(exchange, update, spec.TRAIN.reply)
        from flwr.app import ConfigRecord

        from fedrisk.wire.exchange import CONFIG_RECORD

        content[CONFIG_RECORD] = ConfigRecord({"train_loss": float(loss), "n_params": int(model.n_params), **metrics})
        return content

    def _on_final(self, exchange: Exchange) -> "RecordDict":
        model = self._model(exchange)
        self._apply_global(exchange, model)
        metrics = self._validation_metrics(model)
        bundle = self._write_bundle(exchange, model)
        header = exchange.header.reply(spec.FINAL.reply_class, step=spec.FINAL.reply)
        return build_content(header, config={**metrics, "bundle": str(bundle)})

    def _write_bundle(self, exchange: Exchange, model: RiskNet) -> Path:
        from fedrisk.models.bundle import write_model_bundle

        assert self.mean_ is not None and self.std_ is not None
        arrays = {f"net.{k}": v for k, v in model.state_arrays().items()}
        arrays["scaler.mean"] = self.mean_.astype(np.float64)
        arrays["scaler.std"] = self.std_.astype(np.float64)
        meta = {
            "kind": "fedavg",
            "party": self.runtime.settings.name,
            "run_id": exchange.header.run_id,
            "model": model.spec.to_dict(),
            "features": list(self.split.feature_names),
            "aggregation": str(exchange.value("aggregation")),
            "rounds": exchange.header.round,
        }
        return write_model_bundle(self.runtime.state_dir / "models" / exchange.header.run_id, arrays, meta, self.runtime.identity.signing)
