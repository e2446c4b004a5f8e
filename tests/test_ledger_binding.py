"""Ledger keys bound to the federation's certificates: a swapped key, a missing or foreign binding is named."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrisk.audit import Ed25519Signer, Ledger, verify_run
from fedrisk.audit.key_binding import BINDING_FILE, make_binding
from fedrisk.cli import app
from fedrisk.crypto.keyfiles import read_secret_file
from fedrisk.crypto.pki_admin import init_federation_keys
from fedrisk.federation.ledger_keys import bind_ledger_keys, bind_node
from fedrisk.parties.identity import PartyIdentity

NODES = ("coordinator", "bank", "tax_bureau")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _record(path: Path, writer: str, signer) -> None:
    """A ledger signed by ``signer`` (its content does not matter here: which key signs it does)."""
    with Ledger(path, writer, signer) as led:
        led.close_run("r")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder as a local federation leaves it: pki/, coordinator/ and parties/<name>/, keys bound."""
    root = tmp_path / "run"
    keys = init_federation_keys(root / "pki", ["bank", "tax_bureau"])
    dirs = {"coordinator": root / "coordinator", "bank": root / "parties" / "bank", "tax_bureau": root / "parties" / "tax_bureau"}
    bind_ledger_keys(keys, dirs)
    for name, folder in dirs.items():
        _record(folder / "ledger.sqlite", name, PartyIdentity.load_or_create(folder, name).signing)
    # What the coordinator writes, unsigned: the keys the parties announced.
    registry = {n: PartyIdentity.load_or_create(d, n).signing_public_key.hex() for n, d in dirs.items()}
    (root / "coordinator" / "signing_keys.json").write_text(json.dumps(registry))
    return root


def _ledgers(root: Path) -> list[Path]:
    return sorted(root.rglob("ledger.sqlite"))


def _key_binding(findings) -> list[str]:
    return [str(f) for f in findings if f.field == "key_binding"]


def _swap_bank_ledger(root: Path) -> Ed25519Signer:
    """Replace the bank's ledger by one signed with another key, and list that key in the registry."""
    impostor = Ed25519Signer.generate()
    path = root / "parties" / "bank" / "ledger.sqlite"
    for p in path.parent.glob("ledger.sqlite*"):
        p.unlink()
    _record(path, "bank", impostor)
    registry = json.loads((root / "coordinator" / "signing_keys.json").read_text())
    registry["bank"] = impostor.public_key_bytes.hex()
    (root / "coordinator" / "signing_keys.json").write_text(json.dumps(registry))
    return impostor


def test_bound_keys_verify_and_files_keep_secrets_private(run_dir: Path) -> None:
    pki = run_dir / "pki"
    assert verify_run(_ledgers(run_dir), ca=pki / "ca.crt") == []
    assert _mode(pki / "coordinator.key") == 0o600 and b"PRIVATE KEY" in read_secret_file(pki / "coordinator.key")
    for folder in (run_dir / "coordinator", run_dir / "parties" / "bank"):
        assert _mode(folder / "identity_ed25519.key") == 0o600
        binding = json.loads((folder / BINDING_FILE).read_text())
        assert "PRIVATE" not in json.dumps(binding)  # public material only
        assert binding["statement"]["node"] == folder.name


def test_a_swapped_ledger_key_is_named_even_with_a_matching_registry(run_dir: Path) -> None:
    impostor = _swap_bank_ledger(run_dir)
    from fedrisk.audit.run_files import collect_ledgers

    ledgers, keys = collect_ledgers([run_dir])
    assert keys.ca_cert == run_dir / "pki" / "ca.crt"
    # The unsigned registry alone is fooled (it was rewritten along with the ledger)...
    assert verify_run(ledgers, trusted_keys=dict(keys)) == []
    # ...the certificate binding is not.
    lines = _key_binding(verify_run(ledgers, trusted_keys=keys))
    bank = run_dir / "parties" / "bank" / "ledger.sqlite"
    swapped = [line for line in lines if "the ledger key was swapped" in line]
    assert len(swapped) == 1 and swapped[0].startswith(f"{bank} field key_binding: ledger is signed by key {impostor.key_id}, ")
    assert "'bank''s certificate CN=bank" in swapped[0]
    assert any(
        line.endswith(
            f"the key registry lists key {impostor.key_id} for 'bank', but its certificate binds key "
            f"{PartyIdentity.load_or_create(bank.parent, 'bank').signing_key_id}"
        )
        for line in lines
    ), lines


