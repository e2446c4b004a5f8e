"""The scoring node and party scoring services in one process (no sandbox): decisions, fan-out, bad inputs.

Everything goes over real gRPC on loopback with TLS (mTLS to the parties); the
processes-and-sandbox version is ``test_scoring_e2e.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedrisk.errors import ConfigError, CryptoError
from fedrisk.scoring.config import NodeConfig, PartyEndpoint, PartyServiceConfig
from fedrisk.scoring.example import (
    FEATURE_HOLDERS,
    LOAN_SYSTEM,
    NODE_CERT,
    ExampleFederation,
    load_or_build_example,
)
from fedrisk.scoring.scoring_node import ScoringNode
from fedrisk.scoring.party_service import PartyScoringService
from fedrisk.scoring.register import read_register, verify_register
from fedrisk.scoring.transport import secure_channel
from fedrisk.v1 import scoring_pb2 as pb
from fedrisk.v1 import scoring_pb2_grpc as rpc


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleFederation:
    return load_or_build_example(tmp_path_factory.getbasetemp() / "scoring-example")


def _keys(ex: ExampleFederation) -> list[str]:
    return [s.public_key_bytes.hex() for s in ex.signers.values()]


def party_config(ex: ExampleFederation, party: str, **kw: object) -> PartyServiceConfig:
    cert, key = ex.server_cert(f"{party}-scoring")
    base = PartyServiceConfig(bundle=str(ex.bundles[party]), trusted_keys=_keys(ex), table=str(ex.tables[party]), tls_cert=str(cert), tls_key=str(key),
                              client_ca=str(ex.pki.ca_cert), allow_list=str(ex.allow_lists[party]))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def node_config(ex: ExampleFederation, parties: dict[str, PartyEndpoint], tmp: Path, **kw: object) -> NodeConfig:
    cert, key = ex.server_cert(NODE_CERT)
    ccert, ckey = ex.client_cert("bank")
    base = NodeConfig(bundle=str(ex.bundles["bank"]), trusted_keys=_keys(ex), tls_cert=str(cert), tls_key=str(key), ca=str(ex.pki.ca_cert),
                      client_cert=str(ccert), client_key=str(ckey), parties=parties, bank_table=str(ex.tables["bank"]),
                      register=str(tmp / "state" / "applications.sqlite"))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def patient_policy(folder: Path) -> str:
    """The shipped policy with a 2 s fan-out deadline (a loaded machine must not turn checks into fallbacks)."""
    from fedrisk.scoring.policy import default_policy_path

    path = folder / "patient_policy.toml"
    path.write_text(default_policy_path().read_text().replace("deadline_ms = 40", "deadline_ms = 2000"))
    return str(path)


@contextlib.asynccontextmanager
async def running(
    ex: ExampleFederation, tmp: Path, *, down: tuple[str, ...] = (), node_kw: dict | None = None
) -> AsyncIterator[tuple[ScoringNode, rpc.ScoringServiceStub, grpc.aio.Channel]]:
    services = []
    parties: dict[str, PartyEndpoint] = {}
    for party in FEATURE_HOLDERS:
        if party in down:
            parties[party] = PartyEndpoint("127.0.0.1:9")  # discard port: nothing answers
            continue
        svc = PartyScoringService(party_config(ex, party))
        parties[party] = PartyEndpoint(await svc.start())
        services.append(svc)
    node = ScoringNode(node_config(ex, parties, tmp, **{"policy": patient_policy(tmp), **(node_kw or {})}))
    address = await node.start()
    channel = secure_channel(address, ca=ex.pki.ca_cert)
    try:
        yield node, rpc.ScoringServiceStub(channel), channel  # type: ignore[arg-type]
    finally:
        await channel.close()  # type: ignore[union-attr]
        await node.stop(0)
        for svc in services:
            await svc.stop(0)


@pytest.fixture(scope="module")
def served(example, tmp_path_factory) -> Iterator[str]:
    """One node and its parties for many tests, on an event loop in a background thread; yields the node's address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = running(example, tmp_path_factory.mktemp("served"))
    node, _stub, _channel = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(60)
    try:
        yield node.address
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def bank_ids(ex: ExampleFederation, n: int) -> list[str]:
    return list(ex.offline_pd)[:n]


