"""A SecureBoost party's protocol state on disk, so that a restarted party process resumes its run.

The design is :mod:`fedrisk.parties.vertical_lr_state`'s (and uses its
:class:`~fedrisk.parties.vertical_lr_state.DurableVerticalState` folders): per
run, in the party's private state folder (``recovery/<run-id>/``, files 0600)::

    <party-class>-static/    written once, at setup/join: the CKKS context (the label
                             holder's with its secret key), the boost plan, the aligned
                             rows and training-row mask, the parameters (and the feature
                             holder's announced bin layout, checked on rebuild)
    <party-class>-state/     rewritten after every message, before the answer leaves:
                             the mutable fields of the model and the answer itself,
                             keyed by the SHA-256 of the request it answered

Restoring rebuilds the model exactly as the setup did — same rows, same plan,
same context, hence the same bins and the same bin layout — then puts the
saved fields back. What SecureBoost adds over vertical LR is the tree being
grown: the label holder's nodes (row sets, its own plaintext histograms, the
unmasked per-bin sums of every feature holder, which splits are pending), the
masks of the histograms in flight, its raw scores, subsampling generator and the
trees so far; a feature holder's routing table and the row sets of its current
tree. Two things live in the static state because they are written once: each
feature holder's encrypted bins at the label holder (≈ 120 MB, saved again with
the static state when they arrive, not hashed after every message) and the
feature holder's own bins key (0600), under which a restarted holder decrypts again.

Field values are encoded by :class:`StateEncoder`: plain JSON for scalars,
strings, lists, tuples, sets and dicts (any key), ``.npy`` blobs for arrays
(read back with ``allow_pickle=False``), and, by name from a closed list, the
few dataclasses the models hold (:data:`DATACLASSES`), a
:class:`~fedrisk.crypto.encrypted_histogram.HistogramLayout` by its announced
``to_dict`` form and a PCG64 generator by its bit-generator state. Anything
else is refused with a :class:`~fedrisk.errors.ProtocolError`: a field the
encoder cannot keep is never silently dropped. No pickle anywhere.

The fields are named here, one list per model class
(:class:`~fedrisk.models.secureboost.LabelHolderSB`,
:class:`~fedrisk.models.secureboost.FeatureHolderSB`); a field missing from the
list would come back at its post-setup value, which the recovery tests catch
as a model that differs from an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedrisk.errors import ProtocolError
from fedrisk.checkpoint import Checkpoint
from fedrisk.parties.vertical_lr_state import array_bytes, array_from, to_json

#: Mutable fields of the label holder after setup (``model_`` exists once training is done).
LABEL_HOLDER_FIELDS = (
    "tree_",
    "done_",
    "history_",
    "active_",
    "_raw",
    "_rng",
    "_layouts",
    "_split_ids",
    "_builder",
    "_g",
    "_h",
    "_nodes",
    "_records",
    "_requested",
    "_packed",
    "_queued",
    "_masks",
    "model_",
)
#: Mutable fields of a feature holder after setup (its bins key is in the static state).
FEATURE_HOLDER_FIELDS = ("_tree", "done_", "routing_table_", "_node_rows", "_partitions")


def _dataclasses() -> dict[str, type]:
    from fedrisk.models import secureboost as sb
    from fedrisk.models.secureboost_tree import (
        BoostParams,
        Histogram,
        RoutingTable,
        SecureBoostModel,
        TreeBuilder,
    )

    return {
        "Node": sb.Node,  # the label holder's view of a node being grown
        "Histogram": Histogram,
        "TreeBuilder": TreeBuilder,
        "RoutingTable": RoutingTable,
        "SecureBoostModel": SecureBoostModel,
        "BoostParams": BoostParams,
    }


#: Dataclasses a party's SecureBoost state may hold, by the name written to disk (filled on first use).
DATACLASSES: dict[str, type] = {}


def _registry() -> dict[str, type]:
    if not DATACLASSES:
        DATACLASSES.update(_dataclasses())
    return DATACLASSES


class StateEncoder:
    """Encode field values as plain JSON, collecting arrays as ``.npy`` blobs.

    Parameters
    ----------
    prefix : str
        Prefix of the blob names (``<prefix><n>``).

    Attributes
    ----------
    blobs : dict of str → bytes
        The arrays met so far, by the name their JSON stand-in refers to.
    """

    def __init__(self, prefix: str = "array:") -> None:
        self.prefix = prefix
        self.blobs: dict[str, bytes] = {}

    def encode(self, value: Any) -> Any:
        """A JSON-ready stand-in for ``value`` (see the module docstring for what is kept)."""
        return to_json(value, self._encode_other)

    def _encode_other(self, value: Any, encode: Callable[[Any], Any]) -> Any:
        """Arrays (as named blobs), bin layouts, PCG64 generators and the model's own dataclasses."""
        from fedrisk.crypto.encrypted_histogram import HistogramLayout

        if isinstance(value, np.ndarray):
            name = f"{self.prefix}{len(self.blobs)}"
            try:
                self.blobs[name] = array_bytes(value)
            except ValueError:
                raise ProtocolError(f"cannot keep a {value.dtype} array in a party's recovery state") from None
            return {"ndarray": name}
        if isinstance(value, HistogramLayout):
            return {"layout": value.to_dict()}
        if isinstance(value, np.random.Generator):
            state = value.bit_generator.state
            if state.get("bit_generator") != "PCG64":
                raise ProtocolError(f"cannot keep a {state.get('bit_generator')} generator in a party's recovery state")
            return {"pcg64": encode(state)}
        name = type(value).__name__.lstrip("_")
        if dataclasses.is_dataclass(value) and _registry().get(name) is type(value):
            fields = dataclasses.fields(value)
            if any(not f.init for f in fields):
                raise ProtocolError(f"cannot keep a {name} in a party's recovery state (it has derived fields)")
            return {"dataclass": name, "fields": {f.name: encode(getattr(value, f.name)) for f in fields}}
        raise ProtocolError(f"cannot keep a {type(value).__name__} in a party's recovery state")


