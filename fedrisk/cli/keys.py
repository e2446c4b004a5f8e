"""``fedrisk keys``: the federation operator's key administration.

``init`` creates the CA, the SuperLink's certificate, the coordinator's
certificate and every party's TLS certificate and Flower node key;
``add-party`` issues keys for a new (or re-admitted) party; ``bind-ledger``
binds a node's ledger signing key to its certificate; ``register`` tells a
running SuperLink which node keys may join; ``revoke`` takes a party out
(registry, revocation list, CRL, and the SuperLink when given); ``list``
shows who holds what.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from fedrisk.errors import FedriskError

keys_app = typer.Typer(help="Federation keys: CA, TLS certificates, node keys, revocation.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

KEYS_OPTION = typer.Option(Path("fedrisk-keys"), "--keys", "-k", envvar="FEDRISK_KEYS", help="The federation key folder (from `fedrisk keys init`).")


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {str(err).splitlines()[0] if str(err) else type(err).__name__}", highlight=False)
    raise typer.Exit(code=2)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _admin(keys, superlink: str, root_certificates: Path | None, insecure: bool):
    from fedrisk.federation.superlink_admin import SuperLinkAdmin

    ca = root_certificates if root_certificates is not None else keys.ca_cert
    return SuperLinkAdmin(superlink, None if insecure else ca, keys.folder / "flwr-admin", insecure=insecure)


@keys_app.command("init")
def keys_init(
    folder: Path = typer.Argument(..., help="Folder to create (0700); holds the CA key: keep it offline."),
    parties: str = typer.Option(..., "--parties", help="Comma-separated party names, e.g. bank,tax_bureau,platform."),
    hosts: str = typer.Option("127.0.0.1,localhost", "--hosts", help="Comma-separated names/IPs the SuperLink is reached at (certificate SAN)."),
    days: int = typer.Option(365, help="Certificate validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace a federation already in FOLDER."),
) -> None:
    """Create the CA, SuperLink certificate, party certificates and node keys (0600), and the fingerprint manifest."""
    from fedrisk.crypto.pki_admin import init_federation_keys

    try:
        if not _split(parties):
            raise FedriskError("--parties: name at least one party, e.g. bank,tax_bureau,platform")
        keys = init_federation_keys(folder, _split(parties), hosts=_split(hosts), days=days, force=force)
    except FedriskError as err:
        _fail(err)
    console.print(f"federation keys in {keys.folder}: CA {keys.registry['ca_sha256'][:16]}…, parties {', '.join(keys.active_parties())}")
    console.print("hand each party: ca.crt, nodes/<name> (its node key) and, for scoring, parties/<name>.crt/.key")


@keys_app.command("add-party")
def keys_add_party(
    name: str = typer.Argument(..., help="The new party's name (or a revoked party to re-admit with new keys)."),
    keys_dir: Path = KEYS_OPTION,
    days: int | None = typer.Option(None, help="Certificate validity in days (default: the federation's)."),
) -> None:
    """Issue a party's TLS certificate and node key pair and add it to the registry."""
    from fedrisk.crypto.pki_admin import add_party

    try:
        keys = add_party(keys_dir, name, days=days)
    except FedriskError as err:
        _fail(err)
    entry = keys.party(name)
    console.print(f"party {name} (generation {entry['generation']}): node key {entry['node_key_sha256'][:16]}…, cert {entry['cert_sha256'][:16]}…")


@keys_app.command("register")
def keys_register(
    names: list[str] | None = typer.Argument(None, help="Parties to register (default: every active party)."),
    keys_dir: Path = KEYS_OPTION,
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the SuperLink's Control API."),
    root_certificates: Path | None = typer.Option(None, help="CA of the SuperLink (default: the federation's ca.crt)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP Control API (debugging only)."),
) -> None:
    """Allow parties' node keys to join a running SuperLink (Flower node authentication)."""
    from fedrisk.crypto.pki_admin import load_federation_keys

    try:
        keys = load_federation_keys(keys_dir)
        admin = _admin(keys, superlink, root_certificates, insecure)
        for name in names or keys.active_parties():
            node_id = admin.register(keys.node_public_key(name), name)
            keys.record_registration(name, superlink, node_id)
            console.print(f"registered {name}: node id {node_id}")
    except FedriskError as err:
        _fail(err)


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="The party to revoke."),
    keys_dir: Path = KEYS_OPTION,
    reason: str = typer.Option("unspecified", help="Why (kept in the registry and the revocation list)."),
    superlink: str | None = typer.Option(None, "--superlink", help="Also unregister the node key from this SuperLink's Control API (HOST:PORT)."),
    root_certificates: Path | None = typer.Option(None, help="CA of the SuperLink (default: the federation's ca.crt)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP Control API (debugging only)."),
) -> None:
    """Revoke a party: registry, revocation list and CRL; with --superlink, its node is refused from now on."""
    from fedrisk.crypto.pki_admin import load_federation_keys, revoke_party

    try:
        keys = load_federation_keys(keys_dir)
        if keys.status(name) == "active":
            record = revoke_party(keys_dir, name, reason=reason)
            console.print(f"revoked {name} (node key {record['node_key_sha256'][:16]}…, cert serial {record['cert_serial']})")
        elif superlink is None:
            raise FedriskError(f"party {name!r} is already revoked (since {keys.party(name).get('revoked_at')})")
        if superlink is not None:
            keys = load_federation_keys(keys_dir)
            entry = keys.party(name)
            admin = _admin(keys, superlink, root_certificates, insecure)
            node_id = entry.get("registrations", {}).get(superlink)
            if node_id is None:
                node_id = admin.node_id_of(keys.file_of(name, "node_public_key"))
            if node_id is None:
                console.print(f"{superlink} has no registered node with {name}'s key (nothing to unregister)")
            else:
                try:
                    admin.unregister(int(node_id))
                except FedriskError as err:
                    raise FedriskError(f"revoked {name} in {keys.folder}, but {err}; rerun this command") from None
                console.print(f"unregistered node {node_id} of {name} from {superlink}: it is refused from now on")
    except FedriskError as err:
        _fail(err)


