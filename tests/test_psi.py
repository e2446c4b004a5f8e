"""ECDH-PSI on Curve25519 / X25519: correctness, attacks on what each role receives, RFC 9380 vectors, messages.

The attacks work on the real messages: the curve/twist test computes, as the
receiving party would, the quadratic character of every blinded value it gets;
the coordinator test runs entity alignment through the federation's own
coordinator code (:func:`fedrisk.federation.alignment.run_alignment` and the
ServerApp over :class:`~fedrisk.federation.inprocess.InProcessGrid`), collects every
message the coordinator relays and every file and log line it writes, and checks
that none of it depends on, or names, the intersection size. Each attack has a
mutation twin that plants the old leak and shows the same check catches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fedrisk.crypto import psi_group, psi_pool
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
    DST,
    FIELD_PRIME,
    LOW_ORDER_U,
    clear_cofactor,
    expand_message_xmd,
    hash_ids_to_u,
    hash_to_curve,
    hash_to_field,
    hash_to_u,
    is_acceptable_u,
    is_on_curve,
    map_to_curve_elligator2,
    point_add,
    x25519,
)
from fedrisk.crypto.psi_pool import BlindingPool
from fedrisk.errors import CryptoError, DataValidationError, ProtocolError

A_CURVE = 486662

# RFC 9380 Appendix J.4.1, curve25519_XMD:SHA-512_ELL2_RO_ (msg, u0, u1, Q0, Q1, P); hex as printed there.
RFC9380_RO_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_RO_"
RFC9380_RO = [
    (
        "",
        ("0x005fe8a7b8fef0a16c105e6cadf5a6740b3365e18692a9c05bfbb4d97f645a6a", "0x1347edbec6a2b5d8c02e058819819bee177077c9d10a4ce165aab0fd0252261a"),
        ("0x36b4df0c864c64707cbf6cf36e9ee2c09a6cb93b28313c169be29561bb904f98", "0x6cd59d664fb58c66c892883cd0eb792e52055284dac3907dd756b45d15c3983d"),
        ("0x3fa114783a505c0b2b2fbeef0102853c0b494e7757f2a089d0daae7ed9a0db2b", "0x76c0fe7fec932aaafb8eefb42d9cbb32eb931158f469ff3050af15cfdbbeff94"),
        ("0x2de3780abb67e861289f5749d16d3e217ffa722192d16bbd9d1bfb9d112b98c0", "0x3b5dc2a498941a1033d176567d457845637554a2fe7a3507d21abd1c1bd6e878"),
    ),
    (
        "abc",
        ("0x49bed021c7a3748f09fa8cdfcac044089f7829d3531066ac9e74e0994e05bc7d", "0x5c36525b663e63389d886105cee7ed712325d5a97e60e140aba7e2ce5ae851b6"),
        ("0x16b3d86e056b7970fa00165f6f48d90b619ad618791661b7b5e1ec78be10eac1", "0x4ab256422d84c5120b278cbdfc4e1facc5baadffeccecf8ee9bf3946106d50ca"),
        ("0x7ec29ddbf34539c40adfa98fcb39ec36368f47f30e8f888cc7e86f4d46e0c264", "0x10d1abc1cae2d34c06e247f2141ba897657fb39f1080d54f09ce0af128067c74"),
        ("0x2b4419f1f2d48f5872de692b0aca72cc7b0a60915dd70bde432e826b6abc526d", "0x1b8235f255a268f0a6fa8763e97eb3d22d149343d495da1160eff9703f2d07dd"),
    ),
    (
        "abcdef0123456789",
        ("0x6412b7485ba26d3d1b6c290a8e1435b2959f03721874939b21782df17323d160", "0x24c7b46c1c6d9a21d32f5707be1380ab82db1054fde82865d5c9e3d968f287b2"),
        ("0x71de3dadfe268872326c35ac512164850860567aea0e7325e6b91a98f86533ad", "0x26a08b6e9a18084c56f2147bf515414b9b63f1522e1b6c5649f7d4b0324296ec"),
        ("0x5704069021f61e41779e2ba6b932268316d6d2a6f064f997a22fef16d1eaeaca", "0x50483c7540f64fb4497619c050f2c7fe55454ec0f0e79870bb44302e34232210"),
        ("0x68ca1ea5a6acf4e9956daa101709b1eee6c1bb0df1de3b90d4602382a104c036", "0x2a375b656207123d10766e68b938b1812a4a6625ff83cb8d5e86f58a4be08353"),
    ),
    (
        "q128_" + "q" * 128,
        ("0x5e123990f11bbb5586613ffabdb58d47f64bb5f2fa115f8ea8df0188e0c9e1b5", "0x5e8553eb00438a0bb1e7faa59dec6d8087f9c8011e5fb8ed9df31cb6c0d4ac19"),
        ("0x7a94d45a198fb5daa381f45f2619ab279744efdd8bd8ed587fc5b65d6cea1df0", "0x67d44f85d376e64bb7d713585230cdbfafc8e2676f7568e0b6ee59361116a6e1"),
        ("0x30506fb7a32136694abd61b6113770270debe593027a968a01f271e146e60c18", "0x7eeee0e706b40c6b5174e551426a67f975ad5a977ee2f01e8e20a6d612458c3b"),
        ("0x096e9c8bae6c06b554c1ee69383bb0e82267e064236b3a30608d4ed20b73ac5a", "0x1eb5a62612cafb32b16c3329794645b5b948d9f8ffe501d4e26b073fef6de355"),
    ),
    (
        "a512_" + "a" * 512,
        ("0x20f481e85da7a3bf60ac0fb11ed1d0558fc6f941b3ac5469aa8b56ec883d6d7d", "0x017d57fd257e9a78913999a23b52ca988157a81b09c5442501d07fed20869465"),
        ("0x02d606e2699b918ee36f2818f2bc5013e437e673c9f9b9cdc15fd0c5ee913970", "0x29e9dc92297231ef211245db9e31767996c5625dfbf92e1c8107ef887365de1e"),
        ("0x38920e9b988d1ab7449c0fa9a6058192c0c797bb3d42ac345724341a1aa98745", "0x24dcc1be7c4d591d307e89049fd2ed30aae8911245a9d8554bf6032e5aa40d3d"),
        ("0x1bc61845a138e912f047b5e70ba9606ba2a447a4dade024c8ef3dd42b7bbc5fe", "0x623d05e47b70e25f7f1d51dda6d7c23c9a18ce015fe3548df596ea9e38c69bf1"),
    ),
]

# RFC 9380 Appendix J.4.2, curve25519_XMD:SHA-512_ELL2_NU_ (msg, u, Q, P): the map on its own.
RFC9380_NU_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_NU_"
RFC9380_NU = [
    (
        "",
        "0x608d892b641f0328523802a6603427c26e55e6f27e71a91a478148d45b5093cd",
        ("0x51125222da5e763d97f3c10fcc92ea6860b9ccbbd2eb1285728f566721c1e65b", "0x343d2204f812d3dfc5304a5808c6c0d81a903a5d228b342442aa3c9ba5520a3d"),
        ("0x1bb913f0c9daefa0b3375378ffa534bda5526c97391952a7789eb976edfe4d08", "0x4548368f4f983243e747b62a600840ae7c1dab5c723991f85d3a9768479f3ec4"),
    ),
    (
        "abc",
        "0x46f5b22494bfeaa7f232cc8d054be68561af50230234d7d1d63d1d9abeca8da5",
        ("0x7d56d1e08cb0ccb92baf069c18c49bb5a0dcd927eff8dcf75ca921ef7f3e6eeb", "0x404d9a7dc25c9c05c44ab9a94590e7c3fe2dcec74533a0b24b188a5d5dacf429"),
        ("0x7c22950b7d900fa866334262fcaea47a441a578df43b894b4625c9b450f9a026", "0x5547bc00e4c09685dcbc6cb6765288b386d8bdcb595fa5a6e3969e08097f0541"),
    ),
    (
        "abcdef0123456789",
        "0x235fe40c443766ce7e18111c33862d66c3b33267efa50d50f9e8e5d252a40aaa",
        ("0x3fbe66b9c9883d79e8407150e7c2a1c8680bee496c62fabe4619a72b3cabe90f", "0x08ec476147c9a0a3ff312d303dbbd076abb7551e5fce82b48ab14b433f8d0a7b"),
        ("0x31ad08a8b0deeb2a4d8b0206ca25f567ab4e042746f792f4b7973f3ae2096c52", "0x405070c28e78b4fa269427c82827261991b9718bd6c6e95d627d701a53c30db1"),
    ),
    (
        "q128_" + "q" * 128,
        "0x001e92a544463bda9bd04ddbe3d6eed248f82de32f522669efc5ddce95f46f5b",
        ("0x227e0bb89de700385d19ec40e857db6e6a3e634b1c32962f370d26f84ff19683", "0x5f86ff3851d262727326a32c1bf7655a03665830fa7f1b8b1e5a09d85bc66e4a"),
        ("0x027877759d155b1997d0d84683a313eb78bdb493271d935b622900459d52ceaa", "0x54d691731a53baa30707f4a87121d5169fb5d587d70fb0292b5830dedbec4c18"),
    ),
    (
        "a512_" + "a" * 512,
        "0x1a68a1af9f663592291af987203393f707305c7bac9c8d63d6a729bdc553dc19",
        ("0x3bcd651ee54d5f7b6013898aab251ee8ecc0688166fce6e9548d38472f6bd196", "0x1bb36ad9197299f111b4ef21271c41f4b7ecf5543db8bb5931307ebdb2eaa465"),
        ("0x5fd892c0958d1a75f54c3182a18d286efab784e774d1e017ba2fb252998b5dc1", "0x750af3c66101737423a4519ac792fb93337bd74ee751f19da4cf1e94f4d6d0b8"),
    ),
]

# RFC 9380 Appendix K.3, expand_message_xmd(SHA-512) (msg, len_in_bytes, uniform_bytes).
RFC9380_XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
RFC9380_XMD = [
    ("", 32, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    ("abc", 32, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (
        "",
        128,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7eb00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
    (
        "abc",
        128,
        "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb1347ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b488431851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
    ),
]


@pytest.fixture(scope="module")
def pool() -> BlindingPool:
    return BlindingPool(workers=1)


def character(u: bytes) -> int:
    """What anyone can compute from a u-coordinate: the quadratic character of u^3 + A u^2 + u.

    +1: the point is on Curve25519; -1: on its quadratic twist; 0: 2-torsion.
    """
    x = int.from_bytes(u, "little")
    rhs = (x * x * x + A_CURVE * x * x + x) % FIELD_PRIME
    if rhs == 0:
        return 0
    return 1 if pow(rhs, (FIELD_PRIME - 1) // 2, FIELD_PRIME) == 1 else -1


def characters(points: np.ndarray) -> list[int]:
    return [character(bytes(row)) for row in np.asarray(points)]


_V1_TAG = b"fedrisk/psi/x25519-u/v1\x00"


def raw_sha512_to_u(domain: bytes, identifiers) -> np.ndarray:
    """PSI v1's ID hash, the planted leak: SHA-512 output, bit 255 cleared, used as a u-coordinate."""
    out = np.empty((len(identifiers), 32), dtype=np.uint8)
    for i, identifier in enumerate(identifiers):
        u = bytearray(hashlib.sha512(_V1_TAG + domain + identifier + b"\x00").digest()[:32])
        u[31] &= 0x7F
        out[i] = np.frombuffer(bytes(u), dtype=np.uint8)
    return out


