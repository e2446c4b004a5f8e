"""Revoked certificates on the scoring links, both directions, with real certificates and real mTLS on 127.0.0.1.

The federation's keys come from ``fedrisk keys init``; revocations go through the
real ``fedrisk keys revoke`` / ``revoke-cert`` commands, which re-sign ``crl.pem``.
The party scoring service and the scoring node run in this process (no sandbox:
the links are the subject; ``test_scoring_e2e.py`` runs them sandboxed, with the CRL).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedrisk.crypto.pki import FederationPKI, create_server_cert, load_federation_pki
from fedrisk.crypto.pki_admin import init_federation_keys
from fedrisk.scoring import revocation
from fedrisk.scoring.config import NodeConfig, PartyEndpoint, PartyServiceConfig
from fedrisk.scoring.example import FEATURE_HOLDERS, ExampleFederation, load_or_build_example
from fedrisk.scoring.scoring_node import ScoringNode
from fedrisk.scoring.party_service import PartyScoringService
from fedrisk.scoring.transport import secure_channel
from fedrisk.v1 import scoring_pb2 as pb
from fedrisk.v1 import scoring_pb2_grpc as rpc

HOSTS = ["127.0.0.1", "localhost"]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleFederation:
    return load_or_build_example(tmp_path_factory.getbasetemp() / "scoring-example")


@pytest.fixture
def fed(tmp_path: Path) -> FederationPKI:
    """A federation key folder as the operator makes it, plus each scoring service's server certificate."""
    init_federation_keys(tmp_path / "fed", ["bank", *FEATURE_HOLDERS])
    pki = load_federation_pki(tmp_path / "fed")
    for name in ("scoring-node", *(f"{p}-scoring" for p in FEATURE_HOLDERS)):
        create_server_cert(pki, name, HOSTS)
    return pki


@pytest.fixture(autouse=True)
def quick_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation, "RELOAD_EVERY_S", 0.1)


def _keys_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", "keys", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _revoked_line(what: str, fed: FederationPKI, name: str) -> str:
    """The one line a refusal must be: the certificate's name and serial, when, and the CRL."""
    record = next(r for r in json.loads((fed.folder / "revocations.json").read_text())["revoked"] if name in (r.get("party"), r.get("common_name")))
    when = dt.datetime.fromisoformat(record["revoked_at"])
    return f"{what} '{name}' (serial {record['cert_serial']}) was revoked on {when:%Y-%m-%d %H:%M} UTC (crl.pem)"


def _trusted(ex: ExampleFederation) -> list[str]:
    return list(json.loads(ex.trusted_keys.read_text()).values())


def party_config(ex: ExampleFederation, fed: FederationPKI, party: str, **kw: object) -> PartyServiceConfig:
    cert, key = fed.server_certs[f"{party}-scoring"]
    base = PartyServiceConfig(bundle=str(ex.bundles[party]), trusted_keys=_trusted(ex), table=str(ex.tables[party]), tls_cert=str(cert), tls_key=str(key),
                              client_ca=str(fed.ca_cert), allow_list=str(ex.allow_lists[party]), crl=str(fed.crl))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def node_config(ex: ExampleFederation, fed: FederationPKI, parties: dict[str, PartyEndpoint], tmp: Path) -> NodeConfig:
    from fedrisk.scoring.policy import default_policy_path

    policy = tmp / "patient_policy.toml"  # a 2 s deadline: a loaded machine must not turn checks into fallbacks
    policy.write_text(default_policy_path().read_text().replace("deadline_ms = 40", "deadline_ms = 2000"))
    cert, key = fed.server_certs["scoring-node"]
    ccert, ckey = fed.party_certs["bank"]
    return NodeConfig(bundle=str(ex.bundles["bank"]), trusted_keys=_trusted(ex), tls_cert=str(cert), tls_key=str(key), ca=str(fed.ca_cert),
                      client_cert=str(ccert), client_key=str(ckey), parties=parties, bank_table=str(ex.tables["bank"]), policy=str(policy),
                      crl=str(fed.crl))  # fmt: skip


