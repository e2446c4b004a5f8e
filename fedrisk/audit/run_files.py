"""Find a run's ledgers, the signing keys its parties announced, and the federation CA."""

from __future__ import annotations

import json
from pathlib import Path

from fedrisk.audit.recorder import LEDGER_FILE
from fedrisk.errors import LedgerError

KEY_REGISTRY = Path("coordinator") / "signing_keys.json"
#: Where a local federation keeps its CA certificate (``<run-dir>/pki``).
RUN_CA = Path("pki") / "ca.crt"


class RunKeys(dict[str, str]):
    """Writer -> Ed25519 public key (hex) as the coordinator wrote them (unsigned), plus the CA.

    ``ca_cert`` is the federation CA certificate found in the run folder, or
    ``None``. Verification given a ``RunKeys`` with a CA checks each ledger's
    key against its writer's certificate binding and judges entries under the
    bound key (:func:`fedrisk.audit.verify.check_key_bindings`); the registry
    then only serves to report where it disagrees.
    """

    ca_cert: Path | None = None


def collect_ledgers(paths: list[Path]) -> tuple[list[Path], RunKeys | None]:
    """Expand run folders into their ledger files; pick up the run's key registry and CA.

    A folder argument contributes every ``ledger.sqlite`` below it and, if
    present, its ``coordinator/signing_keys.json`` (party -> Ed25519 public key)
    and ``pki/ca.crt`` (the federation CA a local federation generated).
    Returns ``None`` for the keys when the folders hold neither.
    """
    ledgers: list[Path] = []
    keys: RunKeys | None = None
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob(LEDGER_FILE))
            if not found:
                raise LedgerError(f"{path}: no {LEDGER_FILE} below this folder")
            ledgers.extend(found)
            registry = path / KEY_REGISTRY
            if registry.exists():
                keys = keys if keys is not None else RunKeys()
                keys.update(json.loads(registry.read_text()))
            if (path / RUN_CA).is_file():
                keys = keys if keys is not None else RunKeys()
                keys.ca_cert = keys.ca_cert or path / RUN_CA
        elif path.exists():
            ledgers.append(path)
        else:
            raise LedgerError(f"{path}: no such ledger file or run folder")
    return ledgers, keys
