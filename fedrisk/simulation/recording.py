"""What a run folder records besides its metrics: versions, the resolved scenario, the summary.

``versions.json`` names the versions of fedrisk, Flower, TenSEAL, PyTorch,
NumPy, Python (and Ray, scikit-learn, the platform and the git commit when
known) that produced the numbers; ``scenario.resolved.toml`` is the scenario
with every default filled in and every path absolute — run it again with
``fedrisk simulate runs/<run-id>/scenario.resolved.toml``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from fedrisk.simulation.scenario import Scenario

PACKAGES = {"fedrisk": "fedrisk", "flwr": "flwr", "tenseal": "tenseal", "torch": "torch", "numpy": "numpy", "scikit-learn": "scikit-learn", "ray": "ray"}


def versions() -> dict[str, str | None]:
    """Versions of everything that shapes the numbers (``None`` when not installed)."""
    out: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    out["cpus"] = str(os.cpu_count())
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def json_safe(value: object) -> object:
    """``value`` with non-finite floats as strings (``"inf"``): strict JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: object) -> Path:
    """Write JSON atomically (sorted keys; ``inf`` written as the string ``"inf"``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_resolved_scenario(scenario: Scenario, folder: Path) -> Path:
    """``scenario.resolved.toml`` (or ``.json`` where ``tomli_w`` is missing)."""
    data = scenario.to_dict()
    try:
        import tomli_w
    except ImportError:  # flwr depends on tomli-w, so this is a fallback only
        return write_json(folder / "scenario.resolved.json", data)
    header = f"# Resolved by fedrisk simulate from {scenario.source or '<dict>'}{' with --quick' if scenario.quick else ''}.\n"
    path = folder / "scenario.resolved.toml"
    path.write_text(header + tomli_w.dumps(data))
    return path


def write_versions(folder: Path) -> Path:
    return write_json(folder / "versions.json", versions())


__all__ = ["json_safe", "versions", "write_json", "write_resolved_scenario", "write_versions"]
