"""The coordinator's side of horizontal FedAvg with encrypted aggregation.

The coordinator never holds a secret key: it receives the aggregation
context's public half from the key-holder bank (and refuses it if it carries
a secret key), adds the banks' update ciphertexts and sends the encrypted sum
back.  See :mod:`fedrisk.parties.horizontal` for the banks' side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.federation import message_types as mt
from fedrisk.federation.exchange import Exchange, build_content
from fedrisk.federation.session import CoordinatorSession

AGGREGATIONS = ("ckks", "plain")


@dataclass(frozen=True)
class FedAvgConfig:
    """FedAvg parameters, as read from the run config."""

    rounds: int = 5
    aggregation: str = "ckks"
    local_epochs: int = 1
    learning_rate: float = 0.01
    batch_size: int = 256
    model: str = "mlp"
    hidden_units: int = 64
    hidden_layers: int = 2
    seed: int = 7
    key_holder: str = ""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")

    def party_config(self) -> dict[str, object]:
        return {
            "aggregation": self.aggregation,
            "local_epochs": self.local_epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "model": self.model,
            "hidden_units": self.hidden_units,
            "hidden_layers": self.hidden_layers,
            "seed": self.seed,
        }


@dataclass
class FedAvgResult:
    """What the coordinator saw: per-round metrics, never model weights."""

    rounds: list[dict] = field(default_factory=list)
    final: dict[str, dict] = field(default_factory=dict)
    key_fingerprint: str = "-"
    key_holder: str = ""
    n_params: int = 0


class _Aggregator:
    """Adds the banks' vectors: ciphertexts under a public context, or plaintext."""

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.public_context = None
        self.fingerprint = "-"

    def set_public_context(self, blob: bytes) -> None:
        from fedrisk.crypto.ckks import PublicContext

        self.public_context = PublicContext.from_bytes(blob)  # refuses a context with a secret key
        self.fingerprint = self.public_context.fingerprint

    def sum(self, replies: dict[str, Exchange], blob_name: str = "vector") -> bytes:
        for name, reply in replies.items():
            expected = "ciphertext" if self.aggregation == "ckks" else "plaintext"
            if reply.header.content_class != expected:
                raise ProtocolError(f"party {name!r} sent {reply.header.content_class!r}, expected {expected!r}")
        if self.aggregation == "ckks":
            from fedrisk.crypto.ckks import EncryptedVector, add_encrypted

            vectors = [EncryptedVector.from_bytes(r.blob(blob_name)) for r in replies.values()]
            return add_encrypted(self.public_context, vectors).to_bytes()
        arrays = [np.frombuffer(r.blob(blob_name), dtype="<f8") for r in replies.values()]
        if len({a.shape for a in arrays}) != 1:
            raise ProtocolError("parties sent vectors of different lengths")
        return np.sum(arrays, axis=0).astype("<f8").tobytes()


def run_fedavg(session: CoordinatorSession, config: FedAvgConfig, *, progress=None) -> FedAvgResult:
    """Run the key ceremony (if encrypted), pooled scaling, rounds and the final evaluation."""
    banks = sorted(n for n, p in session.parties.items() if p.role == "bank")
    if len(banks) < 2:
        raise ConfigError(f"horizontal FedAvg needs at least two banks, got {len(banks)}")
    result = FedAvgResult()
    aggregator = _Aggregator(config.aggregation)
    party_cfg = config.party_config()
    # What the coordinator sends back: an encrypted sum, or (baseline) a plaintext mean.
    content_class = "aggregate" if config.aggregation == "ckks" else "plaintext"

    if config.aggregation == "ckks":
        key_holder = config.key_holder or banks[0]
        if key_holder not in banks:
            raise ConfigError(f"key_holder {key_holder!r} is not a bank of this federation")
        peers = {b: session.parties[b].envelope_public_key for b in banks if b != key_holder}
        reply = session.exchange(
            {key_holder: (mt.KEYGEN, build_content(session.header(0, "keys.generate", key_holder, "public"), config={"peer_names": list(peers), "peer_keys": list(peers.values())}))}
        )[key_holder]
        aggregator.set_public_context(reply.blob("public_context"))
        if reply.header.key_fingerprint != aggregator.fingerprint:
            raise ProtocolError("key holder's announced fingerprint differs from its public context")
        shares = {
            b: (
                mt.KEYSHARE,
                build_content(
                    session.header(0, "keys.share", b, "ciphertext", aggregator.fingerprint),
                    {"sealed": reply.blob(f"sealed:{b}")},
                    {"key_holder_public_key": session.parties[key_holder].envelope_public_key},
                ),
            )
            for b in peers
        }
        for name, ack in session.exchange(shares).items():
            if ack.value("fingerprint") != aggregator.fingerprint:
                raise ProtocolError(f"party {name!r} installed a different key")
        result.key_fingerprint, result.key_holder = aggregator.fingerprint, key_holder

    fp = aggregator.fingerprint
    bounds = session.exchange(
        {b: (mt.FEDAVG_SCALE, build_content(session.header(0, "fedavg.scale", b, "public"), config=party_cfg)) for b in banks}
    )
    widths = {len(r.value("exponents")) for r in bounds.values()}  # type: ignore[arg-type]
    if len(widths) != 1:
        raise ProtocolError("banks declare different numbers of features: their schemas disagree")
    exponents = np.max([np.asarray(r.value("exponents"), dtype=int) for r in bounds.values()], axis=0)
    row_exponent = max(int(r.value("row_exponent")) for r in bounds.values())  # type: ignore[call-overload]
    party_cfg = {**party_cfg, "exponents": [int(e) for e in exponents], "row_exponent": row_exponent}
    stats_replies = session.exchange(
        {b: (mt.FEDAVG_STATS, build_content(session.header(0, "fedavg.stats", b, "public", fp), config=party_cfg)) for b in banks}
    )
    stats_blob = aggregator.sum(stats_replies)

    aggregate: bytes | None = None
    for round_ in range(1, config.rounds + 1):
        started = time.perf_counter()
        sent_before = session.traffic.total()
        requests = {}
        for b in banks:
            # Round 1 carries the pooled feature statistics; later rounds the last aggregate.
            blobs = {"stats": stats_blob} if aggregate is None else {"aggregate": aggregate}
            requests[b] = (mt.FEDAVG_TRAIN, build_content(session.header(round_, "fedavg.train", b, content_class, fp), blobs, party_cfg))
        replies = session.exchange(requests)
        aggregate = aggregator.sum(replies)
        row = {
            "round": round_,
            "seconds": time.perf_counter() - started,
            "bytes": session.traffic.total() - sent_before,
            "train_loss": float(np.mean([float(r.value("train_loss")) for r in replies.values()])),
        }
        aucs = [float(r.value("val_auc")) for r in replies.values() if "val_auc" in r.config]
        if aucs:  # validation of the previous round's global model, as seen by each bank
            row["val_auc_prev_global"] = float(np.mean(aucs))
        result.n_params = int(next(iter(replies.values())).value("n_params"))
        result.rounds.append(row)
        if progress is not None:
            progress(round_, row)

    assert aggregate is not None
    finals = session.exchange(
        {
            b: (mt.FEDAVG_FINAL, build_content(session.header(config.rounds, "fedavg.final", b, content_class, fp), {"aggregate": aggregate}, party_cfg))
            for b in banks
        }
    )
    result.final = {name: dict(reply.config) for name, reply in finals.items()}
    return result
