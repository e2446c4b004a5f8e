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
    "POINTS",
    "SCORECARD",
    "SECUREBOOST",
    "LinearScorer",
    "LoadedModel",
    "PointsScorer",
    "load_bank_model",
    "load_party_model",
    "parse_trusted_keys",
]

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
SCORECARD, SECUREBOOST, POINTS = "scorecard", "secureboost", "points"
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
        """``scorecard``, ``points`` or ``secureboost``."""
        if self.meta.get("kind") == POINTS_KIND:
            return POINTS
        return SECUREBOOST if self.meta.get("kind") in (_SB_LABEL_HOLDER, _SB_FEATURE_HOLDER) else SCORECARD

    @property
    def is_label_holder(self) -> bool:
        """Whether this is the label holder's (the bank's) part."""
        if isinstance(self.part, PartyPoints):
            return self.part.is_label_holder
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
    if meta.get("kind") == POINTS_KIND:
        return _points_part(path, arrays, meta)
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
