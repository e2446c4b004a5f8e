"""The model report for model validation and compliance: ``model_report.json`` + ``model_report.html``.

Built at the label holder (the bank) from what it holds: its labels, the joint
model's PDs on its evaluation rows, its own features, and the per-party partial
scores its scoring node receives. Contents:

* discrimination: ROC curve and AUC, KS (with the PD at which it is reached);
* a lift / gain table by score decile (defaults captured, cumulative gain, lift);
* calibration: predicted PD against the observed default rate per PD decile,
  Brier score and the Hosmer–Lemeshow statistic;
* information value (IV) per feature per party, by name; values only for the
  bank's own features (computed by the bank on its own rows with
  :class:`fedrisk.models.woe.PlainWOE`) — another party's features are listed by
  the names that party approved, with the value withheld;
* each party's contribution: the AUC drop when that party is left out (the
  method is stated in the report: retrained without it, or its block removed
  from the trained model, i.e. scored as if it did not cover the SME);
* the score distribution of defaulters and non-defaulters;
* for a stacking model, every base learner's AUC next to the stack's.

The HTML is self-contained like the audit report (:mod:`fedrisk.audit.report`):
no JavaScript, no URL, PNG charts embedded as ``data:`` URIs, every string
escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.errors import DataValidationError
from fedrisk.models.metrics import auc, ks

__all__ = [
    "REPORT_FORMAT",
    "ModelReportResult",
    "bank_iv",
    "build_model_report",
    "calibration_table",
    "gain_table",
    "leave_out_contributions",
    "model_metrics",
    "population_stability",
    "psi_verdict",
    "roc_curve",
]

REPORT_FORMAT = "fedrisk-model-report/1"
JSON_NAME = "model_report.json"
HTML_NAME = "model_report.html"


@dataclass(frozen=True)
class ModelReportResult:
    """What :func:`build_model_report` wrote."""

    json_path: Path
    html_path: Path
    doc: dict[str, Any]


# -- metrics --------------------------------------------------------------------


def _check(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.size != p.size:
        raise DataValidationError(f"model report: {y.size} labels but {p.size} PDs")
    if y.size == 0:
        raise DataValidationError("model report: no rows to report on")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise DataValidationError("model report: PDs must be finite and within [0, 1]")
    if not np.all(np.isin(np.unique(y), (0, 1))):
        raise DataValidationError("model report: labels must be 0/1")
    if y.min() == y.max():
        raise DataValidationError("model report: the rows hold only one class; AUC and KS need both")
    return y.astype(int), p


def roc_curve(y: Any, p: Any, *, max_points: int = 400) -> dict[str, list[float]]:
    """ROC points (FPR, TPR, threshold) at every distinct PD, thinned to about ``max_points``."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="mergesort")
    sp, hits = p[order], y[order].astype(bool)
    ends = np.r_[sp[1:] != sp[:-1], True]
    tpr = np.cumsum(hits)[ends] / hits.sum()
    fpr = np.cumsum(~hits)[ends] / (~hits).sum()
    thr = sp[ends]
    keep = np.unique(np.r_[0, np.linspace(0, tpr.size - 1, min(max_points, tpr.size)).astype(int), tpr.size - 1])
    return {"fpr": [0.0, *fpr[keep].tolist()], "tpr": [0.0, *tpr[keep].tolist()], "threshold": [1.0, *thr[keep].tolist()]}


def gain_table(y: Any, p: Any, *, groups: int = 10) -> list[dict[str, float]]:
    """Lift / gain table: rows ranked by PD (riskiest first) in ``groups`` equal-size groups.

    Each row: ``group`` (1 = riskiest), ``rows``, ``defaults``, ``default_rate``,
    ``pd_min``/``pd_max``/``pd_mean``, ``cum_rows_pct``, ``cum_defaults_pct`` (the
    gain), ``lift`` (group rate / overall rate), ``cum_lift``.
    """
    y, p = _check(y, p)
    if groups < 1:
        raise DataValidationError(f"model report: groups must be ≥ 1, got {groups}")
    order = np.argsort(-p, kind="mergesort")
    parts = np.array_split(order, min(groups, y.size))
    base = y.mean()
    total_def = y.sum()
    out, cum_rows, cum_def = [], 0, 0
    for g, idx in enumerate(parts, start=1):
        d = int(y[idx].sum())
        cum_rows += idx.size
        cum_def += d
        rate = d / idx.size
        out.append(
            {
                "group": g,
                "rows": int(idx.size),
                "defaults": d,
                "default_rate": rate,
                "pd_min": float(p[idx].min()),
                "pd_max": float(p[idx].max()),
                "pd_mean": float(p[idx].mean()),
                "cum_rows_pct": 100.0 * cum_rows / y.size,
                "cum_defaults_pct": 100.0 * cum_def / total_def,
                "lift": rate / base,
                "cum_lift": (cum_def / cum_rows) / base,
            }
        )
    return out


