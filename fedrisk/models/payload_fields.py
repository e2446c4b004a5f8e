"""Typed reads of a payload header's fields: each wrong or missing field is one line naming it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedrisk.errors import ProtocolError

__all__ = ["bool_field", "float_field", "int_field", "str_field"]


def int_field(h: Mapping[str, Any], key: str, *, signed: bool = False) -> int:
    """``h[key]`` as an integer (non-negative unless ``signed``)."""
    v = h.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or (v < 0 and not signed):
        raise ProtocolError(f"payload field {key!r} must be an integer")
    return v


def bool_field(h: Mapping[str, Any], key: str) -> bool:
    """``h[key]`` as a boolean."""
    v = h.get(key)
    if not isinstance(v, bool):
        raise ProtocolError(f"payload field {key!r} must be a boolean")
    return v


def str_field(h: Mapping[str, Any], key: str) -> str:
    """``h[key]`` as a non-empty string."""
    v = h.get(key)
    if not isinstance(v, str) or not v:
        raise ProtocolError(f"payload field {key!r} must be a non-empty string")
    return v


def float_field(h: Mapping[str, Any], key: str) -> float:
    """``h[key]`` as a finite number."""
    v = h.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ProtocolError(f"payload field {key!r} must be a finite number")
    return float(v)
