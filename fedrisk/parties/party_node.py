"""One party's node: its warm party process and its Flower SuperNode, started and stopped together.

Used by the local federation runner (every party on this machine) and by
``fedrisk node start`` (one party on its own host, joining a SuperLink
elsewhere). The party process keeps the table and keys warm and listens on a
Unix socket in the party's private state folder; the SuperNode connects to the
SuperLink's Fleet API over TLS, authenticates with the party's node key, and
relays each message to the party process through the fedrisk ClientApp.

:meth:`PartyNode.supervise` keeps both alive: a party process or SuperNode
that dies is started again (the SuperNode with the same node key, so the
SuperLink gives it the same node id and the coordinator's pending messages
reach it), at most :data:`MAX_RESTARTS` times in :data:`RESTART_WINDOW`
seconds. A SuperNode that Flower stops because the SuperLink refused it — TLS
under the wrong CA, a node key that is not registered or was revoked — is not
restarted: the failure becomes one line saying which and what to do.
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

#: Restarts of one child allowed within :data:`RESTART_WINDOW` seconds before the node gives up.
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0
#: After a SuperNode crash the SuperLink keeps its session open for two heartbeats (20 s with
#: fedrisk's 10 s heartbeat) and refuses the key meanwhile: retries are spaced by ACTIVATION_RETRY
#: seconds and a refusal only counts as final ACTIVATION_GRACE seconds after the crash.
ACTIVATION_GRACE = 60.0
ACTIVATION_RETRY = 4.0


#: Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with its terminating NUL).
UNIX_SOCKET_PATH_MAX = 107


def party_socket_path(state_dir: Path) -> Path:
    """Where a party process listens: ``party.sock`` in its private state folder.

    A state folder too deep for a Unix socket path (deployment folders, test runners) gets a
    socket in ``$TMPDIR/fedrisk-<uid>`` instead, named by the folder's digest so a restarted
    party listens where its SuperNode already points. That folder must be this user's own,
    not a symbolic link, and is kept 0700.
    """
    own = state_dir / "party.sock"
    if len(os.fsencode(os.path.abspath(own))) <= UNIX_SOCKET_PATH_MAX:
        return own
    import hashlib
    import stat
    import tempfile

    short = Path(tempfile.gettempdir()) / f"fedrisk-{os.getuid()}"
    path = short / f"{hashlib.sha256(os.fsencode(os.path.abspath(state_dir))).hexdigest()[:24]}.sock"
    if len(os.fsencode(os.path.abspath(path))) > UNIX_SOCKET_PATH_MAX:
        raise ConfigError(f"party socket: both {own} and {path} are longer than a Unix socket path may be; set TMPDIR to a shorter folder")
    try:
        short.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(short)
    except OSError as err:
        raise ConfigError(f"party socket folder {short}: {err.strerror or err}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"party socket folder {short} is not a folder of this user's own: refusing to listen there")
    os.chmod(short, 0o700)
    return path


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
    #: Size of the log file when this process started (its own output follows).
    log_offset: int = 0

    def exited(self) -> int | None:
        return self.popen.poll()

    def own_log(self) -> str:
        """What this process wrote to its log (not earlier processes of the same name)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

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
        offset = handle.tell()
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return ManagedProcess(name, popen, log_path, offset)


