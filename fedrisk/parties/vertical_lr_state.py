"""A vertical-LR party's protocol state on disk, so that a restarted party process resumes its run.

A vertical party's state cannot be rebuilt from the coordinator's messages:
the label holder generated the run's CKKS secret key, and every party holds its
own block of weights, momentum and (feature holders) the mask it added to its
last gradient. :class:`DurableVerticalState` keeps, per run, in the party's
private state folder (``recovery/<run-id>/``, files 0600)::

    <party-class>-static/    written once, at setup/join: the CKKS context (the label
                             holder's with its secret key), the training plan, the
                             aligned rows, the setup parameters
    <party-class>-state/     rewritten after every message, before the answer leaves:
                             the mutable fields of the model and the answer itself,
                             keyed by the SHA-256 of the request it answered

Both are :class:`~fedrisk.checkpoint.CheckpointStore` folders
(atomic JSON plus byte blobs, no pickle: arrays are ``.npy`` bytes read back
with ``allow_pickle=False``). Restoring rebuilds the model exactly as the
setup did — same aligned rows, same plan, same context — then puts the saved
fields back; the answer is put in the runtime's reply cache, so a request
repeated after the crash is answered from it and never applied twice.

The fields are named here, one list per model class
(:class:`~fedrisk.models.vertical_lr.LabelHolderLR`,
:class:`~fedrisk.models.vertical_lr.FeatureHolderLR`); a field missing from
the list would come back at its post-setup value, which the recovery tests
would catch as a model that differs from an uninterrupted run's.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.errors import ProtocolError
from fedrisk.checkpoint import Checkpoint, CheckpointStore

#: Mutable fields of each model after setup: dotted paths ("_opt.w" is the optimiser's weights).
LABEL_HOLDER_FIELDS = (
    "_opt.w",
    "_opt.w_prev",
    "_opt.t",
    "_best_w",
    "best_epoch_",
    "_best_auc",
    "_best_val_loss",
    "_prev_loss",
    "_small_changes",
    "epoch_",
    "converged_",
    "_open_epoch",
    "n_epochs_",
    "eval_auc_",
    "eval_ks_",
    "_decrypted",
    "history_",
    "_holder_counts",
    "_holder_products",
    "coef_",
    "intercept_",
)
FEATURE_HOLDER_FIELDS = (
    "_opt.w",
    "_opt.w_prev",
    "_opt.t",
    "_best_w",
    "coef_",
    "epoch_",
    "_restart",
    "done_",
    "last_gradient_",
    "_mask",
)
ALIGNED_ARRAYS = ("X", "y", "train_mask", "eval_mask", "order")


def array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def to_json(value: Any, extend: Callable[[Any, Callable[[Any], Any]], Any] | None = None) -> Any:
    """Plain JSON for a field value: numpy scalars, non-finite floats, tuples and sets tagged.

    ``extend(value, encode)`` is asked for any other type (``encode`` encodes a
    nested value the same way); without it, or when it raises, the value cannot be kept.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, dict):
        return {"dict": [[to_json(k, extend), to_json(v, extend)] for k, v in value.items()]}
    if isinstance(value, (list, tuple, set)):
        kind = "list" if isinstance(value, list) else "tuple" if isinstance(value, tuple) else "set"
        items = sorted(value, key=repr) if kind == "set" else value
        return {kind: [to_json(v, extend) for v in items]}
    if extend is not None:
        return extend(value, lambda nested: to_json(nested, extend))
    raise ProtocolError(f"cannot keep a {type(value).__name__} in a party's recovery state")


