"""The ServerApp and ClientApp that Flower's Simulation Engine (Ray backend) runs for the lab.

They wrap fedrisk's own apps and add only what the Simulation Engine does
not carry: the run config (``run_simulation`` starts every app with an empty
one) and, per virtual SuperNode, which party it is — the node's
``partition-id`` indexes the list of party settings paths in the JSON of
:data:`~fedrisk.simulation.sim_run.PARTIES_ENV`, which also carries the run
config to the workers.  Importing this module
needs no Ray; running it does.
"""

from __future__ import annotations

import json
import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedrisk.wire.message_types import MESSAGE_TYPES

#: The run config the wrapped ServerApp runs with (set by the engine before each run).
RUN_CONFIG: dict = {}

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from fedrisk.federation.server_app import app as fedrisk_server_app

    inner = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config=dict(RUN_CONFIG or _simulated_run()["run_config"]),
    )
    fedrisk_server_app(grid, inner)


def _simulated_run() -> dict:
    from fedrisk.simulation.sim_run import PARTIES_ENV

    return json.loads(os.environ[PARTIES_ENV])


def _party_node_config(context: Context) -> dict:
    from pathlib import Path

    from fedrisk.parties.settings import PartySettings

    path = _simulated_run()["parties"][int(context.node_config["partition-id"])]
    settings = PartySettings.read(Path(path))
    from fedrisk.simulation.sim_run import simulated_node_config

    simulated = simulated_node_config(_simulated_run()["run_config"])
    return {**dict(context.node_config), **simulated, "party": settings.name, "party-settings": path, "party-state-dir": settings.state_dir}


def _handle(msg: Message, context: Context) -> Message:
    from fedrisk.parties.client_app import app as fedrisk_client_app

    inner = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=_party_node_config(context),
        state=context.state,
        run_config=_simulated_run()["run_config"],
    )
    return fedrisk_client_app(msg, inner)


for _message_type in MESSAGE_TYPES:
    _category, _action = _message_type.split(".")
    getattr(client_app, _category)(_action)(_handle)
