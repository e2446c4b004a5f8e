"""The federation's key administration: who may join, with which keys, and who was revoked.

:func:`init_federation_keys` writes everything an operator hands out, into one
folder::

    ca.crt  ca.key (0600)            federation root CA       (fedrisk.crypto.pki)
    superlink.crt  superlink.key     the SuperLink's TLS certificate
    parties/<name>.crt  .key (0600)  each party's TLS client certificate (mTLS to scoring services)
    coordinator.crt  .key (0600)     the coordinator's certificate (CN coordinator): it binds the
                                     coordinator's ledger key (fedrisk.audit.key_binding)
    nodes/<name> (0600)  .pub        each party's Flower node-authentication key pair
    manifest.json                    SHA-256 fingerprints of every certificate (fedrisk.crypto.pki)
    federation.json                  the registry: every party, its fingerprints, status and history
    revocations.json                 the revocation list: revoked parties, their key and cert fingerprints
    crl.pem                          the same revocations as an X.509 CRL signed by the CA

A party gets ``ca.crt``, ``nodes/<name>`` and ``parties/<name>.*`` (for scoring,
and to bind its ledger key to its certificate: :func:`fedrisk.federation.ledger_keys.bind_ledger_keys`, ``fedrisk
keys bind-ledger``); nobody else needs a private key. The registry is the operator's record:
:func:`add_party` issues a new party's certificate and node key;
:func:`revoke_party` marks a party revoked, moves its key files to
``revoked/<name>.<generation>/`` and adds it to the revocation list, so that
:class:`~fedrisk.federation.local.LocalFederation` and
:func:`require_active` refuse it; unregistering the node key from a running
SuperLink is :mod:`fedrisk.federation.superlink_admin`'s job (``fedrisk keys
revoke --superlink``). Flower itself never accepts a revoked key again: its
SuperLink keeps an unregistered key's row and refuses to register the same
key twice, so a revoked party must be issued a new key (``add-party`` again).

Fingerprints: certificates by SHA-256 of their DER encoding (as in
``manifest.json``); node keys by SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedrisk.crypto import pki as _pki
from fedrisk.crypto.keyfiles import (
    read_secret_file,
    write_public_file,
    write_secret_file,
)
from fedrisk.errors import CryptoError

__all__ = [
    "FederationKeys",
    "add_party",
    "init_federation_keys",
    "load_federation_keys",
    "node_key_fingerprint",
    "require_active",
    "revoke_party",
]

REGISTRY = "federation.json"
COORDINATOR = "coordinator"
REVOCATIONS = "revocations.json"
CRL = "crl.pem"
FORMAT = "fedrisk-keys/1"
REVOCATIONS_FORMAT = "fedrisk-revocations/1"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def node_key_fingerprint(public_key_path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a node public key's DER SubjectPublicKeyInfo.

    Parameters
    ----------
    public_key_path : str or os.PathLike
        An OpenSSH public key line (``ecdsa-sha2-nistp384 AAAA... name``), as
        :func:`~fedrisk.crypto.pki.create_node_auth_keypair` writes it.
    """
    try:
        key = serialization.load_ssh_public_key(Path(public_key_path).read_bytes())
    except (OSError, ValueError):
        raise CryptoError(f"{public_key_path} is not an OpenSSH public key") from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


@dataclass
class FederationKeys:
    """A federation key folder and its registry.

    Attributes
    ----------
    folder : Path
        The folder :func:`init_federation_keys` wrote.
    registry : dict
        The parsed ``federation.json``.
    """

    folder: Path
    registry: dict[str, Any]

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def superlink_cert(self) -> Path:
        return self.folder / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.folder / "superlink.key"

    def party(self, name: str) -> dict[str, Any]:
        """The registry entry of ``name``; a one-line error if there is none."""
        entry = self.registry["parties"].get(name)
        if entry is None:
            known = ", ".join(sorted(self.registry["parties"])) or "none"
            raise CryptoError(f"party {name!r} is not in {self.folder / REGISTRY} (known: {known})")
        return cast(dict[str, Any], entry)  # the registry's own entry: callers update it in place

    def status(self, name: str) -> str:
        return str(self.party(name)["status"])

    def file_of(self, name: str, field: str) -> Path:
        """The file the registry names under ``field`` for ``name``; a one-line error if the entry has none."""
        value = self.party(name).get(field)
        if not isinstance(value, str) or not value:
            raise CryptoError(f"party {name!r} has no {field!r} file in {self.folder / REGISTRY} (got {value!r})")
        return self.folder / value

    def node_private_key(self, name: str) -> Path:
        """The party's node-authentication private key (0600), refusing a revoked party."""
        require_active(self, name)
        return self.file_of(name, "node_key")

    def node_public_key(self, name: str) -> Path:
        require_active(self, name)
        return self.file_of(name, "node_public_key")

    def client_cert(self, name: str) -> tuple[Path, Path]:
        require_active(self, name)
        return self.file_of(name, "cert"), self.file_of(name, "cert_key")

    def ledger_certificate(self, name: str) -> tuple[Path, Path]:
        """The certificate and key (0600) that bind ``name``'s ledger key: a party's client
        certificate (refusing a revoked party), or the coordinator's (issued now if this
        folder predates it; needs the CA key)."""
        if name == COORDINATOR:
            entry = self.registry.get("coordinator")
            if entry is None or not (self.folder / entry["cert"]).exists():
                entry = _issue_coordinator(self.folder, int(self.registry.get("days", 365)))
                self.registry["coordinator"] = entry
                self.save()
            return self.folder / entry["cert"], self.folder / entry["cert_key"]
        return self.client_cert(name)

    def active_parties(self) -> list[str]:
        return sorted(n for n, e in self.registry["parties"].items() if e["status"] == "active")

    def revoked_fingerprints(self) -> set[str]:
        """Node-key and certificate fingerprints of every revoked party generation."""
        out: set[str] = set()
        for item in _read_json(self.folder / REVOCATIONS, {"revoked": []}).get("revoked", []):
            out.update({item["node_key_sha256"], item["cert_sha256"]})
        return out

    def record_registration(self, name: str, superlink: str, node_id: int) -> None:
        """Remember the Flower node id a SuperLink gave this party's node key (for revocation)."""
        self.party(name).setdefault("registrations", {})[superlink] = str(node_id)
        self.save()

    def save(self) -> None:
        _write_json(self.folder / REGISTRY, self.registry)


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is not None:
            return default
        raise CryptoError(f"no federation key registry at {path}; run `fedrisk keys init` first") from None
    except ValueError:
        raise CryptoError(f"{path} is not valid JSON") from None


