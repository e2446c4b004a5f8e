"""What a role really receives: a parse-based view of fedrisk's Flower messages, and the probes run on it.

The privacy tests (``tests/test_attack_*.py``) capture every real message of an
in-process federation on the :class:`~fedrisk.federation.inprocess.InProcessGrid`
tap and hand the messages one role receives to :func:`view_of`. The view never
trusts the sender's declared content class: it walks *every* record of every
message — every blob of every ``ArrayRecord``, every config and metric value,
JSON nested in strings, payloads nested in payloads — and classifies each part
by parsing it with the real loaders:

* ``ciphertext``: a fedrisk frame (``FRSK``/``FRCV``) whose every SEAL ciphertext
  loads under a public context this role holds, re-serialises to exactly the
  same bytes (no trailing or altered data) and is not transparent (a
  "ciphertext" with an all-zero mask polynomial would be plaintext);
* ``foreign_ciphertext``: shaped like one, under a context the role does not hold;
* ``public_context``: a TenSEAL/fedrisk CKKS context that holds no secret key —
  checked with ``is_private()``, ``has_secret_key()`` *and* an actual decryption
  attempt that must raise (``secret_context`` otherwise);
* ``sealed``: an AEAD envelope (``FRSE``, the PSI answer) whose ciphertext looks
  random (does not compress);
* ``blinded_points``: PSI point sets (distinct, random-looking);
* ``row_set`` / ``masked`` / ``structure``: protocol payloads that are public by
  protocol (row splits, node row sets, masked gradients, split indices), parsed
  by their own payload classes so their numbers can be probed;
* ``scalar`` / ``text`` / ``plaintext_numbers``: config values;
* ``unparsed``: anything else — always a finding.

Probes (:func:`audit`) then look in the whole view for labels and residuals —
in every row order that exists (the label holder's *secret training order*,
its training rows only, and its CSV order), by correlation of every readable
numeric vector (sliding windows for longer ones) and by byte patterns of every
window of the label vector in eleven encodings, anywhere in a part (not only its
first bytes) — for raw IDs (credit codes, by a scan of all bytes, ciphertexts
included), their SHA-256 and their unblinded hash-to-curve points, for another
party's feature columns, and for counts that must stay hidden (the PSI
intersection size) in every number and key name. Thresholds are derived from
the sample size (a null correlation of ``n`` values has standard error
``1/sqrt(n)``; the bound is 6 standard errors plus the maximum of the offsets
tried), so a clean run does not trip them by chance and any planted leak does.
:func:`ciphertext_size_findings` is the size attack (a ciphertext must be as long
as an encryption of zeros at its level); :func:`label_recovery` scores a label
guess against the base rate with a margin of 4 standard errors.
"""

from __future__ import annotations

import hashlib
import json
import functools
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tenseal as ts
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from fedrisk.wire.exchange import read_header

# --------------------------------------------------------------------------- kinds

CIPHERTEXT = "ciphertext"
FOREIGN = "foreign_ciphertext"
SEALED = "sealed"
PUBLIC_CONTEXT = "public_context"
SECRET_CONTEXT = "secret_context"
POINTS = "blinded_points"
ROWS = "row_set"
MASKED = "masked"
STRUCTURE = "structure"
SCALAR = "scalar"
TEXT = "text"
NUMBERS = "plaintext_numbers"
UNPARSED = "unparsed"

#: Never acceptable in any role's view.
ALWAYS_FORBIDDEN = frozenset({FOREIGN, SECRET_CONTEXT, UNPARSED})
#: What may cross a party line at all (``plaintext_numbers`` — a long plain vector — may not).
PUBLIC_OR_ENCRYPTED = frozenset({CIPHERTEXT, SEALED, PUBLIC_CONTEXT, POINTS, ROWS, MASKED, STRUCTURE, SCALAR, TEXT})

#: Plain numeric lists longer than this are ``plaintext_numbers``, not parameters.
MAX_PARAMETER_LIST = 64
#: A masked value hides its content behind a uniform mask of 2^36 (vertical LR); 2^20 is a generous floor.
MIN_MASK_MAGNITUDE = 2.0**20


# --------------------------------------------------------------------------- capture


@dataclass
class Captured:
    """One message as it crossed the grid, with the party node it went to or came from (by routing)."""

    index: int
    direction: str  # "to_party" or "to_coordinator"
    node_id: int
    party: str
    message_type: str
    content: RecordDict
    state: dict = field(default_factory=dict)

    @property
    def sender(self) -> str:
        return "coordinator" if self.direction == "to_party" else self.party

    @property
    def receiver(self) -> str:
        return self.party if self.direction == "to_party" else "coordinator"


class Tap:
    """The InProcessGrid tap: keeps every message, runs hooks (snapshots of party state) as each passes.

    ``mutators`` run *before* the message is recorded and delivered (they may alter
    it in place: planted leaks), ``hooks`` after it is recorded, before delivery.
    """

    def __init__(self) -> None:
        self.messages: list[Captured] = []
        self.hooks: list[Callable[[Captured], None]] = []
        self.mutators: list[Callable[[str, int, Any], None]] = []
        self.names: dict[int, str] = {}
        self.grid = None

    def bind(self, grid) -> "Tap":
        self.grid = grid
        self.names = {node_id: str(ctx.node_config["party"]) for node_id, ctx in grid.contexts.items()}
        return self

    def __call__(self, direction: str, node_id: int, msg) -> None:
        for mutate in self.mutators:
            mutate(direction, node_id, msg)
        captured = Captured(
            len(self.messages),
            direction,
            node_id,
            self.names.get(node_id, f"node:{node_id}"),
            msg.metadata.message_type,
            msg.content,
        )
        self.messages.append(captured)
        for hook in self.hooks:
            hook(captured)

    def received_by(self, role: str) -> list[Captured]:
        """What ``role`` holds: the coordinator every message (it receives or builds each); a party what is routed to it."""
        if role == "coordinator":
            return list(self.messages)
        return [m for m in self.messages if m.direction == "to_party" and m.party == role]

    def close(self) -> None:
        """Forget the captured messages and the parties' in-process runtimes (their keys and tables)."""
        from fedrisk.parties.registry import forget_runtime

        for ctx in self.grid.contexts.values() if self.grid is not None else ():
            runtime = forget_runtime(str(ctx.node_config.get("party-settings")))
            for protocols in getattr(runtime, "_runs", {}).values():
                for protocol in protocols.values():
                    try:
                        getattr(protocol, "close", lambda: None)()
                    except Exception:
                        pass
        self.messages.clear()

    def runtime(self, party: str):
        """The party's in-process runtime (its own state: what *it* knows)."""
        from fedrisk.parties.registry import runtime_for_context

        node = next(n for n, name in self.names.items() if name == party)
        return runtime_for_context(self.grid.contexts[node])

    def protocol(self, party: str, class_name: str):
        runtime = self.runtime(party)
        for protocols in runtime._runs.values():
            if class_name in protocols:
                return protocols[class_name]
        raise LookupError(f"party {party!r} has no protocol {class_name!r}")


def run_federation(root: Path, parties: list, run_config: dict, tap: Tap, *, expect_error: bool = False) -> dict:
    """Run the fedrisk ServerApp over an InProcessGrid whose every message goes through ``tap``."""
    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.server_app import app as server_app

    grid = InProcessGrid(parties, tap=tap)
    tap.bind(grid)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={"run-dir": str(root), **run_config})
    try:
        server_app(grid, context)
    except Exception:
        if not expect_error:
            raise
    return json.loads((Path(root) / "coordinator" / "result.json").read_text())


# --------------------------------------------------------------------------- keys


@dataclass
class Key:
    """A public CKKS or BFV context a role holds, with every fingerprint its payloads may carry."""

    context: ts.Context
    fingerprints: set[str]
    _runtime: Any = None

    @property
    def runtime(self):
        from fedrisk.crypto.bfv import BFVRuntime
        from fedrisk.crypto.encrypted_matvec import CKKSRuntime
        from fedrisk.errors import CryptoError

        if self._runtime is None:
            try:
                self._runtime = BFVRuntime.for_context(self.context)  # SecureBoost's histogram key
            except CryptoError:
                self._runtime = CKKSRuntime.for_context(self.context)
        return self._runtime


