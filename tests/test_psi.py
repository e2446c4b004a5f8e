"""ECDH-PSI on X25519: correctness, leakage checks, message format, primitives."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from fedrisk.crypto import psi_group
from fedrisk.crypto.psi import (
    BlindedSet,
    DoubleBlindedSet,
    FeatureHolderPSI,
    LabelHolderPSI,
    PSIResult,
    decode_psi_message,
    match_points,
)
from fedrisk.crypto.psi_group import (
    FIELD_PRIME,
    LOW_ORDER_U,
    hash_domain,
    hash_ids_to_u,
    hash_to_u,
    is_acceptable_u,
    x25519,
)
from fedrisk.crypto.psi_pool import BlindingPool
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

A_CURVE = 486662


@pytest.fixture(scope="module")
def pool() -> BlindingPool:
    return BlindingPool(workers=1)


def on_curve(u: bytes) -> bool:
    """Legendre symbol of u^3 + A u^2 + u: True for Curve25519, False for its twist."""
    x = int.from_bytes(u, "little")
    rhs = (x * x * x + A_CURVE * x * x + x) % FIELD_PRIME
    return pow(rhs, (FIELD_PRIME - 1) // 2, FIELD_PRIME) == 1


def ids(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(start, stop)]


def run_protocol(label_ids, holders: dict[str, list[str]], pool, run_id="run-1"):
    """Run the protocol for one label holder and several feature holders, all over bytes."""
    wire: list[bytes] = []

    def relay(message):
        data = message.to_bytes()
        wire.append(data)
        return decode_psi_message(data)

    lh = LabelHolderPSI(label_ids, run_id=run_id, party="bank", pool=pool)
    fhs = {name: FeatureHolderPSI(y, run_id=run_id, party=name, pool=pool) for name, y in holders.items()}
    a_set = relay(lh.blind())
    answers = {}
    for name, fh in fhs.items():
        lh.double_blind(relay(fh.blind()))
        answers[name] = relay(fh.double_blind(a_set))
    results = {name: fhs[name].finish(relay(lh.intersect(answers[name]))) for name in fhs}
    return lh, fhs, results, wire


# --------------------------------------------------------------------------- protocol


def test_one_label_holder_two_feature_holders_partial_overlaps(pool):
    bank = ids("9131", 0, 300)
    tax = ids("9131", 150, 400) + ids("TAXONLY", 0, 40)
    platform = ids("9131", 0, 50) + ids("9131", 280, 290) + ids("PLAT", 0, 100)
    rng = np.random.default_rng(1)
    tax = [tax[i] for i in rng.permutation(len(tax))]
    lh, fhs, results, _ = run_protocol(bank, {"tax": tax, "platform": platform}, pool)

    for name, theirs in (("tax", tax), ("platform", platform)):
        expected = set(bank) & set(theirs)
        lr, fr = lh.result(name), results[name]
        assert lr.size == fr.size == len(expected)
        assert {bank[i] for i in lr.rows} == expected
        assert [bank[i] for i in lr.rows] == [theirs[j] for j in fr.rows] == sorted(expected)
        assert lr.mask.sum() == len(expected) and lr.mask.shape == (len(bank),)
        assert fr.mask.shape == (len(theirs),) and {theirs[j] for j in np.flatnonzero(fr.mask)} == expected
        assert (lr.n_label_holder, lr.n_feature_holder) == (len(bank), len(theirs))
        assert (fr.n_label_holder, fr.n_feature_holder) == (len(bank), len(theirs))
        lr.require_overlap()
        fr.require_overlap()
    assert set(lh.results) == {"tax", "platform"}
    lh.require_overlap()


def test_zero_overlap_is_reported_clearly(pool):
    lh, _, results, _ = run_protocol(ids("A", 0, 50), {"tax": ids("A", 25, 60), "platform": ids("B", 0, 30)}, pool)
    assert lh.result("platform").empty and lh.result("platform").size == 0
    assert results["platform"].empty and not results["tax"].empty
    with pytest.raises(ProtocolError, match="feature holder 'platform' has zero overlap with the label holder"):
        lh.result("platform").require_overlap()
    with pytest.raises(ProtocolError, match="feature holder 'platform' has zero overlap with the label holder"):
        lh.require_overlap()
    with pytest.raises(ProtocolError, match="^feature holder 'platform' has zero overlap") as info:
        results["platform"].require_overlap()
    assert "\n" not in str(info.value)


def test_feature_holder_output_is_only_its_own_rows(pool):
    bank = ids("X", 0, 120)
    tax = ids("X", 100, 130) + ids("Y", 0, 10)
    lh, fhs, results, _ = run_protocol(bank, {"tax": tax}, pool)
    fr = results["tax"]
    assert fr.rows.dtype == np.int64 and fr.rows.min() >= 0 and fr.rows.max() < len(tax)
    assert {tax[j] for j in fr.rows} == set(bank) & set(tax)
    # Nothing in the result object carries the label holder's IDs or rows.
    bank_only = {s.encode() for s in set(bank) - set(tax)}
    blob = b"".join(v.tobytes() if isinstance(v, np.ndarray) else str(v).encode() for v in vars(fr).values())
    assert not any(x in blob for x in bank_only)
    assert fr.label_holder == "bank" and fr.party == "tax"


def test_relayed_payloads_hold_no_ids_nor_hashes_of_ids(pool):
    bank = ids("91310000MA1FL", 0, 150)
    tax = ids("91310000MA1FL", 100, 220)
    run_id = "run-leak"
    _, _, _, wire = run_protocol(bank, {"tax": tax}, pool, run_id=run_id)
    domain = hash_domain(run_id)
    needles: list[bytes] = []
    for s in set(bank) | set(tax):
        raw = s.encode()
        u = hash_to_u(domain, raw)
        needles += [
            raw,
            hashlib.sha256(raw).digest(),
            hashlib.sha512(raw).digest()[:32],
            hashlib.sha256(raw).hexdigest().encode(),
            u,
            u[:16],
            hashlib.sha512(domain + raw + b"\x00").digest()[:16],
        ]
    payload = b"|".join(wire)
    assert len(wire) == 4  # L's set, F's set, F's double-blinded set, L's sealed result
    assert not [n for n in needles if n in payload]


def test_relayed_blinded_values_are_shuffled(pool):
    bank = ids("S", 0, 200)
    lh = LabelHolderPSI(bank, run_id="run-shuffle", party="bank", pool=pool)
    sent = lh.blind().points_array()
    in_order = pool.hash_and_blind(lh._scalar(), hash_domain("run-shuffle"), [s.encode() for s in bank])
    assert not np.array_equal(sent, in_order)
    assert (sent == in_order).all(axis=1).mean() < 0.05  # no more than chance fixed points
    assert sorted(map(bytes, sent)) == sorted(map(bytes, in_order))
    again = LabelHolderPSI(bank, run_id="run-shuffle", party="bank", pool=pool).blind().points_array()
    assert not set(map(bytes, again)) & set(map(bytes, sent))  # fresh scalar per run object


def test_result_size_does_not_depend_on_intersection(pool):
    sizes = []
    for tax in (ids("Q", 0, 64), ids("R", 0, 64)):
        _, _, _, wire = run_protocol(ids("Q", 0, 64), {"tax": tax}, pool)
        sizes.append(len(wire[-1]))
    assert sizes[0] == sizes[1]


def test_duplicate_and_empty_ids_are_refused(pool):
    with pytest.raises(DataValidationError, match=r"duplicate ID at row 3 of label holder 'bank' \(same as row 1\)"):
        LabelHolderPSI(["a", "b", "c", "b"], run_id="r", party="bank", pool=pool)
    with pytest.raises(DataValidationError, match="duplicate ID at row 1"):
        FeatureHolderPSI([b"x", "x"], run_id="r", party="tax", pool=pool)
    with pytest.raises(DataValidationError, match="empty ID at row 2 of feature holder 'tax'"):
        FeatureHolderPSI(["a", "b", ""], run_id="r", party="tax", pool=pool)
    with pytest.raises(DataValidationError, match="has no IDs"):
        LabelHolderPSI([], run_id="r", pool=pool)
    with pytest.raises(DataValidationError, match="row 1 .* is a int"):
        LabelHolderPSI(["a", 7], run_id="r", pool=pool)


def test_out_of_order_and_foreign_messages_are_refused(pool):
    lh = LabelHolderPSI(ids("A", 0, 20), run_id="r1", party="bank", pool=pool)
    fh = FeatureHolderPSI(ids("A", 0, 20), run_id="r1", party="tax", pool=pool)
    other = FeatureHolderPSI(ids("A", 0, 20), run_id="r2", party="tax", pool=pool)
    a_set = lh.blind()
    b_set = fh.blind()
    ab = fh.double_blind(a_set)
    with pytest.raises(ProtocolError, match="no blinded set from feature holder 'tax'"):
        lh.intersect(ab)
    with pytest.raises(ProtocolError, match="run 'r2'"):
        lh.double_blind(other.blind())
    with pytest.raises(ProtocolError, match="already sent"):
        lh.blind()
    with pytest.raises(ProtocolError, match="expects a PSI DoubleBlindedSet"):
        lh.intersect(b_set)
    with pytest.raises(ProtocolError, match="from feature holder"):
        fh.double_blind(b_set)
    lh.double_blind(b_set)
    with pytest.raises(ProtocolError, match="already has a blinded set"):
        lh.double_blind(b_set)
    result = lh.intersect(ab.to_bytes())
    tampered = bytearray(result.to_bytes())
    tampered[-1] ^= 1
    with pytest.raises(CryptoError, match="failed authentication"):
        fh.finish(bytes(tampered))
    assert fh.finish(result).size == 20


def test_low_order_point_from_a_peer_is_a_protocol_error(pool):
    lh = LabelHolderPSI(ids("A", 0, 5), run_id="r", party="bank", pool=pool)
    lh.blind()
    fh = FeatureHolderPSI(ids("A", 0, 5), run_id="r", party="tax", pool=pool)
    good = fh.blind()
    points = bytearray(good.points)
    points[64:96] = (1).to_bytes(32, "little")
    bad = BlindedSet(run_id="r", sender="tax", role="feature", public_key=good.public_key, points=bytes(points))
    with pytest.raises(ProtocolError, match="feature holder 'tax' sent an invalid blinded set: point at row 2"):
        lh.double_blind(bad)


def test_parallel_pool_matches_inline():
    domain = hash_domain("run-pool")
    raw = [s.encode() for s in ids("P", 0, 3000)]
    scalar = os.urandom(32)
    inline = BlindingPool(workers=1)
    with BlindingPool(workers=2, min_parallel=1) as parallel:
        got = parallel.hash_and_blind(scalar, domain, raw)
        again = parallel.blind(scalar, got)
        bad = got.copy()
        bad[2500] = 0
        with pytest.raises(CryptoError, match="point at row 2500 has low order"):
            parallel.blind(scalar, bad)
    assert np.array_equal(got, inline.hash_and_blind(scalar, domain, raw))
    assert np.array_equal(again, inline.blind(scalar, got))


# --------------------------------------------------------------------------- primitives


def test_x25519_commutes_on_curve_and_twist_points():
    domain = hash_domain("run-comm")
    points = [hash_to_u(domain, f"id-{i}".encode()) for i in range(40)]
    kinds = {on_curve(u) for u in points}
    assert kinds == {True, False}  # both curve and twist points are exercised
    for u in points:
        a, b = os.urandom(32), os.urandom(32)
        ab = x25519(b, x25519(a, u))
        assert ab == x25519(a, x25519(b, u))
        assert ab != x25519(a, u) and ab != u
        assert on_curve(ab) == on_curve(u)  # scalar multiplication keeps the "colour"


@pytest.mark.parametrize("value", sorted(LOW_ORDER_U))
def test_low_order_inputs_raise(value):
    u = value.to_bytes(32, "little")
    assert not is_acceptable_u(u)
    with pytest.raises(CryptoError, match="large order"):
        x25519(os.urandom(32), u)


def test_hash_to_u_is_canonical_domain_separated_and_vectorised():
    d1, d2 = hash_domain("run-a"), hash_domain("run-b")
    raw = [f"{i}".encode() for i in range(500)]
    batch = hash_ids_to_u(d1, raw)
    assert batch.shape == (500, 32) and (batch[:, 31] & 0x80 == 0).all()
    assert [bytes(r) for r in batch] == [hash_to_u(d1, r) for r in raw]
    assert not set(map(bytes, batch)) & set(map(bytes, hash_ids_to_u(d2, raw)))
    expected = bytearray(hashlib.sha512(d1 + b"42" + b"\x00").digest()[:32])
    expected[31] &= 0x7F
    assert hash_to_u(d1, b"42") == bytes(expected)
    # run ids are length-prefixed: "ab"+"c" and "a"+"bc" never share a hash input
    assert hash_to_u(hash_domain("ab"), b"c") != hash_to_u(hash_domain("a"), b"bc")


def test_hash_to_u_rejects_and_rehashes_with_a_counter(monkeypatch):
    domain = hash_domain("run-ctr")
    first = hash_to_u(domain, b"victim")
    real = psi_group.is_acceptable_u
    monkeypatch.setattr(psi_group, "is_acceptable_u", lambda u: u != first and real(u))
    expected = bytearray(hashlib.sha512(domain + b"victim" + b"\x01").digest()[:32])
    expected[31] &= 0x7F
    assert hash_to_u(domain, b"victim") == bytes(expected)
    # the vectorised path flags the row by its low 64 bits and rehashes it the same way
    monkeypatch.setattr(
        psi_group, "_LOW_ORDER_LOW64", np.frombuffer(first[:8], dtype="<u8").copy()
    )
    batch = hash_ids_to_u(domain, [b"a", b"victim", b"b"])
    assert bytes(batch[1]) == bytes(expected)
    assert bytes(batch[0]) == hash_to_u(domain, b"a")


def test_acceptable_u_rejects_noncanonical_and_top_bit():
    for value in (FIELD_PRIME, FIELD_PRIME + 1, 2**255 - 1):
        assert not is_acceptable_u(value.to_bytes(32, "little"))
    assert not is_acceptable_u((2**255 + 5).to_bytes(32, "little"))
    assert is_acceptable_u((9).to_bytes(32, "little"))


def test_match_points_exact_including_prefix_collisions():
    rng = np.random.default_rng(3)
    left = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    right = np.concatenate([left[[5, 7, 40]], rng.integers(0, 256, size=(20, 32), dtype=np.uint8)])
    i, j = match_points(left, right)
    assert i.tolist() == [5, 7, 40] and j.tolist() == [0, 1, 2]
    # same 8-byte prefix, different values: the exact fallback must not match them
    right[3, :8] = left[9, :8]
    right[4, :8] = right[3, :8]
    i, j = match_points(left, right)
    assert i.tolist() == [5, 7, 40] and j.tolist() == [0, 1, 2]
    empty = match_points(left[:0], right)
    assert empty[0].size == 0


# --------------------------------------------------------------------------- messages


def _sample_messages(pool):
    lh, fhs, _, wire = run_protocol(ids("M", 0, 10), {"tax": ids("M", 5, 12)}, pool, run_id="run-msg")
    return [decode_psi_message(w) for w in wire], wire


def test_messages_round_trip(pool):
    messages, wire = _sample_messages(pool)
    assert [type(m) for m in messages] == [BlindedSet, BlindedSet, DoubleBlindedSet, PSIResult]
    assert [m.role for m in messages[:2]] == ["label", "feature"]
    for m, w in zip(messages, wire):
        assert type(m).from_bytes(w) == m and m.to_bytes() == w
    blinded = messages[0]
    assert blinded.count == 10 and len(blinded.to_bytes()) < 10 * 32 + 100
    assert "points" not in repr(blinded)


def test_garbage_messages_are_refused_with_one_line_errors(pool):
    messages, wire = _sample_messages(pool)
    blinded, result = wire[0], wire[-1]
    cases = [
        (BlindedSet, b""),
        (BlindedSet, b"hello world"),
        (BlindedSet, b"XXXX" + blinded[4:]),
        (BlindedSet, blinded[:4] + b"\x09" + blinded[5:]),
        (BlindedSet, blinded[:-1]),
        (BlindedSet, blinded + b"\x00"),
        (DoubleBlindedSet, blinded),
        (PSIResult, result[:-3]),
        (BlindedSet, os.urandom(200)),
    ]
    for cls, data in cases:
        with pytest.raises(ProtocolError) as info:
            cls.from_bytes(data)
        assert "\n" not in str(info.value) and str(info.value)
    bad_role = bytearray(blinded)
    offset = 4 + 2 + 2 + len("run-msg") + 2 + len("bank")
    bad_role[offset] = 7
    with pytest.raises(ProtocolError, match="unknown role 7"):
        decode_psi_message(bytes(bad_role))
    with pytest.raises(ProtocolError, match="must be bytes"):
        decode_psi_message("text")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="multiple of 32"):
        DoubleBlindedSet(run_id="r", sender="s", points=b"\x01" * 33)
