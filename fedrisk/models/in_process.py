"""What the in-process estimators share: their input tables, the public key copies, the counted wire.

The vertical estimators (:class:`~fedrisk.models.vertical_lr.VerticalLogisticRegression`,
:class:`~fedrisk.models.secureboost.VerticalSecureBoost`, the stacking and WOE
ones) run every party in one process, but every payload still crosses a
party line as bytes through a coordinator (:class:`Wire`), and each party gets
its public context as it would over the network (:func:`public_copies`).
:class:`InProcessEstimator` is their one ``fit`` skeleton.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

import numpy as np
import pandas as pd
import tenseal as ts
from sklearn.base import BaseEstimator

from fedrisk.crypto.ckks import KeyHolderContext, PublicContext
from fedrisk.errors import ConfigError, DataValidationError

__all__ = [
    "InProcessEstimator",
    "InProcessRun",
    "PublicCopies",
    "Relay",
    "Wire",
    "WirePayload",
    "WireRecord",
    "align_rows",
    "public_copies",
    "table_parts",
]


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


P = TypeVar("P")


@dataclass(frozen=True)
class PublicCopies(Generic[P]):
    """The public contexts a key holder hands out, as the receivers load them, and their sizes on the wire."""

    feature_holder: P
    feature_holder_bytes: int
    coordinator: P
    coordinator_bytes: int


_COPIES: weakref.WeakKeyDictionary[Any, PublicCopies[Any]] = weakref.WeakKeyDictionary()


@overload
def public_copies(secret: KeyHolderContext) -> PublicCopies[PublicContext]: ...
@overload
def public_copies(secret: ts.Context) -> PublicCopies[ts.Context]: ...


def public_copies(secret: KeyHolderContext | ts.Context) -> PublicCopies[Any]:
    """Public contexts as the parties would receive them (deserialised from bytes), cached per key.

    Feature holders get the public key and the Galois keys if the key has any; the coordinator only adds
    ciphertexts and gets the public key alone. A CKKS key holder's copies are
    :class:`~fedrisk.crypto.ckks.PublicContext` recipes
    (:meth:`~fedrisk.crypto.ckks.KeyHolderContext.public_bytes`); SecureBoost's
    BFV context is a raw TenSEAL context whose chosen Galois keys travel seeded.
    Re-deserialising 35 MB of Galois keys per fit would dominate small
    simulations, hence the cache.
    """
    copies = _COPIES.get(secret)
    if copies is not None:
        return copies
    if isinstance(secret, KeyHolderContext):
        fh_bytes, co_bytes = secret.public_bytes(), secret.public_bytes(minimal=True)
        copies = PublicCopies(PublicContext.from_bytes(fh_bytes), len(fh_bytes), PublicContext.from_bytes(co_bytes), len(co_bytes))
    else:
        copies = _bfv_public_copies(secret)
    _COPIES[secret] = copies
    return copies


def _bfv_public_copies(secret: ts.Context) -> PublicCopies[ts.Context]:
    from fedrisk.crypto.bfv import has_galois_keys, load_public_bfv_context, public_bfv_context_bytes

    # a key that rotates (the gradient-encrypting kernels) shares its Galois keys; SecureBoost's run key has none
    fh = public_bfv_context_bytes(secret, galois=has_galois_keys(secret))
    co = public_bfv_context_bytes(secret, galois=False)
    return PublicCopies(load_public_bfv_context(fh, "feature holder"), len(fh), load_public_bfv_context(co, "coordinator"), len(co))


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


@dataclass
class InProcessRun:
    """One in-process fit as the template ran it, for the estimator's :meth:`InProcessEstimator._set_fitted`."""

    label_holder: Any
    feature_holders: dict[str, Any]
    wire: Wire
    copies: PublicCopies[Any]
    setup_bytes: int
    """Bytes on the wire after every feature holder joined (payloads only; the public contexts are in ``copies``)."""
    started: float
    """``time.perf_counter()`` when ``fit`` began."""
    result: Any
    """What :meth:`InProcessEstimator._run` returned."""


