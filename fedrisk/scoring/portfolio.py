"""Portfolio jobs over the scoring node: pre-approved limits and early warning.

* :func:`run_batch` (``fedrisk score batch``, 主动授信) pre-scores a list of SME
  IDs through ``ScoreBatch`` and writes each one's pre-approved limit, decision,
  PD, score, band and reason codes to a CSV. Estimates by default (nothing is
  recorded as an application; ``record=True`` records them with purpose
  ``PREAPPROVAL``).
* :func:`run_watch` (``fedrisk score watch``, 贷后预警) rescores a loan book and
  flags borrowers whose PD rose past a threshold: a CSV of every borrower's
  previous and current PD and score, and a PNG of the score-shift distribution.

IDs are checked client-side first (with the node's ID format, from
``Describe``): a malformed ID becomes an ``invalid`` row of the output instead of
aborting the stream; an SME the bank's table does not hold comes back as
``not_found``.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedrisk.errors import ConfigError, DataValidationError
from fedrisk.scoring.client import ScoringClient
from fedrisk.scoring.validation import normalise_id
from fedrisk.v1 import scoring_pb2 as pb

__all__ = ["book_stability", "compare_books", "read_id_table", "run_batch", "run_watch"]

_ID_COLUMNS = ("sme_id", "credit_code", "id")
_PD_COLUMNS = ("previous_pd", "probability_of_default", "pd")
_SCORE_COLUMNS = ("previous_score", "score")
_OUTCOME = {pb.APPROVE: "approve", pb.DECLINE: "decline", pb.REFER: "refer", pb.OUTCOME_UNSPECIFIED: "not_found"}


def _pick(columns: list[str], wanted: tuple[str, ...], given: str | None, what: str, path: Path) -> str | None:
    if given:
        if given not in columns:
            raise ConfigError(f"{path.name}: no column {given!r} ({what})")
        return given
    return next((c for c in wanted if c in columns), None)


def read_id_table(path: str | Path, id_column: str | None = None) -> pd.DataFrame:
    """A CSV of SMEs: an ID column (``sme_id``/``credit_code``/``id`` or named) and optional amounts."""
    source = Path(path)
    try:
        df = pd.read_csv(source, dtype={c: str for c in _ID_COLUMNS + ((id_column,) if id_column else ())}, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {source}: {str(exc).splitlines()[0]}") from None
    column = _pick(list(df.columns), _ID_COLUMNS, id_column, "SME IDs", source)
    if column is None:
        raise ConfigError(f"{source.name}: no ID column (name it sme_id or credit_code, or pass --id-column)")
    out = pd.DataFrame({"sme_id": df[column].fillna("").astype(str)})
    for extra in ("declared_annual_revenue", "requested_amount"):
        if extra in df.columns:
            out[extra] = pd.to_numeric(df[extra], errors="coerce")
    for name in df.columns:
        if name not in out.columns and name != column:
            out[name] = df[name]
    return out


def _progress(enabled: bool, console: Console | None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def applications(df: pd.DataFrame, id_format: str, purpose: pb.Purpose, estimate: bool, invalid: dict[int, str]) -> Iterator[tuple[int, pb.Application]]:
    for i, row in enumerate(df.itertuples(index=False)):
        try:
            sme_id = normalise_id(str(row.sme_id), id_format)
        except DataValidationError as exc:
            invalid[i] = str(exc)
            continue
        app = pb.Application(sme_id=sme_id, estimate_only=estimate, purpose=purpose)
        for field in ("declared_annual_revenue", "requested_amount"):
            value = getattr(row, field, None)
            if not isinstance(value, numbers.Real):
                continue
            amount = float(value)
            if math.isfinite(amount) and amount >= 0:
                if field == "requested_amount" and amount == 0:
                    continue
                setattr(app, field, amount)
        yield i, app


def _score_all(
    client: ScoringClient, df: pd.DataFrame, *, purpose: pb.Purpose, estimate: bool, label: str, progress: bool, console: Console | None
) -> tuple[dict[int, pb.Decision], dict[int, str]]:
    id_format = client.describe().id_format or "opaque"
    invalid: dict[int, str] = {}
    positions: list[int] = []

    def requests() -> Iterator[pb.Application]:
        for i, app in applications(df, id_format, purpose, estimate, invalid):
            positions.append(i)
            yield app

    decisions: dict[int, pb.Decision] = {}
    started = time.perf_counter()
    with _progress(progress, console) as bar:
        task = bar.add_task(label, total=len(df), rate=0.0)
        for k, decision in enumerate(client.score_stream(requests())):
            decisions[positions[decision.index]] = decision
            if k % 50 == 0 or k + 1 == len(df):
                done = len(decisions) + len(invalid)
                bar.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))
        done = len(decisions) + len(invalid)
        bar.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))
    return decisions, invalid


def _reasons(decision: pb.Decision) -> str:
    return "; ".join(f"{r.party}:{r.code}" for r in decision.reasons)


def run_batch(
    client: ScoringClient,
    ids_csv: str | Path,
    out_csv: str | Path,
    *,
    id_column: str | None = None,
    record: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Pre-score every SME of ``ids_csv``; write ``out_csv``; return a summary."""
    started = time.perf_counter()
    df = read_id_table(ids_csv, id_column)
    decisions, invalid = _score_all(client, df, purpose=pb.PREAPPROVAL, estimate=not record, label="pre-approving", progress=progress, console=console)
    rows = []
    for i, sme_id in enumerate(df["sme_id"]):
        d = decisions.get(i)
        if d is None:
            rows.append(
                {
                    "sme_id": sme_id,
                    "outcome": "invalid",
                    "pre_approved_limit": 0,
                    "probability_of_default": np.nan,
                    "score": np.nan,
                    "risk_band": "",
                    "degraded": False,
                    "reasons": invalid.get(i, ""),
                }
            )
            continue
        rows.append(
            {
                "sme_id": d.sme_id,
                "outcome": _OUTCOME[d.outcome],
                "pre_approved_limit": int(d.credit_limit),
                "probability_of_default": round(d.probability_of_default, 8),
                "score": d.score if d.outcome != pb.OUTCOME_UNSPECIFIED else np.nan,
                "risk_band": d.risk_band,
                "degraded": d.degraded,
                "reasons": _reasons(d),
            }
        )
    out = pd.DataFrame(rows)
    out["score"] = out["score"].astype("Int64")
    target = Path(out_csv)
    target.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(target, index=False, lineterminator="\n")
    counts = Counter(out["outcome"])
    return {
        "rows": len(out),
        "approve": counts.get("approve", 0),
        "refer": counts.get("refer", 0),
        "decline": counts.get("decline", 0),
        "not_found": counts.get("not_found", 0),
        "invalid": counts.get("invalid", 0),
        "degraded": int(out["degraded"].sum()),
        "total_pre_approved_limit": int(out["pre_approved_limit"].sum()),
        "recorded": bool(record),
        "seconds": round(time.perf_counter() - started, 3),
        "out": str(target),
    }


