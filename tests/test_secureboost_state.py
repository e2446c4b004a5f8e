"""SecureBoost parties rebuilt from their saved state (fedrisk/parties/secureboost_state.py), at the model level.

The bank after every round (once it has built its outbox) and each feature
holder after every other round (once it has answered) is thrown away and
rebuilt the way a restarted party process does it: a fresh model set up with
the same inputs, then the fields saved through a real :class:`CheckpointStore`
(JSON and ``.npy`` on disk) put back, and a feature holder's kernel given the
tree's encrypted gradients again. The trees grown that way must be the plaintext
reference's: the same check, data and parameters as
``test_secureboost.test_federated_model_equals_the_plaintext_reference_with_the_same_bins``
(row subsampling on, so the bank's random generator must come back exactly;
that test verifies the margins that make each split immune to the gradients'
quantisation).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_secureboost import BANK, SMALL, _federated_splits, _joined, _small_tables

from fedrisk.errors import ProtocolError
from fedrisk.checkpoint import CheckpointStore
from fedrisk.models.secureboost import (
    BinLayout,
    FeatureHolderSB,
    LabelHolderSB,
    VerticalSecureBoost,
    make_label_holder_context,
    parse_payload,
)
from fedrisk.models.secureboost_tree import PlainSecureBoost
from fedrisk.models.in_process import public_copies, table_parts
from fedrisk.parties.secureboost_state import (
    FEATURE_HOLDER_FIELDS,
    LABEL_HOLDER_FIELDS,
    StateEncoder,
    apply,
    capture,
    decode,
)


def _through_disk(store: CheckpointStore, values: dict, blobs: dict[str, bytes]):
    store.save("secureboost-party-state", 0, values, blobs, config_sha256="-")
    return store.load()


def test_parties_rebuilt_after_every_round_grow_the_reference_trees(tmp_path):
    context = make_label_holder_context()
    public = public_copies(context).feature_holder
    bank_table, others = _small_tables()
    ids, X_bank, bank_names, y = table_parts(bank_table, "y", "label holder")
    aligned = {name: VerticalSecureBoost._aligned(ids, table, name) for name, table in others.items()}
    params = {k: SMALL[k] for k in ("n_trees", "max_depth", "n_bins", "learning_rate", "subsample", "random_state")}

    def new_bank() -> tuple[LabelHolderSB, object]:
        bank = LabelHolderSB(context, name=BANK, **params)
        return bank, bank.setup(X_bank, y, {name: a[1] for name, a in aligned.items()}, feature_names=bank_names)

    keys: dict[str, object] = {}

    def new_holder(name: str, plan) -> tuple[FeatureHolderSB, BinLayout]:
        holder = FeatureHolderSB(public, name=name, bins_key=keys.get(name))  # a restarted holder reloads its own bins key
        X, cov, names = aligned[name]
        return holder, holder.setup(X, cov, plan, feature_names=names)

    bank, plan = new_bank()
    holders, layouts = {}, {}
    for name in aligned:
        holders[name], layouts[name] = new_holder(name, plan)
        keys[name] = holders[name].bins_key_
        bank.register_layout(BinLayout.from_bytes(layouts[name].to_bytes(), context=context))

    def rebuilt_bank(old: LabelHolderSB) -> LabelHolderSB:
        saved = _through_disk(CheckpointStore(tmp_path / "bank"), *capture(old, LABEL_HOLDER_FIELDS))
        old.close()
        fresh, _ = new_bank()
        for layout in layouts.values():  # the bins, kept once in the bank's static state
            fresh.load_bins(BinLayout.from_bytes(layout.to_bytes(), context=context))
        apply(fresh, LABEL_HOLDER_FIELDS, saved.state, saved)
        return fresh

    def rebuilt_holder(name: str, old: FeatureHolderSB) -> FeatureHolderSB:
        saved = _through_disk(CheckpointStore(tmp_path / name), *capture(old, FEATURE_HOLDER_FIELDS))
        fresh, layout = new_holder(name, plan)
        # the same bins under the same key (the ciphertexts themselves are fresh encryptions)
        assert layout.layout == layouts[name].layout and layout.bins_context == layouts[name].bins_context
        apply(fresh, FEATURE_HOLDER_FIELDS, saved.state, saved)
        return fresh

    rounds = 0
    while True:
        out = bank.outbox()
        bank = rebuilt_bank(bank)  # the bank's answer has left; its process dies
        if not out:
            break
        rounds += 1
        for party, payloads in out.items():
            got = [parse_payload(p.to_bytes(), context=public) for p in payloads]
            replies = holders[party].handle(got)
            if rounds % 2:  # (every other round: a feature holder's setup encrypts its bins again, ~0.5 s)
                holders[party] = rebuilt_holder(party, holders[party])  # and so does this feature holder's
            for reply in replies:
                bank.receive(parse_payload(reply.to_bytes(), context=context))
    assert bank.done_ and rounds >= SMALL["n_trees"] * 2

    reference = PlainSecureBoost(**SMALL).fit(_joined(bank_table, others).to_numpy(), bank_table["y"].to_numpy())
    R = reference.model_.arrays
    expected = [("leaf",) if R["left"][i] < 0 else (int(R["feature"][i]), int(R["bin"][i]), int(R["default_left"][i])) for i in range(R["left"].size)]
    federated = SimpleNamespace(model_=bank.model_, routing_tables_={name: h.routing_table_ for name, h in holders.items()})
    assert _federated_splits(federated, 3, {name: a[0].shape[1] for name, a in aligned.items()}) == expected
    # Leaf weights come from the bank's plaintext gradient sums: the reference's to rounding, as without restarts.
    np.testing.assert_allclose(bank.model_.arrays["value"], R["value"], rtol=1e-12, atol=1e-15)
    assert bank.model_.base_score == reference.model_.base_score


def test_state_is_plain_json_and_npy_and_refuses_what_it_cannot_keep(tmp_path):
    encoder = StateEncoder()
    value = {(1, "a"): [np.arange(3), float("nan"), {2, 1}], "rng": np.random.default_rng(5)}
    encoded = encoder.encode(value)
    json.dumps(encoded, allow_nan=False)  # plain JSON: arrays went to blobs, NaN is tagged
    store = CheckpointStore(tmp_path)
    saved = _through_disk(store, {"v": encoded}, encoder.blobs)
    back = decode(saved.state["v"], saved)
    assert list(back) == [(1, "a"), "rng"] and np.array_equal(back[(1, "a")][0], np.arange(3))
    assert np.isnan(back[(1, "a")][1]) and back[(1, "a")][2] == {1, 2}
    assert back["rng"].random() == np.random.default_rng(5).random()
    with pytest.raises(ProtocolError, match="cannot keep a object array"):
        StateEncoder().encode(np.array([object()]))
    with pytest.raises(ProtocolError, match="cannot keep a SimpleNamespace"):
        StateEncoder().encode(SimpleNamespace(a=1))
    with pytest.raises(ProtocolError, match="unknown class 'Popen'"):
        decode({"dataclass": "Popen", "fields": {}}, saved)
