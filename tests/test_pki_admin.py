"""Federation key administration: init, add-party, revoke, list (files, modes, registry, CRL, CLI)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fedrisk.crypto.pki import cert_fingerprint, load_federation_pki
from fedrisk.crypto.pki_admin import (
    add_party,
    init_federation_keys,
    load_federation_keys,
    node_key_fingerprint,
    require_active,
    revoke_party,
)
from fedrisk.errors import CryptoError

PARTIES = ["bank", "tax_bureau", "platform"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_ca_certs_node_keys_0600_and_a_fingerprint_manifest(tmp_path):
    keys = init_federation_keys(tmp_path / "k", PARTIES, hosts=["10.0.0.1", "superlink.example"])
    root = keys.folder
    assert _mode(root) == 0o700
    for secret in [root / "ca.key", root / "superlink.key", *[root / "nodes" / p for p in PARTIES], *[root / "parties" / f"{p}.key" for p in PARTIES]]:
        assert _mode(secret) == 0o600, secret
        assert b"PRIVATE KEY" in secret.read_bytes()
    for name in PARTIES:
        entry = keys.party(name)
        assert entry["status"] == "active" and entry["generation"] == 1
        assert entry["node_key_sha256"] == node_key_fingerprint(root / "nodes" / f"{name}.pub")
        assert entry["cert_sha256"] == cert_fingerprint(root / "parties" / f"{name}.crt")
        assert (root / "nodes" / f"{name}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["parties"]) == set(PARTIES)
    assert manifest["ca"]["sha256"] == keys.registry["ca_sha256"]
    san = x509.load_pem_x509_certificate(keys.superlink_cert.read_bytes()).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink.example" in san.get_values_for_type(x509.DNSName)
    assert json.loads((root / "revocations.json").read_text())["revoked"] == []
    with pytest.raises(CryptoError, match="already holds a federation"):
        init_federation_keys(root, PARTIES)


def test_add_party_issues_new_keys_and_refuses_a_duplicate(tmp_path):
    init_federation_keys(tmp_path / "k", ["bank"])
    keys = add_party(tmp_path / "k", "platform")
    assert keys.active_parties() == ["bank", "platform"]
    assert _mode(keys.node_private_key("platform")) == 0o600
    assert "platform" in load_federation_pki(tmp_path / "k").party_certs
    with pytest.raises(CryptoError, match="already has active keys"):
        add_party(tmp_path / "k", "bank")
    with pytest.raises(CryptoError, match="party name"):
        add_party(tmp_path / "k", "bad name!")


def test_revoke_records_it_refuses_the_party_and_readmission_needs_new_keys(tmp_path):
    init_federation_keys(tmp_path / "k", PARTIES)
    old = load_federation_keys(tmp_path / "k").party("tax_bureau")
    record = revoke_party(tmp_path / "k", "tax_bureau", reason="key leaked")
    keys = load_federation_keys(tmp_path / "k")
    assert keys.status("tax_bureau") == "revoked"
    assert record["node_key_sha256"] == old["node_key_sha256"] and record["reason"] == "key leaked"
    assert old["node_key_sha256"] in keys.revoked_fingerprints()
    with pytest.raises(CryptoError, match="party 'tax_bureau' was revoked on .*fedrisk keys add-party tax_bureau"):
        keys.node_private_key("tax_bureau")
    with pytest.raises(CryptoError, match="was revoked"):
        require_active(keys, "tax_bureau")
    assert not (tmp_path / "k" / "nodes" / "tax_bureau").exists()  # moved to revoked/
    assert (tmp_path / "k" / "revoked" / "tax_bureau.1" / "tax_bureau").exists()
    assert "tax_bureau" not in json.loads((tmp_path / "k" / "manifest.json").read_text())["parties"]
    crl = x509.load_pem_x509_crl((tmp_path / "k" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(record["cert_serial"], 16)) is not None
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(keys.ca_cert.read_bytes()).public_key())
    with pytest.raises(CryptoError, match="already revoked"):
        revoke_party(tmp_path / "k", "tax_bureau")
    readmitted = add_party(tmp_path / "k", "tax_bureau").party("tax_bureau")
    assert readmitted["generation"] == 2 and readmitted["node_key_sha256"] != old["node_key_sha256"]
    assert readmitted["history"][0]["status"] == "revoked"


def test_unknown_party_and_missing_registry_are_one_line_errors(tmp_path):
    init_federation_keys(tmp_path / "k", ["bank"])
    with pytest.raises(CryptoError, match=r"party 'nobody' is not in .*federation.json \(known: bank\)"):
        load_federation_keys(tmp_path / "k").party("nobody")
    with pytest.raises(CryptoError, match="run `fedrisk keys init` first"):
        load_federation_keys(tmp_path / "empty")


def test_a_registry_entry_without_a_key_file_is_named_not_turned_into_a_path(tmp_path):
    init_federation_keys(tmp_path / "k", ["bank"])
    registry_path = tmp_path / "k" / "federation.json"
    registry = json.loads(registry_path.read_text())
    registry["parties"]["bank"]["node_key"] = None
    del registry["parties"]["bank"]["cert_key"]
    registry_path.write_text(json.dumps(registry))
    keys = load_federation_keys(tmp_path / "k")
    with pytest.raises(CryptoError, match=r"party 'bank' has no 'node_key' file in .*federation.json \(got None\)$"):
        keys.node_private_key("bank")
    with pytest.raises(CryptoError, match=r"party 'bank' has no 'cert_key' file"):
        keys.client_cert("bank")
    assert keys.node_public_key("bank") == tmp_path / "k" / "nodes" / "bank.pub"  # the intact entries still resolve


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", "keys", *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_keys_cli_init_add_revoke_list(tmp_path):
    done = _cli("init", "fed", "--parties", "bank,tax_bureau", "--hosts", "127.0.0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _cli("add-party", "platform", "--keys", "fed", cwd=tmp_path).returncode == 0
    revoked = _cli("revoke", "tax_bureau", "--keys", "fed", "--reason", "left the federation", cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked tax_bureau" in revoked.stderr
    listed = _cli("list", "--keys", "fed", "--json", cwd=tmp_path)
    parties = json.loads(listed.stdout.strip().splitlines()[-1])["parties"]
    assert {n: p["status"] for n, p in parties.items()} == {"bank": "active", "platform": "active", "tax_bureau": "revoked"}
    again = _cli("revoke", "tax_bureau", "--keys", "fed", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: party 'tax_bureau' is already revoked")
    for command in ("init", "add-party", "register", "revoke", "list"):
        assert _cli(command, "--help", cwd=tmp_path).returncode == 0
