"""Entity alignment by ECDH private set intersection (PSI) on Curve25519 / X25519.

One **label holder** (the bank, IDs ``X``) aligns its rows with any number of
**feature holders** (tax bureau, platform, ..., IDs ``Y_k``). The parties here are pure
message-passing objects: each step takes and returns a message from
:mod:`fedrisk.crypto.psi_messages` (``to_bytes``/``from_bytes`` for the wire), and the
coordinator only relays those bytes. IDs are compared as exact UTF-8 bytes: normalise
them (case, whitespace) before handing them over.

Protocol
--------
``H`` is RFC 9380 ``hash_to_curve`` onto Curve25519 (suite
``curve25519_XMD:SHA-512_ELL2_RO_``, tag :data:`~fedrisk.crypto.psi_group.DST`), so every
``H(id)`` is a point *of the curve*, never of its twist; ``k * P`` is ``X25519(k, P)``,
whose clamped scalar ``k = 8 k'`` also clears the cofactor
(:mod:`fedrisk.crypto.psi_group` gives the construction and its security argument).
Every feature holder draws a fresh X25519 key per run, ``b_k``; the label holder's key
``a`` is fresh per run too, or, in production, the key of its current **key epoch**
(:class:`~fedrisk.crypto.psi_cache.LabelHolderKeyCache`: rotated by age and use, with a
rate limit), whose blinded set ``a * H(x)`` it reuses across runs while ``X`` is
unchanged; ``pk = k * G`` is a party's public key. ``pi`` denotes a party's secret
random permutation (from ``os.urandom``)::

    round 1, in parallel
      L   --C-->  every F_k   BlindedSet(pk_L, pi_L[a * H(x) for x in X])       (blind)
      F_k --C-->  L           BlindedSet(pk_k, pi_k[b_k * H(y) for y in Y_k])   (blind)
    round 2, in parallel
      F_k --C-->  L           DoubleBlindedSet(b_k * p for p in L's set, same order)
      L   (keeps)             a * q for q in F_k's set, same order  (nothing sent)
    round 3
      L   --C-->  F_k         PSIResult: AEAD_{K_k}(bitmap over F_k's order: matched?)
      with K_k = HKDF(a * pk_k) = HKDF(b_k * pk_L)

``L`` finds ``a*b_k*H(x) == b_k*a*H(y)`` (commutativity); it knows which of its rows
sit behind each position of its own shuffled set, so it learns which of its rows F_k
covers. It knows nothing about F_k's positions except which matched, and sends exactly
that back, sealed for F_k, who undoes its own shuffle. Both sides then order the
intersection by ID bytes (a public function of what both already know), so row ``i``
of :attr:`LabelHolderResult.rows` and row ``i`` of :attr:`FeatureHolderResult.rows` are
the same entity: that is the join key for vertical training. ``L`` blinds ``X`` once
and sends the same set to every feature holder.

Steps (classes below)::

    lh = LabelHolderPSI(bank_ids, run_id=rid, party="bank",
                        cache=LabelHolderKeyCache(state_dir))   # optional key epoch
    fh = FeatureHolderPSI(tax_ids, run_id=rid, party="tax")
    a_set = lh.blind()                 # -> every feature holder
    b_set = fh.blind()                 # -> label holder
    lh.double_blind(b_set)             # label holder, per feature holder
    ab    = fh.double_blind(a_set)     # -> label holder
    res   = lh.intersect(ab)           # -> that feature holder;  lh.result("tax")
    mine  = fh.finish(res)             # FeatureHolderResult

What each party learns (honest-but-curious, coordinator not colluding)
-----------------------------------------------------------------------
* **Label holder**: for every ``k``, which of its rows are in ``Y_k``, and ``|Y_k|``.
  From F_k's blinded set it learns nothing else: each value is ``b_k' * P`` for a
  uniformly distributed curve point ``P`` (random oracle) under F_k's fresh secret, so
  linking one to a guessed ID is a DDH problem, and every value has the same
  quadratic character (on the curve), so there is no per-ID bit to count.
* **Feature holder k**: which of *its own* rows are in ``X``, and ``|X|``. Not the
  label holder's other IDs (it never holds ``a``), nor anything of another feature
  holder (keys ``b_j`` are independent, and it only ever sees the label holder's set).
* **Coordinator**: ``|X|``, ``|Y_k|`` and the message sizes, which depend on those
  alone (the result is a fixed-length bitmap, encrypted and authenticated; the row
  positions that follow in :mod:`fedrisk.parties.alignment` are padded to
  ``min(|X|, |Y_k|)``). It holds no scalar, so it cannot compute ``a*b*H(z)`` for any
  ``z``; telling whether a relayed value belongs to a guessed ID, or whether two relayed
  values come from the same ID, is a Decisional Diffie-Hellman problem. It does not
  learn the intersection nor its size (except that a run with an empty intersection
  stops with an error: there is nothing to train on).

With a key epoch (label holder cache), across the runs of one epoch: the label holder's
blinded set is the same values in a fresh order, so the feature holders and the
coordinator can link it between runs and count the IDs added and removed (not which
ones, beyond a feature holder's own IDs entering or leaving the intersection); nothing
links one epoch to the next. The feature holders' side is unchanged (fresh keys).
:mod:`fedrisk.crypto.psi_cache` gives the argument, the rotation and the rate limit.

Out of scope: a malicious party can lie about its set (e.g. a tiny set to probe single
IDs) or return wrong double-blinded values; a deployment that needs more sets a
minimum set size in policy and checks the overlap against expectations.

Costs
-----
X25519 operations: ``|X| + sum_k |Y_k|`` for the label holder (``sum_k |Y_k|`` when its
blinded set comes from its key-epoch cache), ``|Y_k| + |X|`` for feature holder ``k``;
about 31 us each per core here on OpenSSL, about 7 us on the optional multi-buffer
backend (:mod:`fedrisk.crypto.psi_x25519`), plus one hash to the curve per own ID
(about 31 us with ``gmpy2``; nothing when the pool's cache already holds the ID set's
hashed points or the label holder's cache its blinded set), spread over a
:class:`~fedrisk.crypto.psi_pool.BlindingPool`. Bytes: ``32 |X|`` to each feature
holder, ``32 (|Y_k| + |X|)`` back, ``|Y_k| / 8 + 16`` for the result. Matching is exact
on all 32 bytes (an 8-byte prefix index, then a full comparison): no false positives.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrisk.crypto.psi_cache import KeyEpoch, KeyEpochPolicy, LabelHolderKeyCache, PSICacheError, PSIRateLimitError
from fedrisk.crypto.psi_group import DST
from fedrisk.crypto.psi_messages import (
    BlindedSet,
    DoubleBlindedSet,
    PSIMessage,
    PSIResult,
    decode_psi_message,
)
from fedrisk.crypto.psi_pool import BlindingPool, shared_pool
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

__all__ = [
    "BlindedSet",
    "BlindingPool",
    "DoubleBlindedSet",
    "FeatureHolderPSI",
    "FeatureHolderResult",
    "KeyEpochPolicy",
    "LabelHolderKeyCache",
    "LabelHolderPSI",
    "LabelHolderResult",
    "PSICacheError",
    "PSIMessage",
    "PSIRateLimitError",
    "PSIResult",
    "decode_psi_message",
    "encode_ids",
    "match_points",
]

_RESULT_KEY_INFO = b"fedrisk/psi/v1/result-key"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class LabelHolderResult:
    """What the label holder learns about one feature holder.

    Attributes
    ----------
    party
        The feature holder.
    rows
        Indices into the label holder's ID list of the rows the feature holder covers,
        ordered by ID bytes (the same order as that feature holder's
        :attr:`FeatureHolderResult.rows`).
    mask
        ``(n_label_holder,)`` bool: row covered by this feature holder.
    n_label_holder, n_feature_holder
        Set sizes.
    """

    party: str
    rows: np.ndarray
    mask: np.ndarray
    n_label_holder: int
    n_feature_holder: int

    @property
    def size(self) -> int:
        """Number of IDs in the intersection."""
        return int(self.rows.size)

    @property
    def empty(self) -> bool:
        """True when the feature holder covers none of the label holder's rows."""
        return self.size == 0

    def require_overlap(self) -> None:
        """Raise :class:`ProtocolError` when the intersection is empty."""
        if self.empty:
            raise ProtocolError(f"feature holder {self.party!r} has zero overlap with the label holder ({self.n_feature_holder} vs {self.n_label_holder} IDs)")


