"""The label holder's key-epoch cache, wired through the federation's alignment protocol.

Two alignments of the same tables through the coordinator code over the in-process grid,
party processes forgotten in between (as after a restart): the second reuses the bank's
blinded set from its state folder, the tax bureau's key is new, the coordinator sees the
same message sizes, and the intersection is still exact.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from fedrisk.crypto.psi import decode_psi_message
from fedrisk.crypto.psi_cache import CACHE_FILE_NAME, LabelHolderKeyCache
from test_psi import N_ROWS, _forget, _message_sizes, _party_tables


def _align(root, parties, run_id: str):
    from fedrisk.federation.alignment import VerticalRoles, run_alignment
    from fedrisk.wire.exchange import read_content
    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.session import CoordinatorSession
    from fedrisk.parties.alignment import read_alignment_report

    seen: list = []
    session = CoordinatorSession(InProcessGrid(parties, tap=lambda d, n, m: seen.append((d, n, m))), run_id, timeout=120.0)
    try:
        session.discover([p.name for p in parties], timeout=30.0)
        run_alignment(session, VerticalRoles.of(session))
    finally:
        _forget(parties)
    blinded = {}
    for _direction, node, msg in seen:
        exchange = read_content(msg.content)
        if exchange.header.step == "psi.blinded_set":
            message = decode_psi_message(exchange.blob("blinded"))
            blinded[message.sender] = message
    report = read_alignment_report(root / "parties" / "bank", run_id)
    return _message_sizes(seen), blinded, report


def test_second_alignment_reuses_the_banks_blinded_set_and_looks_the_same_to_the_coordinator(tmp_path):
    n_common = 300
    parties = _party_tables(tmp_path, n_common)
    sizes1, blinded1, report1 = _align(tmp_path, parties, "psi-cache-1")
    sizes2, blinded2, report2 = _align(tmp_path, parties, "psi-cache-2")

    assert report1["intersection"] == report2["intersection"] == {"tax_bureau": n_common}
    # Message sizes (what the coordinator can measure) do not change with the cache.
    assert [s[1:] for s in sizes1] == [s[1:] for s in sizes2]

    bank1, bank2 = blinded1["bank"], blinded2["bank"]
    assert bank1.public_key == bank2.public_key  # one key epoch
    assert sorted(map(bytes, bank1.points_array())) == sorted(map(bytes, bank2.points_array()))
    assert blinded1["tax_bureau"].public_key != blinded2["tax_bureau"].public_key  # fresh partner key

    path = tmp_path / "parties" / "bank" / "psi" / CACHE_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    epoch = LabelHolderKeyCache(tmp_path / "parties" / "bank").check()
    assert epoch is not None and epoch.public_key == bank1.public_key
    assert epoch.evaluations == 2 * N_ROWS  # both runs' partner sets were counted against the rate limit
    # The feature holder keeps no key state of its own.
    assert not (tmp_path / "parties" / "tax_bureau" / "psi").exists()
    assert np.asarray(bank1.points_array()).shape == (N_ROWS, 32)
