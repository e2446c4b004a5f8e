"""Verified model bundles for scoring, and a fast per-application scorer.

Every bundle is verified (Ed25519 signature by a trusted federation key, then the
SHA-256 of every file) before a byte of it is parsed; nothing is unpickled (the
weights are safetensors, the metadata JSON). :func:`load_bank_model` and
:func:`load_party_model` return the party's part of the joint model with its
provenance: ``model_version`` = the joint model's run id (what the parties
check) plus the first 12 hex digits of the SHA-256 of the signed manifest
(which exact bundle). Two model kinds are served: the vertical logistic
scorecard (:mod:`fedrisk.models.scorecard`) and vertical SecureBoost
(:mod:`fedrisk.models.secureboost`: the bank's trees, a feature holder's
routing table); the bundle's ``kind`` says which.

:class:`LinearScorer` evaluates the bank's block for one application in pure
Python — a numpy call costs more than the arithmetic for ten features — and is
checked against :meth:`LabelHolderScorecard.decision_function` when built.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrisk.crypto.signing import verify_bundle_with_manifest
from fedrisk.errors import ConfigError, CryptoError, DataValidationError, ProtocolError
from fedrisk.models.scorecard import (
    FeatureHolderScorecard,
    LabelHolderScorecard,
    scorecard_from_arrays,
)

__all__ = [
    "SCORECARD",
    "SECUREBOOST",
    "LinearScorer",
    "LoadedModel",
    "load_bank_model",
    "load_party_model",
    "parse_trusted_keys",
]

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
SCORECARD, SECUREBOOST = "scorecard", "secureboost"
_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER = "secureboost_label_holder", "secureboost_feature_holder"

if TYPE_CHECKING:  # the tree module (and scikit-learn) is imported only for a SecureBoost bundle
    from fedrisk.models.secureboost_tree import RoutingTable, SecureBoostModel

    ModelPart = LabelHolderScorecard | FeatureHolderScorecard | SecureBoostModel | RoutingTable


def parse_trusted_keys(spec: str | Path | Iterable[str | bytes] | Mapping[str, str]) -> list[bytes]:
    """Trusted Ed25519 public keys from hex strings, a mapping or a JSON file.

    Parameters
    ----------
    spec
        A 64-hex-digit key; a path to a JSON file holding a list of hex keys or an
        object ``{name: hex}`` (the run's ``coordinator/signing_keys.json``); or
        such a list / mapping directly.

    Raises
    ------
    CryptoError
        When no key is given or one is not 32 bytes of hex.
    """
    if isinstance(spec, Mapping):
        values: list[Any] = list(spec.values())
    elif isinstance(spec, (str, Path)):
        text = str(spec)
        if _HEX_KEY.match(text):
            values = [text]
        else:
            path = Path(spec)
            try:
                data = json.loads(path.read_text())
            except OSError as exc:
                raise CryptoError(f"cannot read trusted keys {path}: {exc.strerror}") from None
            except ValueError:
                raise CryptoError(f"trusted keys {path} is not JSON") from None
            values = list(data.values()) if isinstance(data, dict) else list(data) if isinstance(data, list) else [None]
    else:
        values = list(spec)
    keys: list[bytes] = []
    for value in values:
        if isinstance(value, (bytes, bytearray)) and len(value) == 32:
            keys.append(bytes(value))
        elif isinstance(value, str) and _HEX_KEY.match(value):
            keys.append(bytes.fromhex(value))
        else:
            raise CryptoError(f"trusted key {str(value)[:20]!r} is not a 32-byte Ed25519 key in hex")
    if not keys:
        raise CryptoError("no trusted federation keys given: a bundle can only be loaded against known signers")
    return keys


@dataclass(frozen=True)
class LoadedModel:
    """A verified part of the joint model and where it came from.

    Attributes
    ----------
    part : LabelHolderScorecard, FeatureHolderScorecard, SecureBoostModel or RoutingTable
        The party's part: a scorecard block, the bank's SecureBoost trees, or a
        feature holder's SecureBoost routing table (its own thresholds only).
    meta : mapping
        The bundle's verified JSON metadata (run id, party, schema, ...).
    """

    part: ModelPart
    meta: Mapping[str, Any]
    run_id: str
    digest: str
    signer_key_id: str
    created_at: str
    path: Path

    @property
    def scorecard(self) -> ModelPart:
        """The part (the name predates SecureBoost serving; see :attr:`part`)."""
        return self.part

    @property
    def kind(self) -> str:
        """``scorecard`` or ``secureboost``."""
        return SECUREBOOST if self.meta.get("kind") in (_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER) else SCORECARD

    @property
    def is_label_holder(self) -> bool:
        """Whether this is the label holder's (the bank's) part."""
        return isinstance(self.part, LabelHolderScorecard) or self.meta.get("kind") == _SB_LABEL_HOLDER

    @property
    def party(self) -> str:
        """The party whose part this is."""
        if self.meta.get("kind") == _SB_LABEL_HOLDER:
            return str(self.meta.get("party") or self.part.parties[0])  # type: ignore[union-attr]
        return str(self.part.party)  # type: ignore[union-attr]

    @property
    def label_holder(self) -> str:
        """The label holder the part was trained with ("" when the bundle does not say)."""
        if isinstance(self.part, FeatureHolderScorecard):
            return self.part.label_holder
        if self.meta.get("kind") == _SB_LABEL_HOLDER:
            return str(self.part.parties[0])  # type: ignore[union-attr]
        return str(self.meta.get("label_holder", ""))

    @property
    def model_version(self) -> str:
        """``<run id>+<manifest digest>``: which joint model, which exact bundle."""
        return f"{self.run_id}+{self.digest}"

    @property
    def schema(self) -> Mapping[str, Any]:
        """The party's table schema recorded at training (may be empty)."""
        return dict(self.meta.get("schema") or {})


