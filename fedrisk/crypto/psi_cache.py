"""The label holder's key epoch and blinded-set cache for ECDH-PSI (3M instead of 4M X25519 per run).

Classic ECDH-PSI between a label holder (the bank, IDs ``X``) and a feature holder
(IDs ``Y``) costs ``2 |X| + 2 |Y|`` X25519 operations per run (:mod:`fedrisk.crypto.psi`).
The production pattern kept here lets the label holder reuse ``a * H(x)`` for every
``x`` in ``X`` across runs: its scalar ``a`` is stable for one **key epoch**, and the
blinded set is cached per (epoch, ID set). A run then costs ``|X| + 2 |Y|`` online
(the feature holder blinds ``Y`` and double-blinds the cached set, the label holder
double-blinds ``Y``): 3 million operations for 1M x 1M instead of 4 million.

Lifecycle (:class:`LabelHolderKeyCache`)
----------------------------------------
* **Epoch.** A fresh 32-byte X25519 scalar from ``os.urandom`` (via ``cryptography``),
  an epoch id, its creation time and its evaluation counters.
* **Rotation by age.** An epoch older than :attr:`KeyEpochPolicy.max_age_seconds` is
  replaced by a new one at the next run's blinding, and every blinded set of the old
  epoch is deleted with it.
* **Rotation by use.** An epoch whose evaluation budget
  (:attr:`KeyEpochPolicy.max_evaluations_per_epoch`) is spent is rotated too.
* **Invalidation by set change.** A blinded set is looked up by the SHA-256 of the
  hash's tag and the whole ordered ID list (lengths and bytes): one added, removed,
  changed or reordered ID gives another digest, and the set is blinded anew (under
  the same epoch key, or a new one with ``rotate_on_set_change``). A stale set is never
  served. At most :attr:`KeyEpochPolicy.max_sets` sets are kept per epoch.
* **Rate limit.** Every partner element the label holder exponentiates with ``a``
  (:meth:`LabelHolderKeyCache.charge`, called by ``LabelHolderPSI.double_blind``
  before any work) counts against the epoch's budget and against a fixed time window
  (:attr:`KeyEpochPolicy.max_evaluations_per_window` per
  :attr:`KeyEpochPolicy.window_seconds`). A set that would exceed either is refused
  with :class:`PSIRateLimitError` (one line, naming the party, the counts and the
  limit), and nothing is exponentiated. The counter is committed before the work, so
  a crash never gives the budget back.

Storage: one SQLite file, ``<state-dir>/psi/label-holder-cache.sqlite``, mode 0600 in a
0700 folder, created with that mode before SQLite opens it (SQLite gives its journal
the same mode). Every change is one transaction (``synchronous=FULL``, rollback
journal): a crash leaves the previous state or the new one, never a mix. Rows carry a
SHA-256 over all their fields; on load the file's mode, the format version, every
checksum, ``public key == X25519(a, 9)``, the set's length and a sample of recomputed
``a * H(x)`` are checked. Anything wrong (a garbled file, a flipped byte, a file
readable by others, which may have leaked the key) is refused with one
:class:`PSICacheError` line, logged without any secret, and the file is replaced by a
fresh epoch: the caller loses one cold run, never correctness or secrecy. Nothing is
pickled; the scalar never appears in a ``repr``, a log line or an error. The checksum
is an integrity check, not an authenticity proof: whoever can write the file can read
the key anyway (same 0600 owner), so the file is as trusted as the party's other keys.

Security argument: what a stable key reveals
--------------------------------------------
Honest-but-curious parties, coordinator not colluding (README, "Protocols and
threat model"). Within one epoch the label holder sends the *same* values
``a * H(x)`` every run (in a fresh random order). Against one run nothing changes:
each value is a uniformly random element of the prime-order group, linking it to a
guessed ID is DDH (:mod:`fedrisk.crypto.psi_group`). Across runs **of one epoch**:

* a feature holder (and the coordinator, which relays the set) can **link** the label
  holder's blinded sets: it sees that two runs used the same key (same public key and
  mostly equal values) and **how many values were added and removed** between them,
  and a feature holder can tell, for its own IDs, which entered or left the
  intersection (it learns each run's intersection with its own set anyway);
* nobody learns *which* non-intersecting IDs were added or removed (each value is
  still a DDH-hidden group element), nor anything across epochs: a new scalar makes
  the next epoch's values independent of the last (DDH again), so rotation bounds
  the linkage window to :attr:`~KeyEpochPolicy.max_age_seconds`;
* the feature holder's key is fresh every run (``FeatureHolderPSI`` draws it in its
  constructor), so the label holder's view of each feature-holder set is as before,
  unlinkable across runs; the AEAD key of each answer is derived from
  ``a * b_k * G`` with the run id, so it is fresh too.

What the rate limit bounds: a feature holder that lies about its set learns, per run,
whether each element it submits is in ``X`` (any PSI answers membership queries);
with a stable ``a`` a malicious feature holder can also pair its submitted points with
chosen comparison values and use the label holder as a static Diffie-Hellman
*decision* oracle for ``a``. The label holder exponentiates at most
``max_evaluations_per_window`` partner elements per window and
``max_evaluations_per_epoch`` per key, so membership probing is bounded to that many
guesses per window, and the oracle to that many queries per key (with a fresh key per
run, queries never accumulate; with an epoch they do, up to this budget). The known
attacks that exploit even a *computational* static-DH oracle (Brown-Gallant, Cheon)
need on the order of ``l^(1/3) ~ 2^84`` queries; a decision oracle gives less, and the
budget here is below ``2^27``. Set-size policy (a minimum partner set) and
the ledger's record of every run's set sizes remain the controls against a partner
that submits dictionaries.

What the coordinator learns is unchanged in kind: ``|X|``, ``|Y_k|`` and message sizes
(the positions message stays padded to ``min(|X|, |Y_k|)``), plus the linkage above
(it relays the same blinded values within an epoch): hence the epoch's age limit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrisk.crypto.psi_group import POINT_SIZE, blind_points, hash_ids_to_u
from fedrisk.errors import ConfigError, CryptoError, ProtocolError

_T = TypeVar("_T")

__all__ = [
    "CACHE_FILE_NAME",
    "KeyEpoch",
    "KeyEpochPolicy",
    "LabelHolderKeyCache",
    "PSICacheError",
    "PSIRateLimitError",
    "id_set_digest",
]

log = logging.getLogger(__name__)

#: File name of the cache under ``<state-dir>/psi/``.
CACHE_FILE_NAME = "label-holder-cache.sqlite"

_FORMAT = "fedrisk-psi-label-cache-v1"
_EPOCH_TAG = b"fedrisk/psi/label-cache/v1/epoch\x00"
_SET_TAG = b"fedrisk/psi/label-cache/v1/set\x00"
_DIGEST_TAG = b"fedrisk/psi/label-cache/v1/id-set\x00"
_BASE_POINT = (9).to_bytes(32, "little")
#: Rows of a cached set recomputed on every load (a cheap check that key, set and points agree).
SPOT_CHECKS = 8


class PSICacheError(CryptoError):
    """The label holder's PSI cache file is garbled, tampered, of another format or too open."""