def ids(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(start, stop)]


def credit_codes(n: int, seed: int) -> list[str]:
    """Unified social credit codes (GB 32100-2015), valid check digits, distinct."""
    from fedrisk.data.credit_code import is_valid_credit_code, make_credit_codes

    codes = make_credit_codes(n, np.random.default_rng(seed)).tolist()
    assert len(set(codes)) == n and all(is_valid_credit_code(c) for c in codes)
    return codes


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


def test_credit_codes_intersect_exactly_in_the_same_row_order(pool):
    codes = credit_codes(900, seed=3)
    bank, tax = codes[:600], codes[250:900]
    rng = np.random.default_rng(4)
    tax = [tax[i] for i in rng.permutation(len(tax))]
    lh, _, results, _ = run_protocol(bank, {"tax": tax}, pool, run_id="run-codes")
    expected = sorted(set(bank) & set(tax))
    assert len(expected) == 350
    assert [bank[i] for i in lh.result("tax").rows] == [tax[j] for j in results["tax"].rows] == expected


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
    bank = credit_codes(270, seed=8)
    tax = bank[100:] + credit_codes(50, seed=9)
    run_id = "run-leak"
    _, _, _, wire = run_protocol(bank[:220], {"tax": tax}, pool, run_id=run_id)
    needles: list[bytes] = []
    everyone = set(bank) | set(tax)
    unblinded = hash_ids_to_u(DST, [s.encode() for s in sorted(everyone)])
    for s, u in zip(sorted(everyone), unblinded):
        raw = s.encode()
        u = bytes(u)
        needles += [
            raw,
            hashlib.sha256(raw).digest(),
            hashlib.sha512(raw).digest()[:32],
            hashlib.sha256(raw).hexdigest().encode(),
            u,
            u[:16],
            bytes(raw_sha512_to_u(DST, [raw])[0][:16]),
        ]
    payload = b"|".join(wire)
    assert len(wire) == 4  # L's set, F's set, F's double-blinded set, L's sealed result
    assert not [n for n in needles if n in payload]


