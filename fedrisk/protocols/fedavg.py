"""The spec of horizontal FedAvg with encrypted aggregation: its steps and its configuration.

The coordinator's role is :mod:`fedrisk.federation.horizontal` (the key
ceremony, rounds, dropouts, the DP accountant), the banks' is
:mod:`fedrisk.parties.horizontal`. Setup is the key ceremony (with CKKS
aggregation: one bank generates the aggregation key and seals it to the others),
then the pooled scaling bounds and feature statistics; then one
:data:`TRAIN` exchange per round and :data:`FINAL`, where every bank decrypts
the final model and writes its signed bundle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, TypedDict, cast

from fedrisk.errors import ConfigError, ProtocolError
from fedrisk.protocols.step import Step
from fedrisk.wire import message_types as mt
from fedrisk.wire.config_values import as_float, as_int, settings_from_run_config

_BY_AGGREGATION = "by the run's aggregation: ckks → {}, plain (the baseline) → {}"

#: The key holder generates the CKKS aggregation key: its public context back, and the secret sealed to each other bank.
KEYGEN = Step(mt.KEYGEN, "keys.generate", "keys.generate", ("public",), ("ciphertext",))
#: Each other bank opens its sealed copy of the key and acknowledges the key's fingerprint.
KEYSHARE = Step(mt.KEYSHARE, "keys.share", "keys.share", ("ciphertext",), ("public",))
#: Each bank's power-of-two bounds of its features and of its row count.
SCALE = Step(mt.FEDAVG_SCALE, "fedavg.scale", "fedavg.scale", ("public",), ("public",))
#: Each bank's scaled feature sums; the coordinator adds them into the pooled statistics.
STATS = Step(
    mt.FEDAVG_STATS,
    "fedavg.stats",
    "fedavg.stats",
    ("public",),
    ("ciphertext", "plaintext"),
    varies="reply " + _BY_AGGREGATION.format("ciphertext", "plaintext"),
)
#: One round: the last aggregate (in a bank's first round also the pooled statistics) out, the bank's weighted update back.
TRAIN = Step(
    mt.FEDAVG_TRAIN,
    "fedavg.train",
    "fedavg.update",
    ("aggregate", "plaintext"),
    ("ciphertext", "plaintext"),
    varies="request " + _BY_AGGREGATION.format("aggregate", "plaintext") + "; reply " + _BY_AGGREGATION.format("ciphertext", "plaintext"),
)
#: The final aggregate: each bank decrypts it, writes its signed bundle and replies with its validation metrics.
FINAL = Step(
    mt.FEDAVG_FINAL,
    "fedavg.final",
    "fedavg.final",
    ("aggregate", "plaintext"),
    ("public",),
    varies="request " + _BY_AGGREGATION.format("aggregate", "plaintext"),
)

STEPS: tuple[Step, ...] = (KEYGEN, KEYSHARE, SCALE, STATS, TRAIN, FINAL)


def aggregate_class(aggregation: str) -> str:
    """The content class of what the coordinator sends back under ``aggregation``: an encrypted sum, or (baseline) a plaintext mean."""
    return "aggregate" if aggregation == "ckks" else "plaintext"


AGGREGATIONS = ("ckks", "plain")
#: Longest simulated straggler delay a bank accepts (seconds).
MAX_SIM_DELAY = 300.0


class RunConfigOptions(TypedDict, total=False):
    """The :class:`FedAvgConfig` options a Flower run config may set (``FedAvgConfig.RUN_CONFIG_KEYS``)."""

    min_parties: int
    round_timeout: float
    dp_epsilon: float
    dp_delta: float
    dp_clip: float
    dp_noise_seed: int
    sim_dropout: float
    sim_stragglers: float
    sim_straggler_delay: float


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
    #: Fewest banks whose updates a round may aggregate (run config ``min-parties``).
    min_parties: int = 2
    #: Deadline of one training round in seconds; 0 = the session's party timeout.
    round_timeout: float = 0.0
    #: Local DP budget for the whole run; 0 or inf = no DP.
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    #: Seed of the DP noise (simulation only); -1 = fresh OS entropy.
    dp_noise_seed: int = -1
    sim_dropout: float = 0.0
    sim_stragglers: float = 0.0
    sim_straggler_delay: float = 0.0

    #: Run config key of each option above that has one (the ServerApp reads them).
    RUN_CONFIG_KEYS = {
        "min-parties": "min_parties",
        "round-timeout": "round_timeout",
        "dp-epsilon": "dp_epsilon",
        "dp-delta": "dp_delta",
        "dp-clip": "dp_clip",
        "dp-noise-seed": "dp_noise_seed",
        "sim-dropout": "sim_dropout",
        "sim-stragglers": "sim_stragglers",
        "sim-straggler-delay": "sim_straggler_delay",
    }

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.min_parties < 2:
            raise ConfigError(f"min-parties must be >= 2 (one bank's aggregate is its own model), got {self.min_parties}")
        if self.round_timeout < 0:
            raise ConfigError(f"round-timeout must be >= 0, got {self.round_timeout}")
        if not (self.dp_epsilon >= 0):  # also refuses NaN
            raise ConfigError(f"dp-epsilon must be > 0 (or 0/inf for no DP), got {self.dp_epsilon}")
        if self.dp_enabled:
            if not 0.0 < self.dp_delta < 1.0:
                raise ConfigError(f"dp-delta must be in (0, 1), got {self.dp_delta}")
            if not (0.0 < self.dp_clip < math.inf):
                raise ConfigError(f"dp-clip must be > 0, got {self.dp_clip}")
        for key, share in (("sim-dropout", self.sim_dropout), ("sim-stragglers", self.sim_stragglers)):
            if not 0.0 <= share < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {share}")
        if not 0.0 <= self.sim_straggler_delay <= MAX_SIM_DELAY:
            raise ConfigError(f"sim-straggler-delay must be in [0, {MAX_SIM_DELAY:.0f}] seconds, got {self.sim_straggler_delay}")

    #: Run-config keys of the training settings (the other options: :attr:`RUN_CONFIG_KEYS`).
    TRAINING_KEYS = {
        "num-rounds": "rounds",
        "aggregation": "aggregation",
        "local-epochs": "local_epochs",
        "learning-rate": "learning_rate",
        "batch-size": "batch_size",
        "model": "model",
        "hidden-units": "hidden_units",
        "hidden-layers": "hidden_layers",
        "seed": "seed",
        "key-holder": "key_holder",
    }

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> FedAvgConfig:
        """The FedAvg settings of a Flower run config; a key it does not set keeps this class's default.

        The defaults live here only (``pyproject.toml``'s ``[tool.flwr.app.config]``
        repeats them for ``flwr run .``; a test keeps the two equal).
        """
        values = settings_from_run_config(cls, cls.TRAINING_KEYS, run_config)
        return cls(**values, **cls.options_from_run_config(run_config))

    @classmethod
    def options_from_run_config(cls, run_config: Mapping[str, object]) -> RunConfigOptions:
        """The dropout, DP and simulation options present in a Flower run config, typed."""
        defaults = {f.name: f.default for f in fields(cls)}
        out: dict[str, int | float] = {}
        for key, name in cls.RUN_CONFIG_KEYS.items():
            if key in run_config:
                value = run_config[key]
                try:
                    out[name] = as_int(value, key) if isinstance(defaults[name], int) else as_float(value, key)
                except (ProtocolError, ValueError):
                    raise ConfigError(f"run config {key}: expected a number, got {run_config[key]!r}") from None
        # By construction: keys are RUN_CONFIG_KEYS' field names, each value typed as its field's default.
        return cast(RunConfigOptions, out)

    @property
    def dp_enabled(self) -> bool:
        return 0.0 < self.dp_epsilon < math.inf

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