class KeyRing:
    """The verified public contexts found in a view, by fingerprint."""

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def add(self, context: ts.Context, extra: Iterable[str] = ()) -> Key:
        from fedrisk.crypto.encrypted_matvec import context_fingerprint

        fps = {context_fingerprint(context), *extra}
        for key in self.keys:
            if key.fingerprints & fps:
                key.fingerprints |= fps
                return key
        key = Key(context, fps)
        self.keys.append(key)
        return key

    def get(self, fingerprint: str) -> Key | None:
        return next((k for k in self.keys if fingerprint in k.fingerprints), None)

    @property
    def fingerprints(self) -> set[str]:
        return set().union(*(k.fingerprints for k in self.keys)) if self.keys else set()


def decrypts(context: Any) -> bool:
    """True if ``context`` can decrypt: encrypt a value with it (CKKS or BFV, whichever it is) and *try*
    (a public context raises). A recipes-layer CKKS context is tried through its TenSEAL context."""
    context = getattr(context, "tenseal_context", context)
    for encrypt, probe in ((ts.ckks_vector, 0.5), (ts.bfv_vector, 5)):
        try:
            vector = encrypt(context.copy(), [probe])  # on a copy: TenSEAL's BFV encrypt changes the context's serialisation
        except Exception:
            continue  # not this scheme, or no public key — certainly no decryption either
        try:
            value = vector.decrypt()
        except ValueError as err:
            if "secret" not in str(err).lower():
                raise AssertionError(f"decrypt failed for another reason than a missing secret key: {err}") from None
            return False
        return bool(abs(value[0] - probe) < 1e-3)
    return False


# --------------------------------------------------------------------------- parts


@dataclass
class Part:
    """One atomic piece of a message, classified by parsing."""

    message: int
    where: str
    kind: str
    size: int
    detail: str = ""
    key: str = ""  # the config key / JSON key / blob name it sits under
    value: Any = None  # scalars and text
    vectors: list[tuple[str, np.ndarray]] = field(default_factory=list)  # readable numbers, for the probes
    readable: bytes | None = None  # bytes the role can read in the clear, for byte probes
    raw: bytes | None = None  # every byte (ciphertexts too), for the ID scan
    fingerprint: str = ""
    levels: list[tuple[int, int, str]] = field(default_factory=list)  # (level, serialised size, form: "full"/"seeded"/"half") per ciphertext
    points: np.ndarray | None = None


@dataclass
class MessageView:
    captured: Captured
    declared: str
    step: str
    round: int
    parts: list[Part]
    size: int

    @property
    def index(self) -> int:
        return self.captured.index


@dataclass
class View:
    role: str
    messages: list[MessageView]
    ring: KeyRing

    @property
    def parts(self) -> list[Part]:
        return [p for m in self.messages for p in m.parts]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.parts:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out


