"""The label holder's key epoch and blinded-set cache (fedrisk.crypto.psi_cache).

Reuse, invalidation, rotation, the rate limit and refusal of a bad file are asserted by
counting work (the pool's X25519 and hash counters, the cache's own counters), never by
timing. The clock is injected, so "age" never waits.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat

import numpy as np
import pytest

from fedrisk.crypto.psi import FeatureHolderPSI, LabelHolderPSI, decode_psi_message
from fedrisk.crypto.psi_cache import (
    CACHE_FILE_NAME,
    KeyEpochPolicy,
    LabelHolderKeyCache,
    PSICacheError,
    PSIRateLimitError,
)
from fedrisk.crypto.psi_pool import BlindingPool
from fedrisk.errors import ConfigError


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def pool() -> BlindingPool:
    # No hashed-point cache: every hash and every X25519 the protocol does is counted.
    return BlindingPool(workers=1, cache_entries=0)


def ids(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(start, stop)]


def run(label_ids, holders: dict[str, list[str]], pool, cache, run_id: str):
    """One run over wire bytes; returns (label holder, {name: (feature holder, result)}, wire messages)."""
    wire = []

    def relay(message):
        data = message.to_bytes()
        wire.append(data)
        return decode_psi_message(data)

    lh = LabelHolderPSI(label_ids, run_id=run_id, party="bank", pool=pool, cache=cache)
    fhs = {name: FeatureHolderPSI(y, run_id=run_id, party=name, pool=pool) for name, y in holders.items()}
    a_set = relay(lh.blind())
    answers = {}
    for name, fh in fhs.items():
        lh.double_blind(relay(fh.blind()))
        answers[name] = relay(fh.double_blind(a_set))
    out = {name: (fhs[name], fhs[name].finish(relay(lh.intersect(answers[name])))) for name in fhs}
    return lh, out, [decode_psi_message(w) for w in wire]


def check_exact(label_ids, holders, lh, out) -> None:
    for name, (fh, result) in out.items():
        expected = set(label_ids) & set(holders[name])
        mine = [label_ids[i] for i in lh.result(name).rows.tolist()]
        theirs = [holders[name][i] for i in result.rows.tolist()]
        assert set(mine) == expected and len(mine) == len(expected)
        assert mine == theirs == sorted(expected)
        assert int(lh.result(name).mask.sum()) == len(expected) == int(result.mask.sum())


def ops(pool) -> dict:
    return dict(pool.operations)


def delta(pool, before) -> dict:
    return {k: pool.operations[k] - before[k] for k in before}


# --------------------------------------------------------------------------- correctness and reuse


def test_cached_runs_equal_the_plain_intersection_for_every_party(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X = ids("C", 0, 700)
    holders = {"tax": ids("C", 300, 1000), "platform": ids("C", 650, 660) + ids("P", 0, 50)}
    for r in range(3):
        lh, out, _ = run(X, holders, pool, cache, f"run-{r}")
        check_exact(X, holders, lh, out)
        assert lh.reused_blinded_set is (r > 0)


def test_same_epoch_same_set_is_not_blinded_again(tmp_path, pool):
    clock = Clock()
    cache = LabelHolderKeyCache(tmp_path, clock=clock)
    X, Y = ids("C", 0, 500), ids("C", 200, 520)
    before = ops(pool)
    lh1, out, wire1 = run(X, {"tax": Y}, pool, cache, "r1")
    cold = delta(pool, before)
    assert cold == {"hashed": len(X) + len(Y), "x25519": 2 * len(X) + 2 * len(Y)}
    assert cache.stats["sets_built"] == 1 and cache.stats["sets_reused"] == 0

    clock.now += 3600  # an hour later, same epoch
    before = ops(pool)
    lh2, out2, wire2 = run(X, {"tax": Y}, pool, cache, "r2")
    warm = delta(pool, before)
    # Online: the feature holder hashes and blinds Y, double-blinds X; the bank only double-blinds Y.
    assert warm == {"hashed": len(Y), "x25519": len(X) + 2 * len(Y)}
    assert cache.stats["sets_built"] == 1 and cache.stats["sets_reused"] == 1
    check_exact(X, {"tax": Y}, lh2, out2)

    # Same epoch key, same blinded values, fresh order each run.
    bank1 = next(m for m in wire1 if type(m).__name__ == "BlindedSet" and m.sender == "bank")
    bank2 = next(m for m in wire2 if type(m).__name__ == "BlindedSet" and m.sender == "bank")
    assert bank1.public_key == bank2.public_key == lh1.public_key == lh2.public_key
    assert sorted(map(bytes, bank1.points_array())) == sorted(map(bytes, bank2.points_array()))
    assert bank1.points != bank2.points  # reshuffled


def test_partner_key_is_fresh_every_run_and_answers_are_sealed_under_new_keys(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X, Y = ids("C", 0, 60), ids("C", 30, 90)
    keys, results = set(), set()
    for r in range(3):
        _, out, wire = run(X, {"tax": Y}, pool, cache, f"r{r}")
        tax = next(m for m in wire if type(m).__name__ == "BlindedSet" and m.sender == "tax")
        keys.add(tax.public_key)
        results.add(next(m for m in wire if type(m).__name__ == "PSIResult").ciphertext)
    assert len(keys) == 3 and len(results) == 3


# --------------------------------------------------------------------------- invalidation and rotation


def test_a_changed_id_set_is_blinded_again_never_served_stale(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X, Y = ids("C", 0, 300), ids("C", 100, 400)
    run(X, {"tax": Y}, pool, cache, "r1")
    epoch = cache.current_epoch().epoch_id
    for changed in (X + ["C999999"], X[1:], X[::-1], X[:-1] + ["C999998"]):
        before = ops(pool)
        lh, out, _ = run(changed, {"tax": Y}, pool, cache, f"r-{len(changed)}-{changed[0]}")
        assert not lh.reused_blinded_set
        assert delta(pool, before)["hashed"] == len(changed) + len(Y)
        check_exact(changed, {"tax": Y}, lh, out)
        assert lh.epoch.epoch_id == epoch  # same key by default
    assert cache.stats["sets_built"] == 5


def test_rotate_on_set_change_starts_a_new_key(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, KeyEpochPolicy(rotate_on_set_change=True), clock=Clock())
    X, Y = ids("C", 0, 100), ids("C", 50, 150)
    lh1, _, _ = run(X, {"tax": Y}, pool, cache, "r1")
    lh2, _, _ = run(X, {"tax": Y}, pool, cache, "r2")
    lh3, out, _ = run(X + ["C888888"], {"tax": Y}, pool, cache, "r3")
    assert lh1.public_key == lh2.public_key != lh3.public_key
    assert cache.stats["rotations"] == 2
    check_exact(X + ["C888888"], {"tax": Y}, lh3, out)


def test_an_expired_epoch_is_rotated_and_its_sets_dropped(tmp_path, pool):
    clock = Clock()
    policy = KeyEpochPolicy(max_age_seconds=86400)
    cache = LabelHolderKeyCache(tmp_path, policy, clock=clock)
    X, Y = ids("C", 0, 200), ids("C", 150, 300)
    lh1, _, _ = run(X, {"tax": Y}, pool, cache, "r1")
    clock.now += 86399
    lh2, _, _ = run(X, {"tax": Y}, pool, cache, "r2")
    assert lh2.reused_blinded_set and lh2.public_key == lh1.public_key
    clock.now += 2
    before = ops(pool)
    lh3, out, _ = run(X, {"tax": Y}, pool, cache, "r3")
    assert not lh3.reused_blinded_set and lh3.public_key != lh1.public_key
    assert delta(pool, before) == {"hashed": len(X) + len(Y), "x25519": 2 * len(X) + 2 * len(Y)}
    assert cache.stats["rotations"] == 2
    check_exact(X, {"tax": Y}, lh3, out)
    with sqlite3.connect(cache.path) as db:
        epochs = {row[0] for row in db.execute("SELECT epoch_id FROM blinded")}
    assert epochs == {lh3.epoch.epoch_id}


def test_a_clock_set_back_rotates_too(tmp_path, pool):
    clock = Clock()
    cache = LabelHolderKeyCache(tmp_path, clock=clock)
    first = cache.current_epoch()
    clock.now -= 3600
    assert cache.current_epoch().epoch_id != first.epoch_id


def test_explicit_rotation_and_a_spent_epoch_rotate(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, KeyEpochPolicy(max_evaluations_per_epoch=100), clock=Clock())
    X, Y = ids("C", 0, 50), ids("C", 0, 100)
    lh1, _, _ = run(X, {"tax": Y}, pool, cache, "r1")  # spends exactly the budget
    lh2, _, _ = run(X, {"tax": Y}, pool, cache, "r2")  # so this run starts a new epoch
    assert lh1.public_key != lh2.public_key
    rotated = cache.rotate()
    assert rotated.epoch_id != lh2.epoch.epoch_id and rotated.evaluations == 0


def test_at_most_max_sets_are_kept(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, KeyEpochPolicy(max_sets=2), clock=Clock())
    Y = ids("C", 0, 40)
    for k in range(4):
        run(ids("C", k, 40 + k), {"tax": Y}, pool, cache, f"r{k}")
    with sqlite3.connect(cache.path) as db:
        assert db.execute("SELECT COUNT(*) FROM blinded").fetchone()[0] == 2


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_refuses_before_any_work_and_survives_a_restart(tmp_path, pool):
    clock = Clock()
    policy = KeyEpochPolicy(window_seconds=3600, max_evaluations_per_window=250)
    cache = LabelHolderKeyCache(tmp_path, policy, clock=clock)
    X = ids("C", 0, 100)
    run(X, {"tax": ids("C", 0, 200)}, pool, cache, "r1")  # 200 of 250

    # A new process (new cache object on the same file) sees the spent budget.
    cache2 = LabelHolderKeyCache(tmp_path, policy, clock=clock)
    lh = LabelHolderPSI(X, run_id="r2", party="bank", pool=pool, cache=cache2)
    fh = FeatureHolderPSI(ids("C", 50, 150), run_id="r2", party="tax", pool=pool)
    lh.blind()
    b_set = decode_psi_message(fh.blind().to_bytes())
    before = ops(pool)
    with pytest.raises(PSIRateLimitError) as err:
        lh.double_blind(b_set)
    message = str(err.value)
    assert "\n" not in message and "rate limit" in message and "'tax'" in message and "250" in message
    assert delta(pool, before) == {"hashed": 0, "x25519": 0}  # nothing exponentiated
    assert cache2.current_epoch().window_evaluations == 200

    clock.now += 3600  # next window
    lh = LabelHolderPSI(X, run_id="r3", party="bank", pool=pool, cache=cache2)
    fh = FeatureHolderPSI(ids("C", 50, 150), run_id="r3", party="tax", pool=pool)
    a_set = decode_psi_message(lh.blind().to_bytes())
    lh.double_blind(decode_psi_message(fh.blind().to_bytes()))
    result = fh.finish(lh.intersect(fh.double_blind(a_set)))
    assert result.size == 50
    epoch = cache2.current_epoch()
    assert epoch.window_evaluations == 100 and epoch.evaluations == 300


def test_epoch_budget_refuses_a_run_that_would_exceed_it(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, KeyEpochPolicy(max_evaluations_per_epoch=150), clock=Clock())
    X = ids("C", 0, 50)
    run(X, {"tax": ids("C", 0, 100)}, pool, cache, "r1")
    with pytest.raises(PSIRateLimitError, match="rotates at the next run"):
        run(X, {"tax": ids("C", 0, 100)}, pool, cache, "r2")


def test_a_run_whose_epoch_was_rotated_meanwhile_is_refused(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    lh = LabelHolderPSI(ids("C", 0, 30), run_id="r1", party="bank", pool=pool, cache=cache)
    fh = FeatureHolderPSI(ids("C", 0, 30), run_id="r1", party="tax", pool=pool)
    lh.blind()
    cache.rotate()
    with pytest.raises(PSIRateLimitError, match="rotated during the run"):
        lh.double_blind(fh.blind())


def test_policy_is_validated():
    with pytest.raises(ConfigError, match="max_age_seconds"):
        KeyEpochPolicy(max_age_seconds=0)
    with pytest.raises(ConfigError, match="max_evaluations_per_window"):
        KeyEpochPolicy(max_evaluations_per_window=-5)
    with pytest.raises(ConfigError, match="unknown key"):
        KeyEpochPolicy.from_mapping({"max_age": 5})
    assert KeyEpochPolicy.from_mapping({"max_sets": 3}).max_sets == 3
    assert KeyEpochPolicy.from_mapping(None) == KeyEpochPolicy()


# --------------------------------------------------------------------------- the file


def test_file_is_0600_in_a_0700_folder_and_holds_no_pickle(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    run(ids("C", 0, 40), {"tax": ids("C", 0, 40)}, pool, cache, "r1")
    assert cache.path == tmp_path / "psi" / CACHE_FILE_NAME
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache.path.parent).st_mode) == 0o700
    assert cache.path.read_bytes().startswith(b"SQLite format 3\x00")
    assert not [p for p in cache.path.parent.iterdir() if p.name != CACHE_FILE_NAME]  # no journal left behind


def test_secret_scalar_is_never_logged_nor_shown(tmp_path, pool, caplog):
    caplog.set_level(logging.DEBUG)
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    run(ids("C", 0, 40), {"tax": ids("C", 0, 40)}, pool, cache, "r1")
    epoch = cache.current_epoch()
    scalar = epoch._scalar
    shown = caplog.text + repr(epoch) + repr(cache) + str(cache.stats)
    assert scalar.hex() not in shown and scalar.hex().upper() not in shown and repr(scalar) not in shown


def _tamper(path, sql: str, *args) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    os.chmod(path, 0o600)


@pytest.mark.parametrize(
    "how",
    ["flip_point", "points_with_recomputed_checksum", "scalar", "evaluations", "garbage", "truncated", "format"],
)
def test_a_tampered_or_garbled_cache_is_refused_in_one_line_and_rebuilt(tmp_path, pool, caplog, how):
    from fedrisk.crypto import psi_cache

    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X, Y = ids("C", 0, 120), ids("C", 60, 180)
    lh1, _, _ = run(X, {"tax": Y}, pool, cache, "r1")
    path = cache.path
    if how == "flip_point":
        with sqlite3.connect(path) as db:
            points = bytearray(db.execute("SELECT points FROM blinded").fetchone()[0])
        points[1000] ^= 0x01
        _tamper(path, "UPDATE blinded SET points = ?", bytes(points))
    elif how == "points_with_recomputed_checksum":
        # Someone rewrites every value and fixes the checksum: the recomputed sample catches it.
        with sqlite3.connect(path) as db:
            digest, epoch_id, n, created = db.execute("SELECT digest, epoch_id, n, created FROM blinded").fetchone()
        fake = os.urandom(32 * n)
        _tamper(path, "UPDATE blinded SET points = ?, checksum = ?", fake, psi_cache._set_checksum(digest, epoch_id, n, created, fake))
    elif how == "scalar":
        _tamper(path, "UPDATE epoch SET scalar = ?", os.urandom(32))
    elif how == "evaluations":
        _tamper(path, "UPDATE epoch SET evaluations = 0, window_evaluations = 0")  # someone resets the rate limit
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    elif how == "format":
        _tamper(path, "UPDATE meta SET v = 'something-else'")

    strict = LabelHolderKeyCache(tmp_path, clock=Clock())
    if how == "points_with_recomputed_checksum":
        assert strict.check() is not None  # checksums agree; only recomputing rows tells
    else:
        with pytest.raises(PSICacheError) as err:
            strict.check()
        assert "\n" not in str(err.value) and str(path) in str(err.value)

    caplog.clear()
    caplog.set_level(logging.WARNING, logger="fedrisk.crypto.psi_cache")
    before = ops(pool)
    lh2, out, _ = run(X, {"tax": Y}, pool, cache, "r2")
    assert cache.stats["refused"] == 1 and cache.last_refusal and "\n" not in cache.last_refusal
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 1 and "\n" not in refusals[0].getMessage()
    # Rebuilt from scratch under a new key, and still exact.
    assert not lh2.reused_blinded_set and lh2.public_key != lh1.public_key
    assert delta(pool, before)["hashed"] == len(X) + len(Y)
    check_exact(X, {"tax": Y}, lh2, out)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert LabelHolderKeyCache(tmp_path, clock=Clock()).check() is not None


def test_a_cache_readable_by_others_is_refused_and_its_key_replaced(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X, Y = ids("C", 0, 50), ids("C", 0, 50)
    lh1, _, _ = run(X, {"tax": Y}, pool, cache, "r1")
    os.chmod(cache.path, 0o644)
    with pytest.raises(PSICacheError, match="0644"):
        LabelHolderKeyCache(tmp_path).check()
    lh2, _, _ = run(X, {"tax": Y}, pool, cache, "r2")
    assert lh2.public_key != lh1.public_key and cache.stats["refused"] == 1
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600


def test_a_crash_mid_write_keeps_the_previous_state(tmp_path, pool, monkeypatch):
    """A failure inside a transaction (here: while storing a new set) rolls it back whole."""
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X, Y = ids("C", 0, 50), ids("C", 0, 50)
    run(X, {"tax": Y}, pool, cache, "r1")
    epoch = cache.current_epoch()

    from fedrisk.crypto import psi_cache

    def boom(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(psi_cache, "_set_checksum", boom)
    with pytest.raises(RuntimeError):
        run(X + ["C777777"], {"tax": Y}, pool, cache, "r2")
    monkeypatch.undo()
    after = LabelHolderKeyCache(tmp_path, clock=Clock())
    assert after.check().epoch_id == epoch.epoch_id
    lh, _, _ = run(X, {"tax": Y}, pool, after, "r3")
    assert lh.reused_blinded_set


def test_without_a_cache_every_run_has_a_fresh_label_holder_key(pool):
    X = ids("C", 0, 20)
    keys = set()
    for r in range(2):
        lh = LabelHolderPSI(X, run_id=f"r{r}", party="bank", pool=pool)
        keys.add(lh.blind().public_key)
    assert len(keys) == 2


def test_public_key_before_blinding_is_refused_with_a_cache(tmp_path, pool):
    from fedrisk.errors import ProtocolError

    lh = LabelHolderPSI(ids("C", 0, 5), run_id="r", party="bank", pool=pool, cache=LabelHolderKeyCache(tmp_path))
    with pytest.raises(ProtocolError, match="blind first"):
        lh.public_key  # noqa: B018
    fh = FeatureHolderPSI(ids("C", 0, 5), run_id="r", party="tax", pool=pool)
    with pytest.raises(ProtocolError, match="blind first"):
        lh.double_blind(fh.blind())


def test_spot_check_rows_are_recomputed_not_trusted(tmp_path, pool):
    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    X = ids("C", 0, 64)
    run(X, {"tax": X}, pool, cache, "r1")
    before = ops(pool)
    lh, _, _ = run(X, {"tax": X}, pool, cache, "r2")
    assert lh.reused_blinded_set
    # The spot check runs outside the pool (a handful of rows), so the pool saw only the online work.
    assert delta(pool, before) == {"hashed": len(X), "x25519": 3 * len(X)}
    assert np.asarray(lh.result("tax").rows).size == 64


def test_a_busy_file_is_an_error_but_never_discarded(tmp_path, pool):
    from fedrisk.errors import CryptoError

    cache = LabelHolderKeyCache(tmp_path, clock=Clock())
    epoch = cache.current_epoch()
    holder = sqlite3.connect(cache.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        busy = LabelHolderKeyCache(tmp_path, clock=Clock(), busy_timeout=0.1)
        with pytest.raises(CryptoError, match="busy") as err:
            busy.current_epoch()
        assert not isinstance(err.value, PSICacheError) and busy.stats["refused"] == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert LabelHolderKeyCache(tmp_path).check().epoch_id == epoch.epoch_id
