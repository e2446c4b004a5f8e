"""Submit a run to a SuperLink that is already running, with parties on their own hosts.

Each party joined beforehand with ``fedrisk node start`` on its own host (its
table never leaves it). This side only needs the SuperLink's Control API
address and the CA certificate that signed its TLS certificate: it writes the
Flower App for the run, submits it with ``flwr run --stream``, and reads the
coordinator's result from the stream (the ServerApp runs next to the
SuperLink, so its files are not here).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedrisk.errors import ConfigError, FedriskError, PartyUnavailableError
from fedrisk.federation.local import write_app, write_flwr_config
from fedrisk.federation.server_app import RESULT_PREFIX
from fedrisk.parties.node import node_env, spawn


@dataclass
class RemoteFederation:
    """Runs submitted to a remote SuperLink's Control API.

    Parameters
    ----------
    run_dir : Path
        Local folder for the submitted app, ``flwr``'s config and the stream log.
    control_address : str
        ``HOST:PORT`` of the SuperLink's Control API.
    root_certificates : Path or None
        CA certificate of the SuperLink (``None`` only with ``insecure``).
    parties : list of str
        The party names the coordinator waits for.
    """

    run_dir: Path
    control_address: str
    root_certificates: Path | None
    parties: list[str]
    insecure: bool = False
    log: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        if ":" not in self.control_address:
            raise ConfigError(f"--superlink: expected HOST:PORT, got {self.control_address!r}")
        if self.root_certificates is None and not self.insecure:
            raise ConfigError("--root-certificates: the SuperLink's CA certificate is needed (TLS is on by default)")
        if self.root_certificates is not None and not Path(self.root_certificates).is_file():
            raise ConfigError(f"--root-certificates: file not found: {self.root_certificates}")
        self.run_dir = Path(self.run_dir).resolve()

    def run(self, run_config: dict, *, timeout: float = 3600.0) -> dict:
        """Submit one run and return the coordinator's result."""
        home = self.run_dir / "flwr"
        write_flwr_config(home, self.control_address, None if self.insecure else self.root_certificates)
        config = {**run_config}
        config.setdefault("fedrisk-run-id", self.run_dir.name)
        app = write_app(self.run_dir / "app", config, self.parties)
        proc = spawn(
            "flwr-run",
            [str(Path(sys.executable).parent / "flwr"), "run", str(app), "local", "--stream"],
            logs_dir=self.run_dir / "logs", env=node_env(home), cwd=self.run_dir,
        )
        self.log(f"run submitted to {self.control_address}; stream in {proc.log_path}")
        deadline = time.monotonic() + timeout
        try:
            while True:
                result = _result_in(proc.log_path)
                if result is not None:
                    break
                if proc.exited() is not None:
                    time.sleep(0.5)
                    result = _result_in(proc.log_path)
                    if result is None:
                        raise FedriskError(f"the run ended without a result: {proc.tail()}")
                    break
                if time.monotonic() > deadline:
                    raise PartyUnavailableError(f"the run did not finish within {timeout:.0f} s (see {proc.log_path})")
                time.sleep(0.3)
        finally:
            proc.terminate()
        if result.get("status") != "ok":
            raise FedriskError(str(result.get("error", "the coordinator failed")))
        return result


def _result_in(log_path: Path) -> dict | None:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        at = line.find(RESULT_PREFIX)
        if at >= 0:
            try:
                return json.loads(line[at + len(RESULT_PREFIX):])
            except ValueError:
                return None
    return None
