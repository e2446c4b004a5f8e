"""The compliance report of a run: ``audit_report.json`` and a self-contained HTML page.

The HTML needs no JavaScript and references no URL: the traffic chart is a
PNG embedded as a ``data:`` URI and the styles are inline. Every string that
comes from a ledger (party names, steps, message types...) is passed through
:func:`html.escape`, since a ledger is evidence supplied by the parties.
"""

from __future__ import annotations

import dataclasses

import base64
import html
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrisk.audit.entry import ContentClass, Direction, EntryKind, LedgerEntry, key_id_of
from fedrisk.audit.store import LedgerSnapshot
from fedrisk.audit.verify import CALike, Finding, TrustedKeys, load_snapshots, verify_snapshots

_CLOSE = EntryKind.RUN_CLOSE.value

REPORT_FORMAT = "fedrisk-audit-report/1"
JSON_NAME = "audit_report.json"
HTML_NAME = "audit_report.html"
PNG_NAME = "audit_traffic.png"
#: The HTML tables stop here (the JSON always holds everything).
MAX_HTML_ROWS = 2000


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and concluded."""

    json_path: Path
    html_path: Path
    png_path: Path
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """Whether verification found nothing wrong."""
        return not self.findings


# -- data ---------------------------------------------------------------------


def _clean(value: object) -> object:
    # Tampered files may hold bytes or odd types; keep the JSON writable.
    if isinstance(value, bytes):
        return repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, int | float | str):
        return value
    return repr(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _iso(ts: object) -> str:
    try:
        return datetime.fromtimestamp(int(ts) / 1e6, tz=UTC).isoformat(timespec="milliseconds")  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _party(snap: LedgerSnapshot, trusted_keys: TrustedKeys | None, bound: bool | None = None) -> dict[str, Any]:
    meta = snap.meta
    pub = meta.get("public_key")
    trusted: bool | None = None
    if trusted_keys is not None:
        tk = trusted_keys.get(str(meta.get("writer")))
        tk_hex = tk if isinstance(tk, str) else (tk.hex() if isinstance(tk, bytes) else None)
        trusted = tk_hex is not None and tk_hex.lower() == str(pub).lower()
    try:
        derived = key_id_of(bytes.fromhex(str(pub)))
    except ValueError:
        derived = "?"
    stamps = [e.timestamp_us for e in snap.entries if isinstance(e.timestamp_us, int)]
    return {
        "name": _clean(meta.get("writer")),
        "file": Path(snap.path).name,
        "public_key": _clean(pub),
        "key_id": _clean(meta.get("key_id")),
        "key_id_derived": derived,
        "trusted": trusted,
        "certificate_bound": bound,
        "entries": len(snap.entries),
        "first_utc": _iso(min(stamps)) if stamps else None,
        "last_utc": _iso(max(stamps)) if stamps else None,
    }


def _exchanges(snaps: list[LedgerSnapshot]) -> list[dict[str, Any]]:
    """One row per message, pairing the sender's and the receiver's entries."""
    received: dict[tuple[object, object, object], list[tuple[str, LedgerEntry]]] = defaultdict(list)
    for snap in snaps:
        for e in snap.entries:
            if e.direction == Direction.RECEIVED.value and e.kind != _CLOSE:
                received[(e.message_id, e.sender, e.receiver)].append((Path(snap.path).name, e))
    rows: list[dict[str, Any]] = []

    def row(e: LedgerEntry, sent_at: str | None, recv_at: str | None, status: str) -> dict[str, Any]:
        return {
            "time_utc": _iso(e.timestamp_us),
            "timestamp_us": _clean(e.timestamp_us),
            "run_id": _clean(e.run_id),
            "round": _clean(e.round),
            "step": _clean(e.step),
            "sender": _clean(e.sender),
            "receiver": _clean(e.receiver),
            "message_type": _clean(e.message_type),
            "content_class": _clean(e.content_class),
            "size_bytes": _clean(e.size_bytes),
            "payload_sha256": _clean(e.payload_sha256),
            "key_fingerprint": _clean(e.key_fingerprint),
            "message_id": _clean(e.message_id),
            "sent_entry": sent_at,
            "received_entry": recv_at,
            "status": status,
        }

    for snap in snaps:
        name = Path(snap.path).name
        for e in snap.entries:
            if e.direction != Direction.SENT.value or e.kind == _CLOSE:
                continue
            bucket = received.get((e.message_id, e.sender, e.receiver))
            if bucket:
                r_name, r = bucket.pop(0)
                rows.append(row(e, f"{name}#{e.seq}", f"{r_name}#{r.seq}", "paired"))
            else:
                rows.append(row(e, f"{name}#{e.seq}", None, "sent only"))
    for bucket in received.values():
        for r_name, r in bucket:
            rows.append(row(r, None, f"{r_name}#{r.seq}", "received only"))
    rows.sort(key=lambda r: (_int(r["timestamp_us"]), str(r["sent_entry"] or r["received_entry"])))
    return rows


def _traffic(snaps: list[LedgerSnapshot]) -> dict[str, dict[str, dict[str, int]]]:
    """Bytes each node recorded as sent/received, per round (its own view)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for snap in snaps:
        writer = str(_clean(snap.meta.get("writer")))
        per_round = out.setdefault(writer, {})
        for e in snap.entries:
            if e.kind == _CLOSE:
                continue
            slot = per_round.setdefault(str(_clean(e.round)), {"sent": 0, "received": 0})
            if e.direction in ("sent", "received"):
                slot[e.direction] += _int(e.size_bytes)
    return out


