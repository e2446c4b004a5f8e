"""Verification of ledger files: each chain alone, then a run's ledgers together.

:func:`verify_ledger` checks one file: the meta row (writer, key, genesis),
the append-only triggers, and for every entry its sequence number, its link
to the previous entry, its hash and its Ed25519 signature. Each entry stores
its signed canonical body beside the columns, so when a column was altered
the finding names that column and shows the stored and the signed value.

:func:`cross_check` checks a run's files against each other: every message
recorded as sent is recorded as received by the named receiver with the same
hash, size, class and key (and vice versa), no ``plaintext`` crossed a party
line, ciphertexts carry a key fingerprint, and all entries share one run id.

Ledger heads and run-close records: every entry stores the head of the
sender's ledger that its message carried, so :func:`cross_check` compares each
peer's ledger with what the others recorded of it (a ledger shorter than a
head a peer recorded had its tail cut; one whose entry differs from it was
rewritten); and a run whose entries carry heads must end, in each ledger, with
a signed run-close record (:func:`verify_ledger`), so cutting a run's last
exchange from *both* ends still leaves a run that was never closed.

Keys: ``trusted_keys`` is a writer -> key map (the coordinator's unsigned
``signing_keys.json`` when nothing better is at hand). With the federation's
CA certificate (``ca``), each ledger's key must instead be bound to its
writer's certificate (:mod:`fedrisk.audit.key_binding`), and entries are
judged under the bound key.

What a single file cannot show: an attacker holding the writer's key can
rewrite that whole ledger consistently, and anyone can truncate its tail.
Both are caught by :func:`cross_check` as long as a peer's ledger is intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrisk.audit.entry import (
    BODY_FIELDS,
    CLOSE_HANDSHAKE_STEP,
    FORMAT,
    RUN_CLOSE_RECEIVER,
    RUN_CLOSE_STEP,
    RUN_CLOSE_TYPE,
    ContentClass,
    Direction,
    EntryKind,
    LedgerEntry,
    canonical_json,
    entry_hash_of,
    genesis_hash,
    key_id_of,
    run_close_statement,
    signed_message,
    verify_signature,
)
from fedrisk.audit.store import TRIGGERS, LedgerMeta, LedgerSnapshot, read_ledger
from fedrisk.errors import LedgerError

PathLike = str | os.PathLike[str]
#: The federation CA certificate: a path, PEM bytes or a loaded certificate.
CALike = str | os.PathLike[str] | bytes | x509.Certificate
TrustedKeys = Mapping[str, bytes | str]

_META_KEYS = frozenset({"format", "writer", "public_key", "key_id", "created_us", "genesis_hash", "sealed"})
# Fields both ends of a message must agree on (run_id is checked run-wide).
_PAIRED_FIELDS = (
    "round",
    "step",
    "message_type",
    "payload_sha256",
    "size_bytes",
    "content_class",
    "key_fingerprint",
    "sender_count",
    "sender_head",
)
_MISMATCH_WORD = {"payload_sha256": "hash", "size_bytes": "size"}
_DIRECTIONS = frozenset(d.value for d in Direction)
_CLASSES = frozenset(c.value for c in ContentClass)
_KINDS = frozenset(k.value for k in EntryKind)
_CLOSE = EntryKind.RUN_CLOSE.value


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a ledger.

    Attributes
    ----------
    file
        The ledger file, as the caller named it.
    seq
        The entry's sequence number, or ``None`` for the file as a whole.
    field
        The entry field (``payload_sha256``, ``signature``...), or a
        file-level item (``file``, ``schema``, ``meta.public_key``...).
    message
        One line saying what is wrong.
    """

    file: str
    seq: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.seq is None else f"{self.file} entry {self.seq}"
        return f"{where} field {self.field}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """Return the finding as a JSON-ready dict."""
        return {"file": self.file, "seq": self.seq, "field": self.field, "message": self.message}


def _short(value: object, width: int = 72) -> str:
    # Wide enough to show a whole SHA-256 hex digest: a flipped byte can be anywhere.
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def _error_text(exc: LedgerError, name: str) -> str:
    msg = str(exc)
    return msg[len(name) + 2 :] if msg.startswith(name + ": ") else msg


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _as_key_bytes(value: bytes | str) -> bytes | None:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


# -- one ledger ---------------------------------------------------------------


@dataclass(frozen=True)
class _KeyView:
    writer: str | None
    key: Ed25519PublicKey | None
    key_id: str
    genesis: str | None


def _check_meta(snap: LedgerSnapshot, trusted_keys: TrustedKeys | None) -> tuple[list[Finding], _KeyView]:
    f = snap.path
    out: list[Finding] = []
    try:
        meta: LedgerMeta | None = LedgerMeta.from_raw(snap.meta, f)
    except LedgerError as exc:
        out.append(Finding(f, None, "meta", _error_text(exc, f)))
        meta = None
    for row in sorted(set(map(str, snap.meta)) - _META_KEYS):
        out.append(Finding(f, None, f"meta.{row}", "unexpected meta row"))
    if "sealed" not in snap.meta:
        out.append(Finding(f, None, "meta.sealed", "meta was never sealed"))
    missing = sorted(set(TRIGGERS) - snap.triggers)
    if missing:
        out.append(Finding(f, None, "schema", f"append-only triggers missing ({', '.join(missing)}): file was altered"))
    if meta is None:
        stored = snap.meta.get("genesis_hash")
        return out, _KeyView(None, None, "?", stored if isinstance(stored, str) else None)

    if meta.format != FORMAT:
        out.append(Finding(f, None, "meta.format", f"unknown format {meta.format!r}, expected {FORMAT!r}"))
    if meta.key_id != key_id_of(meta.public_key):
        out.append(Finding(f, None, "meta.key_id", f"key id {meta.key_id!r} does not match the stored public key"))
    expected_genesis = genesis_hash(meta.writer, meta.public_key)
    if meta.genesis_hash != expected_genesis:
        out.append(Finding(f, None, "meta.genesis_hash", "does not match the writer and public key"))

    pub = meta.public_key
    if trusted_keys is not None:
        trusted = trusted_keys.get(meta.writer)
        if trusted is None:
            out.append(Finding(f, None, "meta.writer", f"no trusted key for writer {meta.writer!r}"))
        else:
            trusted_raw = _as_key_bytes(trusted)
            if trusted_raw is None:
                out.append(Finding(f, None, "meta.writer", f"trusted key for {meta.writer!r} is not a 32-byte Ed25519 key"))
            elif trusted_raw != pub:
                out.append(
                    Finding(
                        f,
                        None,
                        "meta.public_key",
                        f"key {key_id_of(pub)} is not the trusted key {key_id_of(trusted_raw)} of {meta.writer!r}",
                    )
                )
                # The trusted key is the truth: entries are judged under it.
                pub = trusted_raw
    public_key: Ed25519PublicKey | None
    try:
        public_key = Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        out.append(Finding(f, None, "meta.public_key", "not a valid Ed25519 public key"))
        public_key = None
    return out, _KeyView(meta.writer, public_key, key_id_of(pub), expected_genesis)


def _encodable(entry: LedgerEntry) -> str | None:
    try:
        return canonical_json(entry.body())
    except (TypeError, ValueError):
        return None


def _check_signature(f: str, entry: LedgerEntry, digest: str, view: _KeyView) -> list[Finding]:
    if view.key is None:
        return []
    sig = entry.signature
    try:
        raw = bytes.fromhex(sig) if isinstance(sig, str) else b""
        ok = len(raw) == 64 and verify_signature(view.key, signed_message(digest), raw)
    except ValueError:
        ok = False
    if ok:
        return []
    who = view.writer if view.writer is not None else "the writer"
    return [Finding(f, entry.seq, "signature", f"does not verify under {who}'s key {view.key_id}")]


@dataclass(frozen=True)
class _EntryCheck:
    findings: list[Finding]
    links: set[str]  # hashes the next entry may legitimately point back to
    prevs: set[object]  # this entry's prev_hash: stored and signed values
    position: int  # the signed seq when the signed body is authentic, else the stored one


def _check_entry(f: str, entry: LedgerEntry, body: object, view: _KeyView) -> _EntryCheck:
    """Check one entry's hash, signed body and signature against its columns."""
    out: list[Finding] = []
    seq = entry.seq
    stored_hash = entry.entry_hash
    for name in (*BODY_FIELDS, "entry_hash", "signature"):
        if isinstance(getattr(entry, name), bytes):
            out.append(Finding(f, seq, name, "stored value is not valid UTF-8 text"))
    cols_text = _encodable(entry)
    h_cols = entry_hash_of(cols_text) if cols_text is not None else None
    prevs: set[object] = {entry.prev_hash}

    if cols_text is not None and isinstance(body, str) and body == cols_text:
        # Fast path: the columns and the stored signed body agree.
        if h_cols == stored_hash:
            out += _check_signature(f, entry, stored_hash, view)
        else:
            out.append(Finding(f, seq, "entry_hash", f"stored {_short(stored_hash)} does not match the entry's content"))
            out += _check_signature(f, entry, h_cols, view)  # type: ignore[arg-type]
        return _EntryCheck(out, {h for h in (h_cols, stored_hash) if isinstance(h, str)}, prevs, seq)

    try:
        h_body = entry_hash_of(body) if isinstance(body, str) else None
        signed = json.loads(body) if isinstance(body, str) else None
    except (UnicodeError, ValueError):
        h_body, signed = None, None
    if not isinstance(signed, dict):
        signed = None
    else:
        prevs.add(signed.get("prev_hash"))

    def field_diffs() -> list[Finding]:
        diffs: list[Finding] = []
        if signed is None:
            return diffs
        for name in BODY_FIELDS:
            stored, sealed = getattr(entry, name), signed.get(name)
            if _same(stored, sealed) or isinstance(stored, bytes):
                continue
            note = " (entries reordered or renumbered)" if name == "seq" else ""
            diffs.append(Finding(f, seq, name, f"stored {_short(stored)} but signed {_short(sealed)}{note}"))
        return diffs

    if h_cols is not None and h_cols == stored_hash:
        out.append(Finding(f, seq, "body", "stored signed encoding differs from the entry's fields"))
        out += _check_signature(f, entry, stored_hash, view)
    elif h_body is not None and h_body == stored_hash:
        diffs = field_diffs()
        out += diffs
        if not diffs and not out:
            out.append(Finding(f, seq, "body", "signed encoding is not canonical for the entry's fields"))
        out += _check_signature(f, entry, stored_hash, view)
    else:
        diffs = field_diffs()
        out += diffs
        if signed is None:
            out.append(Finding(f, seq, "body", "stored signed encoding is unreadable"))
        out.append(Finding(f, seq, "entry_hash", "matches neither the entry's fields nor its signed encoding"))
        if isinstance(stored_hash, str) and len(stored_hash) == 64:
            out += _check_signature(f, entry, stored_hash, view)
    links = {h for h in (h_cols, h_body, stored_hash) if isinstance(h, str)}
    position = seq
    if h_body is not None and h_body == stored_hash and signed is not None:
        signed_seq = signed.get("seq")
        if isinstance(signed_seq, int) and not isinstance(signed_seq, bool):
            position = signed_seq  # a renumbered entry is judged where it was signed
    return _EntryCheck(out, links, prevs, position)


