"""Which protocol roles a party serves, by its role: the registry handed to :class:`~fedrisk.parties.runtime.PartyRuntime`.

Adding a protocol adds its role classes here (see ``docs/ARCHITECTURE.md``).
Each role's classes are imported only when a party of that role starts, so a
feature holder never imports PyTorch and a bank never imports the BFV kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context

from fedrisk.errors import ProtocolError
from fedrisk.parties.protocol import PartyProtocol, Registry
from fedrisk.parties.runtime import PartyRuntime
from fedrisk.parties.settings import PartySettings

__all__ = ["PROTOCOLS", "forget_runtime", "party_runtime", "runtime_for_context"]


def _bank() -> Sequence[Callable[[Any], PartyProtocol]]:
    from fedrisk.parties.horizontal import HorizontalParty

    return (HorizontalParty,)


def _label_holder() -> Sequence[Callable[[Any], PartyProtocol]]:
    from fedrisk.parties.alignment import LabelHolderAlignment
    from fedrisk.parties.secureboost import LabelHolderSecureBoost
    from fedrisk.parties.vertical_lr import LabelHolderVerticalLR

    return (LabelHolderAlignment, LabelHolderVerticalLR, LabelHolderSecureBoost)


def _feature_holder() -> Sequence[Callable[[Any], PartyProtocol]]:
    from fedrisk.parties.alignment import FeatureHolderAlignment
    from fedrisk.parties.secureboost import FeatureHolderSecureBoost
    from fedrisk.parties.vertical_lr import FeatureHolderVerticalLR

    return (FeatureHolderAlignment, FeatureHolderVerticalLR, FeatureHolderSecureBoost)


PROTOCOLS: Registry = {"bank": _bank, "label_holder": _label_holder, "feature_holder": _feature_holder}
"""Every party role's protocol roles."""


def party_runtime(settings: PartySettings) -> PartyRuntime:
    """A party's runtime serving its role's protocols from :data:`PROTOCOLS`."""
    return PartyRuntime(settings, PROTOCOLS)


_RUNTIMES: dict[str, PartyRuntime] = {}


def forget_runtime(settings_path: str | Path) -> PartyRuntime | None:
    """Drop the warm runtime kept for a simulated party (a sweep point ended, or a test kills the party)."""
    return _RUNTIMES.pop(str(settings_path), None)


def runtime_for_context(context: Context) -> PartyRuntime:
    """The in-process runtime of a simulated node (Flower Simulation Engine), kept warm per settings file."""
    settings_path = context.node_config.get("party-settings")
    if not settings_path:
        raise ProtocolError("node config has neither 'party-socket' nor 'party-settings': start nodes with `fedrisk node start` or `fedrisk simulate`")
    runtime = _RUNTIMES.get(str(settings_path))
    if runtime is None:
        runtime = party_runtime(PartySettings.read(Path(str(settings_path))))
        _RUNTIMES[str(settings_path)] = runtime
    return runtime
