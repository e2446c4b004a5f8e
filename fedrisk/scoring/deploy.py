"""Start scoring nodes and party scoring services as real processes (demo, tests, benchmarks).

Each service runs as ``python -m fedrisk.cli score serve|party-serve ...``: the
CLI process is the sandbox launcher, its child the sandboxed service. The
functions here return once the service reports READY, with the address it
chose; :meth:`ServiceProcess.stop` stops it gracefully.

Wiring the bank's node into a demo — one call, :func:`start_scoring_deployment`,
with the bundles written after training, or service by service::

    from fedrisk.scoring.deploy import start_party_service, start_scoring_node

    tax = start_party_service(bundle=..., trusted_keys=keys_json, table=tax_csv, allow_list=tax_ids,
                              tls_cert=..., tls_key=..., client_ca=pki.ca_cert)
    node = start_scoring_node(bundle=bank_bundle, trusted_keys=keys_json,
                              parties={"tax_bureau": tax.address, ...},
                              tls_cert=..., tls_key=..., ca=pki.ca_cert,
                              client_cert=pki.party_certs["bank"][0], client_key=pki.party_certs["bank"][1],
                              state_dir=run_dir / "scoring", bank_table=bank_csv)
    ...  # ScoringClient(node.address, ca=pki.ca_cert).score(...)
    node.stop(); tax.stop()

:func:`start_example_deployment` does it for an
:class:`~fedrisk.scoring.example.ExampleFederation`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrisk.errors import FedriskError

__all__ = ["Deployment", "ServiceProcess", "start_example_deployment", "start_party_service", "start_scoring_deployment", "start_scoring_node"]


@dataclass
class ServiceProcess:
    """A running ``fedrisk score serve|party-serve`` process."""

    name: str
    process: subprocess.Popen
    ready: dict[str, Any]
    stderr_lines: list[str] = field(default_factory=list)
    stopped: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """Public ``host:port``."""
        return str(self.ready["address"])

    @property
    def sandbox(self) -> str:
        """The isolation mechanism it runs under."""
        return str(self.ready.get("sandbox", ""))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (then SIGKILL); returns the exit code. Collects the final summary line."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            try:
                for line in self.process.stdout.read().splitlines():
                    if line.startswith("{"):
                        self.stopped = json.loads(line)
            except (OSError, ValueError):
                pass
            self.process.stdout.close()
        return int(self.process.returncode or 0)

    def kill(self) -> None:
        """Stop abruptly (a party going down): SIGKILL to the launcher and its sandbox."""
        if self.process.poll() is None:
            if _own_group(self.process):
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
            self.process.wait(10)
        private = self.ready.get("private_dir")
        if private:  # what the next launcher's sweep would do
            shutil.rmtree(private, ignore_errors=True)


def _own_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def _spawn(name: str, args: list[str], timeout: float) -> ServiceProcess:
    argv = [sys.executable, "-m", "fedrisk.cli", "score", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            del lines[:-200]

    threading.Thread(target=drain, daemon=True, name=f"{name}-stderr").start()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    ready: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            ready = json.loads(line)
            break
    if ready is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        time.sleep(0.1)
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise FedriskError(f"{name} did not start: {(errors or lines or ['no output'])[-1]}")
    return ServiceProcess(name=name, process=proc, ready=ready, stderr_lines=lines)


def _keys_arg(trusted_keys: str | Path | Mapping[str, str]) -> str:
    if isinstance(trusted_keys, Mapping):
        return ",".join(trusted_keys.values())
    return str(trusted_keys)


def start_party_service(
    *,
    bundle: str | Path,
    trusted_keys: str | Path | Mapping[str, str],
    table: str | Path,
    tls_cert: str | Path,
    tls_key: str | Path,
    client_ca: str | Path,
    allow_list: str | Path | None = None,
    allow_any_known: bool = False,
    listen: str = "127.0.0.1:0",
    sandbox: str = "auto",
    name: str = "party",
    timeout: float = 60.0,
    crl: str | Path | None = None,
) -> ServiceProcess:
    """Start a feature holder's party scoring service; returns once it serves."""
    args = ["party-serve", "--bundle", str(bundle), "--trusted-keys", _keys_arg(trusted_keys), "--table", str(table),
            "--tls-cert", str(tls_cert), "--tls-key", str(tls_key), "--client-ca", str(client_ca), "--listen", listen, "--sandbox", sandbox]  # fmt: skip
    if crl is not None:
        args += ["--crl", str(crl)]
    if allow_list is not None:
        args += ["--allow-list", str(allow_list)]
    if allow_any_known:
        args += ["--allow-any-known"]
    return _spawn(name, args, timeout)