def test_relayed_blinded_values_are_shuffled(pool):
    bank = ids("S", 0, 200)
    lh = LabelHolderPSI(bank, run_id="run-shuffle", party="bank", pool=pool)
    sent = lh.blind().points_array()
    in_order = pool.hash_and_blind(lh._scalar(), DST, [s.encode() for s in bank])
    assert not np.array_equal(sent, in_order)
    assert (sent == in_order).all(axis=1).mean() < 0.05  # no more than chance fixed points
    assert sorted(map(bytes, sent)) == sorted(map(bytes, in_order))
    again = LabelHolderPSI(bank, run_id="run-shuffle", party="bank", pool=pool).blind().points_array()
    assert not set(map(bytes, again)) & set(map(bytes, sent))  # fresh scalar per run object


def test_result_size_does_not_depend_on_intersection(pool):
    sizes = []
    for tax in (ids("Q", 0, 64), ids("R", 0, 64)):
        _, _, _, wire = run_protocol(ids("Q", 0, 64), {"tax": tax}, pool)
        sizes.append([len(w) for w in wire])
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
    with pytest.raises(CryptoError, match="run id"):
        LabelHolderPSI(["a"], run_id="", pool=pool)


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


def test_parallel_pool_matches_inline_and_caches_hashed_sets():
    raw = [s.encode() for s in ids("P", 0, 3000)]
    scalar, other = os.urandom(32), os.urandom(32)
    inline = BlindingPool(workers=1, cache_entries=0)
    with BlindingPool(workers=2, min_parallel=1) as parallel:
        got = parallel.hash_and_blind(scalar, DST, raw)
        assert (parallel.cache_entries, parallel.cache_misses, parallel.cache_hits) == (1, 1, 0)
        again = parallel.blind(scalar, got)
        warm = parallel.hash_and_blind(other, DST, raw)  # same ID set, new scalar: no hashing
        assert parallel.cache_hits == 1
        parallel.hash_and_blind(other, DST, raw[:-1])  # another set is another entry
        assert (parallel.cache_entries, parallel.cache_misses) == (2, 2)
        bad = got.copy()
        bad[2500] = 0
        with pytest.raises(CryptoError, match="point at row 2500 has low order"):
            parallel.blind(scalar, bad)
    assert np.array_equal(got, inline.hash_and_blind(scalar, DST, raw))
    assert np.array_equal(again, inline.blind(scalar, got))
    assert np.array_equal(warm, inline.hash_and_blind(other, DST, raw))
    assert inline.cache_entries == 0


