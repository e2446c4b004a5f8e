"""A stack served live as one model: one fan-out call per party per application, the meta-learner at the bank.

Trains a small stack in-process (:func:`build_stacking_example`: vertical LR and
SecureBoost over their encrypted protocols on 2 folds and refitted, the bank's
meta-learner on their out-of-fold log-odds), writes every party's signed
bundles as stack folders, and serves it with the bank's scoring node and the
feature holders' party scoring services over real gRPC with mTLS on loopback:
live PD against :meth:`VerticalStacking.predict_proba` on the same rows, the
number of calls each party answers (counted at the party), what a party
receives (the raw request), a party down, and bad input (one line each).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from google.protobuf.unknown_fields import UnknownFieldSet
from test_scoring_node import node_config, party_config, patient_policy

from fedrisk.errors import ConfigError
from fedrisk.models.bundle import load_model_bundle, write_model_bundle
from fedrisk.scoring.bundles import load_bank_model, load_party_models
from fedrisk.scoring.config import PartyEndpoint
from fedrisk.scoring.example import (
    FEATURE_HOLDERS,
    LOAN_SYSTEM,
    ExampleFederation,
    load_or_build_example,
)
from fedrisk.scoring.scoring_node import ScoringNode
from fedrisk.scoring.party_service import PartyScoringService
from fedrisk.scoring.transport import secure_channel
from fedrisk.data.synthetic import PARTY_SCHEMAS
from fedrisk.v1 import scoring_pb2 as pb
from fedrisk.v1 import scoring_pb2_grpc as rpc

BASES = ("vertical_lr", "secureboost")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleFederation:
    ex = load_or_build_example(tmp_path_factory.getbasetemp() / "scoring-stacking-example", model="stacking")
    if ex.model is None:  # reloaded from an earlier build in this base temp: the offline stack is needed in memory
        pytest.skip("the stacking example must be built in this process")
    return ex


def _keys(ex: ExampleFederation) -> list[bytes]:
    return [s.public_key_bytes for s in ex.signers.values()]


def _allowed(ex: ExampleFederation, party: str) -> set[str]:
    return set(Path(ex.allow_lists[party]).read_text().split())


def _offline(ex: ExampleFederation, ids: list[str], *, down: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The trained stack's PD (and each base learner's log-odds) on ``ids``, a party in ``down`` holding no SME."""
    bank = ex.data.parties["bank"]  # type: ignore[union-attr]
    frame = pd.DataFrame(bank.feature_matrix(), columns=bank.feature_names, index=pd.Index(bank.ids, name="id")).loc[ids]
    holders = {}
    for party in FEATURE_HOLDERS:
        t = ex.data.parties[party]  # type: ignore[union-attr]
        keep = slice(0, 0) if party in down else slice(None)
        holders[party] = pd.DataFrame(t.feature_matrix()[keep], columns=t.feature_names, index=pd.Index(np.asarray(t.ids)[keep], name="id"))
    base = ex.model.base_decision_functions(frame, holders, secure=False)
    return ex.model.predict_proba(frame, holders, secure=False)[:, 1], base


@contextlib.asynccontextmanager
async def serving(
    ex: ExampleFederation, tmp: Path, *, down: tuple[str, ...] = (), node_kw: dict | None = None, party_kw: dict | None = None
) -> AsyncIterator[tuple[ScoringNode, dict[str, PartyScoringService], rpc.ScoringServiceStub]]:
    services: dict[str, PartyScoringService] = {}
    endpoints: dict[str, PartyEndpoint] = {}
    for party in FEATURE_HOLDERS:
        if party in down:
            endpoints[party] = PartyEndpoint("127.0.0.1:9")  # discard port: nothing answers
            continue
        services[party] = PartyScoringService(party_config(ex, party, **(party_kw or {}).get(party, {})))
        endpoints[party] = PartyEndpoint(await services[party].start())
    node = ScoringNode(node_config(ex, endpoints, tmp, **{"policy": patient_policy(tmp), **(node_kw or {})}))
    address = await node.start()
    channel = secure_channel(address, ca=ex.pki.ca_cert)
    try:
        yield node, services, rpc.ScoringServiceStub(channel)  # type: ignore[arg-type]
    finally:
        await channel.close()  # type: ignore[union-attr]
        await node.stop(0)
        for svc in services.values():
            await svc.stop(0)


