"""Submit a run to a SuperLink that is already running, with parties on their own hosts.

Each party joined beforehand with ``fedrisk node start`` on its own host (its
table never leaves it). This side only needs the SuperLink's Control API
address and the CA certificate that signed its TLS certificate: it writes the
Flower App for the run, submits it with ``flwr run --stream`` (the
coordinator's log goes to ``logs/``) and, once Flower marks the run finished,
pulls the coordinator's result as data through the Control API's
``PullArtifacts`` (:mod:`fedrisk.federation.run_results`): the ServerApp runs
next to the SuperLink, so its files are not here.

Runs are submitted with ``recovery = true``: the coordinator checkpoints in
its run folder on the SuperLink's host. When the run ends without a result
(the coordinator process died), the Flower run is stopped (``flwr stop``) and
the same run id is submitted again, up to ``max_restarts`` times; the new
coordinator resumes from the checkpoint.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedrisk.errors import ConfigError, FedriskError, PartyUnavailableError
from fedrisk.federation.local import write_app, write_flwr_config
from fedrisk.federation.run_results import RunNotFinished, pull_result, require_result_provider
from fedrisk.parties.party_node import node_env, spawn


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
    #: How often a coordinator that died without a result is resubmitted (it resumes from its checkpoint).
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if ":" not in self.control_address:
            raise ConfigError(f"--superlink: expected HOST:PORT, got {self.control_address!r}")
        if self.root_certificates is None and not self.insecure:
            raise ConfigError("--root-certificates: the SuperLink's CA certificate is needed (TLS is on by default)")
        if self.root_certificates is not None and not Path(self.root_certificates).is_file():
            raise ConfigError(f"--root-certificates: file not found: {self.root_certificates}")
        self.run_dir = Path(self.run_dir).resolve()

    def run(self, run_config: dict, *, timeout: float = 3600.0) -> dict:
        """Submit one run and return the coordinator's result (resubmitting it after a coordinator crash)."""
        # Before anything runs: a SuperLink that cannot hand the result back is refused in one line.
        require_result_provider(self.control_address, self.root_certificates, insecure=self.insecure)
        home = self.run_dir / "flwr"
        write_flwr_config(home, self.control_address, None if self.insecure else self.root_certificates)
        config = {**run_config}
        config.setdefault("fedrisk-run-id", self.run_dir.name)
        config.setdefault("recovery", True)
        app = write_app(self.run_dir / "app", config, self.parties)
        deadline = time.monotonic() + timeout
        attempt = 1
        while (result := self._attempt(app, home, deadline)) is None:
            if attempt > self.max_restarts:
                raise FedriskError(f"the coordinator died {attempt} times without a result (see {self.run_dir / 'logs'})")
            self.log(f"the coordinator stopped without a result; resubmitting the run to resume it (attempt {attempt + 1})")
            attempt += 1
        if result.get("status") != "ok":
            raise FedriskError(str(result.get("error", "the coordinator failed")))
        return result

    def _attempt(self, app: Path, home: Path, deadline: float) -> dict | None:
        """One ``flwr run --stream``: the result, or ``None`` when the run ended without one."""
        proc = spawn(
            "flwr-run",
            [str(Path(sys.executable).parent / "flwr"), "run", str(app), "local", "--stream"],
            logs_dir=self.run_dir / "logs",
            env=node_env(home),
            cwd=self.run_dir,
        )
        self.log(f"run submitted to {self.control_address}; stream in {proc.log_path}")
        try:
            while proc.exited() is None:  # the stream ends when Flower marks the run finished
                if time.monotonic() > deadline:
                    raise PartyUnavailableError(f"the run did not finish within the deadline (see {proc.log_path})")
                time.sleep(0.3)
        finally:
            proc.terminate()
        found = re.findall(r"Successfully started run (\d+)", proc.own_log())  # Flower's own status line: the run id
        if not found:  # never got a run: nothing to resume
            raise FedriskError(f"the run could not be submitted: {proc.tail()}")
        flower_run = int(found[-1])
        while True:
            try:
                result = pull_result(self.control_address, self.root_certificates, flower_run, insecure=self.insecure)
                break
            except RunNotFinished:  # the stream broke off early: wait for Flower's verdict
                if time.monotonic() > deadline:
                    raise PartyUnavailableError(f"the run did not finish within the deadline (see {proc.log_path})") from None
                time.sleep(1.0)
        if result is None:  # the coordinator died without publishing one
            self._stop(flower_run)
        return result

    def _stop(self, flower_run: int) -> None:
        from fedrisk.federation.superlink_admin import SuperLinkAdmin

        try:
            SuperLinkAdmin(
                self.control_address, None if self.insecure else self.root_certificates, self.run_dir / "flwr-admin", insecure=self.insecure
            ).stop_run(flower_run)
        except FedriskError as err:
            self.log(f"could not stop Flower run {flower_run}: {err}")