class _Parser:
    """Classifies the parts of one role's messages; contexts are collected in a first pass."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._context_cache: dict[bytes, tuple[str, str, set[str], ts.Context | None]] = {}

    # -- contexts ---------------------------------------------------------------------
    def context(self, data: bytes) -> tuple[str, str, set[str], ts.Context | None] | None:
        """(kind, detail, fingerprints, context) if ``data`` is a CKKS context, else None."""
        digest = hashlib.sha256(data).digest()
        if digest in self._context_cache:
            return self._context_cache[digest]
        found = self._context(data)
        if found is not None:
            self._context_cache[digest] = found
        return found

    def _context(self, data: bytes):
        from fedrisk.crypto import ckks
        from fedrisk.crypto.seal_runtime import context_anatomy, context_fingerprint

        if data[:4] == b"FRSK" and data[5:9] in (ckks._KIND_PUBLIC, ckks._KIND_SECRET):  # a recipes-layer CKKS context frame
            try:
                kind, params, tenseal_bytes = ckks._unpack_context(data)
                anatomy = context_anatomy(tenseal_bytes)
                context = ts.context_from(tenseal_bytes)
            except Exception as err:
                return UNPARSED, f"CKKS context frame that does not load: {err}", set(), None
            secret = kind != ckks._KIND_PUBLIC or anatomy.has_secret_key or context.is_private() or context.has_secret_key()
            if secret or decrypts(context):
                return SECRET_CONTEXT, "fedrisk CKKS context holding a SECRET key", set(), None
            try:
                public = ckks.PublicContext.from_bytes(data)
            except Exception as err:
                return UNPARSED, f"CKKS public context frame that fedrisk refuses: {err}", set(), None
            return (
                PUBLIC_CONTEXT,
                "fedrisk public CKKS context (decrypt refused)",
                {public.fingerprint, context_fingerprint(public.tenseal_context)},
                public.tenseal_context,
            )
        if len(data) < 1024 or not _is_protobuf(data, {1, 2, 3, 4}):
            return None
        try:
            anatomy = context_anatomy(data)
        except Exception:
            return None
        if not anatomy.encryption_parameters:
            return None
        try:
            context = ts.context_from(data)
        except Exception:
            return None
        if anatomy.has_secret_key or context.is_private() or context.has_secret_key() or decrypts(context):
            return SECRET_CONTEXT, "TenSEAL context holding a SECRET key", set(), None
        return PUBLIC_CONTEXT, "TenSEAL public context (decrypt refused)", {context_fingerprint(context)}, context

    # -- blobs ------------------------------------------------------------------------
    def blob(self, data: bytes, where: str, key: str, msg: int, hints: dict) -> list[Part]:
        data = bytes(data)
        base = dict(message=msg, where=where, size=len(data), key=key, raw=data)
        found = self.context(data)
        if found is not None:
            kind, detail, fps, _ = found
            return [Part(kind=kind, detail=detail, fingerprint=",".join(sorted(fps)), **base)]
        magic = data[:4]
        if magic == b"FRSK":
            return [self.frame(data, base, hints)]
        if magic == b"FRCV":
            return [self.fedrisk_vector(data, base)]
        if magic == b"FRSE":
            return [self.envelope(data, base)]
        if magic == b"FRPS":
            return self.psi(data, base)
        rows = _as_bitmap(data, hints.get("row_counts", ()))
        if rows is not None:
            return [Part(kind=ROWS, detail=f"bitmap over {rows.size} rows", vectors=[("bitmap", rows.astype(float))], readable=data, **base)]
        return [Part(kind=UNPARSED, detail="bytes that parse as no fedrisk payload", vectors=_interpretations(data), readable=data, **base)]

    def _verify_ciphertexts(self, blobs: list[bytes], fingerprint: str) -> tuple[str, str, list[tuple[int, int, str]]]:
        key = self.ring.get(fingerprint)
        if key is None:
            return FOREIGN, f"ciphertexts under context {fingerprint}, which this role does not hold", []
        levels = []
        for i, blob in enumerate(blobs):
            try:
                ct = key.runtime.load(blob)
            except Exception as err:
                return UNPARSED, f"blob {i} is not a SEAL ciphertext under {fingerprint}: {err}", []
            seeded = False
            full = key.runtime.dump(ct)
            if full != bytes(blob):
                if not _seeded_serialisation(bytes(blob), full):
                    return UNPARSED, f"blob {i} loads as a ciphertext but carries other bytes (not its canonical serialisation)", []
                seeded = True  # SEAL's seeded form: c0 and the seed of c1, which the load expanded
            if ct.is_transparent():
                return UNPARSED, f"blob {i} is a transparent ciphertext: its content is in the clear", []
            if ct.size() < 2:
                return UNPARSED, f"blob {i} has {ct.size()} polynomials", []
            levels.append((key.runtime.level_of(ct), len(blob), "seeded" if seeded else "full"))
        return CIPHERTEXT, f"{len(blobs)} ciphertext(s) under {fingerprint}", levels

    def _verify_masked_histograms(self, blobs: list[bytes], fingerprint: str) -> tuple[str, str, list[tuple[int, int, str]]]:
        """Each blob half a ciphertext under ``fingerprint``: all of ``c1``, ``c0`` at one total per 512-row block and
        column — loaded as a SEAL ciphertext, and its bytes exactly what those residues re-packed give."""
        from fedrisk.crypto import encrypted_bins as eb
        from fedrisk.crypto.frames import pack_frame, unpack_frame

        key = self.ring.get(fingerprint)
        if key is None:
            return FOREIGN, f"masked histograms under context {fingerprint}, which this role does not hold", []
        levels = []
        for i, blob in enumerate(blobs):
            try:
                kind, fp, header, parts = unpack_frame(bytes(blob))
                layout = eb.BinMatrixLayout(1, 1, key.runtime.slots, int(header["rows_per_block"]))
                ct = eb.load_masked_histogram(key.context, bytes(blob), layout)
            except Exception as err:
                return UNPARSED, f"blob {i} is not a masked histogram under {fingerprint}: {err}", []
            if pack_frame(kind, fp, {"level": eb.WIRE_LEVEL, "rows_per_block": layout.rows_per_block}, parts) != bytes(blob):
                return UNPARSED, f"blob {i} loads as a masked histogram but carries other bytes", []
            if ct.is_transparent():
                return UNPARSED, f"blob {i} is a transparent ciphertext: its content is in the clear", []
            levels.append((key.runtime.level_of(ct), len(blob), "half"))
        return CIPHERTEXT, f"{len(blobs)} masked histogram(s), half ciphertexts under {fingerprint}", levels

    def frame(self, data: bytes, base: dict, hints: dict) -> Part:
        from fedrisk.crypto.frames import unpack_frame

        try:
            kind, fp, header, blobs = unpack_frame(data)
        except Exception as err:
            return Part(kind=UNPARSED, detail=f"FRSK bytes that are no frame: {err}", vectors=_interpretations(data), readable=data, **base)
        name = kind.decode(errors="replace")
        scalars, vectors = _walk_json(header)
        payload = _parse_payload(kind, data)
        if isinstance(payload, Exception):
            return Part(
                kind=UNPARSED, detail=f"{name} frame its own parser refuses: {payload}", vectors=_interpretations(data), readable=data, fingerprint=fp, **base
            )
        head_bytes = json.dumps(header).encode()
        if payload is not None and kind in (b"VMSK", b"SMTT"):  # vertical LR's masked values; SecureBoost's totals, uniform mod t under the bank's mask
            if kind == b"VMSK":
                values = np.asarray(payload.values, dtype=float)
            else:
                values = np.concatenate([np.asarray(t, dtype=float) for t in payload.totals]) if payload.totals else np.zeros(0)
            return Part(
                kind=MASKED,
                detail=f"{name}: {values.size} masked {'values' if kind == b'VMSK' else 'totals'}",
                vectors=[("masked", values), *vectors],
                readable=data,
                fingerprint=fp,
                value=scalars,
                **base,
            )
        if kind == b"SLAY" and payload is not None and blobs:  # a feature holder's bins: its public key, then ciphertexts under it
            found = self.context(bytes(blobs[0]))
            if found is None or found[0] != PUBLIC_CONTEXT or found[3] is None:
                return Part(
                    kind=UNPARSED if found is None else found[0],
                    detail=f"{name}: its key is {found[1] if found else 'no context'}",
                    readable=data,
                    fingerprint=fp,
                    **base,
                )
            bins_fp = next(iter(found[2]))
            self.ring.add(found[3])
            kind_out, detail, levels = self._verify_ciphertexts(blobs[1:], bins_fp)
            return Part(
                kind=kind_out, detail=f"{name}: {detail}", vectors=vectors, readable=head_bytes, fingerprint=bins_fp, levels=levels, value=scalars, **base
            )
        if kind == b"SMHB" and blobs:  # masked histograms under the receiving holder's key (announced in its SLAY)
            for other in self.ring.fingerprints - {fp}:
                kind_out, detail, levels = self._verify_masked_histograms(blobs, other)
                if kind_out == CIPHERTEXT:
                    return Part(
                        kind=CIPHERTEXT,
                        detail=f"{name}: {detail}",
                        vectors=vectors,
                        readable=head_bytes,
                        fingerprint=other,
                        levels=levels,
                        value=scalars,
                        **base,
                    )
            return Part(
                kind=FOREIGN, detail=f"{name}: ciphertexts under a key this role was never shown", vectors=vectors, readable=head_bytes, fingerprint=fp, **base
            )
        rows = _row_sets(payload)
        if rows:
            return Part(
                kind=ROWS, detail=f"{name}: {len(rows)} row set(s) and indices", vectors=[*rows, *vectors], readable=data, fingerprint=fp, value=scalars, **base
            )
        if not blobs:
            return Part(
                kind=STRUCTURE, detail=f"{name}: header only {sorted(header)}", vectors=vectors, readable=head_bytes, fingerprint=fp, value=scalars, **base
            )
        kind_out, detail, levels = self._verify_ciphertexts(blobs, fp)
        if kind_out != CIPHERTEXT:
            return Part(
                kind=kind_out,
                detail=f"{name}: {detail}",
                vectors=[*vectors, *_interpretations(b"".join(blobs))],
                readable=data if kind_out == UNPARSED else head_bytes,
                fingerprint=fp,
                **base,
            )
        return Part(kind=CIPHERTEXT, detail=f"{name}: {detail}", vectors=vectors, readable=head_bytes, fingerprint=fp, levels=levels, value=scalars, **base)

    def fedrisk_vector(self, data: bytes, base: dict) -> Part:
        from fedrisk.crypto.ckks import EncryptedVector

        try:
            ev = EncryptedVector.from_bytes(data)
        except Exception as err:
            return Part(kind=UNPARSED, detail=f"FRCV bytes that are no encrypted vector: {err}", vectors=_interpretations(data), readable=data, **base)
        key = self.ring.get(ev.fingerprint)
        if key is None:
            return Part(kind=FOREIGN, detail=f"encrypted vector under {ev.fingerprint}, a context this role does not hold", fingerprint=ev.fingerprint, **base)
        levels = []
        for i, chunk in enumerate(ev.chunks):
            fields = _protobuf_fields(chunk)
            if fields is None or set(fields) - {1, 2, 3}:
                return Part(kind=UNPARSED, detail=f"chunk {i} is not a TenSEAL CKKS vector", readable=data, **base)
            kind, detail, lv = self._verify_ciphertexts(fields.get(2, []), ev.fingerprint)
            if kind != CIPHERTEXT:
                return Part(kind=kind, detail=f"chunk {i}: {detail}", readable=data, **base)
            try:
                same = ts.ckks_vector_from(key.context, chunk).serialize() == chunk
            except Exception as err:
                return Part(kind=UNPARSED, detail=f"chunk {i} does not load as a TenSEAL vector: {err}", readable=data, **base)
            if not same:
                return Part(kind=UNPARSED, detail=f"chunk {i} carries bytes beyond its ciphertexts", readable=data, **base)
            levels += lv
        return Part(
            kind=CIPHERTEXT,
            detail=f"encrypted vector of {ev.length} values, {len(ev.chunks)} chunk(s) under {ev.fingerprint}",
            fingerprint=ev.fingerprint,
            levels=levels,
            **base,
        )

    def envelope(self, data: bytes, base: dict) -> Part:
        header, body = data[:38], data[38:]
        if len(data) < 38 + 16 or header[4] != 1 or header[5] not in (0, 1):
            return Part(kind=UNPARSED, detail="FRSE bytes that are no sealed envelope", vectors=_interpretations(data), readable=data, **base)
        if not _looks_random(body):
            return Part(
                kind=UNPARSED, detail="a 'sealed' envelope whose body compresses: not AEAD output", vectors=_interpretations(body), readable=data, **base
            )
        return Part(kind=SEALED, detail=f"AEAD envelope, {len(body) - 16} sealed bytes", readable=header, **base)

    def psi(self, data: bytes, base: dict) -> list[Part]:
        from fedrisk.crypto.psi_messages import PSIResult, decode_psi_message

        try:
            message = decode_psi_message(data)
        except Exception as err:
            return [Part(kind=UNPARSED, detail=f"FRPS bytes that are no PSI message: {err}", vectors=_interpretations(data), readable=data, **base)]
        if isinstance(message, PSIResult):
            if not _looks_random(message.ciphertext):
                return [Part(kind=UNPARSED, detail="PSI result whose sealed bitmap compresses", readable=data, **base)]
            return [
                Part(
                    kind=SEALED, detail=f"PSI result: sealed bitmap of {message.n_bits} bits", value=message.n_bits, readable=message.associated_data(), **base
                )
            ]
        points = message.points_array()
        distinct = np.unique(points.view(f"V{points.shape[1]}").ravel()).size == points.shape[0] if points.size else True
        if not distinct or not _looks_random(message.points):
            return [Part(kind=UNPARSED, detail=f"{type(message).__name__} whose points repeat or compress", readable=data, **base)]
        return [
            Part(
                kind=POINTS,
                detail=f"{type(message).__name__}: {points.shape[0]} points",
                points=points,
                value=points.shape[0],
                readable=data[: len(data) - len(message.points)],
                **base,
            )
        ]

    # -- values -----------------------------------------------------------------------
    def value(self, value: Any, where: str, key: str, msg: int, hints: dict) -> list[Part]:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.blob(bytes(value), where, key, msg, hints)
        if isinstance(value, bool) or isinstance(value, (int, float)):
            return [Part(msg, where, SCALAR, 8, key=key, value=value, readable=str(value).encode())]
        if isinstance(value, str):
            raw = value.encode("utf-8")
            stripped = value.strip()
            if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null"):
                try:
                    decoded = json.loads(value)
                except ValueError:
                    decoded = None
                if decoded is not None:
                    return [*self.json(decoded, where + " (JSON)", key, msg), Part(msg, where, TEXT, len(raw), key=key, value=value, readable=raw, raw=raw)]
            return [Part(msg, where, TEXT, len(raw), key=key, value=value, readable=raw, raw=raw)]
        if isinstance(value, list):
            if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and len(value) > MAX_PARAMETER_LIST:
                vector = np.asarray(value, dtype=float)
                return [
                    Part(
                        msg,
                        where,
                        NUMBERS,
                        8 * len(value),
                        key=key,
                        detail=f"{len(value)} plain numbers",
                        vectors=[("list", vector)],
                        readable=vector.astype("<f8").tobytes(),
                    )
                ]
            out = []
            for i, item in enumerate(value):
                out += self.value(item, f"{where}[{i}]", key, msg, hints)
            return out
        return [Part(msg, where, UNPARSED, 0, key=key, detail=f"value of type {type(value).__name__}")]

    def json(self, value: Any, where: str, key: str, msg: int) -> list[Part]:
        if isinstance(value, dict):
            out = []
            for k, v in value.items():
                out.append(Part(msg, f"{where}.{k} (key)", TEXT, len(str(k)), key=str(k), value=str(k), readable=str(k).encode()))
                out += self.json(v, f"{where}.{k}", str(k), msg)
            return out
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            if len(value) > MAX_PARAMETER_LIST:
                vector = np.asarray(value, dtype=float)
                return [
                    Part(
                        msg,
                        where,
                        NUMBERS,
                        8 * len(value),
                        key=key,
                        detail=f"{len(value)} plain numbers (JSON)",
                        vectors=[("json", vector)],
                        readable=vector.astype("<f8").tobytes(),
                    )
                ]
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                out += self.json(item, f"{where}[{i}]", key, msg)
            return out
        if isinstance(value, str):
            return [Part(msg, where, TEXT, len(value), key=key, value=value, readable=value.encode(), raw=value.encode())]
        if value is None:
            return []
        return [Part(msg, where, SCALAR, 8, key=key, value=value, readable=str(value).encode())]

    # -- messages ---------------------------------------------------------------------
    def message(self, captured: Captured) -> MessageView:
        from fedrisk.wire.exchange import content_digest

        content = captured.content
        header = read_header(content)  # refuses undeclared content (the sender's declaration, kept for reference only)
        _, size = content_digest(content)
        hints = {"row_counts": _row_counts(content)}
        parts: list[Part] = []
        i = captured.index
        for record_name in sorted(content.keys()):
            record = content[record_name]
            if isinstance(record, ArrayRecord):
                for name in record.keys():
                    array = record[name]
                    where = f"msg {i} {captured.sender}->{captured.receiver} {header.step} {record_name}[{name!r}]"
                    if array.stype == "raw" and array.dtype == "uint8":
                        parts += self.blob(array.data, where, name, i, hints)
                    else:
                        values = np.asarray(array.numpy(), dtype=float).ravel()
                        parts.append(
                            Part(
                                i,
                                where,
                                NUMBERS,
                                len(array.data),
                                key=name,
                                detail=f"numpy array {array.dtype}{array.shape}",
                                vectors=[("array", values)],
                                readable=bytes(array.data),
                                raw=bytes(array.data),
                            )
                        )
            elif isinstance(record, (ConfigRecord, MetricRecord)):
                for name in record.keys():
                    where = f"msg {i} {captured.sender}->{captured.receiver} {header.step} {record_name}[{name!r}]"
                    parts.append(Part(i, where + " (key)", TEXT, len(name), key=name, value=name, readable=name.encode()))
                    parts += self.value(record[name], where, name, i, hints)
            else:
                parts.append(Part(i, f"msg {i} record {record_name!r}", UNPARSED, 0, detail=f"record of type {type(record).__name__}"))
        return MessageView(captured, header.content_class, header.step, header.round, parts, size)


def view_of(messages: list[Captured], role: str, own_keys: Iterable[ts.Context] = ()) -> View:
    """Classify every part of ``messages`` (what ``role`` holds) by parsing it.

    ``own_keys``: public copies of keys the role made itself (a SecureBoost feature holder's bins key),
    under which it receives ciphertexts it never received the key of.
    """
    ring = KeyRing()
    for key in own_keys:
        ring.add(key)
    parser = _Parser(ring)
    # First pass: the public contexts this role received (needed to verify ciphertexts), also inside frames (SecureBoost's bins keys).
    for captured in messages:
        for blob in all_blobs(captured.content):
            found = parser.context(blob)
            if found is not None and found[0] == PUBLIC_CONTEXT:
                ring.add(found[3], found[2])
            for inner in _bins_keys(blob):
                found = parser.context(inner)
                if found is not None and found[0] == PUBLIC_CONTEXT:
                    ring.add(found[3], found[2])
    return View(role, [parser.message(c) for c in messages], ring)


# --------------------------------------------------------------------------- secrets and findings


@dataclass
class Secrets:
    """What the attacked role must not learn (ground truth taken from the other parties' own state)."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    residuals: list[np.ndarray] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    forbidden_keys: tuple[str, ...] = ()
    psi_run_id: str | None = None


@dataclass(frozen=True)
class Finding:
    check: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.detail}"


def corr_threshold(n: int, offsets: int = 1) -> float:
    """Largest |correlation| of unrelated vectors of ``n`` values we accept: 6 standard errors + the max over offsets."""
    return (math.sqrt(2.0 * math.log(max(offsets, 1))) + 6.0) / math.sqrt(max(n, 1))


def max_abs_corr(vector: np.ndarray, secret: np.ndarray) -> tuple[float, int]:
    """Max |Pearson correlation| between ``secret`` and every aligned window of ``vector`` (or vice versa); (value, offsets tried)."""
    v = np.asarray(vector, dtype=float)
    s = np.asarray(secret, dtype=float)
    if v.size < 16 or s.size < 16 or not np.all(np.isfinite(v)):
        return 0.0, 1
    if v.size < s.size:
        v, s = s, v  # slide the shorter over the longer
        if s.size < 64:
            return 0.0, 1
    n, length = s.size, v.size
    sc = s - s.mean()
    norm_s = np.sqrt(np.dot(sc, sc))
    if norm_s == 0:
        return 0.0, 1
    std = v.std()
    if std == 0:
        return 0.0, 1
    v = (v - v.mean()) / std
    if length == n:
        denominator = np.sqrt(np.dot(v - v.mean(), v - v.mean()))
        return (float(abs(np.dot(v - v.mean(), sc)) / (denominator * norm_s)) if denominator > 0 else 0.0), 1
    size = 1 << int(math.ceil(math.log2(length + n)))
    cross = np.fft.irfft(np.fft.rfft(v, size) * np.conj(np.fft.rfft(sc, size)), size)[: length - n + 1]
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    window_sum = c1[n:] - c1[:-n]
    window_sq = c2[n:] - c2[:-n]
    var = np.maximum(window_sq - window_sum**2 / n, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(var > 1e-12 * n, cross / (np.sqrt(var) * norm_s), 0.0)
    return float(np.max(np.abs(corr))), length - n + 1


def _encodings(values: np.ndarray, binary: bool) -> list[tuple[str, Callable[[np.ndarray], bytes]]]:
    out: list[tuple[str, Callable[[np.ndarray], bytes]]] = [
        ("<f8", lambda w: w.astype("<f8").tobytes()),
        (">f8", lambda w: w.astype(">f8").tobytes()),
        ("<f4", lambda w: w.astype("<f4").tobytes()),
    ]
    if binary:
        out += [
            ("<i8", lambda w: w.astype("<i8").tobytes()),
            ("<i4", lambda w: w.astype("<i4").tobytes()),
            ("u1", lambda w: w.astype("u1").tobytes()),
            ("bits", lambda w: np.packbits(w.astype(bool)).tobytes()),
            ("bits-little", lambda w: np.packbits(w.astype(bool), bitorder="little").tobytes()),
            ("ascii ints", lambda w: ", ".join(str(int(x)) for x in w).encode()),
            ("ascii ints compact", lambda w: ",".join(str(int(x)) for x in w).encode()),
            ("ascii floats", lambda w: ", ".join(repr(float(x)) for x in w).encode()),
        ]
    return out


def byte_patterns(name: str, values: np.ndarray, *, window: int, step: int, binary: bool) -> dict[bytes, str]:
    """Every ``step``-spaced window of ``window`` values of a secret vector, in every encoding (pattern → description)."""
    values = np.asarray(values)
    out: dict[bytes, str] = {}
    if values.size < window:
        return out
    for start in range(0, values.size - window + 1, step):
        w = values[start : start + window]
        for enc, encode in _encodings(w, binary):
            if enc.startswith("bits") and start % 8:
                continue
            out[encode(w)] = f"{name}[{start}:{start + window}] as {enc}"
    return out


CREDIT_CODE_RE = re.compile(rb"[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}")


def audit(view: View, secrets: Secrets, *, allowed: frozenset[str] = PUBLIC_OR_ENCRYPTED, fingerprint: str | Iterable[str] | None = None) -> list[Finding]:
    """Every check on a view: classes, keys, and every probe. Returns the findings (empty = clean)."""
    return [
        *check_classes(view, allowed, fingerprint),
        *probe_labels(view, secrets),
        *probe_features(view, secrets),
        *probe_ids(view, secrets),
        *probe_counts(view, secrets),
    ]


def check_classes(view: View, allowed: frozenset[str] = PUBLIC_OR_ENCRYPTED, fingerprint: str | Iterable[str] | None = None) -> list[Finding]:
    """Each part must parse as an allowed class; ciphertexts under the federation key (or one of the federation's keys); masked values masked."""
    findings = []
    accepted = None if fingerprint is None else ({fingerprint} if isinstance(fingerprint, str) else set(fingerprint))
    for part in view.parts:
        if part.kind in ALWAYS_FORBIDDEN or part.kind not in allowed:
            findings.append(Finding("class", part.where, f"{part.kind}: {part.detail}"))
        if part.kind == CIPHERTEXT and fingerprint is not None:
            key = view.ring.get(part.fingerprint)
            if key is None or accepted is None or not (accepted & key.fingerprints):
                findings.append(Finding("key", part.where, f"ciphertext under {part.fingerprint}, not the federation key {fingerprint}"))
        if part.kind == MASKED:
            values = next(v for name, v in part.vectors if name == "masked")
            if values.size and np.median(np.abs(values)) < MIN_MASK_MAGNITUDE:
                findings.append(Finding("mask", part.where, f"'masked' values of median magnitude {np.median(np.abs(values)):.3g}: no mask"))
    return findings


def _probe_vectors(view: View, secrets_by_name: dict[str, np.ndarray], check: str, *, rows_threshold: float | None) -> list[Finding]:
    findings = []
    for part in view.parts:
        for name, vector in part.vectors:
            vector = np.asarray(vector, dtype=float)
            if vector.size < 16 or not np.all(np.isfinite(vector)):
                vector = vector[np.isfinite(vector)] if vector.size >= 16 else vector
                if vector.size < 16:
                    continue
            for secret_name, secret in secrets_by_name.items():
                r, offsets = max_abs_corr(vector, secret)
                if part.kind == ROWS:
                    limit = rows_threshold
                    if limit is None:
                        continue
                else:
                    limit = corr_threshold(min(vector.size, secret.size), offsets)
                if r > limit:
                    findings.append(
                        Finding(
                            check, part.where, f"{part.kind} vector {name!r} ({vector.size} values) correlates with {secret_name}: |r| = {r:.3f} > {limit:.3f}"
                        )
                    )
    return findings


def _probe_bytes(view: View, patterns: dict[bytes, str], check: str) -> list[Finding]:
    findings = []
    seen: set[tuple[int, str]] = set()
    for part in view.parts:
        data = part.readable
        if not data:
            continue
        for pattern, what in patterns.items():
            if len(pattern) <= len(data) and pattern in data and (part.message, what) not in seen:
                seen.add((part.message, what))
                offset = data.find(pattern)
                findings.append(Finding(check, part.where, f"{part.kind} part holds {what} at byte {offset}"))
    return findings


def probe_labels(view: View, secrets: Secrets) -> list[Finding]:
    """Labels and residuals in any readable number (correlation, any row order) or byte window (any encoding, anywhere)."""
    vectors = {f"labels ({name})": np.asarray(y, dtype=float) for name, y in secrets.labels.items()}
    for e, d in enumerate(secrets.residuals):
        vectors[f"residual d of epoch {e}"] = np.asarray(d, dtype=float)
    findings = _probe_vectors(view, vectors, "labels", rows_threshold=0.8)
    patterns: dict[bytes, str] = {}
    for name, y in secrets.labels.items():
        patterns.update(byte_patterns(f"labels ({name})", np.asarray(y), window=128, step=128, binary=True))
    for e, d in enumerate(secrets.residuals[:3]):
        patterns.update(byte_patterns(f"residual d of epoch {e}", np.asarray(d), window=64, step=512, binary=False))
    return findings + _probe_bytes(view, patterns, "labels")


def probe_features(view: View, secrets: Secrets) -> list[Finding]:
    """Another party's feature columns in any readable number or byte window."""
    vectors: dict[str, np.ndarray] = {}
    patterns: dict[bytes, str] = {}
    for name, matrix in secrets.features.items():
        matrix = np.asarray(matrix, dtype=float)
        for j in range(matrix.shape[1]):
            column = matrix[:, j]
            if np.nanstd(column) == 0:
                continue
            vectors[f"{name} column {j}"] = np.nan_to_num(column)
            patterns.update(byte_patterns(f"{name} column {j}", np.nan_to_num(column), window=32, step=512, binary=False))
    return _probe_vectors(view, vectors, "features", rows_threshold=None) + _probe_bytes(view, patterns, "features")


def probe_ids(view: View, secrets: Secrets) -> list[Finding]:
    """Raw IDs in any byte (ciphertexts included), their SHA-256, and their unblinded hash-to-curve points."""
    findings = []
    ids = {s.encode("utf-8") for s in secrets.ids}
    if not ids:
        return findings
    codes = all(CREDIT_CODE_RE.fullmatch(i) for i in ids)
    for part in view.parts:
        if part.kind == PUBLIC_CONTEXT:
            continue
        data = part.raw if part.raw is not None else part.readable
        if not data:
            continue
        if codes:
            hits = [m.group(0) for m in CREDIT_CODE_RE.finditer(data) if m.group(0) in ids]
        else:
            readable = part.readable or b""
            hits = [i for i in ids if i in readable]
        if hits:
            findings.append(Finding("ids", part.where, f"{part.kind} part holds {len(hits)} raw ID(s), e.g. {hits[0]!r}"))
    digests = {hashlib.sha256(i).digest() for i in ids}
    prefixes = np.array(sorted({int.from_bytes(d[:8], "little") for d in digests}), dtype="<u8")
    unblinded = _unblinded_points(secrets)
    for part in view.parts:
        data = part.readable if part.kind not in (POINTS,) else part.raw
        if data and len(data) >= 8:
            windows = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
            if np.isin(windows, prefixes).any():
                findings.append(Finding("ids", part.where, f"{part.kind} part holds SHA-256 of an ID"))
        if part.points is not None and unblinded is not None:
            rows = part.points.view("V32").ravel()
            if np.isin(rows, unblinded).any():
                findings.append(Finding("ids", part.where, "PSI points include an ID hashed to the curve and not blinded"))
    return findings


def _unblinded_points(secrets: Secrets):
    if not secrets.psi_run_id:
        return None
    try:
        from fedrisk.crypto.psi_group import hash_domain, hash_ids_to_u
    except ImportError:  # the hash-to-curve module was reorganised: the raw and SHA-256 probes still run
        return None
    points = np.asarray(hash_ids_to_u(hash_domain(secrets.psi_run_id), [s.encode() for s in secrets.ids]), dtype=np.uint8)
    return np.ascontiguousarray(points).view("V32").ravel()


def probe_counts(view: View, secrets: Secrets) -> list[Finding]:
    """Counts that must stay hidden (e.g. the PSI intersection size): in any number, and in no key name."""
    findings = []
    hidden = {int(v): k for k, v in secrets.counts.items()}
    for part in view.parts:
        if part.kind == SCALAR and isinstance(part.value, (int, float)) and not isinstance(part.value, bool):
            if float(part.value).is_integer() and int(part.value) in hidden:
                findings.append(Finding("counts", part.where, f"the number {int(part.value)} = {hidden[int(part.value)]}"))
        if part.kind in (ROWS, MASKED, STRUCTURE, CIPHERTEXT, POINTS, SEALED) and isinstance(part.value, dict):
            for key, v in part.value.items():
                if isinstance(v, int) and not isinstance(v, bool) and v in hidden:
                    findings.append(Finding("counts", part.where, f"payload header field {key!r} = {v} = {hidden[v]}"))
        if part.kind == TEXT and part.where.endswith("(key)"):
            if any(word in str(part.value).lower() for word in secrets.forbidden_keys):
                findings.append(Finding("counts", part.where, f"a field named {part.value!r}"))
    return findings


def probe_json_files(paths: Iterable[Path], secrets: Secrets) -> list[Finding]:
    """The same count and key probes on JSON files a role writes (result.json, status.json...)."""
    findings = []
    hidden = {int(v): k for k, v in secrets.counts.items()}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if any(word in str(k).lower() for word in secrets.forbidden_keys):
                    findings.append(Finding("counts", f"{where}.{k}", f"a field named {k!r}"))
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, int) and not isinstance(value, bool) and value in hidden:
            findings.append(Finding("counts", where, f"the number {value} = {hidden[value]}"))
        elif isinstance(value, str) and value[:1] in "[{":
            try:
                walk(json.loads(value), where + " (JSON)")
            except ValueError:
                pass

    for path in paths:
        try:
            walk(json.loads(Path(path).read_text()), str(path))
        except ValueError:
            findings.append(Finding("counts", str(path), "not JSON"))
    return findings


def ciphertext_size_findings(view: View, samples: int = 16, tolerance: float = 0.01) -> list[Finding]:
    """The coordinator's size attack: every ciphertext must be as long as an encryption of zeros at its level.

    A CKKS ciphertext's coefficients are uniform modulo q whatever it encrypts, so
    its size depends on its level (and polynomial count) only, up to the jitter of
    SEAL's zstd compression — measured over 1,500 encryptions of zeros under the
    vertical preset: spread 0.9 % at the top level, 0.34 % one level down, none at
    the last. A ciphertext outside the range of ``samples`` fresh encryptions of
    zeros widened by ``tolerance`` (1 %) carries something else: another level, a
    third polynomial, structured (non-uniform) coefficients, or data.
    """
    findings = []
    by_key: dict[int, dict[tuple[int, bool], list[tuple[Part, int]]]] = {}
    for part in view.parts:
        if part.kind == CIPHERTEXT and part.levels:
            key = view.ring.get(part.fingerprint)
            for level, size, form in part.levels:
                by_key.setdefault(id(key), {}).setdefault((level, form), []).append((part, size))
    for key in view.ring.keys:
        for (level, form), seen in by_key.get(id(key), {}).items():
            runtime = key.runtime
            reference = [len(b) for _ in range(samples) for b in _zeros_at(runtime, level, form)]
            if not reference:
                findings += [
                    Finding("sizes", part.where, f"{form} ciphertext at level {level}: only fresh BFV encryptions travel seeded, only masked histograms half")
                    for part, _ in seen
                ]
                continue
            slack = tolerance * float(np.mean(reference))
            low, high = min(reference) - slack, max(reference) + slack
            for part, size in seen:
                if not low <= size <= high:
                    findings.append(
                        Finding(
                            "sizes",
                            part.where,
                            f"ciphertext of {size} bytes at level {level}; encryptions of zeros take {min(reference)}..{max(reference)} (± {tolerance:.0%})",
                        )
                    )
    return findings


def _zeros_at(runtime: Any, level: int, form: str = "full") -> list[bytes]:
    """Fresh encryptions of zeros at ``level`` (CKKS vector layout, or one BFV ciphertext; seeded:
    SEAL's seeded form, under a fresh key with the same parameters since the receiver holds none;
    half: a masked histogram's frame — ``c0`` at one position per 512-row block, all of ``c1``)."""
    from fedrisk.crypto import encrypted_bins as eb
    from fedrisk.crypto.bfv import BFVRuntime
    from fedrisk.crypto.frames import pack_frame

    if form == "half":
        if not isinstance(runtime, BFVRuntime) or level != eb.WIRE_LEVEL:
            return []  # only masked histograms travel as half ciphertexts, and only at the wire level
        k, n, b = len(runtime.moduli[level]), runtime.slots, runtime.slots // eb.ROWS_PER_BLOCK
        header = {"level": level, "rows_per_block": eb.ROWS_PER_BLOCK}
        return [pack_frame(b"BMHC", runtime.fingerprint, header, [bytes(8 * k * b), bytes(8 * k * n)])]
    if form == "seeded":
        if not isinstance(runtime, BFVRuntime) or level != 0:
            return []  # only fresh BFV encryptions travel seeded: anything else is out of range
        return [_seeded_zero_runtime().encrypt_seeded(np.zeros(1, dtype=np.int64))]
    if isinstance(runtime, BFVRuntime):
        return [runtime.dump(runtime.encrypt_zero(level))]
    return runtime.encrypt(np.zeros(runtime.slots), level)


@functools.lru_cache(maxsize=1)
def _seeded_zero_runtime() -> Any:
    from fedrisk.crypto.bfv import BFVRuntime, make_bfv_context

    context = make_bfv_context()
    _KEEP.append(context)  # the runtime cache holds contexts weakly
    return BFVRuntime.for_context(context)


_KEEP: list[Any] = []


def _seeded_serialisation(blob: bytes, full: bytes) -> bool:
    """Whether ``blob`` is SEAL's seeded serialisation of the ciphertext whose full form is ``full``:
    a SEAL header whose size field covers exactly the blob (nothing appended), and fewer bytes
    than the full form (``c1`` as a seed)."""
    if len(blob) < 16:
        return False
    magic, header_size, _, _, _, _, size = struct.unpack_from("<HBBBBHQ", blob)
    return magic == 0xA15E and header_size == 16 and size == len(blob) and len(blob) < 0.75 * len(full)


# --------------------------------------------------------------------------- attack helpers


@dataclass(frozen=True)
class Recovery:
    """How well a 0/1 label guess matches the truth, against the majority-class base rate."""

    n: int
    accuracy_sign: float
    accuracy_topk: float
    base_rate: float

    @property
    def margin(self) -> float:
        """4 standard errors of an accuracy measured on ``n`` rows at the base rate."""
        return 4.0 * math.sqrt(self.base_rate * (1.0 - self.base_rate) / self.n)

    @property
    def accuracy(self) -> float:
        return max(self.accuracy_sign, self.accuracy_topk)

    @property
    def leaks(self) -> bool:
        return self.accuracy > self.base_rate + self.margin

    def __str__(self) -> str:
        return (
            f"label recovery {self.accuracy:.3f} (sign rule {self.accuracy_sign:.3f}, top-k {self.accuracy_topk:.3f}) "
            f"vs base rate {self.base_rate:.3f} + margin {self.margin:.3f} on {self.n} rows"
        )


def label_recovery(residual_estimate: np.ndarray, y: np.ndarray) -> Recovery:
    """Labels guessed from an estimate of d = σ(z) − y: y = 1 where d < 0 (sign rule), or the k lowest d (k = #positives)."""
    d = np.asarray(residual_estimate, dtype=float)
    y = np.asarray(y).astype(int)
    n = y.size
    p = float(y.mean())
    sign = float(np.mean((d < 0).astype(int) == y))
    k = int(y.sum())
    guess = np.zeros(n, dtype=int)
    guess[np.argsort(d, kind="stable")[:k]] = 1
    topk = float(np.mean(guess == y))
    return Recovery(n, sign, topk, max(p, 1.0 - p))


# --------------------------------------------------------------------------- helpers


def all_blobs(content: RecordDict) -> Iterable[bytes]:
    for name in content.keys():
        record = content[name]
        if isinstance(record, ArrayRecord):
            for key in record.keys():
                array = record[key]
                if array.stype == "raw":
                    yield bytes(array.data)
        elif isinstance(record, (ConfigRecord, MetricRecord)):
            for key in record.keys():
                value = record[key]
                if isinstance(value, bytes):
                    yield value


def _row_counts(content: RecordDict) -> tuple[int, ...]:
    counts = []
    for name in content.keys():
        record = content[name]
        if isinstance(record, ConfigRecord):
            for key in record.keys():
                value = record[key]
                if isinstance(value, int) and not isinstance(value, bool) and "rows" in key:
                    counts.append(value)
    return tuple(counts)


def _as_bitmap(data: bytes, counts: Iterable[int]) -> np.ndarray | None:
    """``data`` as a packed 0/1 row mask of one of ``counts`` rows (its padding bits must be zero)."""
    for n in counts:
        if n > 0 and len(data) == (n + 7) // 8:
            bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
            if not bits[n:].any():
                return bits[:n]
    return None


def _interpretations(data: bytes) -> list[tuple[str, np.ndarray]]:
    """Readings of unparsed bytes as numbers, for the correlation probes (finite values only)."""
    out = []
    for dtype in ("<f8", "<f4", "<i8", "<i4", "u1"):
        size = np.dtype(dtype).itemsize
        for offset in range(size if len(data) < 1 << 20 else 1):
            body = data[offset:]
            body = body[: len(body) // size * size]
            if len(body) < 16 * size:
                continue
            with np.errstate(all="ignore"):
                values = np.frombuffer(body, dtype=dtype).astype(float)
                finite = values[np.isfinite(values) & (np.abs(values) < 1e12)]
            if finite.size >= 16:
                out.append((f"bytes as {dtype}+{offset}", finite))
    return out


def _looks_random(data: bytes) -> bool:
    if len(data) < 128:
        return True
    return len(zlib.compress(data, 9)) >= 0.97 * len(data)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(buf: bytes) -> dict[int, list[bytes]] | None:
    """Top-level protobuf fields (length-delimited values as bytes) covering all of ``buf``, or None."""
    fields: dict[int, list[bytes]] = {}
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                value, pos = _varint(buf, pos)
                fields.setdefault(number, []).append(value)
            elif wire == 1:
                fields.setdefault(number, []).append(buf[pos : pos + 8])
                pos += 8
            elif wire == 2:
                length, pos = _varint(buf, pos)
                if pos + length > len(buf):
                    return None
                fields.setdefault(number, []).append(buf[pos : pos + length])
                pos += length
            elif wire == 5:
                fields.setdefault(number, []).append(buf[pos : pos + 4])
                pos += 4
            else:
                return None
    except ValueError:
        return None
    return fields if pos == len(buf) else None


def _is_protobuf(buf: bytes, numbers: set[int]) -> bool:
    fields = _protobuf_fields(buf)
    return fields is not None and bool(fields) and set(fields) <= numbers


def _walk_json(value: Any) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """Scalars (by path) and long numeric lists of a frame's JSON header (its strings stay in the part's bytes)."""
    scalars: dict[str, Any] = {}
    vectors: list[tuple[str, np.ndarray]] = []

    def walk(v: Any, path: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else str(k))
        elif isinstance(v, list):
            if len(v) > MAX_PARAMETER_LIST and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                vectors.append((f"header {path}", np.asarray(v, dtype=float)))
            else:
                for i, x in enumerate(v):
                    walk(x, f"{path}[{i}]")
        elif v is not None and not isinstance(v, str):
            scalars[path] = v

    walk(value, "")
    return scalars, vectors


def _bins_keys(blob: bytes) -> list[bytes]:
    """The feature holders' bins keys inside SecureBoost ``SLAY`` frames, wherever a batch carries them."""
    from fedrisk.crypto.frames import unpack_frame

    out, todo = [], [bytes(blob)]
    while todo:
        data = todo.pop()
        if data[:4] != b"FRSK":
            continue
        try:
            kind, _, _, blobs = unpack_frame(data)
        except Exception:
            continue
        if kind == b"SLAY" and blobs:
            out.append(bytes(blobs[0]))
        else:
            todo += [bytes(b) for b in blobs if bytes(b[:4]) == b"FRSK"]
    return out


def _parse_payload(kind: bytes, data: bytes):
    """The payload object its own class parses (None for kinds no payload class claims; an exception if refused)."""
    registries = []
    try:
        from fedrisk.models.vertical_lr import PAYLOAD_TYPES as VLR

        registries.append(VLR)
    except ImportError:
        pass
    try:
        from fedrisk.models.secureboost_payloads import PAYLOAD_TYPES as SB

        registries.append(SB)
    except ImportError:
        pass
    for registry in registries:
        cls = registry.get(kind)
        if cls is not None:
            try:
                return cls.from_bytes(data)
            except Exception as err:
                return err
    return None


def _row_sets(payload) -> list[tuple[str, np.ndarray]]:
    """Row masks a parsed payload carries (train split, node row sets, go-left bits)."""
    if payload is None or isinstance(payload, Exception):
        return []
    out = []
    mask = getattr(payload, "train_mask", None)
    if isinstance(mask, np.ndarray):
        out.append(("train_mask", mask.astype(float)))
    for i, node in enumerate(getattr(payload, "nodes", ()) or ()):
        rows = getattr(node, "rows", None)
        if isinstance(rows, np.ndarray):
            out.append((f"node {getattr(node, 'node', i)} rows", rows.astype(float)))
    for split in getattr(payload, "splits", ()) or ():
        rows = getattr(split, "rows", None)
        if isinstance(rows, np.ndarray):
            out.append((f"split node {split.node} rows", rows.astype(float)))
    go_left = getattr(payload, "go_left", None)
    if isinstance(go_left, tuple):
        out += [(f"go-left {i}", g.astype(float)) for i, g in enumerate(go_left)]
    elif isinstance(go_left, np.ndarray):
        matrix = go_left.reshape(go_left.shape[0], -1)
        out += [(f"answers column {j}", matrix[:, j].astype(float)) for j in range(matrix.shape[1])]
    return out


# --------------------------------------------------------------------------- small real federations

GUEST_FEATURES = 13
HOST_FEATURES = 10


def credit_codes_for(ids: Iterable[int]) -> dict[int, str]:
    """A fixed credit code per default-credit row id (so raw IDs are unmistakable 18-character strings)."""
    from fedrisk.data.credit_code import make_credit_codes

    ids = sorted(set(int(i) for i in ids))
    codes = make_credit_codes(len(ids), np.random.default_rng(20240607))
    return dict(zip(ids, (str(c) for c in codes)))


@dataclass
class VerticalData:
    """The slice each party holds (its own CSV), and the ground truth the probes need."""

    bank: Any  # pandas frame: id (credit code), y, x0..x12, in the bank's CSV order
    tax: Any  # pandas frame: id, x0..x9, in the tax bureau's own (shuffled) order
    intersection: int

    @property
    def ids(self) -> list[str]:
        return sorted(set(self.bank["id"]) | set(self.tax["id"]))


def vertical_parties(root: Path, data_dir: Path, *, bank_rows: int = 2000, tax_rows: int = 1900, overlap: int = 1700) -> tuple[list, VerticalData]:
    """Bank (label holder) and tax bureau (feature holder) slices of the real hetero split, partial overlap.

    The default overlap (1,700) exceeds the bank's training rows (1,600 of 2,000), so no
    public count of training rows or tree-node rows can equal the intersection size by chance.
    """
    import pandas as pd

    from fedrisk.parties.settings import PartySettings

    guest = pd.read_csv(Path(data_dir) / "default_credit_hetero_guest.csv")
    host = pd.read_csv(Path(data_dir) / "default_credit_hetero_host.csv").set_index("id")
    bank_ids = guest["id"].to_numpy()[:bank_rows]
    tax_ids = np.concatenate([bank_ids[bank_rows - overlap :], guest["id"].to_numpy()[bank_rows : bank_rows + tax_rows - overlap]])
    codes = credit_codes_for(np.concatenate([bank_ids, tax_ids]))
    bank = guest.iloc[:bank_rows].copy()
    bank["id"] = [codes[int(i)] for i in bank["id"]]
    tax = host.loc[tax_ids].reset_index()
    tax["id"] = [codes[int(i)] for i in tax["id"]]
    tax = tax.sample(frac=1.0, random_state=1).reset_index(drop=True)  # the tax bureau's own order
    root.mkdir(parents=True, exist_ok=True)
    bank.to_csv(root / "bank.csv", index=False)
    tax.to_csv(root / "tax.csv", index=False)
    bank_schema = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(GUEST_FEATURES)}, "id_format": "credit_code"}
    tax_schema = {"id_column": "id", "features": {f"x{i}": "float" for i in range(HOST_FEATURES)}, "id_format": "credit_code"}
    parties = [
        PartySettings("bank", "label_holder", str(root / "bank.csv"), bank_schema, str(root / "parties" / "bank")),
        PartySettings("tax_bureau", "feature_holder", str(root / "tax.csv"), tax_schema, str(root / "parties" / "tax_bureau")),
    ]
    return parties, VerticalData(bank, tax, overlap)