def _check_semantics(f: str, entry: LedgerEntry, writer: str | None) -> list[Finding]:
    # Only reached for entries that are intact: these catch a writer that
    # signed something inconsistent, not tampering.
    out: list[Finding] = []
    seq = entry.seq
    if entry.kind not in _KINDS:
        out.append(Finding(f, seq, "kind", f"unknown entry kind {_short(entry.kind)}"))
    count, head = entry.sender_count, entry.sender_head
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        out.append(Finding(f, seq, "sender_count", f"not an entry count: {_short(count)}"))
    if not isinstance(head, str) or (head and not _is_hex64(head)) or (not head and count):
        out.append(Finding(f, seq, "sender_head", f"not a ledger head: {_short(head)} at count {_short(count)}"))
    if entry.kind == _CLOSE:
        expected = {
            "receiver": RUN_CLOSE_RECEIVER,
            "step": RUN_CLOSE_STEP,
            "message_type": RUN_CLOSE_TYPE,
            "direction": Direction.SENT.value,
            "content_class": ContentClass.PUBLIC.value,
        }
        for name, value in expected.items():
            if getattr(entry, name) != value:
                out.append(Finding(f, seq, name, f"run-close record has {name} {_short(getattr(entry, name))}, not {value!r}"))
        if isinstance(head, str) and isinstance(count, int) and isinstance(entry.run_id, str) and isinstance(entry.sender, str):
            statement = run_close_statement(entry.run_id, entry.sender, count, head)
            if entry.payload_sha256 != hashlib.sha256(statement).hexdigest() or entry.size_bytes != len(statement):
                out.append(Finding(f, seq, "payload_sha256", "run-close record's statement hash does not match its run, writer and head"))
    if entry.direction not in _DIRECTIONS:
        out.append(Finding(f, seq, "direction", f"unknown direction {_short(entry.direction)}"))
    if entry.content_class not in _CLASSES:
        out.append(Finding(f, seq, "content_class", f"unknown content class {_short(entry.content_class)}"))
    if entry.sender == entry.receiver:
        out.append(Finding(f, seq, "receiver", "sender and receiver are the same node"))
    if writer is not None:
        if entry.direction == Direction.SENT.value and entry.sender != writer:
            out.append(Finding(f, seq, "sender", f"sent entry in {writer!r}'s ledger names sender {_short(entry.sender)}"))
        if entry.direction == Direction.RECEIVED.value and entry.receiver != writer:
            out.append(Finding(f, seq, "receiver", f"received entry in {writer!r}'s ledger names receiver {_short(entry.receiver)}"))
    return out


