"""What an attacker with write access to a ledger file can do, for the tests that must catch it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedrisk.audit.store import TRIGGERS


def cut_tail(path: Path, first: int) -> None:
    """Drop the append-only triggers, delete entries ``first``.., and put the triggers back."""
    conn = sqlite3.connect(path)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DELETE FROM entries WHERE seq >= ?", (first,))
    for ddl in TRIGGERS.values():
        conn.execute(ddl)
    conn.commit()
    conn.close()