def from_json(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "float" in value:
        return float(value["float"])
    if "dict" in value:
        return {from_json(k): from_json(v) for k, v in value["dict"]}
    if "tuple" in value:
        return tuple(from_json(v) for v in value["tuple"])
    if "set" in value:
        return {from_json(v) for v in value["set"]}
    return [from_json(v) for v in value["list"]]


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _set(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


_MISSING = object()


def capture(model: Any, fields: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The listed fields of ``model``: JSON values and ``.npy`` blobs (``MaskState`` by its parts)."""
    values: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    for path in fields:
        value = _get(model, path)
        if value is _MISSING:
            continue
        if isinstance(value, np.ndarray):
            blobs[f"field:{path}"] = array_bytes(value)
        elif path == "_mask":
            values[path] = None if value is None else {"epoch": int(value.epoch)}
            if value is not None:
                blobs["field:_mask.offsets"] = array_bytes(value.offsets)
        else:
            values[path] = to_json(value)
    return values, blobs


def apply(model: Any, fields: tuple[str, ...], values: dict[str, Any], checkpoint: Checkpoint) -> None:
    """Put captured fields back on a freshly set-up model."""
    for path in fields:
        if f"field:{path}" in checkpoint.blob_refs:
            _set(model, path, array_from(checkpoint.blob(f"field:{path}")).copy())
        elif path == "_mask" and path in values:
            if values[path] is None:
                _set(model, path, None)
            else:
                from fedrisk.crypto.encrypted_matvec import MaskState

                _set(model, path, MaskState(epoch=int(values[path]["epoch"]), offsets=array_from(checkpoint.blob("field:_mask.offsets")).copy()))
        elif path in values:
            _set(model, path, from_json(values[path]))


class DurableVerticalState:
    """Static and per-message state of one vertical party, for one run."""

    def __init__(self, state_dir: Path, run_id: str, owner: str) -> None:
        import re

        folder = Path(state_dir) / "recovery" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
        self.static = CheckpointStore(folder / f"{owner}-static")
        self.state = CheckpointStore(folder / f"{owner}-state")

    def save_static(self, values: dict[str, Any], blobs: dict[str, bytes]) -> None:
        self.static.save("vertical-party-static", 0, {k: to_json(v) for k, v in values.items()}, blobs, config_sha256="-")
        self.state.clear()

    def save_state(self, epoch: int, values: dict[str, Any], blobs: dict[str, bytes], request_key: str, reply: bytes) -> None:
        self.state.save("vertical-party-state", epoch, {"fields": values, "request": request_key}, {**blobs, "reply": reply}, config_sha256="-")

    def load(self) -> tuple[Checkpoint, Checkpoint | None] | None:
        static = self.static.load()
        if static is None:
            return None
        return static, self.state.load()


def aligned_blobs(aligned: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An :class:`~fedrisk.parties.alignment.AlignedRows` as JSON values and ``.npy`` blobs."""
    blobs = {f"aligned:{name}": array_bytes(getattr(aligned, name)) for name in ALIGNED_ARRAYS if getattr(aligned, name) is not None}
    blobs.update({f"coverage:{party}": array_bytes(cov) for party, cov in aligned.coverage.items()})
    values = {"feature_names": list(aligned.feature_names), "intersection": dict(aligned.intersection), "coverage": sorted(aligned.coverage)}
    return values, blobs


def aligned_from(static: Checkpoint) -> Any:
    from fedrisk.parties.alignment import AlignedRows

    values = {k: from_json(v) for k, v in static.state.items()}
    arrays = {name: array_from(static.blob(f"aligned:{name}")) if static.has_blob(f"aligned:{name}") else None for name in ALIGNED_ARRAYS}
    X = arrays["X"]
    if X is None:
        raise ProtocolError("the party's recovery state lacks its aligned feature matrix (aligned:X)")
    return AlignedRows(
        X=X,
        feature_names=list(values["feature_names"]),
        coverage={party: array_from(static.blob(f"coverage:{party}")) for party in values["coverage"]},
        y=arrays["y"],
        train_mask=arrays["train_mask"],
        eval_mask=arrays["eval_mask"],
        intersection={str(k): int(v) for k, v in dict(values["intersection"]).items()},
        order=arrays["order"],
    )