def test_decisions_equal_the_models_offline_predictions(example, tmp_path):
    ids = bank_ids(example, 120)

    async def scenario() -> list[pb.Decision]:
        async with running(example, tmp_path) as (node, stub, _):
            return list(await asyncio.gather(*(stub.Score(pb.Application(sme_id=i, declared_annual_revenue=1.5e6)) for i in ids)))

    decisions = asyncio.run(scenario())
    for sme_id, d in zip(ids, decisions):
        assert d.sme_id == sme_id and not d.degraded and d.recorded
        assert d.probability_of_default == pytest.approx(example.offline_pd[sme_id], abs=1e-12)
        assert d.outcome in (pb.APPROVE, pb.REFER, pb.DECLINE)
        assert (d.credit_limit > 0) == (d.outcome == pb.APPROVE)
        assert d.model_version.startswith(example.run_id + "+")
        assert {p.party for p in d.parties} == set(FEATURE_HOLDERS)
        assert d.latency_ms > 0
    rows = read_register(tmp_path / "state" / "applications.sqlite")
    assert len(rows) == len(ids) and verify_register(tmp_path / "state" / "applications.sqlite") == []
    # the register holds decisions and reason *names*: no column for any feature value
    from fedrisk.data.synthetic import PARTY_SCHEMAS

    features = {f for schema in PARTY_SCHEMAS.values() for f in schema.features}
    assert not features & set(rows[0])
    assert all(isinstance(code, str) and len(pair) == 2 for row in rows for pair in row["reasons"] for code in pair)


def test_reasons_name_each_partys_own_features_without_values(example, tmp_path):
    from fedrisk.data.synthetic import PARTY_SCHEMAS

    async def scenario() -> pb.Decision:
        async with running(example, tmp_path) as (_, stub, _c):
            return await stub.Score(pb.Application(sme_id=bank_ids(example, 1)[0], declared_annual_revenue=1e6))

    d = asyncio.run(scenario())
    by_party: dict[str, list[str]] = {}
    for r in d.reasons:
        by_party.setdefault(r.party, []).append(r.code)
        assert not any(ch.isdigit() for ch in r.text.replace("12m", "")), r.text  # names, no numbers
    for party in ("bank", *FEATURE_HOLDERS):
        own = set(PARTY_SCHEMAS[party].features)
        assert all(code in own or code.startswith("thin_file:") for code in by_party.get(party, [])), (party, by_party.get(party))


def test_a_party_that_is_down_degrades_by_policy_and_says_so(example, tmp_path):
    sme = next(i for i in example.offline_pd)

    async def scenario() -> list[pb.Decision]:
        async with running(example, tmp_path, down=("platform",)) as (node, stub, _):
            out = [await stub.Score(pb.Application(sme_id=sme, declared_annual_revenue=2e6), timeout=5) for _ in range(5)]
            return out

    decisions = asyncio.run(scenario())
    first = decisions[0]
    assert first.degraded
    states = {p.party: p.state for p in first.parties}
    assert states["platform"] in (pb.UNAVAILABLE, pb.TIMEOUT) and states["tax_bureau"] in (pb.COVERED, pb.NOT_COVERED)
    codes = [r.code for r in first.reasons if r.party == "policy"]
    assert "PARTY_UNAVAILABLE_FALLBACK" in codes
    assert any("platform did not answer" in r.text for r in first.reasons)
    # after repeated failures the party rests: decisions skip it at once
    assert {p.party: p.state for p in decisions[-1].parties}["platform"] == pb.CIRCUIT_OPEN
    assert all(d.latency_ms < 1000 for d in decisions)


def test_refer_policy_when_a_party_is_down(example, tmp_path):
    policy = tmp_path / "refer.toml"
    text = Path(__file__).resolve().parents[1].joinpath("fedrisk/scoring/default_policy.toml").read_text()
    policy.write_text(text.replace('action = "fallback"', 'action = "refer"', 1))

    async def scenario() -> pb.Decision:
        async with running(example, tmp_path, down=("tax_bureau",), node_kw={"policy": str(policy)}) as (_, stub, _c):
            return await stub.Score(pb.Application(sme_id=bank_ids(example, 1)[0], declared_annual_revenue=2e6))

    d = asyncio.run(scenario())
    assert d.outcome == pb.REFER and d.credit_limit == 0 and d.degraded
    assert any(r.code == "PARTY_UNAVAILABLE_REFER" and "tax_bureau" in r.text for r in d.reasons)