@dataclass(frozen=True, eq=False)
class FeatureHolderResult:
    """What a feature holder learns: which of its own rows the label holder also has.

    Attributes
    ----------
    party
        This feature holder.
    label_holder
        The label holder's name.
    rows
        Indices into this feature holder's own ID list, ordered by ID bytes: row ``i``
        here is row ``i`` of the label holder's :attr:`LabelHolderResult.rows`.
    mask
        ``(n_feature_holder,)`` bool: own row in the intersection.
    n_label_holder, n_feature_holder
        Set sizes.
    """

    party: str
    label_holder: str
    rows: np.ndarray
    mask: np.ndarray
    n_label_holder: int
    n_feature_holder: int

    @property
    def size(self) -> int:
        """Number of IDs in the intersection."""
        return int(self.rows.size)

    @property
    def empty(self) -> bool:
        """True when none of this feature holder's rows is in the label holder's set."""
        return self.size == 0

    def require_overlap(self) -> None:
        """Raise :class:`ProtocolError` when the intersection is empty."""
        if self.empty:
            raise ProtocolError(
                f"feature holder {self.party!r} has zero overlap with the label holder {self.label_holder!r} "
                f"({self.n_feature_holder} vs {self.n_label_holder} IDs)"
            )


# --------------------------------------------------------------------------- helpers


