"""One party's node: its warm party process and its Flower SuperNode, started and stopped together.

Used by the local federation runner (every party on this machine) and by
``fedrisk node start`` (one party on its own host, joining a SuperLink
elsewhere). The party process keeps the table and keys warm and listens on a
Unix socket in the party's private state folder; the SuperNode connects to the
SuperLink's Fleet API over TLS, authenticates with the party's node key, and
relays each message to the party process through the fedrisk ClientApp.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedrisk.errors import ConfigError, PartyUnavailableError
from fedrisk.parties.settings import PartySettings, ensure_private_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def exited(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "no output"
        return " | ".join(text) if text else "no output"

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, then SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=grace)


def spawn(name: str, argv: list[str], *, logs_dir: Path, env: dict[str, str], cwd: Path) -> ManagedProcess:
    """Start ``argv`` in a new session (so a whole process tree can be stopped) logging to a file."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{name}.log"
    with open(log_path, "ab") as handle:
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return ManagedProcess(name, popen, log_path)


def node_env(flwr_home: Path) -> dict[str, str]:
    """Environment of fedrisk's Flower processes: their own FLWR_HOME, fast task polling."""
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    # Flower's SuperExec looks for new ClientApp/ServerApp tasks once a second by default.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
    # Several parties may share this machine's cores: one compute thread each.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class PartyNode:
    """Start and stop one party's process and SuperNode.

    Parameters
    ----------
    settings : PartySettings
        The party's own configuration (name, role, table, private state folder).
    superlink : str
        ``HOST:PORT`` of the SuperLink's Fleet API.
    root_certificates : Path or None
        CA certificate that signed the SuperLink's TLS certificate; ``None``
        only with ``insecure`` (debugging).
    auth_key : Path or None
        The party's Flower node-authentication private key (registered with the
        SuperLink by its operator); ``None`` when the SuperLink does not
        authenticate nodes.
    insecure : bool
        Plain-text gRPC, for debugging only.
    """

    settings: PartySettings
    superlink: str
    root_certificates: Path | None
    auth_key: Path | None = None
    insecure: bool = False
    logs_dir: Path | None = None
    env: dict[str, str] | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.root_certificates is None and not self.insecure:
            raise ConfigError("--root-certificates: the SuperLink's CA certificate is needed (TLS is on by default)")
        self.state_dir = ensure_private_dir(Path(self.settings.state_dir))
        self.logs_dir = Path(self.logs_dir or self.state_dir / "logs")
        self.socket_path = self.state_dir / "party.sock"
        self.settings_path = self.state_dir / "settings.json"
        if self.env is None:
            self.env = node_env(self.state_dir / "flwr")

    def start_party_process(self) -> ManagedProcess:
        ready = self.state_dir / "party.ready"
        ready.unlink(missing_ok=True)
        self.settings.write(self.settings_path)
        argv = [
            sys.executable, "-m", "fedrisk.parties.service",
            "--settings", str(self.settings_path), "--socket", str(self.socket_path), "--ready-file", str(ready),
        ]
        proc = spawn(f"party-{self.settings.name}", argv, logs_dir=self.logs_dir, env=self.env, cwd=self.state_dir)  # type: ignore[arg-type]
        self.processes.append(proc)
        return proc

    def wait_party_ready(self, timeout: float = 60.0) -> None:
        ready = self.state_dir / "party.ready"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise PartyUnavailableError(f"party process {self.settings.name} did not come up within {timeout:.0f} s")
            time.sleep(0.1)

    def start_supernode(self) -> ManagedProcess:
        node_config = (
            f"party='{self.settings.name}' party-socket='{self.socket_path}' party-state-dir='{self.state_dir}'"
        )
        argv = [
            sys.executable, "-m", "fedrisk.parties.supernode",
            "--superlink", self.superlink,
            "--node-config", node_config,
            "--port", str(free_port()),
        ]
        argv += ["--insecure"] if self.insecure else ["--root-certificates", str(self.root_certificates)]
        if self.auth_key is not None:
            argv += ["--auth-supernode-private-key", str(self.auth_key)]
        proc = spawn(f"supernode-{self.settings.name}", argv, logs_dir=self.logs_dir, env=self.env, cwd=self.state_dir)  # type: ignore[arg-type]
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        """Party process first (it must be listening before the first message), then the SuperNode."""
        self.start_party_process()
        self.wait_party_ready()
        self.start_supernode()

    def check_alive(self) -> None:
        for proc in self.processes:
            code = proc.exited()
            if code is not None:
                raise PartyUnavailableError(f"{proc.name} exited with code {code}: {proc.tail()}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        self.processes.clear()

    def serve_forever(self, log: Callable[[str], None] = lambda line: None) -> int:
        """Run until SIGINT/SIGTERM or until a child exits; returns an exit code."""
        stop = {"requested": False}

        def _on_signal(signum, frame):  # noqa: ARG001
            stop["requested"] = True

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            log(f"party {self.settings.name} ({self.settings.role}) joined {self.superlink}; logs in {self.logs_dir}")
            while not stop["requested"]:
                self.check_alive()
                time.sleep(0.5)
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
