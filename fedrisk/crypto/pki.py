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
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
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
    # revocation
    "RevocationList",
    "certificate_label",
    "load_certificate",
    "load_revocation_list",
    "revoke_certificate",
    "write_crl",
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

    @property
    def crl(self) -> Path:
        """The CA's certificate revocation list (``crl.pem``, :func:`write_crl`)."""
        return self.folder / CRL_FILE


def cert_fingerprint(cert_pem_or_path: bytes | str | os.PathLike[str]) -> str:
    """SHA-256 hex fingerprint of a certificate's DER encoding."""
    data = cert_pem_or_path if isinstance(cert_pem_or_path, bytes) else Path(cert_pem_or_path).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CryptoError("not a PEM X.509 certificate") from None
    return cert.fingerprint(hashes.SHA256()).hex()


def check_name(name: str, what: str) -> None:
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
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


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
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value),
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


def write_manifest(pki: FederationPKI) -> None:
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
        check_name(name, "party")
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
    write_manifest(pki)
    write_crl(root, [])
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
    check_name(name, "server")
    sans = _san_entries(hosts)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(read_secret_file(pki.ca_key), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{pki.ca_key} is not an ECDSA key")
    crt, key = _issue(ca_cert=ca_cert, ca_key=ca_key, common_name=name, sans=sans, eku=ExtendedKeyUsageOID.SERVER_AUTH, days=days)
    paths = (pki.folder / "servers" / f"{name}.crt", pki.folder / "servers" / f"{name}.key")
    write_secret_file(paths[1], key)
    write_public_file(paths[0], crt)
    pki.server_certs[name] = paths
    write_manifest(pki)
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
    check_name(name, "node")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
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


# --- revocation --------------------------------------------------------------------
#
# The CA keeps ``revocations.json`` (one record per revoked certificate: serial,
# SHA-256 fingerprint, time, reason) and the same as an X.509 CRL, ``crl.pem``,
# signed by the CA. ``fedrisk keys revoke`` (a party: its client certificate) and
# ``fedrisk keys revoke-cert`` (any certificate the CA issued, e.g. a party's
# scoring server certificate) append to both. Scoring links load the CRL with
# :func:`load_revocation_list`, which verifies it against the CA before trusting it.

CRL_FILE = "crl.pem"
REVOCATIONS_FILE = "revocations.json"
_REVOCATIONS_FORMAT = "fedrisk-revocations/1"
#: A CRL's ``nextUpdate``: re-signed (with every revocation) whenever one is added.
CRL_DAYS = 30


def load_certificate(data: bytes | str | os.PathLike[str]) -> x509.Certificate:
    """A certificate from PEM or DER bytes, or from a file; a one-line error otherwise."""
    if isinstance(data, bytes):
        raw = data
    else:
        try:
            raw = Path(data).read_bytes()
        except OSError as err:
            raise CryptoError(f"cannot read the certificate {data}: {err.strerror or err}") from None
    try:
        return x509.load_pem_x509_certificate(raw) if raw.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(raw)
    except ValueError:
        where = "" if isinstance(data, bytes) else f" {data}"
        raise CryptoError(f"certificate{where} is not a PEM or DER X.509 certificate") from None


def certificate_label(cert: x509.Certificate) -> str:
    """How errors name a certificate: ``'tax_bureau' (serial 1f03…)``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"{common_name!r} (serial {cert.serial_number:x})"


@dataclass(frozen=True)
class RevocationList:
    """A CRL of the federation CA, verified against the CA (:func:`load_revocation_list`).

    Attributes
    ----------
    source : str
        File name, for messages (``crl.pem``).
    issuer : x509.Name
        The CA that signed it; certificates of another issuer are not judged by it.
    last_update, next_update : datetime
    revoked : dict of int to datetime
        Serial number to revocation time.
    """

    source: str
    issuer: x509.Name
    last_update: _dt.datetime
    next_update: _dt.datetime | None
    revoked: dict[int, _dt.datetime]

    @property
    def stale(self) -> bool:
        """Past its ``nextUpdate``: revocations issued since may be missing from it."""
        return self.next_update is not None and _dt.datetime.now(_dt.UTC) > self.next_update

    def revocation_date(self, cert: x509.Certificate) -> _dt.datetime | None:
        """When ``cert`` was revoked, or ``None``."""
        if cert.issuer != self.issuer:
            return None
        return self.revoked.get(cert.serial_number)

    def check(self, cert: x509.Certificate, what: str = "certificate") -> None:
        """Raise a one-line :class:`CryptoError` naming ``cert`` if it is revoked."""
        when = self.revocation_date(cert)
        if when is not None:
            raise CryptoError(f"{what} {certificate_label(cert)} was revoked on {when:%Y-%m-%d %H:%M} UTC ({self.source})")


#: The public-key types that can sign a certificate or CRL (cryptography's ``CertificateIssuerPublicKeyTypes``).
_ISSUER_KEY_TYPES = (
    dsa.DSAPublicKey,
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


def load_revocation_list(crl: str | os.PathLike[str], ca: str | os.PathLike[str]) -> RevocationList:
    """Read ``crl`` and verify that the CA in ``ca`` issued and signed it.

    Raises
    ------
    CryptoError
        One line: unreadable, not a CRL, another issuer, or a bad signature.
    """
    path = Path(crl)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CryptoError(f"cannot read the CRL {path}: {err.strerror or err}") from None
    try:
        parsed = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except ValueError:
        raise CryptoError(f"{path} is not an X.509 CRL") from None
    ca_cert = load_certificate(ca)
    if parsed.issuer != ca_cert.subject:
        raise CryptoError(f"the CRL {path} was issued by {parsed.issuer.rfc4514_string()}, not by the CA in {ca}")
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, _ISSUER_KEY_TYPES):
        raise CryptoError(f"the CA in {ca} has a {type(ca_key).__name__}, which cannot sign a CRL")
    if not parsed.is_signature_valid(ca_key):
        raise CryptoError(f"the CRL {path} is not signed by the CA in {ca}")
    return RevocationList(
        source=path.name,
        issuer=parsed.issuer,
        last_update=parsed.last_update_utc,
        next_update=parsed.next_update_utc,
        revoked={entry.serial_number: entry.revocation_date_utc for entry in parsed},
    )


def _load_ca_pair(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = load_certificate(folder / "ca.crt")
    ca_key = serialization.load_pem_private_key(read_secret_file(folder / "ca.key"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{folder / 'ca.key'} is not an ECDSA key")
    return ca_cert, ca_key


def _crl_bytes(folder: Path, revoked: Iterable[dict[str, Any]]) -> bytes:
    ca_cert, ca_key = _load_ca_pair(folder)
    now = _dt.datetime.now(_dt.UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now).next_update(now + _dt.timedelta(days=CRL_DAYS))
    for item in revoked:
        when = _dt.datetime.fromisoformat(item["revoked_at"])
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(item["cert_serial"], 16)).revocation_date(when).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_crl(folder: str | os.PathLike[str], revoked: Iterable[dict[str, Any]]) -> Path:
    """Sign ``folder/crl.pem`` with the CA key in ``folder``: one entry per record
    (``cert_serial`` in hex, ``revoked_at`` ISO 8601), as ``revocations.json`` keeps them."""
    root = Path(folder)
    return write_public_file(root / CRL_FILE, _crl_bytes(root, revoked))


def revoke_certificate(folder: str | os.PathLike[str], cert: str | os.PathLike[str], *, reason: str = "unspecified") -> dict[str, Any]:
    """Revoke one certificate the CA in ``folder`` issued: ``revocations.json`` and ``crl.pem``.

    For a party's scoring server certificate, or any certificate that is not a
    party's registered client certificate (``fedrisk keys revoke NAME`` revokes
    those, with the party's node key).

    Returns
    -------
    dict
        The record added to ``revocations.json``.
    """
    root = Path(folder)
    target = load_certificate(cert)
    ca_cert = load_certificate(root / "ca.crt")
    try:
        target.verify_directly_issued_by(ca_cert)
    except Exception:  # ValueError, TypeError or InvalidSignature
        raise CryptoError(f"{cert} was not issued by the CA in {root / 'ca.crt'}") from None
    path = root / REVOCATIONS_FILE
    try:
        revocations = json.loads(path.read_text()) if path.exists() else {"format": _REVOCATIONS_FORMAT, "revoked": []}
        revoked = list(revocations["revoked"])
    except (ValueError, KeyError, TypeError):
        raise CryptoError(f"{path} is not a fedrisk revocation list") from None
    serial = format(target.serial_number, "x")
    for item in revoked:
        if item.get("cert_serial") == serial:
            raise CryptoError(f"certificate {certificate_label(target)} is already revoked (since {item.get('revoked_at')})")
    names = target.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    record = {
        "certificate": Path(cert).name,
        "common_name": str(names[0].value) if names else "",
        "cert_sha256": target.fingerprint(hashes.SHA256()).hex(),
        "cert_serial": serial,
        "node_key_sha256": "",  # the record shape of revocations.json (a party's records name its node key)
        "revoked_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "reason": reason,
    }
    revoked.append(record)
    crl = _crl_bytes(root, revoked)  # needs the CA key: fail before writing anything
    revocations["revoked"] = revoked
    write_public_file(path, (json.dumps(revocations, indent=2, sort_keys=True) + "\n").encode())
    write_public_file(root / CRL_FILE, crl)
    return record