def test_cache_is_bounded_and_keyed_by_the_whole_id_set():
    small = BlindingPool(workers=1, cache_entries=2)
    scalar = os.urandom(32)
    for n in (10, 11, 12):
        small.hash_and_blind(scalar, DST, [s.encode() for s in ids("C", 0, n)])
    assert small.cache_entries == 2
    # Same bytes split differently are different sets.
    a = small.hash_and_blind(scalar, DST, [b"ab", b"c"])
    b = small.hash_and_blind(scalar, DST, [b"a", b"bc"])
    assert not np.array_equal(a, b)
    small.clear_cache()
    assert small.cache_entries == 0


# --------------------------------------------------------------------------- attacks: curve or twist


def _colour_run(pool, run_id: str):
    """A PSI run of 360 x 340 credit codes (200 shared); the messages each party receives."""
    codes = credit_codes(500, seed=11)
    bank, tax = codes[:360], codes[:200] + codes[360:]
    lh, fhs, results, wire = run_protocol(bank, {"tax": tax}, pool, run_id=run_id)
    assert results["tax"].size == lh.result("tax").size == 200
    messages = [decode_psi_message(w) for w in wire]
    received = {
        "the tax bureau receives the bank's blinded set": messages[0],
        "the bank receives the tax bureau's blinded set": messages[1],
        "the bank receives the double-blinded set": messages[2],
    }
    return lh, fhs["tax"], bank, tax, received


def test_received_points_carry_no_curve_twist_bit():
    pool = BlindingPool(workers=1, cache_entries=0)
    _, _, _, _, received = _colour_run(pool, "run-colour")
    for what, message in received.items():
        seen = characters(message.points_array())
        assert len(seen) >= 300
        assert set(seen) == {1}, f"{what}: {seen.count(-1)} of {len(seen)} values lie on the twist"


def test_curve_twist_attack_reads_a_bit_per_id_with_the_raw_hash(monkeypatch):
    """MUTATION: the v1 raw SHA-512 u-coordinate; the same check now sees the bit, on every ID."""
    monkeypatch.setattr(psi_pool, "hash_ids_to_u", raw_sha512_to_u)
    pool = BlindingPool(workers=1, cache_entries=0)
    lh, fh, bank, tax, received = _colour_run(pool, "run-colour-v1")  # PSI still works: X25519 commutes on the twist
    for message in received.values():
        assert set(characters(message.points_array())) == {1, -1}  # the check above fails
    # Row i of the tax bureau's set is b * H(tax[perm[i]]): its colour is H's public bit of that ID.
    bit = {s: character(bytes(raw_sha512_to_u(DST, [s.encode()])[0])) for s in bank + tax}
    assert characters(received["the bank receives the tax bureau's blinded set"].points_array()) == [bit[tax[j]] for j in fh._perm]
    # ... and it survives double blinding: row i answers the bank's row perm_L[i].
    assert characters(received["the bank receives the double-blinded set"].points_array()) == [bit[bank[j]] for j in lh._perm]


