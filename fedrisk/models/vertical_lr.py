"""Vertical logistic regression (scorecard) across a bank and feature holders, over CKKS.

The **label holder** (a bank) holds the default labels, its own features and the
CKKS secret key. **Feature holders** (tax bureau, platform) hold other features
about the same SMEs, rows already aligned by PSI to the label holder's order
with a coverage mask. The **coordinator** holds only a public context and
routes every message. Each party keeps, standardises and updates its own
coefficients; nobody sees another party's features or the labels.

Message flow (one epoch = one full-batch round; every arrow is a serialised payload
relayed by the coordinator, content class in brackets)::

    setup   bank ──TrainingPlan [public]──▶ feature holders
    1.      feature holder k ──EncryptedScores [ciphertext]──▶ coordinator
    2.      coordinator ──EncryptedScoreSum [aggregate]──▶ bank          (Σ_k [[u_k]])
    3.      bank ──EpochControl [public]──▶ feature holders               (improved/restart/stop bits)
    4.      bank ──EncryptedResidual [ciphertext]──▶ feature holders      ([[d]], d = σ(z) − y)
    5.      feature holder k ──EncryptedMaskedGradient [ciphertext]──▶ bank   ([[X_kᵀd + r_k]], reduced)
    6.      bank ──MaskedGradient [masked]──▶ feature holder k            (X_kᵀd + r_k: m values, one per feature)
    7.      feature holder k removes r_k, updates w_k; the bank updates its own block

Optimiser. Full-batch block majorisation–minimisation with Nesterov momentum:
each party ``k`` preconditions its own gradient with
``P_k = (K/(4n) Z_kᵀZ_k + λI)⁻¹`` (Böhning's curvature bound 1/4; the factor
``K`` = number of parties makes the block-diagonal bound a global upper bound,
so the plain step never increases the loss), then
``w ← y − P_k ∇_k``, ``y = w + (t−1)/(t+2)·(w − w_prev)``. Momentum restarts
when the bank sees the training loss rise (one public bit). Everything a party
needs is its own Gram matrix — no cross-party curvature — and on the UCI
default-credit split it reaches scikit-learn's optimum (AUC within 1e-4) in
about 15 epochs, where full-batch Adam needs 100 and mini-batch Adam at batch
10,000 is still 0.003 AUC short after 30. Full batch also means one round of
messages per epoch (the Flower deployment pays per message).
λ = 1/(C·n_train) matches scikit-learn's ``LogisticRegression(C=C)``; the
intercept, held by the bank, is not penalised.

Uncovered rows. A feature holder contributes 0 (its standardised mean) for rows
it does not cover, and the bank adds one coverage indicator per feature holder
(``covered:<party>``) to its own block: coverage is public to the bank through
PSI, and the indicator lets the model learn that a thin file is itself a risk
signal. Indicators that are constant on the training rows are left out.

Threat model (honest-but-curious parties and coordinator, no coordinator–bank
collusion, TLS on every link). What each party learns:

* **Bank**: Σ_k u_k on every aligned row each epoch — with a single feature
  holder that is u_1 = X_1 w_1 itself, which the bank needs anyway to score
  (over many epochs it reveals the span of X_1, inherent in revealing partial
  scores); masked gradients ``X_kᵀd + r_k`` — each product reduced inside the
  ciphertext so that every slot holds a feature's total under one uniform mask
  of ±2^46 (real and imaginary) — whose statistical distance from those of any
  other ``X_k`` is at most ``E·Σ_f Σ_rows |X_f| / 2^46`` over a whole run of E
  epochs (``FeatureHolderLR.run_mask_bits``; 2^-24 for the default-credit run,
  2^-17 for 30 epochs of 100,000 × 300; see :mod:`fedrisk.crypto.encrypted_matvec`);
  from each feature holder its feature *count*.
* **Feature holder**: ciphertexts of d, and per epoch exactly ``m`` numbers: its
  own gradient ``X_kᵀd`` plus the bank's flooding (inherent: it must update
  w_k; ``m`` linear functionals of d, the projection of the residuals on its own
  columns — the attack tests show least squares on them recovers labels no
  better than the base rate, and > 95 % when every slot is returned instead),
  the row split and three bits per epoch (validation improved, momentum restart,
  stop). Never y, d, a per-slot partial sum, another party's scores or features.
* **Coordinator**: ciphertexts, sizes, timing, the public bits; it holds no
  secret key (its context refuses ``decrypt``).

The bank fixes each feature holder's feature count ``m`` at setup and returns
exactly ``m`` values per epoch — per feature the mean (or, without Galois keys,
the sum) of its slot copies, a function of the feature's total alone — whatever
a product declares; it refuses a product whose groups are not powers of two
with ``F·L = 4096`` or add up to more than ``m`` (:meth:`LabelHolderLR.decrypt_gradient`).
It decrypts each feature holder's product at most once per epoch, only
ciphertexts shaped like a product (announced count, level, scale 2^50), and
floods what it returns with Gaussian noise (2^-4) so the exact decryption noise
never leaves it. That limits, but cannot rule out, an *actively malicious*
feature holder putting another linear function of d (e.g. a row indicator as a
"feature") in place of a total: it still gets only ``m`` numbers per epoch, but
defending against their choice needs proofs of correct evaluation, outside this
threat model (the audit ledger records every request). All payloads carry the
context fingerprint and are refused under another context.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts

from fedrisk.crypto.ckks import VERTICAL_LR, CKKSContext, KeyHolderContext, PublicContext
from fedrisk.crypto.encrypted_matvec import (
    CKKSRuntime,
    EncryptedMatVec,
    EncryptedVector,
    MaskState,
    check_fingerprint,
    check_group_sizes,
    context_fingerprint,
    decrypt_ciphertexts,
    product_scale,
    reduce_product,
    residual_level,
    residual_scale,
    run_mask_bits,
    score_level,
)
from fedrisk.crypto.frames import pack_frame, peek_frame, unpack_frame
from fedrisk.crypto.secure_random import secure_normal
from fedrisk.errors import ConfigError, CryptoError, DataValidationError, ProtocolError
from fedrisk.models.metrics import auc, ks
from fedrisk.models.in_process import InProcessEstimator, InProcessRun, Wire, WireRecord, align_rows, table_parts
from fedrisk.models.payload_fields import bool_field, float_field, int_field, str_field

__all__ = [
    "CoordinatorLR",
    "EncryptedMaskedGradient",
    "EncryptedResidual",
    "EncryptedScoreSum",
    "EncryptedScores",
    "EpochControl",
    "FeatureHolderLR",
    "LabelHolderLR",
    "MaskedGradient",
    "PAYLOAD_TYPES",
    "TrainingPlan",
    "VerticalLogisticRegression",
    "WireRecord",
    "content_class_of",
    "make_context",
    "train_vertical_lr",
]

log = logging.getLogger("fedrisk.vertical_lr")

SCORE_LIMIT = 2.0**16
"""Partial scores beyond this are refused (they would leave the CKKS headroom)."""
DECRYPT_FLOOD_STD = 2.0**-4
"""Std of the Gaussian the bank adds to each value it returns.