def vertical_secrets(tap: Tap, data: VerticalData, *, role: str, residuals: list[np.ndarray] | None = None) -> Secrets:
    """What ``role`` must not learn, from the parties' own state after the run (training order included)."""
    bank = tap.protocol("bank", "LabelHolderAlignment").aligned
    tax = tap.protocol("tax_bureau", "FeatureHolderAlignment").aligned
    train = np.asarray(bank.train_mask, dtype=bool)
    y = np.asarray(bank.y, dtype=float)
    labels = {
        "training order": y,
        "training order, training rows": y[train],
        "bank CSV order": data.bank["y"].to_numpy(dtype=float),
    }
    bank_csv = data.bank[[f"x{i}" for i in range(GUEST_FEATURES)]].to_numpy(dtype=float)
    features = {
        "bank features (training order)": np.asarray(bank.X, dtype=float),
        "bank features (training rows)": np.asarray(bank.X, dtype=float)[train],
        "bank features (CSV order)": bank_csv,
    }
    if role == "coordinator":
        tax_csv = data.tax[[f"x{i}" for i in range(HOST_FEATURES)]].to_numpy(dtype=float)
        covered = tax.coverage["tax_bureau"]
        features.update(
            {
                "tax features (training order, covered rows)": np.asarray(tax.X, dtype=float)[covered],
                "tax features (training rows)": np.asarray(tax.X, dtype=float)[train],
                "tax features (CSV order)": tax_csv,
            }
        )
    secrets = Secrets(labels=labels, residuals=list(residuals or []), features=features, ids=data.ids)
    if role == "coordinator":  # the coordinator may learn set sizes, never the intersection
        secrets.counts = {"PSI intersection size": int(data.intersection)}
        secrets.forbidden_keys = ("intersection", "overlap")
    return secrets


