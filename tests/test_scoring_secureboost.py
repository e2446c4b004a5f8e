"""Live SecureBoost scoring: the bank's node routes its trees with the parties' left/right answers.

Trains a small vertical SecureBoost (CKKS, in-process, a few trees on a few
hundred synthetic SMEs), writes each party's signed bundle, starts the tax
bureau's and the platform's party scoring services and the bank's node as real
sandboxed processes on loopback (TLS everywhere, mTLS to the parties and from
the loan system) and checks every live PD against the trained model's offline
``predict_proba``; then what a party answers (directions only), a party going
down (the policy's fallback, stated) and tampered bundles (refused).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import struct
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.unknown_fields import UnknownFieldSet
from test_scoring_node import _keys, node_config, party_config, patient_policy

from fedrisk.errors import CryptoError
from fedrisk.models.bundle import load_model_bundle
from fedrisk.models.secureboost import (
    answer_splits,
    load_feature_holder_bundle,
    load_label_holder_bundle,
)
from fedrisk.scoring.client import ScoringClient
from fedrisk.scoring.config import PartyEndpoint
from fedrisk.scoring.deploy import start_example_deployment
from fedrisk.scoring.example import (
    FEATURE_HOLDERS,
    LOAN_SYSTEM,
    ExampleFederation,
    load_or_build_example,
)
from fedrisk.scoring.scoring_node import ScoringNode
from fedrisk.scoring.party_service import PartyScoringService
from fedrisk.scoring.policy import load_policy
from fedrisk.scoring.transport import secure_channel
from fedrisk.data.synthetic import PARTY_SCHEMAS
from fedrisk.data.table import load_party_table
from fedrisk.v1 import scoring_pb2 as pb

pytestmark = pytest.mark.e2e
_OUTCOME = {"approve": pb.APPROVE, "refer": pb.REFER, "decline": pb.DECLINE}
ROWS, TREES = 600, 3


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleFederation:
    return load_or_build_example(tmp_path_factory.getbasetemp() / "scoring-secureboost-example", model="secureboost", rows=ROWS, trees=TREES)


@pytest.fixture(scope="module")
def deployment(example, tmp_path_factory):
    state = tmp_path_factory.mktemp("sb-node-state")
    policy = patient_policy(state)
    dep = start_example_deployment(example, state, sandbox="auto", require_client_cert=True, policy=policy)
    dep.policy = policy  # type: ignore[attr-defined]
    yield dep
    dep.stop()
    for service in (dep.node, *dep.parties.values()):
        assert not service.alive()


@pytest.fixture(scope="module")
def client(example, deployment):
    cert, key = example.client_cert(LOAN_SYSTEM)
    with ScoringClient(deployment.node.address, ca=example.pki.ca_cert, cert=cert, key=key) as c:
        c.wait_ready(10)
        yield c


def _table_rows(example: ExampleFederation, party: str, features: tuple[str, ...], ids: list[str]) -> np.ndarray:
    """A party's own values for ``ids`` in ``features`` order (all-NaN for an SME it does not hold)."""
    table = load_party_table(example.tables[party], PARTY_SCHEMAS[party], name=party)
    position = {str(sme): k for k, sme in enumerate(table.ids)}
    columns = [list(table.feature_names).index(f) for f in features]
    matrix = table.feature_matrix()[:, columns]
    out = np.full((len(ids), len(features)), np.nan)
    for k, sme in enumerate(ids):
        if sme in position:
            out[k] = matrix[position[sme]]
    return out


def _offline_pd_without(example: ExampleFederation, ids: list[str], absent: str) -> np.ndarray:
    """The trained model's PD from the signed bundles with ``absent`` not answering (its splits on their defaults)."""
    keys = [bytes.fromhex(k) for k in _keys(example)]
    trees = load_label_holder_bundle(*load_model_bundle(example.bundles["bank"], keys))
    answers = {}
    for party in FEATURE_HOLDERS:
        if party == absent:
            continue
        arrays, meta = load_model_bundle(example.bundles[party], keys)
        table = load_feature_holder_bundle(arrays, meta)
        allowed = set(Path(example.allow_lists[party]).read_text().split())
        X = _table_rows(example, party, table.feature_names, ids)
        X[[i not in allowed for i in ids]] = np.nan
        answers[party] = answer_splits(table, X, fingerprint=meta["context_fingerprint"])
    return trees.predict_proba(_table_rows(example, "bank", trees.feature_names, ids), answers)[:, 1]