# --------------------------------------------------------------------------- RFC 9380 hash to curve


def _point(xy) -> tuple[int, int]:
    return int(xy[0], 16), int(xy[1], 16)


def test_expand_message_xmd_rfc9380_vectors():
    for msg, length, expected in RFC9380_XMD:
        assert expand_message_xmd(msg.encode(), RFC9380_XMD_DST, length).hex() == expected


@pytest.mark.parametrize("vector", RFC9380_RO, ids=lambda v: v[0][:8] or "empty")
def test_hash_to_curve_rfc9380_ro_vectors(vector):
    msg, u, q0, q1, p = vector
    msg = msg.encode()
    assert hash_to_field(msg, 2, RFC9380_RO_DST) == [int(u[0], 16), int(u[1], 16)]
    assert map_to_curve_elligator2(int(u[0], 16)) == _point(q0)
    assert map_to_curve_elligator2(int(u[1], 16)) == _point(q1)
    assert hash_to_curve(msg, RFC9380_RO_DST) == _point(p)
    # The batched path fedrisk runs gives u(R), R = Q0 + Q1, whose cofactor-cleared multiple is P.
    r = point_add(_point(q0), _point(q1))
    assert hash_ids_to_u(RFC9380_RO_DST, [msg])[0].tobytes() == r[0].to_bytes(32, "little") == hash_to_u(RFC9380_RO_DST, msg)
    assert clear_cofactor(r) == _point(p) and is_on_curve(*r) and character(r[0].to_bytes(32, "little")) == 1


def test_hash_to_curve_batch_matches_rfc9380_ro_vectors_together():
    msgs = [v[0].encode() for v in RFC9380_RO]
    got = hash_ids_to_u(RFC9380_RO_DST, msgs)
    assert [bytes(row) for row in got] == [point_add(_point(v[2]), _point(v[3]))[0].to_bytes(32, "little") for v in RFC9380_RO]


@pytest.mark.parametrize("vector", RFC9380_NU, ids=lambda v: v[0][:8] or "empty")
def test_elligator2_rfc9380_nu_vectors(vector):
    msg, u, q, p = vector
    (u_got,) = hash_to_field(msg.encode(), 1, RFC9380_NU_DST)
    assert u_got == int(u, 16)
    assert map_to_curve_elligator2(u_got) == _point(q)
    assert clear_cofactor(_point(q)) == _point(p)
    xs, ys = psi_group._elligator2_batch([psi_group._num(u_got)])
    assert (int(xs[0]), int(ys[0])) == _point(q)


def test_pure_python_fallback_gives_the_same_points():
    """Without gmpy2 (not installed) the batched path runs on Python integers: same points."""
    import subprocess
    import sys

    msgs = [v[0] for v in RFC9380_RO] + credit_codes(50, seed=31)
    code = (
        "import sys, json; sys.modules['gmpy2'] = None\n"
        "from fedrisk.crypto import psi_group as g\n"
        "assert not g.HAVE_GMPY2\n"
        "msgs = json.loads(sys.stdin.read())\n"
        "print(json.dumps([g.hash_ids_to_u(g.DST, [m.encode() for m in msgs]).tobytes().hex(),"
        " g.hash_ids_to_u(%r, [m.encode() for m in msgs]).tobytes().hex()]))" % RFC9380_RO_DST
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(msgs), capture_output=True, text=True, check=True)
    fallback, fallback_rfc = json.loads(out.stdout)
    assert fallback == hash_ids_to_u(DST, [m.encode() for m in msgs]).tobytes().hex()
    assert fallback_rfc == hash_ids_to_u(RFC9380_RO_DST, [m.encode() for m in msgs]).tobytes().hex()


def test_batched_elligator2_equals_the_straight_line_map():
    rng = np.random.default_rng(5)
    us = [int.from_bytes(rng.bytes(48), "big") % FIELD_PRIME for _ in range(1500)] + [0, 1, 2, FIELD_PRIME - 1]
    xs, ys = psi_group._elligator2_batch([psi_group._num(u) for u in us])
    for u, x, y in zip(us, xs, ys):
        assert map_to_curve_elligator2(u) == (int(x), int(y)), u
        assert is_on_curve(int(x), int(y))


