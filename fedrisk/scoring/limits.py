"""Resource limits and privilege reduction a scoring process applies to itself.

Called first thing in a scoring process (inside the sandbox when there is one),
before any model, key or socket is opened. Soft and hard limits are both set,
so the process cannot raise them again; ``PR_SET_NO_NEW_PRIVS`` stops any
exec'd program from gaining privileges (setuid, file capabilities).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

from fedrisk.scoring.config import Limits

__all__ = ["apply_limits", "set_no_new_privs"]

_PR_SET_NO_NEW_PRIVS = 38


def set_no_new_privs() -> bool:
    """Set ``PR_SET_NO_NEW_PRIVS`` (Linux); returns whether it took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    except OSError:
        return False


def _cap(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def apply_limits(limits: Limits) -> dict[str, int]:
    """Apply ``limits`` to this process; returns what was set (0 = left alone)."""
    applied = {"memory_mb": 0, "cpu_seconds": 0, "max_open_files": 0, "file_size_mb": 0, "core": 0}
    if limits.memory_mb > 0:
        _cap(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
        applied["memory_mb"] = limits.memory_mb
    if limits.cpu_seconds > 0:
        _cap(resource.RLIMIT_CPU, limits.cpu_seconds)
        applied["cpu_seconds"] = limits.cpu_seconds
    if limits.max_open_files > 0:
        _cap(resource.RLIMIT_NOFILE, limits.max_open_files)
        applied["max_open_files"] = limits.max_open_files
    if limits.file_size_mb > 0:
        _cap(resource.RLIMIT_FSIZE, limits.file_size_mb * 1024 * 1024)
        applied["file_size_mb"] = limits.file_size_mb
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of a process holding keys
    applied["core"] = 1
    set_no_new_privs()
    return applied
