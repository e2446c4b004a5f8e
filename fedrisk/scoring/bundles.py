"""Verified model bundles for scoring, and a fast per-application scorer.

Every bundle is verified (Ed25519 signature by a trusted federation key, then the
SHA-256 of every file) before a byte of it is parsed; nothing is unpickled (the
weights are safetensors, the metadata JSON). :func:`load_bank_model` and
:func:`load_party_model` return the party's part of the joint model with its
provenance: ``model_version`` = the joint model's run id (what the parties
check) plus the first 12 hex digits of the SHA-256 of the signed manifest
(which exact bundle). Three model kinds are served: the vertical logistic
scorecard (:mod:`fedrisk.models.scorecard`), the points scorecard
(:mod:`fedrisk.models.points`: the WOE scorecard as each party's own points
table) and vertical SecureBoost (:mod:`fedrisk.models.secureboost`: the bank's
trees, a feature holder's routing table); the bundle's ``kind`` says which.

Stacked model. A *stack folder* is a plain folder (no manifest of its own)
whose sub-folders are signed bundles: at the bank, the bank's part of every
base learner (vertical LR scorecard, SecureBoost trees) plus its meta-learner
bundle (``kind = "stacking_meta"``: a logistic regression on the base learners'
log-odds, :class:`fedrisk.models.stacking.MetaLearner`); at a feature holder,
its own part of every base learner. Every bundle in it is verified as a single
bundle is. :func:`load_bank_model` returns a :class:`LoadedStack` for a stack
folder, :func:`load_party_models` the feature holder's parts. A stack is
refused (one line) when its base learners do not share the label holder and
feature holders, when the meta-learner expects other base learners (number,
kind, or — when it records them — run ids and bundle digests), or when two
base learners share a run id (the key a party's answer is matched by).

:class:`LinearScorer` evaluates the bank's block for one application in pure
Python — a numpy call costs more than the arithmetic for ten features — and is
checked against :meth:`LabelHolderScorecard.decision_function` when built;
:class:`PointsScorer` does the same for the bank's points table (checked
against :meth:`PartyPoints.partial_points`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrisk.crypto.signing import verify_bundle_with_manifest
from fedrisk.errors import ConfigError, CryptoError, DataValidationError, ProtocolError
from fedrisk.models.points import POINTS_KIND, PartyPoints
from fedrisk.models.scorecard import (
    FeatureHolderScorecard,
    LabelHolderScorecard,
    scorecard_from_arrays,
)

__all__ = [
    "META_KIND",
    "POINTS",
    "SCORECARD",
    "SECUREBOOST",
    "STACK",
    "LinearScorer",
    "LoadedModel",
    "LoadedStack",
    "PointsScorer",
    "is_stack_folder",
    "load_bank_model",
    "load_party_model",
    "load_party_models",
    "parse_trusted_keys",
]

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
SCORECARD, SECUREBOOST, POINTS, STACK = "scorecard", "secureboost", "points", "stack"
META_KIND = "stacking_meta"  # the bank's meta-learner bundle of a stacked model
#: base learner name (as the meta-learner names its inputs) of each servable kind
BASE_LEARNER_OF = {SCORECARD: "vertical_lr", SECUREBOOST: "secureboost"}
_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER = "secureboost_label_holder", "secureboost_feature_holder"

if TYPE_CHECKING:  # the tree module (and scikit-learn) is imported only for a SecureBoost bundle
    from fedrisk.models.secureboost_tree import RoutingTable, SecureBoostModel

    ModelPart = LabelHolderScorecard | FeatureHolderScorecard | SecureBoostModel | RoutingTable | PartyPoints


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
    part : LabelHolderScorecard, FeatureHolderScorecard, PartyPoints, SecureBoostModel or RoutingTable
        The party's part: a scorecard block, its own points table, the bank's
        SecureBoost trees, or a feature holder's SecureBoost routing table (its own
        thresholds only).
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
        """``scorecard``, ``points``, ``secureboost`` or ``stacking_meta``."""
        if self.meta.get("kind") == META_KIND:
            return META_KIND
        if self.meta.get("kind") == POINTS_KIND:
            return POINTS
        return SECUREBOOST if self.meta.get("kind") in (_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER) else SCORECARD

    @property
    def is_label_holder(self) -> bool:
        """Whether this is the label holder's (the bank's) part."""
        if isinstance(self.part, PartyPoints):
            return self.part.is_label_holder
        if self.meta.get("kind") == META_KIND:
            return True  # a meta-learner is the bank's alone
        return isinstance(self.part, LabelHolderScorecard) or self.meta.get("kind") == _SB_LABEL_HOLDER

    @property
    def party(self) -> str:
        """The party whose part this is."""
        if self.meta.get("kind") == _SB_LABEL_HOLDER:
            return str(self.meta.get("party") or self.part.parties[0])  # type: ignore[union-attr]
        if self.meta.get("kind") == META_KIND:
            return str(self.meta.get("party") or "")
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
    if meta.get("kind") == POINTS_KIND:
        return _points_part(path, arrays, meta)
    if meta.get("kind") == META_KIND:
        return _meta_part(path, arrays, meta)
    if meta.get("kind") not in (_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER):
        return scorecard_from_arrays(arrays, meta)
    from fedrisk.models.secureboost_tree import RoutingTable, SecureBoostModel

    try:
        if meta["kind"] == _SB_LABEL_HOLDER:
            return SecureBoostModel.from_bundle(arrays, meta)
        return RoutingTable.from_bundle(arrays, meta)
    except DataValidationError as exc:
        raise ProtocolError(f"bundle {path}: {exc}") from None


def _points_part(path: Path, arrays: Mapping[str, np.ndarray], meta: dict) -> PartyPoints:
    """A points table from a verified bundle, checked to be servable: whom it answers, which parties the bank asks."""
    try:
        part = PartyPoints.from_bundle(arrays, meta)
    except (ProtocolError, DataValidationError) as exc:
        raise ProtocolError(f"bundle {path}: {str(exc).splitlines()[0]}") from None
    names = part.feature_names
    if len(set(names)) != len(names):
        raise ProtocolError(f"bundle {path}: the points table lists a feature twice")
    holders = meta.get("feature_holders")
    if part.is_label_holder:
        if not isinstance(holders, list) or not all(isinstance(p, str) and p for p in holders):
            raise ProtocolError(f"bundle {path}: the label holder's points bundle does not name its feature holders")
        unknown = [i.party for i in part.indicators if i.party not in holders]
        if unknown:
            raise ProtocolError(f"bundle {path}: a coverage indicator of {unknown[0]!r}, which is not a feature holder of the model")
    elif not meta.get("label_holder"):
        raise ProtocolError(f"bundle {path}: a feature holder's points bundle must name its label holder")
    elif holders is not None or part.indicators:
        raise ProtocolError(f"bundle {path}: a feature holder's points bundle holds the label holder's part")
    return part


def _meta_part(path: Path, arrays: Mapping[str, np.ndarray], meta: dict) -> Any:
    """The bank's meta-learner from a verified ``stacking_meta`` bundle."""
    from fedrisk.models.stacking import MetaLearner

    names = meta.get("base_learners")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or "coef" not in arrays:
        raise ProtocolError(f"bundle {path}: a meta-learner bundle must name its base learners and hold their coefficients")
    if len(set(names)) != len(names):
        raise ProtocolError(f"bundle {path}: the meta-learner names a base learner twice")
    try:
        return MetaLearner(names, np.asarray(arrays["coef"], dtype=np.float64), float(meta.get("intercept", math.nan)))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bundle {path}: {str(exc).splitlines()[0]}") from None