def test_live_tree_decisions_equal_the_models_offline_predictions(example, deployment, client):
    described = client.describe()
    assert sorted(described.feature_holders) == sorted(FEATURE_HOLDERS) and described.label_holder == "bank"
    assert list(described.bank_features) == list(PARTY_SCHEMAS["bank"].features)
    policy = load_policy(deployment.policy)
    ids = list(example.offline_pd)[:200]
    revenue = [150_000 + 9_871 * k for k in range(len(ids))]
    applications = (pb.Application(application_id=f"sb-{k}", sme_id=i, declared_annual_revenue=r) for k, (i, r) in enumerate(zip(ids, revenue)))
    decisions = list(client.score_stream(applications, timeout=60))
    assert [d.sme_id for d in decisions] == ids
    states = {p: set() for p in FEATURE_HOLDERS}
    for d, rev in zip(decisions, revenue):
        offline = example.offline_pd[d.sme_id]
        assert not d.degraded and d.recorded
        assert d.probability_of_default == pytest.approx(offline, abs=1e-12, rel=1e-12)
        expected = policy.decide(offline, declared_revenue=rev)
        assert (d.outcome, d.credit_limit, d.score, d.risk_band) == (_OUTCOME[expected.decision], expected.credit_limit, expected.score, expected.band)
        for p in d.parties:
            states[p.party].add(p.state)
        # reasons name the bank's own features or a party, never a value or a threshold
        for r in d.reasons:
            assert r.party in ("policy", "bank", *FEATURE_HOLDERS)
            assert not any(ch.isdigit() for ch in r.text.replace("12m", "")), r.text
            if r.party == "bank":
                assert r.code in PARTY_SCHEMAS["bank"].features
            elif r.party in FEATURE_HOLDERS:
                assert r.code == "tree_routing"
    # both kinds of answer were exercised: covered SMEs and SMEs a party does not know (default directions)
    assert all(s >= {pb.COVERED} for s in states.values()) and pb.NOT_COVERED in states["platform"]
    assert any(r.party in FEATURE_HOLDERS for d in decisions for r in d.reasons)


def test_a_party_going_down_falls_back_by_policy_and_says_so(example, deployment, client):
    ids = list(example.offline_pd)[200:230]
    deployment.parties["platform"].kill()
    started = time.perf_counter()
    decisions = [client.score(pb.Application(sme_id=i, declared_annual_revenue=1_000_000, estimate_only=True), timeout=5) for i in ids]
    assert time.perf_counter() - started < 15  # never hangs
    expected = _offline_pd_without(example, ids, "platform")
    for d, pd_without in zip(decisions, expected):
        assert d.degraded and d.outcome in (pb.APPROVE, pb.REFER, pb.DECLINE)
        states = {p.party: p.state for p in d.parties}
        assert states["platform"] in (pb.UNAVAILABLE, pb.TIMEOUT, pb.CIRCUIT_OPEN)
        assert states["tax_bureau"] in (pb.COVERED, pb.NOT_COVERED)
        assert any(r.party == "policy" and r.code == "PARTY_UNAVAILABLE_FALLBACK" and "platform" in r.text for r in d.reasons)
        # the platform's splits took their learned default directions, as training did for rows it does not cover
        assert d.probability_of_default == pytest.approx(pd_without, abs=1e-12, rel=1e-12)
        assert not any(r.party == "platform" for r in d.reasons)