def _node_numbers(d: pb.Decision) -> dict[str, float]:
    """Each base learner's log-odds as the node's BASE_LEARNER reasons state them."""
    out = {}
    for r in d.reasons:
        if r.party == "node" and r.code.startswith("BASE_LEARNER:"):
            out[r.code.split(":", 1)[1]] = float(re.search(r"log-odds ([-+]\d+\.\d+)", r.text).group(1))  # type: ignore[union-attr]
    return out


def test_live_stack_equals_the_offline_stack_across_coverage_patterns(example, tmp_path):
    ids = list(example.offline_pd)
    tax, platform = _allowed(example, "tax_bureau"), _allowed(example, "platform")
    pattern = {i: (i in tax, i in platform) for i in ids}
    assert set(pattern.values()) == {(True, True), (True, False), (False, True), (False, False)}, "the example lacks a coverage pattern"

    async def scenario() -> list[pb.Decision]:
        async with serving(example, tmp_path) as (node, _services, stub):
            described = await stub.Describe(pb.DescribeRequest())
            assert described.model_version == node.model.model_version and sorted(described.feature_holders) == sorted(FEATURE_HOLDERS)
            requests = (pb.Application(application_id=f"st-{k}", sme_id=i, declared_annual_revenue=1.5e6) for k, i in enumerate(ids))
            return [d async for d in stub.ScoreBatch(requests)]

    decisions = asyncio.run(scenario())
    assert [d.sme_id for d in decisions] == ids
    offline, base = _offline(example, ids)
    np.testing.assert_allclose(offline, [example.offline_pd[i] for i in ids], rtol=0, atol=1e-15)
    seen = set()
    for k, d in enumerate(decisions):
        assert not d.degraded and d.recorded
        assert abs(d.probability_of_default - offline[k]) <= 1e-9, (d.sme_id, pattern[d.sme_id])
        states = {p.party: p.state for p in d.parties}
        assert states == {
            "tax_bureau": pb.COVERED if pattern[d.sme_id][0] else pb.NOT_COVERED,
            "platform": pb.COVERED if pattern[d.sme_id][1] else pb.NOT_COVERED,
        }
        seen.add(pattern[d.sme_id])
        # the node's reasons state each base learner's log-odds (the bank's own data), then the stack's
        numbers = _node_numbers(d)
        assert set(numbers) == set(BASES)
        for name in BASES:
            assert numbers[name] == pytest.approx(base[name][k], abs=1e-4)
        assert any(r.party == "node" and r.code == "STACK_LOG_ODDS" for r in d.reasons)
        for r in d.reasons:
            assert r.party in ("policy", "node", "bank", *FEATURE_HOLDERS)
            if r.party in FEATURE_HOLDERS:  # a party's reasons name its features or its splits, never a value
                assert r.code in (*PARTY_SCHEMAS[r.party].features, "tree_routing") and r.text.endswith(("(vertical_lr)", "(secureboost)"))
                assert not any(ch.isdigit() for ch in r.text.replace("12m", ""))
    assert len(seen) == 4
    # both base learners' parties' reasons came through
    codes = {(r.party, r.code) for d in decisions for r in d.reasons}
    assert any(c == "tree_routing" for _, c in codes) and any(p in FEATURE_HOLDERS and c != "tree_routing" for p, c in codes)


