"""A party's side of entity alignment: ECDH-PSI, then the private row order for training.

The coordinator relays the PSI messages of :mod:`fedrisk.crypto.psi` between the
label holder and each feature holder (steps ``psi.*``). Afterwards the label
holder fixes the *training order* of its rows — a fresh secret random
permutation of its table, so that positions say nothing about its table — and
tells each feature holder, sealed to that party's X25519 identity key
(:mod:`fedrisk.crypto.envelope`, authenticated as the label holder), where each
of the feature holder's intersecting rows sits in that order. The coordinator
relays the sealed blob and cannot open it.

The sealed positions are padded (:func:`pack_positions`): ``u32 rows | u32 count``
and then exactly :func:`positions_capacity` ``= min(|X|, |Y_k|)`` little-endian
``u32`` slots, the first ``count`` the positions, the rest ``0xFFFFFFFF``. Its
length, ``8 + 4 min(|X|, |Y_k|)`` plus the envelope's fixed overhead, is a
function of the two set sizes the coordinator already sees in the PSI messages,
never of the intersection.

Content classes: blinded ID sets are ``masked`` (each value is ``k·H(id)`` under
a secret scalar; DDH hides the ID), the PSI answer and the sealed
positions are ``ciphertext``, acknowledgements are ``public``. The feature
holders' scalars are fresh every run; the label holder's comes from its key
epoch and its blinded set from its cache, ``<state-dir>/psi/label-holder-cache.sqlite``
(:mod:`fedrisk.crypto.psi_cache`: rotation by age, use and set change, a rate limit
on the partner elements it exponentiates, what a stable key reveals).

What each party ends with (:class:`AlignedRows`): the label holder its features,
labels, training mask and, per feature holder, a coverage mask, all in training
order; a feature holder its own features placed in that order, zeros elsewhere,
and its coverage mask. Nothing else about the other parties' rows.

The intersection sizes are the label holder's to know and to show: it writes
them, on its own host, to ``<state-dir>/alignment/<run-id>.json``
(:func:`read_alignment_report`); they never travel to the coordinator, so they
are in no coordinator config, log, checkpoint or ``result.json``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrisk.errors import DataValidationError, ProtocolError
from fedrisk.protocols import alignment as spec
from fedrisk.wire.config_values import config_int, config_strings
from fedrisk.wire.exchange import Exchange, build_content
from fedrisk.data.datasplit import evaluation_mask, training_mask

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.parties.protocol import Party

ALIGNMENT_PURPOSE = "vertical-row-positions"

#: Filler of the unused slots of the padded positions message.
POSITION_PAD = 0xFFFFFFFF
_POSITIONS_HEADER = struct.Struct("<II")


@dataclass
class AlignedRows:
    """A party's rows in the federation's private training order.

    Attributes
    ----------
    X : ndarray (n_rows, n_features)
        Own features; for a feature holder, rows it does not cover are 0.
    feature_names : list of str
    coverage : dict of str → bool ndarray
        Label holder: per feature holder, which rows it covers. Feature holder:
        its own coverage under its own name.
    y : ndarray or None
        Labels (label holder only).
    train_mask : ndarray or None
        True for training rows (label holder only; feature holders get it in the plan).
    eval_mask : ndarray or None
        Label holder: the held-out rows kept apart from early stopping, on which
        the joint model's metrics are reported (:func:`~fedrisk.data.datasplit.evaluation_mask`).
    intersection : dict of str → int
        Label holder: intersection size per feature holder.
    """

    X: np.ndarray
    feature_names: list[str]
    coverage: dict[str, np.ndarray]
    y: np.ndarray | None = None
    train_mask: np.ndarray | None = None
    eval_mask: np.ndarray | None = None
    intersection: dict[str, int] = field(default_factory=dict)
    order: np.ndarray | None = None
    """Label holder: table row of each training position."""


def allow_list_path(state_dir: Path, run_id: str) -> Path:
    """Where a feature holder keeps the IDs it aligned in run ``run_id`` (its scoring allow-list)."""
    return Path(state_dir) / "alignment" / f"{run_id}.ids"


def alignment_report_path(state_dir: Path, run_id: str) -> Path:
    """Where the label holder keeps what it learned in run ``run_id`` (intersection sizes)."""
    return Path(state_dir) / "alignment" / f"{run_id}.json"


def read_alignment_report(state_dir: Path, run_id: str) -> dict | None:
    """The label holder's alignment report of run ``run_id``, or ``None`` if it has none.

    Keys: ``run_id``, ``label_holder``, ``rows`` (its table), ``intersection`` (feature
    holder → number of shared IDs) and ``feature_holder_rows`` (feature holder → set size).
    """
    path = alignment_report_path(state_dir, run_id)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def positions_capacity(n_rows: int, n_feature_holder: int, count: int) -> int:
    """Slots of the padded positions message: ``min(|X|, |Y_k|)``, whatever ``count`` is.

    ``count`` (the intersection size) is deliberately unused: the message size must
    depend on the set sizes alone.
    """
    return min(int(n_rows), int(n_feature_holder))


def pack_positions(positions: np.ndarray, n_rows: int, capacity: int) -> bytes:
    """``u32 n_rows | u32 count | capacity x u32`` (positions, then :data:`POSITION_PAD`)."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size > capacity or n_rows >= POSITION_PAD:
        raise ProtocolError(f"{positions.size} row positions do not fit a message of {capacity}")
    slots = np.full(capacity, POSITION_PAD, dtype="<u4")
    slots[: positions.size] = positions
    return _POSITIONS_HEADER.pack(int(n_rows), int(positions.size)) + slots.tobytes()


