"""Wire payloads of vertical SecureBoost (see :mod:`fedrisk.models.secureboost` for the protocol).

Each payload is a frozen dataclass with a 4-byte ``KIND`` and a declared
``content_class`` (``ciphertext`` or ``public`` here; the audit ledger records it),
serialised by :func:`fedrisk.crypto.frames.pack_frame` — magic, version,
kind, the context fingerprint, a JSON header and binary blobs (SEAL
ciphertexts, packed row bitmaps). Nothing is pickled; every parser validates
sizes and types and raises a one-line :class:`~fedrisk.errors.ProtocolError`.

==========================  ====  ==========  =========================================
payload                     kind  class       direction
==========================  ====  ==========  =========================================
:class:`BoostPlan`          SPLN  public      label holder → feature holders (setup)
:class:`BinLayout`          SLAY  ciphertext  feature holder → label holder (setup: its bins under its key)
:class:`MaskedHistogramBatch` SMHB ciphertext label holder → one feature holder (per node, masked)
:class:`MaskedTotals`       SMTT  masked      feature holder → label holder
:class:`SplitDecisions`     SDEC  public      label holder → the split's owner only
:class:`SplitPartitions`    SPRT  public      owner → label holder
:class:`TrainingDone`       SDON  public      label holder → feature holders
:class:`SplitAnswers`       SANS  public      feature holder → label holder (scoring)
==========================  ====  ==========  =========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tenseal as ts

from fedrisk.crypto.encrypted_histogram import HistogramLayout
from fedrisk.crypto.frames import peek_frame
from fedrisk.errors import ProtocolError
from fedrisk.models.payload_fields import bool_field, int_field, str_field
from fedrisk.models.vertical_lr import VerticalPayload

__all__ = [
    "PAYLOAD_TYPES",
    "BinLayout",
    "BoostPlan",
    "MaskedHistogramBatch",
    "MaskedTotals",
    "SplitAnswers",
    "SplitDecisions",
    "SplitOrder",
    "SplitPartitions",
    "TrainingDone",
    "content_class_of",
    "parse_payload",
]


# =========================================================================== payload helpers


def _pack_rows(rows: np.ndarray) -> bytes:
    return np.packbits(np.asarray(rows, dtype=bool)).tobytes()


def _unpack_rows(blob: bytes, n: int, what: str) -> np.ndarray:
    if len(blob) != (n + 7) // 8:
        raise ProtocolError(f"{what} has {len(blob)} bytes for {n} rows")
    return np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n).astype(bool)


def _h_list(h: Mapping[str, Any], key: str) -> list[Any]:
    v = h.get(key)
    if not isinstance(v, list):
        raise ProtocolError(f"payload field {key!r} must be a list")
    return v


def _int_items(values: list[Any], key: str) -> list[int]:
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        raise ProtocolError(f"payload field {key!r} must hold non-negative integers")
    return list(values)


# =========================================================================== payloads


@dataclass(frozen=True)
class BoostPlan(VerticalPayload):
    """Bank → feature holders, once: who takes part and the shared hyper-parameters."""

    KIND: ClassVar[bytes] = b"SPLN"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    label_holder: str
    feature_holders: tuple[str, ...]
    n_rows: int
    n_bins: int
    n_trees: int
    max_depth: int

    def _header(self) -> dict[str, Any]:
        return {
            "label_holder": self.label_holder,
            "feature_holders": list(self.feature_holders),
            "n_rows": self.n_rows,
            "n_bins": self.n_bins,
            "n_trees": self.n_trees,
            "max_depth": self.max_depth,
        }

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> BoostPlan:
        holders = _h_list(h, "feature_holders")
        if not all(isinstance(x, str) and x for x in holders) or blobs:
            raise ProtocolError("boost plan is malformed")
        return cls(
            fp, str_field(h, "label_holder"), tuple(holders), int_field(h, "n_rows"), int_field(h, "n_bins"), int_field(h, "n_trees"), int_field(h, "max_depth")
        )


@dataclass(frozen=True)
class BinLayout(VerticalPayload):
    """Feature holder → bank, once: its bins per feature, and its one-hot bin matrix encrypted under its own key.

    ``layout`` is None when the party covers none of the rows (it then takes no part,
    and sends no key and no bins). Otherwise ``bins_context`` is the feature holder's
    public BFV context (no Galois keys) and ``encrypted_bins`` the
    :func:`fedrisk.crypto.encrypted_bins.encrypt_bin_matrix` ciphertexts.
    """

    KIND: ClassVar[bytes] = b"SLAY"
    content_class: ClassVar[str] = "ciphertext"

    fingerprint: str
    party: str
    n_features: int
    layout: HistogramLayout | None
    bins_context: bytes = field(default=b"", repr=False)
    encrypted_bins: tuple[bytes, ...] = field(default=(), repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "n_features": self.n_features, "layout": None if self.layout is None else self.layout.to_dict()}

    def _blobs(self) -> list[bytes]:
        return [] if self.layout is None else [self.bins_context, *self.encrypted_bins]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> BinLayout:
        raw = h.get("layout")
        if not (raw is None or isinstance(raw, dict)):
            raise ProtocolError("bin layout is malformed")
        layout = None if raw is None else HistogramLayout.from_dict(raw)
        n_features = int_field(h, "n_features")
        if layout is not None and layout.n_features != n_features:
            raise ProtocolError("bin layout: feature count disagrees with its bins")
        if (layout is None) != (not blobs) or (layout is not None and len(blobs) < 2):
            raise ProtocolError("bin layout: encrypted bins and their key come with a layout, and only then")
        if layout is None:
            return cls(fp, str_field(h, "party"), n_features, None)
        return cls(fp, str_field(h, "party"), n_features, layout, blobs[0], tuple(blobs[1:]))

    @property
    def nbytes(self) -> int:
        return len(self.bins_context) + sum(len(b) for b in self.encrypted_bins)


@dataclass(frozen=True)
class MaskedHistogramBatch(VerticalPayload):
    """Bank → a feature holder: per node, its histogram under the holder's key, totals masked and flooded, half ciphertexts (:func:`fedrisk.crypto.encrypted_bins.load_masked_histogram`)."""

    KIND: ClassVar[bytes] = b"SMHB"
    content_class: ClassVar[str] = "ciphertext"

    fingerprint: str
    party: str
    tree: int
    nodes: tuple[int, ...]
    per_node: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "tree": self.tree, "nodes": list(self.nodes), "per_node": self.per_node}

    def _blobs(self) -> list[bytes]:
        return list(self.ciphertexts)

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> MaskedHistogramBatch:
        nodes = tuple(_int_items(_h_list(h, "nodes"), "nodes"))
        per = int_field(h, "per_node")
        if len(blobs) != per * len(nodes) or len(set(nodes)) != len(nodes):
            raise ProtocolError(f"masked histograms carry {len(blobs)} ciphertexts for {len(nodes)} nodes of {per}")
        return cls(fp, str_field(h, "party"), int_field(h, "tree"), nodes, per, tuple(blobs))

    def node_ciphertexts(self, i: int) -> tuple[bytes, ...]:
        return self.ciphertexts[i * self.per_node : (i + 1) * self.per_node]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.ciphertexts)


