"""The coordinator's side of horizontal FedAvg with encrypted aggregation.

The coordinator never holds a secret key: it receives the aggregation
context's public half from the key-holder bank (and refuses it if it carries
a secret key), adds the banks' update ciphertexts and sends the encrypted sum
back.  See :mod:`fedrisk.parties.horizontal` for the banks' side.

Dropouts
--------
Setup steps (key ceremony, scale bounds, pooled statistics) need every bank.
A training round carries on past banks that fail or do not answer within the
round deadline (run config ``round-timeout``, default ``party-timeout``) as
long as at least ``min-parties`` banks (default 2, never fewer: the aggregate
of one bank *is* that bank's model) answered; the round's row names who
dropped and why.  The aggregate is over the banks that answered, and it is
still the FedAvg weighted mean: each bank sends ``[(n/U)·w, n/U]``, so the sum
over any subset divided by its last slot is that subset's weighted mean.  A
bank that missed round 1 gets the pooled feature statistics with its next
request.  The final step (every bank decrypts the final model and writes its
signed bundle) needs every bank again: a bank gone for good fails the run,
named.

Differential privacy (local, per bank)
--------------------------------------
Encrypted aggregation rules out central DP (the coordinator never sees an
update in the clear to noise it), so each bank clips its round update
``Δ = w_local - w_global`` to L2 norm ``C`` (``dp-clip``; Flower's
``compute_clip_model_update``, the FlatClip of McMahan et al. 2018) and adds
Gaussian noise of standard deviation ``z·C`` before encrypting (what Flower's
``LocalDpMod`` does to plaintext replies; it cannot run here because the reply
it would see is already a ciphertext).  The unit of privacy is one bank's
whole data; neighbouring = that data replaced by anything else, so the
clipped update moves by at most ``2C`` (sensitivity ``2C``).  ``z`` is
calibrated for the whole run, not per round: ``T`` Gaussian releases with
sensitivity ``2C`` and std ``zC`` are exactly ``μ``-GDP with
``μ = 2·sqrt(T)/z`` (Dong, Roth & Su 2022, Gaussian differential privacy,
JRSS-B, Cor. 3.3 and Thm 2.7), whose tight (ε, δ) curve is
``δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)`` (their Cor. 2.13; Balle & Wang
2018, Thm 8).  :func:`gaussian_epsilon` is that accountant;
:func:`calibrate_noise_multiplier` inverts it for ``dp-epsilon``/``dp-delta``.
The RDP bound Flower's ``RdpAccountant`` (``flwr[dp]``, Google's
dp-accounting) would give for the same events is reported beside it
(:func:`rdp_epsilon`); it is never smaller.  Flower's per-release formula
``σ = Δ·sqrt(2 ln(1.25/δ))/ε`` (``LocalDpMod``) is not used: it holds only
for ε < 1 and says nothing about T rounds.  Noise comes from fresh OS
entropy; ``dp-noise-seed`` makes it reproducible *for simulations only*
(noise anyone can regenerate protects nothing).

Simulation hooks
----------------
``sim-dropout`` (a fraction of banks told to fail in each round, drawn with
``seed``), ``sim-stragglers`` and ``sim-straggler-delay`` (a fraction of banks
told to answer that many seconds late, inside the deadline).  The hooks ride
on the request so that they exercise the same failure path as a real crash
on every engine (in-process, Flower's Simulation Engine, Deployment Engine).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedrisk.errors import ConfigError, PartyUnavailableError, ProtocolError
from fedrisk.protocols import fedavg as spec
from fedrisk.protocols.fedavg import FedAvgConfig
from fedrisk.wire.config_values import config_float, config_int
from fedrisk.wire.exchange import Exchange, build_content
from fedrisk.federation.session import CoordinatorSession

if TYPE_CHECKING:
    from fedrisk.crypto.ckks import PublicContext
    from fedrisk.checkpoint import CheckpointStore


@dataclass
class FedAvgResult:
    """What the coordinator saw: per-round metrics, never model weights."""

    rounds: list[dict] = field(default_factory=list)
    final: dict[str, dict] = field(default_factory=dict)
    key_fingerprint: str = "-"
    key_holder: str = ""
    n_params: int = 0
    #: The DP accounting of the run (empty without DP).
    dp: dict = field(default_factory=dict)


# -- differential privacy accountant ------------------------------------------


def _log_phi(x: float) -> float:
    """log of the standard normal CDF, finite far into the lower tail."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # Mills-ratio asymptotics: Φ(x) ≈ φ(x)/|x| · (1 - 1/x² + 3/x⁴)
    return -0.5 * x * x - math.log(-x) - 0.5 * math.log(2.0 * math.pi) + math.log1p(-1.0 / (x * x) + 3.0 / x**4)


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism: ``Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)`` (tight).

    Parameters
    ----------
    epsilon : float
        ε >= 0.
    mu : float
        The GDP parameter, > 0.
    """
    a = _log_phi(-epsilon / mu + mu / 2.0)
    b = epsilon + _log_phi(-epsilon / mu - mu / 2.0)
    return max(math.exp(a) - math.exp(b), 0.0) if b < a else 0.0


def gaussian_mu(noise_multiplier: float, releases: int, sensitivity_in_clips: float = 2.0) -> float:
    """μ of ``releases`` Gaussian releases with sensitivity ``s·C`` and std ``z·C``: ``s·sqrt(T)/z``."""
    return sensitivity_in_clips * math.sqrt(releases) / noise_multiplier


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Smallest ε with δ(ε) <= ``delta`` for the run's Gaussian releases (exact, by GDP).

    Parameters
    ----------
    noise_multiplier : float
        ``z``: the noise std over the clipping norm.
    releases : int
        How many updates one bank released (rounds it answered).
    delta : float
        Target δ in (0, 1).

    Returns
    -------
    float
        ε (0 when no release was made).
    """
    if releases <= 0:
        return 0.0
    mu = gaussian_mu(noise_multiplier, releases)
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gdp_delta(high, mu) > delta:
        high *= 2.0
        if high > 1e6:
            return math.inf
    for _ in range(200):
        mid = (low + high) / 2.0
        if gdp_delta(mid, mu) > delta:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(high, 1.0):
            break
    return high