def verify_snapshot(snap: LedgerSnapshot, trusted_keys: TrustedKeys | None = None, run_id: str | None = None) -> list[Finding]:
    """Verify an already-read ledger (see :func:`verify_ledger`)."""
    f = snap.path
    findings, view = _check_meta(snap, trusted_keys)
    checks = [(entry, _check_entry(f, entry, body, view)) for entry, body in zip(snap.entries, snap.bodies, strict=True)]
    # Walk the chain in signed order, so a renumbered or reordered entry is
    # named once (its seq field) instead of opening spurious gaps.
    checks.sort(key=lambda ec: ec[1].position)
    expected = 1
    prev_links: set[str] = {view.genesis} if view.genesis else set()
    links_at: dict[int, set[str]] = {0: set(prev_links)}  # position -> hashes that entry may legitimately have
    runs: dict[object, _RunSpan] = {}
    for entry, check in checks:
        pos = check.position
        semantics = [] if check.findings else _check_semantics(f, entry, view.writer)
        findings += check.findings or semantics
        if pos < expected:
            findings.append(Finding(f, entry.seq, "seq", f"repeats entry {pos} (duplicated or replayed)"))
            continue
        gap = pos != expected
        if gap:
            what = f"entry {expected} missing" if pos == expected + 1 else f"entries {expected}..{pos - 1} missing"
            where = "chain starts at" if expected == 1 else f"chain jumps from {expected - 1} to"
            findings.append(Finding(f, expected, "seq", f"{what}: {where} {pos}"))
        elif not (check.prevs & prev_links):
            target = "the ledger's genesis hash" if pos == 1 else f"the hash of entry {pos - 1}"
            findings.append(Finding(f, entry.seq, "prev_hash", f"does not match {target} (chain broken)"))
        if not check.findings and not semantics:
            findings += _check_own_head(f, entry, pos, links_at)
        runs.setdefault(_hashable(entry.run_id), _RunSpan()).add(entry, pos, intact=not check.findings)
        links_at[pos] = check.links
        prev_links = check.links
        expected = pos + 1
    for run, span in runs.items():
        if run_id is None or run == run_id:
            findings += span.findings(f, run)
    return findings


