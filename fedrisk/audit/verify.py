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

What a single file cannot show: an attacker holding the writer's key can
rewrite that whole ledger consistently, and anyone can truncate its tail.
Both are caught by :func:`cross_check` as long as the peer's ledger is intact.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrisk.audit.entry import (
    BODY_FIELDS,
    FORMAT,
    ContentClass,
    Direction,
    LedgerEntry,
    canonical_json,
    entry_hash_of,
    genesis_hash,
    key_id_of,
    signed_message,
    verify_signature,
)
from fedrisk.audit.store import TRIGGERS, LedgerMeta, LedgerSnapshot, read_ledger
from fedrisk.errors import LedgerError

PathLike = str | os.PathLike[str]
TrustedKeys = Mapping[str, bytes | str]

_META_KEYS = frozenset({"format", "writer", "public_key", "key_id", "created_us", "genesis_hash", "sealed"})
# Fields both ends of a message must agree on (run_id is checked run-wide).
_PAIRED_FIELDS = ("round", "step", "message_type", "payload_sha256", "size_bytes", "content_class", "key_fingerprint")
_MISMATCH_WORD = {"payload_sha256": "hash", "size_bytes": "size"}
_DIRECTIONS = frozenset(d.value for d in Direction)
_CLASSES = frozenset(c.value for c in ContentClass)


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
    for key in sorted(set(map(str, snap.meta)) - _META_KEYS):
        out.append(Finding(f, None, f"meta.{key}", "unexpected meta row"))
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
    try:
        key = Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        out.append(Finding(f, None, "meta.public_key", "not a valid Ed25519 public key"))
        key = None
    return out, _KeyView(meta.writer, key, key_id_of(pub), expected_genesis)


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
            out.append(
                Finding(f, seq, "receiver", f"received entry in {writer!r}'s ledger names receiver {_short(entry.receiver)}")
            )
    return out


def verify_snapshot(snap: LedgerSnapshot, trusted_keys: TrustedKeys | None = None) -> list[Finding]:
    """Verify an already-read ledger (see :func:`verify_ledger`)."""
    f = snap.path
    findings, view = _check_meta(snap, trusted_keys)
    checks = [
        (entry, _check_entry(f, entry, body, view)) for entry, body in zip(snap.entries, snap.bodies, strict=True)
    ]
    # Walk the chain in signed order, so a renumbered or reordered entry is
    # named once (its seq field) instead of opening spurious gaps.
    checks.sort(key=lambda ec: ec[1].position)
    expected = 1
    prev_links: set[str] = {view.genesis} if view.genesis else set()
    for entry, check in checks:
        pos = check.position
        findings += check.findings or _check_semantics(f, entry, view.writer)
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
        prev_links = check.links
        expected = pos + 1
    return findings


def verify_ledger(path: PathLike, trusted_keys: TrustedKeys | None = None) -> list[Finding]:
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

    Returns
    -------
    list of Finding
        Empty when the ledger is intact.
    """
    name = str(path)
    try:
        snap = read_ledger(path)
    except LedgerError as exc:
        return [Finding(name, None, "file", _error_text(exc, name))]
    return verify_snapshot(snap, trusted_keys)


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
            if e.content_class == ContentClass.PLAINTEXT.value:
                out.append(
                    Finding(f, seq, "content_class", f"plaintext crossed the party line {e.sender} -> {e.receiver} (violation)")
                )
            if e.content_class in (ContentClass.CIPHERTEXT.value, ContentClass.MASKED.value) and not e.key_fingerprint:
                out.append(Finding(f, seq, "key_fingerprint", f"{e.content_class} payload without a key fingerprint"))
            key = (e.message_id, e.sender, e.receiver)
            if e.direction == Direction.SENT.value and e.sender == writer:
                sent[key].append((snap, e))
            elif e.direction == Direction.RECEIVED.value and e.receiver == writer:
                received[key].append((snap, e))
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
    for (path, peer), (first, count) in sorted(absent.items()):
        out.append(
            Finding(path, first, "peer", f"no ledger of {peer!r} among the checked files; {count} {'entry' if count == 1 else 'entries'} cannot be cross-checked")
        )
    return sorted(out, key=lambda x: (x.file, x.seq if x.seq is not None else -1, x.field))


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
) -> list[Finding]:
    """Verify each snapshot alone, then cross-check them (see :func:`verify_run`)."""
    out: list[Finding] = []
    for snap in snaps:
        out += verify_snapshot(snap, trusted_keys)
    return out + cross_check_snapshots(snaps, run_id)


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
) -> list[Finding]:
    """Run :func:`verify_ledger` on every file, then :func:`cross_check` them.

    Each file is read once. Returns every finding; empty means the run's
    evidence is intact and consistent.
    """
    snaps, out = load_snapshots(paths)
    return out + verify_snapshots(snaps, trusted_keys, run_id)