@dataclass(frozen=True)
class MaskedTotals(VerticalPayload):
    """Feature holder → bank: per node, the decrypted total coefficients, still under the bank's uniform mask."""

    KIND: ClassVar[bytes] = b"SMTT"
    content_class: ClassVar[str] = "masked"

    fingerprint: str
    party: str
    tree: int
    nodes: tuple[int, ...]
    totals: tuple[np.ndarray, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "tree": self.tree, "nodes": list(self.nodes)}

    def _blobs(self) -> list[bytes]:
        return [np.asarray(t, dtype="<u8").tobytes() for t in self.totals]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> MaskedTotals:
        nodes = tuple(_int_items(_h_list(h, "nodes"), "nodes"))
        if len(blobs) != len(nodes) or any(len(b) % 8 for b in blobs):
            raise ProtocolError("masked totals are malformed")
        return cls(fp, str_field(h, "party"), int_field(h, "tree"), nodes, tuple(np.frombuffer(b, dtype="<u8").astype(np.uint64) for b in blobs))


@dataclass(frozen=True)
class SplitOrder:
    """ "Your feature, your bin": the bank's choice at ``node``, with the id to file it under."""

    node: int
    feature: int
    bin: int
    split_id: int
    default_left: bool
    rows: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SplitDecisions(VerticalPayload):
    """Bank → the owning feature holder only: splits on its own features in tree ``tree``."""

    KIND: ClassVar[bytes] = b"SDEC"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    party: str
    tree: int
    n_rows: int
    splits: tuple[SplitOrder, ...]

    def _header(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "tree": self.tree,
            "n_rows": self.n_rows,
            "splits": [{"node": s.node, "feature": s.feature, "bin": s.bin, "split_id": s.split_id, "default_left": s.default_left} for s in self.splits],
        }

    def _blobs(self) -> list[bytes]:
        return [_pack_rows(s.rows) for s in self.splits]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> SplitDecisions:
        n = int_field(h, "n_rows")
        entries = _h_list(h, "splits")
        if len(entries) != len(blobs):
            raise ProtocolError("split decisions and row sets differ in number")
        splits = []
        for e, blob in zip(entries, blobs, strict=True):
            if not isinstance(e, dict):
                raise ProtocolError("split decision entry is not an object")
            splits.append(
                SplitOrder(
                    int_field(e, "node"),
                    int_field(e, "feature"),
                    int_field(e, "bin"),
                    int_field(e, "split_id"),
                    bool_field(e, "default_left"),
                    _unpack_rows(blob, n, "split node row set"),
                )
            )
        return cls(fp, str_field(h, "party"), int_field(h, "tree"), n, tuple(splits))