def _load(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedModel:
    from safetensors.numpy import load as load_safetensors

    from fedrisk.models.bundle import META_FILE, WEIGHTS_FILE

    if not trusted_keys:
        raise CryptoError("no trusted federation keys given: refusing to load an unverifiable bundle")
    path = Path(folder)
    manifest, files = verify_bundle_with_manifest(path, trusted_keys)
    if WEIGHTS_FILE not in files or META_FILE not in files:
        raise CryptoError(f"bundle {path} lacks {WEIGHTS_FILE} or {META_FILE}")
    try:
        arrays = load_safetensors(files[WEIGHTS_FILE])
        meta = json.loads(files[META_FILE])
    except Exception as exc:  # safetensors raises its own error types
        raise ProtocolError(f"bundle {path}: cannot parse its contents ({type(exc).__name__})") from None
    part = _part_from_arrays(path, arrays, meta)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return LoadedModel(
        part=part,
        meta=dict(meta),
        run_id=str(meta.get("run_id", "")),
        digest=hashlib.sha256(canonical).hexdigest()[:12],
        signer_key_id=str(manifest["signer"]["key_id"]),
        created_at=str(manifest.get("created_at", "")),
        path=path,
    )


def _part_from_arrays(path: Path, arrays: Mapping[str, np.ndarray], meta: Any) -> ModelPart:
    """The model part a verified bundle holds, by its ``kind``."""
    if not isinstance(meta, dict):
        raise ProtocolError(f"bundle {path}: its metadata is not a JSON object")
    if meta.get("kind") not in (_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER):
        return scorecard_from_arrays(arrays, meta)
    from fedrisk.models.secureboost_tree import RoutingTable, SecureBoostModel

    try:
        if meta["kind"] == _SB_LABEL_HOLDER:
            return SecureBoostModel.from_bundle(arrays, meta)
        return RoutingTable.from_bundle(arrays, meta)
    except DataValidationError as exc:
        raise ProtocolError(f"bundle {path}: {exc}") from None


def load_bank_model(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedModel:
    """Verify and load the label holder's bundle: scorecard or SecureBoost trees (refuses a feature holder's)."""
    model = _load(folder, trusted_keys)
    if not model.is_label_holder:
        raise ConfigError(f"bundle {folder} is a feature holder's part; the scoring node needs the label holder's")
    return model


def load_party_model(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedModel:
    """Verify and load a feature holder's bundle: scorecard block or routing table (refuses the label holder's)."""
    model = _load(folder, trusted_keys)
    if model.is_label_holder:
        raise ConfigError(f"bundle {folder} is the label holder's part; a party scoring service needs its own part")
    return model


class LinearScorer:
    """The label holder's block for one application at a time, in plain Python.

    ``log_odds = intercept + Σ own contributions + Σ coverage-indicator
    contributions + Σ partial scores of covering parties`` — the grouping of
    :meth:`LabelHolderScorecard.decision_function`, so both agree to rounding.
    """

    def __init__(self, lh: LabelHolderScorecard) -> None:
        self.features: tuple[str, ...] = lh.features
        self.parties: tuple[str, ...] = tuple(lh.feature_holders)
        self._coef = [float(v) for v in lh.coef]
        self._mean = [float(v) for v in lh.mean]
        self._scale = [float(v) for v in lh.scale]
        self._intercept = float(lh.intercept)
        # Indicator contribution of each party when it covers (1) or not (0) the SME.
        self._indicator: dict[str, tuple[float, float]] = {}
        for j, party in enumerate(lh.indicator_parties):
            c, m, s = float(lh.indicator_coef[j]), float(lh.indicator_mean[j]), float(lh.indicator_scale[j])
            self._indicator[party] = ((0.0 - m) / s * c, (1.0 - m) / s * c)
        self._self_check(lh)

    def contributions(self, x: Sequence[float]) -> list[float]:
        """Per-feature log-odds contributions of the bank's own values (NaN → 0, the training mean)."""
        out = []
        for v, m, s, c in zip(x, self._mean, self._scale, self._coef):
            z = (v - m) / s
            out.append(0.0 if math.isnan(z) else z * c)
        return out

    def indicator_contributions(self, covered: Mapping[str, bool]) -> dict[str, float]:
        """Contribution of each coverage indicator given which parties cover the SME."""
        return {p: pair[1] if covered.get(p, False) else pair[0] for p, pair in self._indicator.items()}

    def log_odds(self, own: Sequence[float], indicators: Mapping[str, float], partials: Mapping[str, float | None]) -> float:
        """Joint log-odds from own contributions, indicator contributions and partial scores."""
        total = 0.0
        for party in self.parties:
            u = partials.get(party)
            if u is not None:
                total += u
        own_sum = 0.0
        for v in own:
            own_sum += v
        ind_sum = 0.0
        for v in indicators.values():
            ind_sum += v
        return self._intercept + own_sum + ind_sum + total

    @staticmethod
    def probability(z: float) -> float:
        """σ(z), computed as the scorecard does (0.5 (1 + tanh(z/2)))."""
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    def _self_check(self, lh: LabelHolderScorecard) -> None:
        rng = np.random.default_rng(0)
        X = lh.mean + rng.normal(size=(4, len(self.features))) * lh.scale
        partial = {p: [0.3, None, -0.2, None] for p in self.parties}
        want = lh.decision_function(X, partial)
        for i in range(4):
            parts = {p: v[i] for p, v in partial.items()}
            ind = self.indicator_contributions({p: v is not None for p, v in parts.items()})
            got = self.log_odds(self.contributions(list(X[i])), ind, parts)
            if not math.isclose(got, float(want[i]), rel_tol=1e-9, abs_tol=1e-9):
                raise ProtocolError("fast scorer disagrees with the scorecard; refusing to serve")