def is_stack_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a stack folder: no manifest of its own, signed bundles in its sub-folders."""
    from fedrisk.crypto.signing import MANIFEST_NAME

    path = Path(folder)
    return path.is_dir() and not (path / MANIFEST_NAME).exists() and any(p.is_dir() for p in path.iterdir())


def _stack_members(folder: str | Path, trusted_keys: Sequence[bytes]) -> list[LoadedModel]:
    """Every bundle of a stack folder, verified, in the order of the sub-folders' names."""
    path = Path(folder)
    stray = sorted(p.name for p in path.iterdir() if not p.is_dir() and not p.name.startswith("."))
    if stray:
        raise ConfigError(f"stack folder {path}: {stray[0]!r} is not a bundle folder (a stack folder holds only signed bundles)")
    return [_load(sub, trusted_keys) for sub in sorted(p for p in path.iterdir() if p.is_dir())]


@dataclass(frozen=True)
class LoadedStack:
    """A stacked model at the bank: its base learners' bank parts and the meta-learner, verified.

    Attributes
    ----------
    bases : tuple of LoadedModel
        The bank's part of each base learner, in the meta-learner's input order.
    meta_model : LoadedModel
        The meta-learner bundle (its ``part`` is a :class:`~fedrisk.models.stacking.MetaLearner`).
    names : tuple of str
        Base learner names (the meta-learner's inputs), one per base.
    """

    bases: tuple[LoadedModel, ...]
    meta_model: LoadedModel
    names: tuple[str, ...]
    path: Path

    kind = STACK
    is_label_holder = True

    @property
    def part(self) -> Any:
        """The meta-learner."""
        return self.meta_model.part

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.meta_model.meta

    @property
    def run_id(self) -> str:
        """The stack's id: the meta-learner bundle's run id."""
        return self.meta_model.run_id

    @property
    def digest(self) -> str:
        return self.meta_model.digest

    @property
    def model_version(self) -> str:
        """``<stack run id>+<meta-learner manifest digest>`` (the meta bundle names its bases' run ids and digests)."""
        return self.meta_model.model_version

    @property
    def party(self) -> str:
        return self.bases[0].party

    @property
    def label_holder(self) -> str:
        return self.bases[0].party

    @property
    def schema(self) -> Mapping[str, Any]:
        return self.bases[0].schema