def supernode_failure(log_text: str, superlink: str, root_certificates: Path | None, auth_key: Path | None) -> str | None:
    """One line saying why the SuperLink refused a SuperNode, or ``None`` if it did not.

    Reads Flower 1.39's own log lines: ``CERTIFICATE_VERIFY_FAILED`` (TLS
    under another CA), ``Peer name ... is not in peer certificate`` (the
    certificate does not name the host dialled), ``Failed to activate
    SuperNode`` / ``[code: 2004]`` (node key not registered, or unregistered
    because it was revoked).
    """
    if auth_key is not None and "No such file or directory" in log_text and str(Path(auth_key).name) in log_text:
        return f"cannot read this node's key {auth_key}: no such file (--auth-key)"
    if "CERTIFICATE_VERIFY_FAILED" in log_text or "unable to get local issuer certificate" in log_text:
        return (
            f"TLS handshake with the SuperLink at {superlink} failed: its certificate is not signed by the CA in "
            f"{root_certificates} (wrong --root-certificates?)"
        )
    if "is not in peer certificate" in log_text or "Hostname mismatch" in log_text:
        return (
            f"TLS handshake with the SuperLink at {superlink} failed: its certificate does not name that host "
            "(the operator must issue one with it in `fedrisk keys init --hosts`)"
        )
    if "Failed to activate SuperNode" in log_text or "[code: 2004]" in log_text:
        fingerprint = ""
        if auth_key is not None and Path(f"{auth_key}.pub").exists():
            from fedrisk.crypto.pki_admin import node_key_fingerprint

            fingerprint = f" {node_key_fingerprint(Path(f'{auth_key}.pub'))[:16]}"
        return (
            f"the SuperLink at {superlink} refused this node's key{fingerprint}: it is not registered, or it was "
            "revoked (ask the federation operator: `fedrisk keys register` / `fedrisk keys add-party`)"
        )
    return None


#: How often the SuperLink's SuperExec looks for a run to start (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``).
SUPEREXEC_POLL_SECONDS = 0.25


