"""Fallback sandbox without bubblewrap: Linux namespaces set up by a small trampoline.

``python -m fedrisk.scoring.namespaces PRIVATE_DIR [--ro PATH]... -- PROGRAM ARGS...``
runs PROGRAM

* in a new **user** namespace, as uid/gid 1000 mapped to the caller (so it
  holds no capability once it execs, and no other uid exists inside);
* in a new **network** namespace: no interface but a loopback that is down —
  no route anywhere; the only ways out are Unix sockets in PRIVATE_DIR that the
  launcher created;
* in a new **mount** namespace whose root is a fresh tmpfs holding only what it
  needs, as bubblewrap builds it: read-only binds of ``/usr`` (and the ``/bin``,
  ``/lib*`` links), the dynamic loader's cache, each ``--ro`` path (the Python
  install, the fedrisk package, the bundle and the configured files) at its own
  path, ``/dev/{null,zero,full,random,urandom}``, its own ``/proc``, and
  PRIVATE_DIR, the only writable place. The host's root is unmounted
  (``pivot_root``), so nothing else exists inside: not the party's key folder,
  its state folder, ``/home``, ``/tmp`` or ``/etc``. A key file next to a
  configured file is not visible either: files are bound one by one;
* in new **PID** (with its own ``/proc``), IPC and UTS namespaces, so it can
  neither see nor signal nor ptrace any process outside;
* with ``PR_SET_NO_NEW_PRIVS``.

It needs unprivileged user namespaces and Linux >= 5.12 (``mount_setattr``);
:func:`~fedrisk.scoring.sandbox.namespaces_usable` probes both.
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
MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (new-style syscall table)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom")
SYSTEM_DIRS = ("/usr",)
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
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


def _mount_point(root: str, path: str, is_dir: bool) -> str:
    """Create ``root/path`` (a directory, or an empty file to bind a file onto) in the new root's tmpfs."""
    target = root + path
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    return target


def _bind(libc: ctypes.CDLL, root: str, path: str) -> None:
    """Bind the host's ``path`` at the same path under ``root`` (recursively; read-only later)."""
    if not os.path.exists(path):
        raise OSError(2, f"{path} does not exist (needed inside the sandbox)")
    target = _mount_point(root, path, os.path.isdir(path))
    _check(libc.mount(os.fsencode(path), os.fsencode(target), None, MS_BIND | MS_REC, None), f"bind {path}")


def _build_root(libc: ctypes.CDLL, private_dir: str, read_only: list[str]) -> None:
    """Make a tmpfs holding only what the program needs, and pivot into it (in the PID-namespace child)."""
    root = os.path.join(private_dir, ".root")
    os.makedirs(root, mode=0o755, exist_ok=True)
    _check(libc.mount(b"tmpfs", os.fsencode(root), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=4m"), "mount the new root")
    for path in SYSTEM_DIRS:
        _bind(libc, root, path)
    for path in SYSTEM_LINKS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind(libc, root, path)
    for path in SYSTEM_FILES:
        if os.path.exists(path):
            _bind(libc, root, path)
    for path in sorted({os.path.realpath(p) for p in read_only}, key=lambda p: p.count("/")):
        _bind(libc, root, path)
    for name in DEVICES:
        _bind(libc, root, f"/dev/{name}")
    target = _mount_point(root, private_dir, True)  # not recursive: the new root below it stays out
    _check(libc.mount(os.fsencode(private_dir), os.fsencode(target), None, MS_BIND, None), "bind the private dir")
    proc = _mount_point(root, "/proc", True)  # this PID namespace's /proc, while the host's is still mounted
    _check(libc.mount(b"proc", os.fsencode(proc), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(38, f"pivot_root: unknown system call number on {os.uname().machine}")
    os.chdir(root)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    _check(syscall(number, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "unmount the host's root")
    os.chdir("/")
    ro = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    _check(syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(ro), ctypes.sizeof(ro)), "make / read-only")
    rw = _MountAttr(attr_clr=MOUNT_ATTR_RDONLY)
    _check(syscall(SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(private_dir), 0, ctypes.byref(rw), ctypes.sizeof(rw)), "make the private dir writable")


def enter_sandbox(private_dir: str, read_only: list[str] | None = None) -> None:
    """Unshare and lock down this (single-threaded) process; forks: returns in the PID-namespace child,
    inside a new root that holds only ``read_only`` (and the system's libraries) and ``private_dir``."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    _check(libc.unshare(flags), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{INSIDE_UID} {uid} 1\n")
    _write("/proc/self/gid_map", f"{INSIDE_UID} {gid} 1\n")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    libc.sethostname(b"fedrisk-sandbox", len(b"fedrisk-sandbox"))
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: os.kill(pid, s))
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    try:
        _build_root(libc, os.path.realpath(private_dir), list(read_only or ()))
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    except OSError as exc:
        sys.stderr.write(f"error: namespace sandbox: {exc.strerror or exc}\n")
        os._exit(3)


def main(argv: list[str] | None = None) -> int:
    """``namespaces PRIVATE_DIR [--ro PATH]... -- PROGRAM ARGS...``"""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m fedrisk.scoring.namespaces PRIVATE_DIR [--ro PATH]... -- PROGRAM ARGS...\n"
    if "--" not in args or len(args) < 3:
        sys.stderr.write(usage)
        return 2
    split = args.index("--")
    head, program = args[:split], args[split + 1 :]
    if not head or not program or len(head[1:]) % 2 or any(flag != "--ro" for flag in head[1::2]):
        sys.stderr.write(usage)
        return 2
    private_dir, read_only = head[0], head[2::2]
    try:
        enter_sandbox(private_dir, read_only)
    except OSError as exc:
        sys.stderr.write(f"error: namespace sandbox: {exc.strerror or exc}\n")
        return 3
    os.chdir(os.path.realpath(private_dir))
    os.execv(program[0], program)
    return 127  # unreachable


if __name__ == "__main__":
    sys.exit(main())