#: Columns of a book holding one party's partial score (its share of the log-odds).
PARTIAL_PREFIX = "partial_"


def _stability_columns(df: pd.DataFrame, *, current: bool) -> dict[str, str]:
    """What a book can be compared on: ``pd``, ``score`` and each ``partial_<party>``, mapped to its column."""
    cols = list(df.columns)
    pd_names = ("current_pd",) + _PD_COLUMNS if current else _PD_COLUMNS
    score_names = ("current_score",) + _SCORE_COLUMNS if current else _SCORE_COLUMNS
    out = {}
    for key, names in (("pd", pd_names), ("score", score_names)):
        found = next((c for c in names if c in cols), None)
        if found:
            out[key] = found
    for c in cols:
        if c.startswith(PARTIAL_PREFIX) and len(c) > len(PARTIAL_PREFIX):
            out[c] = c
    return out


def book_stability(baseline: pd.DataFrame, current: pd.DataFrame, *, bins: int = 10) -> dict[str, dict[str, Any]]:
    """Population stability (PSI) between two books: of the PD, the score and each party's partial score.

    Parameters
    ----------
    baseline, current : DataFrame
        Books with a PD column (``previous_pd`` / ``probability_of_default`` / ``pd``;
        ``current_pd`` first in the current book), optionally a score column and
        ``partial_<party>`` columns (a party's share of the log-odds).
    bins : int
        Quantile bins of the baseline.

    Returns
    -------
    dict
        ``pd``, ``score`` and ``partial_<party>`` → :func:`fedrisk.models.report.population_stability`,
        for every quantity both books hold.
    """
    from fedrisk.models.report import population_stability

    base_cols = _stability_columns(baseline, current=False)
    cur_cols = _stability_columns(current, current=True)
    out = {}
    for key in [k for k in base_cols if k in cur_cols]:
        e = pd.to_numeric(baseline[base_cols[key]], errors="coerce")
        a = pd.to_numeric(current[cur_cols[key]], errors="coerce")
        out[key] = population_stability(e, a, bins=bins)
    return out


