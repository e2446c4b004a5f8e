"""Bind every node's ledger signing key to its certificate from the federation CA (``fedrisk keys bind-ledger``).

The glue between three layers, which is why it lives here and in none of them:
the node's Ed25519 identity (:mod:`fedrisk.parties.identity`), its certificate
in the federation's key folder (:mod:`fedrisk.crypto.pki_admin`) and the
binding format the ledger verifier checks (:mod:`fedrisk.audit.key_binding`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedrisk.audit.key_binding import BINDING_FILE, make_binding
from fedrisk.crypto.keyfiles import read_secret_file, write_public_file
from fedrisk.crypto.pki_admin import FederationKeys, load_federation_keys
from fedrisk.parties.identity import PartyIdentity
from fedrisk.parties.settings import ensure_private_dir

__all__ = ["bind_ledger_keys", "bind_node"]


def bind_node(state_dir: str | os.PathLike[str], name: str, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Path:
    """Bind the ledger key kept in a node's state folder to its certificate.

    Loads the node's Ed25519 identity from ``state_dir`` (creating it, 0600,
    if the node has not started yet), signs the binding with the certificate
    key at ``key_path`` (read only if it is 0600) and writes
    ``<state_dir>/ledger_key_binding.json``. Returns that path.
    """
    folder = ensure_private_dir(Path(state_dir))
    identity = PartyIdentity.load_or_create(folder, name)
    binding = make_binding(name, identity.signing_public_key, Path(cert_path).read_bytes(), read_secret_file(key_path))
    return write_public_file(folder / BINDING_FILE, (json.dumps(binding, indent=2, sort_keys=True) + "\n").encode())


def bind_ledger_keys(keys: FederationKeys | str | os.PathLike[str], state_dirs: dict[str, str | os.PathLike[str]]) -> dict[str, Path]:
    """Bind each node's ledger signing key to its certificate in this key folder.

    Parameters
    ----------
    keys : FederationKeys or path
        The federation key folder (``fedrisk keys init``).
    state_dirs : dict
        Node name (a party, or ``coordinator``) to its private state folder;
        the node's Ed25519 identity there is created (0600) if it does not exist yet.

    Returns
    -------
    dict
        Node name to the ``ledger_key_binding.json`` written in its state folder.
    """
    if not isinstance(keys, FederationKeys):
        keys = load_federation_keys(keys)
    out: dict[str, Path] = {}
    for name, state_dir in state_dirs.items():
        cert, key = keys.ledger_certificate(name)
        out[name] = bind_node(state_dir, name, cert, key)
    return out
