"""Parties on separate hosts, for real: each in its own Linux network namespace.

Three namespaces — the operator's SuperLink, the bank, the tax bureau — each
with one veth interface on a private subnet, joined by a bridge in the root
namespace (where this test, as the analyst, submits the run). Nothing is
shared over loopback: the SuperLink listens on its namespace's address only,
each party reaches it across its veth, and the test checks the interfaces'
byte counters. The commands are the documented multi-host ones
(docs/DEPLOYMENT.md): ``fedrisk keys init --hosts``, fedrisk's SuperLink entry
point with ``--no-bundles`` (Flower's own per-object calls and SQLite state, as a
stock ``flower-superlink``; the run's result comes back through ``PullArtifacts``)
with TLS and node authentication, ``fedrisk keys register``, ``fedrisk node start``
per party, ``fedrisk train --superlink``.

Skipped, with the reason, where namespaces cannot be made (not root, no
iproute2, or a sandbox without CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from node_cli import node_start_argv

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent

FEDERATION = """
[federation]
name = "netns"
mode = "vertical"
algorithm = "vertical_lr"

[algorithm]
epochs = 1

[[parties]]
name = "bank"
role = "label_holder"
data = "/on/the/bank/host/bank.csv"
id-column = "id"
label-column = "y"

[[parties]]
name = "tax_bureau"
role = "feature_holder"
data = "/on/the/tax/host/tax.csv"
id-column = "id"
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Namespaces:
    """A bridge in the root namespace and one namespace per host, each with a veth on the bridge."""

    def __init__(self, hosts: list[str]) -> None:
        tag = f"{os.getpid() % 10000}{random.randint(0, 9)}"
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 250)}"
        self.bridge = f"frbr{tag}"
        self.names = {host: f"fr{tag}-{host}" for host in hosts}
        self.addresses = {host: f"{self.subnet}.{i + 1}" for i, host in enumerate(hosts)}
        self.links: dict[str, str] = {}
        self.root_address = f"{self.subnet}.254"

    def create(self) -> None:
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.root_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (host, ns) in enumerate(self.names.items()):
            outside, inside = f"{self.bridge}v{i}", f"{self.bridge}p{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("link", "set", inside, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.links[host] = inside

    def bytes(self, host: str) -> int:
        """Bytes sent plus received on the host's veth (not its loopback)."""
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.names[host],
                "cat",
                f"/sys/class/net/{self.links[host]}/statistics/rx_bytes",
                f"/sys/class/net/{self.links[host]}/statistics/tx_bytes",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        return sum(int(v) for v in out)

    def spawn(self, host: str, argv: list[str], log: Path, cwd: Path, env: dict) -> subprocess.Popen:
        with open(log, "ab") as handle:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.names[host], *argv],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    def destroy(self) -> None:
        for ns in self.names.values():
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _namespaces_or_skip(hosts: list[str]) -> Namespaces:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed (apt-get install iproute2; `make system-deps` does it as root)")
    probe = f"frprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip() or made.stdout.strip()}")
    _ip("netns", "del", probe, check=False)
    namespaces = Namespaces(hosts)
    try:
        namespaces.create()
    except subprocess.CalledProcessError as err:
        namespaces.destroy()
        pytest.skip(f"cannot wire namespaces with veth and a bridge here: {err.stderr.strip()}")
    return namespaces