def test_hashed_ids_are_curve_points_canonical_and_domain_separated():
    raw = [c.encode() for c in credit_codes(400, seed=21)] + [b"", b"\x00", "企业".encode()]
    batch = hash_ids_to_u(DST, raw)
    assert batch.shape == (len(raw), 32) and (batch[:, 31] & 0x80 == 0).all()
    assert all(is_acceptable_u(bytes(row)) for row in batch)
    assert set(characters(batch)) == {1}
    assert [bytes(r) for r in batch[:50]] == [hash_to_u(DST, r) for r in raw[:50]]
    other = hash_ids_to_u(b"FEDRISK-PSI-V02-CS02-with-curve25519_XMD:SHA-512_ELL2_RO_", raw)
    assert not set(map(bytes, batch)) & set(map(bytes, other))
    assert DST == b"FEDRISK-PSI-V02-CS01-with-curve25519_XMD:SHA-512_ELL2_RO_" and len(DST) >= 16
    assert psi_group.hash_domain("any run") == DST  # the tag does not depend on the run (the cache relies on it)
    with pytest.raises(CryptoError, match="DST"):
        hash_ids_to_u(b"", raw[:1])


def test_equal_maps_take_the_exact_doubling_path(monkeypatch):
    """Q0 = Q1 (probability ~2**-254) would zero the batched inversion; the exact path takes over."""
    real = psi_group._Expander.fields

    def same_twice(self, identifiers):
        u0s, _ = real(self, identifiers)
        return u0s, list(u0s)

    monkeypatch.setattr(psi_group._Expander, "fields", same_twice)
    msgs = [b"a", b"b", b"c"]
    got = hash_ids_to_u(DST, msgs)
    for msg, row in zip(msgs, got):
        q = map_to_curve_elligator2(hash_to_field(msg, 2, DST)[0])
        assert bytes(row) == point_add(q, q)[0].to_bytes(32, "little")


def _scalar_mult(k: int, point):
    out, addend = None, point
    while k:
        if k & 1:
            out = point_add(out, addend)
        addend = point_add(addend, addend)
        k >>= 1
    return out