def unpack_positions(raw: bytes, *, n_rows: int, capacity: int, count: int, party: str) -> np.ndarray:
    """Parse :func:`pack_positions` output, checking every field; the ``count`` positions as int64."""
    if len(raw) != _POSITIONS_HEADER.size + 4 * capacity:
        raise ProtocolError(f"{party}: the row positions message has {len(raw)} bytes, expected {_POSITIONS_HEADER.size + 4 * capacity}")
    rows, n = _POSITIONS_HEADER.unpack_from(raw)
    if rows != n_rows:
        raise ProtocolError(f"{party}: the label holder sealed positions for {rows} rows, the plan says {n_rows}")
    if n != count:
        raise ProtocolError(f"{party}: {n} positions for an intersection of {count}")
    slots = np.frombuffer(raw, dtype="<u4", offset=_POSITIONS_HEADER.size)
    if np.any(slots[count:] != POSITION_PAD):
        raise ProtocolError(f"{party}: the padding of the row positions message is not {POSITION_PAD:#x}")
    positions = slots[:count].astype(np.int64)
    if positions.size and (positions.max() >= n_rows or np.unique(positions).size != positions.size):
        raise ProtocolError(f"{party}: the label holder's row positions are out of range or repeated")
    return positions


def psi_key_id(public_key: bytes) -> str:
    """Fingerprint of a party's per-run PSI public key (what its blinded set was made under)."""
    from fedrisk.crypto.envelope import public_key_id

    return "psi:" + public_key_id(public_key)


def _secret_permutation(n: int) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return rng.permutation(n)


class _AlignmentParty:
    role = ""

    def __init__(self, runtime: "Party") -> None:
        self.runtime = runtime
        self.aligned: AlignedRows | None = None
        self.psi = None

    def _psi(self):
        if self.psi is None:
            raise ProtocolError(f"{self.role} {self.name!r} got a PSI step before blinding its own set")
        return self.psi

    def _blinded_reply(self, exchange: Exchange, psi) -> "RecordDict":
        self.psi = psi
        blinded = psi.blind()
        header = exchange.header.reply(spec.BLIND.reply_class, psi_key_id(blinded.public_key), step=spec.BLIND.reply)
        return build_content(header, {"blinded": blinded.to_bytes()})

    @property
    def name(self) -> str:
        return self.runtime.settings.name

    def _ids(self) -> list[str]:
        return [str(i) for i in self.runtime.table.ids]

    def require_aligned(self) -> AlignedRows:
        if self.aligned is None:
            raise ProtocolError(f"party {self.name!r} has no aligned rows: entity alignment (PSI) has not run")
        return self.aligned


