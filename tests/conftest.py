"""Shared fixtures: paths to the real public data kept beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return ``../shared/data`` (CI keeps ``shared/`` beside the clean checkout)."""
    env = os.environ.get("FEDRISK_SHARED_DATA")
    if env:
        return Path(env)
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with an ``e2e`` or ``slow`` test run first (the order inside each file is kept).

    ``make test`` spreads whole files over one worker per core (``-n PYTEST_WORKERS --dist loadfile``):
    starting with the long files keeps one long file from running alone at the end.
    """
    heavy = {item.path for item in items if item.get_closest_marker("e2e") or item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in heavy)


@pytest.fixture(scope="session")
def default_credit_dir() -> Path:
    path = shared_data_dir() / "default_credit"
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}; set FEDRISK_SHARED_DATA")
    return path