def _write_json(path: Path, data: Any) -> None:
    write_public_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key(read_secret_file(folder / "ca.key"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{folder / 'ca.key'} is not an ECDSA key")
    return cert, key


def _issue_party(folder: Path, name: str, days: int) -> dict[str, Any]:
    """A party's TLS client certificate and Flower node key pair, as a registry entry."""
    ca_cert, ca_key = _load_ca(folder)
    crt, key = _pki.issue_party_certificate(ca_cert, ca_key, name, days)
    write_secret_file(folder / "parties" / f"{name}.key", key)
    write_public_file(folder / "parties" / f"{name}.crt", crt)
    _pki.create_node_auth_keypair(folder / "nodes", name)
    return _entry(folder, name)


def _issue_coordinator(folder: Path, days: int) -> dict[str, Any]:
    """The coordinator's certificate (same client profile as a party's, CN ``coordinator``)."""
    ca_cert, ca_key = _load_ca(folder)
    crt, key = _pki.issue_party_certificate(ca_cert, ca_key, COORDINATOR, days)
    write_secret_file(folder / "coordinator.key", key)
    write_public_file(folder / "coordinator.crt", crt)
    return {"cert": "coordinator.crt", "cert_key": "coordinator.key", "cert_sha256": _pki.cert_fingerprint(folder / "coordinator.crt")}


def _entry(folder: Path, name: str, generation: int = 1) -> dict[str, Any]:
    crt = x509.load_pem_x509_certificate((folder / "parties" / f"{name}.crt").read_bytes())
    return {
        "status": "active",
        "generation": generation,
        "added_at": _now(),
        "cert": f"parties/{name}.crt",
        "cert_key": f"parties/{name}.key",
        "cert_sha256": _pki.cert_fingerprint(folder / "parties" / f"{name}.crt"),
        "cert_serial": format(crt.serial_number, "x"),
        "cert_not_after": crt.not_valid_after_utc.isoformat(timespec="seconds"),
        "node_key": f"nodes/{name}",
        "node_public_key": f"nodes/{name}.pub",
        "node_key_sha256": node_key_fingerprint(folder / "nodes" / f"{name}.pub"),
        "registrations": {},
    }


def _sync_manifest(keys: FederationKeys) -> None:
    """Rewrite the PKI manifest so that it lists exactly the active parties' certificates."""
    pki = _pki.load_federation_pki(keys.folder)
    pki.party_certs = {name: (keys.folder / e["cert"], keys.folder / e["cert_key"]) for name, e in keys.registry["parties"].items() if e["status"] == "active"}
    _pki.write_manifest(pki)


def init_federation_keys(
    folder: str | os.PathLike[str],
    parties: Sequence[str],
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 365,
    force: bool = False,
) -> FederationKeys:
    """Create a federation's CA, SuperLink certificate, party certificates and node keys.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder; refused if it already holds a registry (unless ``force``).
    parties : sequence of str
        Party names.
    hosts : sequence of str
        Names and addresses the SuperLink is reached at (its certificate's SAN).
    days : int
        Validity of every certificate.
    force : bool
        Replace an existing federation in ``folder`` (every old key becomes useless).

    Returns
    -------
    FederationKeys
    """
    root = Path(folder)
    if (root / REGISTRY).exists() and not force:
        raise CryptoError(f"{root} already holds a federation ({REGISTRY}); use add-party, or --force to replace it")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    pki = _pki.create_federation_pki(root, parties=list(parties), hosts=list(hosts), days=days)
    entries = {}
    for name in parties:
        _pki.create_node_auth_keypair(root / "nodes", name)
        entries[name] = _entry(root, name)
    registry = {
        "format": FORMAT,
        "created_at": _now(),
        "hosts": list(hosts),
        "days": days,
        "ca_sha256": _pki.cert_fingerprint(pki.ca_cert),
        "superlink_sha256": _pki.cert_fingerprint(pki.superlink_cert),
        "parties": entries,
        "coordinator": _issue_coordinator(root, days),
    }
    keys = FederationKeys(root, registry)
    keys.save()
    _write_json(root / REVOCATIONS, {"format": REVOCATIONS_FORMAT, "revoked": []})
    _write_crl(keys, [])
    return keys


def load_federation_keys(folder: str | os.PathLike[str]) -> FederationKeys:
    """Open a folder written by :func:`init_federation_keys`; checks the CA against the registry."""
    root = Path(folder)
    registry = _read_json(root / REGISTRY)
    if registry.get("format") != FORMAT:
        raise CryptoError(f"{root / REGISTRY} has format {registry.get('format')!r}, expected {FORMAT!r}")
    if _pki.cert_fingerprint(root / "ca.crt") != registry["ca_sha256"]:
        raise CryptoError(f"{root / 'ca.crt'} does not match the CA fingerprint in {REGISTRY}")
    return FederationKeys(root, registry)


def add_party(folder: str | os.PathLike[str], name: str, *, days: int | None = None) -> FederationKeys:
    """Issue a new party's certificate and node key (or a revoked party's replacement).

    Parameters
    ----------
    folder : str or os.PathLike
        The federation key folder.
    name : str
        Party name; refused if it is already active.
    days : int, optional
        Certificate validity (default: the federation's).
    """
    keys = load_federation_keys(folder)
    _pki.check_name(name, "party")
    old = keys.registry["parties"].get(name)
    if old is not None and old["status"] == "active":
        raise CryptoError(f"party {name!r} already has active keys; revoke them first to issue new ones")
    entry = _issue_party(keys.folder, name, int(days or keys.registry.get("days", 365)))
    if old is not None:
        entry["generation"] = int(old["generation"]) + 1
        entry["history"] = [*old.get("history", []), {k: old[k] for k in old if k != "history"}]
    keys.registry["parties"][name] = entry
    keys.save()
    _sync_manifest(keys)
    return keys


def revoke_party(folder: str | os.PathLike[str], name: str, *, reason: str = "unspecified") -> dict[str, Any]:
    """Revoke a party: status, revocation list, CRL; its key files move to ``revoked/``.

    Parameters
    ----------
    folder : str or os.PathLike
        The federation key folder (its CA key signs the CRL).
    name : str
        The party to revoke (must be active).
    reason : str
        Recorded in the registry and the revocation list.

    Returns
    -------
    dict
        The revocation record (party, generation, fingerprints, time, reason,
        and the Flower node ids it was registered under).
    """
    keys = load_federation_keys(folder)
    entry = keys.party(name)
    if entry["status"] != "active":
        raise CryptoError(f"party {name!r} is already revoked (since {entry.get('revoked_at')})")
    record = {
        "party": name,
        "generation": entry["generation"],
        "node_key_sha256": entry["node_key_sha256"],
        "cert_sha256": entry["cert_sha256"],
        "cert_serial": entry["cert_serial"],
        "revoked_at": _now(),
        "reason": reason,
        "registrations": dict(entry.get("registrations", {})),
    }
    attic = keys.folder / "revoked" / f"{name}.{entry['generation']}"
    attic.mkdir(parents=True, exist_ok=True)
    for field in ("cert", "cert_key", "node_key", "node_public_key"):
        src = keys.folder / entry[field]
        if src.exists():
            shutil.move(src, attic / src.name)
        entry[field] = (attic / src.name).relative_to(keys.folder).as_posix()
    entry.update(status="revoked", revoked_at=record["revoked_at"], reason=reason)
    keys.save()
    revocations = _read_json(keys.folder / REVOCATIONS, {"format": REVOCATIONS_FORMAT, "revoked": []})
    revocations["revoked"].append(record)
    _write_json(keys.folder / REVOCATIONS, revocations)
    _write_crl(keys, revocations["revoked"])
    _sync_manifest(keys)
    return record


def require_active(keys: FederationKeys, name: str) -> None:
    """Raise a one-line :class:`CryptoError` if ``name`` is unknown or revoked."""
    entry = keys.party(name)
    if entry["status"] != "active":
        raise CryptoError(
            f"party {name!r} was revoked on {entry.get('revoked_at')} ({entry.get('reason')}); issue new keys with `fedrisk keys add-party {name}`"
        )


def _write_crl(keys: FederationKeys, revoked: list[dict[str, Any]]) -> None:
    """An X.509 CRL of the revoked client certificates, signed by the federation CA."""
    ca_cert, ca_key = _load_ca(keys.folder)
    now = _dt.datetime.now(_dt.UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now).next_update(now + _dt.timedelta(days=30))
    for item in revoked:
        when = _dt.datetime.fromisoformat(item["revoked_at"])
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(item["cert_serial"], 16)).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_public_file(keys.folder / CRL, crl.public_bytes(serialization.Encoding.PEM))
