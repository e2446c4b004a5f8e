"""Randomness for masks and noise, from ``os.urandom``: values another party must not predict."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["secure_normal", "secure_uniform"]


def secure_uniform(low: float, high: float, size: int) -> np.ndarray:
    """Uniform doubles in ``[low, high)`` from ``os.urandom`` (masks must not be predictable)."""
    raw = np.frombuffer(os.urandom(8 * int(size)), dtype=np.uint64)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return low + (high - low) * unit


def secure_normal(loc: float, scale: float, size: int) -> np.ndarray:
    """Gaussian doubles from ``os.urandom`` (Box–Muller)."""
    u1 = secure_uniform(0.0, 1.0, size)
    u2 = secure_uniform(0.0, 1.0, size)
    normal: np.ndarray = loc + scale * np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return normal
