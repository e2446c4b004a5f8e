"""Per-round metrics and per-run summaries, as rows and CSV files.

:func:`round_rows` turns the coordinator's ``result.json`` into one row per
round (horizontal) or epoch (vertical) with the same columns either way:

``round``
    1-based round (vertical: epoch + 1).
``val_auc``
    Validation AUC of the model *after* this round: the global model on the
    common hold-out (horizontal; every bank scores it at the start of the next
    round, the last one in the final step) or the label holder's validation
    rows (vertical; round 1 is epoch 0, the all-zero starting model, whose
    tied scores make its AUC a draw of CKKS noise).
``train_loss``, ``seconds``, ``bytes``
    Mean training loss of the banks that answered (vertical: the label
    holder's), wall time and bytes that crossed the coordinator in the round.
``answered``, ``dropped``, ``stragglers``
    Horizontal only: how many banks' updates were aggregated, who dropped
    (``;``-separated) and who answered late.

Floats are written with ``repr`` (shortest round-trip), so two runs with equal
metrics give byte-identical metric columns.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

ROUND_COLUMNS = ("point", "parameter", "value", "round", "val_auc", "val_ks", "train_loss", "seconds", "bytes", "answered", "dropped", "stragglers")
#: Columns that depend only on the algorithm, the data and the seed (never on timing).
DETERMINISTIC_ROUND_COLUMNS = ("round", "val_auc", "val_ks", "train_loss", "answered", "dropped", "stragglers")


def federated_final(result: dict) -> dict[str, float]:
    """AUC/KS of the trained federated model as the run reports them."""
    if result.get("mode") == "vertical":
        final = result.get("final", {})
        return {k: float(final[k]) for k in ("auc_federated", "ks_federated", "auc_bank_only", "ks_bank_only") if k in final}
    from fedrisk.federation.train import weighted_final_metrics

    return weighted_final_metrics(result.get("final", {}))


def round_rows(result: dict) -> list[dict]:
    """One row per round/epoch of a coordinator result (see the module docstring)."""
    if result.get("status") != "ok":
        return []
    if result.get("mode") == "vertical":
        return [
            {
                "round": int(e["epoch"]) + 1,
                "val_auc": e.get("val_auc"),
                "val_ks": e.get("val_ks"),
                "train_loss": e.get("train_loss"),
                "seconds": e.get("seconds"),
                "bytes": e.get("bytes"),
            }
            for e in result.get("epochs", [])
        ]
    rounds = result.get("rounds", [])
    final = federated_final(result)
    rows = []
    for i, r in enumerate(rounds):
        after = rounds[i + 1].get("val_auc_prev_global") if i + 1 < len(rounds) else final.get("auc_federated")
        rows.append(
            {
                "round": int(r["round"]),
                "val_auc": after,
                "val_ks": final.get("ks_federated") if i + 1 == len(rounds) else None,
                "train_loss": r.get("train_loss"),
                "seconds": r.get("seconds"),
                "bytes": r.get("bytes"),
                "answered": r.get("answered"),
                "dropped": ";".join(r.get("dropped", [])),
                "stragglers": ";".join(r.get("stragglers", [])),
            }
        )
    return rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) and value > 0 else ("nan" if math.isnan(value) else repr(value))
    return str(value)


def write_csv(rows: Iterable[dict], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (columns: given, else the union in first-seen order)."""
    rows = list(rows)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` (all cells as text)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
