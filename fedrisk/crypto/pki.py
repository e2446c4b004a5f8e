"""TLS certificates and Flower node-authentication keys for a federation.

:func:`create_federation_pki` writes a small, real PKI into one folder::

    ca.crt  ca.key (0600)                federation root CA (ECDSA P-256)
    superlink.crt  superlink.key (0600)  Flower SuperLink server cert (serverAuth,
                                         SAN = the given hosts)
    parties/<name>.crt  .key (0600)      per-party client certs (clientAuth), for
                                         mTLS to scoring services
    servers/<name>.crt  .key (0600)      further servers (create_server_cert)
    manifest.json                        SHA-256 fingerprints of every certificate

All keys are ECDSA P-256 (fast, accepted by gRPC/BoringSSL, Python's ``ssl``
and uvicorn) stored as unencrypted PKCS#8 PEM with mode 0600. Certificates
follow the RFC 5280 profile that ``cryptography``'s verifier enforces (critical
basic constraints, key usage, SKI/AKI, SANs).

Flower 1.39 wiring (checked in ``flwr`` 1.39.0 sources)::

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt \\
                     --ssl-keyfile superlink.key [--enable-supernode-auth]
    flower-supernode --root-certificates ca.crt \\
                     [--auth-supernode-private-key nodeauth/<name>]

SuperNode authentication keys are a separate matter: see
:func:`create_node_auth_keypair`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrisk.crypto.keyfiles import (
    read_secret_file,
    write_public_file,
    write_secret_file,
)
from fedrisk.errors import CryptoError

if TYPE_CHECKING:  # pragma: no cover
    import grpc

__all__ = [
    "FederationPKI",
    "cert_fingerprint",
    "create_federation_pki",
    "create_node_auth_keypair",
    "create_server_cert",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "issue_party_certificate",
    "load_federation_pki",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_MANIFEST = "manifest.json"
_CLOCK_SKEW = _dt.timedelta(minutes=5)


@dataclass
class FederationPKI:
    """Paths of a federation's PKI (all under ``folder``).

    Attributes
    ----------
    folder : Path
    ca_cert, ca_key : Path
        Root CA certificate and key (the key is 0600; keep it offline in
        production).
    superlink_cert, superlink_key : Path
        The SuperLink's server certificate and key.
    party_certs : dict of str to (Path, Path)
        Party name to ``(cert, key)`` client credentials.
    server_certs : dict of str to (Path, Path)
        Extra server name to ``(cert, key)`` (from :func:`create_server_cert`).
    hosts : tuple of str
        Hosts in the SuperLink certificate's SAN.
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    superlink_cert: Path
    superlink_key: Path
    party_certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    server_certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()

    def root_certificate_bytes(self) -> bytes:
        """PEM of the root CA (what clients pass as root certificates)."""
        return self.ca_cert.read_bytes()


def cert_fingerprint(cert_pem_or_path: bytes | str | os.PathLike[str]) -> str:
    """SHA-256 hex fingerprint of a certificate's DER encoding."""
    data = cert_pem_or_path if isinstance(cert_pem_or_path, bytes) else Path(cert_pem_or_path).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CryptoError("not a PEM X.509 certificate") from None
    return cert.fingerprint(hashes.SHA256()).hex()


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CryptoError(f"{what} name {name!r} must be 1-63 letters, digits, '_' or '-'")


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$", host):
                raise CryptoError(f"host {host!r} is neither an IP address nor a DNS name") from None
            out.append(x509.DNSName(host))
    if not out:
        raise CryptoError("a server certificate needs at least one host")
    return out


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[_dt.datetime, _dt.datetime]:
    if days < 1:
        raise CryptoError(f"certificate validity must be at least 1 day, got {days}")
    now = _dt.datetime.now(_dt.UTC)
    return now - _CLOCK_SKEW, now + _dt.timedelta(days=days)


def _issue(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: list[x509.GeneralName],
    eku: x509.ObjectIdentifier,
    days: int,
) -> tuple[bytes, bytes]:
    key = _new_key()
    not_before, not_after = _validity(days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrisk federation"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _create_ca(days: int, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    not_before, not_after = _validity(days)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrisk federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedrisk federation CA {label}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _write_manifest(pki: FederationPKI) -> None:
    def entry(path: Path) -> dict[str, str]:
        return {"file": path.relative_to(pki.folder).as_posix(), "sha256": cert_fingerprint(path)}

    manifest: dict[str, Any] = {
        "format": "fedrisk-pki/1",
        "algorithm": "ECDSA-P256-SHA256",
        "hosts": list(pki.hosts),
        "ca": entry(pki.ca_cert),
        "superlink": entry(pki.superlink_cert),
        "parties": {name: entry(crt) for name, (crt, _) in sorted(pki.party_certs.items())},
        "servers": {name: entry(crt) for name, (crt, _) in sorted(pki.server_certs.items())},
    }
    write_public_file(pki.folder / _MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def issue_party_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, days: int) -> tuple[bytes, bytes]:
    """A party's mTLS client certificate and key (PEM): CN and URI SAN name the party."""
    return _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        common_name=name,
        sans=[x509.UniformResourceIdentifier(f"urn:fedrisk:party:{name}")],
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
    )


