"""What the in-process estimators share: their input tables, the public key copies, the counted wire.

The vertical estimators (:class:`~fedrisk.models.vertical_lr.VerticalLogisticRegression`,
:class:`~fedrisk.models.secureboost.VerticalSecureBoost`, the stacking and WOE
ones) run every party in one process, but every payload still crosses a
party line as bytes through a coordinator (:class:`Wire`), and each party gets
its public context as it would over the network (:func:`public_copies`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import tenseal as ts

from fedrisk.errors import DataValidationError

__all__ = ["PublicCopies", "Relay", "Wire", "WirePayload", "WireRecord", "align_rows", "public_copies", "table_parts"]


class WirePayload(Protocol):
    """A protocol payload: its bytes and its declared content class."""

    @property
    def content_class(self) -> str: ...

    def to_bytes(self) -> bytes: ...


@dataclass
class WireRecord:
    """One serialised payload as it crossed a party boundary (for tests and the audit ledger)."""

    epoch: int
    sender: str
    receiver: str
    kind: str
    content_class: str
    n_bytes: int
    data: bytes | None = field(default=None, repr=False)


def table_parts(table: Any, label: str | None, who: str) -> tuple[pd.Index, np.ndarray, list[str], np.ndarray | None]:
    """``(ids, X, feature_names, labels)`` from a PartyTable, DataFrame, ndarray or (X, y)."""
    if hasattr(table, "feature_matrix") and hasattr(table, "ids"):  # fedrisk.data.table.PartyTable
        ids = pd.Index(np.asarray(table.ids))
        X = np.asarray(table.feature_matrix(), dtype=np.float64)
        names = list(table.feature_names)
        labels = None if getattr(table, "labels", None) is None else np.asarray(table.labels)
    elif isinstance(table, pd.DataFrame):
        df = table.set_index("id") if "id" in table.columns else table
        labels = None
        if label is not None and label in df.columns:
            labels = df[label].to_numpy()
            df = df.drop(columns=[label])
        try:
            X = df.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise DataValidationError(f"{who}: feature columns must be numeric") from None
        ids, names = df.index, [str(c) for c in df.columns]
    elif isinstance(table, tuple) and len(table) == 2:
        X = np.asarray(table[0], dtype=np.float64)
        labels = np.asarray(table[1])
        ids, names = pd.RangeIndex(X.shape[0]), [f"x{j}" for j in range(X.shape[1])]
    else:
        X = np.asarray(table, dtype=np.float64)
        labels = None
        ids, names = pd.RangeIndex(X.shape[0]), [f"x{j}" for j in range(X.shape[1])]
    if X.ndim != 2:
        raise DataValidationError(f"{who}: features must be a 2-D table")
    if not ids.is_unique:
        raise DataValidationError(f"{who}: IDs are not unique")
    return ids, X, names, labels


def align_rows(ids: pd.Index, table: Any, who: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A feature holder's rows in the bank's order and its coverage (what PSI hands it).

    Tables with IDs are joined on them; a bare array is taken as already aligned,
    an all-NaN row meaning "not covered".
    """
    if isinstance(table, np.ndarray):
        X = np.asarray(table, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != len(ids):
            raise DataValidationError(f"{who}: an array without IDs must have the bank's {len(ids)} rows")
        cov = ~np.all(np.isnan(X), axis=1)
        return np.where(cov[:, None], X, 0.0), cov, [f"x{j}" for j in range(X.shape[1])]
    fids, X, names, _ = table_parts(table, None, who)
    pos = fids.get_indexer(ids)
    cov = pos >= 0
    aligned = np.zeros((len(ids), X.shape[1]))
    aligned[cov] = X[pos[cov]]
    return aligned, cov, names


@dataclass(frozen=True)
class PublicCopies:
    feature_holder: ts.Context
    feature_holder_bytes: int
    coordinator: ts.Context
    coordinator_bytes: int


_COPIES: weakref.WeakKeyDictionary[ts.Context, PublicCopies] = weakref.WeakKeyDictionary()


def public_copies(secret: ts.Context) -> PublicCopies:
    """Public contexts as the parties would receive them (deserialised from bytes), cached per key.

    Feature holders get the public key and Galois keys; the coordinator only adds
    ciphertexts and gets the public key alone. Re-deserialising 35 MB of Galois
    keys per fit would dominate small simulations, hence the cache.
    """
    copies = _COPIES.get(secret)
    if copies is None:
        if hasattr(secret, "_fedrisk_seeded_galois"):  # a BFV histogram context: its chosen Galois keys, seeded
            from fedrisk.crypto.bfv import public_bfv_context_bytes

            fh = public_bfv_context_bytes(secret, galois=True)
        else:
            fh = secret.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)
        co = secret.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
        fh_context = ts.context_from(fh)
        if hasattr(secret, "_fedrisk_seeded_galois"):
            from fedrisk.crypto.bfv import keep_seeded_galois

            keep_seeded_galois(fh_context, fh)
        copies = PublicCopies(fh_context, len(fh), ts.context_from(co), len(co))
        _COPIES[secret] = copies
    return copies


class Relay(Protocol):
    """A coordinator that routes payload bytes (:class:`CoordinatorLR`, ``CoordinatorSB``)."""

    def relay(self, sender: str, receiver: str, data: bytes) -> bytes: ...


class Wire:
    """Serialises every payload, relays it through the coordinator and counts bytes."""

    def __init__(self, coordinator: Relay, transcript: list[WireRecord] | None, keep_bytes: bool) -> None:
        self.coordinator = coordinator
        self.transcript = transcript
        self.keep_bytes = keep_bytes
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.total = 0
        self.epoch = -1

    def send(self, sender: str, receiver: str, payload: WirePayload) -> bytes:
        data = self.coordinator.relay(sender, receiver, payload.to_bytes())
        self.sent[sender] = self.sent.get(sender, 0) + len(data)
        self.received[receiver] = self.received.get(receiver, 0) + len(data)
        self.total += len(data)
        if self.transcript is not None:
            self.transcript.append(
                WireRecord(self.epoch, sender, receiver, type(payload).__name__, payload.content_class, len(data), data if self.keep_bytes else None)
            )
        return data