def test_missing_foreign_and_tampered_bindings_are_named(run_dir: Path, tmp_path: Path) -> None:
    ca = run_dir / "pki" / "ca.crt"
    bank_dir = run_dir / "parties" / "bank"
    bank_key = PartyIdentity.load_or_create(bank_dir, "bank").signing_public_key
    original = (bank_dir / BINDING_FILE).read_text()

    (bank_dir / BINDING_FILE).unlink()
    (line,) = _key_binding(verify_run(_ledgers(run_dir), ca=ca))
    assert "no certificate binding for 'bank''s ledger key" in line

    # The tax bureau's certificate vouching for the bank's key.
    pki = run_dir / "pki" / "parties"
    foreign = make_binding("tax_bureau", bank_key, (pki / "tax_bureau.crt").read_bytes(), read_secret_file(pki / "tax_bureau.key"))
    (bank_dir / BINDING_FILE).write_text(json.dumps(foreign))
    (line,) = _key_binding(verify_run(_ledgers(run_dir), ca=ca))
    assert "binding certificate names CN=tax_bureau" in line and "not the ledger's writer 'bank'" in line

    # A certificate from another federation's CA.
    other = init_federation_keys(tmp_path / "other", ["bank"])
    outsider = make_binding("bank", bank_key, (other.folder / "parties" / "bank.crt").read_bytes(), read_secret_file(other.folder / "parties" / "bank.key"))
    (bank_dir / BINDING_FILE).write_text(json.dumps(outsider))
    (line,) = _key_binding(verify_run(_ledgers(run_dir), ca=ca))
    assert "is not issued by the federation CA" in line

    # The genuine binding with its key edited.
    doc = json.loads(original)
    impostor = Ed25519Signer.generate()
    doc["statement"]["ledger_public_key"] = impostor.public_key_bytes.hex()
    doc["statement"]["ledger_key_id"] = impostor.key_id
    (bank_dir / BINDING_FILE).write_text(json.dumps(doc))
    (line,) = _key_binding(verify_run(_ledgers(run_dir), ca=ca))
    assert "binding signature does not verify under bank's certificate" in line


def test_audit_verify_checks_bindings_and_pins_the_ca(run_dir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", str(run_dir)])
    assert ok.exit_code == 0, ok.output
    from fedrisk.audit.key_binding import fingerprint, load_ca

    ca_fp = fingerprint(load_ca(run_dir / "pki" / "ca.crt"))
    assert f"ledger keys checked against the certificates of CA {ca_fp}" in ok.output
    pinned = runner.invoke(app, ["audit", "verify", str(run_dir), "--ca-sha256", ca_fp])
    assert pinned.exit_code == 0
    wrong = runner.invoke(app, ["audit", "verify", str(run_dir), "--ca-sha256", "00" * 32])
    assert wrong.exit_code == 2 and "not the pinned --ca-sha256" in wrong.output
    _swap_bank_ledger(run_dir)
    bad = runner.invoke(app, ["audit", "verify", str(run_dir), "--json"])
    assert bad.exit_code == 1
    doc = json.loads(bad.stdout.strip().splitlines()[-1])
    assert doc["ca_sha256"] == ca_fp and any("the ledger key was swapped" in f for f in doc["findings"])


def test_without_a_ca_the_command_says_keys_were_not_checked(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "pki")
    result = CliRunner().invoke(app, ["audit", "verify", str(run_dir)])
    assert result.exit_code == 0
    assert "ledger keys NOT checked against certificates" in result.output


def test_keys_bind_ledger_command(run_dir: Path, tmp_path: Path) -> None:
    """A party binds its own key on its host, with its own certificate (no CA key needed)."""
    state = tmp_path / "bank-host"
    pki = run_dir / "pki"
    result = CliRunner().invoke(
        app,
        [
            "keys",
            "bind-ledger",
            "bank",
            "--state-dir",
            str(state),
            "--cert",
            str(pki / "parties" / "bank.crt"),
            "--cert-key",
            str(pki / "parties" / "bank.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    statement = json.loads((state / BINDING_FILE).read_text())["statement"]
    assert statement["ledger_public_key"] == PartyIdentity.load_or_create(state, "bank").signing_public_key.hex()
    # The operator binds the coordinator from the key folder.
    result = CliRunner().invoke(app, ["keys", "bind-ledger", "coordinator", "--state-dir", str(tmp_path / "coord"), "--keys", str(pki)])
    assert result.exit_code == 0, result.output
    # A certificate that names another node is refused.
    with pytest.raises(Exception, match="not node 'tax_bureau'"):
        bind_node(tmp_path / "x", "tax_bureau", pki / "parties" / "bank.crt", pki / "parties" / "bank.key")


def test_report_shows_bindings_and_run_closes(run_dir: Path, tmp_path: Path) -> None:
    from fedrisk.audit import build_report
    from fedrisk.audit.run_files import collect_ledgers

    ledgers, keys = collect_ledgers([run_dir])
    result = build_report(ledgers, tmp_path / "audit", trusted_keys=keys)
    doc = json.loads(result.json_path.read_text())
    assert result.ok and doc["key_bindings_checked"] is True
    assert {p["name"]: p["certificate_bound"] for p in doc["parties"]} == {n: True for n in NODES}
    assert sorted(c["node"] for c in doc["run_closes"]) == sorted(NODES)
    assert doc["exchanges"] == []  # a run-close record is no message
    html = result.html_path.read_text()
    assert "Run-close records" in html and "bound to its certificate" in html
    _swap_bank_ledger(run_dir)
    doc = json.loads(build_report(ledgers, tmp_path / "audit2", trusted_keys=keys).json_path.read_text())
    assert {p["name"]: p["certificate_bound"] for p in doc["parties"]}["bank"] is False
