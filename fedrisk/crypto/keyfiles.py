"""Atomic, permission-checked files for keys and other secrets.

Every file that holds secret material (a CKKS secret context, an X25519 or
Ed25519 private key, a TLS private key) is written with :func:`write_secret_file`
and read back with :func:`read_secret_file`:

* writes are atomic: the bytes go to a temporary file in the same directory,
  created with ``os.open(..., 0o600)`` so that no other user can ever open it,
  are ``fsync``-ed, and replace the target with ``os.replace``; the directory
  is then ``fsync``-ed so the rename survives a crash;
* the final mode is ``0600`` whatever the process umask is;
* reads refuse a secret file that is readable or writable by the group or by
  others, as ``ssh`` does, with a one-line message naming the path and mode.

Public material (certificates, public contexts, manifests) is written
atomically with mode ``0644`` by :func:`write_public_file`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from fedrisk.errors import CryptoError

__all__ = [
    "SECRET_FILE_MODE",
    "PUBLIC_FILE_MODE",
    "write_secret_file",
    "write_public_file",
    "sync_directory",
    "read_secret_file",
    "check_secret_file_mode",
]

SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (best effort on platforms without it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], data: bytes, mode: int, *, sync_directory: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically with the given final ``mode`` (and its directory entry flushed if ``sync_directory``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"file contents for {os.fspath(path)} must be bytes")
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    # O_CREAT|O_EXCL with mode 0600: the temporary file is never readable by
    # anyone else, even for a moment (the umask can only remove bits).
    tmp_name = str(directory / f".{target.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp_name, flags, 0o600)
    try:
        # Set the final mode explicitly: the umask does not apply to fchmod.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=True) as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        tmp_name = ""
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    if sync_directory:
        _fsync_dir(directory)
    return target


def write_secret_file(path: str | os.PathLike[str], data: bytes, *, sync_directory: bool = True) -> Path:
    """Atomically write secret ``data`` to ``path`` with mode ``0600``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; its parent directory is created if missing.
    data : bytes
        The secret bytes.
    sync_directory : bool
        Flush the directory entry too (default). A caller writing several files
        into one directory passes False and calls :func:`sync_directory` once.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return _atomic_write(path, data, SECRET_FILE_MODE, sync_directory=sync_directory)


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush ``directory``'s entries to disk (after files written with ``sync_directory=False``)."""
    _fsync_dir(Path(directory))


def write_public_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write public ``data`` to ``path`` with mode ``0644``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; its parent directory is created if missing.
    data : bytes
        The bytes to write.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return _atomic_write(path, data, PUBLIC_FILE_MODE)


def check_secret_file_mode(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CryptoError` unless ``path`` is a private regular file.

    Parameters
    ----------
    path : str or os.PathLike
        File to check.

    Raises
    ------
    CryptoError
        If the file is missing, not a regular file, or accessible by group or
        others (any of the ``0o077`` bits set).
    """
    target = Path(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise CryptoError(f"secret file {target} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise CryptoError(f"secret file {target} is not a regular file")
    perms = stat.S_IMODE(st.st_mode)
    if perms & 0o077:
        raise CryptoError(f"secret file {target} has mode {perms:04o}, which lets group/others access it; run: chmod 600 {target}")


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file, refusing it if group or others can access it.

    Parameters
    ----------
    path : str or os.PathLike
        File written by :func:`write_secret_file` (or any file with mode
        ``0600``/``0400``).

    Returns
    -------
    bytes
        The file contents.

    Raises
    ------
    CryptoError
        If the file is missing, not a regular file, or its mode grants access
        to group or others.
    """
    target = Path(path)
    try:
        # Symlinks are followed (as ssh does; Kubernetes secret mounts are
        # symlinks): the mode checked is that of the file actually read.
        fd = os.open(target, os.O_RDONLY)
    except FileNotFoundError:
        raise CryptoError(f"secret file {target} does not exist") from None
    except OSError as exc:
        raise CryptoError(f"cannot open secret file {target}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CryptoError(f"secret file {target} is not a regular file")
        perms = stat.S_IMODE(st.st_mode)
        if perms & 0o077:
            raise CryptoError(f"secret file {target} has mode {perms:04o}, which lets group/others access it; run: chmod 600 {target}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