def encode_ids(ids: Sequence[str | bytes] | np.ndarray, owner: str) -> list[bytes]:
    """Validate IDs and return their bytes (UTF-8 for text).

    Parameters
    ----------
    ids
        The party's IDs, one per row: ``str`` or ``bytes``, non-empty, distinct.
    owner
        How to name the party in errors, e.g. ``"label holder 'bank'"``.

    Returns
    -------
    list of bytes

    Raises
    ------
    DataValidationError
        On an empty list, an empty or non-text ID, or a duplicate (naming the rows).
    """
    # Items are validated below, so they are typed as unknown: a non-str fails the fast path.
    items: Sequence[Any] = ids.tolist() if isinstance(ids, np.ndarray) else ids
    if isinstance(items, (str, bytes)):
        raise DataValidationError(f"IDs of {owner} must be a sequence of strings, not one {type(items).__name__}")
    try:
        encoded = [s.encode("utf-8") for s in items]
    except (AttributeError, UnicodeEncodeError):
        encoded = [_encode_one(v, i, owner) for i, v in enumerate(items)]
    if not encoded:
        raise DataValidationError(f"{owner} has no IDs")
    if min(map(len, encoded)) == 0:
        raise DataValidationError(f"empty ID at row {encoded.index(b'')} of {owner}")
    if len(set(encoded)) != len(encoded):
        first: dict[bytes, int] = {}
        for row, value in enumerate(encoded):
            if value in first:
                raise DataValidationError(f"duplicate ID at row {row} of {owner} (same as row {first[value]})")
            first[value] = row
    if len(encoded) > 2**32 - 1:
        raise DataValidationError(f"{owner} has more than 2**32 - 1 IDs")
    return encoded


