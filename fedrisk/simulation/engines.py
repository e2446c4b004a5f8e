"""Engines that run one simulated federation: the same ServerApp and ClientApp code as production.

* ``inprocess`` (the default): :class:`~fedrisk.federation.inprocess.InProcessGrid`
  delivers each message straight to the destination party's ClientApp in this
  process, one after another.  Nothing but the transport is simulated.
* ``ray``: Flower's Simulation Engine (``flwr.simulation.run_simulation``,
  Ray backend; ``pip install 'fedrisk[simulation]'``).  Each virtual SuperNode
  gets its party's settings and the run config through :data:`PARTIES_ENV`
  (Ray workers inherit the driver's environment) and runs fedrisk's ClientApp in a Ray actor.
  fedrisk parties keep their protocol state (keys, pooled statistics, model)
  warm in the process that serves them, so the pool is **one actor**
  (``num_cpus`` = all cores): a node's messages must all reach the same
  process.  The engine is Flower's real message routing (LinkState, its
  in-memory Grid); it does not add parallelism on this design.
* ``auto``: ``ray`` when Ray is importable, else ``inprocess``.

Every engine runs the ServerApp with the scenario's run config; the
ServerApp writes ``<run-dir>/coordinator/result.json``, which
:func:`run_federation` returns.  What the ServerApp prints (one line per
round) goes to ``coordinator.log`` and to the ``on_line`` callback that drives
the progress bar.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from fedrisk.errors import ConfigError
from fedrisk.parties.settings import PartySettings
from fedrisk.simulation.sim_run import PARTIES_ENV, simulated_node_config

#: Environment variable carrying ``{"parties": [settings paths], "run_config": {...}}`` to Ray workers.
ENGINES = ("auto", "inprocess", "ray")


def ray_available() -> bool:
    """Whether Flower's Simulation Engine with the Ray backend can run here."""
    return importlib.util.find_spec("ray") is not None


def select_engine(name: str) -> str:
    """Resolve ``auto`` and check that the chosen engine can run."""
    if name not in ENGINES:
        raise ConfigError(f"scenario.engine: must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "auto":
        return "ray" if ray_available() else "inprocess"
    if name == "ray" and not ray_available():
        raise ConfigError("scenario.engine: 'ray' needs Flower's Simulation Engine: pip install 'fedrisk[simulation]'")
    return name


class _LineTap(io.TextIOBase):
    """A stdout replacement that keeps complete lines in a log file and hands each to a callback."""

    def __init__(self, log_path: Path, on_line: Callable[[str], None] | None) -> None:
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._on_line = on_line
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if self._on_line is not None and line:
                self._on_line(line)
        return len(text)

    def flush(self) -> None:
        if not self._log.closed:
            self._log.flush()

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()
        super().close()


@contextlib.contextmanager
def captured_output(log_path: Path, on_line: Callable[[str], None] | None) -> Iterator[None]:
    """Send this process's stdout to ``log_path`` (and ``on_line``) for the duration."""
    tap = _LineTap(log_path, on_line)
    try:
        with contextlib.redirect_stdout(tap):
            yield
    finally:
        tap.close()


def _server_context(run_config: dict, run_id: int = 1):
    from flwr.app import Context, RecordDict

    return Context(run_id=run_id, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))


def _run_inprocess(parties: list[PartySettings], run_config: dict) -> None:
    from fedrisk.federation.inprocess import InProcessGrid
    from fedrisk.federation.server_app import app as server_app

    grid = InProcessGrid(parties, run_config=run_config, node_config=simulated_node_config(run_config))
    server_app(grid, _server_context(run_config))


def _run_ray(parties: list[PartySettings], run_config: dict) -> None:
    from flwr.simulation import run_simulation

    from fedrisk.simulation import ray_apps

    paths = []
    for party in parties:
        path = Path(party.state_dir) / "settings.json"
        Path(party.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        party.write(path)
        paths.append(str(path))
    previous = os.environ.get(PARTIES_ENV)
    os.environ[PARTIES_ENV] = json.dumps({"parties": paths, "run_config": run_config}, default=str)
    ray_apps.RUN_CONFIG.clear()
    ray_apps.RUN_CONFIG.update(run_config)
    try:
        run_simulation(
            server_app=ray_apps.server_app,
            client_app=ray_apps.client_app,
            num_supernodes=len(parties),
            backend_name="ray",
            backend_config={"client_resources": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0.0}},
        )
    finally:
        if previous is None:
            os.environ.pop(PARTIES_ENV, None)
        else:
            os.environ[PARTIES_ENV] = previous


def forget_party_runtimes(parties: list[PartySettings]) -> None:
    """Drop the warm runtimes this process keeps for simulated parties (memory across sweep points)."""
    from fedrisk.parties.registry import forget_runtime

    for party in parties:
        forget_runtime(Path(party.state_dir) / "settings.json")


def run_federation(
    engine: str,
    parties: list[PartySettings],
    run_config: dict,
    *,
    run_dir: Path,
    on_line: Callable[[str], None] | None = None,
) -> dict:
    """Run the fedrisk ServerApp over ``engine`` and return the coordinator's result.

    Parameters
    ----------
    engine : str
        ``inprocess`` or ``ray`` (resolve ``auto`` with :func:`select_engine` first).
    parties : list of PartySettings
        The simulated parties.
    run_config : dict
        The ServerApp's run config (``run-dir`` must be ``run_dir``).
    run_dir : pathlib.Path
        Where the coordinator writes ``coordinator/result.json`` and ``coordinator.log`` goes.
    on_line : callable, optional
        Called with every line the ServerApp prints.

    Returns
    -------
    dict
        The coordinator's result (``status`` ``ok`` or ``error`` with a one-line ``error``).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "coordinator" / "result.json"
    try:
        with captured_output(run_dir / "coordinator.log", on_line):
            if engine == "inprocess":
                _run_inprocess(parties, run_config)
            elif engine == "ray":
                _run_ray(parties, run_config)
            else:
                raise ConfigError(f"scenario.engine: unknown engine {engine!r}")
    except Exception:  # noqa: BLE001 - the ServerApp wrote its error (and any traceback) to result.json
        # (Flower's Simulation Engine re-raises the ServerApp's error as a RuntimeError.)
        if not result_path.exists() or json.loads(result_path.read_text()).get("status") != "error":
            raise
    finally:
        if engine == "inprocess":
            forget_party_runtimes(parties)
    return json.loads(result_path.read_text())
