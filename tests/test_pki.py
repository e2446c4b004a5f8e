"""Federation PKI: certificates, real TLS handshakes, Flower node-auth keys."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedrisk.crypto.pki import (
    FederationPKI,
    cert_fingerprint,
    create_federation_pki,
    create_node_auth_keypair,
    create_server_cert,
    grpc_channel_credentials,
    grpc_server_credentials,
    load_federation_pki,
)
from fedrisk.errors import CryptoError

PARTIES = ["bank", "tax_bureau", "platform"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    old = os.umask(0)  # key files must still end up 0600
    try:
        return create_federation_pki(tmp_path_factory.mktemp("pki"), parties=PARTIES)
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    return create_federation_pki(tmp_path_factory.mktemp("other"), parties=["bank"])


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(pki: FederationPKI) -> Store:
    return Store([_cert(pki.ca_cert)])


# --- files and certificate contents ----------------------------------------------


def test_files_and_modes(pki: FederationPKI) -> None:
    keys = [pki.ca_key, pki.superlink_key, *(k for _, k in pki.party_certs.values())]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for crt in [pki.ca_cert, pki.superlink_cert, *(c for c, _ in pki.party_certs.values())]:
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644, crt
    assert sorted(pki.party_certs) == sorted(PARTIES)
    assert (pki.folder / "parties" / "bank.crt").is_file()
    manifest = json.loads((pki.folder / "manifest.json").read_text())
    assert manifest["ca"]["sha256"] == cert_fingerprint(pki.ca_cert)
    assert manifest["superlink"]["sha256"] == cert_fingerprint(pki.superlink_cert)
    assert set(manifest["parties"]) == set(PARTIES)


def test_keys_are_ecdsa_p256(pki: FederationPKI) -> None:
    for crt in [pki.ca_cert, pki.superlink_cert, pki.party_certs["bank"][0]]:
        key = _cert(crt).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_server_chain_verifies_with_sans(pki: FederationPKI) -> None:
    leaf = _cert(pki.superlink_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for subject in (DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(_store(pki)).build_server_verifier(subject).verify(leaf, [])
        assert chain[-1] == _cert(pki.ca_cert)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(pki)).build_server_verifier(DNSName("example.com")).verify(leaf, [])


def test_client_chain_verifies(pki: FederationPKI, other_pki: FederationPKI) -> None:
    leaf = _cert(pki.party_certs["tax_bureau"][0])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verified = PolicyBuilder().store(_store(pki)).build_client_verifier().verify(leaf, [])
    assert verified.subjects is not None
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(other_pki)).build_client_verifier().verify(leaf, [])
    # A client certificate is not a server certificate.
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(pki)).build_server_verifier(DNSName("localhost")).verify(leaf, [])


def test_validity_window(tmp_path: Path) -> None:
    pki = create_federation_pki(tmp_path, parties=[], days=10)
    leaf = _cert(pki.superlink_cert)
    now = dt.datetime.now(dt.UTC)
    assert leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - now < dt.timedelta(days=10, minutes=1)
    later = PolicyBuilder().store(_store(pki)).time(now + dt.timedelta(days=11))
    with pytest.raises(VerificationError):
        later.build_server_verifier(DNSName("localhost")).verify(leaf, [])


def test_bad_names_and_hosts(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="party name"):
        create_federation_pki(tmp_path / "a", parties=["../evil"])
    with pytest.raises(CryptoError, match="unique"):
        create_federation_pki(tmp_path / "b", parties=["bank", "bank"])
    with pytest.raises(CryptoError, match="neither an IP address nor a DNS name"):
        create_federation_pki(tmp_path / "c", parties=[], hosts=("bad host!",))


def test_load_and_extra_server_cert(pki: FederationPKI) -> None:
    crt, key = create_server_cert(pki, "bank-scoring", ["127.0.0.1", "scoring.bank.local"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    leaf = _cert(crt)
    PolicyBuilder().store(_store(pki)).build_server_verifier(DNSName("scoring.bank.local")).verify(leaf, [])
    loaded = load_federation_pki(pki.folder)
    assert loaded.server_certs["bank-scoring"] == (crt, key)
    assert loaded.party_certs == pki.party_certs
    assert loaded.hosts == ("127.0.0.1", "localhost")


# --- real TLS handshakes with gRPC ----------------------------------------------


@pytest.fixture()
def serve() -> Iterator:
    servers: list[grpc.Server] = []

    def start(creds: grpc.ServerCredentials) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", creds)
        assert port > 0
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None)


def _check(target: str, creds: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(target, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_tls_handshake_with_the_federation_ca(pki: FederationPKI, serve) -> None:
    port = serve(grpc_server_credentials(pki.superlink_cert, pki.superlink_key))
    for host in ("127.0.0.1", "localhost"):
        assert _check(f"{host}:{port}", grpc_channel_credentials(pki.ca_cert)) == health_pb2.HealthCheckResponse.SERVING


def test_tls_handshake_fails_with_another_ca(pki: FederationPKI, other_pki: FederationPKI, serve) -> None:
    port = serve(grpc_server_credentials(pki.superlink_cert, pki.superlink_key))
    with pytest.raises(grpc.RpcError) as err:
        _check(f"127.0.0.1:{port}", grpc_channel_credentials(other_pki.ca_cert))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_party_certs(pki: FederationPKI, other_pki: FederationPKI, serve) -> None:
    crt, key = create_server_cert(pki, "tax-scoring", ["127.0.0.1"])
    port = serve(grpc_server_credentials(crt, key, client_ca=pki.ca_cert))
    bank_crt, bank_key = pki.party_certs["bank"]
    ok = grpc_channel_credentials(pki.ca_cert, cert=bank_crt, key=bank_key)
    assert _check(f"127.0.0.1:{port}", ok) == health_pb2.HealthCheckResponse.SERVING
    # No client certificate, or one from another federation: refused.
    foreign_crt, foreign_key = other_pki.party_certs["bank"]
    for creds in (
        grpc_channel_credentials(pki.ca_cert),
        grpc_channel_credentials(pki.ca_cert, cert=foreign_crt, key=foreign_key),
    ):
        with pytest.raises(grpc.RpcError) as err:
            _check(f"127.0.0.1:{port}", creds)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_channel_credentials_need_both_cert_and_key(pki: FederationPKI) -> None:
    with pytest.raises(CryptoError, match="both cert and key"):
        grpc_channel_credentials(pki.ca_cert, cert=pki.party_certs["bank"][0])


# --- Flower SuperNode authentication keys ------------------------------------------


def test_node_auth_keys_load_the_way_flower_loads_them(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, sign_message, verify_signature
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    priv, pub = create_node_auth_keypair(tmp_path / "nodeauth", "bank")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ") and pub.read_text().rstrip().endswith(" bank")

    # What `flower-supernode --auth-supernode-private-key` does:
    args = argparse.Namespace(auth_supernode_private_key=str(priv), auth_supernode_public_key=None)
    keys = _try_setup_client_authentication(args)
    assert keys is not None
    private_key, public_key = keys
    assert isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.name == "secp384r1"

    # What `flwr supernode register <pub>` sends to the SuperLink (PEM SPKI bytes),
    # and what the SuperLink's interceptor checks per request.
    registered = try_load_public_key(pub)
    node_pk = bytes_to_public_key(registered)
    assert node_pk.public_numbers() == public_key.public_numbers()
    stamp = b"2025-01-01T00:00:00+00:00"
    assert verify_signature(node_pk, stamp, sign_message(private_key, stamp))


# --- revocation: the CA's CRL ----------------------------------------------------


def test_a_new_pki_has_an_empty_crl_signed_by_its_ca(tmp_path: Path) -> None:
    from fedrisk.crypto.pki import load_revocation_list

    fresh = create_federation_pki(tmp_path / "pki", parties=["bank"])
    listed = load_revocation_list(fresh.crl, fresh.ca_cert)
    assert listed.revoked == {} and not listed.stale and listed.source == "crl.pem"
    assert stat.S_IMODE(fresh.crl.stat().st_mode) == 0o644


def test_a_revoked_certificate_is_in_the_crl_and_named_in_one_line(tmp_path: Path) -> None:
    from fedrisk.crypto.pki import load_certificate, load_revocation_list, revoke_certificate

    fresh = create_federation_pki(tmp_path / "pki", parties=["bank", "tax_bureau"])
    crt, _ = create_server_cert(fresh, "tax_bureau-scoring", ["127.0.0.1"])
    record = revoke_certificate(fresh.folder, crt, reason="host compromised")
    listed = load_revocation_list(fresh.crl, fresh.ca_cert)
    cert = load_certificate(crt)
    assert record["cert_serial"] == format(cert.serial_number, "x") and record["reason"] == "host compromised"
    assert listed.revocation_date(cert) is not None
    with pytest.raises(CryptoError) as refused:
        listed.check(cert, "server certificate")
    when = dt.datetime.fromisoformat(record["revoked_at"])
    assert str(refused.value) == f"server certificate 'tax_bureau-scoring' (serial {record['cert_serial']}) was revoked on {when:%Y-%m-%d %H:%M} UTC (crl.pem)"
    listed.check(load_certificate(fresh.party_certs["bank"][0]))  # not revoked: no error
    with pytest.raises(CryptoError, match="is already revoked"):
        revoke_certificate(fresh.folder, crt)
    entries = json.loads((fresh.folder / "revocations.json").read_text())["revoked"]
    assert [e["cert_serial"] for e in entries] == [record["cert_serial"]]


def test_revocation_refuses_a_certificate_of_another_ca(pki: FederationPKI, other_pki: FederationPKI) -> None:
    from fedrisk.crypto.pki import revoke_certificate

    with pytest.raises(CryptoError, match="was not issued by the CA in"):
        revoke_certificate(pki.folder, other_pki.party_certs["bank"][0])
    with pytest.raises(CryptoError, match="cannot read the certificate"):
        revoke_certificate(pki.folder, pki.folder / "nope.crt")


def test_a_crl_of_another_ca_or_with_a_bad_signature_is_refused(tmp_path: Path, other_pki: FederationPKI) -> None:
    from fedrisk.crypto.pki import load_revocation_list

    fresh = create_federation_pki(tmp_path / "pki", parties=["bank"])
    with pytest.raises(CryptoError, match=r"was issued by .*, not by the CA in"):
        load_revocation_list(other_pki.crl, fresh.ca_cert)
    crl = x509.load_pem_x509_crl(fresh.crl.read_bytes())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(crl.issuer)
        .last_update(crl.last_update_utc)
        .next_update(crl.next_update_utc)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())  # same issuer name, another key
    )
    bad = tmp_path / "forged.pem"
    bad.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CryptoError, match="is not signed by the CA in"):
        load_revocation_list(bad, fresh.ca_cert)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a crl")
    with pytest.raises(CryptoError, match="is not an X.509 CRL"):
        load_revocation_list(junk, fresh.ca_cert)


def test_party_and_certificate_revocations_share_one_crl(tmp_path: Path) -> None:
    """`fedrisk keys revoke` (a party) and `revoke-cert` (a scoring server certificate) write the same list, in either order."""
    from fedrisk.crypto.pki import load_certificate, load_revocation_list, revoke_certificate
    from fedrisk.crypto.pki_admin import init_federation_keys, revoke_party

    keys = init_federation_keys(tmp_path / "fed", ["bank", "tax_bureau", "platform"])
    fed = load_federation_pki(keys.folder)
    tax_scoring, _ = create_server_cert(fed, "tax_bureau-scoring", ["127.0.0.1"])
    bank = load_certificate(fed.party_certs["bank"][0])
    revoke_certificate(keys.folder, tax_scoring)
    revoke_party(keys.folder, "bank", reason="left")
    platform = load_certificate(fed.party_certs["platform"][0])
    listed = load_revocation_list(fed.crl, fed.ca_cert)
    assert listed.revocation_date(load_certificate(tax_scoring)) is not None
    assert listed.revocation_date(bank) is not None
    assert listed.revocation_date(platform) is None