def _hashable(value: object) -> object:
    return value if isinstance(value, str | int | bytes) else repr(value)


def _check_own_head(f: str, entry: LedgerEntry, pos: int, links_at: Mapping[int, set[str]]) -> list[Finding]:
    """A head this writer put in its own entry must name an earlier entry of this very chain."""
    count, head = entry.sender_count, entry.sender_head
    if not head:
        return []
    if entry.kind == _CLOSE:
        if count != pos - 1 or head not in links_at.get(pos - 1, {head}):
            return [Finding(f, entry.seq, "sender_head", f"run-close record names head {head[:16]}\u2026 at count {count}, not the entry before it")]
        return []
    if entry.direction != Direction.SENT.value:
        return []  # the peer's head: checked against the peer's ledger by cross_check
    if count >= pos:
        return [Finding(f, entry.seq, "sender_count", f"message carried head count {count}, not a count before its own entry")]
    if count in links_at and head not in links_at[count]:
        return [Finding(f, entry.seq, "sender_head", f"message carried head {head[:16]}\u2026 at count {count}, but entry {count} of this ledger differs")]
    return []


@dataclass
class _RunSpan:
    """Where a run's exchanges and run-close records sit in one ledger."""

    last_exchange: int = 0
    last_close: int = 0
    attested: bool = False  # its entries carry ledger heads: the run must end with a run-close record

    def add(self, entry: LedgerEntry, pos: int, *, intact: bool) -> None:
        if entry.kind == _CLOSE:
            self.last_close = max(self.last_close, pos)
            return
        if entry.step == CLOSE_HANDSHAKE_STEP:
            return  # the close query and its answer around a party's run-close record
        self.last_exchange = max(self.last_exchange, pos)
        # Only a head the writer signed counts (a tampered column is reported as such).
        self.attested = self.attested or (intact and bool(entry.sender_head))

    def findings(self, f: str, run: object) -> list[Finding]:
        if not self.attested or self.last_close > self.last_exchange:
            return []
        if not self.last_close:
            return [
                Finding(
                    f,
                    None,
                    "run_close",
                    f"run {_short(run, 40)} ends at entry {self.last_exchange} with no run-close record (its tail was cut, or the run did not end cleanly)",
                )
            ]
        return [
            Finding(
                f,
                None,
                "run_close",
                f"run {_short(run, 40)} goes on after its run-close record (entry {self.last_close}) "
                f"up to entry {self.last_exchange} with no later run-close record "
                "(its tail was cut, or the run was reopened and did not end cleanly)",
            )
        ]


