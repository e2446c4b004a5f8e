"""Fallback sandbox without bubblewrap: Linux namespaces set up by a small trampoline.

``python -m fedrisk.parties.scoring.namespaces PRIVATE_DIR -- PROGRAM ARGS...``
runs PROGRAM

* in a new **user** namespace, as uid/gid 1000 mapped to the caller (so it
  holds no capability once it execs, and no other uid exists inside);
* in a new **network** namespace: no interface but a loopback that is down —
  no route anywhere; the only ways out are Unix sockets in PRIVATE_DIR that the
  launcher created;
* in a new **mount** namespace where every mount is read-only (one
  ``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``) except PRIVATE_DIR;
* in new **PID** (with its own ``/proc``), IPC and UTS namespaces, so it can
  neither see nor signal nor ptrace any process outside;
* with ``PR_SET_NO_NEW_PRIVS``.

Weaker than bubblewrap in one respect, said plainly: the host's files stay
visible (read-only), where bubblewrap shows only the Python install, the
bundle and the configured files. It needs unprivileged user namespaces and
Linux >= 5.12 (``mount_setattr``); :func:`namespaces_usable` probes both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["INSIDE_UID", "enter_sandbox", "main"]

INSIDE_UID = 1000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (new-style syscall table)
PR_SET_NO_NEW_PRIVS = 38


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def enter_sandbox(private_dir: str) -> None:
    """Unshare and lock down this (single-threaded) process; forks: returns in the PID-namespace child."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    _check(libc.unshare(flags), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{INSIDE_UID} {uid} 1\n")
    _write("/proc/self/gid_map", f"{INSIDE_UID} {gid} 1\n")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    priv = os.fsencode(os.path.realpath(private_dir))
    _check(libc.mount(priv, priv, None, MS_BIND | MS_REC, None), "bind the private dir")
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    ro = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    _check(syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(ro), ctypes.sizeof(ro)), "make / read-only")
    rw = _MountAttr(attr_clr=MOUNT_ATTR_RDONLY)
    _check(syscall(SYS_MOUNT_SETATTR, AT_FDCWD, priv, 0, ctypes.byref(rw), ctypes.sizeof(rw)), "make the private dir writable")
    libc.sethostname(b"fedrisk-sandbox", len(b"fedrisk-sandbox"))
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: os.kill(pid, s))
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(argv: list[str] | None = None) -> int:
    """``namespaces PRIVATE_DIR -- PROGRAM ARGS...``"""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m fedrisk.parties.scoring.namespaces PRIVATE_DIR -- PROGRAM ARGS...\n")
        return 2
    try:
        enter_sandbox(args[0])
    except OSError as exc:
        sys.stderr.write(f"error: namespace sandbox: {exc.strerror or exc}\n")
        return 3
    os.chdir(args[0])
    os.execv(args[2], args[2:])
    return 127  # unreachable


if __name__ == "__main__":
    sys.exit(main())
