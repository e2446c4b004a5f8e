"""Find a run's ledgers and the signing keys its parties announced."""

from __future__ import annotations

import json
from pathlib import Path

from fedrisk.audit.recorder import LEDGER_FILE
from fedrisk.errors import LedgerError

KEY_REGISTRY = Path("coordinator") / "signing_keys.json"


def collect_ledgers(paths: list[Path]) -> tuple[list[Path], dict[str, str] | None]:
    """Expand run folders into their ledger files; pick up the run's key registry.

    A folder argument contributes every ``ledger.sqlite`` below it and, if
    present, its ``coordinator/signing_keys.json`` (party -> Ed25519 public key).
    """
    ledgers: list[Path] = []
    keys: dict[str, str] | None = None
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob(LEDGER_FILE))
            if not found:
                raise LedgerError(f"{path}: no {LEDGER_FILE} below this folder")
            ledgers.extend(found)
            registry = path / KEY_REGISTRY
            if registry.exists():
                keys = {**(keys or {}), **json.loads(registry.read_text())}
        elif path.exists():
            ledgers.append(path)
        else:
            raise LedgerError(f"{path}: no such ledger file or run folder")
    return ledgers, keys