def decode(value: Any, checkpoint: Checkpoint) -> Any:
    """Inverse of :meth:`StateEncoder.encode`; arrays are read from ``checkpoint``'s blobs (SHA-256 checked)."""
    if isinstance(value, list):  # never written bare, but be strict about what comes back
        raise ProtocolError("party recovery state holds an untagged list")
    if not isinstance(value, dict):
        return value
    if "ndarray" in value:
        return array_from(checkpoint.blob(str(value["ndarray"]))).copy()
    if "float" in value:
        return float(value["float"])
    if "dict" in value:
        return {decode(k, checkpoint): decode(v, checkpoint) for k, v in value["dict"]}
    if "list" in value:
        return [decode(v, checkpoint) for v in value["list"]]
    if "tuple" in value:
        return tuple(decode(v, checkpoint) for v in value["tuple"])
    if "set" in value:
        return {decode(v, checkpoint) for v in value["set"]}
    if "layout" in value:
        from fedrisk.crypto.encrypted_histogram import HistogramLayout

        return HistogramLayout.from_dict(value["layout"])
    if "pcg64" in value:
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = decode(value["pcg64"], checkpoint)
        return generator
    if "dataclass" in value:
        cls = _registry().get(str(value["dataclass"]))
        if cls is None:
            raise ProtocolError(f"party recovery state names an unknown class {value['dataclass']!r}")
        return cls(**{k: decode(v, checkpoint) for k, v in dict(value["fields"]).items()})
    raise ProtocolError(f"party recovery state holds an unknown tag {sorted(value)!r}")


_MISSING = object()


def capture(model: Any, fields: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The listed fields of ``model`` that exist: JSON values and ``.npy`` blobs.

    Raises
    ------
    ProtocolError
        A field holds something the encoder cannot keep (the label holder's
        outbox must be empty: answers are built from it before the state is saved).
    """
    outbox = getattr(model, "_outbox", None)
    if outbox:
        raise ProtocolError("the label holder's outbox is not empty after its answer: its state cannot be kept")
    encoder = StateEncoder("field:")
    values = {}
    for name in fields:
        value = getattr(model, name, _MISSING)
        if value is not _MISSING:
            values[name] = encoder.encode(value)
    return values, encoder.blobs


def apply(model: Any, fields: tuple[str, ...], values: dict[str, Any], checkpoint: Checkpoint) -> None:
    """Put captured fields back on a freshly set-up model (fields not captured keep their setup value)."""
    for name in fields:
        if name in values:
            setattr(model, name, decode(values[name], checkpoint))
    if "tree_" in fields and getattr(model, "tree_", -1) >= 0 and not getattr(model, "done_", False):
        model._t0 = time.perf_counter()  # the tree's wall time restarts in the new process
