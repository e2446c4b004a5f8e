"""Configuration of a scoring node and of a party scoring service.

Both are plain, JSON-serialisable dataclasses: the launcher validates the
host-side configuration, rewrites its paths to where they appear inside the
sandbox, and hands the result to the sandboxed process as a JSON file. No
secret is ever in a configuration — only paths to 0600 key files.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedrisk.errors import ConfigError

__all__ = ["Limits", "NodeConfig", "PartyEndpoint", "PartyServiceConfig", "dump_config", "load_config", "parse_endpoint"]

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class PartyEndpoint:
    """Where a feature holder's party scoring service answers.

    Attributes
    ----------
    target : str
        ``host:port``, or ``unix:/path`` inside the sandbox.
    authority : str
        The name its TLS certificate must carry (the host of its real address).
    """

    target: str
    authority: str = ""


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``host:port`` (port 0-65535), with a one-line error."""
    match = _HOST_PORT.match(text.strip())
    if not match or int(match.group(2)) > 65535:
        raise ConfigError(f"endpoint {text!r} is not HOST:PORT")
    return match.group(1).strip("[]"), int(match.group(2))


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandboxed process (``0`` = not limited).

    Attributes
    ----------
    memory_mb : int
        Address-space limit (RLIMIT_AS).
    cpu_seconds : int
        Total CPU time (RLIMIT_CPU); a long-running service usually leaves it 0
        and gets a CPU *rate* limit from its cgroup (systemd ``CPUQuota=``).
    max_open_files : int
        RLIMIT_NOFILE.
    file_size_mb : int
        Largest file it may write (RLIMIT_FSIZE), i.e. in its temp dir.
    """

    memory_mb: int = 4096
    cpu_seconds: int = 0
    max_open_files: int = 1024
    file_size_mb: int = 64


@dataclass(frozen=True)
class NodeConfig:
    """The bank's scoring node.

    Attributes
    ----------
    bundle : str
        The bank's (label holder's) signed model bundle, or a stack folder: the
        bank's bundle of every base learner of a stacked model plus its
        meta-learner bundle, one sub-folder each (served as one model).
    trusted_keys : list of str
        Hex Ed25519 keys allowed to sign bundles.
    listen : str
        ``host:port`` (port 0 picks one) or ``unix:/path``.
    tls_cert, tls_key : str
        The node's server certificate and 0600 key.
    ca : str
        The federation CA (trusted for the parties' server certificates).
    client_cert, client_key : str
        The bank's client certificate for mTLS to the parties.
    client_ca : str
        When set, loan systems must present a certificate signed by it.
    crl : str
        The federation CA's CRL (``crl.pem``): a party service whose server
        certificate it revokes is not called, a loan system whose client
        certificate it revokes is refused ("" = revocation is not checked).
    parties : dict of str to PartyEndpoint
        Feature holders' scoring services.
    policy : str
        Credit policy TOML ("" = the shipped default).
    bank_table : str
        Optional table of the bank's own features (applications may carry them instead).
    register : str
        SQLite application register written directly ("" = none).
    register_socket : str
        Unix socket of the launcher's register (sandboxed nodes; wins over ``register``).
    sandbox : str
        The isolation mechanism the node runs under (reported, not enforced, here).
    """

    bundle: str
    trusted_keys: list[str]
    tls_cert: str
    tls_key: str
    ca: str
    client_cert: str
    client_key: str
    listen: str = "127.0.0.1:0"
    client_ca: str = ""
    crl: str = ""
    parties: dict[str, PartyEndpoint] = field(default_factory=dict)
    policy: str = ""
    bank_table: str = ""
    register: str = ""
    register_socket: str = ""
    max_message_bytes: int = 16 * 1024
    max_abs_z: float = 100.0
    max_inflight_per_party: int = 1
    sandbox: str = "none"
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class PartyServiceConfig:
    """A feature holder's party scoring service.

    Attributes
    ----------
    bundle : str
        The party's own signed model bundle, or a stack folder of its bundles,
        one per base learner of a stacked model (answered in one call).
    trusted_keys : list of str
    table : str
        The party's own table (CSV or Parquet, the training schema).
    allow_list : str
        File of IDs it may answer for, one per line (the trained intersection
        plus newly aligned IDs); "" with ``allow_any_known`` answers for every
        ID in its table.
    allow_any_known : bool
    listen, tls_cert, tls_key : str
    client_ca : str
        CA whose client certificates may call (required: mTLS).
    crl : str
        That CA's CRL (``crl.pem``): a caller whose certificate it revokes is
        refused ("" = revocation is not checked).
    allowed_callers : list of str
        Client-certificate common names allowed to ask ([] = the label holder named in the bundle).
    max_ids : int
        Largest ID list per request.
    """

    bundle: str
    trusted_keys: list[str]
    table: str
    tls_cert: str
    tls_key: str
    client_ca: str
    listen: str = "127.0.0.1:0"
    allow_list: str = ""
    allow_any_known: bool = False
    crl: str = ""
    allowed_callers: list[str] = field(default_factory=list)
    max_ids: int = 4096
    max_message_bytes: int = 512 * 1024
    sandbox: str = "none"
    limits: Limits = field(default_factory=Limits)


def dump_config(config: NodeConfig | PartyServiceConfig) -> str:
    """JSON of a configuration (``kind`` says which)."""
    kind = "node" if isinstance(config, NodeConfig) else "party"
    return json.dumps({"kind": kind, **asdict(config)}, indent=2, sort_keys=True)


def load_config(text: str) -> NodeConfig | PartyServiceConfig:
    """Parse :func:`dump_config` output."""
    try:
        data: dict[str, Any] = json.loads(text)
        kind = data.pop("kind")
        cls: type[NodeConfig | PartyServiceConfig] = NodeConfig if kind == "node" else PartyServiceConfig
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"scoring config: unknown key {unknown[0]!r}")
        data["limits"] = Limits(**data.get("limits", {}))
        if cls is NodeConfig:
            data["parties"] = {k: PartyEndpoint(**v) for k, v in data.get("parties", {}).items()}
        return cls(**data)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"scoring config is malformed: {exc}") from None


def existing_file(path: str, what: str) -> Path:
    """``path`` as a Path, or a one-line error when it is not a file."""
    target = Path(path)
    if not target.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    return target