def calibrate_noise_multiplier(epsilon: float, delta: float, releases: int) -> float:
    """The noise multiplier ``z`` whose ``releases`` Gaussian releases are exactly (ε, δ)-DP."""
    low, high = 1e-6, 1.0  # bounds on μ; δ(ε; μ) grows with μ
    while gdp_delta(epsilon, high) < delta:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if gdp_delta(epsilon, mid) < delta:
            low = mid
        else:
            high = mid
        if high - low <= 1e-14 * high:
            break
    return 2.0 * math.sqrt(releases) / low  # the largest μ within budget, as a noise multiplier


def rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The RDP bound on ε for the same releases (what Flower's ``RdpAccountant`` computes).

    Rényi DP of the Gaussian mechanism at order α is ``α μ₁²/2`` per release
    (Mironov 2017), composed additively; converted with
    ``ε = rdp + log((α-1)/α) - (log δ + log α)/(α-1)`` (Canonne, Kamath & Steinke
    2020, Prop. 12, as dp-accounting does), minimised over α.
    """
    if releases <= 0:
        return 0.0
    mu2 = gaussian_mu(noise_multiplier, releases) ** 2
    orders = 1.0 + np.logspace(-4, 5, 20_000)
    eps = orders * mu2 / 2.0 + np.log((orders - 1.0) / orders) - (math.log(delta) + np.log(orders)) / (orders - 1.0)
    return float(max(np.min(eps), 0.0))


def dp_report(config: FedAvgConfig, noise_multiplier: float, releases: int) -> dict[str, object]:
    """The run's DP accounting as recorded in its result."""
    return {
        "mechanism": "local Gaussian on each bank's clipped round update, before encryption",
        "neighbouring": "one bank's whole data replaced (sensitivity 2 x clip)",
        "accountant": "exact Gaussian DP composition (Dong, Roth & Su 2022; Balle & Wang 2018)",
        "epsilon_target": config.dp_epsilon,
        "epsilon": gaussian_epsilon(noise_multiplier, releases, config.dp_delta),
        "epsilon_rdp": rdp_epsilon(noise_multiplier, releases, config.dp_delta),
        "delta": config.dp_delta,
        "clip": config.dp_clip,
        "noise_multiplier": noise_multiplier,
        "noise_std": noise_multiplier * config.dp_clip,
        "releases": releases,
        "rounds": config.rounds,
        "seeded_noise": config.dp_noise_seed >= 0,
    }


# -- tolerant exchange ----------------------------------------------------------


def _sample(banks: list[str], share: float, rng: np.random.Generator) -> list[str]:
    """``share`` of the banks (half rounds up: 0.3 of 10 is 3), drawn without replacement."""
    count = int(math.floor(share * len(banks) + 0.5 + 1e-9))
    return sorted(rng.choice(banks, size=count, replace=False).tolist()) if count else []


class Aggregator:
    """Adds the banks' vectors: ciphertexts under a public context, or plaintext."""

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.public_context: PublicContext | None = None
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

            if self.public_context is None:
                raise ProtocolError("ckks aggregation needs the key holder's public context first")
            vectors = [EncryptedVector.from_bytes(r.blob(blob_name)) for r in replies.values()]
            return add_encrypted(self.public_context, vectors).to_bytes()
        arrays = [np.frombuffer(r.blob(blob_name), dtype="<f8") for r in replies.values()]
        if len({a.shape for a in arrays}) != 1:
            raise ProtocolError("parties sent vectors of different lengths")
        return np.sum(arrays, axis=0).astype("<f8").tobytes()


def _checkpoint_state(config: FedAvgConfig) -> str:
    from dataclasses import asdict

    from fedrisk.checkpoint import config_digest

    return config_digest({"protocol": "fedavg", **asdict(config)})


def run_fedavg(
    session: CoordinatorSession,
    config: FedAvgConfig,
    *,
    progress=None,
    checkpoints: "CheckpointStore | None" = None,
) -> FedAvgResult:
    """Run the key ceremony (if encrypted), pooled scaling, rounds and the final evaluation.

    With ``checkpoints`` the coordinator saves its state after the setup and
    after every round (the last encrypted aggregate, the pooled-statistics
    aggregate, the public context and the counters) and, when the store holds
    an unfinished checkpoint of the same configuration, resumes from it: the
    banks keep their aggregation key on disk and rebuild everything else
    from the two aggregates, so the resumed run computes what the
    uninterrupted one would (up to CKKS encryption noise).
    """
    banks = sorted(n for n, p in session.parties.items() if p.role == "bank")
    if len(banks) < 2:
        raise ConfigError(f"horizontal FedAvg needs at least two banks, got {len(banks)}")
    if config.min_parties > len(banks):
        raise ConfigError(f"min-parties is {config.min_parties} but the federation has {len(banks)} banks")
    result = FedAvgResult()
    aggregator = Aggregator(config.aggregation)
    party_cfg = config.party_config()
    content_class = spec.aggregate_class(config.aggregation)
    digest = _checkpoint_state(config)
    resume = checkpoints.resumable("fedavg", digest) if checkpoints is not None else None
    status = session.status
    status.set(protocol="fedavg", unit="round", rounds=config.rounds, round=0, state="running")
    noise_multiplier = 0.0
    sim_rng = np.random.default_rng([config.seed, 0x51D])
    releases = {b: 0 for b in banks}
    aggregate: bytes | None = None
    public_context: bytes | None = None
    first_round = 1

    if resume is not None:
        state = resume.state
        if sorted(state["banks"]) != banks:
            raise ConfigError(f"the checkpoint was made with banks {', '.join(sorted(state['banks']))}, the federation now has {', '.join(banks)}")
        if config.aggregation == "ckks":
            public_context = resume.blob("public_context")
            aggregator.set_public_context(public_context)
            if aggregator.fingerprint != state["key_fingerprint"]:
                raise ProtocolError("the checkpoint's public context does not match its key fingerprint")
        result.key_fingerprint, result.key_holder = state["key_fingerprint"], state["key_holder"]
        party_cfg = dict(state["party_cfg"])
        stats_blob = resume.blob("stats")
        aggregate = resume.blob("aggregate") if resume.has_blob("aggregate") else None
        result.rounds = list(state["rows"])
        result.n_params = int(state["n_params"])
        releases = {b: int(state["releases"].get(b, 0)) for b in banks}
        noise_multiplier = float(state["noise_multiplier"])
        sim_rng.bit_generator.state = state["sim_rng"]
        first_round = resume.round + 1
        status.set(resumed_from=resume.round)
        status.event(f"resumed from the checkpoint of round {resume.round}")
    else:
        if config.aggregation == "ckks":
            key_holder = config.key_holder or banks[0]
            if key_holder not in banks:
                raise ConfigError(f"key_holder {key_holder!r} is not a bank of this federation")
            peers = {b: session.parties[b].envelope_public_key for b in banks if b != key_holder}
            reply = session.exchange(
                {
                    key_holder: (
                        spec.KEYGEN.message_type,
                        build_content(
                            session.header(0, spec.KEYGEN.request, key_holder, spec.KEYGEN.request_class),
                            config={"peer_names": list(peers), "peer_keys": list(peers.values())},
                        ),
                    )
                }
            )[key_holder]
            aggregator.set_public_context(reply.blob("public_context"))
            if reply.header.key_fingerprint != aggregator.fingerprint:
                raise ProtocolError("key holder's announced fingerprint differs from its public context")
            shares = {
                b: (
                    spec.KEYSHARE.message_type,
                    build_content(
                        session.header(0, spec.KEYSHARE.request, b, spec.KEYSHARE.request_class, aggregator.fingerprint),
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
            public_context = reply.blob("public_context")

        fp = aggregator.fingerprint
        bounds = session.exchange(
            {b: (spec.SCALE.message_type, build_content(session.header(0, spec.SCALE.request, b, spec.SCALE.request_class), config=party_cfg)) for b in banks}
        )
        widths = {len(r.value("exponents")) for r in bounds.values()}  # type: ignore[arg-type]
        if len(widths) != 1:
            raise ProtocolError("banks declare different numbers of features: their schemas disagree")
        exponents = np.max([np.asarray(r.value("exponents"), dtype=int) for r in bounds.values()], axis=0)
        row_exponent = max(config_int(r, "row_exponent") for r in bounds.values())
        party_cfg = {**party_cfg, "exponents": [int(e) for e in exponents], "row_exponent": row_exponent}
        stats_replies = session.exchange(
            {
                b: (spec.STATS.message_type, build_content(session.header(0, spec.STATS.request, b, spec.STATS.request_class, fp), config=party_cfg))
                for b in banks
            }
        )
        stats_blob = aggregator.sum(stats_replies)

        if config.dp_enabled:
            noise_multiplier = calibrate_noise_multiplier(config.dp_epsilon, config.dp_delta, config.rounds)
            party_cfg = {
                **party_cfg,
                "dp_noise_multiplier": noise_multiplier,
                "dp_clip": config.dp_clip,
                "dp_noise_seed": config.dp_noise_seed,
            }
        if checkpoints is not None:
            blobs = {"stats": stats_blob}
            if public_context is not None:
                blobs["public_context"] = public_context
            _save(checkpoints, 0, digest, banks, result, party_cfg, releases, noise_multiplier, sim_rng, blobs)

    fp = aggregator.fingerprint
    has_stats: set[str] = set()  # banks that installed the pooled statistics (a resumed run resends them)
    round_timeout = config.round_timeout or session.timeout

    def request(bank: str, round_: int, told_to_drop: list[str], stragglers: list[str]):
        # A bank's first round carries the pooled feature statistics; later rounds the last aggregate.
        blobs: dict[str, bytes] = {} if bank in has_stats else {"stats": stats_blob}
        if aggregate is not None:
            blobs["aggregate"] = aggregate
        cfg = dict(party_cfg)
        if bank in told_to_drop:
            cfg["sim_drop"] = True
        if bank in stragglers and config.sim_straggler_delay > 0:
            cfg["sim_delay"] = config.sim_straggler_delay
        return (spec.TRAIN.message_type, build_content(session.header(round_, spec.TRAIN.request, bank, content_class, fp), blobs, cfg))

    for round_ in range(first_round, config.rounds + 1):
        started = time.perf_counter()
        sent_before = session.traffic.total()
        status.set(round=round_, step=spec.TRAIN.request)
        told_to_drop = _sample(banks, config.sim_dropout, sim_rng) if config.sim_dropout else []
        stragglers = _sample(banks, config.sim_stragglers, sim_rng) if config.sim_stragglers else []
        requests = {b: request(b, round_, told_to_drop, stragglers) for b in banks}
        replies, failures = session.exchange_tolerant(requests, timeout=round_timeout)
        has_stats.difference_update(failures)  # a bank that failed may have restarted: resend the statistics
        redone: list[str] = []
        if len(replies) < config.min_parties and session.pause_timeout > 0:
            # Too few banks to aggregate: pause until enough come back, resending the same round to them.
            pause_until = time.monotonic() + session.pause_timeout
            while len(replies) < config.min_parties and time.monotonic() < pause_until:
                status.paused(dict(failures))
                time.sleep(PAUSE_RETRY_SECONDS)
                online = set(session.grid.get_node_ids())
                back = [b for b in failures if session.parties[b].node_id in online]  # resend once it is back
                if not back:
                    continue
                retry = {b: request(b, round_, told_to_drop, stragglers) for b in back}
                more, failed_again = session.exchange_tolerant(retry, timeout=round_timeout)
                failures = {**{b: r for b, r in failures.items() if b not in back}, **failed_again}
                has_stats.difference_update(failed_again)
                replies.update(more)
                redone += sorted(more)
            status.running()
        if len(replies) < config.min_parties:
            why = "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items()))
            raise PartyUnavailableError(
                f"round {round_}: only {len(replies)} of {len(banks)} banks answered, fewer than min-parties {config.min_parties} (dropped {why})"
            )
        replies = dict(sorted(replies.items()))
        aggregate = aggregator.sum(replies)
        for name in replies:
            releases[name] += 1
            has_stats.add(name)
        row = {
            "round": round_,
            "seconds": time.perf_counter() - started,
            "bytes": session.traffic.total() - sent_before,
            "train_loss": float(np.mean([config_float(r, "train_loss") for r in replies.values()])),
            "answered": len(replies),
            "dropped": sorted(failures),
            "stragglers": [b for b in stragglers if b in replies],
        }
        if failures:
            row["drop_reasons"] = {name: reason for name, reason in sorted(failures.items())}
        if redone:
            row["redone_for"] = sorted(set(redone))
        aucs = [config_float(r, "val_auc") for r in replies.values() if "val_auc" in r.config]
        if aucs:  # validation of the previous round's global model, as seen by each bank
            row["val_auc_prev_global"] = float(np.mean(aucs))
        result.n_params = config_int(next(iter(replies.values())), "n_params")
        result.rounds.append(row)
        if checkpoints is not None:
            blobs = {"stats": stats_blob, "aggregate": aggregate}
            if public_context is not None:
                blobs["public_context"] = public_context
            _save(checkpoints, round_, digest, banks, result, party_cfg, releases, noise_multiplier, sim_rng, blobs)
        if progress is not None:
            progress(round_, row)

    if config.dp_enabled:
        result.dp = dp_report(config, noise_multiplier, max(releases.values()))
    assert aggregate is not None
    status.set(step=spec.FINAL.request)
    finals = session.exchange(
        {
            b: (
                spec.FINAL.message_type,
                build_content(session.header(config.rounds, spec.FINAL.request, b, content_class, fp), {"aggregate": aggregate}, party_cfg),
            )
            for b in banks
        }
    )
    result.final = {name: dict(reply.config) for name, reply in finals.items()}
    if checkpoints is not None:
        checkpoints.save("fedavg", config.rounds, {"rows": result.rounds}, config_sha256=digest, finished=True)
    return result


#: Seconds between attempts to resend a round to banks that failed while too few answered.
PAUSE_RETRY_SECONDS = 2.0


def _save(checkpoints, round_, digest, banks, result, party_cfg, releases, noise_multiplier, sim_rng, blobs) -> None:
    state = {
        "banks": banks,
        "key_holder": result.key_holder,
        "key_fingerprint": result.key_fingerprint,
        "party_cfg": party_cfg,
        "rows": result.rounds,
        "n_params": result.n_params,
        "releases": releases,
        "noise_multiplier": noise_multiplier,
        "sim_rng": sim_rng.bit_generator.state,
    }
    checkpoints.save("fedavg", round_, state, blobs, config_sha256=digest)