def test_estimate_mode_records_nothing_and_duplicates_are_refused(example, tmp_path):
    sme = bank_ids(example, 1)[0]

    async def scenario() -> tuple[pb.Decision, pb.Decision, grpc.StatusCode]:
        async with running(example, tmp_path) as (_, stub, _c):
            est = await stub.Score(pb.Application(sme_id=sme, declared_annual_revenue=1e6, estimate_only=True))
            real = await stub.Score(pb.Application(application_id="APP-1", sme_id=sme, declared_annual_revenue=1e6))
            try:
                await stub.Score(pb.Application(application_id="APP-1", sme_id=sme, declared_annual_revenue=1e6))
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            return est, real, code

    est, real, code = asyncio.run(scenario())
    assert not est.recorded and real.recorded
    assert est.probability_of_default == real.probability_of_default
    assert code == grpc.StatusCode.ALREADY_EXISTS
    rows = read_register(tmp_path / "state" / "applications.sqlite")
    assert [r["application_id"] for r in rows] == ["APP-1"]


def test_score_batch_streams_decisions_in_order(example, tmp_path):
    ids = bank_ids(example, 200)

    async def scenario() -> list[pb.Decision]:
        async with running(example, tmp_path) as (_, stub, _c):
            apps = [pb.Application(sme_id=i, estimate_only=True, purpose=pb.PREAPPROVAL) for i in ids]
            apps.insert(50, pb.Application(sme_id="91350100M000100Y43", estimate_only=True))  # valid code, not a bank SME
            return [d async for d in stub.ScoreBatch(iter(apps))]

    out = asyncio.run(scenario())
    assert [d.index for d in out] == list(range(201))
    assert out[50].outcome == pb.OUTCOME_UNSPECIFIED and out[50].reasons[0].code == "NOT_FOUND"
    rest = out[:50] + out[51:]
    assert [d.sme_id for d in rest] == ids
    assert all(d.probability_of_default == pytest.approx(example.offline_pd[d.sme_id], abs=1e-12) for d in rest)


# ------------------------------------------------------------------ bad inputs


def _with(row: dict[str, float], **changes: float) -> dict[str, float]:
    return {**row, **changes}


# (builder(ok_id, bank_row) -> Application, expected text in the status details)
BAD = [
    (lambda ok, row: pb.Application(sme_id=ok[:-1]), "wrong length: 17 characters"),
    (lambda ok, row: pb.Application(sme_id=ok[:16] + "I" + ok[17]), "bad character 'I' at position 17"),
    (lambda ok, row: pb.Application(sme_id=ok[:17] + ("0" if ok[17] != "0" else "1")), "check character mismatch"),
    (lambda ok, row: pb.Application(sme_id=""), "sme_id is missing"),
    (lambda ok, row: pb.Application(application_id="has space", sme_id=ok), "Application.application_id 'has space'"),
    (lambda ok, row: pb.Application(sme_id=ok, declared_annual_revenue=-5), "declared_annual_revenue must be >= 0"),
    (lambda ok, row: pb.Application(sme_id=ok, declared_annual_revenue=math.nan), "declared_annual_revenue must be a finite amount"),
    (lambda ok, row: pb.Application(sme_id=ok, requested_amount=math.inf), "requested_amount must be a finite amount"),
    (lambda ok, row: pb.Application(sme_id=ok, requested_amount=0), "requested_amount must be > 0"),
    (lambda ok, row: pb.Application(sme_id=ok, features={"not_a_feature": 1.0}), "unknown feature 'not_a_feature'"),
    (lambda ok, row: pb.Application(sme_id=ok, features={"monthly_inflow": 1.0}), "features lacks 'account_tenure_months'"),
    (lambda ok, row: pb.Application(sme_id=ok, features=_with(row, has_collateral=0.5)), "features['has_collateral'] must be a whole number"),
    (lambda ok, row: pb.Application(sme_id=ok, features=_with(row, has_collateral=2)), "features['has_collateral'] must be 0 or 1"),
    (lambda ok, row: pb.Application(sme_id=ok, features=_with(row, monthly_inflow=1e15)), "features['monthly_inflow'] = 1e+15 is out of range"),
    (lambda ok, row: pb.Application(sme_id=ok, features=_with(row, past_delinquencies=math.nan)), "features['past_delinquencies'] is NaN"),
    (lambda ok, row: pb.Application(sme_id=ok, features=_with(row, loan_balance=-math.inf)), "features['loan_balance'] must be finite"),
    (lambda ok, row: pb.Application(sme_id=ok, purpose=42), "purpose 42 is not a known"),
]