It hides the exact decryption (and decoding) noise from the feature holder that
chose the ciphertext; it is above the decoder's resolution at the 2^46 masks
(2^-6), so even a rounding step that the noise tips over stays hidden.
"""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact and overflow-free


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


# =========================================================================== payloads


class VerticalPayload:
    """Base of the protocol payloads: compact frames with magic, version and fingerprint.

    Subclasses declare ``KIND`` (4 bytes on the wire) and ``content_class`` — one of
    ``ciphertext``, ``masked``, ``public``, ``aggregate`` — which the audit ledger records.
    """

    KIND: ClassVar[bytes]
    content_class: ClassVar[str]
    fingerprint: str

    def _header(self) -> dict[str, Any]:
        raise NotImplementedError

    def _blobs(self) -> list[bytes]:
        return []

    @classmethod
    def _build(cls, fingerprint: str, header: Mapping[str, Any], blobs: list[bytes]) -> Any:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise (no pickle): see :func:`fedrisk.crypto.frames.pack_frame`."""
        return pack_frame(self.KIND, self.fingerprint, self._header(), self._blobs())

    @classmethod
    def from_bytes(cls, data: bytes, *, context: CKKSContext | ts.Context | None = None) -> Any:
        """Parse; with ``context``, refuse a payload made under another context (CKKS here, BFV for SecureBoost and WOE)."""
        _, fp, header, blobs = unpack_frame(data, cls.KIND)
        obj = cls._build(fp, header, blobs)
        if context is not None:
            obj.check(context)
        return obj

    def check(self, context: CKKSContext | ts.Context) -> None:
        """Raise :class:`~fedrisk.errors.ContextMismatchError` unless made under ``context``."""
        check_fingerprint(context_fingerprint(context), self.fingerprint, type(self).__name__)


@dataclass(frozen=True)
class TrainingPlan(VerticalPayload):
    """Bank → feature holders, once: the row split and the shared hyper-parameters."""

    KIND: ClassVar[bytes] = b"VPLN"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    label_holder: str
    feature_holders: tuple[str, ...]
    train_mask: np.ndarray = field(repr=False)
    """Boolean, one per aligned row: True = training row, False = validation row."""
    l2: float
    damping: float
    max_epochs: int

    @property
    def n_rows(self) -> int:
        return int(self.train_mask.size)

    @property
    def n_train(self) -> int:
        return int(self.train_mask.sum())

    def _header(self) -> dict[str, Any]:
        return {
            "label_holder": self.label_holder,
            "feature_holders": list(self.feature_holders),
            "n_rows": self.n_rows,
            "l2": self.l2,
            "damping": self.damping,
            "max_epochs": self.max_epochs,
        }

    def _blobs(self) -> list[bytes]:
        return [np.packbits(self.train_mask.astype(bool)).tobytes()]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> TrainingPlan:
        n = int_field(h, "n_rows")
        holders = h.get("feature_holders")
        if not isinstance(holders, list) or not all(isinstance(x, str) and x for x in holders):
            raise ProtocolError("payload field 'feature_holders' must be a list of names")
        if len(blobs) != 1 or len(blobs[0]) != (n + 7) // 8:
            raise ProtocolError("training plan row mask has the wrong size")
        mask = np.unpackbits(np.frombuffer(blobs[0], dtype=np.uint8), count=n).astype(bool)
        return cls(fp, str_field(h, "label_holder"), tuple(holders), mask, float_field(h, "l2"), float_field(h, "damping"), int_field(h, "max_epochs"))


@dataclass(frozen=True)
class _CiphertextList(VerticalPayload):
    """Common shape: a party, an epoch, a vector length and SEAL ciphertexts."""

    fingerprint: str
    party: str
    epoch: int
    n_values: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "epoch": self.epoch, "n": self.n_values}

    def _blobs(self) -> list[bytes]:
        return list(self.ciphertexts)

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> Any:
        return cls(fp, str_field(h, "party"), int_field(h, "epoch"), int_field(h, "n"), tuple(blobs))

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.ciphertexts)


@dataclass(frozen=True)
class EncryptedScores(_CiphertextList):
    """Feature holder → coordinator: [[u_k]] on every aligned row.

    Training rows carry the score at the momentum look-ahead, validation rows at the
    current coefficients. ``party`` is the sender.
    """

    KIND: ClassVar[bytes] = b"VSCR"
    content_class: ClassVar[str] = "ciphertext"


@dataclass(frozen=True)
class EncryptedScoreSum(_CiphertextList):
    """Coordinator → bank: Σ_k [[u_k]]. ``party`` lists the summed parties, comma-separated."""

    KIND: ClassVar[bytes] = b"VSUM"
    content_class: ClassVar[str] = "aggregate"

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(self.party.split(","))


@dataclass(frozen=True)
class EncryptedResidual(_CiphertextList):
    """Bank → feature holders: [[d]] on the training rows, d = σ(z) − y. ``party`` is the bank."""

    KIND: ClassVar[bytes] = b"VRES"
    content_class: ClassVar[str] = "ciphertext"


@dataclass(frozen=True)
class EncryptedMaskedGradient(_CiphertextList):
    """Feature holder → bank: packed [[X_kᵀd + r_k]]. ``party`` is the sender.

    ``n_values`` is the number of values the product yields (one per feature);
    ``groups`` the number of features ``F`` packed in each ciphertext (interleaved:
    feature ``f`` in slots ``f + F·i``); ``reduced``: every slot already holds its
    feature's total (otherwise the bank sums each feature's slots).
    """

    KIND: ClassVar[bytes] = b"VEMG"
    content_class: ClassVar[str] = "ciphertext"

    groups: tuple[int, ...] = ()
    reduced: bool = True

    def _header(self) -> dict[str, Any]:
        return {**super()._header(), "groups": list(self.groups), "reduced": self.reduced}

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> EncryptedMaskedGradient:
        groups = h.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in groups):
            raise ProtocolError("payload field 'groups' must be a list of integers")
        return cls(fp, str_field(h, "party"), int_field(h, "epoch"), int_field(h, "n"), tuple(blobs), tuple(groups), bool_field(h, "reduced"))


