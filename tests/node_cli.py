"""The ``fedrisk node start`` command line, as a party's operator types it (one builder for every e2e test)."""

from __future__ import annotations

import sys
from pathlib import Path


def node_start_argv(
    *,
    name: str,
    role: str,
    data: Path,
    superlink: str,
    state_dir: Path | None = None,
    id_column: str | None = "id",
    label_column: str | None = None,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``python -m fedrisk.cli node start …`` with the flags given (``None`` leaves a flag out)."""
    argv = [sys.executable, "-m", "fedrisk.cli", "node", "start", "--name", name, "--role", role, "--data", str(data)]
    flags = {
        "--id-column": id_column,
        "--label-column": label_column,
        "--superlink": superlink,
        "--root-certificates": root_certificates,
        "--auth-key": auth_key,
        "--state-dir": state_dir,
    }
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv + list(extra)
