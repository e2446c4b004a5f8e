"""A simulated run's contract between the driver and the processes that play its parties.

Both engines (:mod:`fedrisk.simulation.engines`) and the Ray apps
(:mod:`fedrisk.simulation.ray_apps`) read it; neither imports the other for it.
"""

from __future__ import annotations

#: Environment variable carrying the parties' settings files and the run config to Ray workers
#: (they inherit the driver's environment).
PARTIES_ENV = "FEDRISK_SIM_RUN"


def simulated_node_config(run_config: dict) -> dict:
    """Node config of every simulated party: the researcher runs every node, so the scenario's
    ``ledger`` switch is applied where a real party's own switch lives (its node config)."""
    return {} if run_config.get("ledger", True) else {"ledger": "off"}
