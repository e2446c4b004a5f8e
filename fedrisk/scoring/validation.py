"""Input validation of scoring requests: every problem is one precise line.

The node receives requests as raw bytes and parses them itself, so that each
bad input becomes ``INVALID_ARGUMENT`` with a message naming the field:

* **oversize**: a message above the node's per-message limit (``max_bytes``,
  default 16 KiB, far above a real application) is refused before parsing. The
  gRPC transport limit (``grpc.max_receive_message_length``) is set higher,
  1 MiB, so that the node's own, precise message is what callers see; beyond
  1 MiB gRPC itself answers ``RESOURCE_EXHAUSTED`` without buffering more.
* **malformed**: bytes that are not an ``Application``;
* **unknown fields**: field numbers this node's ``fedrisk.v1`` does not define
  (a newer client, or a typo'd hand-built message) and unknown enum values;
* **malformed IDs**: a unified social credit code with a wrong length, a
  character outside the GB 32100 alphabet or a wrong check character (or, for
  opaque IDs, empty / over-long / with control characters);
* **out-of-range values**: NaN or infinite amounts, negative revenue, features
  that are not whole numbers where the schema says int/bool/category, and
  values further than ``max_abs_z`` standard deviations from the training
  mean (a unit or decimal-point error, not an unusual SME);
* **unknown features**: a feature name the bank's model does not read.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from fedrisk.errors import DataValidationError
from fedrisk.data.credit_code import validate_credit_code
from fedrisk.v1 import scoring_pb2 as pb

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TRANSPORT_MAX_BYTES",
    "ApplicationValidator",
    "FeatureSpec",
    "ValidApplication",
    "check_known_fields",
    "check_size",
    "normalise_id",
]

DEFAULT_MAX_BYTES = 16 * 1024
TRANSPORT_MAX_BYTES = 1024 * 1024
_APP_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MAX_MONEY = 1e13
_PURPOSES = {v.number for v in pb.Purpose.DESCRIPTOR.values}
_KNOWN_IDS_MAX = 65_536  # raw ID -> normalised, for IDs that passed the check (a credit code's check character is ~10 µs of Python)


def check_size(data: bytes, what: str, max_bytes: int) -> None:
    """Refuse a message longer than ``max_bytes`` (before parsing it)."""
    if len(data) > max_bytes:
        raise DataValidationError(f"{what} is {len(data):,} bytes; this service accepts at most {max_bytes:,}")


def check_known_fields(message: Any, what: str) -> None:
    """Refuse a parsed message that carries fields this schema does not define."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise DataValidationError(f"{what} has unknown field number(s) {', '.join(map(str, numbers))}: not part of fedrisk.v1.{type(message).__name__}")


def normalise_id(raw: str, id_format: str, what: str = "sme_id") -> str:
    """Normalise and check an SME ID (credit codes upper-cased, surrounding spaces removed)."""
    text = raw.strip()
    if not text:
        raise DataValidationError(f"{what} is empty")
    if id_format == "credit_code":
        code = text.upper()
        try:
            validate_credit_code(code)
        except ValueError as exc:
            raise DataValidationError(f"{what} {_show(raw)} is not a unified social credit code: {exc}") from None
        return code
    if len(text) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise DataValidationError(f"{what} {_show(raw)} must be 1-128 printable characters")
    return text


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:36] + "...")


@dataclass(frozen=True)
class FeatureSpec:
    """What the bank's model accepts for one of its features."""

    name: str
    kind: str = "float"  # float | int | bool | category
    allow_missing: bool = False
    levels: int | None = None
    mean: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class ValidApplication:
    """An application that passed every check, normalised."""

    application_id: str
    sme_id: str
    declared_revenue: float | None
    requested_amount: float | None
    features: list[float] | None  # in model order, NaN = missing; None = read the bank's table
    estimate_only: bool
    purpose: int