def _wait_port(namespaces: Namespaces, host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    check = f"import socket; socket.create_connection(('{namespaces.addresses[host]}', {port}), timeout=1)"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        if subprocess.run([sys.executable, "-c", check], capture_output=True, check=False, timeout=30).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{host}:{port} did not open: {log.read_text()[-2000:]}")


def test_parties_in_separate_network_namespaces_train_through_the_superlink(tmp_path, default_credit_dir):
    from fedrisk.parties.party_node import node_env

    namespaces = _namespaces_or_skip(["superlink", "bank", "tax"])
    procs: list[subprocess.Popen] = []
    try:
        superlink_ip = namespaces.addresses["superlink"]
        fleet, control = 9092, 9093  # the SuperLink has its namespace's ports to itself
        keys = tmp_path / "operator" / "fed"
        keys.parent.mkdir()
        init = subprocess.run(
            [sys.executable, "-m", "fedrisk.cli", "keys", "init", str(keys), "--parties", "bank,tax_bureau", "--hosts", superlink_ip],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert init.returncode == 0, init.stderr
        env = node_env(tmp_path / "operator" / "flwr")
        superlink_log = tmp_path / "superlink.log"
        procs.append(
            namespaces.spawn(
                "superlink",
                [
                    sys.executable,
                    "-m",
                    "fedrisk.federation.superlink",
                    "--no-bundles",  # Flower's own per-object calls, as with a stock flower-superlink
                    "--results-dir",
                    str(tmp_path / "operator" / "results"),
                    "--fleet-api-address",
                    f"{superlink_ip}:{fleet}",
                    "--host",
                    superlink_ip,
                    "--port",
                    str(control),
                    "--disable-runtime-dependency-installation",
                    "--database",
                    str(tmp_path / "operator" / "superlink.db"),
                    "--ssl-ca-certfile",
                    str(keys / "ca.crt"),
                    "--ssl-certfile",
                    str(keys / "superlink.crt"),
                    "--ssl-keyfile",
                    str(keys / "superlink.key"),
                    "--enable-supernode-auth",
                ],
                superlink_log,
                tmp_path / "operator",
                env,
            )
        )
        _wait_port(namespaces, "superlink", control, procs[0], superlink_log)
        # The operator registers both node keys from the analyst's side of the bridge.
        registered = subprocess.run(
            [sys.executable, "-m", "fedrisk.cli", "keys", "register", "--keys", str(keys), "--superlink", f"{superlink_ip}:{control}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert registered.returncode == 0, registered.stderr

        guest = pd.read_csv(default_credit_dir / "default_credit_hetero_guest.csv").head(600)
        host = pd.read_csv(default_credit_dir / "default_credit_hetero_host.csv").iloc[100:700]
        for name, ns_host, table, frame, label in (("bank", "bank", "bank.csv", guest, "y"), ("tax_bureau", "tax", "tax.csv", host, None)):
            home = tmp_path / ns_host
            home.mkdir()
            frame.to_csv(home / table, index=False)
            shutil.copy2(keys / "ca.crt", home / "ca.crt")  # what the operator hands each party
            shutil.copy2(keys / "nodes" / name, home / "node.key")
            argv = node_start_argv(
                name=name,
                role="label_holder" if label else "feature_holder",
                data=home / table,
                label_column=label,
                superlink=f"{superlink_ip}:{fleet}",
                root_certificates=home / "ca.crt",
                auth_key=home / "node.key",
                state_dir=home / "state",
                extra=("--log-format", "json"),
            )
            procs.append(namespaces.spawn(ns_host, argv, tmp_path / f"{ns_host}.log", home, node_env(home / "flwr")))
        before = {h: namespaces.bytes(h) for h in ("bank", "tax")}

        (tmp_path / "analyst").mkdir()
        (tmp_path / "analyst" / "federation.toml").write_text(FEDERATION)
        train = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedrisk.cli",
                "train",
                str(tmp_path / "analyst" / "federation.toml"),
                "--json",
                "--runs-dir",
                str(tmp_path / "analyst" / "runs"),
                "--superlink",
                f"{superlink_ip}:{control}",
                "--root-certificates",
                str(keys / "ca.crt"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=tmp_path / "analyst",
        )
        assert train.returncode == 0, train.stderr[-3000:] + (tmp_path / "bank.log").read_text()[-2000:]
        summary = json.loads(train.stdout.strip().splitlines()[-1])
        # The overlap is the bank's to know (its own host), never the coordinator's.
        assert summary["mode"] == "vertical" and summary["intersection"] is None and "intersection" not in summary["coordinator"]
        from fedrisk.parties.alignment import read_alignment_report

        assert read_alignment_report(tmp_path / "bank" / "state", summary["coordinator"]["run_id"])["intersection"] == {"tax_bureau": 500}
        for h in ("bank", "tax"):
            assert namespaces.bytes(h) - before[h] > 50_000, f"{h}: no traffic crossed its interface"
        # Each node logged JSON lines, joined over its own interface, and keeps its ledger on its own host.
        joined = [json.loads(line) for line in (tmp_path / "tax.log").read_text().splitlines() if line.startswith("{")]
        assert any(f"joined {superlink_ip}:{fleet}" in entry["message"] for entry in joined)
        for ns_host in ("bank", "tax"):
            assert (tmp_path / ns_host / "state" / "ledger.sqlite").exists()
        # The coordinator's status file is on the SuperLink's host, in the run folder the analyst named.
        status = subprocess.run(
            [sys.executable, "-m", "fedrisk.cli", "status", str(tmp_path / "operator" / "runs" / Path(summary["run_dir"]).name), "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert json.loads(status.stdout.strip().splitlines()[-1])["state"] == "finished", status.stderr
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        namespaces.destroy()