def verify_ledger(path: PathLike, trusted_keys: TrustedKeys | None = None, run_id: str | None = None) -> list[Finding]:
    """Verify one ledger file's chain and signatures.

    Parameters
    ----------
    path
        The ledger file.
    trusted_keys
        Writer name -> Ed25519 public key (32 raw bytes or hex). When given,
        the file's writer must be listed and its stored key must match; the
        entries are then verified under the trusted key. When ``None`` the
        file's own meta key is used (self-consistency only).
    run_id
        Check only this run's closing (a node's ledger spans its runs); the
        chain and every signature are always checked whole.

    Returns
    -------
    list of Finding
        Empty when the ledger is intact: chain, signatures, the heads this
        writer put in its own entries, and a run-close record ending every
        run whose entries carry heads.
    """
    name = str(path)
    try:
        snap = read_ledger(path)
    except LedgerError as exc:
        return [Finding(name, None, "file", _error_text(exc, name))]
    return verify_snapshot(snap, trusted_keys, run_id)


# -- a run's ledgers together ----------------------------------------------------


def _writer_of(snap: LedgerSnapshot) -> str | None:
    writer = snap.meta.get("writer")
    return writer if isinstance(writer, str) and writer else None


def cross_check_snapshots(snaps: Sequence[LedgerSnapshot], run_id: str | None = None) -> list[Finding]:
    """Cross-check already-read ledgers (see :func:`cross_check`)."""
    out: list[Finding] = []
    by_writer: dict[str, LedgerSnapshot] = {}
    for snap in snaps:
        writer = _writer_of(snap)
        if writer is None:
            out.append(Finding(snap.path, None, "meta.writer", "ledger has no writer; cannot cross-check it"))
            continue
        if writer in by_writer:
            other = Path(by_writer[writer].path).name
            out.append(Finding(snap.path, None, "meta.writer", f"writer {writer!r} also writes {other}"))
            continue
        by_writer[writer] = snap

    runs = Counter(e.run_id for s in by_writer.values() for e in s.entries)
    expected_run = run_id if run_id is not None else (runs.most_common(1)[0][0] if runs else None)

    Key = tuple[object, object, object]
    sent: dict[Key, list[tuple[LedgerSnapshot, LedgerEntry]]] = defaultdict(list)
    received: dict[Key, list[tuple[LedgerSnapshot, LedgerEntry]]] = defaultdict(list)
    for writer, snap in by_writer.items():
        f = snap.path
        for e in snap.entries:
            seq = e.seq
            if expected_run is not None and e.run_id != expected_run:
                if run_id is not None:
                    continue  # a node's ledger spans its runs; only the named run is checked
                out.append(Finding(f, seq, "run_id", f"run {_short(e.run_id, 40)} differs from run {expected_run!r}"))
            if e.kind == _CLOSE:
                continue  # a run-close record is no message: verify_ledger judges it
            if e.content_class == ContentClass.PLAINTEXT.value:
                out.append(Finding(f, seq, "content_class", f"plaintext crossed the party line {e.sender} -> {e.receiver} (violation)"))
            if e.content_class in (ContentClass.CIPHERTEXT.value, ContentClass.MASKED.value) and not e.key_fingerprint:
                out.append(Finding(f, seq, "key_fingerprint", f"{e.content_class} payload without a key fingerprint"))
            msg_key: Key = (e.message_id, e.sender, e.receiver)
            if e.direction == Direction.SENT.value and e.sender == writer:
                sent[msg_key].append((snap, e))
            elif e.direction == Direction.RECEIVED.value and e.receiver == writer:
                received[msg_key].append((snap, e))
            # Entries naming the wrong writer are reported by verify_ledger.

    # (file, absent peer) -> (first seq, count): one finding per pair, not per entry.
    absent: dict[tuple[str, str], list[int]] = {}

    def note_absent(snap: LedgerSnapshot, peer: object, seq: int) -> None:
        slot = absent.setdefault((snap.path, str(peer)), [seq, 0])
        slot[1] += 1

    for key in sent.keys() | received.keys():
        mid, sender, receiver = key
        s_list, r_list = sent.get(key, []), received.get(key, [])
        for (s_snap, s), (r_snap, r) in zip(s_list, r_list):
            s_name, r_name = Path(s_snap.path).name, Path(r_snap.path).name
            for name in _PAIRED_FIELDS:
                sv, rv = getattr(s, name), getattr(r, name)
                if _same(sv, rv):
                    continue
                word = _MISMATCH_WORD.get(name, name)
                detail = f"(sent {_short(sv)}, received {_short(rv)})"
                out.append(Finding(s_snap.path, s.seq, name, f"{word} mismatch with {r_name} entry {r.seq} {detail}"))
                out.append(Finding(r_snap.path, r.seq, name, f"{word} mismatch with {s_name} entry {s.seq} {detail}"))
        dup = " (duplicate message id)"
        for s_snap, s in s_list[len(r_list) :]:
            peer = by_writer.get(str(receiver))
            if peer is None:
                note_absent(s_snap, receiver, s.seq)
            else:
                extra = dup if len(s_list) > 1 else ""
                out.append(
                    Finding(
                        s_snap.path,
                        s.seq,
                        "message_id",
                        f"sent to {receiver!r} but {Path(peer.path).name} has no matching received entry{extra}",
                    )
                )
        for r_snap, r in r_list[len(s_list) :]:
            peer = by_writer.get(str(sender))
            if peer is None:
                note_absent(r_snap, sender, r.seq)
            else:
                extra = dup if len(r_list) > 1 else ""
                out.append(
                    Finding(
                        r_snap.path,
                        r.seq,
                        "message_id",
                        f"received from {sender!r} but {Path(peer.path).name} has no matching sent entry{extra}",
                    )
                )
    for (path, absent_peer), (first, count) in sorted(absent.items()):
        out.append(
            Finding(
                path,
                first,
                "peer",
                f"no ledger of {absent_peer!r} among the checked files; {count} {'entry' if count == 1 else 'entries'} cannot be cross-checked",
            )
        )
    out += _check_peer_heads(by_writer, received)
    return sorted(out, key=lambda x: (x.file, x.seq if x.seq is not None else -1, x.field))