def _feature_holders_of(model: LoadedModel) -> tuple[str, ...]:
    """The feature holders a base learner was trained with (for trees: every party of training, split-owning or not)."""
    if model.kind == SECUREBOOST:
        return tuple(str(p) for p in model.part.parties[1:])  # type: ignore[union-attr]
    return tuple(model.part.feature_holders)  # type: ignore[union-attr]


def _load_stack(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedStack:
    """The bank's stack folder: one meta-learner bundle and the bank's part of every base learner, checked to fit together."""
    path = Path(folder)
    members = _stack_members(path, trusted_keys)
    metas = [m for m in members if m.kind == META_KIND]
    if len(metas) != 1:
        raise ConfigError(f"stack folder {path} holds {len(metas)} meta-learner bundles; a stack has exactly one")
    meta_model = metas[0]
    bases = [m for m in members if m is not meta_model]
    for m in bases:
        if not m.is_label_holder:
            raise ConfigError(f"bundle {m.path} is a feature holder's part; the scoring node needs the label holder's")
        if m.kind not in BASE_LEARNER_OF:
            raise ConfigError(f"bundle {m.path} ({m.kind}) cannot be a base learner of a stack (vertical_lr or secureboost)")
    names: tuple[str, ...] = meta_model.part.names  # type: ignore[union-attr]
    if len(bases) != len(names):
        raise ConfigError(f"the meta-learner of {path} expects {len(names)} base learners ({', '.join(names)}); the stack folder holds {len(bases)}")
    by_name: dict[str, LoadedModel] = {}
    for m in bases:
        name = BASE_LEARNER_OF[m.kind]
        if name in by_name:
            raise ConfigError(f"stack folder {path} holds two {name} base learners ({by_name[name].path.name}, {m.path.name})")
        by_name[name] = m
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"the meta-learner of {path} expects base learner {unknown[0]!r}, which the stack folder does not hold")
    ordered = tuple(by_name[n] for n in names)
    first = ordered[0]
    for name, m in zip(names[1:], ordered[1:]):
        if m.party != first.party:
            raise ConfigError(f"the base learners' parties do not match: {names[0]} is {first.party!r}'s, {name} is {m.party!r}'s")
        if set(_feature_holders_of(m)) != set(_feature_holders_of(first)):
            raise ConfigError(
                f"the base learners' parties do not match: {names[0]} has feature holders {sorted(_feature_holders_of(first))}, "
                f"{name} has {sorted(_feature_holders_of(m))}"
            )
        if str(m.schema.get("id_format", "opaque")) != str(first.schema.get("id_format", "opaque")):
            raise ConfigError(f"the base learners' ID formats do not match ({names[0]}, {name})")
    run_ids = meta_model.meta.get("base_run_ids") or {}
    digests = meta_model.meta.get("base_digests") or {}
    if not isinstance(run_ids, dict) or not isinstance(digests, dict):
        raise ConfigError(f"bundle {meta_model.path}: base_run_ids and base_digests must map base learner names to values")
    for name, m in zip(names, ordered):
        if name in run_ids and run_ids[name] != m.run_id:
            raise ConfigError(f"the meta-learner was fitted on {name} run {run_ids[name]!r}, not on {m.run_id!r}")
        if name in digests and digests[name] != m.digest:
            raise ConfigError(f"the meta-learner was fitted on another {name} bundle (digest {digests[name]}, not {m.digest})")
    if len({m.run_id for m in ordered}) != len(ordered):
        raise ConfigError(f"the base learners of {path} share a run id; each must have its own (parties' answers are matched by it)")
    return LoadedStack(bases=ordered, meta_model=meta_model, names=tuple(names), path=path)