def node_env(flwr_home: Path) -> dict[str, str]:
    """Environment of fedrisk's Flower processes: their own FLWR_HOME, fast task polling."""
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    # Flower's SuperExec (next to the SuperLink) looks for a new ServerApp task once a second by
    # default; each look is an HTTP request the SuperLink serves. Polled every 50 ms it was the
    # SuperLink's busiest client (20 requests/s for the whole life of a federation, measured by
    # benchmarks/exchange.py); it only delays the start of a run, so 0.25 s. Parties' SuperNodes
    # run no SuperExec: their ClientApp runs warm in the SuperNode (fedrisk.parties.supernode).
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_SECONDS))
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
    log: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        self.party_process: ManagedProcess | None = None
        self.supernode_process: ManagedProcess | None = None
        self.restarts: dict[str, list[float]] = {"party": [], "supernode": []}
        self._crashed_at: float | None = None
        self._retry_at: float | None = None
        if self.root_certificates is None and not self.insecure:
            raise ConfigError("--root-certificates: the SuperLink's CA certificate is needed (TLS is on by default)")
        self.state_dir = ensure_private_dir(Path(self.settings.state_dir))
        self.logs_dir = Path(self.logs_dir or self.state_dir / "logs")
        self.socket_path = party_socket_path(self.state_dir)
        self.settings_path = self.state_dir / "settings.json"
        if self.env is None:
            self.env = node_env(self.state_dir / "flwr")

    def start_party_process(self) -> ManagedProcess:
        ready = self.state_dir / "party.ready"
        ready.unlink(missing_ok=True)
        self.settings.write(self.settings_path)
        argv = [
            sys.executable,
            "-m",
            "fedrisk.parties.service",
            "--settings",
            str(self.settings_path),
            "--socket",
            str(self.socket_path),
            "--ready-file",
            str(ready),
        ]
        proc = spawn(f"party-{self.settings.name}", argv, logs_dir=self.logs_dir, env=self.env, cwd=self.state_dir)  # type: ignore[arg-type]
        self.processes.append(proc)
        self.party_process = proc
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
        node_config = f"party='{self.settings.name}' party-socket='{self.socket_path}' party-state-dir='{self.state_dir}'"
        argv = [
            sys.executable,
            "-m",
            "fedrisk.parties.supernode",
            "--superlink",
            self.superlink,
            "--node-config",
            node_config,
            "--port",
            str(free_port()),
        ]
        argv += ["--insecure"] if self.insecure else ["--root-certificates", str(self.root_certificates)]
        if self.auth_key is not None:
            argv += ["--auth-supernode-private-key", str(self.auth_key)]
        proc = spawn(f"supernode-{self.settings.name}", argv, logs_dir=self.logs_dir, env=self.env, cwd=self.state_dir)  # type: ignore[arg-type]
        self.processes.append(proc)
        self.supernode_process = proc
        return proc

    def _wait_joined(self, stop: dict, timeout: float = 120.0) -> None:
        """Wait until Flower says the SuperNode is connected; a refusal raises its one-line reason."""
        deadline = time.monotonic() + timeout
        while not stop["requested"] and time.monotonic() < deadline:
            proc = self.supernode_process
            if proc is None:
                return
            text = proc.own_log()
            if "SuperNode ID:" in text or "Connection successful" in text:
                return
            if proc.exited() is not None:
                self.check_alive()
                return
            self.check_alive()
            time.sleep(0.2)

    def start(self) -> None:
        """Party process first (it must be listening before the first message), then the SuperNode."""
        self.start_party_process()
        self.wait_party_ready()
        self.start_supernode()

    def check_alive(self) -> None:
        for proc in self.processes:
            code = proc.exited()
            if code is not None:
                refused = self._refusal(proc)
                if refused:
                    raise PartyUnavailableError(refused)
                raise PartyUnavailableError(f"{proc.name} exited with code {code}: {proc.tail()}")

    def _refusal(self, proc: ManagedProcess) -> str | None:
        if proc is not self.supernode_process:
            return None
        return supernode_failure(proc.own_log(), self.superlink, self.root_certificates, self.auth_key)

    def _allow_restart(self, which: str, why: str) -> None:
        now = time.monotonic()
        recent = [t for t in self.restarts[which] if now - t < RESTART_WINDOW]
        if len(recent) >= MAX_RESTARTS:
            raise PartyUnavailableError(f"{which} of party {self.settings.name} died {len(recent) + 1} times within {RESTART_WINDOW:.0f} s ({why}); giving up")
        self.restarts[which] = [*recent, now]

    def supervise(self) -> list[str]:
        """Restart a party process or SuperNode that died; returns what was restarted.

        Raises
        ------
        PartyUnavailableError
            The SuperLink refused the node (wrong CA, unregistered or revoked
            key: one line saying which), or a child died too often.
        """
        restarted = []
        party, supernode = self.party_process, self.supernode_process
        if party is not None and party.exited() is not None:
            why = f"exit code {party.exited()}"
            self._allow_restart("party", why)
            self.processes.remove(party)
            self.start_party_process()
            self.wait_party_ready()
            restarted.append(f"party process of {self.settings.name} ({why})")
        if supernode is not None and supernode.exited() is not None:
            now = time.monotonic()
            code = supernode.exited()
            refused = self._refusal(supernode)
            if refused:
                # A SuperNode killed a moment ago is still "online" at the SuperLink until its
                # heartbeat runs out, and Flower will not activate the same key twice meanwhile.
                if self._crashed_at is None or now - self._crashed_at > ACTIVATION_GRACE:
                    raise PartyUnavailableError(refused)
                if self._retry_at is None:
                    self._retry_at = now + ACTIVATION_RETRY
                if now < self._retry_at:
                    return restarted
                self._retry_at = None
                why = "its previous session is still open at the SuperLink"
            else:
                if "SuperNode ID:" in supernode.own_log():
                    # Exit 0 on its own: the SuperLink ended the session (key unregistered). Otherwise a crash.
                    self._crashed_at = None if code == 0 else now
                why = f"exit code {code}"
                self._allow_restart("supernode", why)
            self.processes.remove(supernode)
            self.start_supernode()
            restarted.append(f"SuperNode of {self.settings.name} ({why})")
        for line in restarted:
            self.log(f"restarted the {line}")
        return restarted

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        self.processes.clear()
        self.party_process = self.supernode_process = None

    def serve_forever(self, log: Callable[[str], None] = lambda line: None) -> int:
        """Run until SIGINT/SIGTERM or until a child exits; returns an exit code."""
        stop = {"requested": False}

        def _on_signal(signum, frame):  # noqa: ARG001
            stop["requested"] = True

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.log = log
        try:
            self.start()
            self._wait_joined(stop)
            log(f"party {self.settings.name} ({self.settings.role}) joined {self.superlink}; logs in {self.logs_dir}")
            while not stop["requested"]:
                self.supervise()
                time.sleep(0.5)
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