def test_each_party_is_asked_once_per_application_for_every_base_learner(example, tmp_path):
    ids = list(example.offline_pd)[:40]

    async def scenario() -> tuple[dict, dict, dict]:
        async with serving(example, tmp_path) as (_node, services, stub):
            for i in ids:  # one at a time: each application is its own fan-out
                await stub.Score(pb.Application(sme_id=i, estimate_only=True))
            single = {p: (s.requests["bank"], s.ids_asked["bank"]) for p, s in services.items()}
            requests = (pb.Application(sme_id=i, estimate_only=True) for i in ids)
            _ = [d async for d in stub.ScoreBatch(requests)]
            batch = {p: (s.requests["bank"] - single[p][0], s.ids_asked["bank"] - single[p][1]) for p, s in services.items()}
            return single, batch, {p: s.ids_answered["bank"] for p, s in services.items()}

    single, batch, answered = asyncio.run(scenario())
    for party in FEATURE_HOLDERS:
        assert single[party] == (len(ids), len(ids)), party  # exactly one call per application, one ID in it
        calls, asked = batch[party]
        assert asked == len(ids) and 1 <= calls <= len(ids), party  # coalesced, but every ID asked exactly once
        covered = len(set(ids) & _allowed(example, party))
        assert answered[party] == 2 * covered


def test_a_party_receives_only_the_sme_id_and_which_of_its_bundles(example, tmp_path):
    sme = next(i for i in example.offline_pd if i in _allowed(example, "platform"))
    raw: list[bytes] = []

    async def scenario() -> pb.Decision:
        async with serving(example, tmp_path) as (_node, services, stub):
            svc = services["platform"]
            answer = svc.answer

            def spy(request: bytes, caller: str) -> bytes:
                raw.append(request)
                return answer(request, caller)

            svc.answer = spy  # type: ignore[method-assign]
            return await stub.Score(pb.Application(sme_id=sme, declared_annual_revenue=2.5e6, requested_amount=1.0e5, estimate_only=True))

    d = asyncio.run(scenario())
    assert {p.party: p.state for p in d.parties}["platform"] == pb.COVERED
    assert len(raw) == 1
    req = pb.PartyScoreRequest.FromString(raw[0])
    assert len(UnknownFieldSet(req)) == 0
    assert {f.name for f, _ in req.ListFields()} == {"request_id", "model_version", "kind", "sme_ids", "deadline_ms", "bases"}
    assert list(req.sme_ids) == [sme] and req.kind == pb.STACK
    # per base learner: its run id and what to return — the platform's own split ids, a number of reasons; nothing of the bank's
    served = {m.run_id: m for m in load_party_models(example.bundles["platform"], _keys(example))}
    assert [b.model_version for b in req.bases] == [f"{example.run_id}.{n}" for n in BASES]
    for b in req.bases:
        assert b.model_version in served
        fields = {f.name for f, _ in b.ListFields()}
        if b.kind == pb.TREE_ROUTING:
            assert fields <= {"model_version", "kind", "split_ids"} and set(b.split_ids) <= {int(s) for s in served[b.model_version].part.split_id}
        else:
            assert b.kind == pb.SCORECARD and fields <= {"model_version", "kind", "max_reasons"}
    for secret in (b"2500000", b"100000", *(f.encode() for f in PARTY_SCHEMAS["bank"].features)):
        assert secret not in raw[0]


def test_a_party_down_is_missing_for_every_base_learner_and_the_policy_says_so(example, tmp_path):
    ids = list(example.offline_pd)[:60]

    async def scenario() -> list[pb.Decision]:
        async with serving(example, tmp_path, down=("platform",)) as (_node, _services, stub):
            return [await stub.Score(pb.Application(sme_id=i, declared_annual_revenue=1.0e6, estimate_only=True), timeout=10) for i in ids]

    decisions = asyncio.run(scenario())
    expected, _ = _offline(example, ids, down=("platform",))
    for d, pd_without in zip(decisions, expected):
        states = {p.party: p.state for p in d.parties}
        assert d.degraded and states["platform"] in (pb.UNAVAILABLE, pb.TIMEOUT, pb.CIRCUIT_OPEN)
        assert states["tax_bureau"] in (pb.COVERED, pb.NOT_COVERED)
        assert any(r.party == "policy" and r.code == "PARTY_UNAVAILABLE_FALLBACK" and "platform" in r.text for r in d.reasons)
        # scorecard: as not covering the SME; trees: its splits on their defaults — one state for both base learners
        assert abs(d.probability_of_default - pd_without) <= 1e-9
        assert not any(r.party == "platform" for r in d.reasons)


