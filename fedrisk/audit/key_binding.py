"""Bind a node's ledger signing key to its federation certificate, and check the binding.

A ledger is signed with the node's own Ed25519 identity key, which the node
generates itself. Which key is *the* bank's is not something the coordinator
may say (its ``signing_keys.json`` is unsigned): the node says it, with the
private key of the X.509 certificate the federation CA issued to it (CN and
SAN URI ``urn:fedrisk:party:<name>``; the coordinator holds one for
``coordinator``). The binding file, ``ledger_key_binding.json`` beside the
node's ledger, is::

    {"format": "fedrisk-ledger-key-binding/1",
     "statement": {"node": "bank", "ledger_public_key": "<hex>", "ledger_key_id": "<16 hex>",
                   "cert_sha256": "<hex>", "signed_at": "2025-01-01T00:00:00Z"},
     "certificate": "<PEM of the node's certificate>",
     "signature": "<hex DER ECDSA-SHA256 over DOMAIN + canonical JSON of statement>"}

:func:`check_binding` accepts it only if the certificate was issued by the
given CA, names the ledger's writer, was valid when the statement was
signed, its key signs the statement, and the statement binds exactly the
ledger's key to exactly that writer. Only public material is in the file;
nothing secret is ever written here or logged.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedrisk.audit.entry import canonical_json, check_name, key_id_of
from fedrisk.errors import LedgerError

BINDING_FILE = "ledger_key_binding.json"
BINDING_FORMAT = "fedrisk-ledger-key-binding/1"
BINDING_DOMAIN = b"fedrisk-ledger-key-binding-v1\n"
_STATEMENT_KEYS = frozenset({"node", "ledger_public_key", "ledger_key_id", "cert_sha256", "signed_at"})


def node_urn(name: str) -> str:
    """The SAN URI a federation certificate carries for node ``name``."""
    return f"urn:fedrisk:party:{name}"


def load_ca(ca: str | os.PathLike[str] | bytes | x509.Certificate) -> x509.Certificate:
    """The federation CA certificate from a path, PEM bytes or a certificate."""
    if isinstance(ca, x509.Certificate):
        return ca
    try:
        data = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
        return x509.load_pem_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise LedgerError(f"federation CA certificate {ca if not isinstance(ca, bytes) else '(PEM)'} is unreadable ({exc})") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of a certificate's DER encoding (as in the PKI manifest)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        uris = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = []
    return cns, uris


def _statement_bytes(statement: dict[str, Any]) -> bytes:
    return BINDING_DOMAIN + canonical_json(statement).encode("ascii")


def make_binding(node: str, ledger_public_key: bytes, cert_pem: bytes, cert_key_pem: bytes) -> dict[str, Any]:
    """Sign ``node``'s ledger key with its certificate key; returns the binding document.

    Raises
    ------
    LedgerError
        If the certificate does not name ``node``, or the key is not the certificate's.
    """
    check_name(node, "node")
    if len(ledger_public_key) != 32:
        raise LedgerError("ledger public key must be 32 raw Ed25519 bytes")
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(cert_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LedgerError("the certificate key is not an ECDSA key (the federation PKI issues P-256)")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise LedgerError("the certificate key does not belong to the certificate")
    cns, uris = _names(cert)
    if cns != [node] or node_urn(node) not in uris:
        raise LedgerError(f"certificate names {cns} / {uris}, not node {node!r}")
    statement = {
        "node": node,
        "ledger_public_key": ledger_public_key.hex(),
        "ledger_key_id": key_id_of(ledger_public_key),
        "cert_sha256": fingerprint(cert),
        "signed_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    signature = key.sign(_statement_bytes(statement), ec.ECDSA(hashes.SHA256()))
    return {
        "format": BINDING_FORMAT,
        "statement": statement,
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "signature": signature.hex(),
    }


def read_binding(path: str | os.PathLike[str]) -> object:
    """The parsed binding file (not judged); raises LedgerError if missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LedgerError(f"{path}: no such binding file") from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise LedgerError(f"{path}: unreadable binding ({exc})") from None


@dataclass(frozen=True)
class BindingResult:
    """What a binding says, once checked.

    ``bound_key`` is the ledger key the certificate vouches for (``None`` if
    the binding is not valid); ``problems`` are one-line reasons it is not.
    """

    bound_key: bytes | None
    cert_sha256: str | None
    subject: str | None
    problems: tuple[str, ...]


def check_binding(binding: object, *, writer: str, ca: x509.Certificate) -> BindingResult:
    """Check a binding document against the federation CA for node ``writer``."""
    problems: list[str] = []

    def fail(why: str) -> BindingResult:
        return BindingResult(None, None, None, (*problems, why))

    if not isinstance(binding, dict) or binding.get("format") != BINDING_FORMAT:
        return fail(f"binding is not a {BINDING_FORMAT} document")
    statement, pem, sig = binding.get("statement"), binding.get("certificate"), binding.get("signature")
    if not isinstance(statement, dict) or set(statement) != _STATEMENT_KEYS:
        return fail("binding statement is malformed")
    try:
        cert = x509.load_pem_x509_certificate(str(pem).encode("ascii"))
        signature = bytes.fromhex(str(sig))
        bound = bytes.fromhex(str(statement["ledger_public_key"]))
        signed_at = _dt.datetime.strptime(str(statement["signed_at"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
    except (ValueError, UnicodeError):
        return fail("binding certificate, signature, key or time is malformed")
    cert_fp = fingerprint(cert)
    cns, uris = _names(cert)
    subject = f"CN={','.join(cns)}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return fail(f"binding certificate {cert_fp[:16]}\u2026 ({subject}) is not issued by the federation CA {fingerprint(ca)[:16]}\u2026")
    if cns != [writer] or node_urn(writer) not in uris:
        return fail(f"binding certificate names {subject} {uris}, not the ledger's writer {writer!r}")
    if statement["node"] != writer:
        return fail(f"binding statement is for node {statement['node']!r}, not the ledger's writer {writer!r}")
    if statement["cert_sha256"] != cert_fp:
        return fail("binding statement names another certificate than the one attached")
    if statement["ledger_key_id"] != key_id_of(bound) or len(bound) != 32:
        return fail("binding statement's key id does not match its key")
    if not (cert.not_valid_before_utc <= signed_at <= cert.not_valid_after_utc):
        problems.append(f"binding was signed at {statement['signed_at']}, outside its certificate's validity")
    try:
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return fail("binding certificate key is not ECDSA")
        public.verify(signature, _statement_bytes(statement), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return fail(f"binding signature does not verify under {writer}'s certificate {cert_fp[:16]}\u2026")
    if problems:
        return BindingResult(None, cert_fp, subject, tuple(problems))
    return BindingResult(bound, cert_fp, subject, ())
