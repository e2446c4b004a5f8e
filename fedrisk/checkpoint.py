"""Coordinator protocol checkpoints: what a restarted coordinator needs to resume a run.

After every completed round (FedAvg) or epoch (vertical LR) the coordinator
writes its protocol state to ``<run-dir>/coordinator/checkpoints/<run-id>/``::

    checkpoint.json        {"format", "protocol", "round", "config_sha256", "state", "blobs", "saved_at"}
    blobs/<sha256>.bin     byte payloads the state refers to (ciphertexts, public contexts)

No pickle: the state is JSON, payloads are raw bytes named by their SHA-256
and checked against it when read. Writes are crash-safe: every blob file is
written atomically (temporary file, ``fsync``, ``rename``, directory
``fsync``) *before* ``checkpoint.json`` is replaced the same way, so a crash at
any instant leaves either the previous checkpoint or the new one, both
complete. Blobs no longer referenced are deleted only after the new
``checkpoint.json`` is in place. The files are 0600: they hold ciphertexts and
public contexts only (the coordinator never holds a secret key), but nobody
else needs them.

What the coordinator keeps is only what it cannot get back from the parties:
the parties keep their own protocol state warm in their processes (and
vertical-LR parties their checkpoint bundles on disk), so a checkpoint holds
the messages the next round starts from — for FedAvg the last encrypted
aggregate and the pooled-statistics aggregate, for vertical LR the masked
gradients still to be delivered — plus counters and the per-round metrics.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrisk.crypto.keyfiles import sync_directory, write_secret_file
from fedrisk.errors import ConfigError, ProtocolError

FORMAT = "fedrisk-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.json"


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a protocol configuration as canonical JSON (a resumed run must match it)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Checkpoint:
    """One saved protocol state.

    Attributes
    ----------
    protocol : str
        ``fedavg``, ``vertical_lr``...
    round : int
        The last *completed* round or epoch (0 = setup done, no round yet).
    state : dict
        JSON-ready protocol state.
    config_sha256 : str
        Digest of the protocol configuration it was made under.
    finished : bool
        The run's last step completed; nothing to resume.
    """

    protocol: str
    round: int
    state: dict[str, Any]
    config_sha256: str
    finished: bool = False
    saved_at: str = ""
    blob_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder: Path | None = None

    def blob(self, name: str) -> bytes:
        """A payload of this checkpoint, checked against its SHA-256."""
        ref = self.blob_refs.get(name)
        if ref is None or self.folder is None:
            raise ProtocolError(f"checkpoint of {self.protocol} round {self.round} has no blob {name!r}")
        path = self.folder / "blobs" / f"{ref['sha256']}.bin"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ProtocolError(f"checkpoint blob {path} is missing") from None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ProtocolError(f"checkpoint blob {path} is corrupt (SHA-256 mismatch)")
        return data

    def has_blob(self, name: str) -> bool:
        return name in self.blob_refs


class CheckpointStore:
    """Atomic save and load of a run's coordinator checkpoint.

    Parameters
    ----------
    folder : Path
        ``<run-dir>/coordinator/checkpoints/<run-id>``.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def save(
        self,
        protocol: str,
        round_: int,
        state: Mapping[str, Any],
        blobs: Mapping[str, bytes] | None = None,
        *,
        config_sha256: str,
        finished: bool = False,
    ) -> Checkpoint:
        """Write a checkpoint (blobs first, then the JSON that names them); returns it."""
        blob_dir = self.folder / "blobs"
        refs: dict[str, dict[str, Any]] = {}
        written = False
        for name, data in (blobs or {}).items():
            digest = hashlib.sha256(data).hexdigest()
            target = blob_dir / f"{digest}.bin"
            if not target.exists():
                write_secret_file(target, bytes(data), sync_directory=False)
                written = True
            refs[name] = {"sha256": digest, "size": len(data)}
        if written:  # every new blob's entry on disk before the JSON that names them
            sync_directory(blob_dir)
        saved_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
        document = {
            "format": FORMAT,
            "protocol": protocol,
            "round": int(round_),
            "config_sha256": config_sha256,
            "finished": bool(finished),
            "saved_at": saved_at,
            "state": dict(state),
            "blobs": refs,
        }
        try:
            text = json.dumps(document, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"checkpoint state of {protocol} is not plain JSON: {err}") from None
        write_secret_file(self.path, text.encode())
        self._collect_garbage({ref["sha256"] for ref in refs.values()})
        return Checkpoint(protocol, int(round_), dict(state), config_sha256, finished, saved_at, refs, self.folder)

    def _collect_garbage(self, keep: set[str]) -> None:
        blob_dir = self.folder / "blobs"
        if not blob_dir.is_dir():
            return
        for path in blob_dir.glob("*.bin"):
            if path.stem not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def load(self) -> Checkpoint | None:
        """The saved checkpoint, or ``None`` when there is none."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise ProtocolError(f"checkpoint {self.path} is not valid JSON") from None
        if document.get("format") != FORMAT:
            raise ProtocolError(f"checkpoint {self.path} has format {document.get('format')!r}, expected {FORMAT!r}")
        return Checkpoint(
            protocol=str(document["protocol"]),
            round=int(document["round"]),
            state=dict(document["state"]),
            config_sha256=str(document["config_sha256"]),
            finished=bool(document.get("finished", False)),
            saved_at=str(document.get("saved_at", "")),
            blob_refs=dict(document.get("blobs", {})),
            folder=self.folder,
        )

    def resumable(self, protocol: str, config_sha256: str) -> Checkpoint | None:
        """The checkpoint to resume ``protocol`` from, or ``None`` to start afresh.

        Raises
        ------
        ConfigError
            The run has an unfinished checkpoint of another protocol or made
            under another configuration: resuming it would mix two runs.
        """
        checkpoint = self.load()
        if checkpoint is None or checkpoint.finished:
            return None
        if checkpoint.protocol != protocol:
            raise ConfigError(
                f"run folder has an unfinished {checkpoint.protocol} checkpoint ({self.path}), not {protocol}: "
                "use a new run id, or delete the checkpoint folder to start afresh"
            )
        if checkpoint.config_sha256 != config_sha256:
            raise ConfigError(
                f"the checkpoint at {self.path} was made under a different {protocol} configuration: resume with the same run config, or use a new run id"
            )
        return checkpoint

    def clear(self) -> None:
        """Remove the checkpoint (blobs and JSON)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._collect_garbage(set())