@dataclass(frozen=True)
class SplitPartitions(VerticalPayload):
    """Owner → bank: for each decided node, which of its rows (in row order) go left."""

    KIND: ClassVar[bytes] = b"SPRT"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    party: str
    tree: int
    nodes: tuple[int, ...]
    go_left: tuple[np.ndarray, ...] = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "tree": self.tree, "nodes": list(self.nodes), "sizes": [int(g.size) for g in self.go_left]}

    def _blobs(self) -> list[bytes]:
        return [_pack_rows(g) for g in self.go_left]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> SplitPartitions:
        nodes = _int_items(_h_list(h, "nodes"), "nodes")
        sizes = _int_items(_h_list(h, "sizes"), "sizes")
        if not len(nodes) == len(sizes) == len(blobs):
            raise ProtocolError("split partitions are malformed")
        parts = tuple(_unpack_rows(b, s, "split partition") for b, s in zip(blobs, sizes, strict=True))
        return cls(fp, str_field(h, "party"), int_field(h, "tree"), tuple(nodes), parts)


@dataclass(frozen=True)
class TrainingDone(VerticalPayload):
    """Bank → feature holders: training is over after ``n_trees`` trees."""

    KIND: ClassVar[bytes] = b"SDON"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    n_trees: int

    def _header(self) -> dict[str, Any]:
        return {"n_trees": self.n_trees}

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> TrainingDone:
        if blobs:
            raise ProtocolError("training-done carries no data")
        return cls(fp, int_field(h, "n_trees"))


@dataclass(frozen=True)
class SplitAnswers(VerticalPayload):
    """Feature holder → bank when scoring: left (True) / right per row and own split id."""

    KIND: ClassVar[bytes] = b"SANS"
    content_class: ClassVar[str] = "public"

    fingerprint: str
    party: str
    split_ids: np.ndarray
    go_left: np.ndarray = field(repr=False)

    def _header(self) -> dict[str, Any]:
        return {"party": self.party, "n_rows": int(self.go_left.shape[0]), "split_ids": [int(s) for s in self.split_ids]}

    def _blobs(self) -> list[bytes]:
        return [_pack_rows(self.go_left.ravel())]

    @classmethod
    def _build(cls, fp: str, h: Mapping[str, Any], blobs: list[bytes]) -> SplitAnswers:
        ids = np.array(_int_items(_h_list(h, "split_ids"), "split_ids"), dtype=np.int64)
        n = int_field(h, "n_rows")
        if len(blobs) != 1:
            raise ProtocolError("split answers carry one bit matrix")
        bits = _unpack_rows(blobs[0], n * ids.size, "split answers")
        return cls(fp, str_field(h, "party"), ids, bits.reshape(n, ids.size))


PAYLOAD_TYPES: dict[bytes, type[VerticalPayload]] = {
    cls.KIND: cls for cls in (BoostPlan, BinLayout, MaskedHistogramBatch, MaskedTotals, SplitDecisions, SplitPartitions, TrainingDone, SplitAnswers)
}


def content_class_of(data: bytes) -> str:
    """Content class (``ciphertext``/``public``/…) of a serialised SecureBoost payload."""
    kind, _, _ = peek_frame(data)
    cls = PAYLOAD_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown SecureBoost payload kind {kind!r}")
    return cls.content_class


def parse_payload(data: bytes, *, context: ts.Context | None = None) -> VerticalPayload:
    """Parse any SecureBoost payload by its kind (refused under another context if given)."""
    kind, _, _ = peek_frame(data)
    cls = PAYLOAD_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown SecureBoost payload kind {kind!r}")
    return cls.from_bytes(data, context=context)