@pytest.mark.parametrize("case", range(len(BAD) + 4))
def test_every_bad_input_is_invalid_argument_with_a_precise_message(example, served, case):
    ok_id = bank_ids(example, 1)[0]
    if case < len(BAD):
        build, expected = BAD[case]
        raw = build(ok_id, _bank_row(example, ok_id)).SerializeToString()
    elif case == len(BAD):  # unknown field number 99
        raw, expected = pb.Application(sme_id=ok_id).SerializeToString() + b"\x98\x06\x01", "unknown field number(s) 99"
    elif case == len(BAD) + 1:  # not a protobuf message
        raw, expected = b"\xff\xff\xff\xff\x0f", "not a valid fedrisk.v1.Application"
    elif case == len(BAD) + 2:  # oversize for the node, under the transport cap
        raw = pb.Application(sme_id=ok_id, features={f"x{i}": 0.0 for i in range(2000)}).SerializeToString()
        expected = "this service accepts at most 16,384"
    else:  # over the deliberate 1 MiB transport cap: gRPC itself refuses it before the node reads it
        raw, expected = pb.Application(sme_id=ok_id, application_id="x" * 1_100_000).SerializeToString(), "RESOURCE_EXHAUSTED"

    channel = secure_channel(served, ca=example.pki.ca_cert, aio=False)
    call = channel.unary_unary("/fedrisk.v1.ScoringService/Score", request_serializer=None, response_deserializer=pb.Decision.FromString)
    try:
        call(raw, timeout=5)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    finally:
        channel.close()
    if expected == "RESOURCE_EXHAUSTED":
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert expected in details and "\n" not in details, details


def _bank_row(ex: ExampleFederation, sme_id: str) -> dict[str, float]:
    import pandas as pd

    from fedrisk.data.synthetic import BANK_SCHEMA

    df = pd.read_csv(ex.tables["bank"], dtype={"credit_code": str}).set_index("credit_code")
    return {name: float(df.loc[sme_id, name]) for name in BANK_SCHEMA.features}


def test_features_in_the_application_score_like_the_bank_table(example, tmp_path):
    sme = bank_ids(example, 3)[2]

    async def scenario() -> tuple[pb.Decision, pb.Decision]:
        async with running(example, tmp_path) as (_, stub, _c):
            a = await stub.Score(pb.Application(sme_id=sme, estimate_only=True))
            b = await stub.Score(pb.Application(sme_id=sme.lower(), estimate_only=True, features=_bank_row(example, sme)))
            return a, b

    a, b = asyncio.run(scenario())
    assert b.sme_id == sme  # normalised
    assert a.probability_of_default == pytest.approx(b.probability_of_default, abs=1e-12)


# ------------------------------------------------------------- health, reflection


def test_health_checking_and_reflection(example, tmp_path):
    async def scenario() -> tuple[int, set[str]]:
        async with running(example, tmp_path) as (_, _stub, channel):
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="fedrisk.v1.ScoringService"))
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            names: set[str] = set()
            async for response in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                names |= {s.name for s in response.list_services_response.service}
            return health.status, names

    status, names = asyncio.run(scenario())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {"fedrisk.v1.ScoringService", "grpc.health.v1.Health"} <= names


# ------------------------------------------------------------ bundles and parties