async def _until(condition, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_party_service_refuses_the_node_once_its_certificate_is_revoked(example, fed, tmp_path):
    """`fedrisk keys revoke bank`: new calls, an open stream and even health checks are refused with one line."""
    sme = Path(example.allow_lists["tax_bureau"]).read_text().split()[0]
    request = pb.PartyScoreRequest(model_version=example.run_id, sme_ids=[sme])

    async def run() -> None:
        service = PartyScoringService(party_config(example, fed, "tax_bureau", allowed_callers=["bank", "platform"]))
        address = await service.start()
        bank_cert, bank_key = fed.party_certs["bank"]
        bank = secure_channel(address, ca=fed.ca_cert, cert=bank_cert, key=bank_key)  # reads the files now: they move on revocation
        other = secure_channel(address, ca=fed.ca_cert, cert=fed.party_certs["platform"][0], key=fed.party_certs["platform"][1])
        try:
            stub = rpc.PartyScoringServiceStub(bank)
            assert (await stub.PartialScores(request, timeout=10)).answers[0].state == pb.COVERED
            stream = stub.PartialScoresStream()
            await stream.write(request)
            assert (await stream.read()).answers[0].state == pb.COVERED

            done = await asyncio.to_thread(_keys_cli, "revoke", "bank", "--keys", str(fed.folder), "--reason", "key leaked", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            await _until(lambda: service.revocations is not None and service.revocations.generation >= 1)
            line = _revoked_line("client certificate", fed, "bank")

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PartialScores(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == line
            await stream.write(request)  # the stream opened before the revocation
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await stream.read()
            assert closed.value.code() == grpc.StatusCode.UNAUTHENTICATED and closed.value.details() == line
            with pytest.raises(grpc.aio.AioRpcError) as health:
                await health_pb2_grpc.HealthStub(bank).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # another party's certificate, not revoked, still gets its answer
            assert (await rpc.PartyScoringServiceStub(other).PartialScores(request, timeout=10)).answers[0].state == pb.COVERED
        finally:
            await bank.close()  # type: ignore[union-attr]
            await other.close()  # type: ignore[union-attr]
            await service.stop(0)

    asyncio.run(run())


def test_the_node_stops_calling_a_party_whose_server_certificate_is_revoked(example, fed, tmp_path):
    """`fedrisk keys revoke-cert`: the node drops its pinned link; the party's part is missing, with one line naming the certificate."""
    ids = list(example.offline_pd)[:3]

    async def run() -> None:
        services = {p: PartyScoringService(party_config(example, fed, p)) for p in FEATURE_HOLDERS}
        parties = {p: PartyEndpoint(await s.start()) for p, s in services.items()}
        node = ScoringNode(node_config(example, fed, parties, tmp_path))
        channel = secure_channel(await node.start(), ca=fed.ca_cert)
        stub = rpc.ScoringServiceStub(channel)
        try:
            decision = await stub.Score(pb.Application(application_id="a1", sme_id=ids[0], estimate_only=True), timeout=10)
            assert {p.party: p.state for p in decision.parties} == {"tax_bureau": pb.COVERED, "platform": pb.COVERED}

            cert = fed.server_certs["tax_bureau-scoring"][0]
            done = await asyncio.to_thread(_keys_cli, "revoke-cert", str(cert), "--keys", str(fed.folder), "--reason", "host compromised", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "revoked certificate 'tax_bureau-scoring'" in done.stderr
            await _until(lambda: node.revocations is not None and node.revocations.generation >= 1)
            asked = sum(services["tax_bureau"].requests.values())
            line = _revoked_line("tax_bureau's server certificate", fed, "tax_bureau-scoring")

            for n, sme in enumerate(ids[1:]):
                decision = await stub.Score(pb.Application(application_id=f"b{n}", sme_id=sme, estimate_only=True), timeout=10)
                states = {p.party: (p.state, p.detail) for p in decision.parties}
                assert states["tax_bureau"] == (pb.UNAVAILABLE, line)
                assert states["platform"][0] == pb.COVERED
                assert decision.degraded
            assert sum(services["tax_bureau"].requests.values()) == asked  # no call reached the revoked service
        finally:
            await channel.close()  # type: ignore[union-attr]
            await node.stop(0)
            for service in services.values():
                await service.stop(0)

    asyncio.run(run())


def test_a_node_started_after_the_revocation_never_calls_that_party(example, fed, tmp_path):
    cert = fed.server_certs["platform-scoring"][0]
    assert _keys_cli("revoke-cert", str(cert), "--keys", str(fed.folder), cwd=tmp_path).returncode == 0

    async def run() -> None:
        services = {p: PartyScoringService(party_config(example, fed, p)) for p in FEATURE_HOLDERS}
        parties = {p: PartyEndpoint(await s.start()) for p, s in services.items()}
        node = ScoringNode(node_config(example, fed, parties, tmp_path))
        channel = secure_channel(await node.start(), ca=fed.ca_cert)
        try:
            described = await rpc.ScoringServiceStub(channel).Describe(pb.DescribeRequest(), timeout=10)
            status = {p.party: (p.state, p.detail) for p in described.parties}
            assert status["platform"] == (pb.UNAVAILABLE, _revoked_line("platform's server certificate", fed, "platform-scoring"))
            assert status["tax_bureau"][0] == pb.COVERED
            sme = list(example.offline_pd)[0]
            decision = await rpc.ScoringServiceStub(channel).Score(pb.Application(application_id="c1", sme_id=sme, estimate_only=True), timeout=10)
            assert {p.party: p.state for p in decision.parties}["platform"] == pb.UNAVAILABLE
            assert not services["platform"].requests  # a TLS handshake showed its certificate; no request followed
        finally:
            await channel.close()  # type: ignore[union-attr]
            await node.stop(0)
            for service in services.values():
                await service.stop(0)

    asyncio.run(run())


def test_a_pinned_link_accepts_exactly_the_checked_certificate(fed):
    """What the node relies on: a channel whose only root is the checked server certificate refuses any other, even one the CA signed."""
    other, other_key = create_server_cert(fed, "impostor-scoring", HOSTS)
    genuine, _ = fed.server_certs["tax_bureau-scoring"]

    async def run() -> dict[str, str]:
        from grpc_health.v1 import health

        out = {}
        for label, (cert, key) in {"genuine": fed.server_certs["tax_bureau-scoring"], "impostor": (other, other_key)}.items():
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
            from fedrisk.scoring.transport import server_credentials

            port = server.add_secure_port("127.0.0.1:0", server_credentials(cert, key, client_ca=fed.ca_cert))
            await server.start()
            channel = secure_channel(f"127.0.0.1:{port}", ca=fed.ca_cert, cert=fed.party_certs["bank"][0], key=fed.party_certs["bank"][1],
                                     authority="127.0.0.1", root_pem=Path(genuine).read_bytes())  # fmt: skip
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                out[label] = "ok"
            except grpc.aio.AioRpcError as err:
                out[label] = err.code().name
            finally:
                await channel.close()  # type: ignore[union-attr]
                await server.stop(0)
        return out

    assert asyncio.run(run()) == {"genuine": "ok", "impostor": "UNAVAILABLE"}


def test_a_renewed_party_certificate_is_checked_and_pinned(example, fed, tmp_path):
    """The party restarts with a new certificate on the same address: one failed call, then the link re-checks it and pins it."""
    sme = list(example.offline_pd)[0]

    async def run() -> None:
        services = {p: PartyScoringService(party_config(example, fed, p)) for p in FEATURE_HOLDERS}
        parties = {p: PartyEndpoint(await s.start()) for p, s in services.items()}
        node = ScoringNode(node_config(example, fed, parties, tmp_path))
        channel = secure_channel(await node.start(), ca=fed.ca_cert)
        stub = rpc.ScoringServiceStub(channel)
        link = node.fanouts["tax_bureau"].link
        assert link is not None
        first = link.pinned
        try:
            await services["tax_bureau"].stop(0)
            renewed, renewed_key = create_server_cert(fed, "tax_bureau-scoring-2", HOSTS)
            services["tax_bureau"] = PartyScoringService(party_config(example, fed, "tax_bureau", tls_cert=str(renewed), tls_key=str(renewed_key),
                                                                      listen=parties["tax_bureau"].target))  # fmt: skip
            await services["tax_bureau"].start()
            states = []
            for n in range(20):
                decision = await stub.Score(pb.Application(application_id=f"r{n}", sme_id=sme, estimate_only=True), timeout=10)
                states.append({p.party: p.state for p in decision.parties}["tax_bureau"])
                if states[-1] == pb.COVERED:
                    break
                await asyncio.sleep(0.3)
            assert states[-1] == pb.COVERED, states
            assert link.pinned is not None and link.pinned != first
            assert "tax_bureau-scoring-2" in link.pinned.subject.rfc4514_string()
        finally:
            await channel.close()  # type: ignore[union-attr]
            await node.stop(0)
            for service in services.values():
                await service.stop(0)

    asyncio.run(run())


def test_a_crl_of_another_ca_is_refused_before_anything_starts(example, fed, tmp_path):
    other = load_federation_pki(init_federation_keys(tmp_path / "other", ["bank"]).folder)
    cert, key = fed.server_certs["tax_bureau-scoring"]
    done = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "score", "party-serve", "--bundle", str(example.bundles["tax_bureau"]), "--trusted-keys", str(example.trusted_keys),
         "--table", str(example.tables["tax_bureau"]), "--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(fed.ca_cert),
         "--allow-list", str(example.allow_lists["tax_bureau"]), "--crl", str(other.crl), "--sandbox", "none"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: the CRL {other.crl} was issued by ") and lines[0].endswith(f"not by the CA in {fed.ca_cert}")
