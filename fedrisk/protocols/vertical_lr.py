"""The spec of vertical logistic regression: its steps and its configuration.

The coordinator's role is :mod:`fedrisk.federation.vertical_lr`, the parties'
:mod:`fedrisk.parties.vertical_lr` (which draws an epoch's messages), the
protocol objects and the in-process estimator :mod:`fedrisk.models.vertical_lr`.
Setup is :data:`SETUP` (label holder) then :data:`JOIN` (feature holders); an
epoch is :data:`SCORES`, :data:`SCORE_SUM`, :data:`RESIDUAL`, :data:`PRODUCTS`,
and the last one ends with :data:`FINISH` instead of :data:`RESIDUAL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from fedrisk.protocols.step import Step
from fedrisk.wire import message_types as mt
from fedrisk.wire.config_values import config_bool, config_float, config_int, settings_from_run_config
from fedrisk.wire.exchange import Exchange

#: The label holder makes the CKKS keys and the training plan: the plan and the public contexts back.
SETUP = Step(mt.VLR_SETUP, "vlr.setup", "vlr.plan", ("public",), ("public",))
#: Each feature holder takes the plan and the public context and announces its feature and product counts.
JOIN = Step(mt.VLR_JOIN, "vlr.join", "vlr.joined", ("public",), ("public",))
#: Each feature holder applies last epoch's masked gradient and sends its encrypted partial scores [[u_k]].
SCORES = Step(
    mt.VLR_SCORES,
    "vlr.scores",
    "vlr.scores",
    ("public", "masked"),
    ("ciphertext",),
    varies="request: public at the first epoch of a run, masked (it carries last epoch's X_kᵀd + r_k) after",
)
#: The label holder gets Σ_k [[u_k]] and answers the encrypted residual [[d]], or stops.
SCORE_SUM = Step(
    mt.VLR_RESIDUAL,
    "vlr.score_sum",
    "vlr.residual",
    ("aggregate",),
    ("ciphertext", "public"),
    varies="reply: the encrypted residual (ciphertext, vlr.residual), or, when the label holder stops, its final metrics (public, vlr.stop)",
    other_reply="vlr.stop",
)
#: Each feature holder gets [[d]] (and the epoch's control bits) and answers [[X_kᵀd + r_k]].
RESIDUAL = Step(mt.VLR_GRADIENT, "vlr.residual", "vlr.product", ("ciphertext",), ("ciphertext",))
#: The label holder decrypts every [[X_kᵀd + r_k]] and answers them masked, reduced and flooded.
PRODUCTS = Step(mt.VLR_DECRYPT, "vlr.products", "vlr.masked_products", ("ciphertext",), ("masked",))
#: The last epoch's control bits to each feature holder, which writes its final bundle.
FINISH = Step(mt.VLR_FINISH, "vlr.finish", "vlr.finished", ("public",), ("public",))

STEPS: tuple[Step, ...] = (SETUP, JOIN, SCORES, SCORE_SUM, RESIDUAL, PRODUCTS, FINISH)


@dataclass(frozen=True)
class VerticalLRConfig:
    """Parameters of vertical logistic regression (``[algorithm]`` of FEDERATION.toml, the run config's keys).

    Parameters
    ----------
    epochs : int
        Most epochs (full-batch block updates).
    c : float
        Inverse L2 strength, as scikit-learn's ``C``.
    patience : int
        Stop after this many epochs without a better validation AUC.
    tol : float
        Stop when the training loss changes by less than this (relative) twice in a row.
    momentum : bool
        Nesterov acceleration with restarts.
    n_jobs : int
        Worker processes per feature holder for X_kᵀ[[d]].
    """

    epochs: int = 30
    c: float = 1.0
    patience: int = 5
    tol: float = 1e-6
    momentum: bool = True
    n_jobs: int = 1

    #: Run-config key → field.
    RUN_CONFIG_KEYS: ClassVar[dict[str, str]] = {
        "epochs": "epochs", "c": "c", "patience": "patience", "tol": "tol", "momentum": "momentum", "n-jobs": "n_jobs",
    }  # fmt: skip

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> VerticalLRConfig:
        """The settings of a Flower run config; a key it does not set keeps the default."""
        return cls(**settings_from_run_config(cls, cls.RUN_CONFIG_KEYS, run_config))

    def setup_config(self) -> dict[str, object]:
        """The label holder's parameters, as :data:`SETUP` carries them."""
        return {"c": self.c, "epochs": self.epochs, "patience": self.patience, "tol": self.tol, "momentum": self.momentum}

    def join_config(self) -> dict[str, object]:
        """A feature holder's parameters, as :data:`JOIN` carries them."""
        return {"n_jobs": self.n_jobs, "momentum": self.momentum}


def setup_params(exchange: Exchange) -> VerticalLRConfig:
    """The label holder's settings from a :data:`SETUP` request, typed; a key it lacks keeps the default."""
    d = VerticalLRConfig()
    return VerticalLRConfig(
        epochs=config_int(exchange, "epochs", d.epochs),
        c=config_float(exchange, "c", d.c),
        patience=config_int(exchange, "patience", d.patience),
        tol=config_float(exchange, "tol", d.tol),
        momentum=config_bool(exchange, "momentum", d.momentum),
    )


def join_params(exchange: Exchange) -> VerticalLRConfig:
    """A feature holder's settings from a :data:`JOIN` request (``n_jobs``, ``momentum``; the rest keep their defaults)."""
    d = VerticalLRConfig()
    return VerticalLRConfig(n_jobs=config_int(exchange, "n_jobs", d.n_jobs), momentum=config_bool(exchange, "momentum", d.momentum))