@keys_app.command("revoke-cert")
def keys_revoke_cert(
    cert: Path = typer.Argument(..., help="The certificate to revoke, e.g. servers/tax_bureau-scoring.crt (a party's scoring service)."),
    keys_dir: Path = KEYS_OPTION,
    reason: str = typer.Option("unspecified", help="Why (kept in the revocation list)."),
) -> None:
    """Revoke one certificate the federation CA issued (revocation list and CRL); scoring links refuse it."""
    from fedrisk.crypto.pki import revoke_certificate

    try:
        record = revoke_certificate(keys_dir, cert, reason=reason)
    except FedriskError as err:
        _fail(err)
    console.print(f"revoked certificate {record['common_name']!r} (serial {record['cert_serial']}); {keys_dir / 'crl.pem'} re-signed", highlight=False)


@keys_app.command("bind-ledger")
def keys_bind_ledger(
    name: str = typer.Argument(..., help="The node: a party's name, or coordinator."),
    state_dir: Path = typer.Option(..., "--state-dir", help="The node's private state folder (its ledger and identity key live there)."),
    keys_dir: Path = KEYS_OPTION,
    cert: Path | None = typer.Option(None, "--cert", help="The node's certificate (default: from the key folder)."),
    cert_key: Path | None = typer.Option(None, "--cert-key", help="Its private key, 0600 (default: from the key folder)."),
) -> None:
    """Bind the node's ledger signing key to its federation certificate (writes ledger_key_binding.json).

    A party runs this on its own host with --cert/--cert-key (its parties/<name>.crt/.key);
    the operator runs it for the coordinator (and for local federations) from the key folder.
    `fedrisk audit verify --ca ca.crt` then accepts only ledgers signed by a bound key.
    """
    from fedrisk.federation.ledger_keys import bind_ledger_keys, bind_node

    try:
        if (cert is None) != (cert_key is None):
            raise FedriskError("pass both --cert and --cert-key, or neither (then the key folder's are used)")
        if cert is not None and cert_key is not None:
            path = bind_node(state_dir, name, cert, cert_key)
        else:
            path = bind_ledger_keys(keys_dir, {name: state_dir})[name]
    except FedriskError as err:
        _fail(err)
    binding = json.loads(path.read_text())["statement"]
    console.print(f"{name}: ledger key {binding['ledger_key_id']} bound to certificate {binding['cert_sha256'][:16]}… in {path}")


@keys_app.command("list")
def keys_list(
    keys_dir: Path = KEYS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the registry's parties as one JSON object."),
) -> None:
    """Show every party: status, generation, fingerprints, certificate expiry."""
    from fedrisk.crypto.pki_admin import load_federation_keys

    try:
        keys = load_federation_keys(keys_dir)
    except FedriskError as err:
        _fail(err)
    parties = keys.registry["parties"]
    if as_json:
        sys.stdout.write(json.dumps({"folder": str(keys.folder), "ca_sha256": keys.registry["ca_sha256"], "parties": parties}, sort_keys=True) + "\n")
        return
    sys.stdout.write(f"CA {keys.registry['ca_sha256']}  SuperLink hosts {', '.join(keys.registry['hosts'])}\n")
    for name, e in sorted(parties.items()):
        sys.stdout.write(
            f"{name:<16} {e['status']:<8} gen {e['generation']}  node key {e['node_key_sha256'][:16]}  "
            f"cert {e['cert_sha256'][:16]}  until {e['cert_not_after'][:10]}\n"
        )