def create_federation_pki(
    folder: str | os.PathLike[str],
    *,
    parties: Sequence[str],
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 365,
) -> FederationPKI:
    """Create a root CA, the SuperLink's server certificate and party client certificates.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created; existing files are replaced).
    parties : sequence of str
        Party names; each gets ``parties/<name>.crt`` and ``.key``.
    hosts : sequence of str
        IP addresses and DNS names put in the SuperLink certificate's SAN.
    days : int
        Validity of every certificate.

    Returns
    -------
    FederationPKI
    """
    root = Path(folder)
    names = list(parties)
    for name in names:
        _check_name(name, "party")
    if len(set(names)) != len(names):
        raise CryptoError("party names must be unique")
    sans = _san_entries(hosts)
    ca_cert, ca_key = _create_ca(days, os.urandom(4).hex())
    pki = FederationPKI(
        folder=root,
        ca_cert=root / "ca.crt",
        ca_key=root / "ca.key",
        superlink_cert=root / "superlink.crt",
        superlink_key=root / "superlink.key",
        hosts=tuple(hosts),
    )
    write_secret_file(pki.ca_key, _key_pem(ca_key))
    write_public_file(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    crt, key = _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        common_name="superlink",
        sans=sans,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
    )
    write_secret_file(pki.superlink_key, key)
    write_public_file(pki.superlink_cert, crt)
    for name in names:
        crt, key = issue_party_certificate(ca_cert, ca_key, name, days)
        paths = (root / "parties" / f"{name}.crt", root / "parties" / f"{name}.key")
        write_secret_file(paths[1], key)
        write_public_file(paths[0], crt)
        pki.party_certs[name] = paths
    _write_manifest(pki)
    return pki


def load_federation_pki(folder: str | os.PathLike[str]) -> FederationPKI:
    """Re-open a PKI written by :func:`create_federation_pki` (reads ``manifest.json``)."""
    root = Path(folder)
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
        pki = FederationPKI(
            folder=root,
            ca_cert=root / manifest["ca"]["file"],
            ca_key=root / "ca.key",
            superlink_cert=root / manifest["superlink"]["file"],
            superlink_key=root / "superlink.key",
            hosts=tuple(manifest.get("hosts", ())),
        )
        for group, target in (("parties", pki.party_certs), ("servers", pki.server_certs)):
            for name, entry in manifest.get(group, {}).items():
                crt = root / entry["file"]
                target[name] = (crt, crt.with_suffix(".key"))
    except FileNotFoundError:
        raise CryptoError(f"no PKI manifest at {root / _MANIFEST}") from None
    except (KeyError, TypeError, ValueError):
        raise CryptoError(f"PKI manifest {root / _MANIFEST} is malformed") from None
    for name, crt in [("ca", pki.ca_cert), ("superlink", pki.superlink_cert)]:
        if cert_fingerprint(crt) != manifest[name]["sha256"]:
            raise CryptoError(f"certificate {crt} does not match its fingerprint in {_MANIFEST}")
    return pki


def create_server_cert(pki: FederationPKI, name: str, hosts: Sequence[str], *, days: int = 365) -> tuple[Path, Path]:
    """Issue a server certificate (serverAuth) for another service, e.g. a party's scoring node.

    Parameters
    ----------
    pki : FederationPKI
        The federation PKI (its CA key must be readable).
    name : str
        Server name; files go to ``servers/<name>.crt`` and ``.key``.
    hosts : sequence of str
        IP addresses / DNS names for the SAN.
    days : int
        Validity (capped at the CA's).

    Returns
    -------
    (Path, Path)
        Certificate and key paths.
    """
    _check_name(name, "server")
    sans = _san_entries(hosts)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(read_secret_file(pki.ca_key), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{pki.ca_key} is not an ECDSA key")
    crt, key = _issue(
        ca_cert=ca_cert, ca_key=ca_key, common_name=name, sans=sans, eku=ExtendedKeyUsageOID.SERVER_AUTH, days=days
    )
    paths = (pki.folder / "servers" / f"{name}.crt", pki.folder / "servers" / f"{name}.key")
    write_secret_file(paths[1], key)
    write_public_file(paths[0], crt)
    pki.server_certs[name] = paths
    _write_manifest(pki)
    return paths


def create_node_auth_keypair(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a Flower 1.39 SuperNode authentication key pair.

    Flower 1.39 expects, and this writes:

    * ``<folder>/<name>``: the private key as an **OpenSSH** private key
      (``-----BEGIN OPENSSH PRIVATE KEY-----``, unencrypted, mode 0600) on a
      NIST curve. ``flower-supernode --auth-supernode-private-key`` loads it
      with ``load_ssh_private_key(data, None)`` and requires an
      ``EllipticCurvePrivateKey``; Flower itself generates SECP384R1, so P-384
      is used here. It signs a timestamp per request with ECDSA-SHA256.
    * ``<folder>/<name>.pub``: the OpenSSH public key line
      (``ecdsa-sha2-nistp384 AAAA... <name>``), the format
      ``flwr supernode register <file> [<connection>]`` reads
      (``load_ssh_public_key``, NIST curve required).

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder.
    name : str
        Node name (file name and key comment).

    Returns
    -------
    (Path, Path)
        Private and public key paths.
    """
    _check_name(name, "node")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    root = Path(folder)
    priv_path = write_secret_file(root / name, private)
    pub_path = write_public_file(root / f"{name}.pub", public + b" " + name.encode() + b"\n")
    return priv_path, pub_path


def grpc_server_credentials(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    client_ca: str | os.PathLike[str] | None = None,
) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca`` clients must present a cert it signed (mTLS)."""
    import grpc

    pair = [(read_secret_file(key), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True)


def grpc_channel_credentials(
    ca: str | os.PathLike[str],
    *,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """gRPC channel credentials trusting only ``ca``; pass ``cert``/``key`` for mTLS."""
    import grpc

    if (cert is None) != (key is None):
        raise CryptoError("pass both cert and key for a client certificate, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=read_secret_file(key) if key is not None else None,
        certificate_chain=Path(cert).read_bytes() if cert is not None else None,
    )