def calibration_table(y: Any, p: Any, *, bins: int = 10) -> dict[str, Any]:
    """Predicted vs observed default rate per PD decile, Brier score, Hosmer–Lemeshow statistic."""
    y, p = _check(y, p)
    order = np.argsort(p, kind="mergesort")
    rows, hl = [], 0.0
    for idx in np.array_split(order, min(bins, y.size)):
        n, obs, exp = idx.size, float(y[idx].sum()), float(p[idx].sum())
        rows.append({"rows": int(n), "pd_mean": exp / n, "observed_rate": obs / n, "defaults": int(obs), "expected_defaults": exp})
        pbar = exp / n
        if 0.0 < pbar < 1.0:
            hl += (obs - exp) ** 2 / (n * pbar * (1.0 - pbar))
    return {
        "bins": rows,
        "brier": float(np.mean((p - y) ** 2)),
        "hosmer_lemeshow": float(hl),
        "hosmer_lemeshow_df": max(1, len(rows) - 2),
        "mean_pd": float(p.mean()),
        "default_rate": float(y.mean()),
    }


def score_distribution(y: Any, p: Any, *, bins: int = 20) -> dict[str, Any]:
    """Histogram of PDs (quantile-free, ``bins`` equal-width bins over the observed PD range) per class."""
    y, p = _check(y, p)
    lo, hi = float(p.min()), float(p.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, bins + 1)
    return {"edges": edges.tolist(), "defaults": np.histogram(p[y == 1], edges)[0].tolist(), "non_defaults": np.histogram(p[y == 0], edges)[0].tolist()}


def model_metrics(y: Any, p: Any) -> dict[str, Any]:
    """AUC, KS (and the PD where it is reached), ROC, gain table, calibration and score distribution."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="mergesort")
    sp, hits = p[order], y[order].astype(bool)
    ends = np.r_[sp[1:] != sp[:-1], True]
    gap = (np.cumsum(hits) / hits.sum() - np.cumsum(~hits) / (~hits).sum())[ends]
    return {
        "rows": int(y.size),
        "defaults": int(y.sum()),
        "auc": auc(y, p),
        "ks": ks(y, p),
        "ks_pd": float(sp[ends][int(np.argmax(np.abs(gap)))]),
        "roc": roc_curve(y, p),
        "gain": gain_table(y, p),
        "calibration": calibration_table(y, p),
        "distribution": score_distribution(y, p),
    }


def bank_iv(X: Any, y: Any, names: Sequence[str], *, n_bins: int = 10, min_bin_size: int = 50) -> dict[str, float]:
    """IV of the bank's own features on its own rows and labels (no exchange): :class:`~fedrisk.models.woe.PlainWOE`."""
    from fedrisk.models.woe import PlainWOE

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DataValidationError(f"model report: {len(names)} feature names for a table of shape {X.shape}")
    woe = PlainWOE(n_bins=n_bins, min_bin_size=min_bin_size).fit(X, np.asarray(y, dtype=np.float64), feature_names=list(names))
    return {str(k): float(v) for k, v in woe.iv_.items()}


def leave_out_contributions(y: Any, p_full: Any, without: Mapping[str, Any], *, method: str) -> dict[str, dict[str, Any]]:
    """Each party's contribution: the AUC of the model with and without it, and the drop.

    Parameters
    ----------
    y, p_full : arrays
        Labels and the full model's PDs.
    without : mapping party → array
        PDs of the model with that party left out, same rows.
    method : str
        How the party was left out (stated in the report).
    """
    full = auc(*_check(y, p_full))
    out = {}
    for party, p in without.items():
        a = auc(*_check(y, p))
        out[str(party)] = {"auc_with": full, "auc_without": a, "auc_drop": full - a, "method": method}
    return out


def psi_verdict(psi: float) -> str:
    """The usual reading of a PSI: < 0.10 stable, 0.10–0.25 moderate shift, ≥ 0.25 significant shift."""
    return "stable" if psi < 0.10 else ("moderate shift" if psi < 0.25 else "significant shift")