def _encode_one(value: object, row: int, owner: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataValidationError(f"ID at row {row} of {owner} is not valid Unicode") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise DataValidationError(f"ID at row {row} of {owner} is a {type(value).__name__}, expected str or bytes")


def _check_run_id(run_id: str) -> None:
    try:
        ok = isinstance(run_id, str) and 1 <= len(run_id.encode("utf-8")) <= 1024
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise CryptoError("PSI run id must be a string of 1..1024 UTF-8 bytes")


def _random_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation from the OS CSPRNG (ties of 64-bit keys: ~n^2/2^65)."""
    keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return np.argsort(keys, kind="stable")


def _sort_by_id(rows: np.ndarray, ids: list[bytes]) -> np.ndarray:
    ordered = sorted(rows.tolist(), key=ids.__getitem__)
    return np.asarray(ordered, dtype=np.int64)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _result_key(secret: X25519PrivateKey, peer_public: bytes, run_id: str, label: str, feature: str) -> bytes:
    try:
        shared = secret.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise ProtocolError(f"PSI peer public key of run {run_id!r} is invalid (low order)") from None
    info = _RESULT_KEY_INFO + _string(run_id) + _string(label) + _string(feature)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def match_points(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find equal rows of two ``(n, 32)`` uint8 arrays.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(i, j)`` int64 arrays with ``left[i[t]] == right[j[t]]`` for every ``t``, ``i``
        increasing. Exact on all 32 bytes; rows are assumed distinct within each side.
    """
    if left.shape[0] == 0 or right.shape[0] == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    left = np.ascontiguousarray(left, dtype=np.uint8)
    right = np.ascontiguousarray(right, dtype=np.uint8)
    left_key = left.view("<u8")[:, 0]
    right_key = right.view("<u8")[:, 0]
    order = np.argsort(right_key, kind="stable")
    sorted_keys = right_key[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        # Two different values sharing a 64-bit prefix (~n^2 / 2^65): match on full bytes.
        index = {row.tobytes(): j for j, row in enumerate(right)}
        pairs = [(i, index[row.tobytes()]) for i, row in enumerate(left) if row.tobytes() in index]
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]
    pos = np.minimum(np.searchsorted(sorted_keys, left_key), sorted_keys.size - 1)
    hit = np.flatnonzero(sorted_keys[pos] == left_key)
    j = order[pos[hit]]
    full = np.all(left[hit] == right[j], axis=1)
    return hit[full].astype(np.int64), j[full].astype(np.int64)


_Message = TypeVar("_Message", BlindedSet, DoubleBlindedSet, PSIResult)


def _coerce(message: PSIMessage | bytes, cls: type[_Message], step: str) -> _Message:
    if isinstance(message, (bytes, bytearray, memoryview)):
        message = decode_psi_message(bytes(message))
    if not isinstance(message, cls):
        raise ProtocolError(f"{step} expects a PSI {cls.__name__}, got {type(message).__name__}")
    return message


class _Party:
    """State shared by both roles: IDs, the per-run key, the shuffle of the own set."""

    role: Literal["label", "feature"]

    def __init__(
        self,
        ids: Sequence[str | bytes] | np.ndarray,
        *,
        run_id: str,
        party: str,
        pool: BlindingPool | None,
    ) -> None:
        if not isinstance(party, str) or not party:
            raise DataValidationError("PSI party name must be a non-empty string")
        self.party = party
        self.run_id = run_id
        _check_run_id(run_id)
        self._domain = DST
        self._owner = f"{self.role} holder {party!r}"
        self._ids = encode_ids(ids, self._owner)
        self._pool = pool if pool is not None else shared_pool()
        self._key = X25519PrivateKey.generate()
        self._perm: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of own IDs."""
        return len(self._ids)

    @property
    def public_key(self) -> bytes:
        """This party's per-run X25519 public key (32 bytes)."""
        return self._key.public_key().public_bytes_raw()

    def _scalar(self) -> bytes:
        return self._key.private_bytes_raw()

    def _check_run(self, message: PSIMessage) -> None:
        if message.run_id != self.run_id:
            raise ProtocolError(f"PSI message of run {message.run_id!r} reached {self._owner} in run {self.run_id!r}")

    def blind(self) -> BlindedSet:
        """Round 1: hash and blind the own IDs, shuffle, and return them for the peer(s).

        Returns
        -------
        BlindedSet
            ``k * H(id)`` for every own ID in a fresh random order, plus the public key.
        """
        if self._perm is not None:
            raise ProtocolError(f"{self._owner} already sent its blinded set in run {self.run_id!r}")
        return self._shuffled(self._pool.hash_and_blind(self._scalar(), self._domain, self._ids))

    def _shuffled(self, blinded: np.ndarray) -> BlindedSet:
        perm = _random_permutation(self.n)
        self._perm = perm
        return BlindedSet(
            run_id=self.run_id,
            sender=self.party,
            role=self.role,
            public_key=self.public_key,
            points=blinded[perm].tobytes(),
        )

    #: Where this role's results on a peer's points go (the X25519 backend policy,
    #: :func:`fedrisk.crypto.psi_x25519.admits`): the label holder keeps them, a feature
    #: holder sends them back to the label holder.
    _peer_inputs = "returned"

    def _blind_peer(self, message: BlindedSet, peer: str) -> np.ndarray:
        try:
            return self._pool.blind(self._scalar(), message.points_array(), inputs=self._peer_inputs)
        except CryptoError as exc:
            raise ProtocolError(f"{peer} sent an invalid blinded set: {exc}") from None


class LabelHolderPSI(_Party):
    """The label holder's side of PSI: learns which of its rows each feature holder covers.

    Parameters
    ----------
    ids
        One ID per row of the label holder's table (``str`` or ``bytes``).
    run_id
        Identifier of this PSI run, shared by all parties and fresh for every run.
    party
        The label holder's name.
    pool
        Worker pool for hashing and blinding; defaults to the process-wide
        :func:`~fedrisk.crypto.psi_pool.shared_pool`.
    cache
        The label holder's :class:`~fedrisk.crypto.psi_cache.LabelHolderKeyCache`:
        take the scalar from the current key epoch and reuse the blinded set across
        runs (``|X|`` fewer X25519 per run), with rotation, invalidation and the rate
        limit on :meth:`double_blind`. ``None`` (default): a fresh scalar per run.

    Notes
    -----
    Steps: :meth:`blind` once (send the result to every feature holder); for each
    feature holder :meth:`double_blind` its :class:`BlindedSet` and then
    :meth:`intersect` its :class:`DoubleBlindedSet` (send the returned
    :class:`PSIResult` back to it). :meth:`result` gives what was learned.
    """

    role = "label"
    _peer_inputs = "kept"

    def __init__(
        self,
        ids: Sequence[str | bytes] | np.ndarray,
        *,
        run_id: str,
        party: str = "label_holder",
        pool: BlindingPool | None = None,
        cache: LabelHolderKeyCache | None = None,
    ) -> None:
        super().__init__(ids, run_id=run_id, party=party, pool=pool)
        self._peers: dict[str, tuple[np.ndarray, bytes]] = {}
        self._results: dict[str, LabelHolderResult] = {}
        self._cache = cache
        self._epoch: KeyEpoch | None = None
        #: With a cache: True when this run's blinded set came from it (no X25519 for the own set).
        self.reused_blinded_set = False

    @property
    def public_key(self) -> bytes:
        """The X25519 public key of this run (with a cache: of the key epoch, known after :meth:`blind`)."""
        if self._cache is not None and self._epoch is None:
            raise ProtocolError(f"{self._owner} takes its key from its key epoch: call blind first")
        return self._key.public_key().public_bytes_raw()

    @property
    def epoch(self) -> KeyEpoch | None:
        """The key epoch this run uses (None without a cache, or before :meth:`blind`)."""
        return self._epoch

    def blind(self) -> BlindedSet:
        """Round 1: the own set blinded and shuffled (see :class:`_Party`).

        With a :class:`~fedrisk.crypto.psi_cache.LabelHolderKeyCache`, the key is the
        current epoch's (rotated first if due) and the blinded set comes from the cache
        when this exact ID set was blinded under it before; the order is fresh each run.
        """
        if self._cache is None:
            return super().blind()
        if self._perm is not None:
            raise ProtocolError(f"{self._owner} already sent its blinded set in run {self.run_id!r}")
        epoch, blinded, reused = self._cache.blinded_set(self._ids, self._domain, lambda scalar: self._pool.hash_and_blind(scalar, self._domain, self._ids))
        self._epoch = epoch
        self._key = epoch.private_key()
        self.reused_blinded_set = reused
        return self._shuffled(blinded)

    def double_blind(self, message: BlindedSet | bytes) -> None:
        """Round 2: blind a feature holder's set with the own scalar and keep it.

        Parameters
        ----------
        message
            That feature holder's :class:`BlindedSet` (object or wire bytes).
        """
        msg = _coerce(message, BlindedSet, "LabelHolderPSI.double_blind")
        self._check_run(msg)
        peer = f"feature holder {msg.sender!r}"
        if msg.role != "feature":
            raise ProtocolError(f"{self._owner} got a blinded set from {msg.role} holder {msg.sender!r}")
        if msg.sender == self.party:
            raise ProtocolError(f"{peer} has the label holder's own name")
        if msg.sender in self._peers or msg.sender in self._results:
            raise ProtocolError(f"{self._owner} already has a blinded set from {peer} in run {self.run_id!r}")
        if self._cache is not None:
            if self._epoch is None:
                raise ProtocolError(f"{self._owner} has not sent its blinded set yet; call blind first")
            # Rate limit: counted (durably) before a single partner element is exponentiated.
            self._epoch = self._cache.charge(self._epoch.epoch_id, msg.count, peer)
        key = _result_key(self._key, msg.public_key, self.run_id, self.party, msg.sender)
        self._peers[msg.sender] = (self._blind_peer(msg, peer), key)

    def intersect(self, message: DoubleBlindedSet | bytes) -> PSIResult:
        """Round 3: find the intersection with one feature holder; return its sealed answer.

        Parameters
        ----------
        message
            That feature holder's :class:`DoubleBlindedSet` (object or wire bytes).

        Returns
        -------
        PSIResult
            For the feature holder; the label holder's own result is :meth:`result`.
        """
        msg = _coerce(message, DoubleBlindedSet, "LabelHolderPSI.intersect")
        self._check_run(msg)
        peer = f"feature holder {msg.sender!r}"
        if msg.sender in self._results:
            raise ProtocolError(f"{self._owner} already intersected with {peer} in run {self.run_id!r}")
        if msg.sender not in self._peers:
            raise ProtocolError(f"{self._owner} has no blinded set from {peer} yet; call double_blind first")
        if self._perm is None:
            raise ProtocolError(f"{self._owner} has not sent its blinded set yet; call blind first")
        if msg.count != self.n:
            raise ProtocolError(f"{peer} double-blinded {msg.count} points, the label holder sent {self.n}")
        theirs, key = self._peers.pop(msg.sender)
        own_pos, their_pos = match_points(msg.points_array(), theirs)
        if np.unique(their_pos).size != their_pos.size:
            raise ProtocolError(f"{peer} returned repeated double-blinded values")
        rows = _sort_by_id(self._perm[own_pos], self._ids)
        mask = np.zeros(self.n, dtype=bool)
        mask[rows] = True
        self._results[msg.sender] = LabelHolderResult(party=msg.sender, rows=rows, mask=mask, n_label_holder=self.n, n_feature_holder=theirs.shape[0])
        bitmap = np.zeros(theirs.shape[0], dtype=bool)
        bitmap[their_pos] = True
        # The AAD covers every field but the ciphertext, so build the header first.
        unsealed = PSIResult(
            run_id=self.run_id,
            sender=self.party,
            recipient=msg.sender,
            n_bits=bitmap.size,
            nonce=os.urandom(12),
            ciphertext=bytes(PSIResult.ciphertext_size(bitmap.size)),
        )
        plain = np.packbits(bitmap, bitorder="little").tobytes()
        sealed = ChaCha20Poly1305(key).encrypt(unsealed.nonce, plain, unsealed.associated_data())
        return replace(unsealed, ciphertext=sealed)

    def result(self, party: str) -> LabelHolderResult:
        """The intersection with feature holder ``party`` (after :meth:`intersect`)."""
        try:
            return self._results[party]
        except KeyError:
            raise ProtocolError(f"{self._owner} has no PSI result for feature holder {party!r}") from None

    @property
    def results(self) -> dict[str, LabelHolderResult]:
        """All finished intersections, by feature holder."""
        return dict(self._results)

    def require_overlap(self) -> None:
        """Raise :class:`ProtocolError` naming the first feature holder with an empty intersection."""
        for result in self._results.values():
            result.require_overlap()


class FeatureHolderPSI(_Party):
    """A feature holder's side of PSI: learns which of its own rows the label holder has.

    Parameters
    ----------
    ids
        One ID per row of this party's table (``str`` or ``bytes``).
    run_id
        Identifier of this PSI run, shared by all parties.
    party
        This feature holder's name (distinct among the run's parties).
    pool
        Worker pool; defaults to the process-wide shared pool.

    Notes
    -----
    Steps: :meth:`blind` (send to the label holder), :meth:`double_blind` the label
    holder's :class:`BlindedSet` (send back), then :meth:`finish` with the
    :class:`PSIResult`. The first two are independent and may run in either order.
    """

    role = "feature"

    def __init__(
        self,
        ids: Sequence[str | bytes] | np.ndarray,
        *,
        run_id: str,
        party: str,
        pool: BlindingPool | None = None,
    ) -> None:
        super().__init__(ids, run_id=run_id, party=party, pool=pool)
        self._label: tuple[str, int, bytes] | None = None
        self._result: FeatureHolderResult | None = None

    def double_blind(self, message: BlindedSet | bytes) -> DoubleBlindedSet:
        """Round 2: blind the label holder's set with the own scalar, keeping its order.

        Parameters
        ----------
        message
            The label holder's :class:`BlindedSet` (object or wire bytes).

        Returns
        -------
        DoubleBlindedSet
            For the label holder.
        """
        msg = _coerce(message, BlindedSet, "FeatureHolderPSI.double_blind")
        self._check_run(msg)
        peer = f"label holder {msg.sender!r}"
        if msg.role != "label":
            raise ProtocolError(f"{self._owner} got a blinded set from {msg.role} holder {msg.sender!r}")
        if self._label is not None:
            raise ProtocolError(f"{self._owner} already answered the label holder in run {self.run_id!r}")
        key = _result_key(self._key, msg.public_key, self.run_id, msg.sender, self.party)
        points = self._blind_peer(msg, peer)
        self._label = (msg.sender, msg.count, key)
        return DoubleBlindedSet(run_id=self.run_id, sender=self.party, points=points.tobytes())

    def finish(self, message: PSIResult | bytes) -> FeatureHolderResult:
        """Round 3: open the label holder's answer and map it to the own rows.

        Returns
        -------
        FeatureHolderResult

        Raises
        ------
        CryptoError
            If the answer fails authentication (altered in transit, or not for this run).
        """
        msg = _coerce(message, PSIResult, "FeatureHolderPSI.finish")
        self._check_run(msg)
        if self._result is not None:
            raise ProtocolError(f"{self._owner} already has its PSI result in run {self.run_id!r}")
        if self._label is None or self._perm is None:
            raise ProtocolError(f"{self._owner} got a PSI result before blind and double_blind")
        label, n_label, key = self._label
        if msg.recipient != self.party or msg.sender != label:
            raise ProtocolError(f"PSI result from {msg.sender!r} to {msg.recipient!r} reached {self._owner} (expected from {label!r})")
        if msg.n_bits != self.n:
            raise ProtocolError(f"PSI result covers {msg.n_bits} rows, {self._owner} sent {self.n}")
        try:
            plain = ChaCha20Poly1305(key).decrypt(msg.nonce, msg.ciphertext, msg.associated_data())
        except InvalidTag:
            raise CryptoError(f"PSI result for {self._owner} failed authentication") from None
        bits = np.unpackbits(np.frombuffer(plain, dtype=np.uint8), count=self.n, bitorder="little").astype(bool)
        rows = _sort_by_id(self._perm[np.flatnonzero(bits)], self._ids)
        mask = np.zeros(self.n, dtype=bool)
        mask[rows] = True
        self._result = FeatureHolderResult(party=self.party, label_holder=label, rows=rows, mask=mask, n_label_holder=n_label, n_feature_holder=self.n)
        return self._result

    @property
    def result(self) -> FeatureHolderResult:
        """The result of :meth:`finish`."""
        if self._result is None:
            raise ProtocolError(f"{self._owner} has no PSI result yet")
        return self._result
