"""Histograms with the roles reversed: the feature holder's bins under its own key (hazmat).

The kernel :mod:`fedrisk.crypto.encrypted_histogram` has the label holder encrypt
its gradients and the feature holder multiply them by its one-hot bins, with
rotations to line the bins up and a rotate-and-sum to total them: 2.2 core-s per
default-credit tree, most of it key switching. Here the feature holder encrypts
its one-hot bin matrix **once per run** under its own BFV key, and per node the
label holder multiplies it by its *plaintext* masked gradients. Coefficient
packing makes each column's total one coefficient of a polynomial product, so
there is no rotation and no key switch at all (``benchmarks/histogram_kernels.py``
measures both kernels side by side).

Layout (coefficient packing, ``N = 16384``): the training rows are cut into
blocks of :data:`ROWS_PER_BLOCK` ``n`` rows and the bin columns into groups of
``b = N / n`` columns. Block ``k``, group ``j`` is one ciphertext of

    ``B_kj(X) = Σ_c Σ_i onehot[k·n + i, j·b + c] · X^(c·n + i)``

and the label holder's values for block ``k`` are ``P_k(X) = Σ_i v[k·n + i] · X^(n − 1 − i)``.
In ``Σ_k B_kj · P_k`` the coefficient of ``X^(c·n + n − 1)`` is exactly column
``c``'s total ``Σ_rows onehot · v``; every other product term lands elsewhere
(``|i − i'| < n``; the negacyclic wrap only reaches coefficients below ``n − 1``).

What each side sees, per node:

* The label holder holds ciphertexts under the feature holder's key, and no key
  to open them. It computes ``Σ_k B_kj · P_k + Enc_pk(0) + r + e_flood``,
  switched down to :data:`WIRE_LEVEL`: re-randomised with the feature holder's
  public key (``c1`` independent of the products), each of the ``b`` total
  coefficients masked by ``r`` uniform mod ``t`` (128-bit draws, bias below
  ``2^-68`` per coefficient) and its noise flooded (below). It sends all of
  ``c1`` and ``c0`` at the total positions only (:func:`load_masked_histogram`):
  decrypting a coefficient needs only its own ``c0`` and the whole ``c1``, so the
  other coefficients — partial sums over row subsets — never leave, and a
  masked histogram is half a ciphertext (256 KB).
* The feature holder decrypts ``H + r`` at the total positions: uniform, whatever
  the gradients. It returns those ``b`` coefficients of each ciphertext and
  nothing else (:func:`decrypt_masked_totals`).
* The label holder subtracts its mask at those positions and has the column
  totals — the same totals the other kernel decrypts, and nothing per row.

Flooding: the evaluation noise depends on the label holder's values, so before
the feature holder decrypts it is drowned in a uniform term of
:data:`FLOOD_BITS` bits. The statistical distance this leaves is at most
``2^EVAL_NOISE_BITS / 2^FLOOD_BITS`` per coefficient; a kernel refuses more than
:data:`RUN_CIPHERTEXTS` outputs, so over a run it is at most
``RUN_CIPHERTEXTS · N · 2^(EVAL_NOISE_BITS − FLOOD_BITS) = 2^-40``
(:func:`run_statistical_distance`; counting every coefficient, although only
``b = N/512`` per output can be decrypted, so the true bound is 2^-49). :data:`EVAL_NOISE_BITS` is a stated bound,
measured by ``tests/test_encrypted_bins.py`` with values spread over all of
``Z_t`` (worse than any gradients). The products run on :data:`PRODUCT_LEVEL`
(four of the five primes: ``Δ ≈ 2^181``, room for the flooding with about 30 bits
to spare) and leave on two.

Threat model: semi-honest parties, as for the other kernel. A feature holder
that encrypted something other than 0/1 bins would learn nothing more (it never
sees an unmasked total); the label holder would decrypt totals of whatever the
feature holder encrypted, as it decrypts them from the other kernel today.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from fedrisk.crypto.bfv import (
    BFVRuntime,
    add_to_c0,
    ciphertext_from_polynomials,
    ciphertext_polynomials,
    coefficient_plaintext,
    load_public_bfv_context,
    public_bfv_context_bytes,
    uniform_noise_rns,
    uniform_residues,
)
from fedrisk.crypto.frames import pack_frame, unpack_frame
from fedrisk.crypto.worker_pool import WorkerPool, serve_frames
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

__all__ = [
    "EVAL_NOISE_BITS",
    "FLOOD_BITS",
    "PRODUCT_LEVEL",
    "ROWS_PER_BLOCK",
    "RUN_CIPHERTEXTS",
    "STAT_BITS",
    "WIRE_LEVEL",
    "BinMatrixLayout",
    "MaskedHistograms",
    "MaskedHistogramEvaluator",
    "decrypt_masked_totals",
    "encrypt_bin_matrix",
    "load_masked_histogram",
    "run_statistical_distance",
]

ROWS_PER_BLOCK = 512
"""Rows per bin ciphertext (``n``); a ciphertext then holds ``N / n = 32`` columns."""
PRODUCT_LEVEL = 1
"""Products, re-randomisation, mask and flooding on four primes (levels count down from five)."""
WIRE_LEVEL = 3
"""Masked histograms leave the label holder on two primes (``Δ ≈ 2^61``; the flooded noise, switched down, ≈ 2^33)."""
EVAL_NOISE_BITS = 80
"""Stated bound ``log2 ‖v‖∞`` of a histogram's noise before flooding at :data:`PRODUCT_LEVEL`,
for up to 2^17 rows (measured by the tests)."""
STAT_BITS = 40
"""Statistical security over a whole run."""
RUN_CIPHERTEXTS = 1 << 12
"""Masked histograms one evaluator may produce: the flooding is sized for this many."""
FLOOD_BITS = EVAL_NOISE_BITS + STAT_BITS + int(math.log2(RUN_CIPHERTEXTS)) + 14  # 14 = log2 N
"""Flooding coefficients are uniform in ``[−2^FLOOD_BITS, 2^FLOOD_BITS)``."""
_MAX_ROWS = 1 << 17


def run_statistical_distance(n_ciphertexts: int, *, flood_bits: int = FLOOD_BITS, eval_noise_bits: int = EVAL_NOISE_BITS, coefficients: int = 16384) -> float:
    """Bound on the statistical distance between what the feature holder decrypts and ``H + r + uniform`` over ``n_ciphertexts`` outputs."""
    return float(n_ciphertexts * coefficients * 2.0 ** (eval_noise_bits - flood_bits))


@dataclass(frozen=True)
class BinMatrixLayout:
    """Where each bin column sits: row blocks × column groups of ciphertexts, and each total's coefficient."""

    n_rows: int
    n_columns: int
    poly_degree: int = 16384
    rows_per_block: int = ROWS_PER_BLOCK

    def __post_init__(self) -> None:
        if not 1 <= self.n_rows <= _MAX_ROWS:
            raise DataValidationError(f"encrypted bins cover 1..{_MAX_ROWS} rows, got {self.n_rows}")
        if self.n_columns < 1:
            raise DataValidationError("encrypted bins need at least one bin column")
        if self.poly_degree % self.rows_per_block:
            raise CryptoError(f"rows per block ({self.rows_per_block}) must divide the polynomial degree ({self.poly_degree})")

    @property
    def columns_per_ciphertext(self) -> int:
        return self.poly_degree // self.rows_per_block

    @property
    def blocks(self) -> int:
        return -(-self.n_rows // self.rows_per_block)

    @property
    def groups(self) -> int:
        return -(-self.n_columns // self.columns_per_ciphertext)

    @property
    def total_positions(self) -> np.ndarray:
        """Coefficient of each column total within a group's polynomial (``c·n + n − 1``)."""
        n = self.rows_per_block
        return np.arange(self.columns_per_ciphertext) * n + (n - 1)


def _runtime(context: ts.Context, *, private: bool) -> BFVRuntime:
    runtime: BFVRuntime = BFVRuntime.for_context(context)
    if private != bool(context.is_private()):
        raise CryptoError(
            "the feature holder's own (secret) BFV context is needed here" if private else "the label holder must hold the public BFV context only"
        )
    if len(runtime.parms_ids) <= WIRE_LEVEL:
        raise CryptoError("the BFV context has too few primes for encrypted bins")
    return runtime


def encrypt_bin_matrix(context: ts.Context, onehot: np.ndarray, *, rows_per_block: int = ROWS_PER_BLOCK) -> tuple[BinMatrixLayout, list[bytes]]:
    """The feature holder's one-off: its 0/1 bin matrix (rows in the label holder's order), encrypted under its secret key.

    Returns the layout and ``blocks × groups`` seeded ciphertexts (block-major).
    """
    runtime = _runtime(context, private=True)
    bins = np.asarray(onehot)
    if bins.ndim != 2 or not np.isin(bins, (0, 1)).all():
        raise DataValidationError("the bin matrix must be a 2-d array of 0s and 1s")
    layout = BinMatrixLayout(bins.shape[0], bins.shape[1], poly_degree=runtime.slots, rows_per_block=rows_per_block)
    n, b = layout.rows_per_block, layout.columns_per_ciphertext
    padded = np.zeros((layout.blocks * n, layout.groups * b), dtype=np.uint64)
    padded[: bins.shape[0], : bins.shape[1]] = bins
    blobs = []
    for k in range(layout.blocks):
        for j in range(layout.groups):
            # coefficient c·n + i holds row k·n + i of column j·b + c
            coeffs = np.ascontiguousarray(padded[k * n : (k + 1) * n, j * b : (j + 1) * b].T).ravel()
            blobs.append(runtime.encrypt_seeded_plaintext(coefficient_plaintext(runtime, coeffs)))
    return layout, blobs


def decrypt_masked_totals(context: ts.Context, blobs: Sequence[bytes], layout: BinMatrixLayout) -> np.ndarray:
    """The feature holder's answer: each masked histogram's ``b`` total coefficients (uint64 mod ``t``), nothing else.

    Raises
    ------
    ProtocolError
        Not one masked histogram per column group, or one :func:`load_masked_histogram` refuses.
    """
    runtime = _runtime(context, private=True)
    if len(blobs) != layout.groups:
        raise ProtocolError(f"masked histogram has {len(blobs)} ciphertexts, the layout {layout.groups}")
    positions = layout.total_positions
    return np.concatenate([runtime.decrypt_coefficients(load_masked_histogram(context, blob, layout), positions) for blob in blobs])


def _compact(runtime: BFVRuntime, ct: Any, layout: BinMatrixLayout) -> bytes:
    """A masked histogram as it travels: all of ``c1``, and ``c0`` at the total positions only.

    Decrypting coefficient ``i`` needs ``c0[i]`` and the whole of ``c1`` (``c1·s`` mixes every
    coefficient), so the feature holder gets exactly what opens the totals: half the bytes.
    """
    polys = ciphertext_polynomials(runtime, ct)
    level = runtime.level_of(ct)
    header = {"level": level, "rows_per_block": layout.rows_per_block}
    return pack_frame(_COMPACT_KIND, runtime.fingerprint, header, [polys[0][:, layout.total_positions].tobytes(), polys[1].tobytes()])


def load_masked_histogram(context: ts.Context, blob: bytes, layout: BinMatrixLayout) -> Any:
    """A received masked histogram as a SEAL ciphertext at :data:`WIRE_LEVEL` (``c0`` zero off the total positions).

    Checked before SEAL sees it: the frame kind, the feature holder's key fingerprint,
    the level and the layout, the exact byte counts, every residue below its prime.

    Raises
    ------
    ProtocolError
        Anything else than :func:`MaskedHistogramEvaluator`'s output for ``layout`` under ``context``, in one line.
    """
    runtime = BFVRuntime.for_context(context)
    try:
        kind, fp, header, parts = unpack_frame(blob)
    except Exception as exc:  # frames raise on truncated or garbage bytes
        raise ProtocolError(f"masked histogram is not a frame: {exc}") from None
    if kind != _COMPACT_KIND:
        raise ProtocolError(f"masked histogram is a {kind!r} frame, not {_COMPACT_KIND!r}")
    if fp != runtime.fingerprint:
        raise ProtocolError(f"masked histogram is under key {fp}, not this feature holder's {runtime.fingerprint}")
    if header.get("level") != WIRE_LEVEL:
        raise ProtocolError(f"masked histogram is not at level {WIRE_LEVEL}")
    if header.get("rows_per_block") != layout.rows_per_block:
        raise ProtocolError(f"masked histogram is for {header.get('rows_per_block')!r} rows per block, the layout {layout.rows_per_block}")
    k, n, b = len(runtime.moduli[WIRE_LEVEL]), runtime.slots, layout.columns_per_ciphertext
    if len(parts) != 2 or len(parts[0]) != 8 * k * b or len(parts[1]) != 8 * k * n:
        raise ProtocolError(f"masked histogram must carry c0 at {b} positions and all of c1 on {k} primes")
    polys = np.zeros((2, k, n), dtype=np.uint64)
    polys[0][:, layout.total_positions] = np.frombuffer(parts[0], dtype="<u8").reshape(k, b)
    polys[1] = np.frombuffer(parts[1], dtype="<u8").reshape(k, n)
    try:
        return ciphertext_from_polynomials(runtime, polys, WIRE_LEVEL)
    except CryptoError as exc:
        raise ProtocolError(f"masked histogram: {exc}") from None


_COMPACT_KIND = b"BMHC"


@dataclass(frozen=True)
class MaskedHistograms:
    """One node's masked histogram: the ciphertexts for the feature holder, and the mask the label holder keeps."""

    ciphertexts: list[bytes]
    mask: np.ndarray
    """``r`` at the total positions (uint64 mod ``t``, groups × b): never sent."""


class _BlockProducts:
    """Products over a range of row blocks, every column group (one per process), and the finishing of outputs."""

    def __init__(self, runtime: BFVRuntime, layout: BinMatrixLayout, blocks: range, blobs: Sequence[bytes], flood_bits: int, wire_level: int) -> None:
        if len(blobs) != len(blocks) * layout.groups:
            raise ProtocolError(f"encrypted bins have {len(blobs)} ciphertexts, the layout {len(blocks) * layout.groups}")
        self.runtime, self.layout, self.blocks = runtime, layout, blocks
        self.flood_bits, self.wire_level = flood_bits, wire_level
        rt, ev = runtime, runtime.evaluator
        self.bins: list[Any] = []
        for blob in blobs:
            ct = rt.load(blob)
            if rt.level_of(ct) != 0 or ct.is_transparent():
                raise ProtocolError("encrypted bins are not fresh top-level ciphertexts")
            ev.mod_switch_to_inplace(ct, rt.parms_ids[PRODUCT_LEVEL])  # fewer primes: cheaper products, room still for the flooding
            ev.transform_to_ntt_inplace(ct)
            self.bins.append(ct)

    def partials(self, values: Sequence[np.ndarray]) -> list[list[Any]]:
        """Per node, per column group: ``Σ_k B_kj · P_k`` over this range's blocks (coefficient form), or None where no row counts."""
        layout, rt, ev = self.layout, self.runtime, self.runtime.evaluator
        n = layout.rows_per_block
        out = []
        for v in values:
            rows = np.zeros(len(self.blocks) * n, dtype=np.int64)
            mine = v[self.blocks.start * n : self.blocks.stop * n]
            rows[: mine.size] = mine
            reduced = np.mod(rows, rt.plain_modulus).astype(np.uint64).reshape(len(self.blocks), n)
            plains: dict[int, Any] = {}
            for block in np.flatnonzero(reduced.any(axis=1)).tolist():  # a block with no row of the node adds nothing (and SEAL refuses a zero product)
                coeffs = np.zeros(layout.poly_degree, dtype=np.uint64)
                coeffs[:n] = reduced[block, ::-1]  # P_k(X) = Σ_i v_i X^(n−1−i)
                pt = coefficient_plaintext(rt, coeffs)
                ev.transform_to_ntt_inplace(pt, rt.parms_ids[PRODUCT_LEVEL])
                plains[block] = pt
            per_group: list[Any] = []
            for j in range(layout.groups):
                if not plains:
                    per_group.append(None)
                    continue
                total, prod = sa.Ciphertext(), sa.Ciphertext()
                for i, (block, pt) in enumerate(plains.items()):
                    ev.multiply_plain(self.bins[block * layout.groups + j], pt, total if i == 0 else prod)
                    if i:
                        ev.add_inplace(total, prod)
                ev.transform_from_ntt_inplace(total)
                per_group.append(total)
            out.append(per_group)
        return out

    def finish(self, parts: Sequence[Any]) -> tuple[bytes, np.ndarray]:
        """One output from a group's partial sums: re-randomise, mask and flood the total positions, switch down, serialise.

        Returns the masked histogram (:func:`_compact` at :data:`WIRE_LEVEL`; SEAL's
        whole ciphertext at :data:`PRODUCT_LEVEL`, where the tests measure noise) and
        the mask at the total positions. Only the totals' ``c0`` leaves, so only they
        need the mask and the flooding.
        """
        rt, ev, layout = self.runtime, self.runtime.evaluator, self.layout
        ct = rt.encrypt_zero(PRODUCT_LEVEL)  # c1 independent of the products
        for part in parts:
            if rt.level_of(part) != PRODUCT_LEVEL:
                raise CryptoError("a partial histogram is not at the product level")
            ev.add_inplace(ct, part)
        positions = layout.total_positions
        mask = np.zeros(rt.slots, dtype=np.uint64)
        mask[positions] = uniform_residues(rt.plain_modulus, positions.size)
        ev.add_plain_inplace(ct, coefficient_plaintext(rt, mask))
        if self.flood_bits > 0:
            noise = np.zeros((len(rt.moduli[PRODUCT_LEVEL]), rt.slots), dtype=np.uint64)
            noise[:, positions] = uniform_noise_rns(rt.moduli[PRODUCT_LEVEL], positions.size, self.flood_bits)
            add_to_c0(rt, ct, noise)
        if self.wire_level == PRODUCT_LEVEL:
            return bytes(rt.dump(ct)), mask[positions]
        ev.mod_switch_to_inplace(ct, rt.parms_ids[self.wire_level])
        return _compact(rt, ct, layout), mask[positions]


def _block_ranges(blocks: int, workers: int) -> list[range]:
    edges = [round(w * blocks / workers) for w in range(workers + 1)]
    return [range(edges[w], edges[w + 1]) for w in range(workers)]


class MaskedHistogramEvaluator:
    """Label-holder side: node histograms of the feature holder's encrypted bins against plaintext values.

    Parameters
    ----------
    context : tenseal.Context
        The feature holder's public BFV context (no secret key, no Galois keys needed).
    blobs : sequence of bytes
        :func:`encrypt_bin_matrix`'s ciphertexts.
    layout : BinMatrixLayout
    n_jobs : int
        Worker processes (1: in process). Each takes a range of row blocks for the
        products and finishes the column groups ``j ≡ w (mod n_jobs)``.
    flood_bits : int
        Width of the flooding (default :data:`FLOOD_BITS`). Tests set 0 to measure the
        noise it has to hide; nothing else should change it.
    wire_level : int
        Level the histograms leave at (default :data:`WIRE_LEVEL`). Tests set
        :data:`PRODUCT_LEVEL` to measure the noise before the switch.

    Attributes
    ----------
    outputs_ : int
        Masked histogram ciphertexts produced so far (at most :data:`RUN_CIPHERTEXTS`).
    """

    def __init__(
        self,
        context: ts.Context,
        blobs: Sequence[bytes],
        layout: BinMatrixLayout,
        *,
        n_jobs: int = 1,
        flood_bits: int = FLOOD_BITS,
        wire_level: int = WIRE_LEVEL,
    ) -> None:
        if not isinstance(flood_bits, int) or not 0 <= flood_bits <= FLOOD_BITS:
            raise CryptoError(f"flooding width must be 0..{FLOOD_BITS} bits, got {flood_bits!r}")
        if wire_level not in (PRODUCT_LEVEL, WIRE_LEVEL):
            raise CryptoError(f"masked histograms leave at level {PRODUCT_LEVEL} or {WIRE_LEVEL}, got {wire_level!r}")
        self.runtime = _runtime(context, private=False)
        if layout.poly_degree != self.runtime.slots:
            raise ProtocolError(f"bin layout is for N = {layout.poly_degree}, the context has N = {self.runtime.slots}")
        if len(blobs) != layout.blocks * layout.groups:
            raise ProtocolError(f"encrypted bins have {len(blobs)} ciphertexts, the layout {layout.blocks * layout.groups}")
        self.layout = layout
        self.flood_bits_ = flood_bits
        self.wire_level_ = wire_level
        self.outputs_ = 0
        workers = max(1, min(int(n_jobs), layout.blocks))
        self._ranges = _block_ranges(layout.blocks, workers)
        self._local: _BlockProducts | None = None
        self._pool: _Workers | None = None
        if workers == 1:
            self._local = _BlockProducts(self.runtime, layout, range(layout.blocks), blobs, flood_bits, wire_level)
            return
        self._pool = _Workers(workers)
        weakref.finalize(self, WorkerPool.close, self._pool)
        shared = public_bfv_context_bytes(context, galois=False)
        frames = []
        for w, blocks in enumerate(self._ranges):
            header = {**_layout_header(layout), "worker": w, "workers": workers, "flood_bits": flood_bits, "wire_level": wire_level}
            frames.append(pack_frame(b"EINI", self.runtime.fingerprint, header, [shared, *blobs[blocks.start * layout.groups : blocks.stop * layout.groups]]))
        try:
            self._pool.scatter(frames)
        except BaseException:
            self.close()
            raise

    def node_histograms(self, values: Sequence[np.ndarray]) -> list[MaskedHistograms]:
        """Masked histograms of ``values`` per node (int64 per row, zero outside the node; taken mod ``t``)."""
        layout = self.layout
        arrays = [np.ascontiguousarray(v, dtype=np.int64) for v in values]
        for v in arrays:
            if v.shape != (layout.n_rows,):
                raise ProtocolError(f"node values have {v.size} entries, the bins {layout.n_rows} rows")
        if self.outputs_ + len(arrays) * layout.groups > RUN_CIPHERTEXTS:
            raise CryptoError(f"the flooding covers {RUN_CIPHERTEXTS} masked histograms per run; this one is past it")
        if self._local is not None:
            local = self._local
            finished = [[local.finish([] if part is None else [part]) for part in per_group] for per_group in local.partials(arrays)]
        else:
            finished = self._pooled(arrays)
        self.outputs_ += len(arrays) * layout.groups
        return [MaskedHistograms([blob for blob, _ in node], np.concatenate([mask for _, mask in node])) for node in finished]

    def _pooled(self, arrays: list[np.ndarray]) -> list[list[tuple[bytes, np.ndarray]]]:
        """Products by block range in every worker, then each group finished by its owner from the others' partials."""
        assert self._pool is not None
        layout, workers = self.layout, len(self._ranges)
        fp = self.runtime.fingerprint
        replies = self._pool.scatter([pack_frame(b"ENOD", fp, {"nodes": len(arrays)}, [v.tobytes() for v in arrays])] * workers)
        # replies[w]: for each node, each group not owned by w (j % workers != w), its partial or b""
        foreign: dict[tuple[int, int], list[bytes]] = {}
        for w, blobs in enumerate(replies):
            keys = [(v, j) for v in range(len(arrays)) for j in range(layout.groups) if j % workers != w]
            if len(blobs) != len(keys):
                raise CryptoError("histogram worker returned the wrong number of partial sums")
            for key, blob in zip(keys, blobs, strict=True):
                if blob:
                    foreign.setdefault(key, []).append(blob)
        frames = []
        for w in range(workers):
            owned = [(v, j) for v in range(len(arrays)) for j in range(layout.groups) if j % workers == w]
            counts = [len(foreign.get(key, [])) for key in owned]
            frames.append(pack_frame(b"EFIN", fp, {"counts": counts}, [b for key in owned for b in foreign.get(key, [])]))
        finished: list[list[tuple[bytes, np.ndarray]]] = [[(b"", np.empty(0, dtype=np.uint64))] * layout.groups for _ in arrays]
        for w, blobs in enumerate(self._pool.scatter(frames)):
            owned = [(v, j) for v in range(len(arrays)) for j in range(layout.groups) if j % workers == w]
            if len(blobs) != 2 * len(owned):
                raise CryptoError("histogram worker returned the wrong number of outputs")
            for i, (v, j) in enumerate(owned):
                finished[v][j] = (blobs[2 * i], np.frombuffer(blobs[2 * i + 1], dtype="<u8").astype(np.uint64))
        return finished

    def unmask(self, totals: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Column totals (centred int64, ``n_columns``) from the feature holder's masked totals and the histogram's :attr:`MaskedHistograms.mask`."""
        t = self.runtime.plain_modulus
        masked, mask = np.asarray(totals), np.asarray(mask, dtype=np.uint64)
        if masked.dtype != np.uint64 or masked.shape != mask.shape or np.any(masked >= np.uint64(t)):
            raise ProtocolError(f"masked totals must be {mask.size} residues mod t")
        diff = np.where(masked >= mask, masked - mask, masked + (np.uint64(t) - mask)).astype(np.int64)
        return np.where(diff > t // 2, diff - t, diff)[: self.layout.n_columns]

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()
            self._pool = None

    def __enter__(self) -> MaskedHistogramEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout_header(layout: BinMatrixLayout) -> dict[str, int]:
    return {"n_rows": layout.n_rows, "n_columns": layout.n_columns, "poly_degree": layout.poly_degree, "rows_per_block": layout.rows_per_block}


# --------------------------------------------------------------------------- worker processes


def _serve(inp: Any, out: Any) -> None:  # pragma: no cover - runs in a child process
    """Serve EINI/ENOD/EFIN frames (:func:`~fedrisk.crypto.worker_pool.serve_frames`: pipes, never pickled)."""
    context: ts.Context | None = None  # held here: the runtime keeps only a weak reference to it
    core: _BlockProducts | None = None
    kept: dict[tuple[int, int], Any] = {}
    workers, me = 1, 0

    def handle(kind: bytes, header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, list[bytes]]:
        nonlocal context, core, workers, me
        if kind == b"EINI":
            context = load_public_bfv_context(blobs[0], "histogram worker")
            layout = BinMatrixLayout(int(header["n_rows"]), int(header["n_columns"]), int(header["poly_degree"]), int(header["rows_per_block"]))
            workers, me = int(header["workers"]), int(header["worker"])
            if not 0 <= me < workers <= layout.blocks:
                raise ProtocolError(f"worker {me} of {workers} does not fit {layout.blocks} blocks")
            blocks = _block_ranges(layout.blocks, workers)[me]
            core = _BlockProducts(BFVRuntime.for_context(context), layout, blocks, blobs[1:], int(header["flood_bits"]), int(header["wire_level"]))
            return b"OKAY", []
        if core is None:
            raise ProtocolError(f"worker got {kind!r} before EINI")
        if kind == b"ENOD":
            arrays = [np.frombuffer(b, dtype="<i8").astype(np.int64) for b in blobs]
            kept.clear()
            sent = []
            for v, per_group in enumerate(core.partials(arrays)):
                for j, part in enumerate(per_group):
                    if j % workers == me:
                        kept[(v, j)] = part
                    else:
                        sent.append(b"" if part is None else core.runtime.dump(part))
            return b"RSLT", sent
        if kind == b"EFIN":
            counts, pos, replies = [int(c) for c in header["counts"]], 0, []
            for (v, j), count in zip(sorted(kept), counts, strict=True):
                parts = [core.runtime.load(b) for b in blobs[pos : pos + count]]
                pos += count
                own = kept[(v, j)]
                blob, mask = core.finish(parts + ([] if own is None else [own]))
                replies += [blob, mask.astype("<u8").tobytes()]
            return b"RSLT", replies
        raise ProtocolError(f"unknown worker command {kind!r}")

    serve_frames(inp, out, handle)


_BOOT = "import os, sys; from fedrisk.crypto.encrypted_bins import _serve; _serve(os.fdopen(int(sys.argv[1]), 'rb'), os.fdopen(int(sys.argv[2]), 'wb'))"


class _Workers(WorkerPool):
    """The reversed kernel's worker pool (frames over pipes, no pickle), booting this module's loop."""

    boot = _BOOT
    what = "encrypted-bins worker"