class ApplicationValidator:
    """Parse and check ``Application`` messages against the bank's model.

    Parameters
    ----------
    features : sequence of FeatureSpec
        The bank's model features, in model order.
    id_format : str
        ``credit_code`` or ``opaque`` (from the training schema).
    max_bytes : int
        Per-message size limit.
    max_abs_z : float
        Largest accepted distance from the training mean, in training standard deviations.
    """

    def __init__(self, features: Sequence[FeatureSpec], id_format: str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_abs_z: float = 100.0) -> None:
        self.features = tuple(features)
        self.position = {f.name: j for j, f in enumerate(self.features)}
        self.id_format = id_format
        self.max_bytes = int(max_bytes)
        self.max_abs_z = float(max_abs_z)
        self._known_ids: dict[str, str] = {}

    @classmethod
    def for_model(
        cls, features: Sequence[str], mean: Iterable[float], scale: Iterable[float], schema: Mapping[str, Any], **kwargs: Any
    ) -> ApplicationValidator:
        """Build from the bank's scorecard and the schema recorded in its bundle."""
        kinds = dict((schema or {}).get("features") or {})
        allow = set((schema or {}).get("allow_missing") or ())
        cats = dict((schema or {}).get("categories") or {})
        specs = [
            FeatureSpec(
                name=name,
                kind=str(kinds.get(name, "float")),
                allow_missing=name in allow,
                levels=len(cats[name]) if name in cats else None,
                mean=float(m),
                scale=float(s),
            )
            for name, m, s in zip(features, mean, scale)
        ]
        return cls(specs, str((schema or {}).get("id_format", "opaque")), **kwargs)

    # ----------------------------------------------------------------- parsing
    def parse(self, data: bytes, what: str = "Application") -> pb.Application:
        """Bytes → ``Application``, refusing oversize, malformed and unknown-field messages."""
        check_size(data, what, self.max_bytes)
        message = pb.Application()
        try:
            message.ParseFromString(data)
        except DecodeError:
            raise DataValidationError(f"{what} is not a valid fedrisk.v1.Application message") from None
        check_known_fields(message, what)
        return message

    # -------------------------------------------------------------- semantics
    def validate(self, app: pb.Application, what: str = "Application") -> ValidApplication:
        """Check every field; returns the normalised application."""
        if app.application_id and not _APP_ID.match(app.application_id):
            raise DataValidationError(f"{what}.application_id {_show(app.application_id)} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        if not app.sme_id:
            raise DataValidationError(f"{what}.sme_id is missing")
        sme_id = self._known_ids.get(app.sme_id)
        if sme_id is None:
            sme_id = normalise_id(app.sme_id, self.id_format, f"{what}.sme_id")
            if len(self._known_ids) >= _KNOWN_IDS_MAX:
                self._known_ids.clear()
            self._known_ids[app.sme_id] = sme_id
        if app.purpose not in _PURPOSES:
            raise DataValidationError(f"{what}.purpose {app.purpose} is not a known fedrisk.v1.Purpose")
        revenue = self._money(app, "declared_annual_revenue", what, allow_zero=True)
        requested = self._money(app, "requested_amount", what, allow_zero=False)
        features = self._features(app.features, what) if len(app.features) else None
        return ValidApplication(
            application_id=app.application_id or uuid.uuid4().hex,
            sme_id=sme_id,
            declared_revenue=revenue,
            requested_amount=requested,
            features=features,
            estimate_only=bool(app.estimate_only),
            purpose=int(app.purpose) or pb.APPLICATION,
        )

    def _money(self, app: pb.Application, field: str, what: str, *, allow_zero: bool) -> float | None:
        if not app.HasField(field):
            return None
        value = getattr(app, field)
        if not math.isfinite(value):
            raise DataValidationError(f"{what}.{field} must be a finite amount, got {value}")
        if value < 0 or (value == 0 and not allow_zero) or value > _MAX_MONEY:
            low = ">= 0" if allow_zero else "> 0"
            raise DataValidationError(f"{what}.{field} must be {low} and <= {_MAX_MONEY:.0e}, got {value:g}")
        return float(value)

    def _features(self, given: Mapping[str, float], what: str) -> list[float]:
        unknown = sorted(set(given) - set(self.position))
        if unknown:
            known = ", ".join(f.name for f in self.features)
            raise DataValidationError(f"{what}.features has unknown feature {unknown[0]!r}; the bank's model reads: {known}")
        row = [math.nan] * len(self.features)
        missing = []
        for j, spec in enumerate(self.features):
            if spec.name not in given:
                if not spec.allow_missing:
                    missing.append(spec.name)
                continue
            row[j] = self._value(spec, float(given[spec.name]), what)
        if missing:
            raise DataValidationError(f"{what}.features lacks {', '.join(repr(m) for m in missing)} (send all of the bank's features, or none)")
        return row

    def _value(self, spec: FeatureSpec, value: float, what: str) -> float:
        where = f"{what}.features[{spec.name!r}]"
        if math.isnan(value):
            if spec.allow_missing:
                return value
            raise DataValidationError(f"{where} is NaN, and the schema does not allow it to be missing")
        if math.isinf(value):
            raise DataValidationError(f"{where} must be finite, got {value}")
        if spec.kind in ("int", "bool", "category") and value != math.floor(value):
            raise DataValidationError(f"{where} must be a whole number ({spec.kind}), got {value:g}")
        if spec.kind == "bool" and value not in (0.0, 1.0):
            raise DataValidationError(f"{where} must be 0 or 1, got {value:g}")
        if spec.kind == "category" and spec.levels is not None and not 0 <= value < spec.levels:
            raise DataValidationError(f"{where} must be a category code in 0..{spec.levels - 1}, got {value:g}")
        z = (value - spec.mean) / spec.scale
        if abs(z) > self.max_abs_z:
            raise DataValidationError(
                f"{where} = {value:g} is out of range: {abs(z):.0f} standard deviations from the training mean {spec.mean:g} (limit {self.max_abs_z:g})"
            )
        return value