def test_a_reply_missing_a_base_learners_part_is_a_broken_answer(example, tmp_path):
    sme = next(i for i in example.offline_pd if i in _allowed(example, "tax_bureau"))

    async def scenario() -> pb.Decision:
        async with serving(example, tmp_path) as (_node, services, stub):
            svc = services["tax_bureau"]
            answer = svc.answer

            def drop_last_part(request: bytes, caller: str) -> bytes:
                response = pb.PartyScoreResponse.FromString(answer(request, caller))
                for a in response.answers:
                    if a.parts:
                        del a.parts[-1]
                return response.SerializeToString()

            svc.answer = drop_last_part  # type: ignore[method-assign]
            return await stub.Score(pb.Application(sme_id=sme, estimate_only=True))

    d = asyncio.run(scenario())
    status = {p.party: p for p in d.parties}["tax_bureau"]
    assert d.degraded and status.state == pb.UNAVAILABLE
    assert "no part for base learner 'secureboost'" in status.detail and "\n" not in status.detail
    expected, _ = _offline(example, [sme], down=("tax_bureau",))
    assert abs(d.probability_of_default - expected[0]) <= 1e-9  # never half-used: missing for both base learners


def _resign(src: Path, dst: Path, signer, edit) -> Path:
    arrays, meta = load_model_bundle(src, None)
    arrays, meta = edit(dict(arrays), dict(meta))
    return write_model_bundle(dst, arrays, meta, signer)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


def test_bad_stacks_are_refused_in_one_line(example, tmp_path):
    keys = _keys(example)
    bank = Path(example.bundles["bank"])
    signer = example.signers["bank"]

    def stack_folder(name: str, *members: str) -> Path:
        folder = tmp_path / name
        for m in members:
            shutil.copytree(bank / m, folder / m)
        return folder

    # the meta-learner expects two base learners; the folder holds one
    with pytest.raises(ConfigError) as err:
        load_bank_model(stack_folder("one-base", "meta", "vertical_lr"), keys)
    assert "expects 2 base learners" in _one_line(err)
    # a meta-learner with three inputs over the same two base learners
    folder = stack_folder("three-inputs", "vertical_lr", "secureboost")
    _resign(bank / "meta", folder / "meta", signer, lambda a, m: ({"coef": np.array([0.5, 0.5, 0.5])}, {**m, "base_learners": [*BASES, "neural"]}))
    with pytest.raises(ConfigError) as err:
        load_bank_model(folder, keys)
    assert "expects 3 base learners" in _one_line(err)
    # base learners trained with different feature holders
    folder = stack_folder("other-parties", "meta", "vertical_lr")
    _resign(bank / "secureboost", folder / "secureboost", signer, lambda a, m: (a, {**m, "parties": ["bank", "tax_bureau", "registry"]}))
    with pytest.raises(ConfigError) as err:
        load_bank_model(folder, keys)
    assert "parties do not match" in _one_line(err)
    # a base bundle the meta-learner was not fitted on (its digest is in the signed meta bundle)
    folder = stack_folder("other-bundle", "meta", "vertical_lr")
    _resign(bank / "secureboost", folder / "secureboost", signer, lambda a, m: (a, {**m, "note": "retrained"}))
    with pytest.raises(ConfigError) as err:
        load_bank_model(folder, keys)
    assert "another secureboost bundle" in _one_line(err)
    # a meta-learner served alone
    with pytest.raises(ConfigError) as err:
        load_bank_model(bank / "meta", keys)
    assert "stack folder" in _one_line(err)
    # a feature holder's stack folder mixing two parties' bundles
    mixed = tmp_path / "mixed"
    shutil.copytree(Path(example.bundles["platform"]) / "vertical_lr", mixed / "vertical_lr")
    shutil.copytree(Path(example.bundles["tax_bureau"]) / "secureboost", mixed / "secureboost")
    with pytest.raises(ConfigError) as err:
        PartyScoringService(party_config(example, "platform", bundle=str(mixed)))
    assert "parties do not match" in _one_line(err)
    # the node refuses a party endpoint that is in no base learner
    with pytest.raises(ConfigError) as err:
        ScoringNode(replace(node_config(example, {p: PartyEndpoint("127.0.0.1:9") for p in (*FEATURE_HOLDERS, "registry")}, tmp_path)))
    assert "registry" in _one_line(err)