def _known_hashes(snap: LedgerSnapshot) -> tuple[int, dict[int, set[str]]]:
    """A ledger's length (its highest entry) and, per entry, the hashes it may legitimately have."""
    hashes: dict[int, set[str]] = defaultdict(set)
    genesis = snap.meta.get("genesis_hash")
    if isinstance(genesis, str):
        hashes[0].add(genesis)
    try:
        hashes[0].add(genesis_hash(str(snap.meta["writer"]), bytes.fromhex(str(snap.meta["public_key"]))))
    except (KeyError, ValueError):
        pass
    length = 0
    for e, body in zip(snap.entries, snap.bodies, strict=True):
        if isinstance(e.seq, bool) or not isinstance(e.seq, int):
            continue
        length = max(length, e.seq)
        if isinstance(e.entry_hash, str):
            hashes[e.seq].add(e.entry_hash)
        if isinstance(body, str):
            try:
                hashes[e.seq].add(entry_hash_of(body))
            except UnicodeError:
                pass
    return length, hashes


def _check_peer_heads(
    by_writer: Mapping[str, LedgerSnapshot],
    received: Mapping[tuple[object, object, object], list[tuple[LedgerSnapshot, LedgerEntry]]],
) -> list[Finding]:
    """Each ledger against the heads of it its peers recorded: cut below one, or rewritten since."""
    known = {writer: _known_hashes(snap) for writer, snap in by_writer.items()}
    cut: dict[tuple[str, str], tuple[int, LedgerSnapshot, LedgerEntry]] = {}
    rewritten: dict[tuple[str, str], list[tuple[LedgerSnapshot, LedgerEntry]]] = defaultdict(list)
    for entries in received.values():
        for r_snap, r in entries:
            sender, count, head = r.sender, r.sender_count, r.sender_head
            if not _is_hex64(head) or isinstance(count, bool) or not isinstance(count, int) or str(sender) not in known:
                continue
            length, hashes = known[str(sender)]
            key = (str(sender), r_snap.path)
            if count > length:
                if key not in cut or count > cut[key][0]:
                    cut[key] = (count, r_snap, r)
            elif count in hashes and head not in hashes[count]:
                rewritten[key].append((r_snap, r))
    out: list[Finding] = []
    for (sender, _), (count, r_snap, r) in sorted(cut.items(), key=lambda kv: kv[0]):
        snap = by_writer[sender]
        length = known[sender][0]
        recorder = _writer_of(r_snap)
        out.append(
            Finding(
                snap.path,
                length + 1,
                "tail",
                f"{recorder!r} recorded {sender!r}'s ledger head {r.sender_head[:16]}\u2026 at count {count} "
                f"({Path(r_snap.path).name} entry {r.seq}); {sender!r}'s ledger has {length} entries: its tail was cut",
            )
        )
    for (sender, _), items in sorted(rewritten.items(), key=lambda kv: kv[0]):
        snap = by_writer[sender]
        items.sort(key=lambda item: item[1].sender_count)
        r_snap, r = items[0]
        actual = sorted(known[sender][1][r.sender_count])
        more = f" (and {len(items) - 1} later heads)" if len(items) > 1 else ""
        out.append(
            Finding(
                snap.path,
                r.sender_count,
                "entry_hash",
                f"{_writer_of(r_snap)!r} recorded {sender!r}'s ledger head at count {r.sender_count} as "
                f"{r.sender_head[:16]}\u2026 ({Path(r_snap.path).name} entry {r.seq}), but entry {r.sender_count} "
                f"here is {actual[0][:16] if actual else '?'}\u2026: this ledger was rewritten{more}",
            )
        )
    return out


