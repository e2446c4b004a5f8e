"""Entity alignment (ECDH-PSI and the sealed training order), attacked by the curious coordinator.

The coordinator may learn the set sizes and the number of training rows, never
the intersection (README, "Entity alignment"). Two real runs over the
InProcessGrid with the same set sizes (bank 1,000 IDs, tax bureau 1,000 IDs,
credit codes) but different intersections (600 and 850 IDs): every message the
coordinator relays during alignment must have the same size in both runs, and
nothing it sees, relays or writes (config values, JSON nested in them, key
names, result.json, status.json) may hold the intersection size. Every part must
parse as PSI points, a sealed blob or a public value, with no raw or hashed ID.
"""

from __future__ import annotations

import pytest

from privacy_view import (
    Tap,
    audit,
    probe_json_files,
    run_federation,
    vertical_config,
    vertical_parties,
    vertical_secrets,
    view_of,
)

SET_SIZE = 1000
OVERLAPS = (600, 850)


def _is_alignment(step: str) -> bool:
    return step.startswith("psi.") or step.startswith("vertical.")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_credit_dir):
    out = {}
    for overlap in OVERLAPS:
        root = tmp_path_factory.mktemp(f"attack_psi_{overlap}")
        parties, data = vertical_parties(root, default_credit_dir, bank_rows=SET_SIZE, tax_rows=SET_SIZE, overlap=overlap)
        tap = Tap()
        # the shortest training after alignment: one scoring round, then stop
        result = run_federation(root, parties, vertical_config("attack-psi", epochs=0), tap)
        assert result["status"] == "ok", result
        out[overlap] = {"root": root, "result": result, "tap": tap, "data": data}
    yield out
    for run in out.values():
        run["tap"].close()


def _alignment_sizes(tap: Tap) -> list[tuple[str, str, str, int, tuple]]:
    view = view_of(tap.received_by("coordinator"), "coordinator")
    return [
        (m.captured.direction, m.captured.party, m.step, m.size, tuple(sorted((p.where.split(" ", 4)[-1], p.size) for p in m.parts)))
        for m in view.messages
        if _is_alignment(m.step)
    ]


def test_coordinator_message_sizes_do_not_depend_on_the_intersection(runs):
    small, large = (_alignment_sizes(runs[o]["tap"]) for o in OVERLAPS)
    assert len(small) == len(large) and len(small) >= 10
    differ = [
        f"{a[0]} {a[1]} {a[2]}: {a[3]} bytes with {OVERLAPS[0]} common IDs, {b[3]} with {OVERLAPS[1]}"
        for a, b in zip(small, large)
        if a[:4] != b[:4] or a[4] != b[4]
    ]
    assert not differ, "the coordinator can tell the intersection size from message sizes:\n" + "\n".join(differ)


def test_coordinator_sees_and_writes_no_intersection_size(runs):
    findings = []
    for overlap in OVERLAPS:
        run = runs[overlap]
        view = view_of(run["tap"].received_by("coordinator"), "coordinator")
        secrets = vertical_secrets(run["tap"], run["data"], role="coordinator")
        secrets.psi_run_id = "attack-psi"
        findings += audit(view, secrets, fingerprint=run["result"]["key_fingerprint"])
        findings += probe_json_files(sorted((run["root"] / "coordinator").glob("*.json")), secrets)
    assert not findings, "\n".join(map(str, findings))