class LabelHolderAlignment(_AlignmentParty):
    """The label holder's PSI steps and the sealed training order."""

    role = "label holder"

    def handlers(self) -> dict:
        return {
            spec.BLIND.message_type: self._on_blind,
            spec.DOUBLE_BLIND.message_type: self._on_double_blind,
            spec.INTERSECT.message_type: self._on_intersect,
            spec.ALIGN.message_type: self._on_align,
        }

    def _on_blind(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.psi import LabelHolderPSI

        if self.runtime.table.labels is None:
            raise DataValidationError(f"label holder {self.name!r}: its table has no label column")
        psi = LabelHolderPSI(self._ids(), run_id=exchange.header.run_id, party=self.name, cache=self.key_cache())
        return self._blinded_reply(exchange, psi)

    def key_cache(self):
        """The label holder's PSI key epoch and blinded-set cache, under its state folder.

        Policy from the party settings' optional ``psi`` mapping
        (:class:`~fedrisk.crypto.psi_cache.KeyEpochPolicy` fields), defaults otherwise.
        """
        from fedrisk.crypto.psi_cache import KeyEpochPolicy, LabelHolderKeyCache

        if getattr(self, "_key_cache", None) is None:
            policy = KeyEpochPolicy.from_mapping(getattr(self.runtime.settings, "psi", None))
            self._key_cache = LabelHolderKeyCache(self.runtime.state_dir, policy)
        return self._key_cache

    def _on_double_blind(self, exchange: Exchange) -> "RecordDict":
        psi = self._psi()
        for name in sorted(exchange.blobs):
            psi.double_blind(exchange.blobs[name])
        return build_content(exchange.header.reply("public", step=spec.DOUBLE_BLIND.reply), config={"peers": len(exchange.blobs)})

    def _on_intersect(self, exchange: Exchange) -> "RecordDict":
        psi = self._psi()
        answers = {}
        for name in sorted(exchange.blobs):
            party = name.removeprefix("double:")
            answers[f"result:{party}"] = psi.intersect(exchange.blobs[name]).to_bytes()
        for result in psi.results.values():
            result.require_overlap()  # zero overlap: nothing to train on with that party
        # Each answer is sealed under a key both ends derive from the PSI session's keys.
        return build_content(exchange.header.reply(spec.INTERSECT.reply_class, exchange.header.key_fingerprint, step=spec.INTERSECT.reply), answers)

    def _on_align(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.envelope import envelope_aad, seal

        psi = self._psi()
        table = self.runtime.table
        results = psi.results
        peers = dict(zip(config_strings(exchange, "peer_names"), config_strings(exchange, "peer_keys")))
        if sorted(peers) != sorted(results):
            raise ProtocolError(f"alignment asked for {sorted(peers)}, PSI ran with {sorted(results)}")
        order = _secret_permutation(len(table))
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        labels = np.asarray(table.labels)
        train_by_row = training_mask(labels, self.runtime.settings.validation)
        eval_by_row = evaluation_mask(labels, train_by_row, int(self.runtime.settings.validation.get("seed", 42)))
        self.aligned = AlignedRows(
            X=table.feature_matrix()[order],
            feature_names=list(table.feature_names),
            coverage={p: r.mask[order] for p, r in results.items()},
            y=labels[order].astype(np.float64),
            train_mask=train_by_row[order],
            eval_mask=eval_by_row[order],
            intersection={p: r.size for p, r in results.items()},
            order=order,
        )
        self._write_report(exchange.header.run_id, results, int(order.size))
        blobs = {}
        for party, result in sorted(results.items()):
            # Row i of the party's ID-ordered intersection sits at this training position,
            # padded to a length that depends on the set sizes only.
            capacity = positions_capacity(order.size, result.n_feature_holder, result.size)
            positions = pack_positions(position[result.rows], int(order.size), capacity)
            blobs[f"positions:{party}"] = seal(
                bytes.fromhex(str(peers[party])),
                positions,
                aad=envelope_aad(exchange.header.run_id, party, ALIGNMENT_PURPOSE),
                sender=self.runtime.identity.envelope,
            )
        from fedrisk.crypto.envelope import public_key_id

        # Sealed and authenticated under the label holder's identity key.
        header = exchange.header.reply("ciphertext", public_key_id(self.runtime.identity.envelope_public_key), step=spec.ALIGN.reply)
        return build_content(header, blobs, {"rows": int(order.size)})

    def _write_report(self, run_id: str, results: dict, rows: int) -> None:
        """What the label holder learned, on its own host only (see :func:`read_alignment_report`)."""
        from fedrisk.crypto.keyfiles import write_secret_file

        report = {
            "run_id": run_id,
            "label_holder": self.name,
            "rows": rows,
            "intersection": {p: int(r.size) for p, r in sorted(results.items())},
            "feature_holder_rows": {p: int(r.n_feature_holder) for p, r in sorted(results.items())},
        }
        write_secret_file(alignment_report_path(self.runtime.state_dir, run_id), json.dumps(report, indent=2, sort_keys=True).encode())


class FeatureHolderAlignment(_AlignmentParty):
    """A feature holder's PSI steps and its rows placed in the label holder's training order."""

    role = "feature holder"

    def handlers(self) -> dict:
        return {
            spec.BLIND.message_type: self._on_blind,
            spec.DOUBLE_BLIND.message_type: self._on_double_blind,
            spec.FINISH.message_type: self._on_finish,
            spec.ALIGN.message_type: self._on_align,
        }

    def _on_blind(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.psi import FeatureHolderPSI

        return self._blinded_reply(exchange, FeatureHolderPSI(self._ids(), run_id=exchange.header.run_id, party=self.name))

    def _on_double_blind(self, exchange: Exchange) -> "RecordDict":
        double = self._psi().double_blind(exchange.blob("blinded"))
        header = exchange.header.reply("masked", exchange.header.key_fingerprint, step=spec.DOUBLE_BLIND.reply)
        return build_content(header, {"double": double.to_bytes()})

    def _on_finish(self, exchange: Exchange) -> "RecordDict":
        self._psi().finish(exchange.blob("result")).require_overlap()
        return build_content(exchange.header.reply(spec.FINISH.reply_class, step=spec.FINISH.reply))

    def _on_align(self, exchange: Exchange) -> "RecordDict":
        from fedrisk.crypto.envelope import envelope_aad, open_sealed

        result = self._psi().result
        n_rows = config_int(exchange, "rows")
        raw = open_sealed(
            self.runtime.identity.envelope,
            exchange.blob("positions"),
            aad=envelope_aad(exchange.header.run_id, self.name, ALIGNMENT_PURPOSE),
            sender_public=bytes.fromhex(str(exchange.value("label_holder_public_key"))),
        )
        if n_rows != result.n_label_holder:
            raise ProtocolError(f"{self.name}: the plan has {n_rows} rows, the label holder's PSI set {result.n_label_holder}")
        positions = unpack_positions(
            raw,
            n_rows=n_rows,
            capacity=positions_capacity(n_rows, result.n_feature_holder, result.size),
            count=result.size,
            party=self.name,
        )
        own = self.runtime.table.feature_matrix()
        X = np.zeros((n_rows, own.shape[1]))
        X[positions] = own[result.rows]
        coverage = np.zeros(n_rows, dtype=bool)
        coverage[positions] = True
        self.aligned = AlignedRows(X=X, feature_names=list(self.runtime.table.feature_names), coverage={self.name: coverage})
        self._write_allow_list(exchange.header.run_id, result.rows)
        return build_content(exchange.header.reply("public", step=spec.ALIGN.other_reply))

    def _write_allow_list(self, run_id: str, rows: np.ndarray) -> None:
        """The own IDs in the intersection: the SMEs this party's scoring service may answer for."""
        from fedrisk.crypto.keyfiles import write_secret_file

        ids = self.runtime.table.ids[rows]
        write_secret_file(allow_list_path(self.runtime.state_dir, run_id), ("\n".join(map(str, ids)) + "\n").encode())


class AlignedRowsProtocol:
    """Base of a vertical protocol's party handlers: the aligned rows and the party's own bundles."""

    def __init__(self, runtime: "Party") -> None:
        self.runtime = runtime

    @property
    def name(self) -> str:
        return self.runtime.settings.name

    def _aligned(self) -> AlignedRows:
        alignment = self.runtime.protocol(LabelHolderAlignment) or self.runtime.protocol(FeatureHolderAlignment)
        if not isinstance(alignment, _AlignmentParty):  # None, or the registry holds something else under that name
            raise ProtocolError(f"party {self.name!r} runs no entity alignment")
        return alignment.require_aligned()

    def _write(self, run_id: str, arrays: dict, meta: dict):
        """Write (or atomically replace) this party's signed bundle of run ``run_id``."""
        from fedrisk.models.bundle import write_model_bundle

        return write_model_bundle(self.runtime.state_dir / "models" / run_id, arrays, meta, self.runtime.identity.signing)


def bank_only_metrics(aligned: AlignedRows, model: str, params: dict) -> dict[str, float]:
    """The bank's own model on its own features, trained and measured on the federation's rows.

    The baseline every vertical model must beat: same training rows, same
    reporting rows (the evaluation half of the held-out rows, or all of them).
    ``params``: SecureBoost's model parameters (``BoostParams.to_dict()``), or
    vertical LR's ``c``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from fedrisk.models.metrics import auc, ks

    train = aligned.train_mask
    assert train is not None and aligned.y is not None
    report = aligned.eval_mask if aligned.eval_mask is not None and aligned.eval_mask.any() else ~train
    if not report.any():
        return {}
    X, y = aligned.X, aligned.y
    if model == "secureboost":
        fitted = HistGradientBoostingClassifier(
            max_iter=params["n_trees"],
            max_depth=params["max_depth"],
            learning_rate=params["learning_rate"],
            max_bins=min(255, params["n_bins"]),
            l2_regularization=params["reg_lambda"],
            early_stopping=False,
        ).fit(X[train], y[train])
        p = fitted.predict_proba(X[report])[:, 1]
    else:
        mean = np.nanmean(X[train], axis=0)
        std = np.nanstd(X[train], axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        Z = np.nan_to_num((X - mean) / std)
        p = LogisticRegression(C=params["c"], max_iter=5000).fit(Z[train], y[train]).predict_proba(Z[report])[:, 1]
    return {"auc": float(auc(y[report], p)), "ks": float(ks(y[report], p))}