def capture_residuals(monkeypatch) -> list[np.ndarray]:
    """The label holder's plaintext residuals d = σ(z) − y as it encrypts them (ground truth, and what a leak would carry)."""
    from fedrisk.models import vertical_lr

    seen: list[np.ndarray] = []
    original = vertical_lr.LabelHolderLR.receive_scores

    def receive_scores(self, total):
        runtime = self.runtime
        encrypt = runtime.encrypt

        def spy(values, *args, **kwargs):
            seen.append(np.array(values, dtype=float))
            return encrypt(values, *args, **kwargs)

        runtime.encrypt = spy
        try:
            return original(self, total)
        finally:
            del runtime.encrypt

    monkeypatch.setattr(vertical_lr.LabelHolderLR, "receive_scores", receive_scores)
    return seen


def vertical_config(run_id: str, algorithm: str = "vertical_lr", **extra) -> dict:
    return {
        "mode": "vertical",
        "algorithm": algorithm,
        "parties": "bank,tax_bureau",
        "fedrisk-run-id": run_id,
        "party-timeout": 120.0,
        **extra,
    }


@dataclass
class HorizontalData:
    """Each bank's own table (credit-code IDs) in its CSV order."""

    banks: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        return sorted(set().union(*(set(f["id"]) for f in self.banks.values())))