def test_x25519_clamping_clears_the_cofactor_of_the_hashed_point():
    """X25519(k, u(R)) = u(k' P) for k = 8 k' (clamped) and P = 8 R = RFC 9380 hash_to_curve(id)."""
    msg = b"91310000MA1FL8TQ2X"
    p = hash_to_curve(msg, DST)
    scalar = bytearray(os.urandom(32))
    clamped = bytearray(scalar)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    k = int.from_bytes(clamped, "little")
    assert k % 8 == 0
    assert x25519(bytes(scalar), hash_to_u(DST, msg)) == _scalar_mult(k // 8, p)[0].to_bytes(32, "little")


def test_x25519_commutes_on_hashed_points_and_keeps_them_on_the_curve():
    points = [hash_to_u(DST, f"id-{i}".encode()) for i in range(30)]
    for u in points:
        a, b = os.urandom(32), os.urandom(32)
        ab = x25519(b, x25519(a, u))
        assert ab == x25519(a, x25519(b, u))
        assert ab != x25519(a, u) and ab != u
        assert character(u) == character(x25519(a, u)) == character(ab) == 1


def test_twist_points_keep_their_colour_under_x25519():
    """Why v1 leaked: scalar multiplication never moves a u-coordinate between curve and twist."""
    twist = [u for u in (bytes(r) for r in raw_sha512_to_u(DST, [f"t{i}".encode() for i in range(40)])) if character(u) == -1]
    assert len(twist) > 5
    for u in twist:
        assert character(x25519(os.urandom(32), u)) == -1


@pytest.mark.parametrize("value", sorted(LOW_ORDER_U))
def test_low_order_inputs_raise(value):
    u = value.to_bytes(32, "little")
    assert not is_acceptable_u(u)
    with pytest.raises(CryptoError, match="large order"):
        x25519(os.urandom(32), u)


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
        (BlindedSet, blinded[:4] + b"\x01" + blinded[5:]),  # v1 (raw-hash) peers are refused, not silently unmatched
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


# --------------------------------------------------------------------------- attacks: the coordinator's view


def test_positions_message_is_padded_and_parsed_strictly():
    from fedrisk.parties.alignment import POSITION_PAD, pack_positions, positions_capacity, unpack_positions

    capacity = positions_capacity(1000, 700, 10)
    assert capacity == positions_capacity(1000, 700, 650) == 700
    raw = pack_positions(np.array([5, 3, 999]), 1000, capacity)
    assert len(raw) == len(pack_positions(np.arange(650), 1000, capacity)) == 8 + 4 * 700
    assert unpack_positions(raw, n_rows=1000, capacity=capacity, count=3, party="tax").tolist() == [5, 3, 999]
    padded = bytearray(raw)
    padded[-1] = 0
    repeated = pack_positions(np.array([5, 5, 7]), 1000, capacity)
    for data, kwargs, match in (
        (raw, {"count": 4}, "3 positions for an intersection of 4"),
        (raw, {"n_rows": 999}, "for 1000 rows, the plan says 999"),
        (raw[:-4], {}, "has 2804 bytes, expected 2808"),
        (bytes(padded), {}, f"padding .* not {POSITION_PAD:#x}"),
        (repeated, {}, "out of range or repeated"),
    ):
        args = {"n_rows": 1000, "capacity": capacity, "count": 3, "party": "tax", **kwargs}
        with pytest.raises(ProtocolError, match=match):
            unpack_positions(data, **args)
    with pytest.raises(ProtocolError, match="do not fit"):
        pack_positions(np.arange(701), 1000, capacity)


N_ROWS = 1000  # both parties; the intersection is 10 or 900 of them
_FORBIDDEN_KEYS = ("intersection", "overlap")


def _party_tables(root: Path, n_common: int, seed: int = 5):
    """A bank (label holder) and a tax bureau of N_ROWS credit codes each, sharing ``n_common``."""
    import pandas as pd

    from fedrisk.parties.settings import PartySettings

    root.mkdir(parents=True, exist_ok=True)
    codes = credit_codes(2 * N_ROWS - n_common, seed)
    rng = np.random.default_rng(seed)
    bank, tax = codes[:N_ROWS], codes[:n_common] + codes[N_ROWS:]
    tax = [tax[i] for i in rng.permutation(len(tax))]
    x = rng.normal(size=(N_ROWS, 2))
    y = (x[:, 0] + rng.normal(size=N_ROWS) > 0).astype(int)
    pd.DataFrame({"id": bank, "y": y, "x0": x[:, 0], "x1": x[:, 1]}).to_csv(root / "bank.csv", index=False)
    z = rng.normal(size=(N_ROWS, 2))
    pd.DataFrame({"id": tax, "z0": z[:, 0], "z1": z[:, 1]}).to_csv(root / "tax.csv", index=False)
    bank_schema = {"id_column": "id", "label_column": "y", "features": {"x0": "float", "x1": "float"}, "id_format": "credit_code"}
    tax_schema = {"id_column": "id", "features": {"z0": "float", "z1": "float"}, "id_format": "credit_code"}
    return [
        PartySettings("bank", "label_holder", str(root / "bank.csv"), bank_schema, str(root / "parties" / "bank"), {"fraction": 0.2, "seed": 1}),
        PartySettings("tax_bureau", "feature_holder", str(root / "tax.csv"), tax_schema, str(root / "parties" / "tax_bureau")),
    ]


def _forget(parties) -> None:
    from fedrisk.simulation.engines import forget_party_runtimes

    forget_party_runtimes(parties)


def _message_sizes(seen) -> list[tuple]:
    """What the coordinator can measure of each message it relays: step, direction, party, sizes."""
    from fedrisk.wire.exchange import read_content

    out = []
    for direction, node, msg in seen:
        exchange = read_content(msg.content)
        blobs = tuple(sorted((name, len(blob)) for name, blob in exchange.blobs.items()))
        config = tuple(sorted((key, len(json.dumps(value, default=str))) for key, value in exchange.config.items()))
        out.append((exchange.header.step, direction, node, blobs, config))
    return out


def _coordinator_view_of_alignment(root: Path, n_common: int) -> tuple[list[tuple], int]:
    """Entity alignment through the federation's coordinator code; every message it relays, measured."""
    from fedrisk.federation.alignment import VerticalRoles, run_alignment
    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.session import CoordinatorSession
    from fedrisk.parties.alignment import read_alignment_report

    parties = _party_tables(root, n_common)
    seen: list = []
    session = CoordinatorSession(InProcessGrid(parties, tap=lambda d, n, m: seen.append((d, n, m))), "psi-sizes", timeout=120.0)
    try:
        session.discover([p.name for p in parties], timeout=30.0)
        rows = run_alignment(session, VerticalRoles.of(session))
    finally:
        _forget(parties)
    assert rows == N_ROWS
    # The label holder alone knows the overlap, on its own host.
    assert read_alignment_report(root / "parties" / "bank", "psi-sizes")["intersection"] == {"tax_bureau": n_common}
    steps = {s[0] for s in _message_sizes(seen)}
    assert {"psi.blind", "psi.double_blind", "psi.intersect", "psi.finish", "vertical.align"} <= steps
    return _message_sizes(seen), session.traffic.total()


def test_coordinator_sees_the_same_message_sizes_whatever_the_intersection(tmp_path):
    small, small_total = _coordinator_view_of_alignment(tmp_path / "i10", 10)
    large, large_total = _coordinator_view_of_alignment(tmp_path / "i900", 900)
    assert len(small) == len(large) and small == large
    assert small_total == large_total
    positions = [m for m in small if m[0] == "vertical.align" and m[3] and m[3][0][0] == "positions"]
    assert positions  # the sealed positions were among the measured messages


def test_size_check_catches_unpadded_positions(tmp_path, monkeypatch):
    """MUTATION: positions sealed without padding (v1); the size check above sees |I| again."""
    from fedrisk.parties import alignment

    monkeypatch.setattr(alignment, "positions_capacity", lambda n_rows, n_feature_holder, count: count)
    small, _ = _coordinator_view_of_alignment(tmp_path / "i10", 10)
    large, _ = _coordinator_view_of_alignment(tmp_path / "i900", 900)
    differ = [(a, b) for a, b in zip(small, large) if a != b]
    assert len(differ) == 2  # the label holder's reply and the coordinator's relay to the tax bureau
    for a, b in differ:
        assert a[0] == b[0] and a[0] in ("vertical.positions", "vertical.align")
        ((name, small_bytes),) = a[3]
        ((_, large_bytes),) = b[3]
        assert name.startswith("positions") and large_bytes - small_bytes == 4 * (900 - 10)  # grows with |I|


def _json_findings(value, hidden: int, where: str = "") -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if any(word in str(key).lower() for word in _FORBIDDEN_KEYS):
                found.append(f"{where}/{key}: key")
            found += _json_findings(item, hidden, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _json_findings(item, hidden, f"{where}[{i}]")
    elif isinstance(value, str):
        if any(word in value.lower() for word in _FORBIDDEN_KEYS):
            found.append(f"{where}: text {value[:60]!r}")
        elif value.strip().startswith(("{", "[")):
            try:
                found += _json_findings(json.loads(value), hidden, where + "(json)")
            except ValueError:
                pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == hidden:
        found.append(f"{where}: the number {value}")
    return found


def coordinator_findings(run_dir: Path, log: str, hidden: int) -> list[str]:
    """Every place the coordinator wrote (result.json, status, checkpoints, ledger, its log) naming ``hidden``."""
    found = []
    for path in sorted((run_dir / "coordinator").rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if any(word.encode() in data.lower() for word in _FORBIDDEN_KEYS):
            found.append(f"{path.name}: names the intersection")
        if path.suffix == ".json":
            found += [f"{path.name}{f}" for f in _json_findings(json.loads(data), hidden)]
    for line in log.splitlines():
        if line.startswith("[fedrisk]"):  # the ServerApp's own log lines
            if any(word in line.lower() for word in _FORBIDDEN_KEYS) or re.search(rf"(?<![\d.]){hidden}(?![\d.])", line):
                found.append(f"log: {line[:120]}")
    return found


def test_coordinator_writes_no_intersection_size(tmp_path, capsys):
    from flwr.app import Context, RecordDict

    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.server_app import app as server_app
    from fedrisk.parties.alignment import read_alignment_report

    n_common = 913
    parties = _party_tables(tmp_path, n_common)
    run_config = {
        "mode": "vertical",
        "algorithm": "vertical_lr",
        "run-dir": str(tmp_path),
        "parties": "bank,tax_bureau",
        "fedrisk-run-id": "psi-view",
        "party-timeout": 120.0,
        "epochs": 2,
        "checkpoint": True,
    }
    try:
        server_app(InProcessGrid(parties), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    finally:
        _forget(parties)
    log = capsys.readouterr().out
    result = json.loads((tmp_path / "coordinator" / "result.json").read_text())
    assert result["status"] == "ok" and result["rows"] == N_ROWS
    assert list((tmp_path / "coordinator" / "checkpoints").rglob("*"))  # checkpoints were written, and are searched
    assert read_alignment_report(tmp_path / "parties" / "bank", "psi-view")["intersection"] == {"tax_bureau": n_common}
    assert coordinator_findings(tmp_path, log, n_common) == []
    # The detector itself finds a planted copy (the v1 result.json carried "intersection").
    original = (tmp_path / "coordinator" / "result.json").read_text()
    (tmp_path / "coordinator" / "result.json").write_text(json.dumps(dict(result, final={**result["final"], "shared": n_common})))
    assert coordinator_findings(tmp_path, "", n_common) == ["result.json/final/shared: the number 913"]
    (tmp_path / "coordinator" / "result.json").write_text(original)
    assert coordinator_findings(tmp_path, f"[fedrisk] aligned on {n_common} shared rows", n_common)