def test_tampered_unsigned_or_untrusted_bundles_are_refused(example, tmp_path):
    bad = tmp_path / "bank"
    shutil.copytree(example.bundles["bank"], bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    cfg = node_config(example, {p: PartyEndpoint("127.0.0.1:9") for p in FEATURE_HOLDERS}, tmp_path)
    with pytest.raises(CryptoError, match="sha256 differs"):
        ScoringNode(replace(cfg, bundle=str(bad)))
    (bad / "MANIFEST.sig").unlink()
    with pytest.raises(CryptoError, match="unsigned"):
        ScoringNode(replace(cfg, bundle=str(bad)))
    with pytest.raises(CryptoError, match="not in the trusted set"):
        ScoringNode(replace(cfg, trusted_keys=[example.signers["tax_bureau"].public_key_bytes.hex()]))
    with pytest.raises(CryptoError, match="no trusted federation keys"):
        ScoringNode(replace(cfg, trusted_keys=[]))
    with pytest.raises(ConfigError, match="feature holder's part"):
        ScoringNode(replace(cfg, bundle=str(example.bundles["platform"])))
    with pytest.raises(ConfigError, match="no endpoint was given"):
        ScoringNode(replace(cfg, parties={"tax_bureau": PartyEndpoint("127.0.0.1:9")}))


def test_party_answers_only_its_caller_its_model_and_its_allow_list(example, tmp_path):
    allowed = sorted(Path(example.allow_lists["platform"]).read_text().split())
    outside = sorted(set(example.offline_pd) - set(allowed))[0]  # a bank SME the platform may not answer for

    async def ask(cert_name: str, request: pb.PartyScoreRequest) -> pb.PartyScoreResponse | grpc.StatusCode:
        svc = PartyScoringService(party_config(example, "platform"))
        address = await svc.start()
        cert, key = example.client_cert(cert_name)
        channel = secure_channel(address, ca=example.pki.ca_cert, cert=cert, key=key)
        try:
            return await rpc.PartyScoringServiceStub(channel).PartialScores(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            await channel.close()  # type: ignore[union-attr]
            await svc.stop(0)

    req = pb.PartyScoreRequest(
        request_id="r1", model_version=example.run_id, kind=pb.SCORECARD, sme_ids=[allowed[0], outside, "91350100M000100Y43"], max_reasons=2
    )
    response = asyncio.run(ask("bank", req))
    assert isinstance(response, pb.PartyScoreResponse)
    states = [a.state for a in response.answers]
    assert states == [pb.COVERED, pb.NOT_COVERED, pb.NOT_COVERED]
    assert response.answers[0].WhichOneof("part") == "scorecard" and len(response.answers[0].scorecard.reasons) <= 2
    assert response.request_id == "r1" and response.party == "platform"
    assert asyncio.run(ask("tax_bureau", req)) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(ask(LOAN_SYSTEM, req)) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(ask("bank", pb.PartyScoreRequest(model_version="other-run", sme_ids=[allowed[0]]))) == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        asyncio.run(ask("bank", pb.PartyScoreRequest(model_version=example.run_id, kind=pb.TREE_ROUTING, sme_ids=[allowed[0]])))
        == grpc.StatusCode.UNIMPLEMENTED
    )
    assert asyncio.run(ask("bank", pb.PartyScoreRequest(model_version=example.run_id, sme_ids=["bad id"]))) == grpc.StatusCode.INVALID_ARGUMENT


def test_party_service_refuses_to_start_without_an_allow_list_or_mtls(example):
    with pytest.raises(ConfigError, match="allow-list"):
        PartyScoringService(party_config(example, "tax_bureau", allow_list=""))
    svc = PartyScoringService(party_config(example, "tax_bureau", client_ca=""))
    with pytest.raises(ConfigError, match="requires mTLS"):
        asyncio.run(svc.start())


def test_node_requires_client_certificates_when_configured(example, tmp_path):
    async def scenario() -> tuple[grpc.StatusCode, int]:
        async with running(example, tmp_path, node_kw={"client_ca": str(example.pki.ca_cert)}) as (node, _stub, _c):
            plain = secure_channel(node.address, ca=example.pki.ca_cert)
            try:
                await rpc.ScoringServiceStub(plain).Describe(pb.DescribeRequest(), timeout=3)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            await plain.close()  # type: ignore[union-attr]
            cert, key = example.client_cert(LOAN_SYSTEM)
            mtls = secure_channel(node.address, ca=example.pki.ca_cert, cert=cert, key=key)
            d = await rpc.ScoringServiceStub(mtls).Score(pb.Application(sme_id=bank_ids(example, 1)[0], estimate_only=True))
            await mtls.close()  # type: ignore[union-attr]
            return code, d.outcome

    code, outcome = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert outcome in (pb.APPROVE, pb.REFER, pb.DECLINE)


def test_newly_aligned_ids_are_answered_after_a_reload(example, tmp_path):
    ids = Path(example.allow_lists["platform"]).read_text().split()
    allow = tmp_path / "allow.txt"
    allow.write_text("# trained intersection\n" + "\n".join(ids[:10]) + "\n")
    svc = PartyScoringService(party_config(example, "platform", allow_list=str(allow)))

    def state(sme_id: str) -> int:
        request = pb.PartyScoreRequest(request_id="r", model_version=example.run_id, sme_ids=[sme_id]).SerializeToString()
        return pb.PartyScoreResponse.FromString(svc.answer(request, "bank")).answers[0].state

    assert state(ids[0]) == pb.COVERED and state(ids[10]) == pb.NOT_COVERED
    with allow.open("a") as handle:
        handle.write(f"{ids[10]}  # aligned by PSI run 2\n")
    assert svc.reload() == 11  # what SIGHUP does
    assert state(ids[10]) == pb.COVERED
    assert svc.ids_asked["bank"] == 3 and svc.ids_answered["bank"] == 2


def test_a_register_that_cannot_record_refuses_the_decision_cleanly(example, tmp_path):
    sme = bank_ids(example, 1)[0]

    async def scenario() -> tuple[grpc.StatusCode, str, pb.Decision]:
        async with running(example, tmp_path, node_kw={"register": "", "register_socket": str(tmp_path / "nobody.sock")}) as (_, stub, _c):
            estimate = await stub.Score(pb.Application(sme_id=sme, estimate_only=True))
            try:
                await stub.Score(pb.Application(sme_id=sme))
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or "", estimate
            return grpc.StatusCode.OK, "", estimate

    code, details, estimate = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("application register: ")
    assert not estimate.recorded  # estimates need no register


def test_a_running_party_service_picks_up_appended_ids(example, tmp_path, monkeypatch):
    from fedrisk.scoring import party_service

    monkeypatch.setattr(party_service, "RELOAD_EVERY_S", 0.05)
    ids = Path(example.allow_lists["platform"]).read_text().split()
    allow = tmp_path / "allow.txt"
    allow.write_text(ids[0] + "\n")

    async def scenario() -> tuple[int, int]:
        svc = PartyScoringService(party_config(example, "platform", allow_list=str(allow)))
        address = await svc.start()
        cert, key = example.client_cert("bank")
        channel = secure_channel(address, ca=example.pki.ca_cert, cert=cert, key=key)
        stub = rpc.PartyScoringServiceStub(channel)
        request = pb.PartyScoreRequest(model_version=example.run_id, sme_ids=[ids[1]])
        before = (await stub.PartialScores(request)).answers[0].state
        with allow.open("a") as handle:
            handle.write(ids[1] + "\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            after = (await stub.PartialScores(request)).answers[0].state
            if after == pb.COVERED:
                break
        await channel.close()  # type: ignore[union-attr]
        await svc.stop(0)
        return before, after

    assert asyncio.run(scenario()) == (pb.NOT_COVERED, pb.COVERED)


def test_the_validators_id_cache_keeps_every_check():
    """IDs that passed are remembered (raw -> normalised); a bad ID is refused every time, and the cache stays bounded."""
    from fedrisk.errors import DataValidationError
    import numpy as np

    from fedrisk.data.credit_code import make_credit_codes
    from fedrisk.scoring import validation
    from fedrisk.scoring.validation import ApplicationValidator, FeatureSpec

    validator = ApplicationValidator([FeatureSpec("x")], "credit_code")
    good = str(make_credit_codes(3, np.random.default_rng(5))[0])
    for _ in range(2):
        assert validator.validate(pb.Application(sme_id=" " + good.lower())).sme_id == good
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    for _ in range(2):
        with pytest.raises(DataValidationError, match="not a unified social credit code"):
            validator.validate(pb.Application(sme_id=bad))
    assert bad not in validator._known_ids
    validator._known_ids.update({f"k{i}": f"K{i}" for i in range(validation._KNOWN_IDS_MAX)})
    assert validator.validate(pb.Application(sme_id=good)).sme_id == good
    assert len(validator._known_ids) == 1
