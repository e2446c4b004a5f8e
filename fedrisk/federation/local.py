"""A whole federation on this machine: SuperLink, one SuperNode per party, over TLS on loopback.

:class:`LocalFederation` starts real processes — Flower's SuperLink, each
party's warm process and its SuperNode — on 127.0.0.1 with ports it picks,
with a CA and certificates generated into the run folder, submits the run
with ``flwr run`` and stops every process it started, also on failure or
Ctrl-C.  ``flwr``'s own config lives in ``<run-dir>/flwr`` (``FLWR_HOME``),
never in the user's home.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedrisk.errors import FedriskError, PartyUnavailableError
from fedrisk.parties.settings import PartySettings, ensure_private_dir

APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedrisk-run"
version = "1.0.0"
description = "A fedrisk federation run"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedrisk"

[tool.flwr.app.components]
serverapp = "fedrisk.federation.server_app:app"
clientapp = "fedrisk.parties.client_app:app"

[tool.flwr.app.config]
{config}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class LocalFederation:
    """Start, run and stop a federation of local processes.

    Parameters
    ----------
    run_dir : Path
        The run folder (``runs/<run-id>``); everything is written below it.
    parties : list[PartySettings]
        One entry per party; each gets its warm process and a SuperNode.
    run_config : dict
        The ServerApp's run config (``mode``, ``num-rounds``...).
    tls : bool
        TLS on the Fleet and Control APIs (default; turning it off is for debugging).
    node_auth : bool
        Flower SuperNode authentication (default, needs TLS): each party's
        node key is registered with the SuperLink before its SuperNode starts,
        and an unregistered node is refused.
    """

    run_dir: Path
    parties: list[PartySettings]
    run_config: dict
    tls: bool = True
    node_auth: bool = True
    log: Callable[[str], None] = lambda line: None
    processes: list[_Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.logs_dir = self.run_dir / "logs"
        self.bin_dir = Path(sys.executable).parent

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.run_dir / "flwr")
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        # Flower's SuperExec looks for new ClientApp/ServerApp tasks once a second by default.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        # Several parties share this machine's cores: one compute thread each.
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{name}.log"
        handle = open(log_path, "ab")
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=self._env(), cwd=self.run_dir, start_new_session=True
        )
        handle.close()
        proc = _Process(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def _check_alive(self) -> None:
        for proc in self.processes:
            code = proc.popen.poll()
            if code is not None:
                tail = proc.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise PartyUnavailableError(
                    f"{proc.name} exited with code {code}: {' | '.join(tail) if tail else 'no output'}"
                )

    def _wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise PartyUnavailableError(f"{what} did not come up within {timeout:.0f} s (see {self.logs_dir})")
            time.sleep(0.1)

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fleet_port, self.control_port = free_port(), free_port()
        pki = None
        if self.node_auth and not self.tls:
            raise FedriskError("node authentication needs TLS (Flower refuses it on an insecure SuperLink)")
        if self.tls:
            from fedrisk.crypto.pki import create_federation_pki

            pki = create_federation_pki(self.run_dir / "pki", parties=[p.name for p in self.parties])
            self.ca_cert = Path(pki.ca_cert)
        self._write_flwr_config()
        self._write_app()

        for party in self.parties:
            state = ensure_private_dir(Path(party.state_dir))
            settings_path = state / "settings.json"
            party.write(settings_path)
            socket_path = state / "party.sock"
            ready = state / "party.ready"
            ready.unlink(missing_ok=True)
            self._spawn(
                f"party-{party.name}",
                [sys.executable, "-m", "fedrisk.parties.service", "--settings", str(settings_path), "--socket", str(socket_path), "--ready-file", str(ready)],
            )
        superlink = [
            str(self.bin_dir / "flower-superlink"),
            "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
            "--host", "127.0.0.1",
            "--port", str(self.control_port),
            "--disable-runtime-dependency-installation",
            "--database", str(self.run_dir / "flwr" / "superlink.db"),
        ]
        if pki is not None:
            superlink += ["--ssl-ca-certfile", str(pki.ca_cert), "--ssl-certfile", str(pki.superlink_cert), "--ssl-keyfile", str(pki.superlink_key)]
        else:
            superlink.append("--insecure")
        if self.node_auth:
            superlink.append("--enable-supernode-auth")
        self._spawn("superlink", superlink)
        self._wait_for("SuperLink", lambda: _port_open(self.fleet_port) and _port_open(self.control_port))
        node_keys = self._register_node_keys() if self.node_auth else {}

        for party in self.parties:
            state = Path(party.state_dir)
            self._wait_for(f"party process {party.name}", (state / "party.ready").exists)
            node_config = f"party='{party.name}' party-socket='{state / 'party.sock'}' party-state-dir='{state}'"
            argv = [
                sys.executable, "-m", "fedrisk.parties.supernode",
                "--superlink", f"127.0.0.1:{self.fleet_port}",
                "--node-config", node_config,
                "--port", str(free_port()),
            ]
            argv += ["--root-certificates", str(pki.ca_cert)] if pki is not None else ["--insecure"]
            if party.name in node_keys:
                argv += ["--auth-supernode-private-key", str(node_keys[party.name])]
            self._spawn(f"supernode-{party.name}", argv)
        self.log(
            f"federation up: SuperLink 127.0.0.1:{self.fleet_port}, {len(self.parties)} parties, "
            f"TLS {'on' if self.tls else 'off'}, node authentication {'on' if self.node_auth else 'off'}"
        )

    def _register_node_keys(self) -> dict[str, Path]:
        """Create each party's node key and register its public half with the SuperLink."""
        from fedrisk.crypto.pki import create_node_auth_keypair

        keys: dict[str, Path] = {}
        for party in self.parties:
            private, public = create_node_auth_keypair(ensure_private_dir(self.run_dir / "pki" / "nodes"), party.name)
            completed = subprocess.run(
                [str(self.bin_dir / "flwr"), "supernode", "register", str(public), "local"],
                env=self._env(), cwd=self.run_dir, capture_output=True, text=True, timeout=120,
            )
            if completed.returncode != 0:
                tail = (completed.stdout + completed.stderr).strip().splitlines()[-1:]
                raise FedriskError(f"could not register node key of {party.name}: {' '.join(tail)}")
            keys[party.name] = private
        return keys

    def _write_flwr_config(self) -> None:
        home = ensure_private_dir(self.run_dir / "flwr")
        lines = ["[superlink]", 'default = "local"', "", "[superlink.local]", f'address = "127.0.0.1:{self.control_port}"']
        if self.tls:
            lines.append(f'root-certificates = "{self.ca_cert}"')
        else:
            lines.append("insecure = true")
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    def _write_app(self) -> None:
        app_dir = self.run_dir / "app"
        if app_dir.exists():
            shutil.rmtree(app_dir)
        app_dir.mkdir(parents=True)
        config = dict(self.run_config)
        config.setdefault("run-dir", str(self.run_dir))
        config.setdefault("fedrisk-run-id", self.run_dir.name)
        config["parties"] = ",".join(p.name for p in self.parties)
        body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in sorted(config.items()))
        (app_dir / "pyproject.toml").write_text(APP_PYPROJECT.format(config=body))
        (app_dir / "README.md").write_text("Generated by fedrisk for one run.\n")

    def run(self, *, run_config: dict | None = None, timeout: float = 3600.0) -> dict:
        """Submit a run with ``flwr run`` and wait for the coordinator's result.

        ``run_config`` replaces the federation's run config for this run (the
        same processes can serve several runs, e.g. encrypted then plaintext).
        """
        if run_config is not None:
            self.run_config = dict(run_config)
            self._write_app()
        result_path = self.run_dir / "coordinator" / "result.json"
        result_path.unlink(missing_ok=True)
        proc = self._spawn("flwr-run", [str(self.bin_dir / "flwr"), "run", str(self.run_dir / "app"), "local", "--stream"])
        deadline = time.monotonic() + timeout
        try:
            while not result_path.exists():
                self._check_alive_except(proc)
                if proc.popen.poll() is not None and not result_path.exists():
                    time.sleep(0.5)  # the result may land just after the stream closes
                    if not result_path.exists():
                        tail = proc.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                        raise FedriskError(f"the run ended without a result: {' | '.join(tail)}")
                if time.monotonic() > deadline:
                    raise PartyUnavailableError(f"the run did not finish within {timeout:.0f} s (see {self.logs_dir})")
                time.sleep(0.2)
        finally:
            _terminate(proc.popen)
            self.processes.remove(proc)
        result = json.loads(result_path.read_text())
        if result.get("status") != "ok":
            raise FedriskError(result.get("error", "the coordinator failed"))
        return result

    def _check_alive_except(self, skip: _Process) -> None:
        for proc in self.processes:
            if proc is skip:
                continue
            code = proc.popen.poll()
            if code is not None:
                tail = proc.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise PartyUnavailableError(f"{proc.name} exited with code {code}: {' | '.join(tail)}")

    def stop(self) -> None:
        """Stop every process this federation started (SIGTERM, then SIGKILL)."""
        for proc in reversed(self.processes):
            _terminate(proc.popen)
        self.processes.clear()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _terminate(popen: subprocess.Popen, grace: float = 5.0) -> None:
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait(timeout=grace)