class InProcessEstimator(BaseEstimator):
    """The ``fit`` skeleton of the in-process vertical estimators (a template method, scikit-learn shaped).

    Parameters live in the subclass's ``__init__`` (at least ``label``,
    ``label_holder_name`` and ``monotone``); fitted attributes end in ``_``.
    :meth:`_fit` runs what every vertical protocol does in-process: split the
    bank's table, check the parties' names and the monotone declarations, take
    (or generate) the bank's secret context and hand out its public copies, put
    a :class:`Wire` through the coordinator, set up the bank, align each feature
    holder's rows, let each feature holder join (its public context counted on
    the wire), run the protocol and close every feature holder, also on error.
    The subclass supplies the hooks: the protocol objects, what joining and
    running mean, and its fitted attributes.
    """

    label: str
    label_holder_name: str
    monotone: Mapping[str, Any] | None
    #: What the monotone declarations are called in errors.
    _monotone_noun: ClassVar[str] = "signs"

    # ------------------------------------------------------------------ hooks
    def _new_context(self) -> Any:
        """A fresh secret context for the bank (when ``fit`` is given none)."""
        raise NotImplementedError

    def _new_coordinator(self, context: Any, feature_holders: list[str]) -> Relay:
        raise NotImplementedError

    def _new_label_holder(self, context: Any, monotone: Mapping[str, Any] | None) -> Any:
        raise NotImplementedError

    def _new_feature_holder(self, context: Any, name: str, monotone: Mapping[str, Any] | None) -> Any:
        raise NotImplementedError

    @staticmethod
    def _aligned(ids: pd.Index, table: Any, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """A feature holder's rows in the bank's order, coverage and feature names."""
        return align_rows(ids, table, name)

    def _setup_label_holder(
        self,
        bank: Any,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        aligned: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
        monotone: dict[str, Any],
        **options: Any,
    ) -> WirePayload:
        """Set the bank up; return the plan it sends to every feature holder."""
        raise NotImplementedError

    def _join(self, bank: Any, holder: Any, plan: bytes, aligned: tuple[np.ndarray, np.ndarray, list[str]], wire: Wire) -> Any:
        """One feature holder receives the plan's bytes and sets up; returns what :meth:`_joined` needs."""
        raise NotImplementedError

    def _joined(self, bank: Any, replies: list[Any]) -> None:
        """After every feature holder joined (default: nothing)."""

    def _run(self, bank: Any, holders: dict[str, Any], wire: Wire) -> Any:
        raise NotImplementedError

    def _set_fitted(self, run: InProcessRun) -> None:
        """The estimator's own fitted attributes (``label_holder_``, ``feature_holders_``, ``bytes_sent_`` and
        ``bytes_received_`` are set already)."""

    # ------------------------------------------------------------------ template
    def _fit(
        self,
        label_holder_table: Any,
        feature_holder_tables: Mapping[str, Any],
        *,
        context: Any,
        transcript: list[WireRecord] | None,
        keep_bytes: bool,
        **options: Any,
    ) -> Any:
        started = time.perf_counter()
        ids, Xb, names_b, y = table_parts(label_holder_table, self.label, "label holder")
        if y is None:
            raise DataValidationError(f"label holder table has no label column {self.label!r}")
        if not feature_holder_tables:
            raise ConfigError("vertical training needs at least one feature holder")
        bank_name = self.label_holder_name
        if bank_name in feature_holder_tables or "coordinator" in feature_holder_tables:
            raise ConfigError("feature holder names must differ from the bank's and 'coordinator'")
        monotone = dict(self.monotone or {})
        unknown = sorted(set(monotone) - set(feature_holder_tables) - {bank_name})
        if unknown:
            raise ConfigError(f"monotone {self._monotone_noun} name an unknown party {unknown[0]!r}")
        secret = context if context is not None else self._new_context()
        copies = public_copies(secret)
        names = list(feature_holder_tables)
        self.coordinator_ = self._new_coordinator(copies.coordinator, names)
        wire = Wire(self.coordinator_, transcript, keep_bytes)
        bank = self._new_label_holder(secret, monotone.get(bank_name))
        aligned = {nm: self._aligned(ids, tbl, nm) for nm, tbl in feature_holder_tables.items()}
        plan = self._setup_label_holder(bank, Xb, y, names_b, aligned, monotone, **options)
        pub_len, coord_len = copies.feature_holder_bytes, copies.coordinator_bytes
        wire.sent[bank_name] = coord_len + pub_len * len(names)  # public contexts out
        wire.received["coordinator"] = coord_len
        holders: dict[str, Any] = {}
        try:
            replies = []
            for nm in names:
                wire.received[nm] = pub_len
                holders[nm] = holder = self._new_feature_holder(copies.feature_holder, nm, monotone.get(nm))
                replies.append(self._join(bank, holder, wire.send(bank_name, nm, plan), aligned[nm], wire))
            self._joined(bank, replies)
            setup_bytes = wire.total
            self.setup_seconds_ = time.perf_counter() - started
            result = self._run(bank, holders, wire)
        finally:
            for holder in holders.values():
                holder.close()
        self.label_holder_, self.feature_holders_ = bank, holders
        self.bytes_sent_, self.bytes_received_ = dict(wire.sent), dict(wire.received)
        self._set_fitted(InProcessRun(bank, holders, wire, copies, setup_bytes, started, result))
        return self