def population_stability(expected: Any, actual: Any, *, bins: int = 10, floor: float = 1e-4) -> dict[str, Any]:
    """Population stability index of ``actual`` against ``expected`` (the baseline book).

    Bins are the baseline's quantiles (``bins`` of them, fewer where values tie);
    ``PSI = Σ_b (a_b − e_b) · ln(a_b / e_b)`` over the bins' shares, each share
    floored at ``floor`` so that an empty bin gives a large, finite term. NaNs are
    left out of both books.

    Returns
    -------
    dict
        ``psi``, ``verdict`` (:func:`psi_verdict`), ``expected_rows``,
        ``actual_rows`` and per bin ``lo``, ``hi``, ``expected_pct``, ``actual_pct``, ``psi``.
    """
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    e, a = e[np.isfinite(e)], a[np.isfinite(a)]
    if bins < 2:
        raise DataValidationError(f"PSI needs at least 2 bins, got {bins}")
    if e.size < bins or a.size == 0:
        raise DataValidationError(f"PSI needs at least {bins} baseline values and one current value, got {e.size} and {a.size}")
    inner = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    edges = np.r_[-np.inf, inner, np.inf]
    # right-closed bins (lo, hi]: a value equal to a quantile edge falls in the lower bin
    e_counts = np.bincount(np.searchsorted(inner, e, side="left"), minlength=edges.size - 1)
    a_counts = np.bincount(np.searchsorted(inner, a, side="left"), minlength=edges.size - 1)
    e_pct = np.maximum(e_counts / e.size, floor)
    a_pct = np.maximum(a_counts / a.size, floor)
    terms = (a_pct - e_pct) * np.log(a_pct / e_pct)
    psi = float(terms.sum())
    return {
        "psi": psi,
        "verdict": psi_verdict(psi),
        "expected_rows": int(e.size),
        "actual_rows": int(a.size),
        "bins": [
            {
                "lo": float(lo) if np.isfinite(lo) else None,
                "hi": float(hi) if np.isfinite(hi) else None,
                "expected_pct": 100.0 * float(ec) / e.size,
                "actual_pct": 100.0 * float(ac) / a.size,
                "psi": float(t),
            }
            for lo, hi, ec, ac, t in zip(edges[:-1], edges[1:], e_counts, a_counts, terms)
        ],
    }


# -- charts -----------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 5.2, h: float = 3.8) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _label(name: str) -> str:
    label = str(name).replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def _charts(doc: Mapping[str, Any]) -> dict[str, str]:
    m = doc["metrics"]
    charts = {}
    fig, ax = _figure()
    ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], label=f"{_label(doc['model'])} (AUC {m['auc']:.3f})")
    for name, base in (doc.get("base_learners") or {}).items():
        if "roc" in base:
            ax.plot(base["roc"]["fpr"], base["roc"]["tpr"], lw=1, alpha=0.8, label=f"{_label(name)} (AUC {base['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC — KS {m['ks']:.3f}")
    ax.legend(fontsize=8, loc="lower right")
    charts["roc"] = _png(fig)
    fig, ax = _figure()
    gain = m["gain"]
    ax.plot([0] + [g["cum_rows_pct"] for g in gain], [0] + [g["cum_defaults_pct"] for g in gain], marker="o", label="model")
    ax.plot([0, 100], [0, 100], ls=":", c="grey", label="random")
    ax.set_xlabel("% of SMEs, riskiest first")
    ax.set_ylabel("% of defaults captured")
    ax.set_title("Cumulative gain")
    ax.legend(fontsize=8, loc="lower right")
    charts["gain"] = _png(fig)
    fig, ax = _figure()
    cal = m["calibration"]["bins"]
    ax.plot([b["pd_mean"] for b in cal], [b["observed_rate"] for b in cal], marker="o", label="observed")
    top = max(max(b["pd_mean"] for b in cal), max(b["observed_rate"] for b in cal), 1e-6)
    ax.plot([0, top], [0, top], ls=":", c="grey", label="perfect calibration")
    ax.set_xlabel("mean predicted PD (decile)")
    ax.set_ylabel("observed default rate")
    ax.set_title(f"Calibration — Brier {m['calibration']['brier']:.4f}")
    ax.legend(fontsize=8, loc="upper left")
    charts["calibration"] = _png(fig)
    fig, ax = _figure(7.0, 3.6)
    dist = m["distribution"]
    edges = np.asarray(dist["edges"])
    width = np.diff(edges)
    ax.bar(edges[:-1], dist["non_defaults"], width=width, align="edge", alpha=0.6, label="non-defaulters")
    ax.bar(edges[:-1], dist["defaults"], width=width, align="edge", alpha=0.6, label="defaulters")
    ax.set_xlabel("PD")
    ax.set_ylabel("SMEs")
    ax.set_title("Score distribution")
    ax.legend(fontsize=8)
    charts["distribution"] = _png(fig)
    return charts


