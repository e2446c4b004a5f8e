"""The sandbox launcher: runs a scoring node or party service under least privilege.

The launcher is the only part that stays outside the sandbox. It

1. verifies the bundle once more before starting anything, so a tampered or
   unsigned bundle is refused with a clear error before a sandbox exists (the
   sandboxed process verifies again before loading: it trusts nothing);
2. creates the sandbox's private directory and its doors
   (:mod:`~fedrisk.scoring.forward`): one Unix socket per configured
   party endpoint, and — for a node that records applications — the register
   socket, served by the launcher itself so that the sandbox cannot even open
   the register file (:class:`~fedrisk.scoring.register.RegisterServer`);
3. writes the sandbox-side configuration (Unix sockets instead of addresses)
   and starts ``python -m fedrisk.scoring.main`` under the chosen
   mechanism (:mod:`~fedrisk.scoring.sandbox`);
4. once the process reports READY, opens the public TCP door to it;
5. keeps the sandbox's copy of the federation's CRL (``crl``) current: the
   process reads ``<private>/crl.pem``, which the launcher replaces whenever the
   host's file changes (a read-only bind would keep showing the old file after
   an atomic replace). The process verifies every CRL against the CA itself.

It stops the process by closing its stdin (then SIGTERM, then SIGKILL) and
removes the private directory. Under ``rlimits`` and ``none`` there are no
doors: the process serves and dials directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedrisk.crypto.keyfiles import write_public_file, write_secret_file
from fedrisk.errors import ConfigError, FedriskError
from fedrisk.scoring.config import (
    NodeConfig,
    PartyEndpoint,
    PartyServiceConfig,
    dump_config,
    parse_endpoint,
)
from fedrisk.scoring.forward import Forwarder, tcp_to_unix, unix_to_tcp
from fedrisk.scoring.register import RegisterServer
from fedrisk.scoring.sandbox import (
    bwrap_command,
    choose_mechanism,
    make_private_dir,
    namespaces_command,
    sandbox_env,
)

__all__ = ["Launcher", "SandboxSession", "read_only_paths"]

_ISOLATED = ("bwrap", "namespaces")


def read_only_paths(config: NodeConfig | PartyServiceConfig) -> list[str]:
    """Every file or folder the process must read (bound read-only into the sandbox)."""
    if isinstance(config, NodeConfig):
        paths = [
            config.bundle,
            config.tls_cert,
            config.tls_key,
            config.ca,
            config.client_cert,
            config.client_key,
            config.client_ca,
            config.policy,
            config.bank_table,
        ]
    else:
        paths = [config.bundle, config.table, config.allow_list, config.tls_cert, config.tls_key, config.client_ca]
    return [p for p in paths if p]


@dataclass
class SandboxSession:
    """A private directory, its outbound doors, and a process running under a mechanism.

    Parameters
    ----------
    mechanism : str
        ``bwrap``, ``namespaces``, ``rlimits`` or ``none`` (resolve ``auto`` with
        :func:`~fedrisk.scoring.sandbox.choose_mechanism` first).
    read_only : list of str
        Files/folders bound read-only (bwrap).
    doors : dict of str to (host, port)
        Outbound endpoints; each becomes ``<private>/doors/<name>.sock``.
    """

    mechanism: str
    read_only: list[str] = field(default_factory=list)
    doors: dict[str, tuple[str, int]] = field(default_factory=dict)
    private_dir: Path | None = None
    process: asyncio.subprocess.Process | None = None
    forwarders: list[Forwarder] = field(default_factory=list)

    def door(self, name: str) -> Path:
        """Path of the Unix socket that leads to the ``name`` endpoint."""
        assert self.private_dir is not None
        return self.private_dir / "doors" / f"{name}.sock"

    async def open(self) -> Path:
        """Create the private directory and the outbound doors; returns the directory."""
        self.private_dir = make_private_dir().resolve()
        if self.mechanism in _ISOLATED:
            for name, (host, port) in self.doors.items():
                self.forwarders.append(await unix_to_tcp(name, self.door(name), host, port))
        return self.private_dir

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped in the mechanism."""
        assert self.private_dir is not None
        if self.mechanism == "bwrap":
            return bwrap_command(self.private_dir, self.read_only, argv)
        if self.mechanism == "namespaces":
            return namespaces_command(self.private_dir, argv, self.read_only)
        return argv

    async def spawn(self, argv: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
        """Start ``argv`` inside (stdin/stdout pipes unless given)."""
        assert self.private_dir is not None
        env = sandbox_env(self.private_dir) if self.mechanism in _ISOLATED else None
        if env is not None and self.mechanism == "namespaces":
            env["PATH"] = os.environ.get("PATH", env["PATH"])
        kwargs.setdefault("stdin", asyncio.subprocess.PIPE)
        kwargs.setdefault("stdout", asyncio.subprocess.PIPE)
        self.process = await asyncio.create_subprocess_exec(*self.command(argv), env=env, cwd=str(self.private_dir), **kwargs)
        return self.process

    async def close(self, timeout: float = 5.0) -> int | None:
        """Stop the process (stdin EOF, SIGTERM, SIGKILL), close doors, remove the private dir."""
        code = None
        proc = self.process
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                code = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    code = await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    code = await proc.wait()
        elif proc is not None:
            code = proc.returncode
        for fwd in self.forwarders:
            await fwd.close()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return code


class Launcher:
    """Start a scoring node or party scoring service in a sandbox and open its doors.

    Parameters
    ----------
    config : NodeConfig or PartyServiceConfig
        Host-side configuration (real paths and addresses; ``listen`` is the
        public ``host:port``).
    sandbox : str
        ``auto``, ``bwrap``, ``namespaces``, ``rlimits`` or ``none``.
    """

    def __init__(self, config: NodeConfig | PartyServiceConfig, *, sandbox: str = "auto") -> None:
        self.config = config
        self.mechanism = choose_mechanism(sandbox)
        self.session: SandboxSession | None = None
        self.inbound: Forwarder | None = None
        self.register: RegisterServer | None = None
        self.ready: dict[str, Any] = {}
        self.stderr_tail: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None
        self._crl_task: asyncio.Task[None] | None = None

    def _preflight(self) -> None:
        from fedrisk.scoring.bundles import (
            load_bank_model,
            load_party_models,
            parse_trusted_keys,
        )

        keys = parse_trusted_keys(self.config.trusted_keys)
        if isinstance(self.config, NodeConfig):
            load_bank_model(self.config.bundle, keys)  # a bundle, or a stack folder of them
        else:
            load_party_models(self.config.bundle, keys)
        for path in read_only_paths(self.config):
            if not Path(path).exists():
                raise ConfigError(f"{path} does not exist")
        if self.config.crl:
            from fedrisk.crypto.pki import load_revocation_list

            ca = self.config.ca if isinstance(self.config, NodeConfig) else self.config.client_ca
            load_revocation_list(self.config.crl, ca)  # one line now, not from inside the sandbox

    async def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start and wait for READY; returns ``{address, unix, sandbox, pid, ...}``."""
        self._preflight()
        cfg = self.config
        doors: dict[str, tuple[str, int]] = {}
        if isinstance(cfg, NodeConfig):
            for party, endpoint in cfg.parties.items():
                doors[party] = parse_endpoint(endpoint.target)
        session = SandboxSession(self.mechanism, read_only=read_only_paths(cfg), doors=doors)
        self.session = session
        priv = await session.open()
        if cfg.crl and self.mechanism in _ISOLATED:
            write_public_file(priv / "crl.pem", Path(cfg.crl).read_bytes())
            self._crl_task = asyncio.ensure_future(self._sync_crl(Path(cfg.crl), priv / "crl.pem"))
        inside = self._inside_config(priv)
        if isinstance(cfg, NodeConfig) and cfg.register and self.mechanism in _ISOLATED:
            self.register = RegisterServer(cfg.register, priv / "register.sock")
            await self.register.start()
        config_path = write_secret_file(priv / "config.json", dump_config(inside).encode())
        argv = [sys.executable, "-m", "fedrisk.scoring.main", str(config_path), "--stop-on-stdin-eof"]
        proc = await session.spawn(argv, stderr=asyncio.subprocess.PIPE)
        self._stderr_task = asyncio.ensure_future(self._drain_stderr(proc))
        try:
            ready = await asyncio.wait_for(self._read_ready(proc), timeout)
        except (TimeoutError, FedriskError):
            await self.stop()
            if self._stderr_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._stderr_task, 1.0)
            errors = [line for line in self.stderr_tail if line.startswith("error:")]
            if errors:
                raise FedriskError(errors[-1][len("error: ") :]) from None
            tail = " | ".join(self.stderr_tail[-3:])
            raise FedriskError(f"the {self.mechanism} sandboxed process did not become ready: {tail or 'no output'}") from None
        if self.mechanism in _ISOLATED:
            host, port = parse_endpoint(cfg.listen)
            self.inbound = await tcp_to_unix("inbound", host, port, priv / "serve.sock")
            ready = {**ready, "unix": ready["address"].removeprefix("unix:"), "address": self.inbound.address}
        else:
            ready = {**ready, "unix": None}
        ready["sandbox"] = self.mechanism
        ready["private_dir"] = str(priv)
        self.ready = ready
        return ready

    def _inside_config(self, priv: Path) -> NodeConfig | PartyServiceConfig:
        cfg = self.config
        if self.mechanism not in _ISOLATED:
            return (
                replace(cfg, sandbox=self.mechanism)
                if self.mechanism != "none"
                else replace(cfg, sandbox="none", limits=replace(cfg.limits, memory_mb=0, max_open_files=0, file_size_mb=0, cpu_seconds=0))
            )
        listen = f"unix:{priv / 'serve.sock'}"
        if cfg.crl:
            cfg = replace(cfg, crl=str(priv / "crl.pem"))
        if isinstance(cfg, NodeConfig):
            parties = {
                p: PartyEndpoint(f"unix:{self.session.door(p)}", authority=e.authority or parse_endpoint(e.target)[0])  # type: ignore[union-attr]
                for p, e in cfg.parties.items()
            }
            register_socket = str(priv / "register.sock") if cfg.register else ""
            return replace(cfg, listen=listen, parties=parties, register="", register_socket=register_socket, sandbox=self.mechanism)
        return replace(cfg, listen=listen, sandbox=self.mechanism)

    async def _sync_crl(self, source: Path, copy: Path, every: float = 1.0) -> None:
        """Replace the sandbox's copy of the CRL whenever the host's file changes."""

        def signature() -> tuple[int, int, int] | None:
            try:
                st = source.stat()
            except OSError:
                return None
            return (st.st_ino, st.st_size, st.st_mtime_ns)

        seen = signature()
        while True:
            await asyncio.sleep(every)
            now = signature()
            if now is None or now == seen:
                continue
            seen = now
            try:
                write_public_file(copy, source.read_bytes())
            except OSError as err:
                sys.stderr.write(f"warning: could not pass the new CRL {source} to the sandbox: {err.strerror or err}\n")

    async def _read_ready(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                await proc.wait()
                raise FedriskError(f"exited with code {proc.returncode}")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("READY "):
                return json.loads(text[len("READY ") :])

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail = (self.stderr_tail + [text])[-50:]
            sys.stderr.write(text + "\n")

    async def wait(self) -> int:
        """Until the sandboxed process exits; returns its exit code."""
        assert self.session is not None and self.session.process is not None
        return await self.session.process.wait()

    async def stop(self) -> int | None:
        """Close the public door, stop the process, close the register and remove the private dir."""
        if self.inbound is not None:
            await self.inbound.close()
            self.inbound = None
        if self._crl_task is not None:
            self._crl_task.cancel()
            self._crl_task = None
        code = None
        if self.session is not None:
            proc = self.session.process
            summary_task = asyncio.ensure_future(self._collect_tail(proc)) if proc is not None and proc.stdout is not None else None
            code = await self.session.close()
            if summary_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(summary_task, 1.0)
            self.session = None
        if self.register is not None:
            self.ready["register"] = self.register.stats()
            await self.register.close()
            self.register = None
        return code

    async def _collect_tail(self, proc: asyncio.subprocess.Process | None) -> None:
        assert proc is not None and proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("FANOUT "):
                self.ready["fanout"] = json.loads(text[len("FANOUT ") :])
