"""A kernel's worker processes: fresh ``python`` children talking length-prefixed frames over pipes (hazmat).

No pickling, no ``multiprocessing`` (which would re-import the caller's
``__main__``): each child runs the worker loop its kernel names in
:attr:`WorkerPool.boot` and reads and writes :mod:`fedrisk.crypto.frames`
frames, each prefixed by its 8-byte length (:func:`send_frame`,
:func:`recv_frame`).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fedrisk.crypto.frames import NO_FINGERPRINT, pack_frame, unpack_frame
from fedrisk.errors import CryptoError

__all__ = ["FrameHandler", "WorkerPool", "recv_frame", "send_frame", "serve_frames"]

#: A worker's command handler: (kind, header, blobs) of a request → (kind, blobs) of its reply.
FrameHandler = Callable[[bytes, dict[str, Any], list[bytes]], tuple[bytes, list[bytes]]]


def _read_exact(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("pipe closed")
        buf += chunk
    return bytes(buf)


def send_frame(stream: Any, frame: bytes) -> None:
    stream.write(struct.pack("<Q", len(frame)))
    stream.write(frame)
    stream.flush()


def recv_frame(stream: Any) -> bytes:
    (n,) = struct.unpack("<Q", _read_exact(stream, 8))
    return _read_exact(stream, n)


def serve_frames(inp: Any, out: Any, handle: FrameHandler) -> None:  # pragma: no cover - runs in a child process
    """A worker's loop: answer each frame on ``inp`` on ``out`` until ``STOP`` or the pipe closes.

    Every frame but ``STOP`` goes to ``handle``; its reply travels under the
    request's fingerprint. An exception goes back as one ``ERRR`` line (which
    :meth:`WorkerPool.scatter` raises in the caller) and the worker keeps serving.
    """
    while True:
        try:
            kind, fp, header, blobs = unpack_frame(recv_frame(inp))
        except EOFError:
            return
        if kind == b"STOP":
            return
        try:
            reply_kind, reply_blobs = handle(kind, header, blobs)
            reply = pack_frame(reply_kind, fp, {}, reply_blobs)
        except Exception as exc:  # report, keep serving
            reply = pack_frame(b"ERRR", fp, {"error": f"{type(exc).__name__}: {exc}"})
        send_frame(out, reply)


class WorkerPool:
    """A kernel's own worker processes (subclasses name the loop they boot in :attr:`boot`).

    Fresh ``python`` children talking length-prefixed frames over dedicated pipes:
    no pickling, and no re-import of the caller's ``__main__`` (which
    ``multiprocessing`` spawn would need guarded). Their stdout goes to stderr.
    """

    #: The ``python -c`` line a child runs: the module whose worker loop it serves.
    boot: str = ""
    #: What a worker is called in errors.
    what: str = "worker"

    def __init__(self, n: int) -> None:
        if not self.boot:
            raise CryptoError(f"{type(self).__name__} names no worker loop to boot")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.links: list[tuple[Any, Any]] = []
        for _ in range(n):
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            proc = subprocess.Popen(
                [sys.executable, "-c", self.boot, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
                close_fds=True,
            )
            os.close(to_child_r)
            os.close(from_child_w)
            self.procs.append(proc)
            self.links.append((os.fdopen(to_child_w, "wb"), os.fdopen(from_child_r, "rb")))

    def scatter(self, frames: Sequence[bytes]) -> list[list[bytes]]:
        """Send one frame to each worker, then collect every reply (workers run concurrently)."""
        try:
            for (w, _), frame in zip(self.links, frames, strict=True):
                send_frame(w, frame)
            replies = [recv_frame(r) for _, r in self.links]
        except (OSError, EOFError) as exc:
            raise CryptoError(f"{self.what} process died: {exc}") from None
        results = []
        for reply in replies:
            kind, _, header, blobs = unpack_frame(reply)
            if kind == b"ERRR":
                raise CryptoError(f"{self.what} failed: {header.get('error', '?')}")
            results.append(blobs)
        return results

    def close(self) -> None:
        for w, r in self.links:
            try:
                send_frame(w, pack_frame(b"STOP", NO_FINGERPRINT, {}))
            except (OSError, ValueError):
                pass
            for stream in (w, r):
                try:
                    stream.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.links, self.procs = [], []


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False
