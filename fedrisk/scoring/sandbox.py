"""Least privilege for scoring processes: which isolation is available, and how to invoke it.

Mechanisms, strongest first. ``auto`` (the default) picks the first of
``bwrap`` and ``namespaces`` that works here, and **refuses to start** when
neither does: nothing serves without isolation unless the operator says so
with ``--sandbox none`` (or ``rlimits``).

``bwrap``
    bubblewrap (``/usr/bin/bwrap``): ``--unshare-all`` — new user (uid 1000,
    no capabilities), PID, IPC, UTS, cgroup **and network** namespaces. The
    filesystem is a fresh tmpfs root holding only read-only binds of ``/usr``
    (system libraries), the Python install, the fedrisk package, the model
    bundle and the configured files (TLS certificates and keys, policy, table,
    allow-list); plus ``/dev`` (minimal), ``/proc`` of its own PID namespace, and
    one writable directory (the root and ``/dev`` are remounted read-only): the process's private temp dir (0700, on tmpfs
    ``/dev/shm`` when available), which is also ``HOME`` and ``TMPDIR``.
``namespaces``
    the same namespaces and the same minimal root set up by
    :mod:`~fedrisk.scoring.namespaces` without bubblewrap: a tmpfs root
    with read-only binds of ``/usr``, the Python install, the fedrisk package and
    the configured files, ``pivot_root`` into it, the host's root unmounted — so
    the party's key folder, its state folder and every file not configured do
    not exist inside.
``rlimits``
    no isolation, only resource limits and ``no_new_privs``; only when asked for
    by name (a warning says so).
``none``
    nothing; only when asked for by name (development).

Network: why no shared network namespace. ``--unshare-net`` leaves a process
nothing but its own loopback, so it can neither serve on nor dial the host's
addresses. The alternative — keep the host's network and filter outbound
connections (seccomp cannot see ``connect()`` addresses; Landlock can restrict
TCP ports but not hosts, and not UDP) — would only be as strong as the filter.
fedrisk instead keeps the sandbox *without* a network and lets the launcher
open doors explicitly: the node serves on a Unix socket in its private dir
(the launcher splices the public TCP address to it), and each configured party
endpoint is one Unix socket spliced to that ``host:port`` only
(:mod:`~fedrisk.scoring.forward`). Guarantee: the sandboxed process
can reach exactly the configured endpoints and the launcher's register socket;
any other connection attempt fails (no route: there is no interface), and
abstract Unix sockets are per network namespace, so those are closed too.
TLS stays end to end through the doors.

Resource limits (:mod:`~fedrisk.scoring.limits`) apply under every
mechanism but ``none``: address space, open files, file size, no core dumps,
and optionally CPU seconds.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedrisk.errors import ConfigError

__all__ = [
    "MECHANISMS",
    "bwrap_command",
    "bwrap_path",
    "bwrap_usable",
    "choose_mechanism",
    "make_private_dir",
    "namespaces_command",
    "namespaces_usable",
    "python_paths",
    "sandbox_env",
]

MECHANISMS = ("bwrap", "namespaces", "rlimits", "none")
INSIDE_UID = 1000


def bwrap_path() -> str | None:
    """Path of ``bwrap`` if installed."""
    return shutil.which("bwrap")


@functools.cache
def bwrap_usable() -> bool:
    """Whether bubblewrap can create the namespaces the sandbox needs here."""
    exe = bwrap_path()
    if exe is None:
        return False
    argv = [exe, "--unshare-all", "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--die-with-parent"]
    argv += _system_binds() + ["--proc", "/proc", "--dev", "/dev", "--", "/bin/true" if Path("/bin/true").exists() else "/usr/bin/true"]
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def namespaces_usable() -> bool:
    """Whether the namespaces trampoline works here (user namespaces, mount_setattr)."""
    if not sys.platform.startswith("linux"):
        return False
    with tempfile.TemporaryDirectory(prefix="fedrisk-nsprobe-") as tmp:
        argv = namespaces_command(Path(tmp), [sys.executable, "-c", "import fedrisk"])
        try:
            return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


NO_SANDBOX = (
    "no sandbox is available here: bubblewrap is not installed (apt-get install bubblewrap) and unprivileged "
    "user namespaces are not usable; refusing to serve without isolation (pass --sandbox none to do so anyway)"
)


def choose_mechanism(requested: str = "auto") -> str:
    """Resolve ``auto`` to the strongest isolating mechanism available (fails closed); check an explicit one works."""
    if requested == "auto":
        if bwrap_usable():
            return "bwrap"
        if namespaces_usable():
            return "namespaces"
        raise ConfigError(NO_SANDBOX)
    if requested not in MECHANISMS:
        raise ConfigError(f"sandbox {requested!r} is not one of auto, {', '.join(MECHANISMS)}")
    if requested == "bwrap" and not bwrap_usable():
        raise ConfigError("sandbox 'bwrap' requested but bubblewrap is not installed or cannot create namespaces here")
    if requested == "namespaces" and not namespaces_usable():
        raise ConfigError("sandbox 'namespaces' requested but user namespaces are not available here")
    return requested


_PRIVATE_PREFIX = "fedrisk-sandbox-"
_OWNER_FILE = ".launcher-pid"


def make_private_dir() -> Path:
    """A fresh 0700 directory for one sandbox (on tmpfs ``/dev/shm`` when writable).

    The launcher's PID is written in it; directories left behind by launchers
    that died without cleaning up (SIGKILL, power loss of a container) are
    removed here, the next time a sandbox starts.
    """
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    _sweep_stale(Path(base or tempfile.gettempdir()))
    folder = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX, dir=base))
    (folder / _OWNER_FILE).write_text(str(os.getpid()))
    return folder


def _sweep_stale(base: Path) -> None:
    for folder in base.glob(f"{_PRIVATE_PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue


def python_paths() -> list[Path]:
    """Directories the Python interpreter and fedrisk are loaded from (bound read-only)."""
    import fedrisk

    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(fedrisk.__file__).resolve().parent}
    exe = Path(sys.executable)
    paths.add(exe.parent.resolve() if not exe.is_symlink() else exe.resolve().parent)
    for entry in sys.path:
        if entry and "site-packages" in entry and Path(entry).is_dir():
            paths.add(Path(entry).resolve())
    return _outermost(paths)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path == q or q in path.parents for q in out):
            out.append(path)
    return out


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        args += ["--ro-bind-try", name, name]
    return args


def sandbox_env(private_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sandboxed process (nothing is inherited)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(private_dir),
        "TMPDIR": str(private_dir),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLCONFIGDIR": str(private_dir),
    }
    for key in ("FEDRISK_LOG_LEVEL", "GRPC_VERBOSITY"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def bwrap_command(private_dir: Path, read_only: Iterable[str | Path], argv: list[str], *, env: Mapping[str, str] | None = None) -> list[str]:
    """``bwrap ... -- argv``: namespaces, read-only binds at their own paths, one writable dir.

    Parameters
    ----------
    private_dir : Path
        The only writable directory (bound at its own path; also HOME and TMPDIR).
    read_only : iterable of paths
        Files and directories the process may read (bundle, certificates, keys,
        policy, tables), bound read-only at their own paths.
    argv : list of str
        The program to run inside.
    """
    exe = bwrap_path()
    if exe is None:
        raise ConfigError("bubblewrap (bwrap) is not installed")
    args = [
        exe, "--unshare-all", "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "fedrisk-sandbox",
    ]  # fmt: skip
    args += _system_binds()
    args += ["--proc", "/proc", "--dev", "/dev"]
    for path in python_paths():
        args += ["--ro-bind", str(path), str(path)]
    seen: set[str] = set()
    for item in read_only:
        resolved = str(Path(item).resolve())
        if resolved in seen:
            continue
        seen.add(resolved)
        if not Path(resolved).exists():
            raise ConfigError(f"{item} does not exist (needed inside the sandbox)")
        args += ["--ro-bind", resolved, resolved]
    priv = str(Path(private_dir).resolve())
    args += ["--bind", priv, priv]
    # The root and /dev are tmpfs that bwrap built; make them read-only so the
    # private dir stays the only writable place (device nodes keep working).
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", priv, "--clearenv"]
    for key, value in sandbox_env(Path(priv), env).items():
        args += ["--setenv", key, value]
    return args + ["--", *argv]


def namespaces_command(private_dir: Path, argv: list[str], read_only: Iterable[str | Path] = ()) -> list[str]:
    """``python -m fedrisk.scoring.namespaces PRIVATE_DIR --ro PATH ... -- argv``.

    The new root holds the system's libraries, the Python install and fedrisk
    (:func:`python_paths`), the ``read_only`` files and folders and ``private_dir``.
    """
    binds: list[str] = []
    seen: set[str] = set()
    for item in [*python_paths(), *read_only]:
        path = str(Path(item).resolve())
        if path in seen:
            continue
        seen.add(path)
        if not Path(path).exists():
            raise ConfigError(f"{item} does not exist (needed inside the sandbox)")
        binds += ["--ro", path]
    return [sys.executable, "-m", "fedrisk.scoring.namespaces", str(Path(private_dir).resolve()), *binds, "--", *argv]