def load_snapshots(paths: Iterable[PathLike]) -> tuple[list[LedgerSnapshot], list[Finding]]:
    """Read each ledger once; unreadable files become ``file`` findings."""
    snaps: list[LedgerSnapshot] = []
    out: list[Finding] = []
    for p in paths:
        try:
            snaps.append(read_ledger(p))
        except LedgerError as exc:
            out.append(Finding(str(p), None, "file", _error_text(exc, str(p))))
    return snaps, out


def verify_snapshots(
    snaps: Sequence[LedgerSnapshot],
    trusted_keys: TrustedKeys | None = None,
    run_id: str | None = None,
    *,
    ca: CALike | None = None,
    bindings: Mapping[str, object] | None = None,
) -> list[Finding]:
    """Verify each snapshot alone, then cross-check them (see :func:`verify_run`)."""
    out: list[Finding] = []
    if ca is None:
        ca = getattr(trusted_keys, "ca_cert", None)
    if ca is not None:
        found, trusted_keys = check_key_bindings(snaps, ca, trusted_keys, bindings)
        out += found
    for snap in snaps:
        out += verify_snapshot(snap, trusted_keys, run_id)
    return out + cross_check_snapshots(snaps, run_id)


def check_key_bindings(
    snaps: Sequence[LedgerSnapshot],
    ca: CALike,
    trusted_keys: TrustedKeys | None = None,
    bindings: Mapping[str, object] | None = None,
) -> tuple[list[Finding], dict[str, bytes | str]]:
    """Check that each ledger's key is bound to its writer's certificate under ``ca``.

    Parameters
    ----------
    snaps
        The ledgers.
    ca
        The federation CA certificate (path, PEM bytes or certificate).
    trusted_keys
        A key registry (e.g. the coordinator's ``signing_keys.json``): a key it
        lists that differs from the certificate-bound key is reported.
    bindings
        Writer -> binding document (or its path); default: the
        ``ledger_key_binding.json`` beside each ledger.

    Returns
    -------
    (findings, keys)
        ``key_binding`` findings, and the keys to judge each ledger under: the
        certificate-bound key where the binding holds, else the registry's or
        (already reported) the ledger's own.
    """
    from fedrisk.audit.key_binding import BINDING_FILE, check_binding, load_ca, read_binding

    cert = load_ca(ca)
    out: list[Finding] = []
    keys: dict[str, bytes | str] = {}
    for snap in snaps:
        f = snap.path
        writer = _writer_of(snap)
        meta_key = _as_key_bytes(str(snap.meta.get("public_key", "")))
        if writer is None or meta_key is None:
            continue  # reported by verify_ledger
        listed = None if trusted_keys is None else trusted_keys.get(writer)
        source = bindings.get(writer) if bindings is not None else Path(f).parent / BINDING_FILE
        doc: object = source
        if isinstance(source, str | os.PathLike):
            doc = None
            if Path(source).exists():
                try:
                    doc = read_binding(source)
                except LedgerError as exc:
                    out.append(Finding(f, None, "key_binding", str(exc)))
                    keys[writer] = listed if listed is not None else meta_key
                    continue
        if doc is None:
            out.append(
                Finding(
                    f,
                    None,
                    "key_binding",
                    f"no certificate binding for {writer!r}'s ledger key {key_id_of(meta_key)} ({BINDING_FILE} beside the ledger): nobody vouches for this key",
                )
            )
            keys[writer] = listed if listed is not None else meta_key
            continue
        result = check_binding(doc, writer=writer, ca=cert)
        for problem in result.problems:
            out.append(Finding(f, None, "key_binding", problem))
        if result.bound_key is None:
            keys[writer] = listed if listed is not None else meta_key
            continue
        bound = result.bound_key
        keys[writer] = bound
        if bound != meta_key:
            out.append(
                Finding(
                    f,
                    None,
                    "key_binding",
                    f"ledger is signed by key {key_id_of(meta_key)}, but {writer!r}'s certificate {result.subject} "
                    f"(sha256 {str(result.cert_sha256)[:16]}\u2026) binds key {key_id_of(bound)}: the ledger key was swapped",
                )
            )
        listed_raw = _as_key_bytes(listed) if listed is not None else None
        if listed is not None and listed_raw != bound:
            shown = key_id_of(listed_raw) if listed_raw is not None else "(malformed)"
            out.append(Finding(f, None, "key_binding", f"the key registry lists key {shown} for {writer!r}, but its certificate binds key {key_id_of(bound)}"))
    return out, keys


