"""The simulation lab: many-party federations from scenario files, with tables and plots.

A researcher writes a scenario (``simulations/*.toml``: mode, parties, data,
partitioning, algorithm, encryption, DP, dropouts and stragglers, an
optional sweep) and runs ``fedrisk simulate SCENARIO``; the lab runs the
real fedrisk ServerApp and ClientApps on Flower's Simulation Engine or, by
default, in one process, and writes metrics, plots and a comparison with
each party alone and the centralised model to ``runs/<run-id>/``.

Modules: :mod:`~fedrisk.simulation.spec` (every scenario key),
:mod:`~fedrisk.simulation.scenario` (loading and validation),
:mod:`~fedrisk.simulation.sweep`, :mod:`~fedrisk.simulation.partition`,
:mod:`~fedrisk.simulation.data`, :mod:`~fedrisk.simulation.engines`
(+ :mod:`~fedrisk.simulation.ray_apps`), :mod:`~fedrisk.simulation.baselines`,
:mod:`~fedrisk.simulation.metrics`, :mod:`~fedrisk.simulation.comparison`,
:mod:`~fedrisk.simulation.plots`, :mod:`~fedrisk.simulation.recording`,
:mod:`~fedrisk.simulation.runner`.
"""

from fedrisk.simulation.scenario import Scenario, load_scenario, validate_scenario

__all__ = ["Scenario", "load_scenario", "validate_scenario", "run_scenario"]


def run_scenario(*args, **kwargs):
    """See :func:`fedrisk.simulation.runner.run_scenario` (imported lazily: it pulls in torch)."""
    from fedrisk.simulation.runner import run_scenario as run

    return run(*args, **kwargs)