def start_scoring_node(
    *,
    bundle: str | Path,
    trusted_keys: str | Path | Mapping[str, str],
    parties: Mapping[str, str],
    tls_cert: str | Path,
    tls_key: str | Path,
    ca: str | Path,
    client_cert: str | Path,
    client_key: str | Path,
    state_dir: str | Path | None,
    policy: str | Path | None = None,
    bank_table: str | Path | None = None,
    client_ca: str | Path | None = None,
    listen: str = "127.0.0.1:0",
    sandbox: str = "auto",
    timeout: float = 60.0,
    crl: str | Path | None = None,
) -> ServiceProcess:
    """Start the bank's scoring node (``parties``: name → ``host:port``); returns once it serves."""
    args = ["serve", "--bundle", str(bundle), "--trusted-keys", _keys_arg(trusted_keys), "--tls-cert", str(tls_cert), "--tls-key", str(tls_key),
            "--ca", str(ca), "--client-cert", str(client_cert), "--client-key", str(client_key), "--listen", listen, "--sandbox", sandbox]  # fmt: skip
    for party, address in parties.items():
        args += ["--party", f"{party}={address}"]
    args += ["--state-dir", str(state_dir)] if state_dir is not None else ["--no-register"]
    if policy is not None:
        args += ["--policy", str(policy)]
    if bank_table is not None:
        args += ["--bank-table", str(bank_table)]
    if client_ca is not None:
        args += ["--client-ca", str(client_ca)]
    if crl is not None:
        args += ["--crl", str(crl)]
    return _spawn("scoring node", args, timeout)


@dataclass
class Deployment:
    """A scoring node and its party services."""

    node: ServiceProcess
    parties: dict[str, ServiceProcess]

    def stop(self) -> None:
        """Stop the node, then the parties."""
        self.node.stop()
        for service in self.parties.values():
            service.stop()


def start_scoring_deployment(
    *,
    pki: Any,
    trusted_keys: str | Path | Mapping[str, str],
    bank_bundle: str | Path,
    party_bundles: Mapping[str, str | Path],
    party_tables: Mapping[str, str | Path],
    allow_lists: Mapping[str, str | Path],
    state_dir: str | Path | None,
    bank_table: str | Path | None = None,
    bank: str = "bank",
    policy: str | Path | None = None,
    sandbox: str = "auto",
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    require_client_cert: bool = False,
) -> Deployment:
    """Start every feature holder's party scoring service and the bank's node on loopback.

    Parameters
    ----------
    pki : FederationPKI
        The federation's PKI (:func:`fedrisk.crypto.pki.create_federation_pki`, with a
        client certificate for ``bank``). Server certificates ``scoring-node`` and
        ``<party>-scoring`` are issued into it when missing. Its CRL (``crl.pem``,
        signed when missing) is enforced on every scoring link.
    trusted_keys : path or mapping
        Signers allowed for the bundles (``coordinator/signing_keys.json`` or name → hex).
    bank_bundle, party_bundles
        The signed bundles written after training (the bank's; each feature holder's).
    party_tables, allow_lists
        Each feature holder's own table and the IDs it may answer for (the trained
        intersection, one per line).
    state_dir : path or None
        Where the node keeps its application register (None: record nothing).
    bank_table : path, optional
        The bank's own table, for applications that do not carry its features.

    Returns
    -------
    Deployment
        ``.node.address`` is the scoring node's ``host:port``; ``.stop()`` stops everything.
    """
    from fedrisk.crypto.pki import CRL_FILE, create_server_cert, write_crl

    crl = Path(pki.folder) / CRL_FILE
    if not crl.exists():  # a PKI written before CRLs were: an empty one, signed by its CA
        write_crl(pki.folder, [])

    def server_cert(name: str) -> tuple[Path, Path]:
        if name not in pki.server_certs:
            create_server_cert(pki, name, list(hosts))
        return pki.server_certs[name]

    started: dict[str, ServiceProcess] = {}
    try:
        for party, bundle in party_bundles.items():
            cert, key = server_cert(f"{party}-scoring")
            started[party] = start_party_service(
                bundle=bundle, trusted_keys=trusted_keys, table=party_tables[party], allow_list=allow_lists[party],
                tls_cert=cert, tls_key=key, client_ca=pki.ca_cert, sandbox=sandbox, name=party, crl=crl,
            )  # fmt: skip
        cert, key = server_cert("scoring-node")
        ccert, ckey = pki.party_certs[bank]
        node = start_scoring_node(
            bundle=bank_bundle, trusted_keys=trusted_keys, parties={p: s.address for p, s in started.items()},
            tls_cert=cert, tls_key=key, ca=pki.ca_cert, client_cert=ccert, client_key=ckey, state_dir=state_dir,
            bank_table=bank_table, sandbox=sandbox, policy=policy, client_ca=pki.ca_cert if require_client_cert else None, crl=crl,
        )  # fmt: skip
    except BaseException:
        for service in started.values():
            service.stop()
        raise
    return Deployment(node=node, parties=started)


def start_example_deployment(
    example: Any, state_dir: str | Path | None, *, sandbox: str = "auto", policy: str | Path | None = None, require_client_cert: bool = False
) -> Deployment:
    """Start both party services and the bank's node of an :class:`~fedrisk.scoring.example.ExampleFederation`."""
    from fedrisk.scoring.example import FEATURE_HOLDERS

    return start_scoring_deployment(
        pki=example.pki, trusted_keys=example.trusted_keys, bank_bundle=example.bundles["bank"],
        party_bundles={p: example.bundles[p] for p in FEATURE_HOLDERS}, party_tables={p: example.tables[p] for p in FEATURE_HOLDERS},
        allow_lists=example.allow_lists, state_dir=state_dir, bank_table=example.tables["bank"], policy=policy, sandbox=sandbox,
        require_client_cert=require_client_cert,
    )  # fmt: skip