def cross_check(paths: Iterable[PathLike], run_id: str | None = None) -> list[Finding]:
    """Check a run's ledgers against each other.

    Parameters
    ----------
    paths
        Every node's ledger file of the run (coordinator and parties).
    run_id
        The run the entries must belong to; ``None`` = the most common one.

    Returns
    -------
    list of Finding
        Unpaired or mismatching messages (named on both sides), plaintext
        crossings, ciphertexts without a key fingerprint, foreign run ids,
        and peers whose ledger is missing. Empty when consistent.
    """
    snaps, out = load_snapshots(paths)
    return out + cross_check_snapshots(snaps, run_id)


def verify_run(
    paths: Iterable[PathLike],
    trusted_keys: TrustedKeys | None = None,
    run_id: str | None = None,
    *,
    ca: CALike | None = None,
    bindings: Mapping[str, object] | None = None,
) -> list[Finding]:
    """Run :func:`verify_ledger` on every file, then :func:`cross_check` them.

    With ``ca`` (the federation CA certificate; also taken from a
    ``trusted_keys`` that carries ``ca_cert``, as
    :func:`fedrisk.audit.run_files.collect_ledgers` returns it), each ledger's
    key must be bound to its writer's certificate (:func:`check_key_bindings`)
    and entries are judged under the bound key.

    Each file is read once. Returns every finding; empty means the run's
    evidence is intact and consistent.
    """
    snaps, out = load_snapshots(paths)
    return out + verify_snapshots(snaps, trusted_keys, run_id, ca=ca, bindings=bindings)