# -- HTML ------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d6dae3;padding-bottom:4px}
.muted{color:#5b6475;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border:1px solid #d6dae3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:inline-block;margin:4px 18px 4px 0;font-size:15px}.kpi b{font-size:20px}
.charts img{max-width:48%;border:1px solid #d6dae3;margin:4px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _f(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(doc: Mapping[str, Any], charts: Mapping[str, str]) -> str:
    m = doc["metrics"]
    kpis = "".join(
        f'<span class="kpi">{_e(k)} <b>{v}</b></span>'
        for k, v in (
            ("AUC", _f(m["auc"])),
            ("KS", _f(m["ks"])),
            ("rows", f"{m['rows']:,}"),
            ("defaults", f"{m['defaults']:,}"),
            ("Brier", _f(m["calibration"]["brier"])),
        )
    )
    img = "".join(
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{charts[key]}">'
        for key, alt in (("roc", "ROC curve"), ("gain", "Cumulative gain"), ("calibration", "Calibration"), ("distribution", "Score distribution"))
    )
    gain = _table(
        ("group (riskiest first)", "SMEs", "defaults", "default rate", "PD range", "cum. % SMEs", "cum. % defaults (gain)", "lift", "cum. lift"),
        [
            (
                _e(g["group"]),
                f"{g['rows']:,}",
                f"{g['defaults']:,}",
                _f(g["default_rate"]),
                f"{g['pd_min']:.4f}–{g['pd_max']:.4f}",
                _f(g["cum_rows_pct"], 1),
                _f(g["cum_defaults_pct"], 1),
                _f(g["lift"], 2),
                _f(g["cum_lift"], 2),
            )
            for g in m["gain"]
        ],
        frozenset({1, 2, 3, 5, 6, 7, 8}),
    )
    cal = m["calibration"]
    calibration = _table(
        ("PD decile", "SMEs", "mean predicted PD", "observed rate", "expected defaults", "defaults"),
        [
            (str(i + 1), f"{b['rows']:,}", _f(b["pd_mean"]), _f(b["observed_rate"]), _f(b["expected_defaults"], 1), f"{b['defaults']:,}")
            for i, b in enumerate(cal["bins"])
        ],
        frozenset({1, 2, 3, 4, 5}),
    )
    iv_rows = []
    for party, info in doc["iv"]["parties"].items():
        for feat in info["features"]:
            value = feat.get("iv")
            iv_rows.append((_e(party), _e(feat["name"]), _f(value) if value is not None else _e(feat.get("note", "withheld"))))
    iv_note = _e(doc["iv"].get("note", ""))
    iv = (_table(("party", "feature", "IV"), iv_rows, frozenset({2})) if iv_rows else "<p>No features listed.</p>") + f'<p class="muted">{iv_note}</p>'
    contrib = doc.get("contributions") or {}
    contributions = (
        _table(
            ("party left out", "AUC with", "AUC without", "AUC drop", "method"),
            [(_e(p), _f(c["auc_with"]), _f(c["auc_without"]), _f(c["auc_drop"]), _e(c["method"])) for p, c in contrib.items()],
            frozenset({1, 2, 3}),
        )
        if contrib
        else "<p>Not computed for this run.</p>"
    )
    bases = doc.get("base_learners") or {}
    stack = ""
    if bases:
        stack = "<h2>Stacking: base learners and the stack</h2>" + _table(
            ("model", "AUC", "KS"),
            [*((_e(n), _f(b["auc"]), _f(b["ks"])) for n, b in bases.items()), (_e(doc["model"]), _f(m["auc"]), _f(m["ks"]))],
            frozenset({1, 2}),
        )
    parties = _table(
        ("party", "role", "features (by name)"), [(_e(p), _e(i.get("role")), _e(", ".join(i.get("features", [])))) for p, i in doc["parties"].items()]
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{_e(doc["title"])}</title><style>{_CSS}</style></head><body>
<h1>{_e(doc["title"])}</h1>
<p class="muted">run {_e(doc["run_id"])} · model {_e(doc["model"])} · evaluated on {_e(doc["evaluated_on"])} · generated {_e(doc["generated_utc"])} · {_e(doc["format"])}</p>
<div>{kpis}</div>
<h2>Parties</h2>{parties}
<h2>Discrimination, gain, calibration, score distribution</h2>
<div class="charts">{img}</div>
<p>KS {_f(m["ks"])} reached at PD {_f(m["ks_pd"])}.</p>
<h2>Lift / gain table</h2>{gain}
<h2>Calibration</h2>{calibration}
<p>Brier score {_f(cal["brier"])}; Hosmer–Lemeshow statistic {_f(cal["hosmer_lemeshow"], 2)} on {cal["hosmer_lemeshow_df"]} degrees of freedom; mean PD {_f(cal["mean_pd"])} against a default rate of {_f(cal["default_rate"])}.</p>
{stack}
<h2>Information value per feature per party</h2>{iv}
<h2>Each party's contribution (AUC drop when left out)</h2>{contributions}
<p class="muted">{_e(doc.get("note", ""))}</p>
</body></html>
"""


def build_model_report(
    out_dir: Path | str,
    *,
    y: Any,
    pd_: Any,
    model: str,
    run_id: str,
    parties: Mapping[str, Mapping[str, Any]],
    bank: str,
    iv: Mapping[str, float] | None = None,
    iv_note: str | None = None,
    contributions: Mapping[str, Mapping[str, Any]] | None = None,
    base_learners: Mapping[str, Any] | None = None,
    evaluated_on: str = "the bank's evaluation rows",
    title: str = "fedrisk model report",
    note: str = "",
) -> ModelReportResult:
    """Write ``model_report.json`` and the self-contained ``model_report.html`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Usually ``runs/<run-id>``.
    y, pd_ : arrays
        The bank's labels and the model's PDs on the evaluation rows.
    model : str
        Model name (``vertical_lr``, ``secureboost``, ``stacking``).
    run_id : str
    parties : mapping party → {"role": str, "features": [names]}
        Feature names as each party approved them (names only).
    bank : str
        The label holder: the only party whose IV values are shown.
    iv : mapping feature → IV, optional
        The bank's own features' IV (see :func:`bank_iv`); None leaves the values to be filled.
    contributions : mapping party → {"auc_with", "auc_without", "auc_drop", "method"}, optional
        From :func:`leave_out_contributions`.
    base_learners : mapping name → PDs on the same rows, optional
        A stack's base learners (reported with their AUC and KS).

    Returns
    -------
    ModelReportResult
    """
    y, p = _check(y, pd_)
    if bank not in parties:
        raise DataValidationError(f"model report: the bank {bank!r} is not among the parties")
    metrics = model_metrics(y, p)
    iv_doc: dict[str, Any] = {
        "parties": {},
        "note": iv_note
        or (
            "IV of the bank's own features, computed by the bank on its own rows and labels (quantile bins, fedrisk.models.woe.PlainWOE); "
            "other parties' features are listed by name, their IV withheld."
        ),
    }
    for party, info in parties.items():
        feats = []
        for name in info.get("features", []):
            if party == bank:
                value = None if iv is None else iv.get(str(name))
                feats.append({"name": str(name), "iv": value, **({} if value is not None else {"note": "to be filled"})})
            else:
                feats.append({"name": str(name), "iv": None, "note": "withheld (another party's feature)"})
        iv_doc["parties"][str(party)] = {"role": info.get("role"), "features": feats}
    bases = {}
    for name, pb in (base_learners or {}).items():
        yb, pbv = _check(y, pb)
        bases[str(name)] = {"auc": auc(yb, pbv), "ks": ks(yb, pbv), "roc": roc_curve(yb, pbv, max_points=200)}
    doc = {
        "format": REPORT_FORMAT,
        "title": title,
        "run_id": run_id,
        "model": model,
        "bank": bank,
        "evaluated_on": evaluated_on,
        "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "parties": {str(k): {"role": v.get("role"), "features": [str(f) for f in v.get("features", [])]} for k, v in parties.items()},
        "metrics": metrics,
        "base_learners": bases,
        "iv": iv_doc,
        "contributions": {str(k): dict(v) for k, v in (contributions or {}).items()},
        "note": note,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / JSON_NAME, out / HTML_NAME
    for path, text in ((json_path, json.dumps(doc, indent=1, sort_keys=True)), (html_path, _html(doc, _charts(doc)))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return ModelReportResult(json_path, html_path, doc)