def test_a_party_answers_only_directions_at_its_own_splits(example):
    keys = [bytes.fromhex(k) for k in _keys(example)]
    arrays, meta = load_model_bundle(example.bundles["platform"], keys)
    table = load_feature_holder_bundle(arrays, meta)
    allowed = sorted(Path(example.allow_lists["platform"]).read_text().split())[:40]
    outside = min(set(example.offline_pd) - set(Path(example.allow_lists["platform"]).read_text().split()))
    split_ids = [int(s) for s in table.split_id]
    assert split_ids, "the platform owns no split in this model"

    async def ask(*requests: pb.PartyScoreRequest) -> list[bytes | grpc.StatusCode]:
        svc = PartyScoringService(party_config(example, "platform"))
        address = await svc.start()
        cert, key = example.client_cert("bank")
        channel = secure_channel(address, ca=example.pki.ca_cert, cert=cert, key=key)
        call = channel.unary_unary(
            "/fedrisk.v1.PartyScoringService/PartialScores", request_serializer=pb.PartyScoreRequest.SerializeToString, response_deserializer=None
        )
        out: list[bytes | grpc.StatusCode] = []
        try:
            for request in requests:
                try:
                    out.append(await call(request, timeout=5))
                except grpc.aio.AioRpcError as err:
                    out.append(err.code())
        finally:
            await channel.close()  # type: ignore[union-attr]
            await svc.stop(0)
        return out

    tree = pb.PartyScoreRequest(request_id="t1", model_version=example.run_id, kind=pb.TREE_ROUTING, sme_ids=[*allowed, outside], max_reasons=3)
    subset = pb.PartyScoreRequest(request_id="t2", model_version=example.run_id, kind=pb.TREE_ROUTING, sme_ids=allowed[:2], split_ids=split_ids[:1])
    unknown = pb.PartyScoreRequest(request_id="t3", model_version=example.run_id, kind=pb.TREE_ROUTING, sme_ids=allowed[:1], split_ids=[max(split_ids) + 1000])
    scorecard = pb.PartyScoreRequest(request_id="t4", model_version=example.run_id, kind=pb.SCORECARD, sme_ids=allowed[:1])
    raw, raw_subset, refused, wrong_kind = asyncio.run(ask(tree, subset, unknown, scorecard))
    assert refused == grpc.StatusCode.INVALID_ARGUMENT and wrong_kind == grpc.StatusCode.UNIMPLEMENTED

    response = pb.PartyScoreResponse.FromString(raw)  # type: ignore[arg-type]
    assert len(UnknownFieldSet(response)) == 0
    assert {f.name for f, _ in response.ListFields()} == {"request_id", "party", "model_version", "answers"}
    assert [a.sme_id for a in response.answers] == [*allowed, outside]
    assert response.answers[-1].state == pb.NOT_COVERED and response.answers[-1].WhichOneof("part") is None
    X = _table_rows(example, "platform", table.feature_names, allowed)
    want = table.answer(X)
    for k, answer in enumerate(response.answers[:-1]):
        assert answer.state == pb.COVERED and answer.WhichOneof("part") == "routing"
        assert {f.name for f, _ in answer.ListFields()} == {"sme_id", "state", "routing"}
        branches = dict(answer.routing.branches)
        assert sorted(branches) == sorted(split_ids) and set(branches.values()) <= {pb.LEFT, pb.RIGHT}
        assert [branches[s] == pb.LEFT for s in split_ids] == want[k].tolist()  # its own thresholds, its own values
    # nothing but IDs, names and directions: no threshold and no feature value travels, in any encoding
    secrets = [v for v in [*table.threshold.tolist(), *X[np.isfinite(X)].tolist()] if v not in (0.0, 1.0)]
    for value in secrets:
        assert struct.pack("<d", value) not in raw and struct.pack("<f", value) not in raw  # type: ignore[operator]
        assert repr(value).encode() not in raw  # type: ignore[operator]
    small = pb.PartyScoreResponse.FromString(raw_subset)  # type: ignore[arg-type]
    assert [sorted(a.routing.branches) for a in small.answers] == [split_ids[:1]] * 2


def test_tampered_secureboost_bundles_are_refused(example, tmp_path):
    bad = tmp_path / "bank"
    shutil.copytree(example.bundles["bank"], bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a leaf weight or a threshold
    weights.write_bytes(bytes(data))
    cfg = node_config(example, {p: PartyEndpoint("127.0.0.1:9") for p in FEATURE_HOLDERS}, tmp_path)
    with pytest.raises(CryptoError, match="sha256 differs"):
        ScoringNode(replace(cfg, bundle=str(bad)))
    (bad / "MANIFEST.sig").unlink()
    with pytest.raises(CryptoError, match="unsigned"):
        ScoringNode(replace(cfg, bundle=str(bad)))
    routing = tmp_path / "platform"
    shutil.copytree(example.bundles["platform"], routing)
    meta = routing / "model.json"
    meta.write_text(meta.read_text().replace('"platform"', '"tax_bureau"', 1))  # claim to be another party
    with pytest.raises(CryptoError, match="model.json: .* differs"):
        PartyScoringService(party_config(example, "platform", bundle=str(routing)))
    with pytest.raises(CryptoError, match="not in the trusted set"):
        ScoringNode(replace(cfg, trusted_keys=[example.signers["platform"].public_key_bytes.hex()]))
    # the untampered bundles load: the node serves the trees, the party its routing table
    node = ScoringNode(cfg)
    assert node.trees is not None and set(node.trees.parties) <= set(FEATURE_HOLDERS)
    assert PartyScoringService(party_config(example, "platform")).kind == pb.TREE_ROUTING


def test_tree_reasons_are_the_log_odds_each_party_and_own_feature_moves(example):
    from fedrisk.scoring.bundles import load_bank_model, parse_trusted_keys
    from fedrisk.scoring.trees import TreeScorer

    model = load_bank_model(example.bundles["bank"], parse_trusted_keys(example.trusted_keys))
    trees = TreeScorer(model.part)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    ids = list(example.offline_pd)[:25]
    X = _table_rows(example, "bank", trees.features, ids)
    for i in range(len(ids)):
        x = X[i].tolist()
        answers = {p: {s: bool(rng.random() < 0.5) for s in trees.split_ids[p]} if rng.random() < 0.8 else None for p in trees.parties}
        z = trees.log_odds(x, answers)
        own, parties = trees.contributions(x, answers)
        for party in trees.parties:  # a party's contribution: its answers against its splits' default directions
            want = z - trees.log_odds(x, {**answers, party: None})
            assert parties.get(party, 0.0) == pytest.approx(want, abs=1e-12)
        for j, name in enumerate(trees.features):  # an own feature's: its value against treating it as missing
            want = z - trees.log_odds([math.nan if k == j else v for k, v in enumerate(x)], answers)
            assert own.get(name, 0.0) == pytest.approx(want, abs=1e-12)