def test_a_party_refuses_stack_requests_it_cannot_answer(example, tmp_path):
    sme = next(iter(_allowed(example, "platform")))
    svc = PartyScoringService(party_config(example, "platform"))
    assert svc.kind == pb.STACK and len(svc.served) == 2
    lr, sb = (f"{example.run_id}.{n}" for n in BASES)

    def refused(request: pb.PartyScoreRequest) -> str:
        from fedrisk.scoring.party_service import Refused

        with pytest.raises(Refused) as err:
            svc.answer(request.SerializeToString(), "bank")
        return f"{err.value.code.name}: {_one_line(err)}"

    stack = pb.PartyScoreRequest(request_id="r", model_version=example.run_id, kind=pb.STACK, sme_ids=[sme])
    assert refused(stack).startswith("INVALID_ARGUMENT") and "bases is empty" in refused(stack)
    other = pb.PartyScoreRequest(
        request_id="r", model_version=example.run_id, kind=pb.STACK, sme_ids=[sme], bases=[pb.BaseModelRequest(model_version="another-run", kind=pb.SCORECARD)]
    )
    assert refused(other).startswith("FAILED_PRECONDITION") and "another-run" in refused(other)
    wrong_kind = pb.PartyScoreRequest(
        request_id="r", model_version=example.run_id, kind=pb.STACK, sme_ids=[sme], bases=[pb.BaseModelRequest(model_version=sb, kind=pb.SCORECARD)]
    )
    assert refused(wrong_kind).startswith("UNIMPLEMENTED")
    # a base learner alone is still answered, exactly as a single bundle would be
    alone = pb.PartyScoreResponse.FromString(
        svc.answer(pb.PartyScoreRequest(request_id="a", model_version=lr, kind=pb.SCORECARD, sme_ids=[sme], max_reasons=2).SerializeToString(), "bank")
    )
    both = pb.PartyScoreResponse.FromString(svc.answer(pb.PartyScoreRequest(
        request_id="b", model_version=example.run_id, kind=pb.STACK, sme_ids=[sme],
        bases=[pb.BaseModelRequest(model_version=lr, kind=pb.SCORECARD, max_reasons=2), pb.BaseModelRequest(model_version=sb, kind=pb.TREE_ROUTING)],
    ).SerializeToString(), "bank"))  # fmt: skip
    assert alone.answers[0].scorecard == both.answers[0].parts[0].scorecard
    assert both.answers[0].WhichOneof("part") is None and [p.model_version for p in both.answers[0].parts] == [lr, sb]


@pytest.mark.e2e
def test_the_stack_deploys_as_one_sandboxed_node(example, tmp_path):
    """The real processes (launcher, sandbox, CLI): stack folders as the node's and the parties' bundles."""
    from fedrisk.scoring.client import ScoringClient
    from fedrisk.scoring.deploy import start_example_deployment

    dep = start_example_deployment(example, tmp_path / "state", sandbox="auto", policy=patient_policy(tmp_path), require_client_cert=True)
    try:
        cert, key = example.client_cert(LOAN_SYSTEM)
        ids = list(example.offline_pd)[:80]
        with ScoringClient(dep.node.address, ca=example.pki.ca_cert, cert=cert, key=key) as client:
            client.wait_ready(10)
            decisions = list(client.score_stream((pb.Application(sme_id=i, estimate_only=True) for i in ids), timeout=60))
    finally:
        dep.stop()
    assert [d.sme_id for d in decisions] == ids
    for d in decisions:
        assert abs(d.probability_of_default - example.offline_pd[d.sme_id]) <= 1e-9 and not d.degraded
