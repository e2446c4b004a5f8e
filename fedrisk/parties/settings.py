"""What a party process needs to know about itself, and where it keeps state."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedrisk.errors import ConfigError

ROLES = ("bank", "label_holder", "feature_holder")


@dataclass(frozen=True)
class PartySettings:
    """One party's own configuration, held only by that party.

    Parameters
    ----------
    name : str
        The party's name in the federation (``bank``, ``tax_bureau``...).
    role : str
        ``bank`` in a horizontal federation; ``label_holder`` or
        ``feature_holder`` in a vertical one.
    data : str
        Path to the party's table (CSV or Parquet).
    schema : dict
        The table's declared schema (:class:`fedrisk.data.table.TableSchema` as a dict).
    state_dir : str
        Private folder (0700) for keys, the ledger and model bundles.
    validation : dict
        ``{"fraction": 0.2, "seed": 42}`` to hold out rows of this table, or
        ``{"table": path}`` to evaluate on a separate table with the same schema.
    """

    name: str
    role: str
    data: str
    schema: dict
    state_dir: str
    validation: dict = field(default_factory=lambda: {"fraction": 0.2, "seed": 42})

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"party {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # key order is meaningful: features are in model order

    @classmethod
    def from_json(cls, text: str) -> "PartySettings":
        try:
            data = json.loads(text)
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid party settings: {err}") from None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    @classmethod
    def read(cls, path: Path) -> "PartySettings":
        return cls.from_json(Path(path).read_text())


def ensure_private_dir(path: Path) -> Path:
    """Create a folder only its owner can enter (keys and ledgers live there)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
