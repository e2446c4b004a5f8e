"""What a party's protocol role is, and what it may use of its party: typed, so the runtime needs no ``getattr``.

A role (``LabelHolderVerticalLR``, ``FeatureHolderSecureBoost`` …) is built
once per run from the party it serves (:class:`Party`) and answers the message
types of :meth:`PartyProtocol.handlers`. The runtime
(:class:`fedrisk.parties.runtime.PartyRuntime`) gets the roles of its party
from a :data:`Registry` (:mod:`fedrisk.parties.registry`): the runtime imports
no protocol and no protocol imports the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedrisk.data.table import PartyTable
    from fedrisk.parties.identity import PartyIdentity
    from fedrisk.parties.settings import PartySettings
    from fedrisk.wire.exchange import Exchange

__all__ = ["ClosingProtocol", "DurableProtocol", "Handler", "Party", "PartyProtocol", "Registry", "RoleProtocols"]

Handler = Callable[["Exchange"], "RecordDict"]
"""Answers one message of a protocol step (raises a one-line error the coordinator sees)."""

P = TypeVar("P")


class Party(Protocol):
    """What a protocol role may use of the party it serves."""

    settings: PartySettings
    state_dir: Path

    @property
    def identity(self) -> PartyIdentity: ...

    @property
    def table(self) -> PartyTable: ...

    def protocol(self, cls: type[P]) -> P | None:
        """The current run's instance of another role of this party (e.g. its alignment)."""
        ...


@runtime_checkable
class PartyProtocol(Protocol):
    """One protocol role of a party, for one run."""

    def handlers(self) -> Mapping[str, Handler]:
        """Message type → handler, for the message types this role answers."""
        ...


@runtime_checkable
class ClosingProtocol(PartyProtocol, Protocol):
    """A role that holds something to release when its run ends (worker processes, keys in memory)."""

    def close(self) -> None: ...


@runtime_checkable
class DurableProtocol(PartyProtocol, Protocol):
    """A role whose state cannot be rebuilt from the coordinator's messages: kept on disk per answer."""

    def save_durable(self, run_id: str, request_key: str, reply: bytes) -> None:
        """Write the role's state and ``reply`` (the answer as the relay sends it) before the reply leaves."""
        ...

    def restore_durable(self, run_id: str) -> tuple[str, RecordDict] | None:
        """Bring back the state of ``run_id`` in a restarted party process, with its last answer to cache."""
        ...


RoleProtocols = Callable[[], Sequence[Callable[[Any], PartyProtocol]]]
"""Loads the protocol role classes of one party role (imported when a party of that role starts)."""

Registry = Mapping[str, RoleProtocols]
"""Party role (``bank``, ``label_holder``, ``feature_holder``) → its protocol roles."""