class PSIRateLimitError(ProtocolError):
    """A PSI run would exponentiate more partner elements than the key epoch's policy allows."""


@dataclass(frozen=True)
class KeyEpochPolicy:
    """How long a label holder's PSI key lives and how much it may be used.

    Attributes
    ----------
    max_age_seconds
        An epoch older than this is rotated at the next run (default 7 days).
    max_evaluations_per_epoch
        Partner elements exponentiated under one key before it is rotated; a run that
        would go past it is refused (default 100 million).
    window_seconds, max_evaluations_per_window
        Rate limit: at most this many partner elements per fixed window (default 20
        million per hour).
    max_sets
        Blinded ID sets kept per epoch (least recently used out; default 2).
    rotate_on_set_change
        Start a new epoch whenever the ID set differs from the last one blinded, so
        that partners cannot tell how many IDs were added or removed (costs a cold run
        per change). Default False: the set is re-blinded under the same key.
    """

    max_age_seconds: float = 7 * 86400.0
    max_evaluations_per_epoch: int = 100_000_000
    window_seconds: float = 3600.0
    max_evaluations_per_window: int = 20_000_000
    max_sets: int = 2
    rotate_on_set_change: bool = False

    def __post_init__(self) -> None:
        for name in ("max_age_seconds", "window_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"PSI key epoch policy: {name} must be a positive number of seconds, got {value!r}")
        for name in ("max_evaluations_per_epoch", "max_evaluations_per_window", "max_sets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PSI key epoch policy: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.rotate_on_set_change, bool):
            raise ConfigError("PSI key epoch policy: rotate_on_set_change must be true or false")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> KeyEpochPolicy:
        """Build from a settings mapping (unknown keys are a :class:`ConfigError`)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"PSI key epoch policy: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass(frozen=True, repr=False)
class KeyEpoch:
    """One key epoch of the label holder (the scalar is held privately and never shown)."""

    epoch_id: str
    public_key: bytes
    created: float
    evaluations: int
    window_start: float
    window_evaluations: int
    _scalar: bytes = field(compare=False)

    def private_key(self) -> X25519PrivateKey:
        """The epoch's X25519 key (for the caller's PSI steps; never log or send it)."""
        return X25519PrivateKey.from_private_bytes(self._scalar)

    def __repr__(self) -> str:
        return f"KeyEpoch(epoch_id={self.epoch_id!r}, created={self.created:.0f}, evaluations={self.evaluations}, window_evaluations={self.window_evaluations})"


def id_set_digest(domain: bytes, identifiers: Sequence[bytes]) -> bytes:
    """SHA-256 over the hash tag and the ordered ID list (each ID length-prefixed)."""
    lengths = np.fromiter(map(len, identifiers), dtype="<u4", count=len(identifiers)).tobytes()
    h = hashlib.sha256(_DIGEST_TAG)
    h.update(len(domain).to_bytes(2, "big") + domain)
    h.update(len(identifiers).to_bytes(8, "big") + lengths)
    h.update(b"".join(identifiers))
    return h.digest()


def _epoch_checksum(epoch_id: str, scalar: bytes, public_key: bytes, created: float, evaluations: int, window_start: float, window_evaluations: int) -> bytes:
    h = hashlib.sha256(_EPOCH_TAG)
    h.update(epoch_id.encode("ascii") + b"\x00" + scalar + public_key)
    h.update(repr((float(created), int(evaluations), float(window_start), int(window_evaluations))).encode("ascii"))
    return h.digest()


def _set_checksum(digest: bytes, epoch_id: str, n: int, created: float, points: bytes) -> bytes:
    h = hashlib.sha256(_SET_TAG)
    h.update(digest + epoch_id.encode("ascii") + b"\x00")
    h.update(repr((int(n), float(created))).encode("ascii"))
    h.update(points)
    return h.digest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS epoch (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    epoch_id TEXT NOT NULL, scalar BLOB NOT NULL, public_key BLOB NOT NULL, created REAL NOT NULL,
    evaluations INTEGER NOT NULL, window_start REAL NOT NULL, window_evaluations INTEGER NOT NULL,
    checksum BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blinded (
    digest BLOB NOT NULL, epoch_id TEXT NOT NULL, n INTEGER NOT NULL, created REAL NOT NULL,
    used REAL NOT NULL, points BLOB NOT NULL, checksum BLOB NOT NULL,
    PRIMARY KEY (digest, epoch_id)
);
"""


class LabelHolderKeyCache:
    """The label holder's PSI key epoch, blinded-set cache and rate limit, in one 0600 SQLite file.

    Parameters
    ----------
    state_dir
        The party's state folder; the file is ``<state_dir>/psi/label-holder-cache.sqlite``.
    policy
        Rotation, cache and rate-limit settings (:class:`KeyEpochPolicy`).
    clock
        Seconds since the epoch (``time.time``; tests pass their own).
    busy_timeout
        Seconds to wait for another process's transaction on the file; then a
        :class:`~fedrisk.errors.CryptoError` (the file is left alone: busy is not bad).

    Attributes
    ----------
    stats
        Counters of this object's life: ``sets_built`` (blinded sets computed and
        stored), ``sets_reused`` (served from the cache), ``rotations`` (new epochs,
        the first one included), ``refused`` (cache files refused and rebuilt) and
        ``evaluations`` (partner elements charged).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        policy: KeyEpochPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 60.0,
    ) -> None:
        self.policy = policy or KeyEpochPolicy()
        self.busy_timeout = float(busy_timeout)
        self.path = Path(state_dir) / "psi" / CACHE_FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self.stats = {"sets_built": 0, "sets_reused": 0, "rotations": 0, "refused": 0, "evaluations": 0}
        self.last_refusal: str | None = None

    def __repr__(self) -> str:
        return f"LabelHolderKeyCache(path={str(self.path)!r}, policy={self.policy!r})"

    # ------------------------------------------------------------------ file

    def _connect(self) -> sqlite3.Connection:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if self.path.is_symlink():
            raise PSICacheError(f"PSI cache {self.path} is a symbolic link; refusing it")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise PSICacheError(f"PSI cache {self.path} cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PSICacheError(f"PSI cache {self.path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise PSICacheError(f"PSI cache {self.path} has mode {stat.S_IMODE(st.st_mode):04o} (group/others could read its key)")
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (k, v) VALUES ('format', ?)", (_FORMAT,))
            elif row[0] != _FORMAT:
                conn.close()
                raise PSICacheError(f"PSI cache {self.path} has format {str(row[0])[:40]!r}, expected {_FORMAT!r}")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if _busy(exc):
                raise CryptoError(f"PSI cache {self.path} is busy ({_one_line(exc)}); try again") from None
            raise PSICacheError(f"PSI cache {self.path} is not a readable cache ({_one_line(exc)})") from None
        return conn

    def _refuse_and_reset(self, exc: PSICacheError) -> None:
        """Log the one-line refusal (no secret in it) and remove the file; the next step starts fresh."""
        self.stats["refused"] += 1
        self.last_refusal = str(exc)
        log.warning("%s; discarding it and starting a new key epoch", exc)
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(str(self.path) + suffix)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise PSICacheError(f"PSI cache {self.path}{suffix} cannot be removed: {err.strerror}") from None

    def _with_conn(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one immediate transaction; a refused file is reset and ``work`` retried once."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    conn = self._connect()
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            out = work(conn)
                        except BaseException:
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                            raise
                        conn.execute("COMMIT")
                        return out
                    except sqlite3.Error as exc:
                        if _busy(exc):  # another process holds it: not a bad file, never reset it
                            raise CryptoError(f"PSI cache {self.path} is busy ({_one_line(exc)}); try again") from None
                        raise PSICacheError(f"PSI cache {self.path} is not a readable cache ({_one_line(exc)})") from None
                    finally:
                        conn.close()
                except PSICacheError as exc:
                    if attempt:
                        raise
                    self._refuse_and_reset(exc)
            raise AssertionError("unreachable")

    # ------------------------------------------------------------------ epochs

    def _load_epoch(self, conn: sqlite3.Connection) -> KeyEpoch | None:
        row = conn.execute("SELECT epoch_id, scalar, public_key, created, evaluations, window_start, window_evaluations, checksum FROM epoch").fetchone()
        if row is None:
            return None
        epoch_id, scalar, public_key, created, evaluations, window_start, window_evaluations, checksum = row
        try:
            ok = (
                isinstance(epoch_id, str)
                and epoch_id.isascii()
                and len(epoch_id) == 32
                and isinstance(scalar, bytes)
                and len(scalar) == 32
                and isinstance(public_key, bytes)
                and len(public_key) == 32
                and isinstance(evaluations, int)
                and isinstance(window_evaluations, int)
                and evaluations >= 0
                and window_evaluations >= 0
                and checksum == _epoch_checksum(epoch_id, scalar, public_key, created, evaluations, window_start, window_evaluations)
                and X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw() == public_key
            )
        except (TypeError, ValueError, UnicodeError):
            ok = False
        if not ok:
            raise PSICacheError(f"PSI cache {self.path}: the key epoch record fails its integrity check (tampered or garbled)")
        return KeyEpoch(epoch_id, public_key, float(created), evaluations, float(window_start), window_evaluations, scalar)

    def _store_epoch(self, conn: sqlite3.Connection, epoch: KeyEpoch) -> None:
        checksum = _epoch_checksum(
            epoch.epoch_id, epoch._scalar, epoch.public_key, epoch.created, epoch.evaluations, epoch.window_start, epoch.window_evaluations
        )
        conn.execute(
            "INSERT OR REPLACE INTO epoch (slot, epoch_id, scalar, public_key, created, evaluations, window_start,"
            " window_evaluations, checksum) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (epoch.epoch_id, epoch._scalar, epoch.public_key, epoch.created, epoch.evaluations, epoch.window_start, epoch.window_evaluations, checksum),
        )

    def _new_epoch(self, conn: sqlite3.Connection, now: float) -> KeyEpoch:
        key = X25519PrivateKey.generate()
        epoch = KeyEpoch(secrets.token_hex(16), key.public_key().public_bytes_raw(), now, 0, now, 0, key.private_bytes_raw())
        conn.execute("DELETE FROM blinded")  # every set of the old key goes with it
        self._store_epoch(conn, epoch)
        self.stats["rotations"] += 1
        log.info("PSI label holder: new key epoch %s", epoch.epoch_id[:8])
        return epoch

    def _due(self, epoch: KeyEpoch, now: float) -> str | None:
        if now - epoch.created >= self.policy.max_age_seconds or now < epoch.created - 300:
            return "age"
        if epoch.evaluations >= self.policy.max_evaluations_per_epoch:
            return "use"
        return None

    def current_epoch(self) -> KeyEpoch:
        """The epoch in force now, rotated first if it is too old or spent."""

        def work(conn: sqlite3.Connection) -> KeyEpoch:
            now = self._clock()
            epoch = self._load_epoch(conn)
            if epoch is None or self._due(epoch, now):
                epoch = self._new_epoch(conn, now)
            return epoch

        return self._with_conn(work)

    def rotate(self) -> KeyEpoch:
        """Start a new epoch now (dropping every cached set of the old one)."""
        return self._with_conn(lambda conn: self._new_epoch(conn, self._clock()))

    # ------------------------------------------------------------------ sets

    def blinded_set(self, identifiers: Sequence[bytes], domain: bytes, blind: Callable[[bytes], np.ndarray]) -> tuple[KeyEpoch, np.ndarray, bool]:
        """``a * H(id)`` for every ID under the current epoch: cached, or computed by ``blind`` and stored.

        Parameters
        ----------
        identifiers
            The label holder's ID bytes, in row order.
        domain
            The hash-to-curve tag (part of the set digest).
        blind
            ``blind(scalar) -> (n, 32) uint8 array`` computing ``X25519(scalar, H(id))``
            in row order (e.g. the pool's ``hash_and_blind``); called only on a miss.

        Returns
        -------
        (KeyEpoch, numpy.ndarray, bool)
            The epoch, the blinded points in row order, and whether they came from the cache.
        """
        digest = id_set_digest(domain, identifiers)
        n = len(identifiers)

        def lookup(conn: sqlite3.Connection) -> tuple[KeyEpoch, np.ndarray | None]:
            now = self._clock()
            epoch = self._load_epoch(conn)
            if epoch is None or self._due(epoch, now):
                epoch = self._new_epoch(conn, now)
            row = conn.execute("SELECT n, created, points, checksum FROM blinded WHERE digest = ? AND epoch_id = ?", (digest, epoch.epoch_id)).fetchone()
            if row is None:
                if self.policy.rotate_on_set_change and conn.execute("SELECT COUNT(*) FROM blinded").fetchone()[0]:
                    epoch = self._new_epoch(conn, now)
                return epoch, None
            count, created, points, checksum = row
            if (
                count != n
                or not isinstance(points, bytes)
                or len(points) != POINT_SIZE * n
                or checksum != _set_checksum(digest, epoch.epoch_id, count, created, points)
            ):
                raise PSICacheError(f"PSI cache {self.path}: a cached blinded set fails its integrity check (tampered or garbled)")
            arr = np.frombuffer(points, dtype=np.uint8).reshape(n, POINT_SIZE)
            self._spot_check(epoch, identifiers, domain, arr, digest)
            conn.execute("UPDATE blinded SET used = ? WHERE digest = ? AND epoch_id = ?", (now, digest, epoch.epoch_id))
            return epoch, arr

        epoch, points = self._with_conn(lookup)
        if points is not None:
            self.stats["sets_reused"] += 1
            return epoch, points, True
        points = np.ascontiguousarray(blind(epoch._scalar), dtype=np.uint8)
        if points.shape != (n, POINT_SIZE):
            raise CryptoError(f"blinding gave shape {points.shape}, expected ({n}, {POINT_SIZE})")
        raw = points.tobytes()

        def store(conn: sqlite3.Connection) -> None:
            now = self._clock()
            current = self._load_epoch(conn)
            if current is None or current.epoch_id != epoch.epoch_id:
                return  # rotated meanwhile (another process): this run's set is still right for its own key
            conn.execute(
                "INSERT OR REPLACE INTO blinded (digest, epoch_id, n, created, used, points, checksum) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (digest, epoch.epoch_id, n, now, now, raw, _set_checksum(digest, epoch.epoch_id, n, now, raw)),
            )
            conn.execute(
                "DELETE FROM blinded WHERE rowid NOT IN (SELECT rowid FROM blinded ORDER BY used DESC LIMIT ?)",
                (self.policy.max_sets,),
            )

        self._with_conn(store)
        self.stats["sets_built"] += 1
        return epoch, points, False

    def _spot_check(self, epoch: KeyEpoch, identifiers: Sequence[bytes], domain: bytes, points: np.ndarray, digest: bytes) -> None:
        n = len(identifiers)
        rows = sorted({int.from_bytes(hashlib.sha256(digest + os.urandom(16) + bytes([i])).digest()[:8], "little") % n for i in range(min(SPOT_CHECKS, n))})
        expected = blind_points(epoch._scalar, hash_ids_to_u(domain, [identifiers[r] for r in rows]))
        if not np.array_equal(expected, points[rows]):
            raise PSICacheError(f"PSI cache {self.path}: cached blinded values do not match the key and IDs (tampered)")

    # ------------------------------------------------------------------ rate limit

    def charge(self, epoch_id: str, count: int, peer: str) -> KeyEpoch:
        """Count ``count`` partner elements against the epoch and the window, or refuse.

        Called before the label holder exponentiates a partner's set; the count is
        committed first, so a crash never returns budget.

        Raises
        ------
        PSIRateLimitError
            If the epoch's or the window's budget would be exceeded, or the epoch was
            rotated since this run's blinding (its key may no longer be used).
        """
        count = int(count)

        def work(conn: sqlite3.Connection) -> KeyEpoch:
            now = self._clock()
            epoch = self._load_epoch(conn)
            if epoch is None or epoch.epoch_id != epoch_id:
                raise PSIRateLimitError(f"PSI key epoch {epoch_id[:8]} was rotated during the run; refusing to evaluate {peer}'s set under it")
            start, used = epoch.window_start, epoch.window_evaluations
            if now - start >= self.policy.window_seconds or now < start:
                start, used = now, 0
            if epoch.evaluations + count > self.policy.max_evaluations_per_epoch:
                raise PSIRateLimitError(
                    f"PSI rate limit: {peer} sent {count} elements, key epoch {epoch_id[:8]} has "
                    f"{self.policy.max_evaluations_per_epoch - epoch.evaluations} of {self.policy.max_evaluations_per_epoch} left; "
                    "it rotates at the next run"
                )
            if used + count > self.policy.max_evaluations_per_window:
                wait = max(0.0, start + self.policy.window_seconds - now)
                raise PSIRateLimitError(
                    f"PSI rate limit: {peer} sent {count} elements, {self.policy.max_evaluations_per_window - used} of "
                    f"{self.policy.max_evaluations_per_window} per {self.policy.window_seconds:g} s are left "
                    f"(window resets in {wait:.0f} s)"
                )
            charged = KeyEpoch(epoch.epoch_id, epoch.public_key, epoch.created, epoch.evaluations + count, start, used + count, epoch._scalar)
            self._store_epoch(conn, charged)
            return charged

        out = self._with_conn(work)
        self.stats["evaluations"] += count
        return out

    def check(self) -> KeyEpoch | None:
        """Read and verify the file strictly (no reset): the epoch, or None if there is none.

        Raises
        ------
        PSICacheError
            If the file is refused (the message is the one line a run would log).
        """
        with self._lock:
            conn = self._connect()
            try:
                epoch = self._load_epoch(conn)
                for digest, epoch_id, n, created, points, checksum in conn.execute("SELECT digest, epoch_id, n, created, points, checksum FROM blinded"):
                    if not isinstance(points, bytes) or len(points) != POINT_SIZE * n or checksum != _set_checksum(digest, epoch_id, n, created, points):
                        raise PSICacheError(f"PSI cache {self.path}: a cached blinded set fails its integrity check (tampered or garbled)")
                return epoch
            except sqlite3.Error as exc:
                raise PSICacheError(f"PSI cache {self.path} is not a readable cache ({_one_line(exc)})") from None
            finally:
                conn.close()


def _busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
