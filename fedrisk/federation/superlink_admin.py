"""Node registration on a running SuperLink, through Flower's own ``flwr supernode`` commands.

With ``--enable-supernode-auth`` a Flower 1.39 SuperLink admits only the node
keys its operator registered on the Control API (``flwr supernode register
KEY.pub CONNECTION``); ``flwr supernode unregister NODE_ID`` removes one, after
which a running SuperNode holding that key is ended by the SuperLink and a
restarted one is refused (``[code: 2004] Failed to activate SuperNode``).
Flower keeps the unregistered key's row, so the same key can never be
registered again (``[code: 23] Public key already in use``).

:class:`SuperLinkAdmin` runs those commands with a private ``FLWR_HOME``
holding one connection named ``fedrisk`` and reads their ``--format json``
output. Note that ``flwr supernode register`` exits 0 even when it fails (its
JSON says ``"success": false``), which is why the JSON is checked, not the
exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedrisk.errors import ConfigError, FedriskError

CONNECTION = "fedrisk"


@dataclass
class SuperLinkAdmin:
    """Register, unregister and list node keys on one SuperLink's Control API.

    Parameters
    ----------
    control_address : str
        ``HOST:PORT`` of the SuperLink's Control API.
    root_certificates : Path or None
        CA certificate of the SuperLink (``None`` only with ``insecure``).
    home : Path
        A private folder for ``flwr``'s config (``FLWR_HOME``).
    insecure : bool
        Plain HTTP to the Control API (debugging only).
    """

    control_address: str
    root_certificates: Path | None
    home: Path
    insecure: bool = False
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if ":" not in self.control_address:
            raise ConfigError(f"--superlink: expected HOST:PORT of the Control API, got {self.control_address!r}")
        if self.root_certificates is None and not self.insecure:
            raise ConfigError("--root-certificates: the SuperLink's CA certificate is needed")
        self.home = Path(self.home).resolve()
        self._write_config()

    def _write_config(self) -> None:
        from fedrisk.parties.settings import ensure_private_dir

        home = ensure_private_dir(self.home)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{self.control_address}"']
        if self.root_certificates is not None and not self.insecure:
            lines.append(f'root-certificates = "{Path(self.root_certificates).resolve()}"')
        else:
            lines.append("insecure = true")
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    def _env(self) -> dict[str, str]:
        from fedrisk.parties.party_node import node_env

        return node_env(self.home)

    def _flwr(self, *args: str, group: str = "supernode") -> dict:
        flwr = str(Path(sys.executable).parent / "flwr")
        command = [group] if group else []
        try:
            completed = subprocess.run(
                [flwr, *command, *args, CONNECTION, "--format", "json"],
                env=self._env(),
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FedriskError(f"the SuperLink Control API at {self.control_address} did not answer within {self.timeout:.0f} s") from None
        try:
            answer = json.loads(completed.stdout)
        except ValueError:
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-1:]
            raise FedriskError(f"flwr {' '.join(command + [args[0]])} failed: {' '.join(tail) or 'no output'}") from None
        if not answer.get("success"):
            message = str(answer.get("error-message", "no reason given"))
            lines = [line for line in message.splitlines() if line.strip() and not line.startswith("Using SuperLink")]
            raise FedriskError(f"flwr {' '.join(command + [args[0]])} on {self.control_address}: {lines[-1] if lines else message}")
        return answer

    def register(self, public_key: Path, name: str | None = None) -> int:
        """Register a node public key (OpenSSH line); returns the node id the SuperLink gave it."""
        args = ["register", str(Path(public_key).resolve())]
        if name:
            args += ["--name", name]
        return int(self._flwr(*args)["node-id"])

    def unregister(self, node_id: int) -> None:
        """Unregister a node id; a SuperNode holding its key is refused from now on."""
        self._flwr("unregister", str(int(node_id)))

    def stop_run(self, flower_run_id: int) -> None:
        """Tell the SuperLink a Flower run is over (``flwr stop``), e.g. after its ServerApp was killed.

        Until the SuperLink notices by itself (its ServerApp heartbeat times
        out, about a minute), SuperNodes keep waiting for the objects of a
        message the dead ServerApp never finished sending, and the messages of
        a resubmitted run queue behind it.
        """
        self._flwr("stop", str(int(flower_run_id)), group="")

    def nodes(self) -> list[dict]:
        """The SuperLink's nodes as ``flwr supernode list --format json`` shows them."""
        return list(self._flwr("list")["nodes"])

    def node_id_of(self, public_key: Path) -> int | None:
        """The id of the (not unregistered) node holding ``public_key``, looked up on the Control API."""
        completed = subprocess.run(
            [sys.executable, "-m", "fedrisk.federation.superlink_admin", "node-id", str(Path(public_key).resolve())],
            env=self._env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if completed.returncode != 0:
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-1:]
            raise FedriskError(f"could not list the nodes of {self.control_address}: {' '.join(tail) or 'no output'}")
        for line in completed.stdout.splitlines():
            if line.startswith("node-id: "):
                return int(line.split(": ", 1)[1])
        return None


def _print_node_id(public_key_path: str) -> int:
    """Subprocess half of :meth:`SuperLinkAdmin.node_id_of` (uses ``flwr``'s own Control API client)."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=no-name-in-module

    wanted = try_load_public_key(Path(public_key_path))
    client = init_http_client_from_connection(read_superlink_connection(CONNECTION))
    try:
        response = client.ListNodes(ListNodesRequest())
    finally:
        client.close()
    for info in response.nodes_info:
        if info.public_key == wanted and info.status != "unregistered":
            sys.stdout.write(f"node-id: {info.node_id}\n")
            break
    return 0


if __name__ == "__main__":  # pragma: no cover - run by SuperLinkAdmin.node_id_of
    if len(sys.argv) == 3 and sys.argv[1] == "node-id":
        sys.exit(_print_node_id(sys.argv[2]))
    sys.exit("usage: python -m fedrisk.federation.superlink_admin node-id KEY.pub")