@dataclass(frozen=True)
class MaskedGradient(VerticalPayload):
    """Bank → feature holder ``party``: the decrypted, still masked ``X_kᵀd + r_k``."""

    KIND: ClassVar[bytes] = b"VMSK"
    content_class: ClassVar[str] = "masked"

    fingerprint: str
    party: str
    epoch: int
    values: np.ndarray = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "epoch": self.epoch, "n": int(self.values.size)}

    def _blobs(self) -> list[bytes]:
        return [np.ascontiguousarray(self.values, dtype="<f8").tobytes()]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> MaskedGradient:
        n = int_field(h, "n")
        if len(blobs) != 1 or len(blobs[0]) != 8 * n:
            raise ProtocolError("masked gradient has the wrong size")
        values = np.frombuffer(blobs[0], dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ProtocolError("masked gradient contains non-finite values")
        return cls(fp, str_field(h, "party"), int_field(h, "epoch"), values)


@dataclass(frozen=True)
class EpochControl(VerticalPayload):
    """Bank → feature holders after each scoring round: three public bits.

    ``improved``: the current coefficients are the best so far on validation (keep
    them); ``restart``: reset momentum; ``stop``: training ends, restore the best.
    """

    KIND: ClassVar[bytes] = b"VCTL"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    epoch: int
    improved: bool
    restart: bool
    stop: bool

    def _header(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "improved": self.improved, "restart": self.restart, "stop": self.stop}

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> EpochControl:
        if blobs:
            raise ProtocolError("epoch control carries no data")
        return cls(fp, int_field(h, "epoch"), bool_field(h, "improved"), bool_field(h, "restart"), bool_field(h, "stop"))


PAYLOAD_TYPES: dict[bytes, type[VerticalPayload]] = {
    cls.KIND: cls
    for cls in (
        TrainingPlan,
        EncryptedScores,
        EncryptedScoreSum,
        EncryptedResidual,
        EncryptedMaskedGradient,
        MaskedGradient,
        EpochControl,
    )
}


def content_class_of(data: bytes) -> str:
    """Content class (``ciphertext``/``masked``/``public``/``aggregate``) of a serialised payload."""
    kind, _, _ = peek_frame(data)
    cls = PAYLOAD_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown vertical-LR payload kind {kind!r}")
    return cls.content_class


# =========================================================================== helpers


def _standardise(X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale over ``rows`` (NaN ignored); a constant column gets scale 1."""
    sub = X[rows]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(sub, axis=0) if sub.size else np.zeros(X.shape[1])
        std = np.nanstd(sub, axis=0) if sub.size else np.ones(X.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean, std


def _apply_standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    Z = (X - mean) / scale
    return np.where(np.isnan(Z), 0.0, Z)  # missing → training mean


def monotone_signs(monotone: Mapping[str, int] | None, names: Sequence[str], who: str) -> np.ndarray:
    """Per feature the owner's declared coefficient sign (+1, −1; 0 = free), checked against its own names.

    Raises
    ------
    ConfigError
        A sign on a feature the owner does not have, or a sign other than ±1/0 (one line).
    """
    monotone = dict(monotone or {})
    unknown = sorted(set(monotone) - set(names))
    if unknown:
        raise ConfigError(f"{who}: monotone sign on unknown feature {unknown[0]!r}")
    for feat, sign in monotone.items():
        if sign not in (-1, 0, 1) or isinstance(sign, bool):
            raise ConfigError(f"{who}: monotone sign of {feat!r} must be +1, -1 or 0, got {sign!r}")
    return np.array([float(monotone.get(n, 0)) for n in names])


def _preconditioner(Z: np.ndarray, n_train: int, damping: float, l2: float, free: int | None = None) -> np.ndarray:
    """``(K/(4n) ZᵀZ + λI)⁻¹``; column ``free`` (the intercept) is not penalised."""
    G = (damping / (4.0 * n_train)) * (Z.T @ Z)
    ridge = np.full(Z.shape[1], l2)
    if free is not None:
        ridge[free] = 0.0
    G[np.diag_indices_from(G)] += ridge + 1e-10 * max(1.0, float(np.trace(G)) / max(1, Z.shape[1]))
    return np.linalg.inv(G)


class _BlockNesterov:
    """One party's block of the accelerated MM optimiser (identical at every party)."""

    def __init__(self, n_params: int, precond: np.ndarray, l2: float, free: int | None, momentum: bool, signs: np.ndarray | None = None) -> None:
        self.signs = None if signs is None or not np.any(signs) else np.asarray(signs, dtype=np.float64)
        self.w = np.zeros(n_params)
        self.w_prev = np.zeros(n_params)
        self.t = 1
        self.P = precond
        self.penalty = np.full(n_params, l2)
        if free is not None:
            self.penalty[free] = 0.0
        self.momentum = momentum

    def lookahead(self) -> np.ndarray:
        beta = (self.t - 1) / (self.t + 2) if self.momentum else 0.0
        return self.w + beta * (self.w - self.w_prev)

    def step(self, grad_sum: np.ndarray, n_train: int, restart: bool) -> None:
        y = self.lookahead()
        grad = grad_sum / n_train + self.penalty * y
        w = y - self.P @ grad
        if self.signs is not None:  # projected step: a declared sign is never crossed
            w = np.where(self.signs * w < 0.0, 0.0, w)
        self.w_prev, self.w = self.w, w
        self.t = 1 if restart else self.t + 1


# =========================================================================== parties


class LabelHolderLR:
    """The bank's side: labels, own features, the CKKS secret key.

    Parameters
    ----------
    context : KeyHolderContext
        The bank's CKKS context **with** its secret key (:func:`make_context`).
    name : str
        Party name used in payloads and the model record.
    C : float
        Inverse L2 strength, as in scikit-learn (``λ = 1/(C·n_train)``).
    max_epochs : int
        Most gradient updates.
    patience : int
        Stop after this many epochs without a lower validation log-loss.
    tol : float
        Also stop once the training loss changes by less than ``tol`` (relative) twice in a row.
    validation_fraction : float
        Share of the aligned rows kept for early stopping (0 disables it).
    damping : float, optional
        Curvature multiplier ``K`` (default: number of parties, the safe bound).
    momentum : bool
        Nesterov acceleration with loss-based restart.
    flood_std : float
        Gaussian noise added to every masked value the bank returns.
    random_state : int, optional
        Seed of the validation split.
    monotone : mapping feature name → +1/−1, optional
        The bank's declared coefficient sign per own feature (projected updates:
        the coefficient stays on that side of 0, so the score is monotone in it).

    Attributes
    ----------
    coef_ : ndarray
        Bank-block coefficients on standardised features (best epoch).
    intercept_ : float
    feature_names_ : list of str
        Own features followed by coverage indicators.
    mean_, scale_ : ndarray
        Standardisation of the bank block.
    best_epoch_ : int
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss`` (at the look-ahead), ``val_auc``, ``val_ks``
        (of the current coefficients), ``improved``, ``restart``.
    n_epochs_ : int
        Gradient updates performed.
    """

    def __init__(
        self,
        context: KeyHolderContext,
        *,
        name: str = "bank",
        C: float = 1.0,
        max_epochs: int = 30,
        patience: int = 5,
        tol: float = 1e-6,
        validation_fraction: float = 0.1,
        damping: float | None = None,
        momentum: bool = True,
        flood_std: float = DECRYPT_FLOOD_STD,
        random_state: int | None = None,
        monotone: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(context, KeyHolderContext):
            raise CryptoError("the label holder needs its CKKS KeyHolderContext (with the secret key), see make_context()")
        self.monotone = monotone
        if not 0.0 <= validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        if C <= 0:
            raise ConfigError(f"C must be positive, got {C}")
        self.context = context
        self.name = name
        self.C = C
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.tol = float(tol)
        self.validation_fraction = float(validation_fraction)
        self.damping = damping
        self.momentum = momentum
        self.flood_std = float(flood_std)
        self.random_state = random_state
        self.fingerprint = context.fingerprint
        self.runtime = CKKSRuntime.for_context(context)
        self._holder_counts: dict[str, int] = {}
        self._holder_products: dict[str, int] = {}

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        X: np.ndarray,
        y: np.ndarray,
        coverage: Mapping[str, np.ndarray],
        *,
        feature_names: Sequence[str] | None = None,
        train_mask: np.ndarray | None = None,
        eval_mask: np.ndarray | None = None,
    ) -> TrainingPlan:
        """Prepare the bank block and return the plan for the feature holders.

        Parameters
        ----------
        X : ndarray (n_rows, n_features)
            Own features on the aligned rows.
        y : ndarray (n_rows,)
            0/1 default labels.
        coverage : mapping party → bool ndarray (n_rows,)
            Which aligned rows each feature holder covers (known from PSI).
        train_mask : bool ndarray, optional
            Explicit split; default: a random ``validation_fraction`` held out.
        eval_mask : bool ndarray, optional
            Held-out rows kept apart from early stopping: the best epoch is chosen
            on the other held-out rows, and the joint model's metrics are measured
            on these (``eval_auc_``, ``eval_ks_``), so that choosing the epoch does
            not flatter them.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).ravel()
        if X.ndim != 2 or X.shape[0] != y.size:
            raise DataValidationError(f"label holder: X has shape {X.shape} but there are {y.size} labels")
        if not np.all(np.isin(y, (0, 1))):
            raise DataValidationError("label holder: labels must be 0/1")
        n = y.size
        if train_mask is None:
            train_mask = np.ones(n, dtype=bool)
            if self.validation_fraction > 0:
                rng = np.random.default_rng(self.random_state)
                n_val = max(1, int(round(self.validation_fraction * n)))
                train_mask[rng.permutation(n)[:n_val]] = False
        train_mask = np.asarray(train_mask, dtype=bool)
        if train_mask.shape != (n,):
            raise DataValidationError("label holder: train_mask must have one entry per row")
        eval_mask = np.zeros(n, dtype=bool) if eval_mask is None else np.asarray(eval_mask, dtype=bool)
        if eval_mask.shape != (n,) or (eval_mask & train_mask).any():
            raise DataValidationError("label holder: eval_mask must mark held-out (non-training) rows only")
        self.has_validation_ = bool((~train_mask & ~eval_mask).any())
        for part, rows in (("training", train_mask), ("validation", ~train_mask & ~eval_mask)):
            if (part == "training" or self.has_validation_) and np.unique(y[rows]).size < 2:
                raise DataValidationError(f"label holder: the {part} rows hold only one class")
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
        self.feature_holders_ = tuple(coverage)
        extra, extra_names = [], []
        for party, cov in coverage.items():
            cov = np.asarray(cov, dtype=bool)
            if cov.shape != (n,):
                raise DataValidationError(f"coverage of {party!r} must have one entry per aligned row")
            share = cov[train_mask].mean()
            if 0.0 < share < 1.0:  # a constant indicator would duplicate the intercept
                extra.append(cov.astype(np.float64))
                extra_names.append(f"covered:{party}")
        self.indicator_parties_ = [nm.split(":", 1)[1] for nm in extra_names]
        full = np.column_stack([X, *extra]) if extra else X
        self.feature_names_ = names + extra_names
        self.mean_, self.scale_ = _standardise(full, train_mask)
        Z = np.column_stack([_apply_standardise(full, self.mean_, self.scale_), np.ones(n)])
        self._Z, self._y, self._train = Z, y.astype(np.float64), train_mask
        self._stop = ~train_mask & ~eval_mask
        self._eval = eval_mask
        self._Z_train, self._Z_val, self._Z_eval = Z[train_mask], Z[self._stop], Z[eval_mask]
        self.eval_auc_: float | None = None
        self.eval_ks_: float | None = None
        self.n_train_ = int(train_mask.sum())
        K = float(self.damping) if self.damping is not None else float(1 + len(coverage))
        l2 = 1.0 / (self.C * self.n_train_)
        free = Z.shape[1] - 1
        signs = monotone_signs(self.monotone, names, self.name)
        signs = np.concatenate([signs, np.zeros(Z.shape[1] - signs.size)])  # indicators, intercept: free
        self._opt = _BlockNesterov(Z.shape[1], _preconditioner(Z[train_mask], self.n_train_, K, l2, free), l2, free, self.momentum, signs)
        # Start at the prior log-odds, not 0 (PD 0.5): every epoch's model is then
        # calibrated on average, whichever epoch early stopping keeps.
        rate = float(np.clip(self._y[train_mask].mean(), 1e-6, 1 - 1e-6))
        self._opt.w[free] = self._opt.w_prev[free] = math.log(rate / (1.0 - rate))
        self._best_w = self._opt.w.copy()
        self.best_epoch_ = 0
        self._best_auc = -np.inf
        self._best_val_loss = np.inf
        self._prev_loss = np.inf
        self._small_changes = 0
        self.epoch_ = 0
        self.converged_ = False
        self._open_epoch: int | None = None
        self._decrypted: set[tuple[str, int]] = set()
        self.history_: list[dict[str, Any]] = []
        self.n_epochs_ = 0
        self._set_fitted(self._best_w)
        self.plan_ = TrainingPlan(self.fingerprint, self.name, self.feature_holders_, train_mask, l2, K, self.max_epochs)
        return self.plan_

    def _set_fitted(self, w: np.ndarray) -> None:
        self.coef_ = w[:-1].copy()
        self.intercept_ = float(w[-1])

    def best_weights(self) -> tuple[np.ndarray, float]:
        """Coefficients and intercept of the best epoch so far (what a checkpoint keeps)."""
        return self._best_w[:-1].copy(), float(self._best_w[-1])

    # ------------------------------------------------------------------ epoch
    def receive_scores(self, total: EncryptedScoreSum) -> tuple[EpochControl, EncryptedResidual | None]:
        """Decrypt Σ_k u_k, evaluate, decide; return the control bits and [[d]] (None when stopping)."""
        total.check(self.context)
        if total.epoch != self.epoch_:
            raise ProtocolError(f"score sum is for epoch {total.epoch}, the bank is at epoch {self.epoch_}")
        if sorted(total.parties) != sorted(self.feature_holders_):
            raise ProtocolError(f"score sum covers {sorted(total.parties)}, expected {sorted(self.feature_holders_)}")
        n = self._y.size
        if total.n_values != n:
            raise ProtocolError(f"score sum has {total.n_values} values, expected {n}")
        others = decrypt_ciphertexts(self.context, total.ciphertexts, n)
        tr, va = self._train, self._stop
        z_train = self._Z_train @ self._opt.lookahead() + others[tr]
        loss = _log_loss(z_train, self._y[tr])
        entry: dict[str, Any] = {"epoch": self.epoch_, "train_loss": loss}
        if self.has_validation_:
            z_val = self._Z_val @ self._opt.w + others[va]
            val_auc = auc(self._y[va], z_val)
            val_loss = _log_loss(z_val, self._y[va])
            entry.update(val_auc=val_auc, val_ks=ks(self._y[va], z_val), val_loss=val_loss)
            # Validation log-loss, not AUC, chooses the epoch: a PD must be calibrated, not only ranked.
            improved = val_loss < self._best_val_loss
        else:
            improved = True
        if improved:
            self._best_auc = entry.get("val_auc", np.inf)
            self._best_val_loss = entry.get("val_loss", -np.inf)
            self.best_epoch_ = self.epoch_
            self._best_w = self._opt.w.copy()
            if self._eval.any() and np.unique(self._y[self._eval]).size == 2:
                z_eval = self._Z_eval @ self._opt.w + others[self._eval]
                self.eval_auc_, self.eval_ks_ = auc(self._y[self._eval], z_eval), ks(self._y[self._eval], z_eval)
        restart = bool(self.momentum and loss > self._prev_loss)
        change = abs(self._prev_loss - loss) / max(1.0, abs(loss)) if np.isfinite(self._prev_loss) else np.inf
        self._small_changes = self._small_changes + 1 if change < self.tol else 0
        self._prev_loss = loss
        stop = self.epoch_ >= self.max_epochs or (self.has_validation_ and self.epoch_ - self.best_epoch_ >= self.patience) or self._small_changes >= 2
        entry.update(improved=improved, restart=restart, stop=stop)
        self.history_.append(entry)
        log.info(
            "epoch %d: train loss %.6f%s%s",
            self.epoch_,
            loss,
            f", val AUC {entry['val_auc']:.4f}" if "val_auc" in entry else "",
            " (stop)" if stop else "",
        )
        control = EpochControl(self.fingerprint, self.epoch_, improved, restart, stop)
        if stop:
            self.converged_ = self._small_changes >= 2
            self._set_fitted(self._best_w)
            self._open_epoch = None
            return control, None
        d = np.clip(_sigmoid(z_train) - self._y[tr], -1.0, 1.0)  # |d| ≤ 1 bounds the masks
        blobs = self.runtime.encrypt(d, residual_level(self.runtime), residual_scale())
        residual = EncryptedResidual(self.fingerprint, self.name, self.epoch_, int(d.size), tuple(blobs))
        self._opt.step(self._Z_train.T @ d, self.n_train_, restart)
        self._open_epoch = self.epoch_
        self.epoch_ += 1
        self.n_epochs_ = self.epoch_
        return control, residual

    def decrypt_gradient(self, payload: EncryptedMaskedGradient) -> MaskedGradient:
        """Decrypt a feature holder's masked product and return ONE flooded value per feature.

        The feature holder's count ``m`` was fixed at setup
        (:meth:`record_feature_count`); the product's declared layout must yield
        exactly ``m`` values — power-of-two groups ``F`` with ``F·L = slots`` whose
        sizes add up to ``m``. Whatever the ciphertexts hold, only ``m`` numbers
        leave: per feature the mean of its ``L`` slot copies (reduced products) or
        their sum (unreduced products of the no-Galois-keys fallback) — a function
        of the feature's total only, never of one slot's partial sum (see
        :func:`~fedrisk.crypto.encrypted_matvec.reduce_product`). Each is flooded
        with Gaussian noise (``flood_std``). Only ciphertexts shaped like a product are
        decrypted (the announced number, at the residual's level and the product
        scale), at most once per party and epoch.

        Raises
        ------
        ProtocolError
            Any of the above does not hold; the message names which.
        """
        payload.check(self.context)
        party = payload.party
        if party not in self.feature_holders_:
            raise ProtocolError(f"{party!r} is not a feature holder of this training")
        if payload.epoch != self._open_epoch:
            raise ProtocolError(f"masked gradient for epoch {payload.epoch} is not expected now")
        key = (party, payload.epoch)
        if key in self._decrypted:
            raise ProtocolError(f"{party!r} already had its epoch-{payload.epoch} product decrypted")
        m = self._holder_counts.get(party)
        if m is None:
            raise ProtocolError(f"{party!r} has no feature count fixed at setup; refusing to decrypt its product")
        slots = self.runtime.slots
        sizes = check_group_sizes(payload.groups, slots, f"product of {party!r}")
        declared = sum(sizes)
        if declared > m or payload.n_values > m:
            raise ProtocolError(
                f"product of {party!r} declares a layout returning {max(declared, payload.n_values)} values, more than its {m} features fixed at setup"
            )
        if declared != m or payload.n_values != m:
            raise ProtocolError(f"product of {party!r} declares {declared} values, its feature count fixed at setup is {m}")
        if len(payload.ciphertexts) != len(sizes):
            raise ProtocolError(f"product of {party!r} has {len(payload.ciphertexts)} ciphertexts for {len(sizes)} groups")
        expected = self._holder_products.get(party)
        if expected is not None and len(payload.ciphertexts) != expected:
            raise ProtocolError(f"{party!r} sent {len(payload.ciphertexts)} product ciphertexts, announced {expected}")
        level = residual_level(self.runtime)
        scale = product_scale()
        for blob in payload.ciphertexts:
            ct = self.runtime.load(blob)
            if self.runtime.level_of(ct) != level or not math.isclose(ct.scale, scale, rel_tol=1e-9):
                raise ProtocolError(f"{party!r} sent a ciphertext that is not a packed product; refusing to decrypt")
        self._decrypted.add(key)
        slot_values = decrypt_ciphertexts(self.context, payload.ciphertexts)
        values = reduce_product(slot_values, sizes, slots, reduced=payload.reduced)
        if self.flood_std > 0:
            values = values + secure_normal(0.0, self.flood_std, values.size)
        return MaskedGradient(self.fingerprint, party, payload.epoch, values)

    # ------------------------------------------------------------------ scoring
    def decision_function(
        self,
        X: np.ndarray,
        coverage: Mapping[str, np.ndarray],
        others: EncryptedScoreSum | np.ndarray | None,
    ) -> np.ndarray:
        """Joint score (log-odds) for rows given the other parties' summed partial scores."""
        X = np.asarray(X, dtype=np.float64)
        missing = [p for p in self.indicator_parties_ if p not in coverage]
        if missing:
            raise DataValidationError(f"coverage of {missing[0]!r} is needed to score (the model uses its indicator)")
        cols = [X] + [np.asarray(coverage[p], dtype=np.float64) for p in self.indicator_parties_]
        Z = _apply_standardise(np.column_stack(cols), self.mean_, self.scale_)
        z = Z @ self.coef_ + self.intercept_
        if isinstance(others, EncryptedScoreSum):
            others.check(self.context)
            if others.n_values != z.size:
                raise ProtocolError(f"score sum has {others.n_values} values for {z.size} rows")
            others = decrypt_ciphertexts(self.context, others.ciphertexts, z.size)
        if others is not None:
            z = z + np.asarray(others, dtype=np.float64)
        return z

    def predict_proba(self, X: np.ndarray, coverage: Mapping[str, np.ndarray], others: Any) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default], as scikit-learn."""
        p = _sigmoid(self.decision_function(X, coverage, others))
        return np.column_stack([1.0 - p, p])

    def model_record(self) -> dict[str, Any]:
        """What the bank's model bundle records: who holds which part (counts, not values)."""
        return {
            "model": "vertical_logistic_regression",
            "label_holder": self.name,
            "context_fingerprint": self.fingerprint,
            "parts": {self.name: len(self.feature_names_), **self._holder_counts},
            "label_holder_features": list(self.feature_names_),
            "label_holder_coef": [float(c) for c in self.coef_],
            "label_holder_mean": [float(v) for v in self.mean_],
            "label_holder_scale": [float(v) for v in self.scale_],
            "intercept": self.intercept_,
            "best_epoch": self.best_epoch_,
            "epochs": self.n_epochs_,
            "validation_auc": None if not np.isfinite(self._best_auc) else float(self._best_auc),
        }

    def record_feature_count(self, party: str, n_features: int, n_product_ciphertexts: int | None = None) -> None:
        """Fix, at setup, how many values a feature holder gets back per epoch: one per feature.

        The count is what the feature holder announced when it joined; once fixed
        it cannot change, and :meth:`decrypt_gradient` returns exactly that many
        values per epoch whatever a product declares.

        Raises
        ------
        ProtocolError
            Unknown party, a count below 1 or not below the training rows (one
            product would then determine ``d``), or a different count than fixed.
        """
        if party not in getattr(self, "feature_holders_", ()):
            raise ProtocolError(f"{party!r} is not a feature holder of this training")
        m = int(n_features)
        if m < 1 or m >= self.n_train_:
            raise ProtocolError(f"{party!r} announces {m} features; need 1 ≤ m < {self.n_train_} training rows")
        fixed = self._holder_counts.get(party)
        if fixed is not None and fixed != m:
            raise ProtocolError(f"{party!r} announces {m} features, its count was fixed at {fixed}")
        self._holder_counts = {**self._holder_counts, party: m}
        if n_product_ciphertexts is not None:
            fixed_products = self._holder_products.get(party)
            if fixed_products is not None and fixed_products != int(n_product_ciphertexts):
                raise ProtocolError(f"{party!r} announces {n_product_ciphertexts} product ciphertexts, fixed at {fixed_products}")
            self._holder_products = {**self._holder_products, party: int(n_product_ciphertexts)}


class FeatureHolderLR:
    """A feature holder's side (tax bureau, platform): own features, public context only.

    Parameters
    ----------
    context : PublicContext
        The bank's public context (Galois keys for the packed product).
    name : str
    n_jobs : int
        Worker processes for X_kᵀ[[d]] (feature blocks split between them).
    max_pack : int, optional
        Most features per product ciphertext (see :class:`EncryptedMatVec`).
    cache_bytes : int
        Memory budget for pre-encoded plaintexts.
    monotone : mapping feature name → +1/−1, optional
        This owner's declared coefficient sign per own feature (projected updates at
        the owner; nobody else sees the declaration).

    Attributes
    ----------
    coef_ : ndarray
        Coefficients on standardised own features (best epoch).
    mean_, scale_ : ndarray
    n_features_in_ : int
    mask_bits_ : int
        Statistical hiding of each value the bank decrypts (distance ≤ 2^-mask_bits_).
    epoch_mask_bits_ : int
        The same for all values the bank decrypts from one product (one epoch);
        over a run of E epochs the bound is E times that (:meth:`run_mask_bits`).
    layout_ : PackingLayout
        How the masked product packs the features (slots per feature).
    last_gradient_ : ndarray
        ``X_kᵀd`` of the last epoch (private to this party).
    """

    def __init__(
        self,
        context: PublicContext,
        *,
        name: str,
        n_jobs: int = 1,
        max_pack: int | None = None,
        cache_bytes: int = 2 << 30,
        monotone: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(context, PublicContext):
            raise CryptoError(f"feature holder {name!r} must hold only the bank's public CKKS context (a PublicContext)")
        self.monotone = monotone
        self.context = context
        self.name = name
        self.n_jobs = n_jobs
        self.max_pack = max_pack
        self.cache_bytes = cache_bytes
        self.fingerprint = context.fingerprint
        self.runtime = CKKSRuntime.for_context(context)
        self._kernel: EncryptedMatVec | None = None

    def setup(
        self,
        X: np.ndarray,
        coverage: np.ndarray,
        plan: TrainingPlan,
        *,
        feature_names: Sequence[str] | None = None,
        momentum: bool = True,
    ) -> None:
        """Standardise own features, pre-encode them and get ready for epoch 0.

        Parameters
        ----------
        X : ndarray (n_rows, n_features)
            Own features in the bank's aligned row order; rows outside ``coverage`` are ignored.
        coverage : bool ndarray (n_rows,)
        plan : TrainingPlan
        """
        plan.check(self.context)
        if self.name not in plan.feature_holders:
            raise ProtocolError(f"the training plan does not include {self.name!r}")
        X = np.asarray(X, dtype=np.float64)
        cov = np.asarray(coverage, dtype=bool)
        if X.ndim != 2 or X.shape[0] != plan.n_rows or cov.shape != (plan.n_rows,):
            raise DataValidationError(f"{self.name}: X has shape {X.shape}, the plan has {plan.n_rows} aligned rows")
        self.n_features_in_ = X.shape[1]
        self.feature_names_ = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
        train = plan.train_mask
        self.mean_, self.scale_ = _standardise(X, train & cov)
        Z = _apply_standardise(X, self.mean_, self.scale_)
        Z[~cov] = 0.0  # uncovered rows contribute nothing; the bank's indicator takes over
        self._Z, self._train, self._plan = Z, train, plan
        signs = monotone_signs(self.monotone, self.feature_names_, self.name)
        self._opt = _BlockNesterov(X.shape[1], _preconditioner(Z[train], plan.n_train, plan.damping, plan.l2), plan.l2, None, momentum, signs)
        self._best_w = self._opt.w.copy()
        self.coef_ = self._best_w.copy()
        self.close()
        self._kernel = EncryptedMatVec(Z[train], self.context, n_jobs=self.n_jobs, max_pack=self.max_pack, cache_bytes=self.cache_bytes)
        self.mask_bits_ = self._kernel.mask_bits_
        self.epoch_mask_bits_ = self._kernel.epoch_mask_bits_
        self._mask_bound, self._bound_sum = self._kernel.mask_bound_, self._kernel.bound_sum_
        self.layout_ = self._kernel.layout_
        self.epoch_ = 0
        self._mask: MaskState | None = None
        self._restart = False
        self.done_ = False

    def scores(self) -> EncryptedScores:
        """[[u_k]] for this epoch: look-ahead scores on training rows, current on validation rows."""
        self._require_active()
        u = np.where(self._train, self._Z @ self._opt.lookahead(), self._Z @ self._opt.w)
        return self._encrypt_scores(u, self.epoch_)

    def _encrypt_scores(self, u: np.ndarray, epoch: int) -> EncryptedScores:
        if u.size and np.max(np.abs(u)) > SCORE_LIMIT:
            raise ProtocolError(f"{self.name}: partial scores exceed ±{SCORE_LIMIT:.0f}; refusing to encrypt")
        blobs = self.runtime.encrypt(u, score_level(self.runtime))
        return EncryptedScores(self.fingerprint, self.name, epoch, int(u.size), tuple(blobs))

    def control(self, ctl: EpochControl) -> None:
        """Apply the bank's bits: keep the current coefficients if best; stop and restore."""
        ctl.check(self.context)
        self._require_active()
        if ctl.epoch != self.epoch_:
            raise ProtocolError(f"{self.name}: control for epoch {ctl.epoch}, at epoch {self.epoch_}")
        if ctl.improved:
            self._best_w = self._opt.w.copy()
        self._restart = ctl.restart
        if ctl.stop:
            self.coef_ = self._best_w.copy()
            self.done_ = True
            self.close()

    def gradient(self, residual: EncryptedResidual) -> EncryptedMaskedGradient:
        """[[X_kᵀd + r_k]] packed; the mask stays here."""
        residual.check(self.context)
        self._require_active()
        if residual.epoch != self.epoch_:
            raise ProtocolError(f"{self.name}: residual for epoch {residual.epoch}, at epoch {self.epoch_}")
        assert self._kernel is not None
        products = self._kernel.compute(EncryptedVector(residual.fingerprint, residual.n_values, residual.ciphertexts))
        blobs, self._mask = self._kernel.mask(products, epoch=self.epoch_)
        return EncryptedMaskedGradient(
            self.fingerprint,
            self.name,
            self.epoch_,
            self.n_features_in_,
            tuple(blobs),
            self.layout_.group_sizes,
            self._kernel.reduced_,
        )

    def update(self, masked: MaskedGradient) -> None:
        """Remove the mask, add the L2 term and take the block step."""
        masked.check(self.context)
        self._require_active()
        if masked.party != self.name or masked.epoch != self.epoch_ or self._mask is None:
            raise ProtocolError(f"{self.name}: unexpected masked gradient ({masked.party}, epoch {masked.epoch})")
        assert self._kernel is not None
        self.last_gradient_ = self._kernel.unmask(masked.values, self._mask)
        self._mask = None
        self._opt.step(self.last_gradient_, self._plan.n_train, self._restart)
        self.epoch_ += 1

    def best_weights(self) -> np.ndarray:
        """Coefficients of the best epoch so far (what a checkpoint keeps)."""
        return self._best_w.copy()

    def run_mask_bits(self, epochs: int | None = None) -> int:
        """Guaranteed hiding of everything the bank decrypts from this party over ``epochs`` (default: the plan's most)."""
        return run_mask_bits(self._mask_bound, self._bound_sum, self._plan.max_epochs if epochs is None else epochs)

    def _require_active(self) -> None:
        if getattr(self, "_opt", None) is None or getattr(self, "done_", True):
            raise ProtocolError(f"{self.name}: not set up for training (or already finished)")

    # ------------------------------------------------------------------ scoring
    def partial_scores(self, X: np.ndarray, coverage: np.ndarray | None = None) -> np.ndarray:
        """Plaintext ``u_k = Z_k w_k`` for rows (0 where not covered)."""
        Z = _apply_standardise(np.asarray(X, dtype=np.float64), self.mean_, self.scale_)
        u = Z @ self.coef_
        if coverage is not None:
            u = np.where(np.asarray(coverage, dtype=bool), u, 0.0)
        return u

    def encrypted_partial_scores(self, X: np.ndarray, coverage: np.ndarray | None = None) -> EncryptedScores:
        """[[u_k]] for scoring rows, to be summed by the coordinator and decrypted by the bank."""
        return self._encrypt_scores(self.partial_scores(X, coverage), 0)

    def close(self) -> None:
        """Stop the kernel's worker processes."""
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None


class CoordinatorLR:
    """What the coordinator does: add encrypted partial scores and relay payloads.

    Holds only a public context (no Galois keys needed) and refuses a secret one.

    Parameters
    ----------
    context : PublicContext
    label_holder : str
    feature_holders : sequence of str
    """

    # (sender role, receiver role) -> payload kinds allowed on that link
    ROUTES: ClassVar[dict[tuple[str, str], frozenset[bytes]]] = {
        ("label_holder", "feature_holder"): frozenset({b"VPLN", b"VCTL", b"VRES", b"VMSK"}),
        ("feature_holder", "label_holder"): frozenset({b"VEMG"}),
        ("feature_holder", "coordinator"): frozenset({b"VSCR"}),
        ("coordinator", "label_holder"): frozenset({b"VSUM"}),
    }

    def __init__(self, context: PublicContext, *, label_holder: str, feature_holders: Sequence[str]) -> None:
        if not isinstance(context, PublicContext):
            raise CryptoError("the coordinator must hold only the bank's public CKKS context (a PublicContext), never the secret key")
        self.context = context
        self.fingerprint = context.fingerprint
        self.runtime = CKKSRuntime.for_context(context)
        self.label_holder = label_holder
        self.feature_holders = tuple(feature_holders)

    def role(self, party: str) -> str:
        if party == self.label_holder:
            return "label_holder"
        if party in self.feature_holders:
            return "feature_holder"
        if party == "coordinator":
            return "coordinator"
        raise ProtocolError(f"unknown party {party!r}")

    def relay(self, sender: str, receiver: str, data: bytes) -> bytes:
        """Check a payload against the routing policy and pass it on unchanged.

        Raises
        ------
        ProtocolError
            The kind is not allowed on this link, or a party-addressed payload names someone else.
        ContextMismatchError
            The payload was made under another context.
        """
        kind, fp, header = peek_frame(data)
        allowed = self.ROUTES.get((self.role(sender), self.role(receiver)), frozenset())
        if kind not in allowed:
            raise ProtocolError(f"{kind.decode(errors='replace')} may not travel from {sender} to {receiver}")
        check_fingerprint(self.fingerprint, fp, f"{kind.decode()} payload from {sender}")
        if kind in (b"VSCR", b"VEMG") and header.get("party") != sender:
            raise ProtocolError(f"{sender} sent a payload in the name of {header.get('party')!r}")
        if kind == b"VMSK" and header.get("party") != receiver:
            raise ProtocolError(f"masked gradient for {header.get('party')!r} routed to {receiver}")
        return data

    def sum_scores(self, payloads: Sequence[EncryptedScores]) -> EncryptedScoreSum:
        """Σ_k [[u_k]] — ciphertext additions only."""
        if not payloads:
            raise ProtocolError("no partial scores to add")
        parties = [p.party for p in payloads]
        if len(set(parties)) != len(parties) or not set(parties) <= set(self.feature_holders):
            raise ProtocolError(f"partial scores from {parties}, expected each of {list(self.feature_holders)} once")
        for p in payloads:
            p.check(self.context)
        epoch, n = payloads[0].epoch, payloads[0].n_values
        if any(p.epoch != epoch or p.n_values != n for p in payloads):
            raise ProtocolError("partial scores disagree on epoch or length")
        blobs = self.runtime.add_blobs([p.ciphertexts for p in payloads])
        return EncryptedScoreSum(self.fingerprint, ",".join(parties), epoch, n, tuple(blobs))


# =========================================================================== driver


def make_context(*, galois: bool = True) -> KeyHolderContext:
    """The label holder's fresh CKKS key holder context: the :data:`~fedrisk.crypto.ckks.VERTICAL_LR` recipe.

    N 8192, primes 60|40|40|60, Δ 2^40, Galois keys for the packed product
    (``galois=False``: the no-rotation fallback). Public copies for the feature
    holders and the coordinator come from ``public_bytes()``.
    """
    return KeyHolderContext.generate(VERTICAL_LR if galois else dataclasses.replace(VERTICAL_LR, galois_keys=False))


class VerticalLogisticRegression(InProcessEstimator):
    """Vertical logistic regression run in-process with the full encrypted protocol.

    A scikit-learn–shaped facade over :class:`LabelHolderLR`, :class:`FeatureHolderLR`
    and :class:`CoordinatorLR`: every payload is serialised to bytes between the
    parties (and counted). ``fit`` takes the bank's table and a mapping of feature
    holder name → table, joined on ID.
    ``monotone`` (party → feature → +1/−1) carries each owner's declared coefficient
    signs to that owner only; each projects its own block's updates. ``fit`` is
    :class:`~fedrisk.models.in_process.InProcessEstimator`'s skeleton with this
    protocol's hooks.

    Attributes
    ----------
    label_holder_ : LabelHolderLR
    feature_holders_ : dict of str → FeatureHolderLR
    coordinator_ : CoordinatorLR
    history_ : list of dict
        The bank's per-epoch record plus ``seconds`` and ``bytes`` of the round.
    best_epoch_, n_epochs_ : int
    bytes_sent_, bytes_received_ : dict of str → int
        Per party, setup included (the public context sent to each party is counted).
    setup_bytes_ : int
    bytes_per_epoch_ : float
        Mean bytes of a full round (scores, sum, control, residual, gradients).
    epoch_seconds_ : float
        Mean wall time of a full round.
    setup_seconds_ : float
    """

    coordinator_: CoordinatorLR

    def __init__(
        self,
        *,
        C: float = 1.0,
        max_epochs: int = 30,
        patience: int = 5,
        tol: float = 1e-6,
        validation_fraction: float = 0.1,
        damping: float | None = None,
        momentum: bool = True,
        n_jobs: int = 1,
        max_pack: int | None = None,
        label: str = "y",
        label_holder_name: str = "bank",
        random_state: int | None = 0,
        monotone: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.monotone = monotone
        self.C = C
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.damping = damping
        self.momentum = momentum
        self.n_jobs = n_jobs
        self.max_pack = max_pack
        self.label = label
        self.label_holder_name = label_holder_name
        self.random_state = random_state

    def fit(
        self,
        label_holder_table: Any,
        feature_holder_tables: Mapping[str, Any],
        *,
        context: KeyHolderContext | None = None,
        transcript: list[WireRecord] | None = None,
        keep_bytes: bool = False,
        train_mask: np.ndarray | None = None,
    ) -> VerticalLogisticRegression:
        """Run the protocol to the end (early stopping keeps the best epoch).

        Parameters
        ----------
        label_holder_table : PartyTable, DataFrame (``id`` index or column, label column) or (X, y)
        feature_holder_tables : mapping name → PartyTable, DataFrame (joined on ID) or ndarray (already aligned)
        context : KeyHolderContext, optional
            The bank's secret context (default: a fresh one, see :func:`make_context`).
        transcript : list, optional
            Receives a :class:`WireRecord` per payload.
        keep_bytes : bool
            Keep each payload's bytes in the transcript.
        """
        return self._fit(
            label_holder_table,
            feature_holder_tables,
            context=context,
            transcript=transcript,
            keep_bytes=keep_bytes,
            train_mask=train_mask,
        )

    # ------------------------------------------------------------------ InProcessEstimator hooks
    def _new_context(self) -> KeyHolderContext:
        return make_context()

    def _new_coordinator(self, context: PublicContext, feature_holders: list[str]) -> CoordinatorLR:
        return CoordinatorLR(context, label_holder=self.label_holder_name, feature_holders=feature_holders)

    def _new_label_holder(self, context: KeyHolderContext, monotone: Mapping[str, Any] | None) -> LabelHolderLR:
        return LabelHolderLR(
            context,
            name=self.label_holder_name,
            C=self.C,
            max_epochs=self.max_epochs,
            patience=self.patience,
            tol=self.tol,
            validation_fraction=self.validation_fraction,
            damping=self.damping,
            momentum=self.momentum,
            random_state=self.random_state,
            monotone=monotone,
        )

    def _new_feature_holder(self, context: PublicContext, name: str, monotone: Mapping[str, Any] | None) -> FeatureHolderLR:
        return FeatureHolderLR(context, name=name, n_jobs=self.n_jobs, max_pack=self.max_pack, monotone=monotone)

    def _setup_label_holder(
        self,
        bank: LabelHolderLR,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        aligned: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
        monotone: dict[str, Any],
        **options: Any,
    ) -> TrainingPlan:
        coverage = {nm: a[1] for nm, a in aligned.items()}
        return bank.setup(X, y, coverage, feature_names=feature_names, train_mask=options.get("train_mask"))

    def _join(self, bank: LabelHolderLR, holder: FeatureHolderLR, plan: bytes, aligned: tuple[np.ndarray, np.ndarray, list[str]], wire: Wire) -> None:
        X_k, cov_k, fnames = aligned
        holder.setup(X_k, cov_k, TrainingPlan.from_bytes(plan, context=holder.context), feature_names=fnames, momentum=self.momentum)
        bank.record_feature_count(holder.name, holder.n_features_in_, holder.layout_.n_ciphertexts)

    def _set_fitted(self, run: InProcessRun) -> None:
        history, round_bytes, round_secs = run.result
        n_holders = len(run.feature_holders)
        self.setup_bytes_ = run.setup_bytes + run.copies.coordinator_bytes + run.copies.feature_holder_bytes * n_holders
        self.history_ = history
        self.best_epoch_ = run.label_holder.best_epoch_
        self.n_epochs_ = run.label_holder.n_epochs_
        self.bytes_per_epoch_ = float(np.mean(round_bytes)) if round_bytes else 0.0
        self.epoch_seconds_ = float(np.mean(round_secs)) if round_secs else 0.0

    def _run(self, bank: LabelHolderLR, holders: dict[str, FeatureHolderLR], wire: Wire) -> tuple[list[dict[str, Any]], list[int], list[float]]:
        coord = self.coordinator_
        bank_name = self.label_holder_name
        round_bytes, round_secs = [], []
        while True:
            t0, b0 = time.perf_counter(), wire.total
            wire.epoch = bank.epoch_
            sums = []
            for nm, fh in holders.items():
                data = wire.send(nm, "coordinator", fh.scores())
                sums.append(EncryptedScores.from_bytes(data, context=coord.context))
            data = wire.send("coordinator", bank_name, coord.sum_scores(sums))
            control, residual = bank.receive_scores(EncryptedScoreSum.from_bytes(data, context=bank.context))
            for nm, fh in holders.items():
                fh.control(EpochControl.from_bytes(wire.send(bank_name, nm, control), context=fh.context))
            if residual is None:
                bank.history_[-1].update(seconds=time.perf_counter() - t0, bytes=wire.total - b0)
                break
            for nm, fh in holders.items():
                res = EncryptedResidual.from_bytes(wire.send(bank_name, nm, residual), context=fh.context)
                emg = fh.gradient(res)
                got = EncryptedMaskedGradient.from_bytes(wire.send(nm, bank_name, emg), context=bank.context)
                masked = bank.decrypt_gradient(got)
                fh.update(MaskedGradient.from_bytes(wire.send(bank_name, nm, masked), context=fh.context))
            secs, nbytes = time.perf_counter() - t0, wire.total - b0
            bank.history_[-1].update(seconds=secs, bytes=nbytes)
            round_secs.append(secs)
            round_bytes.append(nbytes)
        return [dict(h) for h in bank.history_], round_bytes, round_secs

    # ------------------------------------------------------------------ scoring
    def decision_function(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any], *, secure: bool = True) -> np.ndarray:
        """Joint log-odds for the bank's rows.

        With ``secure`` each feature holder encrypts its partial scores, the
        coordinator adds them and the bank decrypts only the sum — as in training.
        """
        ids, Xb, _, _ = table_parts(label_holder_table, self.label, "label holder")
        coverage = {}
        encrypted: list[EncryptedScores] = []
        plain: list[np.ndarray] = []
        for nm, fh in self.feature_holders_.items():
            X_k, cov_k, _ = align_rows(ids, feature_holder_tables[nm], nm)
            coverage[nm] = cov_k
            if secure:
                encrypted.append(fh.encrypted_partial_scores(X_k, cov_k))
            else:
                plain.append(fh.partial_scores(X_k, cov_k))
        others: Any = self.coordinator_.sum_scores(encrypted) if secure else np.sum(plain, axis=0)
        return self.label_holder_.decision_function(Xb, coverage, others)

    def predict_proba(self, label_holder_table: Any, feature_holder_tables: Mapping[str, Any], *, secure: bool = True) -> np.ndarray:
        """``(n, 2)`` probabilities [no default, default]."""
        p = _sigmoid(self.decision_function(label_holder_table, feature_holder_tables, secure=secure))
        return np.column_stack([1.0 - p, p])

    def model_record(self) -> dict[str, Any]:
        """The bank's record of the joint model (party → feature count)."""
        return self.label_holder_.model_record()


def train_vertical_lr(
    label_holder_table: Any,
    feature_holder_tables: Mapping[str, Any],
    *,
    context: KeyHolderContext | None = None,
    transcript: list[WireRecord] | None = None,
    keep_bytes: bool = False,
    train_mask: np.ndarray | None = None,
    **params: Any,
) -> VerticalLogisticRegression:
    """Train a vertical logistic regression in-process over the full encrypted protocol.

    ``params`` are :class:`VerticalLogisticRegression` parameters (``C``, ``max_epochs``,
    ``patience``, ``tol``, ``validation_fraction``, ``damping``, ``momentum``, ``n_jobs``,
    ``max_pack``, ``label``, ``label_holder_name``, ``random_state``).
    """
    model = VerticalLogisticRegression(**params)
    return model.fit(
        label_holder_table,
        feature_holder_tables,
        context=context,
        transcript=transcript,
        keep_bytes=keep_bytes,
        train_mask=train_mask,
    )