def _closes(snaps: list[LedgerSnapshot]) -> list[dict[str, Any]]:
    """Every run-close record: which node closed which run, at which head."""
    return [
        {
            "node": _clean(snap.meta.get("writer")),
            "run_id": _clean(e.run_id),
            "entry": f"{Path(snap.path).name}#{e.seq}",
            "closes_count": _clean(e.sender_count),
            "closes_head": _clean(e.sender_head),
            "time_utc": _iso(e.timestamp_us),
        }
        for snap in snaps
        for e in snap.entries
        if e.kind == _CLOSE
    ]


def _classes(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for r in rows:
        counts[str(r["content_class"])] += 1
        sizes[str(r["content_class"])] += _int(r["size_bytes"])
    names = [c.value for c in ContentClass] + sorted(set(counts) - {c.value for c in ContentClass})
    return {n: {"messages": counts[n], "bytes": sizes[n]} for n in names}


# -- chart ----------------------------------------------------------------------


def _plot_label(name: str) -> str:
    # '$' would switch matplotlib to mathtext (and can raise on hostile
    # names); a leading '_' hides a legend entry.
    label = name.replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def _round_key(r: str) -> tuple[int, int | str]:
    return (0, int(r)) if r.lstrip("-").isdigit() else (1, r)


def _traffic_png(traffic: Mapping[str, Mapping[str, Mapping[str, int]]]) -> bytes:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rounds = sorted({r for per in traffic.values() for r in per}, key=_round_key)
    parties = sorted(traffic)
    peak = max((v["sent"] for per in traffic.values() for v in per.values()), default=0)
    unit, scale = next(((u, s) for u, s in (("MiB", 2**20), ("KiB", 2**10)) if peak >= s), ("bytes", 1))
    if rounds and parties:
        width = 0.8 / len(parties)
        for i, party in enumerate(parties):
            xs = [j + (i - (len(parties) - 1) / 2) * width for j in range(len(rounds))]
            ys = [traffic[party].get(r, {}).get("sent", 0) / scale for r in rounds]
            ax.bar(xs, ys, width=width, label=_plot_label(party))
        ax.set_xticks(range(len(rounds)), [_plot_label(r) for r in rounds])
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no traffic recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel(f"sent ({unit})")
    ax.set_title("Bytes sent across party lines, per round and node")
    fig.tight_layout()
    buf = io.BytesIO()
    # No Software/URL metadata: the report must not carry external URLs.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# -- HTML -----------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d6dae3;padding-bottom:4px}
.muted{color:#5b6475;font-size:13px}
.verdict{padding:12px 16px;border-radius:6px;font-weight:600;margin:16px 0}
.ok{background:#e3f5e8;color:#11632e;border:1px solid #9fd8b0}
.bad{background:#fde6e6;color:#8e1b1b;border:1px solid #f0a8a8}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px;width:100%}
th,td{border:1px solid #d6dae3;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f1f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}
tr.violation td{background:#fde6e6}tr.unpaired td{background:#fff4dc}
img{max-width:100%;border:1px solid #d6dae3}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Iterable[str], rows: Iterable[tuple[Iterable[str], str]], numeric: frozenset[int] = frozenset()) -> str:
    """Build a table; cells must already be escaped HTML. Each row is (cells, css class)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for cells, cls in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{_e(cls)}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _capped(n: int) -> str:
    return f'<p class="muted">Showing the first {MAX_HTML_ROWS} of {n} rows; the JSON report holds all.</p>' if n > MAX_HTML_ROWS else ""


def _html(doc: Mapping[str, Any], png: bytes, title: str) -> str:
    ok = doc["ok"]
    findings = doc["findings"]
    verdict = (
        '<div class="verdict ok">Verified: every ledger is intact and all ledgers agree (0 findings).</div>'
        if ok
        else f'<div class="verdict bad">Verification FAILED: {len(findings)} finding(s).</div>'
    )
    parties = _table(
        ("node", "ledger file", "key id", "public key (Ed25519)", "trusted", "bound to its certificate", "entries", "first entry (UTC)", "last entry (UTC)"),
        (
            (
                (
                    _e(p["name"]),
                    _e(p["file"]),
                    f"<code>{_e(p['key_id'])}</code>",
                    f"<code>{_e(p['public_key'])}</code>",
                    _e({True: "yes", False: "NO", None: "not checked"}[p["trusted"]]),
                    _e({True: "yes", False: "NO", None: "not checked (no CA)"}[p["certificate_bound"]]),
                    _e(p["entries"]),
                    _e(p["first_utc"]),
                    _e(p["last_utc"]),
                ),
                "",
            )
            for p in doc["parties"]
        ),
        numeric=frozenset({6}),
    )
    closes = _table(
        ("node", "run", "run-close entry", "closes the ledger at entry", "head (SHA-256)", "time (UTC)"),
        (
            (
                (
                    _e(c["node"]),
                    _e(c["run_id"]),
                    _e(c["entry"]),
                    _e(c["closes_count"]),
                    f"<code>{_e(str(c['closes_head'])[:16])}\u2026</code>",
                    _e(c["time_utc"]),
                ),
                "",
            )
            for c in doc["run_closes"][:MAX_HTML_ROWS]
        ),
        numeric=frozenset({3}),
    )
    finding_rows = _table(
        ("file", "entry", "field", "problem"),
        (((_e(f["file"]), _e("" if f["seq"] is None else f["seq"]), _e(f["field"]), _e(f["message"])), "violation") for f in findings[:MAX_HTML_ROWS]),
    )
    classes = _table(
        ("content class", "messages", "bytes"),
        (
            ((_e(name), _e(v["messages"]), _e(f"{v['bytes']:,}")), "violation" if name == "plaintext" and v["messages"] else "")
            for name, v in doc["content_classes"].items()
        ),
        numeric=frozenset({1, 2}),
    )
    traffic = doc["traffic"]
    rounds = sorted({r for per in traffic.values() for r in per}, key=_round_key)
    traffic_rows = []
    for party in sorted(traffic):
        cells = [_e(party)]
        for r in rounds:
            v = traffic[party].get(r, {"sent": 0, "received": 0})
            cells.append(_e(f"{v['sent']:,} / {v['received']:,}"))
        traffic_rows.append((cells, ""))
    traffic_table = _table(("node", *(f"round {r}" for r in rounds)), traffic_rows, numeric=frozenset(range(1, len(rounds) + 1)))
    exchanges = doc["exchanges"]
    timeline = _table(
        ("time (UTC)", "round", "step", "sender", "receiver", "message type", "class", "bytes", "payload SHA-256", "key", "entries", "status"),
        (
            (
                (
                    _e(x["time_utc"]),
                    _e(x["round"]),
                    _e(x["step"]),
                    _e(x["sender"]),
                    _e(x["receiver"]),
                    _e(x["message_type"]),
                    _e(x["content_class"]),
                    _e(f"{x['size_bytes']:,}" if isinstance(x["size_bytes"], int) else x["size_bytes"]),
                    f"<code>{_e(str(x['payload_sha256'])[:16])}\u2026</code>",
                    f"<code>{_e(str(x['key_fingerprint'])[:16] or '-')}</code>",
                    _e(" / ".join(v for v in (x["sent_entry"], x["received_entry"]) if v)),
                    _e(x["status"]),
                ),
                "violation" if x["content_class"] == "plaintext" else ("unpaired" if x["status"] != "paired" else ""),
            )
            for x in exchanges[:MAX_HTML_ROWS]
        ),
        numeric=frozenset({1, 7}),
    )
    img = base64.b64encode(png).decode("ascii")
    runs = ", ".join(doc["run_ids"]) or "-"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        f"<h1>{_e(title)}</h1>"
        f'<p class="muted">Run: {_e(runs)} &middot; generated {_e(doc["generated_utc"])} &middot; '
        f"{_e(len(exchanges))} messages in {_e(len(doc['parties']))} ledgers &middot; "
        "payload contents are never shown, only their SHA-256, size and class.</p>"
        f"{verdict}"
        f"<h2>Verification findings</h2>{finding_rows if findings else '<p>None.</p>'}{_capped(len(findings))}"
        f"<h2>Parties and keys</h2>{parties}"
        f"<h2>Run-close records</h2>{closes if doc['run_closes'] else '<p>None: no run was closed in these ledgers.</p>'}"
        '<p class="muted">Each node signs a run-close record when a run ends; every message also carries its sender\'s '
        "ledger head, which the receiver records, so a ledger cut short is named even when both ends of an exchange were cut.</p>"
        f"<h2>Content classes</h2>{classes}"
        f"<h2>Traffic per round</h2>"
        f'<img alt="Bytes sent per round per node" src="data:image/png;base64,{img}">'
        f'<p class="muted">Bytes sent / received, as each node recorded them.</p>{traffic_table}'
        f"<h2>Timeline of exchanges</h2>{timeline}{_capped(len(exchanges))}"
        "</body></html>\n"
    )


# -- entry point -------------------------------------------------------------------


def only_run(snap: LedgerSnapshot, run_id: str) -> LedgerSnapshot:
    keep = [i for i, e in enumerate(snap.entries) if e.run_id == run_id]
    return dataclasses.replace(snap, entries=tuple(snap.entries[i] for i in keep), bodies=tuple(snap.bodies[i] for i in keep))


def build_report(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    trusted_keys: TrustedKeys | None = None,
    run_id: str | None = None,
    title: str = "fedrisk audit report",
    ca: CALike | None = None,
) -> ReportResult:
    """Verify a run's ledgers and write its JSON and HTML report.

    Parameters
    ----------
    paths
        Every node's ledger file of the run.
    out_dir
        Folder for ``audit_report.json``, ``audit_report.html`` and
        ``audit_traffic.png`` (created if missing).
    trusted_keys
        Writer name -> Ed25519 public key, passed to verification.
    run_id
        The run the entries must belong to (default: the most common one).
    ca
        The federation CA certificate: each ledger's key must be bound to its
        writer's certificate (default: ``trusted_keys.ca_cert`` when present).
    title
        Page title.

    Returns
    -------
    ReportResult
        The files written and the verification findings.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    snaps, findings = load_snapshots(paths)
    if ca is None:
        ca = getattr(trusted_keys, "ca_cert", None)
    findings += verify_snapshots(snaps, trusted_keys, run_id, ca=ca)
    unbound = {f.file for f in findings if f.field == "key_binding"}
    if run_id is not None:  # a node's ledger spans its runs: show only the named one
        snaps = [only_run(s, run_id) for s in snaps]

    exchanges = _exchanges(snaps)
    traffic = _traffic(snaps)
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": title,
        "generated_utc": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "run_ids": sorted({str(_clean(e.run_id)) for s in snaps for e in s.entries}),
        "ok": not findings,
        "findings": [f.as_dict() for f in findings],
        "parties": [_party(s, trusted_keys, None if ca is None else s.path not in unbound) for s in snaps],
        "key_bindings_checked": ca is not None,
        "run_closes": _closes(snaps),
        "content_classes": _classes(exchanges),
        "traffic": traffic,
        "exchanges": exchanges,
    }
    png = _traffic_png(traffic)
    json_path, html_path, png_path = out / JSON_NAME, out / HTML_NAME, out / PNG_NAME
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    png_path.write_bytes(png)
    html_path.write_text(_html(doc, png, title), encoding="utf-8")
    return ReportResult(json_path=json_path, html_path=html_path, png_path=png_path, findings=tuple(findings))