def load_bank_model(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedModel | LoadedStack:
    """Verify and load the label holder's bundle: scorecard, points table or SecureBoost trees — or, for a stack folder, the stack (refuses a feature holder's)."""
    if is_stack_folder(folder):
        return _load_stack(folder, trusted_keys)
    model = _load(folder, trusted_keys)
    if not model.is_label_holder:
        raise ConfigError(f"bundle {folder} is a feature holder's part; the scoring node needs the label holder's")
    if model.kind == META_KIND:
        raise ConfigError(f"bundle {folder} is a meta-learner alone; serve it in a stack folder with the bank's base learner bundles")
    return model


def load_party_model(folder: str | Path, trusted_keys: Sequence[bytes]) -> LoadedModel:
    """Verify and load a feature holder's bundle: scorecard block or routing table (refuses the label holder's)."""
    model = _load(folder, trusted_keys)
    if model.is_label_holder:
        raise ConfigError(f"bundle {folder} is the label holder's part; a party scoring service needs its own part")
    return model


def load_party_models(folder: str | Path, trusted_keys: Sequence[bytes]) -> list[LoadedModel]:
    """A feature holder's bundle, or every bundle of its stack folder (its part of each base learner), verified.

    The parts of a stack must be one party's, answer one label holder, and have
    distinct run ids (the bank's request names each base learner by it).
    """
    if not is_stack_folder(folder):
        return [load_party_model(folder, trusted_keys)]
    models = _stack_members(folder, trusted_keys)
    for m in models:
        if m.is_label_holder:
            raise ConfigError(f"bundle {m.path} is the label holder's part; a party scoring service needs its own part")
    first = models[0]
    for m in models[1:]:
        if m.party != first.party:
            raise ConfigError(f"the base learners' parties do not match: {first.path.name} is {first.party!r}'s, {m.path.name} is {m.party!r}'s")
        if m.label_holder != first.label_holder:
            raise ConfigError(f"the base learners' parties do not match: {first.path.name} answers {first.label_holder!r}, {m.path.name} {m.label_holder!r}")
        if str(m.schema.get("id_format", "opaque")) != str(first.schema.get("id_format", "opaque")):
            raise ConfigError(f"the base learners' ID formats do not match ({first.path.name}, {m.path.name})")
    if len({m.run_id for m in models}) != len(models):
        raise ConfigError(f"two bundles of {folder} share a run id; each base learner must have its own")
    return models


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


class PointsScorer:
    """The bank's points table for one application at a time, in plain Python.

    ``score = own feature points + base points + coverage-indicator points + Σ
    points of each covering party`` — what :meth:`PointsScorecard.score` adds
    offline — and the log-odds of default ``z = (offset − score) / factor``. A
    feature holder sends its share of the log-odds (``−points / factor``, from its
    own table), so its points are ``−factor·u``; one that does not cover the SME
    (or did not answer) adds 0 points.

    Parameters
    ----------
    part : PartyPoints
        The label holder's table (base points, its own features, indicators).
    feature_holders : sequence of str
        Every feature holder of the model (the parties the node asks).
    """

    def __init__(self, part: PartyPoints, feature_holders: Sequence[str]) -> None:
        if not part.is_label_holder:
            raise ConfigError(f"the points table of {part.party!r} has no base points: the scoring node needs the label holder's")
        self.part = part
        self.scale = part.scale
        self.features: tuple[str, ...] = tuple(part.feature_names)
        self.parties: tuple[str, ...] = tuple(feature_holders)
        self._factor, self._offset = float(part.scale.factor), float(part.scale.offset)
        self._base = float(part.base_points)  # type: ignore[arg-type]
        # per feature: edges, points per bin (the missing bin last when it has one), NaN's bin, best points, bin labels
        self._bins: list[tuple[list[float], list[float], int, float, list[str]]] = []
        for fp in part.features:
            pts = [float(v) for v in fp.points] + ([float(fp.missing_points)] if fp.missing_points is not None else [])
            nan_at = fp.edges.size + 1 if fp.missing_points is not None else max(fp.nan_bin, 0)
            self._bins.append(([float(e) for e in fp.edges], pts, nan_at, max(pts), fp.labels()))
        self._indicator: dict[str, tuple[float, float]] = {i.party: (float(i.not_covered), float(i.covered)) for i in part.indicators}
        self._self_check()

    def bins(self, x: Sequence[float]) -> list[int]:
        """Bin index of each own value (as :meth:`FeaturePoints.bins`)."""
        return [nan_at if math.isnan(v) else bisect_left(edges, v) for v, (edges, _p, nan_at, _b, _l) in zip(x, self._bins, strict=True)]

    def own_points(self, x: Sequence[float]) -> list[float]:
        """Points of the bin of each own value."""
        return [b[1][g] for b, g in zip(self._bins, self.bins(x))]

    def indicator_points(self, covered: Mapping[str, bool]) -> dict[str, float]:
        """Points of each coverage indicator given which parties cover the SME."""
        return {p: pair[1] if covered.get(p, False) else pair[0] for p, pair in self._indicator.items()}

    def party_points(self, partial_log_odds: float | None) -> float:
        """A feature holder's points from its share of the log-odds (0 when it has none)."""
        return 0.0 if partial_log_odds is None else -self._factor * partial_log_odds

    def bank_points(self, own: Sequence[float], indicators: Mapping[str, float]) -> float:
        """The bank's points: own features, base, coverage indicators (the grouping of :meth:`PartyPoints.partial_points`)."""
        total = 0.0
        for v in own:
            total += v
        total += self._base
        for v in indicators.values():
            total += v
        return total

    def log_odds(self, score: float) -> float:
        """``(offset − score) / factor``: the model's log-odds of default at ``score``."""
        return (self._offset - score) / self._factor

    def reasons(self, x: Sequence[float], covered: Mapping[str, bool]) -> list[tuple[float, str, str, float]]:
        """``(points below best, code, bin, points)`` of the bank's own features and indicators that cost points, worst first."""
        items = []
        for (_edges, pts, _nan_at, best, labels), name, g in zip(self._bins, self.features, self.bins(x)):
            if best - pts[g] > 1e-9:
                items.append((best - pts[g], name, labels[g], pts[g]))
        for party, (off, on) in self._indicator.items():
            if not covered.get(party, False) and on - off > 1e-9:
                items.append((on - off, f"thin_file:{party}", "not covered", off))
        items.sort(key=lambda t: -t[0])
        return items

    @staticmethod
    def probability(z: float) -> float:
        """σ(z), as :meth:`LinearScorer.probability`."""
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    def _self_check(self) -> None:
        """Every bin of every own feature (and NaN), each indicator both ways, against the points table."""
        columns = []
        for edges, *_ in self._bins:
            e = np.asarray(edges, dtype=np.float64)
            inner = [e[0] - 1.0, *((e[:-1] + e[1:]) / 2.0), *e, e[-1] + 1.0] if e.size else [0.0]
            columns.append([*inner, math.nan])
        n = max((len(c) for c in columns), default=1)
        X = np.array([[c[k % len(c)] for c in columns] for k in range(n)], dtype=np.float64).reshape(n, len(self.features))
        covered = {p: np.arange(n) % 2 == j % 2 for j, p in enumerate(self._indicator)}
        want = self.part.partial_points(X, covered)
        for i in range(n):
            got = self.bank_points(self.own_points(list(X[i])), self.indicator_points({p: bool(v[i]) for p, v in covered.items()}))
            if not math.isclose(got, float(want[i]), rel_tol=0.0, abs_tol=1e-9):
                raise ProtocolError("fast points scorer disagrees with the points table; refusing to serve")