def compare_books(baseline_csv: str | Path, current_csv: str | Path, out_dir: str | Path, *, id_column: str | None = None, bins: int = 10) -> dict[str, Any]:
    """PSI between two stored books (no rescoring): ``psi.json`` in ``out_dir``; returns the summary."""
    started = time.perf_counter()
    base = read_id_table(baseline_csv, id_column)
    cur = read_id_table(current_csv, id_column)
    psi = book_stability(base, cur, bins=bins)
    if not psi:
        raise ConfigError(f"{Path(baseline_csv).name} and {Path(current_csv).name} share no PD, score or partial_<party> column to compare")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    psi_path = folder / "psi.json"
    psi_path.write_text(json.dumps(psi, indent=1, sort_keys=True))
    return {
        "psi": {k: round(v["psi"], 6) for k, v in psi.items()},
        "psi_verdict": {k: v["verdict"] for k, v in psi.items()},
        "psi_json": str(psi_path),
        "baseline_rows": len(base),
        "rows": len(cur),
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_watch(
    client: ScoringClient,
    book_csv: str | Path,
    out_dir: str | Path,
    *,
    pd_threshold: float,
    min_rise: float = 0.0,
    id_column: str | None = None,
    baseline: str | Path | None = None,
    psi_bins: int = 10,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Rescore a book; flag borrowers whose PD rose to ``pd_threshold`` or above; population stability.

    A borrower is flagged when its current PD is at least ``pd_threshold``, it
    is higher than its previous PD by more than ``min_rise``, and the previous PD
    was below the threshold (it *crossed* it) or ``min_rise`` > 0 (it keeps rising).

    Population stability (``psi`` in the summary, ``psi.json`` in ``out_dir``):
    PSI of the PD and score between the baseline book — ``baseline`` if given,
    else the book's own previous columns — and the rescored book, and of each
    party's partial score (``partial_<party>`` columns) where both books hold
    them. The scoring node's decisions do not carry per-party partial scores,
    so for those the current book must be given with ``partial_`` columns too
    (``fedrisk score watch BOOK --baseline OLD --no-rescore`` compares two stored books, :func:`compare_books`).
    """
    if not 0.0 < pd_threshold < 1.0:
        raise ConfigError(f"--pd-threshold must be in (0, 1), got {pd_threshold}")
    started = time.perf_counter()
    source = Path(book_csv)
    df = read_id_table(source, id_column)
    pd_col = _pick(list(df.columns), _PD_COLUMNS, None, "previous PD", source)
    if pd_col is None:
        raise ConfigError(f"{source.name}: no previous PD column (previous_pd, probability_of_default or pd)")
    previous_pd = pd.to_numeric(df[pd_col], errors="coerce").to_numpy(dtype=float)
    score_col = _pick(list(df.columns), _SCORE_COLUMNS, None, "previous score", source)
    previous_score = pd.to_numeric(df[score_col], errors="coerce").to_numpy(dtype=float) if score_col else None
    decisions, invalid = _score_all(client, df, purpose=pb.MONITORING, estimate=True, label="rescoring book", progress=progress, console=console)
    rows = []
    for i, sme_id in enumerate(df["sme_id"]):
        d = decisions.get(i)
        before = previous_pd[i]
        if d is None or d.outcome == pb.OUTCOME_UNSPECIFIED:
            rows.append(
                {
                    "sme_id": sme_id,
                    "previous_pd": before,
                    "current_pd": np.nan,
                    "pd_change": np.nan,
                    "previous_score": np.nan if previous_score is None else previous_score[i],
                    "current_score": np.nan,
                    "score_shift": np.nan,
                    "flagged": False,
                    "status": "invalid" if d is None else "not_found",
                    "risk_band": "",
                    "degraded": False,
                    "reasons": invalid.get(i, _reasons(d) if d else ""),
                }
            )
            continue
        now = d.probability_of_default
        rise = now - before if math.isfinite(before) else np.nan
        crossed = math.isfinite(before) and before < pd_threshold <= now
        rising = min_rise > 0 and math.isfinite(rise) and rise > min_rise and now >= pd_threshold
        flagged = bool((crossed and (not math.isfinite(rise) or rise > min_rise)) or rising)
        prev_s = np.nan if previous_score is None else previous_score[i]
        rows.append({
            "sme_id": d.sme_id, "previous_pd": before, "current_pd": round(now, 8), "pd_change": rise,
            "previous_score": prev_s, "current_score": d.score, "score_shift": d.score - prev_s if math.isfinite(prev_s) else np.nan,
            "flagged": flagged, "status": "ok", "risk_band": d.risk_band, "degraded": d.degraded, "reasons": _reasons(d),
        })  # fmt: skip
    out = pd.DataFrame(rows)
    out["current_score"] = out["current_score"].astype("Int64")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "watch.csv"
    out.to_csv(csv_path, index=False, lineterminator="\n")
    png_path = folder / "score_shift.png"
    _plot(out, png_path, pd_threshold, use_score=previous_score is not None)
    ok = out[out["status"] == "ok"]
    current = ok
    base_df = read_id_table(baseline, id_column) if baseline is not None else df
    psi = book_stability(base_df, current, bins=psi_bins) if len(current) else {}
    psi_path = folder / "psi.json"
    psi_path.write_text(json.dumps(psi, indent=1, sort_keys=True))
    return {
        "psi": {k: round(v["psi"], 6) for k, v in psi.items()},
        "psi_verdict": {k: v["verdict"] for k, v in psi.items()},
        "psi_json": str(psi_path),
        "rows": len(out),
        "rescored": len(ok),
        "flagged": int(ok["flagged"].sum()),
        "pd_threshold": pd_threshold,
        "min_rise": min_rise,
        "mean_pd_change": round(float(np.nanmean(ok["pd_change"])), 6) if len(ok) else 0.0,
        "mean_score_shift": round(float(np.nanmean(ok["score_shift"])), 3) if len(ok) and previous_score is not None else None,
        "invalid": int((out["status"] == "invalid").sum()),
        "not_found": int((out["status"] == "not_found").sum()),
        "seconds": round(time.perf_counter() - started, 3),
        "csv": str(csv_path),
        "png": str(png_path),
    }


def _plot(out: pd.DataFrame, path: Path, threshold: float, *, use_score: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = out[out["status"] == "ok"]
    shift = ok["score_shift"] if use_score else ok["pd_change"] * 100.0
    unit = "score shift (points, current − previous)" if use_score else "PD change (percentage points)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    values = shift.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    bins = np.histogram_bin_edges(values, bins=40) if len(values) else 10
    left.hist(values, bins=bins, color="#4C78A8", alpha=0.85, label="all borrowers")
    flagged = shift[ok["flagged"]].to_numpy(dtype=float)
    if len(flagged):
        left.hist(flagged[np.isfinite(flagged)], bins=bins, color="#E45756", alpha=0.9, label="flagged")
    left.axvline(0.0, color="black", lw=0.8)
    left.set_xlabel(unit)
    left.set_ylabel("borrowers")
    left.set_title(f"Score-shift distribution ({len(ok)} rescored)")
    left.legend()
    right.scatter(ok["previous_pd"], ok["current_pd"], s=6, c=np.where(ok["flagged"], "#E45756", "#4C78A8"), alpha=0.6)
    lim = float(np.nanmax([ok["previous_pd"].max(), ok["current_pd"].max(), threshold * 1.2])) if len(ok) else 1.0
    right.plot([0, lim], [0, lim], color="grey", lw=0.8)
    right.axhline(threshold, color="#E45756", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    right.set_xlabel("previous PD")
    right.set_ylabel("current PD")
    right.set_title(f"{int(ok['flagged'].sum())} flagged")
    right.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
