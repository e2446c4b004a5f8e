"""The spec of vertical SecureBoost: its steps and its configuration.

The coordinator's role is :mod:`fedrisk.federation.secureboost`, the parties'
:mod:`fedrisk.parties.secureboost` (which draws a round's messages), the
protocol objects, payloads and the in-process estimator
:mod:`fedrisk.models.secureboost`. Setup is :data:`SETUP` (label holder) then
:data:`JOIN` (feature holders); then rounds of :data:`BANK` (the label holder
gets every feature holder's replies, answers its next outbox) and :data:`ROUND`
(each feature holder gets what the outbox holds for it) until the label holder
is done.

Payloads of several kinds share a message (:mod:`fedrisk.wire.payload_batch`):
such a message's class is :func:`~fedrisk.wire.payload_batch.batch_class` of its
items — the one class other than public among them, else public — which the
sender computes even where the step's class is fixed (:data:`JOIN`'s reply holds
the public bin layout only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from fedrisk.models.secureboost_tree import BoostParams
from fedrisk.protocols.step import Step
from fedrisk.wire import message_types as mt
from fedrisk.wire.config_values import config_float, config_int, settings_from_run_config
from fedrisk.wire.exchange import Exchange

_BATCH = "batch_class of the message's payloads (ciphertext or masked if any is, else public)"

#: The label holder makes its context, bins its features and sends the plan, the public contexts and the row split.
SETUP = Step(mt.SB_SETUP, "sb.setup", "sb.plan", ("public",), ("public",))
#: Each feature holder takes the plan, makes its own bins key and answers its bin layout with its bins encrypted under it.
JOIN = Step(
    mt.SB_JOIN, "sb.join", "sb.layout", ("public",), ("ciphertext", "public"), varies="ciphertext with encrypted bins; public from a holder that covers no row"
)
#: The label holder gets every feature holder's replies and answers its next outbox (done, with its final metrics, at the end).
BANK = Step(mt.SB_BANK_ROUND, "sb.bank", "sb.outbox", ("ciphertext", "masked", "public"), ("ciphertext", "public"), varies=_BATCH)
#: Each feature holder gets what the outbox holds for it (masked histograms, splits, done) and answers masked totals and partitions.
ROUND = Step(mt.SB_ROUND, "sb.round", "sb.replies", ("ciphertext", "public"), ("masked", "public"), varies=_BATCH)

STEPS: tuple[Step, ...] = (SETUP, JOIN, BANK, ROUND)


@dataclass(frozen=True)
class SecureBoostConfig:
    """Parameters of SecureBoost (``[algorithm]`` of FEDERATION.toml, the run config's keys).

    FATE's reference configuration is 30 trees, depth 3, 32 bins. The model's
    defaults are :class:`fedrisk.models.secureboost_tree.BoostParams`'; these
    take them from there (:meth:`params` maps the run config's names to the
    model's), plus the run's seed and worker count.
    """

    trees: int = BoostParams.n_trees
    depth: int = BoostParams.max_depth
    learning_rate: float = BoostParams.learning_rate
    l2: float = BoostParams.reg_lambda
    min_child_weight: float = BoostParams.min_child_weight
    subsample: float = BoostParams.subsample
    bins: int = BoostParams.n_bins
    seed: int = 0
    n_jobs: int = 1

    #: Run-config key → field (the same key as the field, in Flower's kebab case).
    RUN_CONFIG_KEYS: ClassVar[dict[str, str]] = {
        "trees": "trees", "depth": "depth", "learning-rate": "learning_rate", "l2": "l2",
        "min-child-weight": "min_child_weight", "subsample": "subsample", "bins": "bins", "seed": "seed", "n-jobs": "n_jobs",
    }  # fmt: skip

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> SecureBoostConfig:
        """The settings of a Flower run config; a key it does not set keeps the default."""
        values = settings_from_run_config(cls, cls.RUN_CONFIG_KEYS, run_config)
        return cls(**values)

    def params(self) -> BoostParams:
        """The model's hyper-parameters (validated there: one line per bad value)."""
        return BoostParams(self.trees, self.depth, float(self.learning_rate), float(self.l2), float(self.min_child_weight), float(self.subsample), self.bins)

    def setup_config(self) -> dict[str, object]:
        """The label holder's parameters as :data:`SETUP` carries them: the model's names (:class:`BoostParams`) and ``random_state``."""
        return {**self.params().to_dict(), "random_state": self.seed, "n_jobs": self.n_jobs}


def setup_params(exchange: Exchange) -> dict[str, Any]:
    """The label holder's model keywords from a :data:`SETUP` request, typed; a key it lacks keeps the model's default."""
    defaults = BoostParams()
    out: dict[str, Any] = {}
    for f in fields(BoostParams):
        default = getattr(defaults, f.name)
        out[f.name] = config_int(exchange, f.name, default) if isinstance(default, int) else config_float(exchange, f.name, default)
    out["random_state"] = config_int(exchange, "random_state", SecureBoostConfig.seed)
    out["n_jobs"] = config_int(exchange, "n_jobs", SecureBoostConfig.n_jobs)  # the bank's histogram workers
    return out