def horizontal_parties(root: Path, data_dir: Path, *, rows: int = 1000) -> tuple[list, HorizontalData]:
    """Three banks with their own slices of the real homogeneous split (23 features, labels)."""
    import pandas as pd

    from fedrisk.parties.settings import PartySettings

    frames = {}
    for name, file in (("bank_a", "guest"), ("bank_b", "host_1"), ("bank_c", "host_2")):
        frames[name] = pd.read_csv(Path(data_dir) / f"default_credit_homo_{file}.csv").head(rows)
    codes = credit_codes_for(np.concatenate([f["id"].to_numpy() for f in frames.values()]))
    schema = {"id_column": "id", "label_column": "y", "features": {f"x{i}": "float" for i in range(23)}, "id_format": "credit_code"}
    parties = []
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame = frame.copy()
        frame["id"] = [codes[int(i)] for i in frame["id"]]
        frame = frame.drop_duplicates("id")
        frames[name] = frame
        frame.to_csv(root / f"{name}.csv", index=False)
        parties.append(PartySettings(name, "bank", str(root / f"{name}.csv"), schema, str(root / "parties" / name)))
    return parties, HorizontalData(frames)


def horizontal_secrets(tap: Tap, data: HorizontalData) -> Secrets:
    """Every bank's labels (CSV order and its training split's order), features and IDs."""
    labels, features = {}, {}
    for name, frame in data.banks.items():
        labels[f"{name} labels (CSV order)"] = frame["y"].to_numpy(dtype=float)
        features[f"{name} features (CSV order)"] = frame[[f"x{i}" for i in range(23)]].to_numpy(dtype=float)
        split = tap.protocol(name, "HorizontalParty").split
        labels[f"{name} labels (training rows)"] = np.asarray(split.y_train, dtype=float)
        features[f"{name} features (training rows)"] = np.asarray(split.x_train, dtype=float)
    return Secrets(labels=labels, features=features, ids=data.ids)


def horizontal_config(run_id: str, **extra) -> dict:
    return {
        "mode": "horizontal",
        "aggregation": "ckks",
        "num-rounds": 2,
        "model": "logistic",
        "parties": "bank_a,bank_b,bank_c",
        "fedrisk-run-id": run_id,
        "party-timeout": 60.0,
        **extra,
    }


def update_findings(view: View, fingerprint: str, steps: Iterable[str] = ("fedavg.update", "fedavg.stats")) -> list[Finding]:
    """Every blob a bank sends the coordinator in ``steps`` must parse as a CKKS ciphertext under the federation key."""
    findings = []
    wanted = set(steps)
    for message in view.messages:
        if message.captured.direction != "to_coordinator" or message.step not in wanted:
            continue
        blobs = [p for p in message.parts if p.raw is not None and p.kind not in (TEXT,)]
        if not blobs:
            findings.append(Finding("update", f"msg {message.index} {message.step}", "an update without any payload"))
        for part in blobs:
            key = view.ring.get(part.fingerprint) if part.fingerprint else None
            if part.kind != CIPHERTEXT or key is None or fingerprint not in key.fingerprints:
                findings.append(Finding("update", part.where, f"declared {message.declared!r}, parses as {part.kind}: {part.detail}"))
    return findings
